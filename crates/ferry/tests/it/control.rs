//! The control kinds through the binary, and what `kill -9` does to them: a sleeping `delay`
//! wakes after a restart at its time (or at once when its time passed while Ferry was down),
//! at the top, in `parallel` branches and in `foreach` items; a `foreach` or a `parallel` cut
//! off mid-way calls no stored step again and loses none; a signal answered just before the
//! kill resumes its waits (in branches and items) after the restart, and a wait whose
//! timeout passed while Ferry was down times out at the restart, for `on_error` to decide.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use ferry_core::store::Store;

use crate::harness::{Fault, Ferry, Project, Receiver};

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

/// Polls the run (through the API) until every `(path, status)` holds.
async fn until_rows(ferry: &Ferry, run_id: &str, want: &[(&str, &str)]) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let run = ferry.run(run_id).await;
        let holds = want.iter().all(|(path, status)| {
            run["steps"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s["path"] == *path && s["status"] == *status)
        });
        if holds {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "rows {want:?} not reached: {run:#}\nlog:\n{}",
            ferry.log.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Posts `body` to the webhook `path`, expecting 202; returns the run id.
async fn start(ferry: &Ferry, path: &str, body: Value) -> String {
    let resp = ferry.post_json(path, &body, &[]).await;
    assert_eq!(resp.status(), 202);
    resp.json::<Value>().await.unwrap()["run_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The rows the store holds as succeeded (as `RUN_ID:PATH`, the Idempotency-Key of a step
/// that calls out), read from the database while no server runs.
async fn stored_succeeded(ferry: &Ferry, runs: &[&str]) -> HashSet<String> {
    let store = ferry_core::store::sqlite::SqliteStore::open(&ferry.data).expect("open the store");
    let mut stored = HashSet::new();
    for run_id in runs {
        let detail = store.get_run(run_id).await.unwrap().expect("the run");
        stored.extend(
            detail
                .steps
                .iter()
                .filter(|s| s.status == ferry_core::store::StepStatus::Succeeded)
                .map(|s| format!("{run_id}:{}", s.path)),
        );
    }
    stored
}

/// Calls the receiver has seen, per Idempotency-Key.
fn calls_by_key(receiver: &Receiver) -> HashMap<String, usize> {
    let mut calls = HashMap::new();
    for r in receiver.requests() {
        *calls
            .entry(r.header("idempotency-key").to_owned())
            .or_default() += 1;
    }
    calls
}

fn row<'a>(run: &'a Value, path: &str) -> &'a Value {
    run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["path"] == path)
        .unwrap_or_else(|| panic!("no row `{path}`: {run:#}"))
}

const FAN: &str = "\
id: fan
trigger: { webhook: { path: /fan } }
steps:
  - id: notify
    parallel:
      branches:
        crm:
          - id: crm-1
            http: { url: '@RECEIVER@/crm/1', body: { n: '{{ .event.body.n }}' } }
          - id: crm-2
            http: { url: '@RECEIVER@/crm/2', body: { n: '{{ .event.body.n }}' } }
          - id: crm-3
            http: { url: '@RECEIVER@/crm/3', body: { n: '{{ .event.body.n }}' } }
        mailer:
          - id: mail-1
            http: { url: '@RECEIVER@/mailer/1', body: { n: '{{ .event.body.n }}' } }
          - id: mail-2
            http: { url: '@RECEIVER@/mailer/2', body: { n: '{{ .event.body.n }}' } }
          - id: mail-3
            http: { url: '@RECEIVER@/mailer/3', body: { n: '{{ .event.body.n }}' } }
        ledger:
          - id: ledger-1
            http: { url: '@RECEIVER@/ledger/1', body: { n: '{{ .event.body.n }}' } }
          - id: ledger-2
            http: { url: '@RECEIVER@/ledger/2', body: { n: '{{ .event.body.n }}' } }
  - id: done
    http: { url: '@RECEIVER@/done', body: { branches: '{{ .steps.notify | keys }}' } }
";

