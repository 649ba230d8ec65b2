//! `skyreels serve` and `skyreels worker` driven over HTTP, as a client would: the real binary
//! on a loopback port with the built-in demo model.

mod client;
#[path = "../common/lora.rs"]
mod lora;
#[path = "../common/server.rs"]
mod server;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub use client::{Client, Reply};
use serde_json::{json, Value};
pub use server::{create_token, skyreels, Server};
use skyreels_core::media::open_video;

mod auth;
mod fuzz;
mod jobs;
mod resume;
mod studio_api;

/// Kill tests and long jobs share two cores: one at a time keeps their timing meaningful.
pub static HEAVY: Mutex<()> = Mutex::new(());

/// Holds [`HEAVY`] even after another test panicked while holding it.
pub fn heavy() -> std::sync::MutexGuard<'static, ()> {
    HEAVY.lock().unwrap_or_else(|e| e.into_inner())
}

impl Server {
    pub fn client(&self, token: &str) -> Client {
        Client::new(&self.base, token)
    }
}

/// A running `skyreels worker`, killed with SIGKILL when dropped.
pub struct Worker {
    pub child: Child,
    pub id: String,
}

impl Worker {
    pub fn start(data: &Path, database: Option<&str>) -> Worker {
        let mut cmd = skyreels();
        cmd.args(["worker", "--data", data.to_str().unwrap(), "--lease-seconds", "1", "--poll-seconds", "0.1"]);
        if let Some(url) = database {
            cmd.args(["--database", url]);
        }
        cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
        let mut child = cmd.spawn().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let id = line.split_whitespace().nth(1).unwrap_or_else(|| panic!("worker said `{line}`")).to_string();
        Worker { child, id }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Small settings for the demo model: 33 frames (one window), 3 steps.
pub fn quick(prompt: &str) -> Value {
    json!({"prompt": prompt, "frames": 33, "steps": 3, "seed": 5})
}

/// Four windows of 33 frames overlapping by 17 (81 frames), long enough to kill mid-job.
pub fn four_windows() -> Value {
    json!({"prompt": "a red ball rolls left", "frames": 81, "steps": 8, "seed": 21})
}

/// Follows a job's events to the end; returns the event names and the last job.
pub fn follow(client: &Client, id: &str) -> (Vec<String>, Value) {
    let events = client.events(&format!("/v1/jobs/{id}/events"));
    let names: Vec<String> = events.iter().map(|(name, _)| name.clone()).collect();
    let last = events.last().map(|(_, data)| data.clone()).unwrap_or(Value::Null);
    (names, last)
}

/// Polls a job until `until` holds or `timeout` passes; returns the job.
pub fn wait_for(client: &Client, id: &str, timeout: Duration, until: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let reply = client.get(&format!("/v1/jobs/{id}"));
        assert_eq!(reply.status, 200, "{}", reply.text());
        let job = reply.json();
        if until(&job) {
            return job;
        }
        assert!(start.elapsed() < timeout, "timed out waiting on job {id}: {job}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Frames committed so far (0 before the first window).
pub fn frames_done(job: &Value) -> u64 {
    job["progress"]["frames"].as_u64().unwrap_or(0)
}

/// Downloads a job's video into `dir` and decodes it: (frames, width, height).
pub fn download_and_decode(client: &Client, id: &str, dir: &Path) -> (usize, u32, u32, Vec<u8>) {
    let reply = client.get(&format!("/v1/jobs/{id}/video"));
    assert_eq!(reply.status, 200, "{}", reply.text());
    let path = dir.join(format!("{id}.mp4"));
    std::fs::write(&path, &reply.body).unwrap();
    let reader = open_video(&path).unwrap();
    let (w, h) = (reader.width(), reader.height());
    let frames = reader.inspect(|f| assert!(f.is_ok(), "{f:?}")).count();
    (frames, w, h, reply.body)
}

/// The bytes `skyreels generate` makes for the same settings (the reference for resumes).
pub fn reference_video(settings: &Value, dir: &Path) -> Vec<u8> {
    let out = dir.join("reference.mp4");
    let s = |k: &str| settings[k].to_string();
    let status = skyreels()
        .args(["generate", "--quiet", "-p", settings["prompt"].as_str().unwrap(), "-o", out.to_str().unwrap()])
        .args(["--frames", &s("frames"), "--steps", &s("steps"), "--seed", &s("seed")])
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::read(out).unwrap()
}

/// A fresh folder for one test.
pub fn temp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// A fresh, empty PostgreSQL database on the test server `tools/test/postgres.sh` starts.
pub fn postgres_database(name: &str) -> String {
    let url = std::env::var("SKYREELS_TEST_POSTGRES").unwrap_or_else(|_| {
        panic!("SKYREELS_TEST_POSTGRES is not set: export SKYREELS_TEST_POSTGRES=$(tools/test/postgres.sh) first (the README's test command)")
    });
    let admin = skyreels_serve::db::open(&url).unwrap();
    let db = format!("skyreels_{name}_{}", std::process::id());
    admin.batch(&format!("DROP DATABASE IF EXISTS {db}")).unwrap();
    admin.batch(&format!("CREATE DATABASE {db}")).unwrap();
    match url.rfind('/') {
        Some(i) if url[..i].contains("://") && i > url.find("://").unwrap() + 2 => format!("{}/{db}", &url[..i]),
        _ => format!("{url}/{db}"),
    }
}

/// Where a job's files are on the server.
pub fn job_dir(data: &Path, id: &str) -> PathBuf {
    data.join("jobs").join(id)
}
