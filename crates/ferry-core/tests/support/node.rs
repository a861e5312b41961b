//! A test server written in Node (`tests/<dir>/server.mjs`, npm packages installed by a
//! `scripts/*-setup` script): started on a free port, it prints its URL on the first line
//! and then one JSON line per request it handled, which the tests read back. Shared by the
//! interop tests of both crates (`#[path]`-included).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use serde_json::Value;

/// The repository's root.
pub(crate) fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A running `node server.mjs`, stopped on drop.
pub(crate) struct NodeServer {
    pub(crate) url: String,
    child: Child,
    /// The JSON lines printed after the URL, so far.
    pub(crate) lines: Arc<Mutex<Vec<Value>>>,
}

impl NodeServer {
    /// Starts `tests/DIR/server.mjs` with `env` and waits for its URL.
    pub(crate) fn start(dir: &str, env: &[(&str, &str)]) -> NodeServer {
        let mut child = Command::new("node")
            .arg("server.mjs")
            .current_dir(repo().join("tests").join(dir))
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("node starts (is node installed?)");
        let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
        let url = out
            .next()
            .expect("the server prints its URL")
            .unwrap()
            .trim()
            .to_owned();
        assert!(url.starts_with("http://127.0.0.1:"), "{url}");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in out.map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    sink.lock().unwrap().push(v);
                }
            }
        });
        NodeServer { url, child, lines }
    }
}

impl Drop for NodeServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
