//! `call`: a flow running another flow as a run of its own, in the engine harness.

use serde_json::json;

use ferry_core::engine::harness::Harness;
use ferry_core::store::{ReplayFrom, RunFilter, RunStatus, StepStatus};

mod common;
use common::{Upstream, project, step};

const CALLER: &str = "id: order
trigger: manual
steps:
  - id: enrich
    call: { flow: customer, input: { email: '{{ .event.body.email }}' } }
  - id: after
    map: { tier: '{{ .steps.enrich.tier }}' }
";

const CALLEE: &str = "id: customer
trigger:
  flow:
    input: { type: object, required: [email], properties: { email: { type: string, pattern: '@' } } }
output: '{{ {tier: .steps.lookup.body.tier, email: .event.body.email, by: .event.parent.step} }}'
steps:
  - id: lookup
    http: { connection: api, method: POST, path: /lookup, body: { email: '{{ .event.body.email }}', tier: gold } }
";

fn files(url: &str, caller: &str, callee: &str) -> tempfile::TempDir {
    project(&[
        (
            "connections/api.yaml",
            format!("id: api\nbase_url: '{url}'\nretry: {{ attempts: 1 }}\n"),
        ),
        ("flows/order.yaml", caller.to_owned()),
        ("flows/customer.yaml", callee.to_owned()),
    ])
}

