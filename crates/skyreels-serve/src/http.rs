//! The HTTP API, versioned under `/v1`. Every answer that is not a success is JSON
//! `{"error": "…"}`, whatever produced it (a handler, an extractor, the router, a size limit).

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use futures_util::stream::{self, Stream};
use serde::{Deserialize, Serialize};
use skyreels_core::checkpoint::{resolve_pipeline, PipelineKind};
use skyreels_core::pipelines::generation::{Defaults, Generation, GenerationError, ModelDefaults};
use tower::ServiceExt;
use utoipa::{IntoParams, OpenApi, ToSchema};

use crate::jobs::{self, is_id, DataDir, Job, JobRequest};
use crate::store::{self, now_ms, NewJob, QueueError, Store, Token};
use crate::worker::Wake;
use crate::Limits;

/// What every handler shares.
pub struct App {
    /// The queue.
    pub store: Arc<Store>,
    /// Uploads and job files.
    pub data: DataDir,
    /// Model names offered, first is the default.
    pub models: Vec<(String, PathBuf)>,
    /// Caps on requests.
    pub limits: Limits,
    /// Wakes the in-process worker.
    pub wake: Arc<Wake>,
    /// Largest upload in bytes.
    pub max_upload: usize,
}

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    field: Option<String>,
}

/// The body of every error answer.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// One sentence.
    pub error: String,
    /// The request field the sentence is about, when there is one (e.g. `height`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, message: message.into(), field: None }
    }
    fn bad(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
    fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "no such job")
    }
    fn internal(message: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message.to_string())
    }
    /// A 400 about one field of the request.
    fn refused(refusal: jobs::Refusal) -> Self {
        Self { field: refusal.field, ..Self::bad(refusal.message) }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(ErrorBody { error: self.message, field: self.field })).into_response()
    }
}

impl From<crate::db::DbError> for ApiError {
    fn from(e: crate::db::DbError) -> Self {
        Self::internal(e)
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// Runs blocking work (the database, the engine's checks) off the async runtime.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> ApiResult<T> + Send + 'static) -> ApiResult<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ApiError::internal(format!("a task failed: {e}")))?
}

/// The API's routes, with authentication, size limits and JSON errors.
pub fn router(app: Arc<App>, max_upload: usize) -> Router {
    let json_limit = 1 << 20;
    let authed = Router::new()
        .route("/v1/session", get(session))
        .route("/v1/config", get(config))
        .route("/v1/events", get(all_events))
        .route("/v1/jobs", post(create_job).get(list_jobs).layer(DefaultBodyLimit::max(json_limit)))
        .route("/v1/jobs/{id}", get(get_job).delete(delete_job))
        .route("/v1/jobs/{id}/cancel", post(cancel_job))
        .route("/v1/jobs/{id}/events", get(job_events))
        .route("/v1/jobs/{id}/video", get(job_video))
        .route("/v1/jobs/{id}/preview", get(job_preview))
        .route("/v1/jobs/{id}/sidecar", get(job_sidecar))
        .route("/v1/uploads", post(upload).layer(DefaultBodyLimit::max(max_upload)))
        .route("/v1/uploads/{id}", axum::routing::delete(delete_upload))
        .route("/v1/metrics", get(metrics))
        .route("/v1/openapi.json", get(openapi))
        .route_layer(middleware::from_fn_with_state(app.clone(), authenticate));
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/session", post(sign_in).delete(sign_out).layer(DefaultBodyLimit::max(4096)))
        .merge(authed)
        .merge(crate::studio::routes())
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such endpoint") })
        .layer(middleware::map_response(json_errors))
        .with_state(app)
}

/// Wraps every non-JSON error answer (from extractors, the router, limits) as `{"error"}`.
async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json =
        response.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 64 << 10).await.unwrap_or_default();
    let mut message = String::from_utf8_lossy(&text).trim().to_string();
    if message.is_empty() {
        message = status.canonical_reason().unwrap_or("error").to_lowercase();
    }
    let mut wrapped = (status, Json(ErrorBody { error: message, field: None })).into_response();
    for name in [header::CONTENT_RANGE, header::ALLOW, header::WWW_AUTHENTICATE] {
        if let Some(v) = parts.headers.get(&name) {
            wrapped.headers_mut().insert(name, v.clone());
        }
    }
    wrapped
}

/// The cookie of a studio session: a random secret of its own (not the API token), HttpOnly and
/// SameSite=Strict, that signing out revokes on the server.
const SESSION_COOKIE: &str = "skyreels_session";
/// How long a browser session lasts.
const SESSION_DAYS: i64 = 30;
/// Header the page adds to requests that change something: a cross-site form cannot send it,
/// so a session cookie alone never authorises a change.
const STUDIO_HEADER: &str = "x-skyreels-studio";

