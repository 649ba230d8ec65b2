//! Hostile input on every endpoint: only 4xx answers (JSON errors), never a 5xx, and the
//! server keeps serving.

use super::client::raw;
use super::*;

/// Deterministic pseudo-random numbers (xorshift), so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[(self.next() % items.len() as u64) as usize]
    }
}

fn hostile_values() -> Vec<Value> {
    vec![
        json!(null),
        json!(-1),
        json!(-16),
        json!(0),
        json!(1e308),
        json!(u64::MAX),
        json!(i64::MIN),
        json!(3.5),
        json!(""),
        json!("../../etc/passwd"),
        json!("/etc/passwd"),
        json!("0123456789abcdef0123456789abcdef"),
        json!("a".repeat(5000)),
        json!([1, 2]),
        json!({"a": 1}),
        json!(true),
        json!("\u{0}\u{202e}"),
        json!([{"prompt": ""}]),
        json!([{"prompt": "x", "windows": 0}]),
        json!([{"prompt": "x", "windows": 99999999999u64}]),
        json!(1264),
        json!(1_000_000),
    ]
}

/// The job's fields (with `extend_job`, which the server resolves itself), and two it never has.
fn fields() -> Vec<&'static str> {
    let mut fields = skyreels_serve::jobs::FIELDS.to_vec();
    fields.extend(["unknown_field", "../x"]);
    fields
}

