//! `ferry validate` and `ferry run` as a user runs them.

use std::process::Command;

use serde_json::Value;

use crate::harness::{Project, Receiver, bin};

#[test]
fn validate_reports_every_error_with_location_and_hint() {
    let flow = "id: x\ntrigger: { webhook: { path: /h } }\nsteps:\n  - id: a\n    htpp: { url: 'http://x' }\n  - id: b\n    map: '{{ .steps.zz }}'\n    timeout: forever\n";
    let project = Project::new(&[("flows/x.yaml", flow)], None);
    let out = Command::new(bin())
        .arg("validate")
        .arg(project.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 6, "{stdout}");
    assert!(
        lines[0].ends_with("flows/x.yaml:5:5: error: unknown step kind `htpp`"),
        "{stdout}"
    );
    assert!(
        lines[1].starts_with("  hint: did you mean `http`?"),
        "{stdout}"
    );
    assert!(
        lines[2].ends_with("flows/x.yaml:7:21: error: reference to unknown step `zz`"),
        "{stdout}"
    );
    assert!(lines[4].ends_with("flows/x.yaml:8:14: error: invalid duration `forever` (expected number at 0); expected e.g. `500ms`, `10s`, `5m`"), "{stdout}");

    let ok = Command::new(bin())
        .args([
            "validate",
            concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/quickstart"),
        ])
        .output()
        .unwrap();
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );
}

#[test]
fn serve_refuses_to_start_on_invalid_files() {
    let project = Project::new(
        &[(
            "flows/x.yaml",
            "id: x\ntrigger: { webhook: { path: nope } }\nsteps: []\n",
        )],
        None,
    );
    let out = Command::new(bin())
        .args(["serve", "--listen", "127.0.0.1:0"])
        .arg(project.path())
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.contains("flows/x.yaml:2:29: error: invalid webhook path `nope`"),
        "{stdout}"
    );
    assert!(
        stdout.contains("a flow needs at least one step"),
        "{stdout}"
    );
}

#[tokio::test]
async fn run_executes_a_flow_in_process_and_exits_by_its_outcome() {
    let receiver = Receiver::start().await;
    let flow = "id: f\ntrigger: { manual: {} }\nsteps:\n  - id: m\n    map: { hello: '{{ .event.body.name }}' }\n  - id: post\n    http: { url: '@RECEIVER@/hook', body: '{{ .steps.m }}' }\n";
    let project = Project::new(&[("flows/f.yaml", flow)], Some(&receiver));
    std::fs::write(project.path().join("event.json"), r#"{"name": "Ada"}"#).unwrap();
    let out = tokio::process::Command::new(bin())
        .arg("run")
        .arg(project.path().join("flows/f.yaml"))
        .arg("--event")
        .arg(project.path().join("event.json"))
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let run: Value = serde_json::from_slice(&out.stdout).expect("the run as JSON on stdout");
    assert_eq!(run["status"], "succeeded");
    assert_eq!(run["steps"][0]["output"]["hello"], "Ada");
    assert!(stderr.contains("ok      m [map]"), "{stderr}");
    assert_eq!(receiver.requests_to("/hook")[0].json()["hello"], "Ada");

    // A failing flow exits 1 and still prints the run.
    let flow = "id: g\ntrigger: { manual: {} }\nsteps:\n  - id: post\n    http: { url: '@RECEIVER@/x', method: DELETE }\n    retry: { attempts: 1 }\n";
    let project = Project::new(&[("flows/g.yaml", flow)], Some(&receiver));
    receiver.fail_next([crate::harness::Fault::Status(404)]);
    let out = tokio::process::Command::new(bin())
        .arg("run")
        .arg(project.path().join("flows/g.yaml"))
        .output()
        .await
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(run["status"], "failed");

    // A flow file that is not there is an operational error (2), not a failed run (1).
    let out = tokio::process::Command::new(bin())
        .arg("run")
        .arg(project.path().join("flows/nope.yaml"))
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("nope.yaml"), "{stderr}");
}

#[tokio::test]
async fn runs_and_dlq_find_a_server_on_any_port_through_its_data_folder() {
    let flow = "id: f\ntrigger: { webhook: { path: /h } }\nsteps:\n  - id: m\n    map: { a: 1 }\n";
    let project = Project::new(&[("flows/f.yaml", flow)], None);
    let ferry = crate::harness::Ferry::start(&project);
    let resp = ferry
        .http
        .post(ferry.url("/h"))
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let id = resp.json::<Value>().await.unwrap()["run_id"]
        .as_str()
        .unwrap()
        .to_owned();
    // No --server: the address comes from DATA/server.url (the server is on a random port).
    for args in [vec!["runs", "list"], vec!["dlq", "list"]] {
        let out = tokio::process::Command::new(bin())
            .args(&args)
            .arg("--data")
            .arg(&ferry.data)
            .env_remove("FERRY_SERVER")
            .env("FERRY_ADMIN_KEY", crate::harness::ADMIN_KEY)
            .output()
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if args[0] == "runs" {
            assert!(stdout.contains(&id), "{stdout}");
        }
    }
}
