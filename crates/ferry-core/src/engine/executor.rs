//! Executing one claimed run: resume after the last completed step, persist each outcome,
//! schedule retries as queued wake-ups, finish the run.
//!
//! Steps that only compute (`map`, `filter`, `log`) are deterministic, so their results are
//! written together with the next step that calls out, or with the run's end: re-running
//! them after a crash yields the same values and no effect outside. A step that calls out
//! always has its outcome committed before the next step starts.

use std::sync::Arc;

use std::collections::{HashMap, HashSet};

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

/// A run's progress while it executes: its expression context, the steps already done, and
/// the results of steps that only compute, waiting to be committed with the next write.
pub(crate) struct RunState {
    outputs: crate::expr::RunContext,
    done: HashSet<String>,
    prior_attempts: HashMap<String, u32>,
    pending: Vec<StepRow>,
}

impl RunState {
    /// A claimed run: its event as stored, and the steps it has done already (a resumed or
    /// replayed run).
    fn resume(run: &ClaimedRun) -> RunState {
        let run_info = json!({ "id": run.id, "flow": run.flow, "attempt": run.attempt });
        let mut state = RunState::new(crate::expr::RunContext::from_text(&run.event, &run_info));
        for row in &run.steps {
            match row.status {
                StepStatus::Succeeded | StepStatus::Skipped | StepStatus::Failed => {
                    let output = row.output.as_ref().unwrap_or(&Json::Null);
                    state.outputs.set_step(&row.path, output);
                    state.done.insert(row.path.clone());
                }
                StepStatus::Retrying | StepStatus::Waiting => {
                    state.prior_attempts.insert(row.path.clone(), row.attempts);
                }
            }
        }
        state
    }

    /// A run with no step done yet.
    fn new(outputs: crate::expr::RunContext) -> RunState {
        RunState {
            outputs,
            done: HashSet::new(),
            prior_attempts: HashMap::new(),
            pending: Vec::new(),
        }
    }
}

/// What [`Engine::prepare`] did with a run being ingested: the flow's leading steps that only
/// compute have run; their records go into the same write as the event.
pub struct Prepared {
    state: RunState,
    redaction: Option<Arc<RunRedaction>>,
    /// The records to store with the event, masked like any other write.
    pub rows: Vec<StepRow>,
    /// The run's state once they ran: `Continue` when steps that call out remain.
    pub update: RunUpdate,
    /// The event to store instead of the one received: its `redact:` paths masked, when the
    /// run finished at once.
    pub redacted_event: Option<String>,
}

impl Prepared {
    /// True when the run ended during ingest (every step only computed, or one failed).
    pub fn finished(&self) -> bool {
        !matches!(self.update, RunUpdate::Continue)
    }
}

/// Which steps a pass over the flow runs.
#[derive(Clone, Copy, PartialEq)]
enum Until {
    /// Every step, to the run's end (or a retry wait).
    End,
    /// Only leading steps that compute in bounded time (`Step::inline`); stop before the first
    /// other one.
    FirstCall,
}

impl Engine {
    pub(crate) async fn execute(&self, run: ClaimedRun) {
        let Some(flow) = self.project.flow(&run.flow).cloned() else {
            let error = json!({"kind": "config", "message": format!("flow `{}` is not loaded on this node", run.flow)});
            self.fail_run(&run.id, error).await;
            return;
        };
        let state = RunState::resume(&run);
        let redaction = RunRedaction::new(&flow, &run.event).map(Arc::new);
        self.execute_state(&flow, &run.id, state, redaction).await;
    }

    /// Runs the leading steps of `flow` that only compute (bounded `map` and `filter`) for an
    /// event being ingested, so that their results are stored in the same write as the event:
    /// a flow made only of such steps is done in one write, and one that calls out starts at
    /// its first call. Nothing here has an effect outside Ferry, so a failed ingest loses
    /// nothing. `event_text` is the event as it will be stored.
    pub async fn prepare(
        &self,
        flow: &Arc<Flow>,
        run_id: &str,
        event: jaq_json::Val,
        event_text: &str,
    ) -> Prepared {
        let run_info = json!({ "id": run_id, "flow": flow.id, "attempt": 1 });
        let mut state = RunState::new(crate::expr::RunContext::new(event, &run_info));
        let redaction = RunRedaction::new(flow, event_text).map(Arc::new);
        let update = match self
            .run_steps(flow, run_id, &mut state, Until::FirstCall)
            .await
        {
            Ok(Some(update)) => update,
            // Only steps that call out commit during a pass; none ran.
            Ok(None) | Err(_) => RunUpdate::Continue,
        };
        let mut rows = std::mem::take(&mut state.pending);
        let mut update = update;
        self.mask(redaction.as_deref(), &mut rows, &mut update);
        let succeeded = update.succeeded();
        let redacted_event = match &redaction {
            Some(r) if succeeded => Some(r.event.clone()),
            _ => None,
        };
        Prepared {
            state,
            redaction,
            rows,
            update,
            redacted_event,
        }
    }

