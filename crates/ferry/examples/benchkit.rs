//! Helpers for `bench/run.sh` (not part of Ferry):
//!
//! - `benchkit sink` — an HTTP receiver on 127.0.0.1:0 that answers 200 to everything and
//!   counts requests; prints its address on the first line; `GET /count` returns the count
//!   and the time of the last request (ms since the epoch).
//! - `benchkit first-ack URL -- CMD ARGS…` — starts CMD, then POSTs `{}` to URL (the
//!   address is read from CMD's "listening on" log line) until it answers 202; prints the
//!   milliseconds from spawn to that first 202 and leaves CMD running (prints its pid).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("sink") => sink().await,
        Some("first-ack") => first_ack(&args[1..]).await,
        _ => {
            eprintln!("usage: benchkit sink | benchkit first-ack PATH -- CMD ARGS…");
            std::process::exit(2);
        }
    }
}

async fn sink() {
    let count = Arc::new(AtomicU64::new(0));
    let last = Arc::new(AtomicI64::new(0));
    let (c, l) = (count.clone(), last.clone());
    let app = axum::Router::new()
        .route(
            "/count",
            axum::routing::get(move || {
                let (c, l) = (c.clone(), l.clone());
                async move {
                    format!(
                        "{} {}\n",
                        c.load(Ordering::Relaxed),
                        l.load(Ordering::Relaxed)
                    )
                }
            }),
        )
        .fallback(move || {
            let (c, l) = (count.clone(), last.clone());
            async move {
                c.fetch_add(1, Ordering::Relaxed);
                l.store(chrono::Utc::now().timestamp_millis(), Ordering::Relaxed);
                ([("content-type", "application/json")], "{\"ok\":true}")
            }
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    println!("{}", listener.local_addr().unwrap());
    axum::serve(listener, app).await.unwrap();
}

// The server is left running on purpose: the benchmark measures it next and kills it.
#[allow(clippy::zombie_processes)]
async fn first_ack(args: &[String]) {
    let path = &args[0];
    let cmd = &args[2..];
    let started = Instant::now();
    let mut child = Command::new(&cmd[0])
        .args(&cmd[1..])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("command starts");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if !sent && let Some(i) = line.find("listening on ") {
                let _ = tx.send(
                    line[i + 13..]
                        .split_whitespace()
                        .next()
                        .unwrap_or("")
                        .to_owned(),
                );
                sent = true;
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("server logs its address");
    let client = reqwest::Client::new();
    let url = format!("http://{addr}{path}");
    loop {
        if let Ok(r) = client
            .post(&url)
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            && r.status() == 202
        {
            break;
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    println!(
        "{:.1} {} {}",
        started.elapsed().as_secs_f64() * 1000.0,
        child.id(),
        addr
    );
}
