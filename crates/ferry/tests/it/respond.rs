//! `response: sync` webhooks answered by a `respond` step, and webhook path parameters,
//! through the binary.

use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{Fault, Ferry, Project, Receiver, bin};

const CONN: &str = "id: api\nbase_url: '@RECEIVER@'\nretry: { attempts: 1 }\n";

const STOCK: &str = "id: stock
trigger:
  webhook: { path: '/stock/{sku}', method: GET, response: sync, timeout: 2s }
steps:
  - id: look
    map: { sku: '{{ .event.params.sku }}', qty: 7 }
  - id: answer
    respond:
      status: '{{ if .steps.look.sku == \"none\" then 404 else 200 end }}'
      body: '{{ .steps.look }}'
";

const STOCK_ALL: &str = "id: stock-all
trigger:
  webhook: { path: /stock/all, method: GET, response: sync }
steps:
  - id: answer
    respond: { body: { all: true } }
";

const XML: &str = "id: xml
trigger:
  webhook: { path: '/xml/{a}/{b}', response: sync }
steps:
  - id: answer
    respond:
      headers: { content-type: application/xml }
      body: { Stock: { '@sku': '{{ .event.params.a }}', qty: '{{ .event.body.qty }}', where: '{{ .event.params.b }}' } }
";

const FAILS: &str = "id: fails
trigger:
  webhook: { path: /fails, response: sync }
steps:
  - id: call
    http: { connection: api, method: POST, path: /down }
  - id: answer
    respond: { body: ok }
";

const SLOW: &str = "id: slow
trigger:
  webhook: { path: /slow, response: sync, timeout: 1s }
steps:
  - id: nap
    delay: 2s
  - id: answer
    respond: { body: late }
";

const SLOW_ACCEPT: &str = "id: slow-accept
trigger:
  webhook: { path: /slow-accept, response: sync, timeout: 1s, on_timeout: accept }
steps:
  - id: nap
    delay: 2s
  - id: answer
    respond: { body: late }
";

#[tokio::test]
async fn a_sync_webhook_answers_with_its_respond_step_and_path_parameters() {
    let receiver = Receiver::start().await;
    let project = Project::new(
        &[
            ("connections/api.yaml", CONN),
            ("flows/stock.yaml", STOCK),
            ("flows/stock-all.yaml", STOCK_ALL),
            ("flows/xml.yaml", XML),
            ("flows/fails.yaml", FAILS),
            ("flows/slow.yaml", SLOW),
            ("flows/slow-accept.yaml", SLOW_ACCEPT),
        ],
        Some(&receiver),
    );
    let ferry = Ferry::start(&project);
    let http = reqwest::Client::new();

    // A parameter, percent-decoded; the status from a template.
    let resp = http
        .get(ferry.url("/stock/TEA%2D250"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let run_id = resp.headers()["ferry-run-id"].to_str().unwrap().to_owned();
    assert_eq!(
        resp.json::<Value>().await.unwrap(),
        json!({"sku": "TEA-250", "qty": 7})
    );
    let run = ferry.wait_final(&run_id, Duration::from_secs(10)).await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    assert_eq!(run["event"]["params"], json!({"sku": "TEA-250"}));
    let resp = http.get(ferry.url("/stock/none")).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    // The literal path wins over the parameter.
    let resp = http.get(ferry.url("/stock/all")).send().await.unwrap();
    assert_eq!(resp.json::<Value>().await.unwrap(), json!({"all": true}));

    // XML when the content type says so (docs/xml.md: `@name` is an attribute).
    let resp = ferry
        .post_json("/xml/A1/hanoi", &json!({"qty": 3}), &[])
        .await;
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    assert!(
        text.contains(r#"<Stock sku="A1"><qty>3</qty><where>hanoi</where></Stock>"#),
        "{text}"
    );

    // A run that fails before it responds answers 5xx problem+json, never 2xx.
    receiver.fail_path("/down", [Fault::Status(400)]);
    let resp = ferry.post_json("/fails", &json!({}), &[]).await;
    assert_eq!(resp.status(), 502);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let problem: Value = resp.json().await.unwrap();
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("failed before it responded"),
        "{problem}"
    );
    assert!(problem["run_id"].is_string());

    // Too slow: 504 (the run goes on and succeeds), or 202 with the run's URL.
    let resp = ferry.post_json("/slow", &json!({}), &[]).await;
    assert_eq!(resp.status(), 504);
    let problem: Value = resp.json().await.unwrap();
    let slow_run = problem["run_id"].as_str().unwrap().to_owned();
    let resp = ferry.post_json("/slow-accept", &json!({}), &[]).await;
    assert_eq!(resp.status(), 202);
    let v: Value = resp.json().await.unwrap();
    let id = v["run_id"].as_str().unwrap();
    assert_eq!(v["status_url"], format!("/api/v1/runs/{id}"));
    for id in [slow_run.as_str(), id] {
        let run = ferry.wait_final(id, Duration::from_secs(20)).await;
        assert_eq!(run["status"], "succeeded", "{run:#}");
        let answer = run["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["id"] == "answer")
            .unwrap();
        assert_eq!(answer["output"]["answered"], false, "{answer:#}");
    }
}

#[test]
fn respond_and_path_parameters_are_checked_when_they_load() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("flows")).unwrap();
    let flow = "id: f
trigger:
  webhook: { path: '/a/{x}/{x}', timeout: 2s }
steps:
  - id: answer
    respond: { status: 99 }
";
    let not_sync = "id: g
trigger:
  webhook: { path: /g }
steps:
  - id: later
    respond: { body: x }
";
    std::fs::write(dir.path().join("flows/f.yaml"), flow).unwrap();
    std::fs::write(dir.path().join("flows/g.yaml"), not_sync).unwrap();
    let out = std::process::Command::new(bin())
        .arg("validate")
        .arg(dir.path())
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{text}");
    for want in [
        "path parameter `x` appears twice",
        "`timeout` applies to `response: sync` only",
        "`status` is an HTTP status from 100 to 599",
        "step `later` responds, but the flow's webhook does not wait for it",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
}
