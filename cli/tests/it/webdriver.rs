//! A minimal W3C WebDriver client over reqwest, for the hosted-page tests:
//! chromedriver runs headless Debian chromium; the commands used are the
//! W3C ones plus the WebAuthn extension (virtual authenticators) and, for
//! phone-width screenshots and the cookie jar, chromedriver's CDP pass-through.
//! Why not a WebDriver crate: ADR 0209.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use queue_testkit::poll::{eventually_within, poll_until};
use serde_json::{json, Value};

/// How long a page wait (`wait_for`, `wait_path`, `wait_error`) may take.
const WAIT: Duration = Duration::from_secs(20);

/// The W3C key of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Fails, naming the setup script, when chromium or chromedriver is missing.
fn require(binary: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(binary))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!("{binary} is not installed: run scripts/browser-setup (scripts/test does)")
    })
}

/// A chromedriver process and one headless chromium session; both end on drop.
pub struct Browser {
    http: reqwest::Client,
    base: String,
    session: String,
    driver: Child,
    profile: PathBuf,
}

#[derive(Debug)]
pub struct WebDriverError {
    pub status: u16,
    pub error: String,
    pub message: String,
}

impl std::fmt::Display for WebDriverError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HTTP {} {}: {}", self.status, self.error, self.message)
    }
}

