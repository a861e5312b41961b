//! Retries, timeouts, dead letters and replay (SPEC §8.3).

use std::time::Duration;

use axum::http::Method;
use serde_json::{Value, json};

use crate::harness::{Fault, Ferry, Project, Receiver};

const CONN: &str = "id: api\nbase_url: '@RECEIVER@'\ntimeout: 500ms\nretry: { attempts: 4, initial: 20ms, max: 2s }\n";

fn flow(steps: &str) -> String {
    format!("id: f\ntrigger: {{ webhook: {{ path: /in }} }}\nsteps:\n{steps}")
}

async fn start(steps: &str) -> (Receiver, Project, Ferry) {
    let receiver = Receiver::start().await;
    let project = Project::new(
        &[
            ("connections/api.yaml", CONN),
            ("flows/f.yaml", &flow(steps)),
        ],
        Some(&receiver),
    );
    let ferry = Ferry::start(&project);
    (receiver, project, ferry)
}

async fn trigger(ferry: &Ferry) -> String {
    let resp = ferry.post_json("/in", &json!({"n": 1}), &[]).await;
    assert_eq!(resp.status(), 202);
    let v: Value = resp.json().await.unwrap();
    v["run_id"].as_str().unwrap().to_owned()
}

const ONE_CALL: &str = "  - id: call\n    http: { connection: api, method: POST, path: /x, body: { n: '{{ .event.body.n }}' } }\n";

#[tokio::test]
async fn transient_failures_are_retried_with_the_same_idempotency_key() {
    let (receiver, _p, ferry) = start(ONE_CALL).await;
    receiver.fail_next([Fault::Status(503), Fault::Reset, Fault::Status(500)]);
    let id = trigger(&ferry).await;
    let run = ferry.wait_final(&id, Duration::from_secs(20)).await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    assert_eq!(run["steps"][0]["attempts"], 4);
    let got = receiver.requests_to("/x");
    assert_eq!(got.len(), 4);
    for r in &got {
        assert_eq!(r.header("idempotency-key"), format!("{id}:call"));
        assert_eq!(r.json(), json!({"n": 1}));
    }
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let (receiver, _p, ferry) = start(ONE_CALL).await;
    receiver.fail_next([Fault::StatusWithRetryAfter(429, 1)]);
    let id = trigger(&ferry).await;
    let run = ferry.wait_final(&id, Duration::from_secs(20)).await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    let got = receiver.requests_to("/x");
    assert_eq!(got.len(), 2);
    let gap = got[1].at.duration_since(got[0].at);
    assert!(
        gap >= Duration::from_millis(950),
        "second attempt came after {gap:?}, Retry-After asked for 1s"
    );
}

#[tokio::test]
async fn client_errors_fail_at_once_and_become_dead_letters() {
    let (receiver, _p, ferry) = start(ONE_CALL).await;
    receiver.fail_next([Fault::Status(422)]);
    let id = trigger(&ferry).await;
    let run = ferry.wait_final(&id, Duration::from_secs(20)).await;
    assert_eq!(run["status"], "failed", "{run:#}");
    assert_eq!(run["error"]["status"], 422);
    assert_eq!(run["error"]["step"], "call");
    let step = &run["steps"][0];
    assert_eq!(step["status"], "failed");
    assert_eq!(step["attempts"], 1);
    assert_eq!(step["response"]["status"], 422);
    assert_eq!(step["request"]["method"], "POST");
    assert_eq!(receiver.requests_to("/x").len(), 1);
    let (_, dlq) = ferry.api(Method::GET, "/dlq", None).await;
    assert_eq!(dlq["runs"][0]["id"], id.as_str());
}

#[tokio::test]
async fn exhausted_retries_go_dead_and_replay_resumes_from_the_failed_step() {
    let steps = "  - id: first\n    http: { connection: api, method: POST, path: /first }\n  - id: second\n    http: { connection: api, method: POST, path: /second }\n";
    let (receiver, _p, ferry) = start(steps).await;
    // /first succeeds; /second fails all four attempts, scripted before the event is sent.
    receiver.fail_path(
        "/second",
        [
            Fault::Status(500),
            Fault::Status(502),
            Fault::Status(503),
            Fault::Status(504),
        ],
    );
    let id = trigger(&ferry).await;
    let run = ferry.wait_final(&id, Duration::from_secs(20)).await;
    assert_eq!(run["status"], "dead", "{run:#}");
    assert_eq!(run["steps"][1]["attempts"], 4);
    assert_eq!(run["error"]["kind"], "http_status");
    assert_eq!(run["error"]["status"], 504, "the last attempt's answer");
    assert_eq!(receiver.requests_to("/first").len(), 1);
    assert_eq!(receiver.requests_to("/second").len(), 4);
    let (_, dlq) = ferry.api(Method::GET, "/dlq", None).await;
    assert_eq!(dlq["runs"][0]["id"], id.as_str(), "{dlq:#}");
    assert_eq!(dlq["runs"][0]["status"], "dead", "{dlq:#}");

    let (status, v) = ferry
        .api(
            Method::POST,
            &format!("/runs/{id}/replay"),
            Some(json!({"from": "failed"})),
        )
        .await;
    assert_eq!(status, 202, "{v}");
    let run = ferry.wait_final(&id, Duration::from_secs(20)).await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    assert_eq!(run["attempt"], 2);
    assert_eq!(
        receiver.requests_to("/first").len(),
        1,
        "a completed step ran again"
    );
    assert_eq!(receiver.requests_to("/second").len(), 5);

    // A succeeded run cannot be replayed.
    let (status, _) = ferry
        .api(Method::POST, &format!("/runs/{id}/replay"), None)
        .await;
    assert_eq!(status, 409);
}

