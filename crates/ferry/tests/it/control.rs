//! The control kinds through the binary, and what `kill -9` does to them: a sleeping `delay`
//! wakes after a restart at its time (or at once when its time passed while Ferry was down);
//! a `foreach` cut off mid-loop calls no stored item again and loses none.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use ferry_core::store::Store;

use crate::harness::{Ferry, Project, Receiver};

const DELAYED: &str = "\
id: delayed
trigger: { webhook: { path: /in } }
steps:
  - id: nap
    delay: 3s
  - id: after
    http: { url: '@RECEIVER@/after', body: { id: '{{ .event.body.id }}' } }
";

async fn post_all(ferry: &Ferry, n: u64) -> (Instant, Vec<String>) {
    let sent = Instant::now();
    let mut runs = Vec::new();
    for id in 0..n {
        let resp = ferry.post_json("/in", &json!({ "id": id }), &[]).await;
        assert_eq!(resp.status(), 202);
        let v: Value = resp.json().await.unwrap();
        runs.push(v["run_id"].as_str().unwrap().to_owned());
    }
    (sent, runs)
}

#[tokio::test]
async fn a_delay_survives_kill_9_and_wakes_at_its_time_or_at_once_if_it_passed() {
    let receiver = Receiver::start().await;
    let project = Project::new(&[("flows/delayed.yaml", DELAYED)], Some(&receiver));
    let mut ferry = Ferry::start(&project);

    // Killed and restarted before the delays end: they end at their time, not before.
    let (sent, runs) = post_all(&ferry, 20).await;
    let run = ferry.run(&runs[0]).await;
    assert_eq!(run["status"], "queued", "{run:#}");
    assert_eq!(run["steps"][0]["status"], "waiting", "{run:#}");
    ferry.kill9();
    ferry.restart();
    let got = receiver
        .wait_for("/after", 20, Duration::from_secs(30))
        .await;
    for r in &got {
        assert!(
            r.at >= sent + Duration::from_secs(3),
            "a delay of 3s ended {:?} after the event",
            r.at - sent
        );
    }
    for run in &runs {
        let v = ferry.wait_final(run, Duration::from_secs(10)).await;
        assert_eq!(v["status"], "succeeded", "{v:#}");
        assert_eq!(v["steps"][0]["status"], "succeeded", "{v:#}");
    }

    // Killed, and down until after the delays' time: they end right after the restart.
    let (_, runs) = post_all(&ferry, 10).await;
    ferry.kill9();
    tokio::time::sleep(Duration::from_secs(4)).await;
    ferry.restart();
    for run in &runs {
        let v = ferry.wait_final(run, Duration::from_secs(10)).await;
        assert_eq!(v["status"], "succeeded", "{v:#}");
    }
    let ids: HashSet<u64> = receiver
        .requests_to("/after")
        .iter()
        .filter_map(|r| r.json()["id"].as_u64())
        .collect();
    assert_eq!(ids.len(), 20, "every event's delay ended: {ids:?}");
    assert_eq!(receiver.requests_to("/after").len(), 30);
}

