//! The control kinds (`switch`, `delay`) in the engine harness: which rows a run writes, what
//! a resume does with them, and when a sleeping run wakes — on a clock the test moves.

use std::time::Duration;

use serde_json::json;

use ferry_core::engine::harness::{Harness, START_MS};
use ferry_core::store::{ReplayFrom, RunStatus, StepStatus};

mod common;
use common::{Upstream, project, step};

const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);

/// A project with the connection `api` to `url` and the flow `f` whose steps are `steps`.
fn flow(url: &str, steps: &str) -> tempfile::TempDir {
    project(&[
        (
            "connections/api.yaml",
            format!("id: api\nbase_url: '{url}'\nretry: {{ attempts: 1 }}\n"),
        ),
        (
            "flows/f.yaml",
            format!("id: f\ntrigger: manual\nsteps:\n{steps}"),
        ),
    ])
}

fn post(id: &str, path: &str) -> String {
    format!("  - id: {id}\n    http: {{ connection: api, method: POST, path: {path} }}\n")
}

const ROUTE: &str = "
  - id: route
    switch:
      cases:
        - when: '{{ .event.body.total > 1000 }}'
          steps:
            - id: alert
              http: { connection: api, method: POST, path: /alert }
        - when: '{{ .event.body.total > 100 }}'
          steps:
            - id: note
              map: { size: medium }
      default:
        - id: small
          map: { size: small }
  - id: after
    map: { route: '{{ .steps.route }}', alerted: '{{ .steps.alert.status }}', note: '{{ .steps.note }}' }
";

#[tokio::test]
async fn a_switch_runs_the_first_true_case_and_records_the_arm() {
    let (up, url) = Upstream::start().await;
    let dir = flow(&url, ROUTE);
    let h = Harness::load(dir.path());

    let big = h.start("f", json!({"total": 5000})).await.unwrap();
    let medium = h.start("f", json!({"total": 500})).await.unwrap();
    let small = h.start("f", json!({"total": 5})).await.unwrap();
    h.settle().await;

    let run = h.run(&big).await;
    assert_eq!(run.summary.status, RunStatus::Succeeded, "{run:#?}");
    let paths: Vec<&str> = run.steps.iter().map(|s| s.path.as_str()).collect();
    assert_eq!(paths, ["route", "route/0/alert", "after"]);
    assert_eq!(step(&run, "route").output, Some(json!({"case": 0})));
    assert_eq!(
        step(&run, "after").output,
        Some(json!({"route": {"case": 0}, "alerted": 200, "note": null}))
    );
    assert_eq!(up.calls("/alert"), 1);

    let run = h.run(&medium).await;
    let paths: Vec<&str> = run.steps.iter().map(|s| s.path.as_str()).collect();
    assert_eq!(paths, ["route", "route/1/note", "after"]);
    assert_eq!(
        step(&run, "after").output,
        Some(json!({"route": {"case": 1}, "alerted": null, "note": {"size": "medium"}}))
    );

    let run = h.run(&small).await;
    let paths: Vec<&str> = run.steps.iter().map(|s| s.path.as_str()).collect();
    assert_eq!(paths, ["route", "route/default/small", "after"]);
    assert_eq!(step(&run, "route").output, Some(json!({"case": "default"})));
    assert_eq!(up.calls("/alert"), 1, "only the big order alerted");
    h.stop().await;
}

#[tokio::test]
async fn the_short_form_is_a_two_arm_switch_and_a_switch_may_end_the_flow() {
    let (up, url) = Upstream::start().await;
    let steps = format!(
        "  - id: vip\n    switch:\n      if: '{{{{ .event.body.vip }}}}'\n      then:\n{}      else:\n{}",
        post("welcome", "/welcome")
            .replace("  - ", "        - ")
            .replace("\n    ", "\n          "),
        post("plain", "/plain")
            .replace("  - ", "        - ")
            .replace("\n    ", "\n          "),
    );
    let dir = flow(&url, &steps);
    let h = Harness::load(dir.path());
    let yes = h.start("f", json!({"vip": true})).await.unwrap();
    let no = h.start("f", json!({"vip": false})).await.unwrap();
    h.settle().await;
    let run = h.run(&yes).await;
    assert_eq!(run.summary.status, RunStatus::Succeeded, "{run:#?}");
    assert_eq!(step(&run, "vip").output, Some(json!({"case": 0})));
    assert_eq!(step(&run, "vip/0/welcome").status, StepStatus::Succeeded);
    let run = h.run(&no).await;
    assert_eq!(run.summary.status, RunStatus::Succeeded, "{run:#?}");
    assert_eq!(
        step(&run, "vip/default/plain").status,
        StepStatus::Succeeded
    );
    assert_eq!((up.calls("/welcome"), up.calls("/plain")), (1, 1));
    h.stop().await;
}

