//! Executing one claimed run: resume after the last completed step, persist each outcome,
//! schedule retries as queued wake-ups, finish the run.
//!
//! Steps that only compute (`map`, `filter`, `log`) are deterministic, so their results are
//! written together with the next step that calls out, or with the run's end: re-running
//! them after a crash yields the same values and no effect outside. A step that calls out
//! always has its outcome committed before the next step starts.

use std::sync::Arc;

use serde_json::{Value as Json, json};

use super::Engine;
use crate::flow::model::OnError;
use crate::flow::{CompiledStep, Flow};
use crate::step::{ErrorKind, StepCx, StepError, StepOutput};
use crate::store::{ClaimedRun, RunStatus, RunUpdate, StepRow, StepStatus, StepWrite};

/// What `ferry run` prints as a run goes.
#[derive(Debug, Clone)]
pub struct StepReport {
    pub run_id: String,
    pub step: String,
    pub kind: &'static str,
    pub row: StepRow,
    pub retry_in_ms: Option<i64>,
}

/// What a run of a flow with `redact:` rules masks in what it stores.
pub(crate) struct RunRedaction {
    flow: Arc<Flow>,
    /// The values at the event's redacted paths: masked wherever they appear.
    values: Vec<String>,
    /// The event with its redacted paths masked, stored once the run succeeded.
    event: String,
}

impl RunRedaction {
    pub(crate) fn new(flow: &Arc<Flow>, event_text: &str) -> Option<RunRedaction> {
        let by_connection = flow
            .steps
            .iter()
            .any(|s| s.step.connection().is_some_and(|c| !c.redact.is_empty()));
        if flow.redact_event.is_empty() && flow.redact_steps.is_empty() && !by_connection {
            return None;
        }
        let mut event: Json = serde_json::from_str(event_text).unwrap_or(Json::Null);
        let values = crate::redact::collect_values(&flow.redact_event, &event);
        crate::redact::apply_all(&flow.redact_event, &mut event);
        Some(RunRedaction {
            flow: flow.clone(),
            values,
            event: event.to_string(),
        })
    }

    pub(crate) fn row(&self, row: &mut StepRow) {
        let conn = self
            .flow
            .steps
            .iter()
            .find(|s| s.id == row.path)
            .and_then(|s| s.step.connection());
        if let Some(conn) = conn {
            for v in [&mut row.output, &mut row.request, &mut row.response]
                .into_iter()
                .flatten()
            {
                if let Some(body) = v.get_mut("body") {
                    crate::redact::apply_all(&conn.redact, body);
                }
            }
        }
        for (id, rule) in &self.flow.redact_steps {
            if *id == row.path {
                for v in [&mut row.output, &mut row.response].into_iter().flatten() {
                    rule.apply(v);
                }
            }
        }
        if !self.values.is_empty() {
            for v in row.payloads_mut() {
                crate::redact::scrub_values(&self.values, v);
            }
        }
    }
}

/// Applies `flow`'s `redact:` rules to a run read back from the store (for the API: a run
/// not yet succeeded still holds its full event).
pub fn redact_detail(flow: &Arc<Flow>, d: &mut crate::store::RunDetail) {
    let Some(r) = RunRedaction::new(flow, &d.event.to_string()) else {
        return;
    };
    crate::redact::apply_all(&flow.redact_event, &mut d.event);
    d.steps.iter_mut().for_each(|row| r.row(row));
}

/// Removes a run's redaction entry however execution ends.
struct Redacting<'a> {
    engine: &'a Engine,
    run_id: String,
}

impl Drop for Redacting<'_> {
    fn drop(&mut self) {
        self.engine
            .redacting
            .lock()
            .expect("redacting")
            .remove(&self.run_id);
    }
}

pub trait Observer: Send + Sync {
    fn step(&self, report: &StepReport);
}

enum Next {
    Go,
    Stop(RunUpdate),
}