    /// Goes on with a run that [`Engine::prepare`] started and the store took (already
    /// leased to this node).
    pub(crate) async fn execute_prepared(&self, flow: &Arc<Flow>, run_id: &str, p: Prepared) {
        self.execute_state(flow, run_id, p.state, p.redaction).await;
    }

    async fn execute_state(
        &self,
        flow: &Arc<Flow>,
        run_id: &str,
        state: RunState,
        redaction: Option<Arc<RunRedaction>>,
    ) {
        let _redacting = redaction.map(|r| {
            self.redacting
                .lock()
                .expect("redacting")
                .insert(run_id.to_owned(), r);
            Redacting {
                engine: self,
                run_id: run_id.to_owned(),
            }
        });
        match self.execute_flow(flow, run_id, state).await {
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
                self.write(run_id, Vec::new(), RunUpdate::Retry { next_at_ms })
                    .await;
                self.note_due(next_at_ms);
            }
        }
    }

    async fn execute_flow(
        &self,
        flow: &Arc<Flow>,
        run_id: &str,
        mut state: RunState,
    ) -> Result<(), crate::store::StoreError> {
        let update = self
            .run_steps(flow, run_id, &mut state, Until::End)
            .await?
            // Every step was already done (a resumed run whose final write was lost).
            .unwrap_or(RunUpdate::Finish {
                status: RunStatus::Succeeded,
                error: None,
            });
        self.commit(run_id, std::mem::take(&mut state.pending), update)
            .await
    }

    /// Runs the steps not done yet, in order, committing before each step that calls out
    /// starts. Returns the run's next state, to be committed with `state.pending`; `None` when
    /// no step ended the run (every step done, or `FirstCall` reached a step that calls out).
    async fn run_steps(
        &self,
        flow: &Arc<Flow>,
        run_id: &str,
        state: &mut RunState,
        until: Until,
    ) -> Result<Option<RunUpdate>, crate::store::StoreError> {
        for (i, step) in flow.steps.iter().enumerate() {
            if state.done.contains(&step.id) {
                continue;
            }
            if until == Until::FirstCall
                && !(step.step.inline() && step.when.as_ref().is_none_or(|w| w.is_bounded()))
            {
                return Ok(None);
            }
            let last = i + 1 == flow.steps.len();
            let ctx = state.outputs.val();
            let started = self.clock.now_ms();
            let attempt = state.prior_attempts.get(&step.id).copied().unwrap_or(0) + 1;

            let next = match self.guard(step, &ctx).await {
                Ok(true) => {
                    let result = self.attempt(step, run_id, ctx).await;
                    self.outcome(step, run_id, attempt, started, result, state, last)
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
                    self.report(run_id, step, &row, None);
                    state.outputs.set_step(&step.id, &Json::Null);
                    state.pending.push(row);
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
                    self.outcome(step, run_id, attempt, started, Err(e), state, last)
                        .await?
                }
            };
            state.done.insert(step.id.clone());
            if let Next::Stop(update) = next {
                return Ok(Some(update));
            }
        }
        Ok(None)
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
        state: &mut RunState,
        last: bool,
    ) -> Result<Next, crate::store::StoreError> {
        let RunState {
            outputs, pending, ..
        } = state;
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

    /// Masks what a write stores: `redact:` rules, and secrets (an upstream that echoes a
    /// token, a header value in an error message, a secret mapped into an output).
    fn mask(&self, redaction: Option<&RunRedaction>, rows: &mut [StepRow], update: &mut RunUpdate) {
        if let Some(r) = redaction {
            rows.iter_mut().for_each(|row| r.row(row));
        }
        rows.iter_mut().for_each(|r| self.scrub(r));
        if let RunUpdate::Finish { error: Some(e), .. } = update {
            if let Some(r) = redaction {
                crate::redact::scrub_values(&r.values, e);
            }
            self.secrets.scrub_json(e);
        }
    }

    async fn commit(
        &self,
        run_id: &str,
        rows: Vec<StepRow>,
        update: RunUpdate,
    ) -> Result<(), crate::store::StoreError> {
        // Secrets never reach the store.
        let (mut rows, mut update) = (rows, update);
        let redaction = self
            .redacting
            .lock()
            .expect("redacting")
            .get(run_id)
            .cloned();
        self.mask(redaction.as_deref(), &mut rows, &mut update);
        let succeeded = update.succeeded();
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