#[tokio::test]
async fn a_resumed_run_takes_the_arm_its_row_records_even_when_the_condition_changed() {
    // `.run.attempt` is 1, then 2 after the replay: evaluated again, the condition would take
    // the other arm.
    let (up, url) = Upstream::start().await;
    up.script("/first", &[422]);
    let steps = "
  - id: route
    switch:
      cases:
        - when: '{{ .run.attempt == 1 }}'
          steps:
            - id: first
              http: { connection: api, method: POST, path: /first }
      default:
        - id: other
          http: { connection: api, method: POST, path: /other }
";
    let dir = flow(&url, steps);
    let h = Harness::load(dir.path());
    let id = h.start("f", json!({})).await.unwrap();
    h.settle().await;
    let run = h.run(&id).await;
    assert_eq!(run.summary.status, RunStatus::Failed, "{run:#?}");
    assert_eq!(step(&run, "route").output, Some(json!({"case": 0})));

    h.replay(&id, ReplayFrom::Failed).await.unwrap();
    let run = h.run(&id).await;
    assert_eq!(run.summary.status, RunStatus::Succeeded, "{run:#?}");
    assert_eq!(run.summary.attempt, 2);
    assert_eq!((up.calls("/first"), up.calls("/other")), (2, 0));

    // Replayed from the start, the switch decides again.
    h.replay(&id, ReplayFrom::Start).await.ok();
    h.stop().await;
}

#[tokio::test]
async fn a_delay_sleeps_in_the_queue_until_its_time_and_is_not_an_attempt() {
    let (up, url) = Upstream::start().await;
    let steps = format!(
        "{}  - id: cool-off\n    delay: 1h\n{}",
        post("before", "/before"),
        post("after", "/after")
    );
    let dir = flow(&url, &steps);
    let h = Harness::load(dir.path());
    let id = h.start("f", json!({})).await.unwrap();
    h.settle().await;

    let run = h.run(&id).await;
    assert_eq!(run.summary.status, RunStatus::Queued, "{run:#?}");
    let delay = step(&run, "cool-off");
    assert_eq!(delay.status, StepStatus::Waiting);
    assert_eq!(delay.attempts, 0, "a delay is not an attempt");
    let until = START_MS + 3_600_000;
    assert_eq!(delay.output.as_ref().unwrap()["until_ms"], until);
    assert_eq!(
        delay.output.as_ref().unwrap()["until"],
        "2026-01-01T01:00:00.000Z"
    );
    assert_eq!((up.calls("/before"), up.calls("/after")), (1, 0));

    h.advance(HOUR - MINUTE).await;
    assert_eq!(up.calls("/after"), 0, "woke early");
    assert_eq!(h.run(&id).await.summary.status, RunStatus::Queued);
    h.advance(MINUTE).await;
    let run = h.run(&id).await;
    assert_eq!(run.summary.status, RunStatus::Succeeded, "{run:#?}");
    assert_eq!(step(&run, "cool-off").status, StepStatus::Succeeded);
    assert_eq!((up.calls("/before"), up.calls("/after")), (1, 1));
    h.stop().await;
}

#[tokio::test]
async fn a_delay_until_a_time_from_the_event_and_one_already_past() {
    let (up, url) = Upstream::start().await;
    let steps = format!(
        "  - id: wait\n    delay: {{ until: '{{{{ .event.body.at }}}}' }}\n{}",
        post("after", "/after")
    );
    let dir = flow(&url, &steps);
    let h = Harness::load(dir.path());
    // 07:00 in Hanoi is midnight UTC: two hours after the start.
    let later = h
        .start("f", json!({"at": "2026-01-01T09:00:00+07:00"}))
        .await
        .unwrap();
    let past = h
        .start("f", json!({"at": "2025-12-31T00:00:00Z"}))
        .await
        .unwrap();
    h.settle().await;
    assert_eq!(h.run(&past).await.summary.status, RunStatus::Succeeded);
    assert_eq!(h.run(&later).await.summary.status, RunStatus::Queued);
    h.advance(2 * HOUR - MINUTE).await;
    assert_eq!(up.calls("/after"), 1);
    h.advance(MINUTE).await;
    assert_eq!(h.run(&later).await.summary.status, RunStatus::Succeeded);
    assert_eq!(up.calls("/after"), 2);
    h.stop().await;
}