/// What a request presents to authenticate.
enum Credential {
    /// `Authorization: Bearer <token>`.
    Bearer(String),
    /// The studio's session cookie.
    Session(String),
}

fn bearer(headers: &axum::http::HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let secret = value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer "))?;
    Some(secret.trim().to_string())
}

fn session_cookie(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(SESSION_COOKIE)?.strip_prefix('='))
        .map(|s| s.trim().to_string())
}

/// The bearer token if there is one, else the session cookie; empty or oversized ones are none.
fn credential(headers: &axum::http::HeaderMap) -> Option<Credential> {
    let plausible = |s: &String| !s.is_empty() && s.len() <= 200;
    match bearer(headers) {
        Some(token) => Some(token).filter(plausible).map(Credential::Bearer),
        None => session_cookie(headers).filter(plausible).map(Credential::Session),
    }
}

/// Requires a token that still exists: `Authorization: Bearer <token>`, or a live studio session
/// cookie (with [`STUDIO_HEADER`] on anything but GET and HEAD).
async fn authenticate(State(app): State<Arc<App>>, mut request: Request, next: Next) -> Response {
    let unauthorized = |message: &str| {
        let mut r = ApiError::new(StatusCode::UNAUTHORIZED, message).into_response();
        r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        r
    };
    let Some(credential) = credential(request.headers()) else {
        return unauthorized("a bearer token is required (Authorization: Bearer <token>)");
    };
    let safe = matches!(*request.method(), axum::http::Method::GET | axum::http::Method::HEAD);
    if matches!(credential, Credential::Session(_)) && !safe && !request.headers().contains_key(STUDIO_HEADER) {
        let message = format!("a change signed in by cookie needs the {STUDIO_HEADER} header");
        return ApiError::new(StatusCode::FORBIDDEN, message).into_response();
    }
    let store = app.store.clone();
    let found = blocking(move || {
        match &credential {
            Credential::Bearer(secret) => store.token_by_secret(secret),
            Credential::Session(secret) => store.token_by_session(secret),
        }
        .map_err(ApiError::from)
    })
    .await;
    match found {
        Ok(Some(token)) => {
            request.extensions_mut().insert(token);
            next.run(request).await
        }
        Ok(None) => unauthorized("the token or session is not valid (it may have been deleted or ended)"),
        Err(e) => e.into_response(),
    }
}

/// A sign-in.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignIn {
    /// An API token (`skyreels serve token create`).
    pub token: String,
}

/// Who is signed in.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct Session {
    /// The token's name.
    pub name: String,
    /// Whether it sees every user's jobs.
    pub admin: bool,
}

/// A `Set-Cookie` for the session cookie; `Secure` when the request came over HTTPS through a
/// proxy (a plain-HTTP server on a LAN address could not set a secure cookie at all).
fn session_set_cookie(headers: &axum::http::HeaderMap, value: &str, max_age_s: i64) -> ApiResult<HeaderValue> {
    let https = headers.get("x-forwarded-proto").is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"));
    let secure = if https { "; Secure" } else { "" };
    let cookie = format!("{SESSION_COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age_s}{secure}");
    HeaderValue::from_str(&cookie).map_err(ApiError::internal)
}

/// Signs the browser in: checks the token and starts a session whose HttpOnly, SameSite=Strict
/// cookie authorises the page's requests, `<video>`, `<img>` and event stream. Like every
/// change made from the page, it needs the studio's header and a JSON body.
#[utoipa::path(post, path = "/v1/session", request_body = SignIn,
    responses((status = 200, body = Session), (status = 401, body = ErrorBody)))]
async fn sign_in(State(app): State<Arc<App>>, headers: axum::http::HeaderMap, body: Bytes) -> ApiResult<Response> {
    let is_json = headers.get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !is_json || !headers.contains_key(STUDIO_HEADER) {
        let message = format!("signing in needs a JSON body and the {STUDIO_HEADER} header");
        return Err(ApiError::new(StatusCode::FORBIDDEN, message));
    }
    let sign_in: SignIn = serde_json::from_slice(&body)
        .map_err(|e| ApiError::refused(jobs::Refusal::of("token", format!("the sign-in is not valid: {e}"))))?;
    let secret = sign_in.token.trim().to_string();
    let invalid = || ApiError {
        field: Some("token".into()),
        ..ApiError::new(StatusCode::UNAUTHORIZED, "this token is not valid")
    };
    if secret.is_empty() || secret.len() > 200 {
        return Err(invalid());
    }
    let store = app.store.clone();
    let (token, session) = blocking(move || {
        let token = store.token_by_secret(&secret)?.ok_or_else(invalid)?;
        let session = store.create_session(&token, SESSION_DAYS * 86_400_000)?;
        Ok((token, session))
    })
    .await?;
    let cookie = session_set_cookie(&headers, &session, SESSION_DAYS * 86_400)?;
    let mut response = Json(Session { name: token.name, admin: token.admin }).into_response();
    response.headers_mut().insert(header::SET_COOKIE, cookie);
    Ok(response)
}

