//! Outbound auth through the real binary: the credential reaches the API, the stored run
//! shows `***` in its place (docs/security.md).

use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{Ferry, Project, Receiver};

#[tokio::test]
async fn connection_auth_reaches_the_api_and_is_masked_in_the_stored_run() {
    let receiver = Receiver::start().await;
    let conns = [
        (
            "connections/basic.yaml",
            "id: basic\nbase_url: '@RECEIVER@'\nauth: { basic: { username: Aladdin, password: open sesame } }\n",
        ),
        (
            "connections/keyed.yaml",
            "id: keyed\nbase_url: '@RECEIVER@'\nauth: { api_key: { query: api_key, value: k-123 } }\n",
        ),
    ];
    let flow = "id: f\ntrigger: { webhook: { path: /in } }\nsteps:\n  - id: a\n    http: { connection: basic, method: POST, path: /a, body: { n: 1 } }\n  - id: b\n    http: { connection: keyed, path: /b, query: { page: 2 } }\n";
    let project = Project::new(
        &[conns[0], conns[1], ("flows/f.yaml", flow)],
        Some(&receiver),
    );
    let ferry = Ferry::start(&project);
    let resp = ferry.post_json("/in", &json!({}), &[]).await;
    assert_eq!(resp.status(), 202);
    let id = resp.json::<Value>().await.unwrap()["run_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let run = ferry.wait_final(&id, Duration::from_secs(20)).await;
    assert_eq!(run["status"], "succeeded", "{run:#}");

    let a = &receiver.wait_for("/a", 1, Duration::from_secs(5)).await[0];
    assert_eq!(
        a.header("authorization"),
        "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
    );
    let steps = run["steps"].as_array().unwrap();
    assert_eq!(steps[0]["request"]["headers"]["authorization"], "***");
    assert!(
        steps[1]["request"]["url"]
            .as_str()
            .unwrap()
            .ends_with("/b?page=2&api_key=***"),
        "{:#}",
        steps[1]["request"]
    );
    let text = run.to_string();
    assert!(!text.contains("QWxhZGRpbjpvcGVuIHNlc2FtZQ=="), "{text}");
    assert!(!text.contains("k-123"), "{text}");
}

#[tokio::test]
async fn a_bad_auth_setting_is_a_located_load_error() {
    let project = Project::new(
        &[(
            "connections/c.yaml",
            "id: c\nbase_url: https://api.example\nauth:\n  hmac: { key: k, header: X-Sig, signed: '{methd}' }\n",
        )],
        None,
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .arg("validate")
        .arg(project.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(
        stdout.contains("c.yaml:4:3: error: `hmac.signed`: unknown placeholder `{methd}`"),
        "{stdout}"
    );
}