#[tokio::test]
async fn a_delay_until_something_that_is_not_a_time_fails_the_step_with_what_it_got() {
    let (_up, url) = Upstream::start().await;
    let steps =
        "  - id: wait\n    delay: { until: '{{ .event.body.at }}' }\n  - id: x\n    map: 1\n";
    let dir = flow(&url, steps);
    let h = Harness::load(dir.path());
    for (body, message) in [
        (
            json!({"at": "tomorrow"}),
            "`until` must be an RFC 3339 time such as \"2026-12-24T09:00:00+07:00\", got \"tomorrow\"",
        ),
        (
            json!({"at": 5}),
            "`until` must be an RFC 3339 time such as \"2026-12-24T09:00:00+07:00\", got 5",
        ),
        (
            json!({"at": "2030-01-01T00:00:00Z"}),
            "`until` is more than a year away",
        ),
    ] {
        let id = h.start("f", body.clone()).await.unwrap();
        h.settle().await;
        let run = h.run(&id).await;
        assert_eq!(run.summary.status, RunStatus::Failed, "{body}: {run:#?}");
        let error = run.summary.error.unwrap();
        assert_eq!(error["step"], "wait");
        let text = error["message"].as_str().unwrap();
        assert!(text.starts_with(message), "{body}: {text}");
    }
    h.stop().await;
}

#[tokio::test]
async fn a_delay_inside_an_arm_resumes_inside_that_arm() {
    let (up, url) = Upstream::start().await;
    let steps = "
  - id: route
    switch:
      if: '{{ .event.body.later }}'
      then:
        - id: nap
          delay: 30m
        - id: late
          http: { connection: api, method: POST, path: /late }
      else:
        - id: now
          http: { connection: api, method: POST, path: /now }
  - id: done
    http: { connection: api, method: POST, path: /done }
";
    let dir = flow(&url, steps);
    let h = Harness::load(dir.path());
    let id = h.start("f", json!({"later": true})).await.unwrap();
    h.settle().await;
    let run = h.run(&id).await;
    assert_eq!(
        step(&run, "route/0/nap").status,
        StepStatus::Waiting,
        "{run:#?}"
    );
    assert_eq!(up.calls("/late") + up.calls("/done"), 0);
    h.advance(30 * MINUTE).await;
    let run = h.run(&id).await;
    assert_eq!(run.summary.status, RunStatus::Succeeded, "{run:#?}");
    let paths: Vec<&str> = run.steps.iter().map(|s| s.path.as_str()).collect();
    assert_eq!(paths, ["route", "route/0/nap", "route/0/late", "done"]);
    assert_eq!(
        (up.calls("/late"), up.calls("/now"), up.calls("/done")),
        (1, 0, 1)
    );
    h.stop().await;
}

/// A loop over `.event.body.items` that POSTs each item to `/item/INDEX`.
fn each_item(extra: &str) -> String {
    format!(
        "
  - id: lines
    foreach:
      items: '{{{{ .event.body.items }}}}'
{extra}      steps:
        - id: charge
          http: {{ connection: api, method: POST, path: '/item/{{{{ .index }}}}', body: {{ sku: '{{{{ .item }}}}', at: '{{{{ .index }}}}' }} }}
  - id: after
    map: {{ lines: '{{{{ .steps.lines }}}}', charge: '{{{{ .steps.charge }}}}' }}
"
    )
}

#[tokio::test]
async fn foreach_runs_every_item_and_collects_results_in_input_order() {
    let (up, url) = Upstream::start().await;
    let steps = each_item("      concurrency: 3\n      output: '{{ .steps.charge.body.sku }}'\n");
    let dir = flow(&url, &steps);
    let h = Harness::load(dir.path());
    let skus: Vec<String> = (0..10).map(|i| format!("sku-{i}")).collect();
    let id = h.start("f", json!({ "items": skus })).await.unwrap();
    h.settle().await;
    let run = h.run(&id).await;
    assert_eq!(run.summary.status, RunStatus::Succeeded, "{run:#?}");
    assert_eq!(step(&run, "lines").output, Some(json!(skus)));
    // Outside the loop, an item's step has no result.
    assert_eq!(
        step(&run, "after").output,
        Some(json!({"lines": skus, "charge": null}))
    );
    for i in 0..10 {
        let row = step(&run, &format!("lines/{i}/charge"));
        assert_eq!(row.status, StepStatus::Succeeded);
        assert_eq!(
            row.output.as_ref().unwrap()["body"],
            json!({"sku": format!("sku-{i}"), "at": i})
        );
    }
    let mut keys: Vec<String> = up.keys().into_iter().map(|(_, k)| k).collect();
    keys.sort();
    let mut want: Vec<String> = (0..10).map(|i| format!("{id}:lines/{i}/charge")).collect();
    want.sort();
    assert_eq!(keys, want, "one call per item, keyed by its path");
    h.stop().await;
}