impl Browser {
    pub async fn start() -> Self {
        let chromium = require("chromium");
        let chromedriver = require("chromedriver");
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let profile =
            std::env::temp_dir().join(format!("queue-chromium-{}-{port}", std::process::id()));
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let mut browser = Self {
            http,
            base,
            session: String::new(),
            driver,
            profile,
        };
        let status = format!("{}/status", browser.base);
        eventually_within("chromedriver to start", Duration::from_secs(20), || {
            let probe = browser.http.get(&status).send();
            async move {
                let v: Value = probe.await.ok()?.json().await.ok()?;
                (v["value"]["ready"] == true).then_some(())
            }
        })
        .await;
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "webauthn:virtualAuthenticators": true,
            "goog:loggingPrefs": {"browser": "ALL"},
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu",
                    "--disable-dev-shm-usage", "--no-first-run",
                    "--hide-scrollbars", "--window-size=1280,900",
                    "--force-device-scale-factor=1",
                    format!("--user-data-dir={}", browser.profile.display()),
                ],
            },
        }}});
        let created = browser
            .raw("POST", "/session", Some(capabilities))
            .await
            .unwrap_or_else(|e| panic!("chromium did not start: {e}"));
        browser.session = created["value"]["sessionId"].as_str().unwrap().to_owned();
        browser
    }

    async fn raw(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, WebDriverError> {
        let url = format!("{}{path}", self.base);
        let request = match method {
            "GET" => self.http.get(url),
            "DELETE" => self.http.delete(url),
            _ => self.http.post(url).json(&body.unwrap_or_else(|| json!({}))),
        };
        let response = request.send().await.map_err(|e| WebDriverError {
            status: 0,
            error: "transport".into(),
            message: e.to_string(),
        })?;
        let status = response.status().as_u16();
        let value: Value = response.json().await.unwrap_or_default();
        if status >= 400 {
            return Err(WebDriverError {
                status,
                error: value["value"]["error"].as_str().unwrap_or("").to_owned(),
                message: value["value"]["message"].as_str().unwrap_or("").to_owned(),
            });
        }
        Ok(value)
    }

    /// A session command; returns its `value`.
    pub async fn cmd(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, WebDriverError> {
        let path = format!("/session/{}{path}", self.session);
        self.raw(method, &path, body)
            .await
            .map(|v| v["value"].clone())
    }

    async fn must(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.cmd(method, path, body.clone())
            .await
            .unwrap_or_else(|e| panic!("{method} {path} {body:?}: {e}"))
    }

    pub async fn goto(&self, url: &str) {
        self.must("POST", "/url", Some(json!({ "url": url }))).await;
    }

    pub async fn url(&self) -> String {
        self.must("GET", "/url", None)
            .await
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Runs `script` (a function body) in the page and returns its value.
    pub async fn js(&self, script: &str, args: Value) -> Value {
        self.must(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": args})),
        )
        .await
    }

    /// Runs `script` (a function body whose last argument is a callback).
    pub async fn js_async(&self, script: &str, args: Value) -> Value {
        self.must(
            "POST",
            "/execute/async",
            Some(json!({"script": script, "args": args})),
        )
        .await
    }

    pub async fn find_all(&self, css: &str) -> Vec<String> {
        let found = self
            .must(
                "POST",
                "/elements",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        found
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e[ELEMENT].as_str().unwrap().to_owned())
            .collect()
    }

    pub async fn count(&self, css: &str) -> usize {
        self.find_all(css).await.len()
    }

    /// Waits (20 s at most) for `css` to match; returns the first element.
    pub async fn wait_for(&self, css: &str) -> String {
        self.wait_for_count(css, |n| n > 0, "to appear").await;
        self.find_all(css).await.remove(0)
    }

    /// Waits (20 s at most) until the number of matches passes `ok`.
    pub async fn wait_for_count(&self, css: &str, ok: impl Fn(usize) -> bool, what: &str) {
        let ok = &ok;
        let met = poll_until(
            WAIT,
            || async move { ok(self.count(css).await).then_some(()) },
        )
        .await;
        if met.is_none() {
            panic!(
                "timed out waiting for {css} {what} (matches: {}) on {}; #error: {:?}",
                self.count(css).await,
                self.url().await,
                self.text_of("#error").await
            );
        }
    }

    /// Waits (20 s at most) until the page's path is `path`.
    pub async fn wait_path(&self, path: &str) {
        let there = poll_until(WAIT, || async move {
            let url = self.url().await;
            let here = url::Url::parse(&url)
                .map(|u| u.path().to_owned())
                .unwrap_or_default();
            let loaded = self.js("return document.readyState", json!([])).await == "complete";
            (here == path && loaded).then_some(())
        })
        .await;
        if there.is_none() {
            panic!(
                "timed out waiting for {path}; at {}; #error: {:?}",
                self.url().await,
                self.text_of("#error").await
            );
        }
    }

    /// Waits (20 s at most) for `#error` to say something; returns it.
    pub async fn wait_error(&self) -> String {
        let error = poll_until(WAIT, || async move {
            self.text_of("#error").await.filter(|t| !t.is_empty())
        })
        .await;
        match error {
            Some(text) => text,
            None => panic!("timed out waiting for #error on {}", self.url().await),
        }
    }

    /// The visible text of the first match, when there is one.
    pub async fn text_of(&self, css: &str) -> Option<String> {
        let first = self.find_all(css).await.into_iter().next()?;
        self.cmd("GET", &format!("/element/{first}/text"), None)
            .await
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
    }

    pub async fn attr(&self, element: &str, name: &str) -> Option<String> {
        self.must("GET", &format!("/element/{element}/attribute/{name}"), None)
            .await
            .as_str()
            .map(str::to_owned)
    }

    pub async fn click(&self, css: &str) {
        let element = self.wait_for(css).await;
        self.click_element(&element).await;
    }

    pub async fn click_element(&self, element: &str) {
        self.must("POST", &format!("/element/{element}/click"), None)
            .await;
    }

    /// Clears the input and types `text` into it.
    pub async fn type_into(&self, css: &str, text: &str) {
        let element = self.wait_for(css).await;
        self.must("POST", &format!("/element/{element}/clear"), None)
            .await;
        if !text.is_empty() {
            self.must(
                "POST",
                &format!("/element/{element}/value"),
                Some(json!({"text": text})),
            )
            .await;
        }
    }

    /// A chromedriver CDP command (`goog/cdp/execute`).
    pub async fn cdp(&self, cmd: &str, params: Value) -> Value {
        self.must(
            "POST",
            "/goog/cdp/execute",
            Some(json!({"cmd": cmd, "params": params})),
        )
        .await
    }

    /// Every cookie of the browser, HttpOnly ones included (CDP).
    pub async fn all_cookies(&self) -> Vec<Value> {
        self.cdp("Network.getAllCookies", json!({})).await["cookies"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The browser console since the last call.
    pub async fn console(&self) -> Vec<Value> {
        self.cmd("POST", "/se/log", Some(json!({"type": "browser"})))
            .await
            .ok()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
    }

    /// A virtual CTAP2 platform authenticator with resident keys and user
    /// verification (W3C WebAuthn §11); returns its id.
    pub async fn add_authenticator(&self) -> String {
        let created = self
            .must(
                "POST",
                "/webauthn/authenticator",
                Some(json!({
                    "protocol": "ctap2",
                    "transport": "internal",
                    "hasResidentKey": true,
                    "hasUserVerification": true,
                    "isUserVerified": true,
                    "isUserConsenting": true,
                })),
            )
            .await;
        created.as_str().unwrap().to_owned()
    }

    pub async fn remove_authenticator(&self, id: &str) {
        self.must("DELETE", &format!("/webauthn/authenticator/{id}"), None)
            .await;
    }

    /// The credentials an authenticator holds.
    pub async fn credentials(&self, id: &str) -> Vec<Value> {
        self.must(
            "GET",
            &format!("/webauthn/authenticator/{id}/credentials"),
            None,
        )
        .await
        .as_array()
        .cloned()
        .unwrap_or_default()
    }

    /// A full-page PNG at `width` CSS pixels (device metrics emulation, so a
    /// phone width is exact whatever the window's minimum size).
    pub async fn screenshot(&self, width: u32, mobile: bool, path: &std::path::Path) {
        let metrics = |height: u64| json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile});
        self.cdp("Emulation.setDeviceMetricsOverride", metrics(800))
            .await;
        let height = self
            .js(
                "return Math.ceil(document.documentElement.scrollHeight)",
                json!([]),
            )
            .await
            .as_u64()
            .unwrap_or(800)
            .max(640);
        self.cdp("Emulation.setDeviceMetricsOverride", metrics(height))
            .await;
        let png = self.must("GET", "/screenshot", None).await;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap())
            .unwrap();
        assert!(bytes.starts_with(b"\x89PNG"), "not a PNG");
        std::fs::write(path, bytes).unwrap();
        self.cdp("Emulation.clearDeviceMetricsOverride", json!({}))
            .await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ending the session closes chromium; then chromedriver goes.
        if !self.session.is_empty() {
            let url = format!("{}/session/{}", self.base, self.session);
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    let client = reqwest::Client::builder().no_proxy().build().unwrap();
                    let _ = client
                        .delete(url)
                        .timeout(Duration::from_secs(10))
                        .send()
                        .await;
                });
            })
            .join();
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}
