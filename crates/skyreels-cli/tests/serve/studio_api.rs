//! What the studio page needs from the API: its files, a cookie sign-in that cannot change
//! anything on its own, the models' defaults, one event stream for all jobs, refusals naming
//! their field, the settings file, and extending a finished job.

use super::client::raw;
use super::*;

/// A plain request with the given headers (no token unless one is among them).
fn request(
    base: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, Vec<(String, String)>, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let url = format!("{base}{path}");
    let mut builder = ureq::http::Request::builder().method(method).uri(url);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let mut response = agent.run(builder.body(body.to_string()).unwrap()).unwrap();
    let headers = response
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let text = response.body_mut().read_to_string().unwrap_or_default();
    (response.status().as_u16(), headers, text)
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> &'a str {
    headers.iter().find(|(k, _)| k == name).map_or("", |(_, v)| v.as_str())
}

#[test]
fn the_page_signs_in_with_a_cookie_that_cannot_change_anything_alone() {
    let dir = temp();
    let alice = create_token(dir.path(), None, "alice", false);
    let server = Server::start(dir.path(), &["--no-worker"]);
    let base = server.base.as_str();

    // The page's three files, with a policy that runs only this server's scripts.
    for (path, kind) in [("/", "text/html"), ("/studio.js", "text/javascript"), ("/studio.css", "text/css")] {
        let (status, headers, body) = request(base, "GET", path, &[], "");
        assert_eq!(status, 200, "{path}");
        assert!(header(&headers, "content-type").starts_with(kind), "{path}");
        assert!(header(&headers, "content-security-policy").contains("script-src 'self'"), "{path}");
        assert!(!body.is_empty());
    }

    // Signing in takes JSON and the page's header (no plain form can sign anyone in); a wrong
    // token is refused naming the field; the right one starts a session with an HttpOnly cookie
    // that is not the token.
    let json_type = ("content-type", "application/json");
    let studio = ("x-skyreels-studio", "1");
    let good = json!({"token": alice}).to_string();
    assert_eq!(request(base, "POST", "/v1/session", &[json_type], &good).0, 403);
    assert_eq!(request(base, "POST", "/v1/session", &[("content-type", "text/plain"), studio], &good).0, 403);
    let (status, _, body) = request(base, "POST", "/v1/session", &[json_type, studio], r#"{"token": "sk_wrong"}"#);
    assert_eq!(status, 401);
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["field"], "token");
    let (status, headers, body) = request(base, "POST", "/v1/session", &[json_type, studio], &good);
    assert_eq!(status, 200, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["name"], "alice");
    let set_cookie = header(&headers, "set-cookie");
    assert!(set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"), "{set_cookie}");
    assert!(!set_cookie.contains(&alice), "the cookie must not carry the API token");
    let cookie = set_cookie.split(';').next().unwrap().to_string();

    // The cookie reads; a change also needs the page's header, which a cross-site form cannot send.
    assert_eq!(request(base, "GET", "/v1/session", &[("cookie", &cookie)], "").0, 200);
    assert_eq!(request(base, "GET", "/v1/jobs", &[("cookie", &cookie)], "").0, 200);
    let job = json!({"prompt": "a red ball", "frames": 33, "steps": 3}).to_string();
    let (status, _, body) = request(base, "POST", "/v1/jobs", &[("cookie", &cookie), json_type], &job);
    assert_eq!(status, 403, "{body}");
    let with_header = [("cookie", cookie.as_str()), json_type, studio];
    assert_eq!(request(base, "POST", "/v1/jobs", &with_header, &job).0, 201);
    assert_eq!(request(base, "GET", "/v1/jobs", &[("cookie", "skyreels_session=ss_wrong")], "").0, 401);
    let (status, headers, _) =
        request(base, "POST", "/v1/session", &[json_type, studio], &json!({"token": alice}).to_string());
    let second = header(&headers, "set-cookie").split(';').next().unwrap().to_string();
    assert_eq!(status, 200);

    // Signing out ends that session on the server, not only in the browser.
    let (status, headers, _) = request(base, "DELETE", "/v1/session", &[("cookie", &cookie)], "");
    assert_eq!(status, 204);
    assert!(header(&headers, "set-cookie").contains("Max-Age=0"));
    assert_eq!(request(base, "GET", "/v1/session", &[("cookie", &cookie)], "").0, 401);
    assert_eq!(raw(base, b"GET /v1/session HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"), 401);
    // Deleting the token ends its other sessions too.
    assert_eq!(request(base, "GET", "/v1/session", &[("cookie", &second)], "").0, 200);
    let out = skyreels()
        .args(["serve", "token", "delete", "alice", "--data", dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(request(base, "GET", "/v1/session", &[("cookie", &second)], "").0, 401);
}

#[test]
fn config_refusals_events_sidecar_and_extending_a_finished_job() {
    let _heavy = heavy();
    let dir = temp();
    let token = create_token(dir.path(), None, "bob", false);
    let demo_dir = skyreels_core::pipelines::generation::demo_model_dir();
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/../skyreels-core/tests/fixtures/models");
    let (t2v, i2v) = (format!("{fixtures}/t2v_pipeline"), format!("{fixtures}/i2v_pipeline"));
    let models = ["--model", demo_dir.to_str().unwrap(), "--model", &t2v, "--model", &i2v];
    let server = Server::start(dir.path(), &models);
    let client = server.client(&token);

    // The models with their defaults (the demo model's skyreels.json, completed), the pipeline
    // each runs, and the caps.
    let config = client.get("/v1/config").json();
    let pipelines: Vec<&str> =
        config["models"].as_array().unwrap().iter().map(|m| m["pipeline"].as_str().unwrap()).collect();
    assert_eq!(pipelines, ["diffusion_forcing", "text_to_video", "image_to_video"]);
    let demo = &config["models"][0];
    assert_eq!(demo["name"], "skyreels-demo");
    assert_eq!((demo["defaults"]["height"].as_u64(), demo["defaults"]["frames"].as_u64()), (Some(64), Some(81)));
    assert_eq!(demo["defaults"]["text_length"], 32);
    assert_eq!(config["limits"]["endless"], false);
    assert_eq!(config["limits"]["max_upload_bytes"], 256 << 20);

    // Every refusal names the field a form shows it beside.
    let refusals = [
        (json!({"prompt": "x", "width": 1000}), "width"),
        (json!({"prompt": "x", "height": 99999}), "height"),
        (json!({"prompt": "x", "base_frames": 33, "overlap_history": 33}), "overlap_history"),
        (json!({"prompt": " "}), "prompt"),
        (json!({"prompt": "x", "frames": 0}), "frames"),
        (json!({"prompt": "x", "model": "nope"}), "model"),
        (json!({"prompt": "x", "image": "0123456789abcdef0123456789abcdef"}), "image"),
        (json!({"prompt": "x", "extend_job": "0123456789abcdef0123456789abcdef"}), "extend_job"),
        (json!({"prompt": "x", "format": "avi"}), "format"),
    ];
    for (settings, field) in refusals {
        let reply = client.post_json("/v1/jobs", &settings);
        assert_eq!(reply.status, 400, "{settings}: {}", reply.text());
        assert_eq!(reply.json()["field"], field, "{settings}: {}", reply.text());
    }
    assert!(client.post_json("/v1/jobs", &json!({"prompt": "x", "sigma_grid": "odd"})).json()["field"].is_null());

    // One stream for all jobs: each change of each job, until it is done.
    let mut events = client.event_stream("/v1/events");
    let id = client.create(&quick("a green square"));
    let mut states = Vec::new();
    for (name, job) in events.by_ref() {
        assert_eq!(name, "job");
        if job["id"] == id.as_str() {
            states.push(job["state"].as_str().unwrap().to_string());
            if job["state"] == "done" {
                break;
            }
        }
    }
    assert!(states.contains(&"running".to_string()), "{states:?}");

    // The settings file of the video.
    // The settings file, naming the model and the output as the client knows them, not by the
    // server's paths.
    let sidecar = client.get(&format!("/v1/jobs/{id}/sidecar"));
    assert_eq!(sidecar.status, 200);
    let settings = &sidecar.json()["settings"];
    assert_eq!(settings["seed"], 5, "{}", sidecar.text());
    assert_eq!((settings["model"].as_str(), settings["output"].as_str()), (Some("skyreels-demo"), Some("video.mp4")));
    assert!(!sidecar.text().contains(dir.path().to_str().unwrap()), "{}", sidecar.text());

    // Extending the finished job: its video is copied to a new upload, so the extension does not
    // depend on the original staying.
    let reply =
        client.post_json("/v1/jobs", &json!({"prompt": "it turns", "extend_job": id, "frames": 33, "steps": 3}));
    assert_eq!(reply.status, 201, "{}", reply.text());
    let extension = reply.json();
    assert_eq!(extension["kind"], "extend");
    assert!(extension["settings"]["extend_job"].is_null());
    let upload = extension["settings"]["extend"].as_str().unwrap().to_string();
    assert_eq!(client.delete(&format!("/v1/jobs/{id}")).status, 204);
    let deleted = events.by_ref().find(|(name, job)| name == "deleted" && job["id"] == id.as_str());
    assert!(deleted.is_some());
    let (_, last) = follow(&client, extension["id"].as_str().unwrap());
    assert_eq!(last["state"], "done", "{last}");
    assert_eq!(last["frames"], 33 + 33 - 17);
    assert!(dir.path().join("uploads").read_dir().unwrap().flatten().any(|owner| owner.path().join(&upload).is_file()));
}