#[tokio::test]
async fn a_resumed_loop_runs_only_the_items_not_done() {
    let (up, url) = Upstream::start().await;
    up.script("/item/3", &[503]);
    up.script("/item/6", &[503]);
    let dir = project(&[
        (
            "connections/api.yaml",
            format!(
                "id: api\nbase_url: '{url}'\nretry: {{ attempts: 3, initial: 1h, backoff: fixed }}\n"
            ),
        ),
        (
            "flows/f.yaml",
            format!("id: f\ntrigger: manual\nsteps:{}", each_item("")),
        ),
    ]);
    let h = Harness::load(dir.path());
    let id = h
        .start("f", json!({ "items": (0..8).collect::<Vec<_>>() }))
        .await
        .unwrap();
    h.settle().await;
    let run = h.run(&id).await;
    assert_eq!(run.summary.status, RunStatus::Queued, "{run:#?}");
    assert_eq!(step(&run, "lines/3/charge").status, StepStatus::Retrying);
    assert!(
        run.steps.iter().all(|s| s.path != "lines"),
        "the loop is not done: {run:#?}"
    );
    assert_eq!(up.total(), 8);

    h.advance(HOUR).await;
    let run = h.run(&id).await;
    assert_eq!(run.summary.status, RunStatus::Succeeded, "{run:#?}");
    assert_eq!(
        up.total(),
        10,
        "only the two failed items were called again"
    );
    assert_eq!(
        (
            up.calls("/item/3"),
            up.calls("/item/6"),
            up.calls("/item/0")
        ),
        (2, 2, 1)
    );
    let results = step(&run, "lines").output.clone().unwrap();
    assert_eq!(results.as_array().unwrap().len(), 8);
    assert_eq!(results[3]["body"]["sku"], 3);
    h.stop().await;
}

#[tokio::test]
async fn item_failures_fail_the_loop_or_are_collected_or_tolerated() {
    let (up, url) = Upstream::start().await;
    for i in [1, 4] {
        // Three runs below reach these items.
        up.script(&format!("/item/{i}"), &[422, 422, 422]);
    }
    let dir = project(&[
        (
            "connections/api.yaml",
            format!("id: api\nbase_url: '{url}'\nretry: {{ attempts: 1 }}\n"),
        ),
        (
            "flows/fail.yaml",
            format!(
                "id: fail\ntrigger: manual\nsteps:{}",
                each_item("      concurrency: 1\n")
            ),
        ),
        (
            "flows/go-on.yaml",
            format!(
                "id: go-on\ntrigger: manual\nsteps:{}",
                each_item("      on_item_error: continue\n")
            ),
        ),
        (
            "flows/one.yaml",
            format!(
                "id: one\ntrigger: manual\nsteps:{}",
                each_item("      on_item_error: { tolerate: 1 }\n")
            ),
        ),
    ]);
    let h = Harness::load(dir.path());
    let body = json!({ "items": ["a", "b", "c", "d", "e", "f"] });

    // `fail`: item 1 fails; with one item at a time, no item after it starts.
    let id = h.start("fail", body.clone()).await.unwrap();
    h.settle().await;
    let run = h.run(&id).await;
    assert_eq!(run.summary.status, RunStatus::Failed, "{run:#?}");
    let error = run.summary.error.clone().unwrap();
    assert_eq!(error["step"], "lines");
    assert_eq!(error["kind"], "items");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .starts_with("item 1 failed: "),
        "{error}"
    );
    assert_eq!(up.total(), 2, "items after the failure started");

    // `continue`: every item runs; the failed ones' results are their errors.
    let id = h.start("go-on", body.clone()).await.unwrap();
    h.settle().await;
    let run = h.run(&id).await;
    assert_eq!(run.summary.status, RunStatus::Succeeded, "{run:#?}");
    let results = step(&run, "lines").output.clone().unwrap();
    assert_eq!(results[1]["error"]["status"], 422);
    assert_eq!(results[4]["error"]["status"], 422);
    assert_eq!(results[2]["body"]["sku"], "c");
    assert_eq!(up.total(), 2 + 6);

    // `tolerate: 1`: two failures are one too many.
    let id = h.start("one", body).await.unwrap();
    h.settle().await;
    let run = h.run(&id).await;
    assert_eq!(run.summary.status, RunStatus::Failed, "{run:#?}");
    let message = run.summary.error.unwrap()["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(message.ends_with("(2 of 6 items failed)"), "{message}");

    // Replayed from the failed step, only the failed items run again (they pass now).
    let before = up.total();
    h.replay(&id, ReplayFrom::Failed).await.unwrap();
    let run = h.run(&id).await;
    assert_eq!(run.summary.status, RunStatus::Succeeded, "{run:#?}");
    assert_eq!(up.total() - before, 2);
    h.stop().await;
}