/// Who the request is signed in as.
#[utoipa::path(get, path = "/v1/session", responses((status = 200, body = Session), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
async fn session(Extension(token): Extension<Token>) -> Json<Session> {
    Json(Session { name: token.name, admin: token.admin })
}

/// Signs the browser out: ends the session on the server and forgets the cookie.
#[utoipa::path(delete, path = "/v1/session", responses((status = 204)))]
async fn sign_out(State(app): State<Arc<App>>, headers: axum::http::HeaderMap) -> ApiResult<Response> {
    if let Some(secret) = session_cookie(&headers).filter(|s| !s.is_empty() && s.len() <= 200) {
        let store = app.store.clone();
        blocking(move || store.delete_session(&secret).map_err(ApiError::from)).await?;
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    response.headers_mut().insert(header::SET_COOKIE, session_set_cookie(&headers, "", 0)?);
    Ok(response)
}

/// Server status.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `ok`.
    pub status: String,
    /// skyreels-rs version.
    pub version: String,
    /// `sqlite` or `postgresql`.
    pub database: String,
    /// Model names jobs may ask for; the first is the default.
    pub models: Vec<String>,
}

/// Whether the server is up (no token needed).
#[utoipa::path(get, path = "/v1/health", responses((status = 200, body = Health)))]
async fn health(State(app): State<Arc<App>>) -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        database: app.store.kind().into(),
        models: app.models.iter().map(|(n, _)| n.clone()).collect(),
    })
}

/// A model offered here and the settings its jobs get when they leave them out.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct ModelInfo {
    /// Name to give as `model`.
    pub name: String,
    /// height, width, fps, frames, base_frames, overlap_history, steps, shift, guidance,
    /// text_length, negative_prompt.
    #[schema(value_type = Object)]
    pub defaults: Defaults,
    /// `diffusion_forcing` (every mode, any length), `text_to_video` (one shot from text),
    /// `image_to_video` (one shot from a first frame), `reference_to_video` (one shot composed
    /// from 1–4 `references`), `elements_to_video` (one shot from 1–3 `references`: SkyReels-A2)
    /// or `video_extension` (an `extend` clip continued, or cut to a new shot with `transition`).
    #[schema(value_type = String)]
    pub pipeline: PipelineKind,
}

/// The caps this server puts on jobs.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct LimitsInfo {
    /// Most frames of one video.
    pub max_frames: u64,
    /// Most pixels on either side.
    pub max_side: u64,
    /// Most denoising steps.
    pub max_steps: u64,
    /// Largest upload in bytes.
    pub max_upload_bytes: u64,
    /// Whether endless jobs (frames 0) are accepted.
    pub endless: bool,
}

/// What a client needs to fill a job form.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct Config {
    /// The models; the first is the default.
    pub models: Vec<ModelInfo>,
    /// The LoRA adapters jobs can name in `loras` (the files in `<data>/loras/`).
    pub loras: Vec<String>,
    /// The caps.
    pub limits: LimitsInfo,
}

/// The models with their defaults, and this server's caps.
#[utoipa::path(get, path = "/v1/config", responses((status = 200, body = Config), (status = 500, body = ErrorBody)),
    security(("bearer" = [])))]
async fn config(State(app): State<Arc<App>>) -> ApiResult<Json<Config>> {
    let app2 = app.clone();
    let models = tokio::task::spawn_blocking(move || {
        app2.models
            .iter()
            .filter_map(|(name, dir)| match ModelDefaults::of_model(&dir.to_string_lossy()) {
                Ok(defaults) => {
                    let pipeline = resolve_pipeline(&dir.to_string_lossy())
                        .map_or(PipelineKind::DiffusionForcing, |files| files.kind);
                    Some(ModelInfo { name: name.clone(), defaults: defaults.resolve(pipeline), pipeline })
                }
                Err(e) => {
                    // One broken skyreels.json must not lock everyone out of the page.
                    eprintln!("model {name}: {e}");
                    None
                }
            })
            .collect::<Vec<_>>()
    })
    .await
    .map_err(|e| ApiError::internal(format!("a task failed: {e}")))?;
    let l = &app.limits;
    let limits = LimitsInfo {
        max_frames: l.max_frames,
        max_side: l.max_side,
        max_steps: l.max_steps,
        max_upload_bytes: app.max_upload as u64,
        endless: l.endless,
    };
    Ok(Json(Config { models, loras: app.data.lora_names(), limits }))
}