#[tokio::test]
async fn bulk_replay_by_flow_from_the_start() {
    let (receiver, _p, ferry) = start(ONE_CALL).await;
    receiver.fail_next([Fault::Status(400), Fault::Status(400)]);
    let a = trigger(&ferry).await;
    ferry.wait_final(&a, Duration::from_secs(10)).await;
    let b = trigger(&ferry).await;
    ferry.wait_final(&b, Duration::from_secs(10)).await;
    let (status, v) = ferry
        .api(
            Method::POST,
            "/dlq/replay",
            Some(json!({"flow": "f", "from": "start"})),
        )
        .await;
    assert_eq!(status, 202, "{v}");
    assert_eq!(v["replayed"], 2);
    for id in [&a, &b] {
        let run = ferry.wait_final(id, Duration::from_secs(10)).await;
        assert_eq!(run["status"], "succeeded", "{run:#}");
    }
    let (_, dlq) = ferry.api(Method::GET, "/dlq", None).await;
    assert_eq!(dlq["runs"], json!([]));
}

#[tokio::test]
async fn slow_answers_time_out_and_are_retried() {
    let (receiver, _p, ferry) = start(ONE_CALL).await;
    receiver.fail_next([Fault::Slow(Duration::from_secs(3))]);
    let id = trigger(&ferry).await;
    let run = ferry.wait_final(&id, Duration::from_secs(20)).await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    assert_eq!(run["steps"][0]["attempts"], 2);
}

#[tokio::test]
async fn expression_errors_fail_the_step_unless_on_error_continue() {
    let steps = "  - id: bad\n    map: '{{ .event.body.n + \"x\" }}'\n    on_error: continue\n  - id: worse\n    map: { v: '{{ .event.body.n | ascii_downcase }}' }\n";
    let (receiver, _p, ferry) = start(steps).await;
    let _ = receiver;
    let id = trigger(&ferry).await;
    let run = ferry.wait_final(&id, Duration::from_secs(10)).await;
    assert_eq!(run["status"], "failed", "{run:#}");
    let steps = run["steps"].as_array().unwrap();
    assert_eq!(steps[0]["status"], "failed");
    assert_eq!(steps[0]["error"]["kind"], "expression");
    assert_eq!(steps[0]["output"]["error"]["kind"], "expression");
    let msg = steps[1]["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("at `v`") && msg.contains("ascii_downcase"),
        "{msg}"
    );
    assert_eq!(run["error"]["step"], "worse");
}

#[tokio::test]
async fn oversized_responses_fail_the_step_without_retry() {
    let steps =
        "  - id: call\n    http: { connection: api, path: /big, max_response_bytes: 1000 }\n";
    let (receiver, _p, ferry) = start(steps).await;
    receiver.fail_next([Fault::Big(5_000)]);
    let id = trigger(&ferry).await;
    let run = ferry.wait_final(&id, Duration::from_secs(10)).await;
    assert_eq!(run["status"], "failed", "{run:#}");
    assert_eq!(run["error"]["kind"], "bad_response");
    assert!(
        run["error"]["message"]
            .as_str()
            .unwrap()
            .contains("exceeds the limit of 1000"),
        "{run:#}"
    );
    assert_eq!(receiver.requests_to("/big").len(), 1);
}

#[tokio::test]
async fn a_runaway_expression_fails_its_step_instead_of_hanging_a_worker() {
    let steps = "  - id: spin\n    map: '{{ last(range(1e18)) }}'\n  - id: never\n    http: { connection: api, path: /never }\n";
    let (receiver, _p, ferry) = start(steps).await;
    let id = trigger(&ferry).await;
    let run = ferry.wait_final(&id, Duration::from_secs(20)).await;
    assert_eq!(run["status"], "failed", "{run:#}");
    assert_eq!(run["error"]["kind"], "expression");
    assert!(
        run["error"]["message"]
            .as_str()
            .unwrap()
            .contains("did not finish within 2s"),
        "{run:#}"
    );
    // The step after it never ran, and the node still answers.
    assert!(receiver.requests_to("/never").is_empty());
    assert!(ferry.healthy().await);
}

#[tokio::test]
async fn a_deeply_nested_payload_fails_its_step_and_the_server_lives_on() {
    // Regression (fuzzing): `fromjson` on a string of 20,000 `[` from a webhook body
    // overflowed the worker's stack; the stored event then crashed every restart.
    let steps = "  - id: parse\n    map: '{{ .event.body.payload | fromjson }}'\n";
    let (_receiver, _p, ferry) = start(steps).await;
    let payload = format!("{}{}", "[".repeat(25_000), "]".repeat(25_000));
    let run = ferry.run_event("/in", &json!({ "payload": payload })).await;
    assert_eq!(run["status"], "failed", "{run:#}");
    assert!(
        run["error"]["message"]
            .as_str()
            .unwrap()
            .contains("nested this deep"),
        "{run:#}"
    );
    // Deep but acceptable nesting parses.
    let payload = format!("{}1{}", "[".repeat(5_000), "]".repeat(5_000));
    let run = ferry.run_event("/in", &json!({ "payload": payload })).await;
    assert_eq!(run["status"], "succeeded", "{}", &run.to_string()[..200]);
    assert!(ferry.healthy().await);
}