#[tokio::test]
async fn a_delay_inside_foreach_items_sleeps_in_the_queue_for_all_of_them() {
    let (up, url) = Upstream::start().await;
    let steps = "
  - id: lines
    foreach:
      items: [1, 2, 3]
      steps:
        - id: nap
          delay: 10m
        - id: ping
          http: { connection: api, method: POST, path: '/ping/{{ .item }}' }
";
    let dir = flow(&url, steps);
    let h = Harness::load(dir.path());
    let id = h.start("f", json!({})).await.unwrap();
    h.settle().await;
    let run = h.run(&id).await;
    assert_eq!(run.summary.status, RunStatus::Queued, "{run:#?}");
    assert_eq!(step(&run, "lines/2/nap").status, StepStatus::Waiting);
    assert_eq!(up.total(), 0);
    h.advance(10 * MINUTE).await;
    let run = h.run(&id).await;
    assert_eq!(run.summary.status, RunStatus::Succeeded, "{run:#?}");
    assert_eq!(
        (
            up.calls("/ping/1"),
            up.calls("/ping/2"),
            up.calls("/ping/3")
        ),
        (1, 1, 1)
    );
    h.stop().await;
}

#[tokio::test]
async fn items_that_are_not_a_list_or_too_many_fail_the_step_precisely() {
    let (up, url) = Upstream::start().await;
    let dir = flow(&url, &each_item("      max_items: 3\n"));
    let h = Harness::load(dir.path());
    for (items, message) in [
        (json!({"a": 1}), "`items` must be a list, got {\"a\":1}"),
        (json!(null), "`items` must be a list, got null"),
        (
            json!([1, 2, 3, 4]),
            "`items` has 4 entries, more than `max_items` (3)",
        ),
    ] {
        let id = h.start("f", json!({ "items": items })).await.unwrap();
        h.settle().await;
        let run = h.run(&id).await;
        assert_eq!(run.summary.status, RunStatus::Failed, "{run:#?}");
        let error = run.summary.error.unwrap();
        assert_eq!(error["step"], "lines");
        assert!(
            error["message"].as_str().unwrap().starts_with(message),
            "{error}"
        );
    }
    assert_eq!(up.total(), 0, "no item ran");
    h.stop().await;
}

fn fan_out(join: &str) -> String {
    format!(
        "
  - id: notify
    parallel:
      join: {join}
      branches:
        crm:
          - id: upsert
            http: {{ connection: api, method: POST, path: /crm }}
        mailer:
          - id: mail
            http: {{ connection: api, method: POST, path: /mailer }}
  - id: after
    map: {{ crm: '{{{{ .steps.upsert.status }}}}', mail: '{{{{ .steps.mail.status }}}}' }}
"
    )
}