/// An upload's id, to name it in a job.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct Upload {
    /// Refer to the file by this id (`image`, `end_image`, `extend`, `references`).
    pub id: String,
    /// Its size.
    pub bytes: u64,
}

/// Uploads an image or a video (the raw bytes as the body); stored under a generated name.
#[utoipa::path(post, path = "/v1/uploads", request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 201, body = Upload), (status = 400, body = ErrorBody), (status = 413, body = ErrorBody)),
    security(("bearer" = [])))]
async fn upload(State(app): State<Arc<App>>, Extension(token): Extension<Token>, body: Bytes) -> ApiResult<Response> {
    if body.is_empty() {
        return Err(ApiError::bad("the upload is empty"));
    }
    let dir = app.data.uploads(&token.id);
    let id = store::random_hex(16);
    let path = dir.join(&id);
    let bytes = body.len() as u64;
    blocking(move || {
        std::fs::create_dir_all(&dir).map_err(ApiError::internal)?;
        skyreels_core::pipelines::generation::write_atomically(&path, &body).map_err(ApiError::internal)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(Upload { id, bytes })).into_response())
}

/// Deletes one of the caller's uploads (jobs already queued with it then fail when they run).
#[utoipa::path(delete, path = "/v1/uploads/{id}", params(("id" = String, Path, description = "Upload id")),
    responses((status = 204), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
async fn delete_upload(
    State(app): State<Arc<App>>,
    Extension(token): Extension<Token>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let path = app.data.upload(&token.id, &id).filter(|p| p.is_file());
    let Some(path) = path else { return Err(ApiError::new(StatusCode::NOT_FOUND, "no such upload")) };
    blocking(move || std::fs::remove_file(&path).map_err(ApiError::internal)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Parses a JSON body with the serde message as the error sentence.
fn parse_json<T: for<'de> Deserialize<'de>>(body: &[u8]) -> ApiResult<T> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad(format!("the request body is not a valid job: {e}")))
}

/// Checks a job with the same checks as `skyreels generate` and queues it.
#[utoipa::path(post, path = "/v1/jobs", request_body = JobRequest,
    responses((status = 201, body = Job), (status = 400, body = ErrorBody), (status = 429, body = ErrorBody)),
    security(("bearer" = [])))]
async fn create_job(
    State(app): State<Arc<App>>,
    Extension(token): Extension<Token>,
    body: Bytes,
) -> ApiResult<Response> {
    let mut request: JobRequest = parse_json(&body)?;
    jobs::check_caps(&request, &app.limits).map_err(ApiError::refused)?;
    let output_name = jobs::output_name(&request).map_err(ApiError::refused)?;
    let (model, model_dir) = match &request.model {
        None => app.models.first().cloned().ok_or_else(|| ApiError::internal("this server offers no model"))?,
        Some(name) => app.models.iter().find(|(n, _)| n == name).cloned().ok_or_else(|| {
            ApiError::refused(jobs::Refusal::of(
                "model",
                format!("model `{name}` is not offered here (see /v1/health)"),
            ))
        })?,
    };
    request.model = Some(model.clone());
    let id = store::random_hex(16);
    let job_dir = app.data.job(&id);
    let app2 = app.clone();
    let created = blocking(move || {
        let mut copied_upload = None;
        if let Some(source) = request.extend_job.take() {
            let upload = upload_from_job(&app2, &token, &source)?;
            copied_upload = app2.data.upload(&token.id, &upload);
            request.extend = Some(upload);
        }
        let outcome = (|| {
            let generation_request =
                jobs::to_generation_request(&request, &token.id, &job_dir, output_name, &app2.data, &model_dir)
                    .map_err(ApiError::refused)?;
            std::fs::create_dir_all(&job_dir).map_err(ApiError::internal)?;
            let job = Generation::new(&generation_request, false).map_err(engine_refusal)?;
            jobs::check_completed_caps(job.params(), &app2.limits).map_err(ApiError::refused)?;
            // The seed is fixed now, so that any worker, on any attempt, makes the same video.
            request.seed = Some(job.params().seed);
            // The checked job holds the output's lock: free it before a worker can claim the job.
            drop(job);
            let new = NewJob {
                id: id.clone(),
                owner: token.id.clone(),
                model,
                kind: jobs::kind_of(&request).into(),
                request: serde_json::to_string(&request).map_err(ApiError::internal)?,
                output_name: output_name.into(),
            };
            app2.store.insert_job(&new, app2.limits.max_queue).map_err(|e| match e {
                QueueError::Full(_) => ApiError::new(StatusCode::TOO_MANY_REQUESTS, e.to_string()),
                QueueError::Db(e) => ApiError::internal(e),
            })
        })();
        if outcome.is_err() {
            let _ = std::fs::remove_dir_all(&job_dir);
            if let Some(upload) = copied_upload {
                let _ = std::fs::remove_file(upload);
            }
        }
        outcome
    })
    .await?;
    app.wake.notify();
    Ok((StatusCode::CREATED, Json(Job::from_row(&created, now_ms()))).into_response())
}

