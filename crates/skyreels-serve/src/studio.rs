//! The studio: one web page, served at `/`, that drives the API of [`crate::http`] from a
//! browser. Its three files are compiled into the binary (no build step, nothing to install),
//! and are served with a Content-Security-Policy that allows only this server's own scripts,
//! styles and media — a second line of defence behind the page never inserting text as HTML.

use axum::http::{header, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

const INDEX: &str = include_str!("../studio/index.html");
const SCRIPT: &str = include_str!("../studio/studio.js");
const STYLE: &str = include_str!("../studio/studio.css");

/// What the page may load and run: only its own files and the API's media.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
    media-src 'self'; connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'";

/// The routes of the page's files.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|| async { asset(INDEX, "text/html; charset=utf-8") }))
        .route("/studio.js", get(|| async { asset(SCRIPT, "text/javascript; charset=utf-8") }))
        .route("/studio.css", get(|| async { asset(STYLE, "text/css; charset=utf-8") }))
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let headers = [
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(POLICY)),
        (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        (header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
        // The files change with the binary: revalidate rather than run a stale script.
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (HeaderName::from_static("x-frame-options"), HeaderValue::from_static("DENY")),
    ];
    (headers, body).into_response()
}