#[tokio::test]
async fn parallel_joins_all_settled_or_any() {
    let (up, url) = Upstream::start().await;
    let dir = project(&[
        (
            "connections/api.yaml",
            format!("id: api\nbase_url: '{url}'\nretry: {{ attempts: 1 }}\n"),
        ),
        (
            "flows/all.yaml",
            format!("id: all\ntrigger: manual\nsteps:{}", fan_out("all")),
        ),
        (
            "flows/settled.yaml",
            format!("id: settled\ntrigger: manual\nsteps:{}", fan_out("settled")),
        ),
    ]);
    let h = Harness::load(dir.path());

    let id = h.start("all", json!({})).await.unwrap();
    h.settle().await;
    let run = h.run(&id).await;
    assert_eq!(run.summary.status, RunStatus::Succeeded, "{run:#?}");
    let out = step(&run, "notify").output.clone().unwrap();
    assert_eq!(
        (
            out["crm"]["status"].clone(),
            out["mailer"]["status"].clone()
        ),
        (json!(200), json!(200))
    );
    assert_eq!(
        step(&run, "after").output,
        Some(json!({"crm": 200, "mail": 200}))
    );
    assert_eq!(
        step(&run, "notify/crm/upsert").status,
        StepStatus::Succeeded
    );

    // `all`: one failure fails the step, once the other branch has run.
    up.script("/mailer", &[422, 422]);
    let id = h.start("all", json!({})).await.unwrap();
    h.settle().await;
    let run = h.run(&id).await;
    assert_eq!(run.summary.status, RunStatus::Failed, "{run:#?}");
    let error = run.summary.error.clone().unwrap();
    assert_eq!(
        (error["step"].clone(), error["kind"].clone()),
        (json!("notify"), json!("branches"))
    );
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .starts_with("branch `mailer`: "),
        "{error}"
    );
    assert_eq!(up.calls("/crm"), 2, "the other branch ran");

    // `settled`: every outcome collected; the step succeeds.
    let id = h.start("settled", json!({})).await.unwrap();
    h.settle().await;
    let run = h.run(&id).await;
    assert_eq!(run.summary.status, RunStatus::Succeeded, "{run:#?}");
    let out = step(&run, "notify").output.clone().unwrap();
    assert_eq!(out["crm"]["status"], "succeeded");
    assert_eq!(out["mailer"]["status"], "failed");
    assert_eq!(out["mailer"]["error"]["status"], 422);
    h.stop().await;
}

#[tokio::test]
async fn parallel_any_takes_the_first_success_and_a_cancelled_delay_never_fires() {
    let (up, url) = Upstream::start().await;
    let steps = "
  - id: race
    parallel:
      join: any
      branches:
        slow:
          - id: nap
            delay: 1h
          - id: late
            http: { connection: api, method: POST, path: /slow }
        fast:
          - id: quick
            http: { connection: api, method: POST, path: /fast }
  - id: done
    http: { connection: api, method: POST, path: /done }
";
    let dir = flow(&url, steps);
    let h = Harness::load(dir.path());
    let id = h.start("f", json!({})).await.unwrap();
    h.settle().await;
    let run = h.run(&id).await;
    assert_eq!(run.summary.status, RunStatus::Succeeded, "{run:#?}");
    let out = step(&run, "race").output.clone().unwrap();
    assert_eq!(
        out.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["fast"]
    );
    h.advance(2 * HOUR).await;
    assert_eq!(
        (up.calls("/fast"), up.calls("/slow"), up.calls("/done")),
        (1, 0, 1),
        "the cancelled branch's delay fired"
    );
    h.stop().await;
}

#[tokio::test]
async fn a_resumed_parallel_runs_only_the_unfinished_branch() {
    let (up, url) = Upstream::start().await;
    up.script("/crm", &[503]);
    let dir = project(&[
        (
            "connections/api.yaml",
            format!(
                "id: api\nbase_url: '{url}'\nretry: {{ attempts: 2, initial: 1h, backoff: fixed }}\n"
            ),
        ),
        (
            "flows/f.yaml",
            format!("id: f\ntrigger: manual\nsteps:{}", fan_out("all")),
        ),
    ]);
    let h = Harness::load(dir.path());
    let id = h.start("f", json!({})).await.unwrap();
    h.settle().await;
    let run = h.run(&id).await;
    assert_eq!(run.summary.status, RunStatus::Queued, "{run:#?}");
    assert_eq!(step(&run, "notify/crm/upsert").status, StepStatus::Retrying);
    h.advance(HOUR).await;
    let run = h.run(&id).await;
    assert_eq!(run.summary.status, RunStatus::Succeeded, "{run:#?}");
    assert_eq!((up.calls("/crm"), up.calls("/mailer")), (2, 1));
    assert_eq!(
        step(&run, "after").output,
        Some(json!({"crm": 200, "mail": 200}))
    );
    h.stop().await;
}

const FALLBACK: &str = "
  - id: charge
    http: { connection: api, method: POST, path: /charge }
    on_error:
      - id: alert
        http: { connection: api, method: POST, path: /alert, body: { status: '{{ .error.status }}', kind: '{{ .error.kind }}', seen: '{{ .steps.charge.error.status }}' } }
  - id: next
    http: { connection: api, method: POST, path: /next }
";

