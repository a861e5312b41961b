//! Test harness: a project folder, the real `ferry` binary on port 0, and a local receiver
//! that records requests and injects faults.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

pub(crate) const ADMIN_KEY: &str = "test-admin-key-0123456789";

/// A project folder with flows and connections; `@RECEIVER@` in files becomes the receiver URL.
pub(crate) struct Project {
    pub(crate) dir: tempfile::TempDir,
}

impl Project {
    pub(crate) fn new(files: &[(&str, &str)], receiver: Option<&Receiver>) -> Project {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("flows")).unwrap();
        std::fs::create_dir_all(dir.path().join("connections")).unwrap();
        for (name, text) in files {
            let text = match receiver {
                Some(r) => text.replace("@RECEIVER@", &r.url()),
                None => text.to_string(),
            };
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        Project { dir }
    }

    /// A copy of a project folder of this repository (`examples/…`), with each `(from, to)`
    /// replaced in every file (to point connections at test servers).
    pub(crate) fn copy_of(relative: &str, replace: &[(&str, &str)]) -> Project {
        fn copy(from: &Path, to: &Path, replace: &[(&str, &str)]) {
            std::fs::create_dir_all(to).unwrap();
            for entry in std::fs::read_dir(from).unwrap() {
                let entry = entry.unwrap();
                let target = to.join(entry.file_name());
                if entry.file_type().unwrap().is_dir() {
                    copy(&entry.path(), &target, replace);
                } else {
                    let mut text = std::fs::read_to_string(entry.path()).unwrap();
                    for (a, b) in replace {
                        text = text.replace(a, b);
                    }
                    std::fs::write(target, text).unwrap();
                }
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let source = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../..")
            .join(relative);
        copy(&source, dir.path(), replace);
        Project { dir }
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// A running `ferry serve`.
pub(crate) struct Ferry {
    child: Option<Child>,
    pub(crate) addr: SocketAddr,
    pub(crate) project: PathBuf,
    pub(crate) data: PathBuf,
    pub(crate) log: Arc<Mutex<String>>,
    pub(crate) http: reqwest::Client,
    extra_args: Vec<String>,
    env: Vec<(String, String)>,
}

pub(crate) fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_ferry")
}

impl Ferry {
    pub(crate) fn start(project: &Project) -> Ferry {
        Ferry::start_with(project, &[])
    }

    /// With extra environment variables for the server process.
    pub(crate) fn start_env(project: &Project, env: &[(&str, &str)]) -> Ferry {
        Ferry::start_env_args(project, env, &[])
    }

    /// With extra environment variables and arguments.
    pub(crate) fn start_env_args(project: &Project, env: &[(&str, &str)], args: &[&str]) -> Ferry {
        let mut f = Ferry::prepared(project, args);
        f.env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        f.spawn();
        f
    }

    pub(crate) fn start_with(project: &Project, args: &[&str]) -> Ferry {
        let mut f = Ferry::prepared(project, args);
        f.spawn();
        f
    }

    fn prepared(project: &Project, args: &[&str]) -> Ferry {
        let data = project.path().join(".ferry");
        Ferry {
            child: None,
            addr: "127.0.0.1:0".parse().unwrap(),
            project: project.path().to_path_buf(),
            data,
            log: Arc::new(Mutex::new(String::new())),
            http: reqwest::Client::new(),
            extra_args: args.iter().map(|s| s.to_string()).collect(),
            env: Vec::new(),
        }
    }

    fn spawn(&mut self) {
        let mut child = Command::new(bin())
            .arg("serve")
            .arg(&self.project)
            .args(["--listen", "127.0.0.1:0", "--data"])
            .arg(&self.data)
            .args(&self.extra_args)
            .env("FERRY_ADMIN_KEY", ADMIN_KEY)
            .env("FERRY_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ferry starts");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let log = self.log.clone();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if !sent && let Some(i) = line.find("listening on ") {
                    let rest = &line[i + "listening on ".len()..];
                    let addr = rest.split_whitespace().next().unwrap_or("").to_owned();
                    let _ = tx.send(addr);
                    sent = true;
                }
                let mut l = log.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| {
                let _ = child.kill();
                panic!("ferry did not start; log:\n{}", self.log.lock().unwrap())
            });
        self.addr = addr.parse().expect("a socket address");
        self.child = Some(child);
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// `kill -9`: no shutdown code runs.
    pub(crate) fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// SIGTERM, then wait for the process to exit; returns its exit status.
    pub(crate) fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        c.wait().unwrap()
    }

    pub(crate) fn restart(&mut self) {
        assert!(self.child.is_none(), "stop it first");
        self.spawn();
    }

    pub(crate) async fn post(
        &self,
        path: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
        headers: &[(&str, &str)],
    ) -> reqwest::Response {
        let mut req = self
            .http
            .post(self.url(path))
            .header("content-type", content_type)
            .body(body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send().await.expect("request sent")
    }

    pub(crate) async fn post_json(
        &self,
        path: &str,
        body: &Value,
        headers: &[(&str, &str)],
    ) -> reqwest::Response {
        self.post(path, "application/json", body.to_string(), headers)
            .await
    }

    pub(crate) async fn api(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .http
            .request(method, self.url(&format!("/api/v1{path}")))
            .bearer_auth(ADMIN_KEY);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = StatusCode::from_u16(resp.status().as_u16()).unwrap();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub(crate) async fn run(&self, id: &str) -> Value {
        let (status, v) = self.api(Method::GET, &format!("/runs/{id}"), None).await;
        assert_eq!(status, StatusCode::OK, "{v}");
        v
    }

    /// Posts a JSON event to a webhook path (expecting 202) and waits for its run to end.
    pub(crate) async fn run_event(&self, path: &str, body: &Value) -> Value {
        let resp = self.post_json(path, body, &[]).await;
        assert_eq!(resp.status(), 202);
        let v: Value = resp.json().await.unwrap();
        self.wait_final(v["run_id"].as_str().unwrap(), Duration::from_secs(20))
            .await
    }

    /// True when `/healthz` answers 200.
    pub(crate) async fn healthy(&self) -> bool {
        self.http
            .get(self.url("/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    }

    /// Polls until the run reaches a final status (or panics after `timeout`).
    pub(crate) async fn wait_final(&self, id: &str, timeout: Duration) -> Value {
        let until = Instant::now() + timeout;
        loop {
            let v = self.run(id).await;
            if matches!(v["status"].as_str(), Some("succeeded" | "failed" | "dead")) {
                return v;
            }
            assert!(
                Instant::now() < until,
                "run {id} not final after {timeout:?}: {v:#}\nlog:\n{}",
                self.log.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Ferry {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One recorded request.
#[derive(Clone, Debug)]
pub(crate) struct Recorded {
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
    pub(crate) at: Instant,
}

impl Recorded {
    pub(crate) fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
    pub(crate) fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// What the receiver does with the next request.
#[derive(Clone, Debug)]
pub(crate) enum Fault {
    Status(u16),
    StatusWithRetryAfter(u16, u64),
    /// Close the connection without an answer.
    Reset,
    /// Answer 200 after a delay.
    Slow(Duration),
    /// Answer 200 with a JSON body of this many bytes.
    Big(usize),
    /// Answer with this status and a body that echoes the request's URL, headers and body,
    /// as a verbose upstream error page does.
    Echo(u16),
    /// Answer 302 to this location.
    Redirect(String),
    /// Answer with this status and no body at all.
    Empty(u16),
}

#[derive(Default)]
struct ReceiverState {
    requests: Mutex<Vec<Recorded>>,
    faults: Mutex<VecDeque<Fault>>,
    /// Faults for one path only, taken before the shared queue.
    path_faults: Mutex<std::collections::HashMap<String, VecDeque<Fault>>>,
    /// Delay for every request (after scripted faults).
    delay: Mutex<Option<Duration>>,
}

/// A local HTTP server that records every request; answers 200 `{"ok": true}` unless a
/// scripted fault says otherwise.
pub(crate) struct Receiver {
    pub(crate) addr: SocketAddr,
    state: Arc<ReceiverState>,
}

impl Receiver {
    pub(crate) async fn start() -> Receiver {
        let state = Arc::new(ReceiverState::default());
        let app = axum::Router::new()
            .fallback(record)
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver { addr, state }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub(crate) fn fail_next(&self, faults: impl IntoIterator<Item = Fault>) {
        self.state.faults.lock().unwrap().extend(faults);
    }

    /// Scripts faults for requests to `path` only (whatever arrives first elsewhere).
    pub(crate) fn fail_path(&self, path: &str, faults: impl IntoIterator<Item = Fault>) {
        self.state
            .path_faults
            .lock()
            .unwrap()
            .entry(path.to_owned())
            .or_default()
            .extend(faults);
    }

    pub(crate) fn set_delay(&self, d: Option<Duration>) {
        *self.state.delay.lock().unwrap() = d;
    }

    pub(crate) fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().unwrap().clone()
    }

    pub(crate) fn requests_to(&self, path: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    }

    pub(crate) async fn wait_for(&self, path: &str, n: usize, timeout: Duration) -> Vec<Recorded> {
        let until = Instant::now() + timeout;
        loop {
            let got = self.requests_to(path);
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < until,
                "expected {n} requests to {path}, got {}",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn record(
    State(state): State<Arc<ReceiverState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let echo = serde_json::json!({
        "error": "unauthorized",
        "you_sent": {
            "url": uri.to_string(),
            "headers": headers.iter().map(|(k, v)| (k.as_str().to_owned(), Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()))).collect::<serde_json::Map<_, _>>(),
            "body": String::from_utf8_lossy(&body),
        }
    });
    state.requests.lock().unwrap().push(Recorded {
        method: method.to_string(),
        path: uri.path().to_owned(),
        headers,
        body,
        at: Instant::now(),
    });
    let for_path = state
        .path_faults
        .lock()
        .unwrap()
        .get_mut(uri.path())
        .and_then(VecDeque::pop_front);
    let fault = for_path.or_else(|| state.faults.lock().unwrap().pop_front());
    let delay = *state.delay.lock().unwrap();
    match fault {
        Some(Fault::Status(s)) => {
            (StatusCode::from_u16(s).unwrap(), "{\"error\":\"injected\"}").into_response()
        }
        Some(Fault::Empty(s)) => StatusCode::from_u16(s).unwrap().into_response(),
        Some(Fault::StatusWithRetryAfter(s, secs)) => (
            StatusCode::from_u16(s).unwrap(),
            [("retry-after", secs.to_string())],
            "slow down",
        )
            .into_response(),
        Some(Fault::Reset) => panic!("injected connection reset"),
        Some(Fault::Redirect(to)) => (StatusCode::FOUND, [("location", to)], "").into_response(),
        Some(Fault::Echo(s)) => (
            StatusCode::from_u16(s).unwrap(),
            [("content-type", "application/json")],
            echo.to_string(),
        )
            .into_response(),
        Some(Fault::Big(n)) => {
            let body = format!("\"{}\"", "x".repeat(n.saturating_sub(2)));
            ([("content-type", "application/json")], body).into_response()
        }
        Some(Fault::Slow(d)) => {
            tokio::time::sleep(d).await;
            ok()
        }
        None => {
            if let Some(d) = delay {
                tokio::time::sleep(d).await;
            }
            ok()
        }
    }
}

fn ok() -> Response {
    ([("content-type", "application/json")], "{\"ok\":true}").into_response()
}
