//! The engine driven in process ([`ferry_core::engine::harness`]): no HTTP in front of it and
//! no real time. Retries are an hour apart, and happen only when the test moves the clock, so
//! nothing here depends on how fast the machine is.

use std::time::Duration;

use serde_json::{Value as Json, json};

use ferry_core::engine::harness::Harness;
use ferry_core::store::{ReplayFrom, RunStatus, StepStatus};

mod common;
use common::{Upstream, project, step};

const HOUR: Duration = Duration::from_secs(3600);

fn two_calls(url: &str) -> tempfile::TempDir {
    project(&[
        (
            "connections/api.yaml",
            format!("id: api\nbase_url: '{url}'\nretry: {{ attempts: 4, initial: 1h, backoff: fixed }}\n"),
        ),
        (
            "flows/f.yaml",
            "id: f\ntrigger: manual\nsteps:\n  - id: first\n    http: { connection: api, method: POST, path: /first }\n  - id: second\n    http: { connection: api, method: POST, path: /second }\n".to_owned(),
        ),
    ])
}

#[tokio::test]
async fn exhausted_retries_go_dead_at_the_due_times_and_replay_resumes_from_the_failed_step() {
    let (up, url) = Upstream::start().await;
    up.script("/second", &[500, 502, 503, 504]);
    let dir = two_calls(&url);
    let h = Harness::load(dir.path());

    let id = h.start("f", json!({"n": 1})).await.unwrap();
    h.settle().await;
    for attempt in 1..4u32 {
        let run = h.run(&id).await;
        assert_eq!(run.summary.status, RunStatus::Queued, "{run:#?}");
        let second = step(&run, "second");
        assert_eq!(second.status, StepStatus::Retrying);
        assert_eq!(second.attempts, attempt);
        assert_eq!(up.calls("/second"), attempt as usize);
        // A minute short of the back-off, nothing happens; at the hour, the next attempt.
        h.advance(HOUR - Duration::from_secs(60)).await;
        assert_eq!(up.calls("/second"), attempt as usize, "retried early");
        h.advance(Duration::from_secs(60)).await;
    }
    let run = h.run(&id).await;
    assert_eq!(run.summary.status, RunStatus::Dead, "{run:#?}");
    let error = run.summary.error.clone().unwrap();
    assert_eq!(error["kind"], "http_status");
    assert_eq!(error["status"], 504);
    assert_eq!(error["step"], "second");
    assert_eq!(step(&run, "second").attempts, 4);
    assert_eq!(step(&run, "first").status, StepStatus::Succeeded);
    assert_eq!((up.calls("/first"), up.calls("/second")), (1, 4));

    // A dead run stays dead however much time passes.
    h.advance(24 * HOUR).await;
    assert_eq!(h.run(&id).await.summary.status, RunStatus::Dead);
    assert_eq!(up.calls("/second"), 4);

    h.replay(&id, ReplayFrom::Failed).await.unwrap();
    let run = h.run(&id).await;
    assert_eq!(run.summary.status, RunStatus::Succeeded, "{run:#?}");
    assert_eq!(run.summary.attempt, 2);
    assert_eq!(
        step(&run, "second").attempts,
        1,
        "the replayed step counts from 1"
    );
    assert_eq!(
        (up.calls("/first"), up.calls("/second")),
        (1, 5),
        "the completed step ran again"
    );
    let replay = h.replay(&id, ReplayFrom::Failed).await;
    assert!(replay.is_err(), "a succeeded run was replayed: {replay:?}");
    h.stop().await;
}

#[tokio::test]
async fn a_client_error_is_a_dead_letter_at_once_and_replay_from_the_start_runs_every_step() {
    let (up, url) = Upstream::start().await;
    up.script("/second", &[422]);
    let dir = two_calls(&url);
    let h = Harness::load(dir.path());
    let id = h.start("f", Json::Null).await.unwrap();
    h.settle().await;
    let run = h.run(&id).await;
    assert_eq!(run.summary.status, RunStatus::Failed, "{run:#?}");
    assert_eq!(step(&run, "second").attempts, 1, "a 422 is not retried");
    assert_eq!(run.summary.error.as_ref().unwrap()["status"], 422);

    h.replay(&id, ReplayFrom::Start).await.unwrap();
    let run = h.run(&id).await;
    assert_eq!(run.summary.status, RunStatus::Succeeded, "{run:#?}");
    assert_eq!((up.calls("/first"), up.calls("/second")), (2, 2));
    h.stop().await;
}
