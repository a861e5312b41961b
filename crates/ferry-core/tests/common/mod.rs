//! What the engine tests share: a scripted loopback server and throwaway projects.
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use axum::http::{HeaderMap, StatusCode, Uri};

/// A loopback server: answers each path with the statuses scripted for it, in order, then 200,
/// echoing a JSON request body (else `{"ok": true}`). Records every call.
#[derive(Clone, Default)]
pub(crate) struct Upstream {
    script: Arc<Mutex<HashMap<String, VecDeque<u16>>>>,
    calls: Arc<Mutex<Vec<String>>>,
    /// Every call: its path and `Idempotency-Key`.
    keys: Arc<Mutex<Vec<(String, String)>>>,
}

impl Upstream {
    pub(crate) async fn start() -> (Upstream, String) {
        let up = Upstream::default();
        let state = up.clone();
        let app =
            axum::Router::new().fallback(move |uri: Uri, headers: HeaderMap, body: String| {
                let state = state.clone();
                async move {
                    let path = uri.path().to_owned();
                    state.calls.lock().unwrap().push(path.clone());
                    let key = headers
                        .get("idempotency-key")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    state.keys.lock().unwrap().push((path.clone(), key));
                    let status = state
                        .script
                        .lock()
                        .unwrap()
                        .get_mut(&path)
                        .and_then(VecDeque::pop_front)
                        .unwrap_or(200);
                    let answer = if body.trim_start().starts_with('{') {
                        body
                    } else {
                        "{\"ok\":true}".to_owned()
                    };
                    (
                        StatusCode::from_u16(status).unwrap(),
                        [("content-type", "application/json")],
                        answer,
                    )
                }
            });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (up, url)
    }

    pub(crate) fn script(&self, path: &str, statuses: &[u16]) {
        self.script
            .lock()
            .unwrap()
            .entry(path.to_owned())
            .or_default()
            .extend(statuses);
    }

    /// The `Idempotency-Key` of every call, in order.
    pub(crate) fn keys(&self) -> Vec<(String, String)> {
        self.keys.lock().unwrap().clone()
    }

    /// How many calls were made, to any path.
    pub(crate) fn total(&self) -> usize {
        self.calls.lock().unwrap().len()
    }

    pub(crate) fn calls(&self, path: &str) -> usize {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|p| *p == path)
            .count()
    }
}

pub(crate) fn project(files: &[(&str, String)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("flows")).unwrap();
    std::fs::create_dir_all(dir.path().join("connections")).unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    dir
}

pub(crate) fn step<'a>(
    run: &'a ferry_core::store::RunDetail,
    path: &str,
) -> &'a ferry_core::store::StepRow {
    run.steps
        .iter()
        .find(|s| s.path == path)
        .unwrap_or_else(|| panic!("no row for `{path}`: {run:#?}"))
}
