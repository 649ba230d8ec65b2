//! A real headless Chromium driven over WebDriver (Debian's `chromium` and `chromium-driver`,
//! which `tools/test/chromium.sh` installs and names in `SKYREELS_TEST_CHROMEDRIVER`).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{json, Value};

/// Where the screenshots of every state are kept (the tests' artefacts).
pub fn screenshot_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("studio-screenshots")
}

/// A port nothing listens on now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One browser session; its chromedriver (and the Chromium it started) is killed when dropped.
pub struct Browser {
    pub client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium with a fresh profile and a `width × height` window.
    pub async fn start(width: u32, height: u32) -> Browser {
        let driver_path = std::env::var("SKYREELS_TEST_CHROMEDRIVER").unwrap_or_else(|_| {
            panic!(
                "SKYREELS_TEST_CHROMEDRIVER is not set: export SKYREELS_TEST_CHROMEDRIVER=$(tools/test/chromium.sh) first (the README's test command)"
            )
        });
        let chromium = std::env::var("SKYREELS_TEST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        let port = free_port();
        let mut command = Command::new(&driver_path);
        command.arg(format!("--port={port}")).stdout(Stdio::null()).stderr(Stdio::null());
        // Its own process group, so that dropping it also ends the browser it started.
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let driver = command.spawn().unwrap_or_else(|e| panic!("cannot start {driver_path}: {e}"));
        let profile = tempfile::tempdir().unwrap();
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    "--no-first-run", "--disable-quic", "--hide-scrollbars", "--force-device-scale-factor=1",
                    format!("--window-size={width},{height}"),
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            },
        });
        let Value::Object(capabilities) = capabilities else { unreachable!() };
        let url = format!("http://127.0.0.1:{port}");
        let start = Instant::now();
        let client = loop {
            match ClientBuilder::new(HttpConnector::new()).capabilities(capabilities.clone()).connect(&url).await {
                Ok(client) => break client,
                Err(e) if start.elapsed() > Duration::from_secs(30) => panic!("chromedriver did not start: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        let browser = Browser { client, driver, _profile: profile };
        // The outer window: its viewport is about 140 pixels shorter.
        browser.client.set_window_size(width, height).await.unwrap();
        browser
    }

    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.unwrap();
    }

    /// Runs `script` (a function body: `return …`) with `args`.
    pub async fn js(&self, script: &str, args: Vec<Value>) -> Value {
        self.client.execute(script, args).await.unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// Waits until `script` returns something truthy (polled every 50 ms); returns it.
    pub async fn wait_for(&self, what: &str, timeout: Duration, script: &str, args: Vec<Value>) -> Value {
        let start = Instant::now();
        loop {
            let value = self.js(script, args.clone()).await;
            let truthy = match &value {
                Value::Null | Value::Bool(false) => false,
                Value::String(s) => !s.is_empty(),
                Value::Number(n) => n.as_f64() != Some(0.0),
                _ => true,
            };
            if truthy {
                return value;
            }
            if start.elapsed() > timeout {
                self.screenshot(&format!("timeout-{}", what.replace(' ', "-"))).await;
                panic!("timed out after {timeout:?} waiting for {what}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the element `css` is displayed.
    pub async fn wait_visible(&self, css: &str) {
        let script = "const e = document.querySelector(arguments[0]); return e !== null && e.offsetParent !== null;";
        self.wait_for(&format!("{css} to show"), Duration::from_secs(20), script, vec![json!(css)]).await;
    }

    /// Waits until the text of `css` contains `text`.
    pub async fn wait_text(&self, css: &str, text: &str) -> String {
        let script =
            "const e = document.querySelector(arguments[0]); return e && e.textContent.includes(arguments[1]) ? e.textContent : null;";
        let what = format!("{css} to say `{text}`");
        let value = self.wait_for(&what, Duration::from_secs(20), script, vec![json!(css), json!(text)]).await;
        value.as_str().unwrap_or_default().to_string()
    }

    /// The text of `css` (empty when absent).
    pub async fn text(&self, css: &str) -> String {
        let script = "const e = document.querySelector(arguments[0]); return e ? e.textContent : '';";
        self.js(script, vec![json!(css)]).await.as_str().unwrap_or_default().to_string()
    }

    /// The value of the form control `css`.
    pub async fn value(&self, css: &str) -> String {
        let script = "return document.querySelector(arguments[0]).value;";
        self.js(script, vec![json!(css)]).await.as_str().unwrap_or_default().to_string()
    }

    /// Clicks `css` as a user would (it must be visible and enabled).
    pub async fn click(&self, css: &str) {
        let element = self.client.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("no {css}: {e}"));
        element.click().await.unwrap_or_else(|e| panic!("cannot click {css}: {e}"));
    }

    /// Replaces the text of the field `css` by typing `text`.
    pub async fn type_into(&self, css: &str, text: &str) {
        let element = self.client.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("no {css}: {e}"));
        element.clear().await.unwrap_or_else(|e| panic!("cannot clear {css}: {e}"));
        element.send_keys(text).await.unwrap_or_else(|e| panic!("cannot type into {css}: {e}"));
    }

    /// Chooses `file` in the file input `css`.
    pub async fn choose_file(&self, css: &str, file: &Path) {
        let element = self.client.find(Locator::Css(css)).await.unwrap();
        element.send_keys(&file.display().to_string()).await.unwrap_or_else(|e| panic!("cannot choose a file: {e}"));
    }

    /// A GET of the API from the page (with its session cookie), as JSON.
    pub async fn api(&self, path: &str) -> Value {
        let script = "const done = arguments[arguments.length - 1];
            fetch(arguments[0]).then((r) => r.json()).then(done, (e) => done({ error: String(e) }));";
        self.client.execute_async(script, vec![json!(path)]).await.unwrap()
    }

    /// Saves a screenshot of the page as `<name>.png` among the artefacts.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.client.screenshot().await.unwrap();
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let group = format!("-{}", self.driver.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.driver.wait();
    }
}