fn request(method: &str, path: &str, token: &str, content_type: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nContent-Type: {content_type}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

#[test]
fn hostile_requests_get_4xx_and_the_server_keeps_serving() {
    let dir = temp();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let token = create_token(&data, None, "fuzzer", false);
    let server = Server::start(&data, &["--no-worker", "--max-queue", "5", "--max-upload-mib", "1"]);
    let base = &server.base;
    let client = server.client(&token);
    let id = client.create(&quick("a target"));
    let mut sent = 0;
    let mut check = |method: &str, path: &str, content_type: &str, body: &[u8]| {
        let status = raw(base, &request(method, path, &token, content_type, body));
        sent += 1;
        assert!(
            (200..500).contains(&status) && status != 0,
            "{method} {path} {:?} → {status}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        );
        status
    };

    // Malformed bodies on the endpoints that take one.
    let bodies: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"{".to_vec(),
        b"nul".to_vec(),
        b"[]".to_vec(),
        b"\"prompt\"".to_vec(),
        b"{\"prompt\": \"x\", \"prompt\": \"y\"}".to_vec(),
        vec![0xff, 0xfe, 0x00, 0x7b],
        b"{\"prompt\": \"\\ud800\"}".to_vec(),
        format!("{{\"prompt\": \"{}\"}}", "x".repeat(2 << 20)).into_bytes(),
        b"{\"prompt\": 99999999999999999999999999999999999}".to_vec(),
    ];
    for body in &bodies {
        for content_type in ["application/json", "text/plain", "multipart/form-data; boundary=x"] {
            assert!(check("POST", "/v1/jobs", content_type, body) >= 400);
        }
    }
    // Field by field: every hostile value in every field.
    let all_fields = fields();
    for field in &all_fields {
        for value in hostile_values() {
            let mut body = quick("fuzz");
            body[*field] = value;
            check("POST", "/v1/jobs", "application/json", body.to_string().as_bytes());
        }
    }
    // Random combinations.
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let values = hostile_values();
    for _ in 0..300 {
        let mut body = json!({});
        for _ in 0..(1 + rng.next() % 5) {
            body[*rng.pick(&all_fields)] = rng.pick(&values).clone();
        }
        check("POST", "/v1/jobs", "application/json", body.to_string().as_bytes());
    }
    // Paths: traversal, bad ids, bad queries, wrong methods, on every endpoint.
    let ids = [
        id.as_str(),
        "..",
        "..%2F..%2Fetc%2Fpasswd",
        "%00",
        "0123456789abcdef0123456789abcdef",
        "ZZZZ",
        "a%20b",
        &"f".repeat(5000),
    ];
    for bad in ids {
        for suffix in ["", "/events", "/video", "/preview", "/cancel"] {
            let path = format!("/v1/jobs/{bad}{suffix}");
            for method in ["GET", "POST", "DELETE", "PUT", "PATCH"] {
                if bad == id && (method == "DELETE" || suffix == "/cancel") {
                    continue;
                }
                if bad == id && suffix == "/events" && method == "GET" {
                    continue; // a live stream: followed elsewhere
                }
                check(method, &path, "application/json", b"{}");
            }
        }
    }
    for query in
        ["limit=-1", "limit=99999999999999999999", "offset=x", "state=../../x", "state=running&bogus=1", "%ff=%fe"]
    {
        check("GET", &format!("/v1/jobs?{query}"), "application/json", b"");
    }
    for path in ["/", "/v1", "/v1/", "/../../etc/passwd", "/v1/jobs/../../etc/passwd", "/v1/uploads/x", "/v2/jobs"] {
        check("GET", path, "application/json", b"");
    }
    for id in ["x", "..", "..%2F..%2Fskyreels.db", "%2e%2e", "0123456789abcdef0123456789abcdef"] {
        assert!(check("DELETE", &format!("/v1/uploads/{id}"), "application/json", b"") >= 400);
    }
    assert!(data.join("skyreels.db").is_file());
    // Uploads: names in the query are ignored (files get generated names), empty, oversized
    // (over --max-upload-mib 1).
    for query in ["?name=../../escape.png", "?filename=%2e%2e%2fescape.png", "?id=../x"] {
        check("POST", &format!("/v1/uploads{query}"), "image/png", b"x");
    }
    assert!(!dir.path().join("escape.png").exists() && !data.join("escape.png").exists());
    assert_eq!(check("POST", "/v1/uploads", "image/png", b""), 400);
    assert_eq!(check("POST", "/v1/uploads", "image/png", &vec![7u8; 2 << 20]), 413);
    // Range headers the file service must refuse politely.
    for range in ["bytes=999999-", "bytes=5-1", "lines=1-2", "bytes=-0"] {
        let r = format!(
            "GET /v1/jobs/{id}/video HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nRange: {range}\r\nConnection: close\r\n\r\n"
        );
        let status = raw(base, r.as_bytes());
        assert!((400..500).contains(&status), "range {range} → {status}");
    }
    // The queue limit answers 429.
    let mut statuses = Vec::new();
    for i in 0..8 {
        statuses.push(client.post_json("/v1/jobs", &quick(&format!("fill {i}"))).status);
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    assert!(statuses.iter().all(|s| [201, 429].contains(s)), "{statuses:?}");

    // Errors are JSON, and the server still answers.
    let reply = client.post("/v1/jobs", "application/json", b"{");
    assert_eq!(reply.status, 400);
    assert!(reply.json()["error"].is_string());
    assert_eq!(client.get("/v1/health").status, 200);
    assert_eq!(client.get(&format!("/v1/jobs/{id}")).status, 200);
    assert!(sent > 1000, "{sent} requests sent");

    // The OpenAPI document is generated from the handlers: every route and the job's fields.
    let doc = client.get("/v1/openapi.json").json();
    for path in [
        "/v1/health",
        "/v1/uploads",
        "/v1/uploads/{id}",
        "/v1/jobs",
        "/v1/jobs/{id}",
        "/v1/jobs/{id}/cancel",
        "/v1/jobs/{id}/events",
        "/v1/jobs/{id}/video",
        "/v1/jobs/{id}/preview",
        "/v1/metrics",
        "/v1/openapi.json",
        "/v1/session",
        "/v1/config",
        "/v1/events",
        "/v1/jobs/{id}/sidecar",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} is missing from the OpenAPI document");
    }
    let fields = doc["components"]["schemas"]["JobRequest"]["properties"].as_object().unwrap();
    assert!(skyreels_serve::jobs::FIELDS.iter().all(|f| fields.contains_key(*f)));
}