const LOOP: &str = "\
id: lines
trigger: { webhook: { path: /order } }
steps:
  - id: lines
    foreach:
      items: '{{ .event.body.lines }}'
      concurrency: 8
      steps:
        - id: reserve
          http: { url: '@RECEIVER@/reserve', body: { sku: '{{ .item }}', line: '{{ .index }}' } }
      output: '{{ .steps.reserve.status }}'
  - id: done
    http: { url: '@RECEIVER@/done', body: { lines: '{{ .steps.lines | length }}' } }
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_foreach_calls_no_stored_item_again_and_loses_none() {
    const ITEMS: usize = 300;
    let receiver = Receiver::start().await;
    // A slow partner: a few items are in flight when the server dies.
    receiver.set_delay(Some(Duration::from_millis(20)));
    let project = Project::new(&[("flows/lines.yaml", LOOP)], Some(&receiver));
    let mut ferry = Ferry::start(&project);
    let lines: Vec<String> = (0..ITEMS).map(|i| format!("sku-{i}")).collect();
    let resp = ferry
        .post_json("/order", &json!({ "lines": lines }), &[])
        .await;
    assert_eq!(resp.status(), 202);
    let run_id = resp.json::<Value>().await.unwrap()["run_id"]
        .as_str()
        .unwrap()
        .to_owned();
    receiver
        .wait_for("/reserve", 60, Duration::from_secs(20))
        .await;
    ferry.kill9();

    // What the store held, and what the partner had seen, at the kill.
    let called_before: HashMap<String, usize> =
        receiver
            .requests_to("/reserve")
            .iter()
            .fold(HashMap::new(), |mut m, r| {
                *m.entry(r.header("idempotency-key").to_owned()).or_default() += 1;
                m
            });
    let store = ferry_core::store::sqlite::SqliteStore::open(&ferry.data).expect("open the store");
    let detail = store.get_run(&run_id).await.unwrap().expect("the run");
    let stored: HashSet<String> = detail
        .steps
        .iter()
        .filter(|s| s.status == ferry_core::store::StepStatus::Succeeded)
        .map(|s| format!("{run_id}:{}", s.path))
        .collect();
    drop(store);
    assert!(
        stored.len() > 10 && stored.len() < ITEMS,
        "the kill did not land mid-loop ({} items stored); the test proved nothing",
        stored.len()
    );

    ferry.restart();
    let run = ferry.wait_final(&run_id, Duration::from_secs(60)).await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    let after: Vec<_> = receiver.requests_to("/reserve");
    let mut calls: HashMap<String, usize> = HashMap::new();
    for r in &after {
        *calls
            .entry(r.header("idempotency-key").to_owned())
            .or_default() += 1;
    }
    let mut in_flight = 0;
    for i in 0..ITEMS {
        let key = format!("{run_id}:lines/{i}/reserve");
        let n = calls.get(&key).copied().unwrap_or(0);
        assert!(n >= 1, "item {i} was never sent");
        if stored.contains(&key) {
            assert_eq!(
                Some(&n),
                called_before.get(&key),
                "item {i} was stored before the kill, and called again"
            );
        } else if called_before.contains_key(&key) {
            in_flight += 1;
        }
    }
    eprintln!(
        "{} items stored at the kill, {in_flight} in flight and called again",
        stored.len()
    );
    let results = run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["path"] == "lines")
        .expect("the loop's row")["output"]
        .clone();
    assert_eq!(
        results,
        json!(vec![200; ITEMS]),
        "one result per item, in order"
    );
    let done = receiver.wait_for("/done", 1, Duration::from_secs(5)).await;
    assert_eq!(done[0].json()["lines"], ITEMS as u64);
}

const CALLBACK: &str = "\
id: pay
trigger: { webhook: { path: /orders } }
steps:
  - id: paid
    wait: { signal: payment, key: '{{ .event.body.order }}', timeout: 1h }
  - id: ship
    http: { url: '@RECEIVER@/ship', body: { order: '{{ .event.body.order }}', amount: '{{ .steps.paid.amount }}' } }
";

#[tokio::test]
async fn signals_through_the_api_resume_waits_survive_kill_9_and_refuse_bad_input() {
    use reqwest::Method;
    let receiver = Receiver::start().await;
    let project = Project::new(&[("flows/pay.yaml", CALLBACK)], Some(&receiver));
    let mut ferry = Ferry::start(&project);
    let resp = ferry
        .post_json("/orders", &json!({ "order": "o-1" }), &[])
        .await;
    let run_id = resp.json::<Value>().await.unwrap()["run_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let deadline = Instant::now() + Duration::from_secs(10);
    while ferry.run(&run_id).await["steps"][0]["status"] != "waiting" {
        assert!(Instant::now() < deadline, "the wait never registered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The wait survives a kill -9; a signal after the restart resumes it.
    ferry.kill9();
    ferry.restart();
    let (status, v) = ferry
        .api(
            Method::POST,
            "/signals/payment/o-1",
            Some(json!({ "amount": 990 })),
        )
        .await;
    assert_eq!(status, 202, "{v}");
    assert_eq!(v["resumed"], 1, "{v}");
    let run = ferry.wait_final(&run_id, Duration::from_secs(10)).await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    let ship = receiver.wait_for("/ship", 1, Duration::from_secs(5)).await;
    assert_eq!(ship[0].json(), json!({ "order": "o-1", "amount": 990 }));

    // A signal nobody waits for is kept, and listed.
    let (status, v) = ferry
        .api(
            Method::POST,
            "/signals/payment/o-2",
            Some(json!({ "amount": 1 })),
        )
        .await;
    assert_eq!(
        (
            status.as_u16(),
            v["resumed"].clone(),
            v["kept_for_s"].clone()
        ),
        (202, json!(0), json!(600))
    );
    let (_, v) = ferry.api(Method::GET, "/signals", None).await;
    assert_eq!(v["signals"][0]["key"], "o-2", "{v}");
    // ...and a wait that registers after it takes it.
    let run = ferry.run_event("/orders", &json!({ "order": "o-2" })).await;
    assert_eq!(run["status"], "succeeded", "{run:#}");

    for (path, message) in [
        ("/signals/pay%20ment/x", "invalid signal name"),
        ("/signals/payment/x", "the body is not JSON"),
    ] {
        let resp = reqwest::Client::new()
            .post(ferry.url(&format!("/api/v1{path}")))
            .bearer_auth(crate::harness::ADMIN_KEY)
            .body("{nope")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{path}");
        let v: Value = resp.json().await.unwrap();
        assert!(
            v["detail"].as_str().unwrap().contains(message),
            "{path}: {v}"
        );
    }
}