#[tokio::test]
async fn kill_9_mid_parallel_calls_no_stored_branch_step_again_and_every_branch_completes() {
    let receiver = Receiver::start().await;
    // At the kill: `crm` has finished, `mailer` is in its second call, `ledger` in its first.
    // (The partner sits on those two requests; the kill lands while they are in flight.)
    receiver.fail_path("/mailer/2", [Fault::Slow(Duration::from_secs(20))]);
    receiver.fail_path("/ledger/1", [Fault::Slow(Duration::from_secs(20))]);
    let project = Project::new(&[("flows/fan.yaml", FAN)], Some(&receiver));
    let mut ferry = Ferry::start(&project);
    let run_id = start(&ferry, "/fan", json!({ "n": 7 })).await;
    until_rows(
        &ferry,
        &run_id,
        &[
            ("notify/crm/crm-3", "succeeded"),
            ("notify/mailer/mail-1", "succeeded"),
        ],
    )
    .await;
    receiver
        .wait_for("/mailer/2", 1, Duration::from_secs(10))
        .await;
    receiver
        .wait_for("/ledger/1", 1, Duration::from_secs(10))
        .await;
    ferry.kill9();

    let stored = stored_succeeded(&ferry, &[&run_id]).await;
    let called_before = calls_by_key(&receiver);
    let key = |path: &str| format!("{run_id}:notify/{path}");
    for path in ["crm/crm-1", "crm/crm-2", "crm/crm-3", "mailer/mail-1"] {
        assert!(stored.contains(&key(path)), "{path} not stored: {stored:?}");
    }
    for path in ["mailer/mail-2", "ledger/ledger-1"] {
        assert!(!stored.contains(&key(path)), "{path} stored: {stored:?}");
        assert_eq!(called_before.get(&key(path)), Some(&1), "{path} in flight");
    }
    assert!(
        !stored.contains(&format!("{run_id}:notify")),
        "the kill did not land mid-parallel; the test proved nothing"
    );

    ferry.restart();
    let run = ferry.wait_final(&run_id, Duration::from_secs(20)).await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    let calls = calls_by_key(&receiver);
    for k in &stored {
        assert_eq!(
            calls.get(k),
            called_before.get(k),
            "{k} was stored before the kill, and called again"
        );
    }
    let branch_steps = [
        "crm/crm-1",
        "crm/crm-2",
        "crm/crm-3",
        "mailer/mail-1",
        "mailer/mail-2",
        "mailer/mail-3",
        "ledger/ledger-1",
        "ledger/ledger-2",
    ];
    for path in branch_steps {
        let n = calls.get(&key(path)).copied().unwrap_or(0);
        // Once, or twice for the two requests cut off by the kill (same Idempotency-Key).
        let cut_off = matches!(path, "mailer/mail-2" | "ledger/ledger-1");
        assert_eq!(n, if cut_off { 2 } else { 1 }, "{path} called {n} times");
        assert_eq!(row(&run, &format!("notify/{path}"))["status"], "succeeded");
    }
    let out = &row(&run, "notify")["output"];
    let branches: Vec<&String> = out.as_object().unwrap().keys().collect();
    assert_eq!(branches, ["crm", "ledger", "mailer"], "{out:#}");
    for b in ["crm", "ledger", "mailer"] {
        // Each branch's result is its last step's.
        assert_eq!(out[b]["status"], 200, "{b}: {out:#}");
        assert_eq!(out[b]["body"], json!({ "ok": true }), "{b}: {out:#}");
    }
    let done = receiver.wait_for("/done", 1, Duration::from_secs(5)).await;
    assert_eq!(done.len(), 1);
    assert_eq!(
        done[0].json(),
        json!({ "branches": ["crm", "ledger", "mailer"] })
    );
    assert_eq!(receiver.requests_to("/crm/1")[0].json(), json!({ "n": 7 }));
}

const NAPS: &str = "\
id: naps
trigger: { webhook: { path: /naps } }
steps:
  - id: fan
    parallel:
      branches:
        short:
          - id: short-nap
            delay: 2s
          - id: short-call
            http: { url: '@RECEIVER@/short', body: { n: '{{ .event.body.n }}' } }
        long:
          - id: long-nap
            delay: 4s
          - id: long-call
            http: { url: '@RECEIVER@/long', body: { n: '{{ .event.body.n }}' } }
        now:
          - id: now-call
            http: { url: '@RECEIVER@/now', body: { n: '{{ .event.body.n }}' } }
";