#[tokio::test]
async fn fallback_steps_run_with_the_error_and_the_run_goes_on() {
    let (up, url) = Upstream::start().await;
    up.script("/charge", &[422, 422]);
    up.script("/alert", &[503, 422]);
    let dir = project(&[
        (
            "connections/api.yaml",
            format!(
                "id: api\nbase_url: '{url}'\nretry: {{ attempts: 2, initial: 1h, backoff: fixed }}\n"
            ),
        ),
        (
            "flows/f.yaml",
            format!("id: f\ntrigger: manual\nsteps:{FALLBACK}"),
        ),
    ]);
    let h = Harness::load(dir.path());

    // The fallback's own retry (503) waits in the queue like any other; the failed step
    // is not called again meanwhile.
    let id = h.start("f", json!({})).await.unwrap();
    h.settle().await;
    let run = h.run(&id).await;
    assert_eq!(run.summary.status, RunStatus::Queued, "{run:#?}");
    assert_eq!(step(&run, "charge").status, StepStatus::Failed);
    assert_eq!(
        step(&run, "charge/on_error/alert").status,
        StepStatus::Retrying
    );
    h.advance(HOUR).await;
    let run = h.run(&id).await;
    // The second attempt of the fallback answered 422: the fallback failed, so the run did.
    assert_eq!(run.summary.status, RunStatus::Failed, "{run:#?}");
    assert_eq!(run.summary.error.unwrap()["step"], "alert");
    assert_eq!(
        (up.calls("/charge"), up.calls("/alert"), up.calls("/next")),
        (1, 2, 0)
    );

    // A fallback that succeeds: the run goes on after it.
    let id = h.start("f", json!({})).await.unwrap();
    h.settle().await;
    let run = h.run(&id).await;
    assert_eq!(run.summary.status, RunStatus::Succeeded, "{run:#?}");
    let alert = step(&run, "charge/on_error/alert").output.clone().unwrap();
    assert_eq!(
        alert["body"],
        json!({"status": 422, "kind": "http_status", "seen": 422})
    );
    assert_eq!(
        step(&run, "charge").output.as_ref().unwrap()["error"]["status"],
        422
    );
    assert_eq!(up.calls("/next"), 1);
    h.stop().await;
}

fn waiting(url: &str) -> tempfile::TempDir {
    project(&[
        ("connections/api.yaml", format!("id: api\nbase_url: '{url}'\nretry: {{ attempts: 1 }}\n")),
        (
            "flows/order.yaml",
            "id: order
trigger: manual
steps:
  - id: paid
    wait: { signal: payment, key: '{{ .event.body.order }}', timeout: 2d }
  - id: ship
    http: { connection: api, method: POST, path: /ship, body: { amount: '{{ .steps.paid.amount }}' } }
"
            .to_owned(),
        ),
        (
            "flows/ipn.yaml",
            "id: ipn
trigger: manual
steps:
  - id: tell
    signal: { name: payment, key: '{{ .event.body.ref }}', data: { amount: '{{ .event.body.amount }}' } }
"
            .to_owned(),
        ),
    ])
}

#[tokio::test]
async fn a_wait_is_resumed_by_a_signal_step_in_another_flow_with_its_data() {
    let (up, url) = Upstream::start().await;
    let dir = waiting(&url);
    let h = Harness::load(dir.path());
    let order = h.start("order", json!({"order": "o-1"})).await.unwrap();
    let other = h.start("order", json!({"order": "o-2"})).await.unwrap();
    h.settle().await;
    let run = h.run(&order).await;
    assert_eq!(run.summary.status, RunStatus::Queued, "{run:#?}");
    let paid = step(&run, "paid");
    assert_eq!(paid.status, StepStatus::Waiting);
    assert_eq!(paid.output.as_ref().unwrap()["key"], "o-1");

    h.advance(HOUR).await;
    let ipn = h
        .start("ipn", json!({"ref": "o-1", "amount": 250000}))
        .await
        .unwrap();
    h.settle().await;
    let run = h.run(&ipn).await;
    assert_eq!(
        step(&run, "tell").output,
        Some(json!({"name": "payment", "key": "o-1", "resumed": 1}))
    );
    let run = h.run(&order).await;
    assert_eq!(run.summary.status, RunStatus::Succeeded, "{run:#?}");
    assert_eq!(step(&run, "paid").output, Some(json!({"amount": 250000})));
    assert_eq!(up.calls("/ship"), 1);
    assert_eq!(
        h.run(&other).await.summary.status,
        RunStatus::Queued,
        "the other order woke"
    );
    h.stop().await;
}