impl Engine {
    pub(crate) async fn execute(&self, run: ClaimedRun) {
        let run_id = run.id.clone();
        let Some(flow) = self.project.flow(&run.flow).cloned() else {
            let error = json!({"kind": "config", "message": format!("flow `{}` is not loaded on this node", run.flow)});
            self.fail_run(&run_id, error).await;
            return;
        };
        match self.execute_flow(&flow, run).await {
            Ok(()) => {}
            // Another worker holds the run now: its results win, nothing to undo.
            Err(crate::store::StoreError::Conflict(e)) => {
                tracing::warn!(run = %run_id, error = %e, "run taken over by another worker");
            }
            Err(e) => {
                // The store failed: hand the run back to the queue (a little later) rather
                // than keep a lease that lease renewal would extend forever.
                tracing::error!(run = %run_id, error = %e, "run stopped: its result could not be stored; it goes back to the queue");
                let next_at_ms = self.clock.now_ms() + 5_000;
                self.write(&run_id, Vec::new(), RunUpdate::Retry { next_at_ms })
                    .await;
                self.note_due(next_at_ms);
            }
        }
    }

    async fn execute_flow(
        &self,
        flow: &Arc<Flow>,
        run: ClaimedRun,
    ) -> Result<(), crate::store::StoreError> {
        let _redacting = match RunRedaction::new(flow, &run.event) {
            Some(r) => {
                self.redacting
                    .lock()
                    .expect("redacting")
                    .insert(run.id.clone(), Arc::new(r));
                Some(Redacting {
                    engine: self,
                    run_id: run.id.clone(),
                })
            }
            None => None,
        };
        let run_info = json!({ "id": run.id, "flow": run.flow, "attempt": run.attempt });
        let mut outputs = crate::expr::RunContext::from_text(&run.event, &run_info);
        // Results of steps already done (a resumed or replayed run).
        let mut done = std::collections::HashSet::new();
        let mut prior_attempts = std::collections::HashMap::new();
        for row in &run.steps {
            match row.status {
                StepStatus::Succeeded | StepStatus::Skipped | StepStatus::Failed => {
                    outputs.set_step(&row.path, row.output.as_ref().unwrap_or(&Json::Null));
                    done.insert(row.path.clone());
                }
                StepStatus::Retrying => {
                    prior_attempts.insert(row.path.clone(), row.attempts);
                }
            }
        }
        let mut pending: Vec<StepRow> = Vec::new();

        for (i, step) in flow.steps.iter().enumerate() {
            if done.contains(&step.id) {
                continue;
            }
            let last = i + 1 == flow.steps.len();
            let ctx = outputs.val();
            let started = self.clock.now_ms();
            let attempt = prior_attempts.get(&step.id).copied().unwrap_or(0) + 1;

            let next = match self.guard(step, &ctx).await {
                Ok(true) => {
                    let result = self.attempt(step, &run.id, ctx).await;
                    self.outcome(
                        step,
                        &run.id,
                        attempt,
                        started,
                        result,
                        &mut outputs,
                        &mut pending,
                        last,
                    )
                    .await?
                }
                Ok(false) => {
                    let row = row(
                        step,
                        StepStatus::Skipped,
                        0,
                        started,
                        self.clock.now_ms(),
                        None,
                        None,
                    );
                    self.report(&run.id, step, &row, None);
                    outputs.set_step(&step.id, &Json::Null);
                    pending.push(row);
                    if last {
                        Next::Stop(RunUpdate::Finish {
                            status: RunStatus::Succeeded,
                            error: None,
                        })
                    } else {
                        Next::Go
                    }
                }
                Err(e) => {
                    let e =
                        StepError::new(ErrorKind::Expression, format!("in `if`: {}", e.message));
                    self.outcome(
                        step,
                        &run.id,
                        attempt,
                        started,
                        Err(e),
                        &mut outputs,
                        &mut pending,
                        last,
                    )
                    .await?
                }
            };
            if let Next::Stop(update) = next {
                return self
                    .commit(&run.id, std::mem::take(&mut pending), update)
                    .await;
            }
        }
        // Every step was already done (a resumed run whose final write was lost).
        self.commit(
            &run.id,
            pending,
            RunUpdate::Finish {
                status: RunStatus::Succeeded,
                error: None,
            },
        )
        .await
    }

