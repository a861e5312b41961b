//! Crash safety (SPEC §8.1–8.2): `kill -9` under load loses no acknowledged event, and a step
//! whose result was stored is not run again.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{Ferry, Project, Receiver};

const FLOW: &str = "\
id: crash
trigger: { webhook: { path: /in } }
steps:
  - id: shape
    map: { id: '{{ .event.body.id }}' }
  - id: a
    http: { url: '@RECEIVER@/a', body: '{{ .steps.shape }}' }
  - id: b
    http: { url: '@RECEIVER@/b', body: '{{ .steps.shape }}' }
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_no_acknowledged_event() {
    let receiver = Receiver::start().await;
    // Slow partner: many runs are mid-flight when the server dies.
    receiver.set_delay(Some(Duration::from_millis(30)));
    let project = Project::new(&[("flows/crash.yaml", FLOW)], Some(&receiver));
    let mut ferry = Ferry::start(&project);

    let acked: Arc<Mutex<HashMap<u64, String>>> = Arc::default();
    let url = ferry.url("/in");
    let stop_at = Instant::now() + Duration::from_millis(1500);
    let mut senders = Vec::new();
    for worker in 0..16u64 {
        let acked = acked.clone();
        let url = url.clone();
        senders.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut n = 0u64;
            while Instant::now() < stop_at {
                let id = worker * 1_000_000 + n;
                n += 1;
                let resp = client
                    .post(&url)
                    .json(&json!({ "id": id }))
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await;
                match resp {
                    Ok(r) if r.status() == 202 => {
                        let v: Value = r.json().await.unwrap();
                        acked
                            .lock()
                            .unwrap()
                            .insert(id, v["run_id"].as_str().unwrap().to_owned());
                    }
                    // Refused or cut off: not acknowledged, so nothing was promised.
                    _ => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    let killed_at_ms = chrono::Utc::now().timestamp_millis();
    ferry.kill9();
    for s in senders {
        s.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 50,
        "too little load to mean anything: {}",
        acked.len()
    );

    receiver.set_delay(None);
    ferry.restart();

    // Every acknowledged event reaches both steps of its flow.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let seen: HashSet<u64> = receiver
            .requests_to("/b")
            .iter()
            .filter_map(|r| r.json()["id"].as_u64())
            .collect();
        let missing: Vec<&u64> = acked.keys().filter(|id| !seen.contains(id)).collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} acknowledged events never arrived, e.g. {:?}",
            missing.len(),
            acked.len(),
            &missing[..missing.len().min(5)]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Retries of one step carry one Idempotency-Key, made of the run and the step.
    let mut a_calls: HashMap<u64, usize> = HashMap::new();
    for r in receiver.requests_to("/a") {
        let id = r.json()["id"].as_u64().unwrap();
        *a_calls.entry(id).or_default() += 1;
        if let Some(run_id) = acked.get(&id) {
            assert_eq!(r.header("idempotency-key"), format!("{run_id}:a"));
        }
    }

    // A step whose result was committed before the kill was not run again.
    let mut checked = 0;
    for (id, run_id) in acked.iter().take(400) {
        let run = ferry.wait_final(run_id, Duration::from_secs(30)).await;
        assert_eq!(run["status"], "succeeded", "{run:#}");
        let a = run["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["id"] == "a")
            .unwrap();
        let finished = chrono::DateTime::parse_from_rfc3339(a["finished_at"].as_str().unwrap())
            .unwrap()
            .timestamp_millis();
        if finished < killed_at_ms - 50 {
            checked += 1;
            assert_eq!(
                a_calls.get(id),
                Some(&1),
                "step `a` of event {id} ran again after its result was stored"
            );
        }
    }
    assert!(
        checked > 0,
        "no step finished before the kill; the test proved nothing"
    );
}

#[tokio::test]
async fn sigterm_lets_in_flight_runs_finish() {
    let receiver = Receiver::start().await;
    receiver.set_delay(Some(Duration::from_millis(500)));
    let flow = "id: slow\ntrigger: { webhook: { path: /in } }\nsteps:\n  - id: call\n    http: { url: '@RECEIVER@/slow' }\n";
    let project = Project::new(&[("flows/slow.yaml", flow)], Some(&receiver));
    let mut ferry = Ferry::start(&project);
    let v: Value = ferry
        .post_json("/in", &json!({}), &[])
        .await
        .json()
        .await
        .unwrap();
    let run_id = v["run_id"].as_str().unwrap().to_owned();
    receiver.wait_for("/slow", 1, Duration::from_secs(5)).await;
    let status = tokio::task::spawn_blocking(move || {
        let s = ferry.terminate();
        (s, ferry)
    })
    .await
    .unwrap();
    assert!(status.0.success(), "exit status {:?}", status.0);
    let mut ferry = status.1;
    ferry.restart();
    let run = ferry.wait_final(&run_id, Duration::from_secs(10)).await;
    assert_eq!(run["status"], "succeeded");
    assert_eq!(
        receiver.requests_to("/slow").len(),
        1,
        "the in-flight step was cut off and ran again"
    );
}

#[test]
fn a_closed_log_pipe_does_not_stop_the_server_from_shutting_down() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    // Regression: with the log reader gone, the first log line of the shutdown panicked
    // (the logger reported its write error with eprintln!), the signal was lost, and the
    // server kept running after SIGTERM.
    let project = Project::new(
        &[(
            "flows/a.yaml",
            "id: a\ntrigger: manual\nsteps:\n  - id: m\n    map: 1\n",
        )],
        None,
    );
    let mut child = Command::new(crate::harness::bin())
        .arg("serve")
        .arg(project.path())
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    while let Some(Ok(line)) = lines.next() {
        if line.contains("listening on") {
            break;
        }
    }
    drop(lines);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{status:?}");
            return;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the server ignored SIGTERM once its log pipe was closed");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
