//! What the tests of `skyreels serve` share: the binary, tokens, and a server on a loopback port.
//! Included with `#[path]` by each test crate that needs it.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

pub fn skyreels() -> Command {
    Command::new(env!("CARGO_BIN_EXE_skyreels"))
}

/// Creates a token in the queue of `data` (and `database`), returning its secret.
pub fn create_token(data: &Path, database: Option<&str>, name: &str, admin: bool) -> String {
    let mut cmd = skyreels();
    cmd.args(["serve", "token", "create", "--name", name, "--data", data.to_str().unwrap()]);
    if let Some(url) = database {
        cmd.args(["--database", url]);
    }
    if admin {
        cmd.arg("--admin");
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "token create: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A running `skyreels serve`, killed with SIGKILL when dropped.
pub struct Server {
    pub child: Child,
    pub base: String,
}

impl Server {
    /// Starts a server on a free loopback port.
    pub fn start(data: &Path, extra: &[&str]) -> Server {
        Server::start_at("127.0.0.1:0", data, extra)
    }

    /// Starts a server listening on `address` (port 0: a free one).
    pub fn start_at(address: &str, data: &Path, extra: &[&str]) -> Server {
        let mut cmd = skyreels();
        cmd.args(["serve", "--listen", address, "--data", data.to_str().unwrap(), "--lease-seconds", "2"]);
        cmd.args(extra).stdout(Stdio::piped()).stderr(Stdio::inherit());
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        let base =
            line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("server said `{line}`")).to_string();
        Server { child, base }
    }

    /// SIGKILL, as a crash or an OOM kill would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}