    /// The step's `if:`; true when absent.
    async fn guard(
        &self,
        step: &CompiledStep,
        ctx: &jaq_json::Val,
    ) -> Result<bool, crate::expr::EvalError> {
        let Some(when) = &step.when else {
            return Ok(true);
        };
        let v = crate::expr::eval_value(when, ctx, self.config.expr_timeout).await?;
        Ok(crate::expr::truthy(&v))
    }

    async fn attempt(
        &self,
        step: &CompiledStep,
        run_id: &str,
        ctx: jaq_json::Val,
    ) -> Result<StepOutput, StepError> {
        let cx = StepCx {
            ctx,
            run_id: run_id.to_owned(),
            step_path: step.id.clone(),
            idempotency_key: format!("{run_id}:{}", step.id),
            http: self.http.clone(),
            guarded_http: self.guarded_http.clone(),
            net_policy: self.net_policy.clone(),
            expr_timeout: self.config.expr_timeout,
            secrets: self.secrets.clone(),
        };
        match tokio::time::timeout(step.timeout, step.step.execute(&cx)).await {
            Ok(r) => r,
            Err(_) => Err(StepError::new(
                ErrorKind::Timeout,
                format!(
                    "step did not finish within {}",
                    humantime::format_duration(step.timeout)
                ),
            )),
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn outcome(
        &self,
        step: &CompiledStep,
        run_id: &str,
        attempt: u32,
        started: i64,
        result: Result<StepOutput, StepError>,
        outputs: &mut crate::expr::RunContext,
        pending: &mut Vec<StepRow>,
        last: bool,
    ) -> Result<Next, crate::store::StoreError> {
        let finished = self.clock.now_ms();
        match result {
            Ok(out) => {
                let row = row(
                    step,
                    StepStatus::Succeeded,
                    attempt,
                    started,
                    finished,
                    None,
                    None,
                )
                .with_request(out.request);
                outputs.set_step(&step.id, &out.value);
                let row = StepRow {
                    output: Some(out.value),
                    ..row
                };
                self.report(run_id, step, &row, None);
                pending.push(row);
                self.advance(run_id, step, pending, out.stop || last).await
            }
            Err(e) => {
                let retryable = e.is_retryable(&step.retry);
                let error = e.to_json();
                let mut r = row(
                    step,
                    StepStatus::Failed,
                    attempt,
                    started,
                    finished,
                    None,
                    Some(error.clone()),
                );
                r.request = e.request.clone();
                r.response = e.response.clone();
                if retryable && attempt < step.retry.attempts {
                    let delay = step.retry.delay(attempt, e.retry_after);
                    r.status = StepStatus::Retrying;
                    self.report(run_id, step, &r, Some(delay.as_millis() as i64));
                    pending.push(r);
                    let next_at_ms = finished + delay.as_millis() as i64;
                    self.note_due(next_at_ms);
                    return Ok(Next::Stop(RunUpdate::Retry { next_at_ms }));
                }
                self.report(run_id, step, &r, None);
                match step.on_error {
                    OnError::Continue => {
                        let value = json!({ "error": error });
                        r.output = Some(value.clone());
                        outputs.set_step(&step.id, &value);
                        pending.push(r);
                        self.advance(run_id, step, pending, last).await
                    }
                    OnError::Fail => {
                        pending.push(r);
                        // Out of attempts on a failure that could pass later: dead. A failure
                        // no retry can fix (4xx, bad expression): failed. Both are dead letters.
                        let status = if retryable {
                            RunStatus::Dead
                        } else {
                            RunStatus::Failed
                        };
                        let mut error = error;
                        error["step"] = Json::String(step.id.clone());
                        Ok(Next::Stop(RunUpdate::Finish {
                            status,
                            error: Some(error),
                        }))
                    }
                }
            }
        }
    }

    /// After a step's outcome is recorded in `pending`: end the run (as succeeded) when
    /// `done`, else go on — committing first when the step had effects outside Ferry.
    async fn advance(
        &self,
        run_id: &str,
        step: &CompiledStep,
        pending: &mut Vec<StepRow>,
        done: bool,
    ) -> Result<Next, crate::store::StoreError> {
        if done {
            return Ok(Next::Stop(RunUpdate::Finish {
                status: RunStatus::Succeeded,
                error: None,
            }));
        }
        if step.step.calls_out() {
            self.commit(run_id, std::mem::take(pending), RunUpdate::Continue)
                .await?;
        }
        Ok(Next::Go)
    }

    /// Ends a run as failed without a step result (the flow is gone, or execution panicked).
    pub(crate) async fn fail_run(&self, run_id: &str, error: Json) {
        self.write(
            run_id,
            Vec::new(),
            RunUpdate::Finish {
                status: RunStatus::Failed,
                error: Some(error),
            },
        )
        .await;
    }

    async fn commit(
        &self,
        run_id: &str,
        rows: Vec<StepRow>,
        update: RunUpdate,
    ) -> Result<(), crate::store::StoreError> {
        // Secrets never reach the store: an upstream that echoes a token, a header value in
        // an error message, a secret mapped into an output are masked here.
        let mut rows = rows;
        let redaction = self
            .redacting
            .lock()
            .expect("redacting")
            .get(run_id)
            .cloned();
        if let Some(r) = &redaction {
            rows.iter_mut().for_each(|row| r.row(row));
        }
        rows.iter_mut().for_each(|r| self.scrub(r));
        let succeeded = matches!(
            update,
            RunUpdate::Finish {
                status: RunStatus::Succeeded,
                ..
            }
        );
        let mut update = update;
        if let RunUpdate::Finish { error: Some(e), .. } = &mut update {
            if let Some(r) = &redaction {
                crate::redact::scrub_values(&r.values, e);
            }
            self.secrets.scrub_json(e);
        }
        let write = StepWrite {
            run_id: run_id.to_owned(),
            owner: self.owner.clone(),
            rows,
            update,
            now_ms: self.clock.now_ms(),
        };
        self.store.write_step(write).await?;
        // The event was needed until now (a retry or a crash re-reads it); once the run has
        // succeeded, its redacted fields go from the store as well.
        if succeeded && let Some(r) = redaction {
            self.store
                .replace_event(run_id.to_owned(), r.event.clone())
                .await?;
        }
        Ok(())
    }

    async fn write(&self, run_id: &str, rows: Vec<StepRow>, update: RunUpdate) {
        if let Err(e) = self.commit(run_id, rows, update).await {
            tracing::warn!(run = %run_id, error = %e, "could not store the run's result");
        }
    }

    fn report(&self, run_id: &str, step: &CompiledStep, row: &StepRow, retry_in_ms: Option<i64>) {
        if let Some(o) = &self.observer {
            let mut row = row.clone();
            self.scrub(&mut row);
            o.step(&StepReport {
                run_id: run_id.to_owned(),
                step: step.id.clone(),
                kind: step.kind,
                row,
                retry_in_ms,
            });
        }
    }

    fn scrub(&self, row: &mut StepRow) {
        self.secrets.scrub_all(row.payloads_mut());
    }
}

fn row(
    step: &CompiledStep,
    status: StepStatus,
    attempts: u32,
    started: i64,
    finished: i64,
    output: Option<Json>,
    error: Option<Json>,
) -> StepRow {
    StepRow {
        path: step.id.clone(),
        seq: step.seq,
        status,
        attempts,
        started_at_ms: started,
        finished_at_ms: finished,
        output,
        error,
        request: None,
        response: None,
    }
}

trait WithRequest {
    fn with_request(self, request: Option<Json>) -> Self;
}

impl WithRequest for StepRow {
    fn with_request(mut self, request: Option<Json>) -> Self {
        self.request = request;
        self
    }
}