/// The engine's refusal of a job as an answer: the user's mistakes are 400s naming the field
/// when the sentence names one, the server's own problems 500s.
fn engine_refusal(e: GenerationError) -> ApiError {
    match e {
        GenerationError::Model(m) | GenerationError::Device(m) | GenerationError::Engine(m) => ApiError::internal(m),
        other => {
            let field = other.setting().filter(|f| jobs::FIELDS.contains(&f.as_str()));
            ApiError::refused(jobs::Refusal { field, message: other.to_string() })
        }
    }
}

/// Copies the video of `source`, a finished job the caller may see, into the caller's uploads
/// (so that the new job does not depend on the old one staying); returns the upload's id.
fn upload_from_job(app: &App, token: &Token, source: &str) -> ApiResult<String> {
    let refuse = |message: &str| ApiError::refused(jobs::Refusal::of("extend_job", message));
    let job = is_id(source).then(|| app.store.job(source)).transpose()?.flatten();
    let Some(job) = job.filter(|j| (token.admin || j.owner == token.id) && j.state != store::state::DELETING) else {
        return Err(refuse("extend_job: there is no such job"));
    };
    let video = app.data.job(&job.id).join(&job.output_name);
    // A stopped job's video is complete up to its last window, so it can be extended too.
    let ended = job.state == store::state::DONE || job.state == store::state::CANCELLED;
    if !ended || !video.is_file() {
        return Err(refuse("extend_job: only a finished or stopped job's video can be extended"));
    }
    let dir = app.data.uploads(&token.id);
    let id = store::random_hex(16);
    let partial = dir.join(format!(".{id}.partial"));
    std::fs::create_dir_all(&dir).map_err(ApiError::internal)?;
    let copied = std::fs::copy(&video, &partial).and_then(|_| std::fs::rename(&partial, dir.join(&id)));
    if let Err(e) = copied {
        let _ = std::fs::remove_file(&partial);
        return Err(ApiError::internal(format!("cannot copy the video of job {source}: {e}")));
    }
    Ok(id)
}

/// Filters of the job list.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only jobs in this stored state (queued, running, done, failed, cancelled).
    pub state: Option<String>,
    /// At most this many (default 100, at most 1000).
    pub limit: Option<u32>,
    /// Skip this many.
    pub offset: Option<u32>,
}

/// A page of jobs.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct JobList {
    /// Newest first.
    pub jobs: Vec<Job>,
}

/// Lists the caller's jobs (every job for an admin), newest first.
#[utoipa::path(get, path = "/v1/jobs", params(ListQuery), responses((status = 200, body = JobList)),
    security(("bearer" = [])))]
async fn list_jobs(
    State(app): State<Arc<App>>,
    Extension(token): Extension<Token>,
    Query(query): Query<ListQuery>,
) -> ApiResult<Json<JobList>> {
    let limit = query.limit.unwrap_or(100).min(1000) as usize;
    let offset = query.offset.unwrap_or(0) as usize;
    if let Some(s) = &query.state {
        if !["queued", "running", "done", "failed", "cancelled"].contains(&s.as_str()) {
            return Err(ApiError::bad(format!("state `{s}` is not one of queued, running, done, failed, cancelled")));
        }
    }
    let rows = blocking(move || {
        let owner = (!token.admin).then_some(token.id.as_str());
        app.store.jobs(owner, query.state.as_deref(), limit, offset).map_err(ApiError::from)
    })
    .await?;
    let now = now_ms();
    Ok(Json(JobList { jobs: rows.iter().map(|r| Job::from_row(r, now)).collect() }))
}