const ITEM_NAPS: &str = "\
id: item-naps
trigger: { webhook: { path: /item-naps } }
steps:
  - id: lines
    foreach:
      items: '{{ .event.body.items }}'
      concurrency: 2
      steps:
        - id: nap
          delay: 3s
        - id: call
          http: { url: '@RECEIVER@/item', body: { n: '{{ .event.body.n }}', item: '{{ .item }}' } }
      output: '{{ .steps.call.status }}'
";

#[tokio::test]
async fn delays_inside_parallel_branches_and_foreach_items_survive_kill_9_and_fire_not_before_their_time()
 {
    let receiver = Receiver::start().await;
    let project = Project::new(
        &[
            ("flows/naps.yaml", NAPS),
            ("flows/item-naps.yaml", ITEM_NAPS),
        ],
        Some(&receiver),
    );
    let mut ferry = Ferry::start(&project);
    let items = json!(["a", "b", "c", "d", "e"]);

    // Killed and restarted while every delay sleeps: each fires after the restart, at its
    // time and not before.
    let sent = Instant::now();
    let par = start(&ferry, "/naps", json!({ "n": 1 })).await;
    let each = start(&ferry, "/item-naps", json!({ "n": 1, "items": items })).await;
    until_rows(
        &ferry,
        &par,
        &[
            ("fan/short/short-nap", "waiting"),
            ("fan/long/long-nap", "waiting"),
            ("fan/now/now-call", "succeeded"),
        ],
    )
    .await;
    until_rows(
        &ferry,
        &each,
        &[("lines/0/nap", "waiting"), ("lines/4/nap", "waiting")],
    )
    .await;
    ferry.kill9();
    let killed = Instant::now();
    assert!(
        receiver.requests_to("/short").is_empty() && receiver.requests_to("/item").is_empty(),
        "a delay ended before the kill; the test proved nothing"
    );
    ferry.restart();
    let par_run = ferry.wait_final(&par, Duration::from_secs(20)).await;
    let each_run = ferry.wait_final(&each, Duration::from_secs(20)).await;
    assert_eq!(par_run["status"], "succeeded", "{par_run:#}");
    assert_eq!(each_run["status"], "succeeded", "{each_run:#}");
    for (path, delay) in [("/short", 2), ("/long", 4), ("/item", 3)] {
        for r in receiver.requests_to(path) {
            assert!(r.at > killed, "{path} was called before the kill");
            assert!(
                r.at >= sent + Duration::from_secs(delay),
                "{path}: a delay of {delay}s ended {:?} after the event",
                r.at - sent
            );
        }
    }
    assert_eq!(
        (
            receiver.requests_to("/short").len(),
            receiver.requests_to("/long").len(),
            receiver.requests_to("/now").len(),
            receiver.requests_to("/item").len(),
        ),
        (1, 1, 1, 5)
    );
    let out = &row(&par_run, "fan")["output"];
    assert_eq!(
        out.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["long", "now", "short"]
    );
    assert_eq!(out["short"]["status"], 200, "{out:#}");
    for path in ["fan/short/short-nap", "fan/long/long-nap", "lines/2/nap"] {
        let nap = if path.starts_with("fan") {
            row(&par_run, path)
        } else {
            row(&each_run, path)
        };
        assert_eq!(nap["status"], "succeeded", "{path}");
    }
    assert_eq!(row(&each_run, "lines")["output"], json!(vec![200; 5]));
    let got: HashSet<String> = receiver
        .requests_to("/item")
        .iter()
        .map(|r| r.json()["item"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(got.len(), 5, "every item's delay ended once: {got:?}");

    // Killed, and down until after the delays' time: they fire right after the restart.
    let par = start(&ferry, "/naps", json!({ "n": 2 })).await;
    let each = start(&ferry, "/item-naps", json!({ "n": 2, "items": items })).await;
    until_rows(&ferry, &par, &[("fan/long/long-nap", "waiting")]).await;
    until_rows(&ferry, &each, &[("lines/4/nap", "waiting")]).await;
    ferry.kill9();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let restarted = Instant::now();
    ferry.restart();
    for run in [&par, &each] {
        let v = ferry.wait_final(run, Duration::from_secs(10)).await;
        assert_eq!(v["status"], "succeeded", "{v:#}");
    }
    let second: Vec<_> = receiver
        .requests()
        .into_iter()
        .filter(|r| r.json()["n"] == 2 && r.path != "/now")
        .collect();
    assert_eq!(second.len(), 2 + 5, "{second:?}");
    assert!(second.iter().all(|r| r.at >= restarted));
}

/// `POST /api/v1/signals/NAME/KEY` with the operator key; exactly one wait must take it.
async fn signal(ferry: &Ferry, name: &str, key: &str, data: Value) {
    let (status, v) = ferry
        .api(
            reqwest::Method::POST,
            &format!("/signals/{name}/{key}"),
            Some(data),
        )
        .await;
    assert_eq!(
        (status.as_u16(), v["resumed"].clone()),
        (202, json!(1)),
        "{name}/{key}: {v}"
    );
}

const APPROVALS: &str = "\
id: approvals
trigger: { webhook: { path: /approvals } }
steps:
  - id: both
    parallel:
      branches:
        legal:
          - id: legal-ok
            wait: { signal: legal, key: '{{ .event.body.id }}', timeout: 1h }
          - id: legal-tell
            http: { url: '@RECEIVER@/legal', body: { id: '{{ .event.body.id }}', got: '{{ .steps[\"legal-ok\"] }}' } }
        finance:
          - id: finance-ok
            wait: { signal: finance, key: '{{ .event.body.id }}', timeout: 1h }
          - id: finance-tell
            http: { url: '@RECEIVER@/finance', body: { id: '{{ .event.body.id }}', got: '{{ .steps[\"finance-ok\"] }}' } }
";

const PARCELS: &str = "\
id: parcels
trigger: { webhook: { path: /parcels } }
steps:
  - id: parcels
    foreach:
      items: '{{ .event.body.parcels }}'
      steps:
        - id: picked
          wait: { signal: pickup, key: '{{ .item }}', timeout: 1h }
        - id: tell
          http: { url: '@RECEIVER@/picked/{{ .item }}', body: '{{ .steps.picked }}' }
      output: '{{ .steps.picked }}'
";

#[tokio::test]
async fn signals_sent_just_before_kill_9_resume_the_right_waits_in_parallel_branches_and_foreach_items()
 {
    let receiver = Receiver::start().await;
    let project = Project::new(
        &[
            ("flows/approvals.yaml", APPROVALS),
            ("flows/parcels.yaml", PARCELS),
        ],
        Some(&receiver),
    );
    // The parcels' calls go to URLs built from data, here to the local receiver.
    let mut ferry = Ferry::start_with(&project, &["--allow-network", "127.0.0.0/8"]);
    let p1 = start(&ferry, "/approvals", json!({ "id": "p-1" })).await;
    let p2 = start(&ferry, "/approvals", json!({ "id": "p-2" })).await;
    let parcels: Vec<String> = (0..8).map(|i| format!("parcel-{i}")).collect();
    let each = start(&ferry, "/parcels", json!({ "parcels": parcels })).await;
    for run in [&p1, &p2] {
        until_rows(
            &ferry,
            run,
            &[
                ("both/legal/legal-ok", "waiting"),
                ("both/finance/finance-ok", "waiting"),
            ],
        )
        .await;
    }
    let waiting: Vec<String> = (0..8).map(|i| format!("parcels/{i}/picked")).collect();
    let want: Vec<(&str, &str)> = waiting.iter().map(|p| (p.as_str(), "waiting")).collect();
    until_rows(&ferry, &each, &want).await;

    // Signals for one branch of p-1 and for the even parcels, then at once kill -9. Each
    // signal is stored when it is answered, so whether its run woke before the kill or not,
    // the right waits (and only they) go on after the restart. Parcel 0's call hangs: the
    // loop's run is busy with it when the signals for parcels 2, 4 and 6 come, so those
    // are delivered to a run that is running, and are taken only after the restart.
    receiver.fail_path("/picked/parcel-0", [Fault::Slow(Duration::from_secs(20))]);
    signal(&ferry, "legal", "p-1", json!({ "by": "legal" })).await;
    signal(&ferry, "pickup", "parcel-0", json!({ "at": 0 })).await;
    receiver
        .wait_for("/picked/parcel-0", 1, Duration::from_secs(10))
        .await;
    for i in [2, 4, 6] {
        signal(&ferry, "pickup", &format!("parcel-{i}"), json!({ "at": i })).await;
    }
    ferry.kill9();
    let stored = stored_succeeded(&ferry, &[&p1, &p2, &each]).await;
    let called_before = calls_by_key(&receiver);
    ferry.restart();

    let legal = receiver
        .wait_for("/legal", 1, Duration::from_secs(15))
        .await;
    assert_eq!(
        legal[0].json(),
        json!({ "id": "p-1", "got": { "by": "legal" } })
    );
    for i in (0..8).step_by(2) {
        let got = receiver
            .wait_for(&format!("/picked/parcel-{i}"), 1, Duration::from_secs(15))
            .await;
        assert_eq!(got[0].json(), json!({ "at": i }));
    }
    for i in [2, 4, 6] {
        let key = format!("{each}:parcels/{i}/tell");
        assert!(
            !called_before.contains_key(&key),
            "parcel {i} went on before the kill; its signal did not wait for the restart"
        );
    }
    assert!(
        !stored.contains(&format!("{each}:parcels/0/tell")),
        "parcel 0's call was cut off by the kill"
    );
    // The waits no signal was sent for still wait.
    until_rows(
        &ferry,
        &p1,
        &[
            ("both/legal/legal-tell", "succeeded"),
            ("both/finance/finance-ok", "waiting"),
        ],
    )
    .await;
    let p2_run = ferry.run(&p2).await;
    assert_eq!(p2_run["status"], "queued", "{p2_run:#}");
    assert_eq!(row(&p2_run, "both/legal/legal-ok")["status"], "waiting");
    let odd: Vec<String> = (1..8)
        .step_by(2)
        .map(|i| format!("parcels/{i}/picked"))
        .collect();
    let want: Vec<(&str, &str)> = odd.iter().map(|p| (p.as_str(), "waiting")).collect();
    until_rows(&ferry, &each, &want).await;
    assert_eq!(receiver.requests_to("/finance").len(), 0);
    assert_eq!(receiver.requests_to("/legal").len(), 1);

    // The other signals, after the restart: every run ends, each wait with its own data.
    signal(
        &ferry,
        "finance",
        "p-1",
        json!({ "by": "finance", "for": 1 }),
    )
    .await;
    signal(&ferry, "legal", "p-2", json!({ "by": "legal", "for": 2 })).await;
    signal(
        &ferry,
        "finance",
        "p-2",
        json!({ "by": "finance", "for": 2 }),
    )
    .await;
    for i in (1..8).step_by(2) {
        signal(&ferry, "pickup", &format!("parcel-{i}"), json!({ "at": i })).await;
    }
    for run in [&p1, &p2, &each] {
        let v = ferry.wait_final(run, Duration::from_secs(15)).await;
        assert_eq!(v["status"], "succeeded", "{v:#}");
    }
    // Each branch's call carried its own wait's data; the parallel's result is keyed by branch.
    let bodies = |path: &str| -> HashSet<String> {
        receiver
            .requests_to(path)
            .iter()
            .map(|r| r.json().to_string())
            .collect()
    };
    let set = |v: &[Value]| -> HashSet<String> { v.iter().map(Value::to_string).collect() };
    assert_eq!(
        bodies("/legal"),
        set(&[
            json!({ "id": "p-1", "got": { "by": "legal" } }),
            json!({ "id": "p-2", "got": { "by": "legal", "for": 2 } }),
        ])
    );
    assert_eq!(
        bodies("/finance"),
        set(&[
            json!({ "id": "p-1", "got": { "by": "finance", "for": 1 } }),
            json!({ "id": "p-2", "got": { "by": "finance", "for": 2 } }),
        ])
    );
    for run in [&p1, &p2] {
        let v = ferry.run(run).await;
        let out = &row(&v, "both")["output"];
        assert_eq!(
            out.as_object().unwrap().keys().collect::<Vec<_>>(),
            ["finance", "legal"]
        );
        assert_eq!(
            (
                out["finance"]["status"].clone(),
                out["legal"]["status"].clone()
            ),
            (json!(200), json!(200))
        );
    }
    let each_run = ferry.run(&each).await;
    assert_eq!(
        row(&each_run, "parcels")["output"],
        json!((0..8).map(|i| json!({ "at": i })).collect::<Vec<_>>()),
        "each item got its own signal, in input order"
    );
    // One call per resumed step (a signal is taken once), and a second only for a call the
    // kill cut off before its result was stored (same Idempotency-Key).
    let calls = calls_by_key(&receiver);
    assert_eq!(calls.len(), 4 + 8, "{calls:?}");
    for (key, n) in &calls {
        let cut_off = called_before.contains_key(key) && !stored.contains(key);
        assert!(
            *n == 1 || (cut_off && *n == 2),
            "{key} called {n} times (stored at the kill: {})",
            stored.contains(key)
        );
    }
}

const DEADLINES: &str = "\
id: deadlines
trigger: { webhook: { path: /deadlines } }
steps:
  - id: gate
    parallel:
      join: settled
      branches:
        sign:
          - id: signed
            wait: { signal: sign, key: '{{ .event.body.id }}', timeout: 2s }
            on_error: continue
          - id: after-sign
            http: { url: '@RECEIVER@/after-sign', body: { kind: '{{ .steps.signed.error.kind }}' } }
        strict:
          - id: must
            wait: { signal: must, key: '{{ .event.body.id }}', timeout: 2s }
          - id: never
            http: { url: '@RECEIVER@/never' }
        acks:
          - id: items
            foreach:
              items: [x, y]
              steps:
                - id: ack
                  wait: { signal: ack, key: '{{ .event.body.id }}-{{ .item }}', timeout: 2s }
                  on_error:
                    - id: late
                      http: { url: '@RECEIVER@/late/{{ .item }}', body: { kind: '{{ .error.kind }}', message: '{{ .error.message }}' } }
";

#[tokio::test]
async fn waits_whose_timeout_passed_while_ferry_was_down_time_out_after_the_restart() {
    let receiver = Receiver::start().await;
    let project = Project::new(&[("flows/deadlines.yaml", DEADLINES)], Some(&receiver));
    let mut ferry = Ferry::start_with(&project, &["--allow-network", "127.0.0.0/8"]);
    let sent = Instant::now();
    let run_id = start(&ferry, "/deadlines", json!({ "id": "d-1" })).await;
    until_rows(
        &ferry,
        &run_id,
        &[
            ("gate/sign/signed", "waiting"),
            ("gate/strict/must", "waiting"),
            ("gate/acks/items/0/ack", "waiting"),
            ("gate/acks/items/1/ack", "waiting"),
        ],
    )
    .await;
    ferry.kill9();
    assert!(
        receiver.requests().is_empty(),
        "a wait timed out before the kill; the test proved nothing"
    );
    // Down for longer than the waits' 2s.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let restarted = Instant::now();
    ferry.restart();
    let run = ferry.wait_final(&run_id, Duration::from_secs(15)).await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    for r in receiver.requests() {
        assert!(r.at >= restarted && r.at >= sent + Duration::from_secs(2));
    }

    // `continue`: the branch goes on with the error as the wait's result.
    let signed = row(&run, "gate/sign/signed");
    assert_eq!(signed["status"], "failed", "{signed:#}");
    assert_eq!(signed["output"]["error"]["kind"], "timeout");
    let after = receiver
        .wait_for("/after-sign", 1, Duration::from_secs(5))
        .await;
    assert_eq!(after[0].json(), json!({ "kind": "timeout" }));
    // Fallback steps: each item's runs with the error.
    for item in ["x", "y"] {
        let late = receiver
            .wait_for(&format!("/late/{item}"), 1, Duration::from_secs(5))
            .await;
        assert_eq!(
            late[0].json(),
            json!({
                "kind": "timeout",
                "message": format!("no signal `ack` with key `d-1-{item}` arrived within 2s"),
            })
        );
    }
    // `fail` (the default): the branch fails, and `settled` records it.
    let out = &row(&run, "gate")["output"];
    assert_eq!(out["sign"]["status"], "succeeded", "{out:#}");
    assert_eq!(out["acks"]["status"], "succeeded", "{out:#}");
    assert_eq!(out["strict"]["status"], "failed", "{out:#}");
    assert_eq!(out["strict"]["error"]["kind"], "timeout", "{out:#}");
    assert_eq!(
        out["strict"]["error"]["message"],
        "no signal `must` with key `d-1` arrived within 2s"
    );
    assert!(receiver.requests_to("/never").is_empty());
    assert_eq!(receiver.requests().len(), 3);
}
