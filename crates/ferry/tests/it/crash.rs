//! Crash safety (SPEC §8.1–8.2): `kill -9` under load loses no acknowledged event, and a step
//! whose result was stored is not run again.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use ferry_core::store::Store;

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

/// Event id -> run id, for every event the server answered 202.
type Acked = Arc<Mutex<HashMap<u64, String>>>;

/// 16 senders post events to `url` for `for_ms`, recording each acknowledged one.
fn load(url: String, acked: &Acked, round: u64, for_ms: u64) -> Vec<tokio::task::JoinHandle<()>> {
    let stop_at = Instant::now() + Duration::from_millis(for_ms);
    (0..16u64)
        .map(|worker| {
            let acked = acked.clone();
            let url = url.clone();
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                let mut n = 0u64;
                while Instant::now() < stop_at {
                    let id = round * 100_000_000 + worker * 1_000_000 + n;
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
                            let run = v["run_id"].as_str().unwrap().to_owned();
                            acked.lock().unwrap().insert(id, run);
                        }
                        // Refused or cut off: not acknowledged, so nothing was promised.
                        _ => tokio::time::sleep(Duration::from_millis(10)).await,
                    }
                }
            })
        })
        .collect()
}

/// What was true at the moment of one kill: the calls the receiver had seen, per
/// Idempotency-Key (`run:step`), and the step results the store held, read from the database
/// while no server runs.
struct AtKill {
    calls: HashMap<String, usize>,
    committed: HashSet<String>,
}

fn calls_by_key(receiver: &Receiver) -> HashMap<String, usize> {
    let mut calls = HashMap::new();
    for r in receiver.requests() {
        *calls
            .entry(r.header("idempotency-key").to_owned())
            .or_default() += 1;
    }
    calls
}

async fn at_kill(ferry: &Ferry, receiver: &Receiver, acked: &Acked) -> AtKill {
    let calls = calls_by_key(receiver);
    let runs: Vec<String> = acked.lock().unwrap().values().cloned().collect();
    let store = ferry_core::store::sqlite::SqliteStore::open(&ferry.data).expect("open the store");
    let mut committed = HashSet::new();
    for run in runs {
        let Some(detail) = store.get_run(&run).await.expect("read a run") else {
            panic!("acknowledged run {run} is not in the store");
        };
        for step in detail.steps {
            if step.status == ferry_core::store::StepStatus::Succeeded {
                committed.insert(format!("{run}:{}", step.path));
            }
        }
    }
    AtKill { calls, committed }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_no_acknowledged_event_and_reruns_no_committed_step() {
    let receiver = Receiver::start().await;
    // Slow partner: many runs are mid-flight when the server dies.
    receiver.set_delay(Some(Duration::from_millis(30)));
    let project = Project::new(&[("flows/crash.yaml", FLOW)], Some(&receiver));
    let mut ferry = Ferry::start(&project);
    let acked: Acked = Arc::default();

    // Two kills: one under fresh load, one while the first kill's runs are being resumed and
    // new ones arrive.
    let mut kills = Vec::new();
    for (round, kill_after_ms) in [(1, 700), (2, 400)] {
        let b_before = receiver.requests_to("/b").len();
        let senders = load(ferry.url("/in"), &acked, round, 1200);
        tokio::time::sleep(Duration::from_millis(kill_after_ms)).await;
        // On a loaded machine 700 ms may not get any run to `b`: wait until some have (and
        // their results had time to be stored), so the kill always cuts runs past `a`.
        let until = Instant::now() + Duration::from_secs(20);
        while receiver.requests_to("/b").len() < b_before + 10 && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        ferry.kill9();
        for s in senders {
            s.await.unwrap();
        }
        kills.push(at_kill(&ferry, &receiver, &acked).await);
        ferry.restart();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 50,
        "too little load to mean anything: {}",
        acked.len()
    );
    receiver.set_delay(None);

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
    for run_id in acked.values() {
        let run = ferry.wait_final(run_id, Duration::from_secs(30)).await;
        assert_eq!(run["status"], "succeeded", "{run:#}");
    }

    // Retries of one step carry one Idempotency-Key, made of the run and the step.
    for r in receiver.requests() {
        let id = r.json()["id"].as_u64().unwrap();
        if let Some(run_id) = acked.get(&id) {
            let step = r.path.trim_start_matches('/');
            assert_eq!(r.header("idempotency-key"), format!("{run_id}:{step}"));
        }
    }

    let finally = calls_by_key(&receiver);
    let mut rerun_in_flight = 0;
    for (k, kill) in kills.iter().enumerate() {
        let kill_no = k + 1;
        for step in ["a", "b"] {
            assert!(
                kill.committed
                    .iter()
                    .any(|key| key.ends_with(&format!(":{step}"))),
                "kill {kill_no}: no result of step `{step}` was stored before it; the test proved nothing"
            );
        }
        // A step whose result was stored before the kill was not called again after it.
        for key in &kill.committed {
            assert_eq!(
                finally.get(key),
                kill.calls.get(key),
                "kill {kill_no}: step `{key}` was stored before the kill, and called again after it"
            );
        }
        for run_id in acked.values() {
            // A step that calls out is stored before the next one starts: if `b` had been
            // called, `a`'s result was on disk.
            if kill.calls.contains_key(&format!("{run_id}:b")) {
                assert!(
                    kill.committed.contains(&format!("{run_id}:a")),
                    "kill {kill_no}: run {run_id} called `b` before the result of `a` was stored"
                );
            }
            // What was in flight (called, not stored) is called again: at least once.
            for step in ["a", "b"] {
                let key = format!("{run_id}:{step}");
                if kill.calls.contains_key(&key) && !kill.committed.contains(&key) {
                    assert!(
                        finally[&key] > kill.calls[&key],
                        "kill {kill_no}: `{key}` was in flight and never finished"
                    );
                    rerun_in_flight += 1;
                }
            }
        }
    }
    eprintln!(
        "{} events acknowledged; stored at the kills: {:?}; {rerun_in_flight} steps in flight called again",
        acked.len(),
        kills.iter().map(|k| k.committed.len()).collect::<Vec<_>>()
    );
    assert!(
        rerun_in_flight > 0,
        "no step was in flight at either kill; the test proved nothing"
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
