//! Tokens: required everywhere but health, stored hashed, scoped to their owner, revocable.

use super::client::raw;
use super::*;

#[test]
fn requests_without_a_valid_token_or_for_others_jobs_are_refused() {
    let dir = temp();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let alice = create_token(&data, None, "alice", false);
    let mallory = create_token(&data, None, "mallory", false);
    let admin = create_token(&data, None, "root", true);
    // The jobs stay queued: this test is about access, not generation.
    let server = Server::start(&data, &["--no-worker"]);
    let id = server.client(&alice).create(&quick("private"));

    let job_paths = ["", "/events", "/video", "/preview"].map(|suffix| format!("/v1/jobs/{id}{suffix}"));
    for path in job_paths.iter().map(String::as_str).chain(["/v1/jobs", "/v1/metrics", "/v1/openapi.json"]) {
        let no_token =
            raw(&server.base, format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes());
        assert_eq!(no_token, 401, "{path} without a token");
        assert_eq!(server.client("sk_wrong").get(path).status, 401, "{path} with a wrong token");
    }
    assert_eq!(raw(&server.base, b"GET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"), 200);

    // Another user's job does not exist for them, whatever they try.
    let other = server.client(&mallory);
    for path in &job_paths {
        assert_eq!(other.get(path).status, 404, "{path}");
    }
    assert_eq!(other.post(&format!("/v1/jobs/{id}/cancel"), "application/json", b"").status, 404);
    assert_eq!(other.delete(&format!("/v1/jobs/{id}")).status, 404);
    assert_eq!(other.get("/v1/jobs").json()["jobs"].as_array().unwrap().len(), 0);
    // Nor can they use its uploads.
    let upload = server.client(&alice).post("/v1/uploads", "image/png", b"not really a png").json()["id"].clone();
    let reply = other.post_json("/v1/jobs", &json!({"prompt": "x", "image": upload}));
    assert_eq!(reply.status, 400, "{}", reply.text());
    assert!(reply.json()["error"].as_str().unwrap().contains("no upload"));
    // Nor delete it; its owner can, once.
    let upload_path = format!("/v1/uploads/{}", upload.as_str().unwrap());
    assert_eq!(other.delete(&upload_path).status, 404);
    assert_eq!(server.client(&alice).delete(&upload_path).status, 204);
    assert_eq!(server.client(&alice).delete(&upload_path).status, 404);

    // An admin sees every job.
    let everyone = server.client(&admin).get("/v1/jobs").json();
    assert_eq!(everyone["jobs"].as_array().unwrap().len(), 1);
    assert_eq!(server.client(&admin).get(&format!("/v1/jobs/{id}")).status, 200);

    // A deleted token stops working at once.
    let out =
        skyreels().args(["serve", "token", "delete", "alice", "--data", data.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success());
    assert_eq!(server.client(&alice).get(&format!("/v1/jobs/{id}")).status, 401);

    // Only hashes are stored: no secret appears in the database files.
    let store = skyreels_serve::store::Store::open(&skyreels_serve::database_url(&data, None)).unwrap();
    let hashes = store.token_hashes().unwrap();
    assert!(hashes.contains(&skyreels_serve::store::hash_secret(&mallory)));
    for file in std::fs::read_dir(&data).unwrap().flatten() {
        let bytes = std::fs::read(file.path()).unwrap_or_default();
        for secret in [&alice, &mallory, &admin] {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{} holds a secret",
                file.path().display()
            );
        }
    }
}