/// The job `id` if `token` may see it (404 otherwise, so others' ids are not revealed).
async fn visible_job(app: &Arc<App>, token: &Token, id: &str) -> ApiResult<store::JobRow> {
    if !is_id(id) {
        return Err(ApiError::not_found());
    }
    let (store, id, token) = (app.store.clone(), id.to_string(), token.clone());
    blocking(move || match store.job(&id)? {
        Some(job) if (token.admin || job.owner == token.id) && job.state != store::state::DELETING => Ok(job),
        _ => Err(ApiError::not_found()),
    })
    .await
}

/// One job.
#[utoipa::path(get, path = "/v1/jobs/{id}", params(("id" = String, Path, description = "Job id")),
    responses((status = 200, body = Job), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
async fn get_job(
    State(app): State<Arc<App>>,
    Extension(token): Extension<Token>,
    Path(id): Path<String>,
) -> ApiResult<Json<Job>> {
    let job = visible_job(&app, &token, &id).await?;
    Ok(Json(Job::from_row(&job, now_ms())))
}

/// Cancels a job: a queued one at once, a running one at its next step.
#[utoipa::path(post, path = "/v1/jobs/{id}/cancel", params(("id" = String, Path, description = "Job id")),
    responses((status = 202, body = Job), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
async fn cancel_job(
    State(app): State<Arc<App>>,
    Extension(token): Extension<Token>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    visible_job(&app, &token, &id).await?;
    let store = app.store.clone();
    let job = blocking(move || {
        store.cancel(&id)?;
        store.job(&id)?.ok_or_else(ApiError::not_found)
    })
    .await?;
    Ok((StatusCode::ACCEPTED, Json(Job::from_row(&job, now_ms()))).into_response())
}

/// Deletes a job and its files (a running one is stopped first).
#[utoipa::path(delete, path = "/v1/jobs/{id}", params(("id" = String, Path, description = "Job id")),
    responses((status = 204), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
async fn delete_job(
    State(app): State<Arc<App>>,
    Extension(token): Extension<Token>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    visible_job(&app, &token, &id).await?;
    let (store, dir) = (app.store.clone(), app.data.job(&id));
    blocking(move || {
        if store.start_delete(&id, now_ms())? {
            let _ = std::fs::remove_dir_all(&dir);
            store.remove_job(&id)?;
        }
        Ok(())
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Server-Sent Events of a job's progress: one event per change, named after the job's state
/// (`queued`, `running`, `interrupted`, `done`, `failed`, `cancelled`), each carrying the job;
/// the stream ends with the job.
#[utoipa::path(get, path = "/v1/jobs/{id}/events", params(("id" = String, Path, description = "Job id")),
    responses((status = 200, description = "text/event-stream of Job objects", body = Job), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
async fn job_events(
    State(app): State<Arc<App>>,
    Extension(token): Extension<Token>,
    Path(id): Path<String>,
) -> ApiResult<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>> {
    visible_job(&app, &token, &id).await?;
    struct Follow {
        app: Arc<App>,
        id: String,
        last: Option<String>,
        ended: bool,
    }
    let start = Follow { app, id, last: None, ended: false };
    let events = stream::unfold(start, |mut f| async move {
        loop {
            if f.ended {
                return None;
            }
            let (store, id) = (f.app.store.clone(), f.id.clone());
            let row = blocking(move || store.job(&id).map_err(ApiError::from)).await.ok().flatten();
            let Some(row) = row.filter(|r| r.state != store::state::DELETING) else {
                f.ended = true;
                let gone = SseEvent::default().event("deleted").data(format!("{{\"id\":\"{}\"}}", f.id));
                return Some((Ok(gone), f));
            };
            let job = Job::from_row(&row, now_ms());
            let text = serde_json::to_string(&job).unwrap_or_default();
            if f.last.as_deref() != Some(text.as_str()) {
                f.ended = row.is_final();
                f.last = Some(text.clone());
                return Some((Ok(SseEvent::default().event(job.state.clone()).data(text)), f));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

/// Server-Sent Events of all the caller's jobs (every job for an admin; the newest 500): first
/// one `job` event per job, then one whenever a job changes, and `deleted` (`{"id"}`) when one
/// goes. A client that reconnects gets the whole list again.
#[utoipa::path(get, path = "/v1/events",
    responses((status = 200, description = "text/event-stream of Job objects", body = Job)), security(("bearer" = [])))]
async fn all_events(
    State(app): State<Arc<App>>,
    Extension(token): Extension<Token>,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    struct Follow {
        app: Arc<App>,
        token: Token,
        /// The last text sent per job.
        sent: std::collections::HashMap<String, String>,
        pending: std::collections::VecDeque<SseEvent>,
        /// Whether the first list was sent (later ones wait a moment first).
        listed: bool,
    }
    let start = Follow { app, token, sent: Default::default(), pending: Default::default(), listed: false };
    let events = stream::unfold(start, |mut f| async move {
        loop {
            if let Some(event) = f.pending.pop_front() {
                return Some((Ok(event), f));
            }
            if f.listed {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            f.listed = true;
            let (store, token) = (f.app.store.clone(), f.token.clone());
            let known: Vec<String> = f.sent.keys().cloned().collect();
            let found = blocking(move || {
                // A token deleted while the stream is open ends it.
                if !store.token_exists(&token.id)? {
                    return Ok(None);
                }
                let owner = (!token.admin).then_some(token.id.as_str());
                let rows = store.jobs(owner, None, 500, 0)?;
                // Jobs no longer listed are gone only if they no longer exist (or are being
                // deleted); others merely fell off the end of the list.
                let mut gone = Vec::new();
                for id in known.iter().filter(|id| !rows.iter().any(|r| &&r.id == id)) {
                    let row = store.job(id)?;
                    gone.push((id.clone(), row.is_none_or(|r| r.state == store::state::DELETING)));
                }
                Ok(Some((rows, gone)))
            })
            .await;
            let (rows, gone) = match found {
                Ok(Some(found)) => found,
                Ok(None) => return None,
                Err(_) => continue,
            };
            for (id, deleted) in gone {
                f.sent.remove(&id);
                if deleted {
                    let data = serde_json::json!({ "id": id }).to_string();
                    f.pending.push_back(SseEvent::default().event("deleted").data(data));
                }
            }
            let now = now_ms();
            // Oldest first, so that a client adding cards in arrival order keeps the newest on top.
            for row in rows.iter().rev() {
                if row.state == store::state::DELETING {
                    if f.sent.remove(&row.id).is_some() {
                        let data = serde_json::json!({ "id": row.id }).to_string();
                        f.pending.push_back(SseEvent::default().event("deleted").data(data));
                    }
                    continue;
                }
                let text = serde_json::to_string(&Job::from_row(row, now)).unwrap_or_default();
                if f.sent.get(&row.id) != Some(&text) {
                    f.sent.insert(row.id.clone(), text.clone());
                    f.pending.push_back(SseEvent::default().event("job").data(text));
                }
            }
        }
    });
    Sse::new(events).keep_alive(KeepAlive::default())
}

/// The settings sidecar of a job's video (JSON: every setting, the seed, the device, timings),
/// with the server's own paths replaced by what the client knows them as: the model's name, the
/// upload ids, the output's file name.
#[utoipa::path(get, path = "/v1/jobs/{id}/sidecar", params(("id" = String, Path, description = "Job id")),
    responses((status = 200, description = "JSON", content_type = "application/json"), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
async fn job_sidecar(
    State(app): State<Arc<App>>,
    Extension(token): Extension<Token>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let job = visible_job(&app, &token, &id).await?;
    let path = app.data.job(&job.id).join(format!("{}.json", job.output_name));
    let model_dir = app.models.iter().find(|(n, _)| *n == job.model).map(|(_, d)| d.clone());
    let data_dir = app.data.0.clone();
    let value = blocking(move || {
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ApiError::new(StatusCode::NOT_FOUND, "the video has no settings file yet"))
            }
            Err(e) => return Err(ApiError::internal(format!("cannot read the settings file: {e}"))),
        };
        let mut value: serde_json::Value = serde_json::from_str(&text).map_err(ApiError::internal)?;
        let mut prefixes = vec![(data_dir, None)];
        if let Some(dir) = model_dir {
            prefixes.insert(0, (dir, Some(job.model.clone())));
        }
        redact_paths(&mut value, &prefixes);
        Ok(value)
    })
    .await?;
    Ok(Json(value).into_response())
}

/// Replaces every string that is a path under one of `prefixes` by the replacement given with it,
/// or by the path's last component (an upload id, a file name) when there is none.
fn redact_paths(value: &mut serde_json::Value, prefixes: &[(PathBuf, Option<String>)]) {
    match value {
        serde_json::Value::String(s) => {
            let path = std::path::Path::new(s.as_str());
            if let Some((_, replacement)) = prefixes.iter().find(|(prefix, _)| path.starts_with(prefix)) {
                let last = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                *s = replacement.clone().unwrap_or(last);
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(|v| redact_paths(v, prefixes)),
        serde_json::Value::Object(map) => map.values_mut().for_each(|v| redact_paths(v, prefixes)),
        _ => {}
    }
}

/// The video (MP4 or GIF), with HTTP Range support; playable while it is still being written.
#[utoipa::path(get, path = "/v1/jobs/{id}/video", params(("id" = String, Path, description = "Job id")),
    responses((status = 200, description = "the video", content_type = "video/mp4"), (status = 206, description = "a range of it"),
        (status = 404, body = ErrorBody)), security(("bearer" = [])))]
async fn job_video(
    State(app): State<Arc<App>>,
    Extension(token): Extension<Token>,
    Path(id): Path<String>,
    request: Request,
) -> ApiResult<Response> {
    job_file(&app, &token, &id, request, |job| (job.output_name.clone(), "the video has no frames yet")).await
}

/// The latest decoded frame (PNG).
#[utoipa::path(get, path = "/v1/jobs/{id}/preview", params(("id" = String, Path, description = "Job id")),
    responses((status = 200, description = "PNG", content_type = "image/png"), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
async fn job_preview(
    State(app): State<Arc<App>>,
    Extension(token): Extension<Token>,
    Path(id): Path<String>,
    request: Request,
) -> ApiResult<Response> {
    job_file(&app, &token, &id, request, |_| ("preview.png".into(), "there is no preview yet")).await
}

/// Serves one file of a job the caller may see (`file` names it and what to say when absent).
async fn job_file(
    app: &Arc<App>,
    token: &Token,
    id: &str,
    request: Request,
    file: impl FnOnce(&store::JobRow) -> (String, &'static str),
) -> ApiResult<Response> {
    let job = visible_job(app, token, id).await?;
    let (name, missing) = file(&job);
    serve_file(app.data.job(&job.id).join(name), request, missing).await
}

async fn serve_file(path: PathBuf, request: Request, missing: &str) -> ApiResult<Response> {
    if !path.is_file() {
        return Err(ApiError::new(StatusCode::NOT_FOUND, missing));
    }
    let response = tower_http::services::ServeFile::new(path)
        .oneshot(request)
        .await
        .map_err(|e| ApiError::internal(format!("cannot read the file: {e}")))?;
    Ok(response.map(Body::new))
}

/// Prometheus metrics: queue length, jobs by state, seconds per step, peak memory.
#[utoipa::path(get, path = "/v1/metrics", responses((status = 200, description = "Prometheus text format", content_type = "text/plain")),
    security(("bearer" = [])))]
async fn metrics(State(app): State<Arc<App>>) -> ApiResult<Response> {
    let store = app.store.clone();
    let (counts, (per_step, peak)) = blocking(move || Ok((store.counts()?, store.speed()?))).await?;
    let count = |s: &str| counts.iter().find(|(k, _)| k == s).map_or(0, |(_, n)| *n);
    let mut text = String::new();
    text += "# HELP skyreels_queue_length Jobs waiting for a worker.\n# TYPE skyreels_queue_length gauge\n";
    text += &format!("skyreels_queue_length {}\n", count("queued"));
    text += "# HELP skyreels_jobs Jobs by state.\n# TYPE skyreels_jobs gauge\n";
    for s in ["queued", "running", "done", "failed", "cancelled"] {
        text += &format!("skyreels_jobs{{state=\"{s}\"}} {}\n", count(s));
    }
    text += "# HELP skyreels_seconds_per_step Generation seconds per denoising step over finished jobs.\n";
    text += "# TYPE skyreels_seconds_per_step gauge\n";
    text += &format!("skyreels_seconds_per_step {}\n", per_step.map_or("NaN".into(), |v| v.to_string()));
    text += "# HELP skyreels_peak_memory_mib Highest peak memory of a finished job (GPU, else host).\n";
    text += "# TYPE skyreels_peak_memory_mib gauge\n";
    text += &format!("skyreels_peak_memory_mib {}\n", peak.map_or("NaN".into(), |v| v.to_string()));
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}

/// The API's OpenAPI document, generated from the handlers' types.
#[utoipa::path(get, path = "/v1/openapi.json", responses((status = 200, description = "OpenAPI 3.1 document")),
    security(("bearer" = [])))]
async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The OpenAPI description of this API.
#[derive(OpenApi)]
#[openapi(
    info(title = "skyreels-rs", description = "SkyReels-V2 video generation jobs"),
    paths(health, sign_in, session, sign_out, config, all_events, job_sidecar, upload, delete_upload, create_job, list_jobs, get_job, cancel_job, delete_job, job_events, job_video, job_preview, metrics, openapi),
    components(schemas(Job, JobRequest, JobList, ErrorBody, Health, Upload, SignIn, Session, Config, ModelInfo, LimitsInfo)),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;