async fn runs_of(h: &Harness, flow: &str) -> Vec<ferry_core::store::RunSummary> {
    h.engine
        .store
        .list_runs(RunFilter {
            flow: Some(flow.into()),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap()
}

#[tokio::test]
async fn a_call_waits_in_the_queue_for_the_child_and_gets_its_output() {
    let (up, url) = Upstream::start().await;
    let dir = files(&url, CALLER, CALLEE);
    let h = Harness::load(dir.path());
    let id = h
        .start("order", json!({"email": "ada@example.com"}))
        .await
        .unwrap();
    h.settle().await;

    let run = h.run(&id).await;
    assert_eq!(run.summary.status, RunStatus::Succeeded, "{run:#?}");
    let out = json!({"tier": "gold", "email": "ada@example.com", "by": "enrich"});
    assert_eq!(step(&run, "enrich").output, Some(out));
    assert_eq!(step(&run, "after").output, Some(json!({"tier": "gold"})));
    let children = runs_of(&h, "customer").await;
    assert_eq!(children.len(), 1);
    assert_eq!(children[0].status, RunStatus::Succeeded);
    let child = h.run(&children[0].id).await;
    assert_eq!(child.event["body"], json!({"email": "ada@example.com"}));
    assert_eq!(
        child.event["parent"],
        json!({"run": id, "step": "enrich", "depth": 1})
    );
    assert_eq!(up.calls("/lookup"), 1);
}

#[tokio::test]
async fn a_failed_child_fails_the_call_and_a_replay_of_the_caller_replays_the_child() {
    let (up, url) = Upstream::start().await;
    let dir = files(&url, CALLER, CALLEE);
    let h = Harness::load(dir.path());
    up.script("/lookup", &[400]);
    let id = h
        .start("order", json!({"email": "ada@example.com"}))
        .await
        .unwrap();
    h.settle().await;

    let run = h.run(&id).await;
    assert_eq!(run.summary.status, RunStatus::Failed, "{run:#?}");
    let error = step(&run, "enrich").error.clone().unwrap();
    assert_eq!(error["kind"], "child", "{error}");
    let msg = error["message"].as_str().unwrap();
    assert!(
        msg.contains("flow `customer` failed") && msg.contains("400"),
        "{msg}"
    );
    let children = runs_of(&h, "customer").await;
    assert_eq!((children.len(), children[0].status), (1, RunStatus::Failed));

    // The partner is fixed; replaying the caller replays the same child, from its failed
    // step, and the caller gets its output.
    h.replay(&id, ReplayFrom::Failed).await.unwrap();
    h.settle().await;
    let run = h.run(&id).await;
    assert_eq!(run.summary.status, RunStatus::Succeeded, "{run:#?}");
    assert_eq!(
        step(&run, "enrich").output.as_ref().unwrap()["tier"],
        "gold"
    );
    let children = runs_of(&h, "customer").await;
    assert_eq!(
        (children.len(), children[0].status),
        (1, RunStatus::Succeeded)
    );
    assert_eq!(children[0].attempt, 2);
}

#[tokio::test]
async fn input_that_breaks_the_schema_fails_the_call_before_any_child_starts() {
    let (up, url) = Upstream::start().await;
    let dir = files(&url, CALLER, CALLEE);
    let h = Harness::load(dir.path());
    let id = h.start("order", json!({"email": "nobody"})).await.unwrap();
    h.settle().await;
    let run = h.run(&id).await;
    assert_eq!(run.summary.status, RunStatus::Failed);
    let error = step(&run, "enrich").error.clone().unwrap();
    assert_eq!(error["kind"], "input");
    let msg = error["message"].as_str().unwrap();
    assert!(
        msg.contains("at /email") && msg.contains("customer"),
        "{msg}"
    );
    assert!(runs_of(&h, "customer").await.is_empty());
    assert_eq!(up.total(), 0);
}

#[tokio::test]
async fn wait_false_starts_the_child_and_goes_on() {
    let (up, url) = Upstream::start().await;
    let caller = CALLER.replace("input: {", "wait: false, input: {");
    let dir = files(&url, &caller, CALLEE);
    let h = Harness::load(dir.path());
    let id = h
        .start("order", json!({"email": "ada@example.com"}))
        .await
        .unwrap();
    h.settle().await;
    let run = h.run(&id).await;
    assert_eq!(run.summary.status, RunStatus::Succeeded, "{run:#?}");
    let children = runs_of(&h, "customer").await;
    assert_eq!(children.len(), 1);
    assert_eq!(
        step(&run, "enrich").output,
        Some(json!({"run": children[0].id, "flow": "customer"}))
    );
    assert_eq!(step(&run, "after").output, Some(json!({"tier": null})));
    assert_eq!(children[0].status, RunStatus::Succeeded);
    assert_eq!(up.calls("/lookup"), 1);
}

#[tokio::test]
async fn a_caller_sleeping_in_a_call_costs_no_worker_and_times_out_with_kind_timeout() {
    let (_up, url) = Upstream::start().await;
    let caller = CALLER.replace("input: {", "timeout: 1h, input: {") + "    on_error: continue\n";
    // The child waits for a signal that never comes (for two hours).
    let callee = "id: customer
trigger: { flow: {} }
steps:
  - id: hold
    wait: { signal: never, key: x, timeout: 2h }
";
    let caller = caller.replace(
        "  - id: after\n    map: { tier: '{{ .steps.enrich.tier }}' }\n    on_error: continue\n",
        "    on_error: continue\n  - id: after\n    map: { tier: '{{ .steps.enrich.tier }}' }\n",
    );
    let dir = files(&url, &caller, callee);
    let h = Harness::load(dir.path());
    let id = h.start("order", json!({"email": "a@b"})).await.unwrap();
    h.settle().await;
    let run = h.run(&id).await;
    assert_eq!(run.summary.status, RunStatus::Queued, "{run:#?}");
    assert_eq!(step(&run, "enrich").status, StepStatus::Waiting);
    h.advance(std::time::Duration::from_secs(3601)).await;
    h.settle().await;
    let run = h.run(&id).await;
    assert_eq!(run.summary.status, RunStatus::Succeeded, "{run:#?}");
    let enrich = step(&run, "enrich");
    assert_eq!(enrich.status, StepStatus::Failed);
    assert_eq!(enrich.error.as_ref().unwrap()["kind"], "timeout");
}

#[tokio::test]
async fn calls_nest_at_most_sixteen_deep() {
    let (_up, url) = Upstream::start().await;
    let mut files: Vec<(String, String)> = vec![(
        "connections/api.yaml".into(),
        format!("id: api\nbase_url: '{url}'\n"),
    )];
    for i in 0..=17 {
        let trigger = if i == 0 {
            "manual".to_owned()
        } else {
            "{ flow: {} }".to_owned()
        };
        let step = if i < 17 {
            format!("  - id: down\n    call: {{ flow: f{} }}\n", i + 1)
        } else {
            "  - id: bottom\n    map: { ok: true }\n".to_owned()
        };
        files.push((
            format!("flows/f{i}.yaml"),
            format!(
                "id: f{i}\ntrigger: {trigger}\noutput: '{{{{ .steps | keys }}}}'\nsteps:\n{step}"
            ),
        ));
    }
    let refs: Vec<(&str, String)> = files.iter().map(|(p, t)| (p.as_str(), t.clone())).collect();
    let dir = project(&refs);
    let h = Harness::load(dir.path());
    let id = h.start("f0", json!({})).await.unwrap();
    h.settle().await;
    let run = h.run(&id).await;
    assert_eq!(run.summary.status, RunStatus::Failed, "{run:#?}");
    // The run at depth 16 is the one whose call is refused.
    let deepest = runs_of(&h, "f16").await;
    assert_eq!(deepest.len(), 1);
    let d = h.run(&deepest[0].id).await;
    let error = step(&d, "down").error.clone().unwrap();
    assert_eq!(error["kind"], "child");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("deeper than 16"),
        "{error}"
    );
    assert!(runs_of(&h, "f17").await.is_empty());
}

#[test]
fn calls_are_checked_across_files_when_they_load() {
    let check = |caller: &str, callee: &str| {
        let dir = project(&[
            ("flows/order.yaml", caller.to_owned()),
            ("flows/customer.yaml", callee.to_owned()),
        ]);
        ferry_core::flow::load::validate_paths(&[dir.path().to_path_buf()])
            .to_string()
            .replace(&dir.path().display().to_string(), "DIR")
    };
    let caller = "id: order\ntrigger: manual\nsteps:\n  - id: c\n    call: { flow: customer }\n";
    let callee = "id: customer\ntrigger: { flow: {} }\nsteps:\n  - id: m\n    map: { a: 1 }\n";
    assert_eq!(check(caller, callee), "");
    let e = check(&caller.replace("customer }", "custmer }"), callee);
    assert!(
        e.contains("order.yaml:5:19")
            && e.contains("no flow `custmer` to call")
            && e.contains("did you mean `customer`"),
        "{e}"
    );
    let e = check(caller, &callee.replace("{ flow: {} }", "manual"));
    assert!(
        e.contains("flow `customer` cannot be called: its trigger is not `flow`"),
        "{e}"
    );
    let back =
        "id: customer\ntrigger: { flow: {} }\nsteps:\n  - id: back\n    call: { flow: order }\n";
    let e = check(&caller.replace("manual", "{ flow: {} }"), back);
    assert!(e.contains("flows call each other in a cycle: "), "{e}");
    let e = check(
        caller,
        "id: customer\ntrigger: { flow: { input: { type: nope } } }\nsteps:\n  - id: m\n    map: { a: 1 }\n",
    );
    assert!(e.contains("invalid input schema"), "{e}");
}
