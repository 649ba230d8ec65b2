//! A small HTTP client over ureq, and a raw one for requests ureq would refuse to send.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::Value;

/// A status and a body.
pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
    pub content_type: String,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// Calls the API with one token.
pub struct Client {
    pub base: String,
    pub token: String,
    agent: ureq::Agent,
}

impl Client {
    pub fn new(base: &str, token: &str) -> Self {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(300)))
            .build()
            .into();
        Self { base: base.to_string(), token: token.to_string(), agent }
    }

    fn finish(result: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Reply {
        let mut response = result.unwrap();
        let status = response.status().as_u16();
        let content_type =
            response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        let body = response.body_mut().with_config().limit(256 << 20).read_to_vec().unwrap();
        Reply { status, body, content_type }
    }

    fn auth(&self) -> String {
        format!("Bearer {}", self.token)
    }

    pub fn get(&self, path: &str) -> Reply {
        Self::finish(self.agent.get(format!("{}{path}", self.base)).header("Authorization", self.auth()).call())
    }

    pub fn get_with(&self, path: &str, header: (&str, &str)) -> Reply {
        Self::finish(
            self.agent
                .get(format!("{}{path}", self.base))
                .header("Authorization", self.auth())
                .header(header.0, header.1)
                .call(),
        )
    }

    pub fn post_json(&self, path: &str, body: &Value) -> Reply {
        self.post(path, "application/json", body.to_string().as_bytes())
    }

    pub fn post(&self, path: &str, content_type: &str, body: &[u8]) -> Reply {
        Self::finish(
            self.agent
                .post(format!("{}{path}", self.base))
                .header("Authorization", self.auth())
                .header("Content-Type", content_type)
                .send(body),
        )
    }

    pub fn delete(&self, path: &str) -> Reply {
        Self::finish(self.agent.delete(format!("{}{path}", self.base)).header("Authorization", self.auth()).call())
    }

    /// Creates a job; panics unless it was accepted.
    pub fn create(&self, settings: &Value) -> String {
        let reply = self.post_json("/v1/jobs", settings);
        assert_eq!(reply.status, 201, "{}", reply.text());
        reply.json()["id"].as_str().unwrap().to_string()
    }

    /// Reads a Server-Sent Events stream to its end: (event name, JSON data) pairs.
    pub fn events(&self, path: &str) -> Vec<(String, Value)> {
        self.event_stream(path).collect()
    }

    /// A Server-Sent Events stream, event by event, as (event name, JSON data) pairs.
    pub fn event_stream(&self, path: &str) -> impl Iterator<Item = (String, Value)> {
        let response =
            self.agent.get(format!("{}{path}", self.base)).header("Authorization", self.auth()).call().unwrap();
        assert_eq!(response.status().as_u16(), 200);
        let mut lines = BufReader::new(response.into_body().into_reader()).lines();
        let mut name = String::from("message");
        std::iter::from_fn(move || {
            for line in lines.by_ref() {
                let line = line.unwrap();
                if let Some(n) = line.strip_prefix("event:") {
                    name = n.trim().to_string();
                } else if let Some(data) = line.strip_prefix("data:") {
                    return Some((name.clone(), serde_json::from_str(data.trim()).unwrap()));
                } else if line.is_empty() {
                    name = String::from("message");
                }
            }
            None
        })
    }
}

/// Sends `request` as is (any method, path, headers and body) and returns the status.
pub fn raw(base: &str, request: &[u8]) -> u16 {
    let address = base.trim_start_matches("http://");
    let mut stream = TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    // The server may answer (413) before reading everything; a reset while sending is fine.
    let _ = stream.write_all(request);
    let mut first = String::new();
    let mut reader = BufReader::new(stream);
    if reader.read_line(&mut first).is_err() {
        return 0;
    }
    let mut rest = Vec::new();
    let _ = reader.read_to_end(&mut rest);
    first.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}