#[tokio::test]
async fn a_signal_that_comes_before_the_wait_resumes_it_within_the_lookback() {
    let (up, url) = Upstream::start().await;
    let dir = waiting(&url);
    let h = Harness::load(dir.path());
    // Nobody waits yet: the signal is kept, and visible.
    assert_eq!(
        h.engine
            .signal("payment", "o-7", &json!({"amount": 1}), None)
            .await
            .unwrap(),
        0
    );
    let kept = h
        .engine
        .store
        .kept_signals(h.clock_now(), 10)
        .await
        .unwrap();
    assert_eq!((kept.len(), kept[0].key.as_str()), (1, "o-7"));
    h.advance(5 * MINUTE).await;
    let id = h.start("order", json!({"order": "o-7"})).await.unwrap();
    h.settle().await;
    let run = h.run(&id).await;
    assert_eq!(run.summary.status, RunStatus::Succeeded, "{run:#?}");
    assert_eq!(step(&run, "paid").output, Some(json!({"amount": 1})));
    // Taken once: a second wait for the same key does not get it again.
    let again = h.start("order", json!({"order": "o-7"})).await.unwrap();
    h.settle().await;
    assert_eq!(h.run(&again).await.summary.status, RunStatus::Queued);
    assert!(
        h.engine
            .store
            .kept_signals(h.clock_now(), 10)
            .await
            .unwrap()
            .is_empty()
    );

    // Past the lookback, a kept signal is dropped: the wait does not see it.
    h.engine
        .signal("payment", "o-8", &json!(2), None)
        .await
        .unwrap();
    h.advance(11 * MINUTE).await;
    assert!(
        h.engine
            .store
            .kept_signals(h.clock_now(), 10)
            .await
            .unwrap()
            .is_empty()
    );
    let late = h.start("order", json!({"order": "o-8"})).await.unwrap();
    h.settle().await;
    assert_eq!(h.run(&late).await.summary.status, RunStatus::Queued);
    assert_eq!(up.calls("/ship"), 1);
    h.stop().await;
}

#[tokio::test]
async fn a_wait_times_out_with_kind_timeout_and_on_error_decides() {
    let (up, url) = Upstream::start().await;
    let dir = project(&[
        ("connections/api.yaml", format!("id: api\nbase_url: '{url}'\nretry: {{ attempts: 1 }}\n")),
        (
            "flows/f.yaml",
            "id: f
trigger: manual
steps:
  - id: approval
    wait: { signal: approval, key: '{{ .event.body.id }}', timeout: 1h }
    on_error: continue
  - id: next
    http: { connection: api, method: POST, path: /next, body: { approved: '{{ .steps.approval.error == null }}', kind: '{{ .steps.approval.error.kind }}' } }
"
            .to_owned(),
        ),
    ]);
    let h = Harness::load(dir.path());
    let id = h.start("f", json!({"id": 5})).await.unwrap();
    h.settle().await;
    h.advance(HOUR - MINUTE).await;
    assert_eq!(h.run(&id).await.summary.status, RunStatus::Queued);
    h.advance(MINUTE).await;
    let run = h.run(&id).await;
    assert_eq!(run.summary.status, RunStatus::Succeeded, "{run:#?}");
    let e = &step(&run, "approval").output.as_ref().unwrap()["error"];
    assert_eq!(e["kind"], "timeout");
    assert_eq!(
        e["message"],
        "no signal `approval` with key `5` arrived within 1h"
    );
    assert_eq!(
        step(&run, "next").output.as_ref().unwrap()["body"],
        json!({"approved": false, "kind": "timeout"})
    );
    // A signal after the timeout resumes nothing.
    assert_eq!(
        h.engine
            .signal("approval", "5", &json!(true), None)
            .await
            .unwrap(),
        0
    );
    assert_eq!(up.calls("/next"), 1);
    h.stop().await;
}

#[tokio::test]
async fn waits_inside_foreach_items_resume_one_by_one() {
    let (up, url) = Upstream::start().await;
    let steps = "
  - id: parcels
    foreach:
      items: [a, b, c]
      steps:
        - id: picked
          wait: { signal: pickup, key: '{{ .item }}', timeout: 1d }
        - id: tell
          http: { connection: api, method: POST, path: '/picked/{{ .item }}' }
";
    let dir = flow(&url, steps);
    let h = Harness::load(dir.path());
    let id = h.start("f", json!({})).await.unwrap();
    h.settle().await;
    for (n, key) in ["b", "a", "c"].into_iter().enumerate() {
        assert_eq!(
            h.engine
                .signal("pickup", key, &json!({"at": n}), None)
                .await
                .unwrap(),
            1,
            "{key}"
        );
        h.settle().await;
        assert_eq!(up.calls(&format!("/picked/{key}")), 1, "{key}");
        assert_eq!(up.total(), n + 1);
    }
    let run = h.run(&id).await;
    assert_eq!(run.summary.status, RunStatus::Succeeded, "{run:#?}");
    h.stop().await;
}
