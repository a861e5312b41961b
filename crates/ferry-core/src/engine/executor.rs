//! Executing one claimed run: resume after the last completed step, persist each outcome,
//! schedule retries as queued wake-ups, finish the run.
//!
//! Steps that only compute (`map`, `filter`, `log`) are deterministic, so their results are
//! written together with the next step that calls out, or with the run's end: re-running
//! them after a crash yields the same values and no effect outside. A step that calls out
//! always has its outcome committed before the next step starts.

use std::sync::Arc;

use std::collections::HashMap;

use serde_json::{Value as Json, json};

use super::Engine;
use crate::flow::control::{
    Arm, Call, Control, Delay, Foreach, Items, Join, MAX_CALL_DEPTH, MAX_RESPOND_BODY, Parallel,
    Respond, RespondStatus, SIGNAL_KEEP, Signal, Switch, Wait,
};
use crate::flow::model::OnError;
use crate::flow::{Action, CompiledStep, Flow};
use crate::step::{ErrorKind, Outcome, StepCx, StepError, StepOutput};
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
            .walk()
            .filter_map(|s| s.step())
            .any(|s| s.connection().is_some_and(|c| !c.redact.is_empty()));
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
        let id = StepPath::step_id(&row.path);
        let conn = self
            .flow
            .find(id)
            .and_then(|s| s.step())
            .and_then(|s| s.connection());
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
        for (rule_id, rule) in &self.flow.redact_steps {
            if *rule_id == StepPath::step_id(&row.path) {
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

pub trait Observer: Send + Sync {
    fn step(&self, report: &StepReport);
}

/// A run's id, as the engine passes it around.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunId(String);

impl RunId {
    pub fn new(id: impl Into<String>) -> RunId {
        RunId(id.into())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for RunId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A step's place in a run: its id at the top of the flow (`contact`), else the path of the
/// step it is nested in, the arm, and its id (`route/0/alert`). Step rows are keyed by it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepPath(String);

impl StepPath {
    /// The path of step `id` in the block at `prefix` (`None`: the top of the flow).
    fn of(prefix: Option<&str>, id: &str) -> StepPath {
        match prefix {
            None => StepPath(id.to_owned()),
            Some(p) => StepPath(format!("{p}/{id}")),
        }
    }

    /// Where the steps of an arm (`0`, `default`) of this step are.
    fn arm(&self, segment: &str) -> String {
        format!("{}/{segment}", self.0)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id of the step (the last segment).
    pub fn step_id(path: &str) -> &str {
        path.rsplit('/').next().unwrap_or(path)
    }
}

/// What a stored row says about its path when a run resumes.
enum Prior {
    /// Finished (succeeded, skipped, failed and gone on); a `switch` also says which arm.
    /// A nested step keeps its output, which becomes `.steps.ID` when the walk reaches it
    /// (inside a `foreach` item, only that item's context holds it).
    Done {
        arm: Option<Arm>,
        output: Option<Json>,
        /// It failed and the run went on (`on_error: continue`, or fallback steps).
        failed: bool,
    },
    /// The last attempt failed; this many were made.
    Retrying(u32),
    /// A `delay` not over yet.
    Waiting(StepRow),
    /// Failed for good with `on_error: fail`, inside a loop item or a branch that ended
    /// failed while the run went on: that item or branch fails again without running.
    Failed(Json),
}

/// One run while it executes: its id, its expression context, what its stored rows say,
/// the rows waiting to be committed with the next write, and what its writes mask.
pub(crate) struct RunCx {
    run_id: RunId,
    outputs: crate::expr::RunContext,
    prior: HashMap<String, Prior>,
    pending: Vec<StepRow>,
    redaction: Option<Arc<RunRedaction>>,
    /// `pending` holds a decision (the arm a `switch` took): it is stored before any step
    /// that calls out, so that a resume takes the same arm.
    decided: bool,
    /// Waits whose step ended (signalled or timed out), ended in the store with the next
    /// write.
    end_waits: Vec<String>,
    /// The flow's `output:` once the run succeeded, stored with the final write.
    output: Option<Json>,
}

impl RunCx {
    /// A claimed run: its event as stored, and the steps it has done already (a resumed or
    /// replayed run).
    fn resume(run: &ClaimedRun, redaction: Option<Arc<RunRedaction>>) -> RunCx {
        let run_info = json!({ "id": run.id, "flow": run.flow, "attempt": run.attempt });
        let outputs = crate::expr::RunContext::from_text(&run.event, &run_info);
        let mut cx = RunCx::new(RunId::new(run.id.clone()), outputs, redaction);
        for row in &run.steps {
            let prior = match row.status {
                StepStatus::Failed if row.output.is_none() => {
                    Prior::Failed(row.error.clone().unwrap_or(Json::Null))
                }
                StepStatus::Succeeded | StepStatus::Skipped | StepStatus::Failed => {
                    let output = row.output.as_ref().unwrap_or(&Json::Null);
                    let nested = row.path.contains('/');
                    if !nested {
                        cx.outputs.set_step(&row.path, output);
                    }
                    let arm = match output {
                        Json::Object(o) if o.contains_key("case") => Arm::from_json(output),
                        _ => None,
                    };
                    Prior::Done {
                        arm,
                        output: nested.then(|| output.clone()),
                        failed: row.status == StepStatus::Failed,
                    }
                }
                StepStatus::Retrying => Prior::Retrying(row.attempts),
                StepStatus::Waiting => Prior::Waiting(row.clone()),
            };
            cx.prior.insert(row.path.clone(), prior);
        }
        cx
    }

    /// A run with no step done yet.
    fn new(
        run_id: RunId,
        outputs: crate::expr::RunContext,
        redaction: Option<Arc<RunRedaction>>,
    ) -> RunCx {
        RunCx {
            run_id,
            outputs,
            prior: HashMap::new(),
            pending: Vec::new(),
            redaction,
            decided: false,
            end_waits: Vec::new(),
            output: None,
        }
    }

    fn attempts_before(&self, path: &str) -> u32 {
        match self.prior.get(path) {
            Some(Prior::Retrying(n)) => *n,
            _ => 0,
        }
    }

    /// Records a finished step: its output is `.steps.ID` from now on.
    fn done(&mut self, step: &CompiledStep, path: StepPath, output: &Json, arm: Option<Arm>) {
        self.outputs.set_step(&step.id, output);
        self.prior.insert(
            path.0,
            Prior::Done {
                arm,
                output: None,
                failed: false,
            },
        );
    }
}

/// What [`Engine::prepare`] did with a run being ingested: the flow's leading steps that only
/// compute have run; their records go into the same write as the event.
pub struct Prepared {
    cx: RunCx,
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

/// How one `foreach` item ended, with its rows not yet committed.
enum ItemEnd {
    /// Its steps are done; its result, and (for a branch) its steps' results by id.
    Done(Json, Vec<StepRow>, Vec<(String, Json)>),
    /// A retry or a delay inside it is due then.
    Waiting(i64, Vec<StepRow>),
    /// A step failed for good: what the run would have become, and the error.
    Failed(RunStatus, Json, Vec<StepRow>),
    /// Not started: the loop had already failed.
    NotRun,
}

/// How a pass over a block of steps ended.
enum Pass {
    /// Every step of the block is done.
    Done,
    /// `Until::FirstCall` reached a step that is not inline.
    Paused,
    /// The run stops here: it is queued again (a retry, a delay) or finished.
    Stop(Outcome),
}

fn update_of(outcome: Outcome) -> RunUpdate {
    match outcome {
        Outcome::Continue => RunUpdate::Continue,
        Outcome::RetryAt { at_ms } | Outcome::WaitUntil { at_ms } => {
            RunUpdate::Retry { next_at_ms: at_ms }
        }
        Outcome::Finish { status, error } => RunUpdate::Finish { status, error },
    }
}

impl Engine {
    pub(crate) async fn execute(&self, run: ClaimedRun) {
        let Some(flow) = self.project.flow(&run.flow).cloned() else {
            let error = json!({"kind": "config", "message": format!("flow `{}` is not loaded on this node", run.flow)});
            self.fail_run(&run.id, error).await;
            return;
        };
        let redaction = RunRedaction::new(&flow, &run.event).map(Arc::new);
        let cx = RunCx::resume(&run, redaction);
        self.execute_cx(&flow, cx).await;
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
        let redaction = RunRedaction::new(flow, event_text).map(Arc::new);
        let outputs = crate::expr::RunContext::new(event, &run_info);
        let mut cx = RunCx::new(RunId::new(run_id), outputs, redaction);
        let update = match self
            .run_block(&mut cx, &flow.steps, None, true, Until::FirstCall)
            .await
        {
            Ok(Pass::Stop(outcome)) => update_of(outcome),
            // Only steps that call out commit during a pass; none ran.
            Ok(Pass::Done | Pass::Paused) | Err(_) => RunUpdate::Continue,
        };
        let mut rows = std::mem::take(&mut cx.pending);
        cx.decided = false;
        let mut update = update;
        self.mask(cx.redaction.as_deref(), &mut rows, &mut update);
        let succeeded = update.succeeded();
        let redacted_event = match &cx.redaction {
            Some(r) if succeeded => Some(r.event.clone()),
            _ => None,
        };
        Prepared {
            cx,
            rows,
            update,
            redacted_event,
        }
    }

    /// Goes on with a run that [`Engine::prepare`] started and the store took (already
    /// leased to this node).
    pub(crate) async fn execute_prepared(&self, flow: &Arc<Flow>, p: Prepared) {
        self.execute_cx(flow, p.cx).await;
    }

    async fn execute_cx(&self, flow: &Arc<Flow>, mut cx: RunCx) {
        match self.execute_flow(flow, &mut cx).await {
            Ok(()) => {}
            // Another worker holds the run now: its results win, nothing to undo.
            Err(crate::store::StoreError::Conflict(e)) => {
                tracing::warn!(run = %cx.run_id, error = %e, "run taken over by another worker");
            }
            Err(e) => {
                // The store failed: hand the run back to the queue (a little later) rather
                // than keep a lease that lease renewal would extend forever.
                tracing::error!(run = %cx.run_id, error = %e, "run stopped: its result could not be stored; it goes back to the queue");
                let next_at_ms = self.clock.now_ms() + 5_000;
                self.write(
                    cx.run_id.as_str(),
                    Vec::new(),
                    RunUpdate::Retry { next_at_ms },
                )
                .await;
                self.note_due(next_at_ms);
            }
        }
    }

    async fn execute_flow(
        &self,
        flow: &Arc<Flow>,
        cx: &mut RunCx,
    ) -> Result<(), crate::store::StoreError> {
        let outcome = match self
            .run_block(cx, &flow.steps, None, true, Until::End)
            .await?
        {
            Pass::Stop(outcome) => outcome,
            // Every step was already done (a resumed run whose final write was lost).
            Pass::Done | Pass::Paused => Outcome::succeed(),
        };
        let outcome = match (&outcome, &flow.output) {
            (
                Outcome::Finish {
                    status: RunStatus::Succeeded,
                    ..
                },
                Some(t),
            ) => match t.render(&cx.outputs.val()) {
                Ok(v) => {
                    cx.output = Some(v);
                    outcome
                }
                Err(e) => Outcome::Finish {
                    status: RunStatus::Failed,
                    error: Some(
                        json!({"kind": "expression", "message": format!("in the flow's `output`: {}", e.message)}),
                    ),
                },
            },
            _ => outcome,
        };
        let rows = std::mem::take(&mut cx.pending);
        let update = update_of(outcome);
        let ended = match &update {
            RunUpdate::Finish { status, error } => Some((*status, error.clone())),
            _ => None,
        };
        self.commit(cx, rows, update).await?;
        // A caller still waiting for a `respond` that never came is told how the run ended.
        if let Some((status, mut error)) = ended {
            if let Some(e) = &mut error {
                self.secrets.scrub_json(e);
            }
            self.reply(cx.run_id.as_str(), super::Reply::Ended { status, error });
        }
        Ok(())
    }

    /// Runs the steps of `block` (at `prefix`: `None` for the flow's own) not done yet, in
    /// order, committing before each step that calls out starts. `tail`: the block ends the
    /// flow, so its last step's outcome is the run's end.
    async fn run_block(
        &self,
        cx: &mut RunCx,
        block: &[CompiledStep],
        prefix: Option<&str>,
        tail: bool,
        until: Until,
    ) -> Result<Pass, crate::store::StoreError> {
        for (i, step) in block.iter().enumerate() {
            let path = StepPath::of(prefix, &step.id);
            let last = tail && i + 1 == block.len();
            let next = match cx.prior.get(path.as_str()) {
                Some(Prior::Done {
                    arm,
                    output,
                    failed,
                }) => {
                    let (arm, failed) = (*arm, *failed);
                    if let Some(output) = output {
                        let output = output.clone();
                        cx.outputs.set_step(&step.id, &output);
                    }
                    let next = match &step.action {
                        // Resume inside the arm it took.
                        Action::Control(Control::Switch(sw)) => {
                            match arm.filter(|a| !matches!(a, Arm::Case(i) if *i >= sw.cases.len()))
                            {
                                Some(arm) => self.run_arm(cx, sw, arm, &path, last, until).await?,
                                None => Pass::Done,
                            }
                        }
                        Action::Control(Control::Parallel(par)) if !failed => {
                            adopt_branches(cx, par, &path);
                            Pass::Done
                        }
                        _ => Pass::Done,
                    };
                    // A failed step whose fallback steps had started: go on with them.
                    match (&step.fallback, failed, next) {
                        (Some(block), true, Pass::Done) => {
                            let error = cx
                                .outputs
                                .step(&step.id)
                                .map(|o| o["error"].clone())
                                .unwrap_or(Json::Null);
                            self.fallback(cx, block, &path, &error, last).await?
                        }
                        (_, _, next) => next,
                    }
                }
                Some(Prior::Failed(error)) => {
                    let mut error = error.clone();
                    error["step"] = Json::String(step.id.clone());
                    Pass::Stop(Outcome::Finish {
                        status: RunStatus::Failed,
                        error: Some(error),
                    })
                }
                _ => {
                    if until == Until::FirstCall
                        && !(step.inline() && step.when.as_ref().is_none_or(|w| w.is_bounded()))
                    {
                        return Ok(Pass::Paused);
                    }
                    self.run_step(cx, step, path, last, until).await?
                }
            };
            match next {
                Pass::Done => {}
                stop => return Ok(stop),
            }
        }
        Ok(Pass::Done)
    }

    /// One step not done yet: its `if:`, then its kind.
    async fn run_step(
        &self,
        cx: &mut RunCx,
        step: &CompiledStep,
        path: StepPath,
        last: bool,
        until: Until,
    ) -> Result<Pass, crate::store::StoreError> {
        let ctx = cx.outputs.val();
        let started = self.clock.now_ms();
        let attempt = cx.attempts_before(path.as_str()) + 1;
        match self.guard(step, &ctx).await {
            Ok(true) => {}
            Ok(false) => {
                let row = row(
                    &path,
                    step,
                    StepStatus::Skipped,
                    0,
                    started,
                    self.clock.now_ms(),
                    None,
                    None,
                );
                self.report(cx, step, &row, None);
                cx.done(step, path, &Json::Null, None);
                cx.pending.push(row);
                return Ok(if last {
                    Pass::Stop(Outcome::succeed())
                } else {
                    Pass::Done
                });
            }
            Err(e) => {
                let e = StepError::new(ErrorKind::Expression, format!("in `if`: {}", e.message));
                return self
                    .outcome(cx, step, path, attempt, started, Err(e), last)
                    .await;
            }
        }
        match &step.action {
            Action::Run(kind) => {
                if kind.calls_out() {
                    self.store_decision(cx).await?;
                }
                let result = self.attempt(cx, step, kind.as_ref(), &path, ctx).await;
                self.outcome(cx, step, path, attempt, started, result, last)
                    .await
            }
            Action::Control(Control::Switch(sw)) => {
                let arm = match self.choose(sw, &ctx).await {
                    Ok(arm) => arm,
                    Err(e) => {
                        return self
                            .outcome(cx, step, path, attempt, started, Err(e), last)
                            .await;
                    }
                };
                let output = arm.to_json();
                let row = StepRow {
                    output: Some(output.clone()),
                    ..row(
                        &path,
                        step,
                        StepStatus::Succeeded,
                        1,
                        started,
                        self.clock.now_ms(),
                        None,
                        None,
                    )
                };
                self.report(cx, step, &row, None);
                cx.pending.push(row);
                cx.decided = true;
                cx.done(step, path.clone(), &output, Some(arm));
                self.run_arm(cx, sw, arm, &path, last, until).await
            }
            Action::Control(Control::Foreach(each)) => {
                self.foreach(cx, step, path, each, started, ctx, last).await
            }
            Action::Control(Control::Parallel(par)) => {
                self.parallel(cx, step, path, par, started, last).await
            }
            Action::Control(Control::Wait(wait)) => {
                self.wait(cx, step, path, wait, started, ctx, last).await
            }
            Action::Control(Control::Signal(signal)) => {
                let result = self.send_signal(cx, signal, &path, &ctx).await;
                let pass = self
                    .outcome(cx, step, path, attempt, started, result, last)
                    .await?;
                // Its effect is out: stored before the next step starts.
                if matches!(pass, Pass::Done) {
                    let rows = std::mem::take(&mut cx.pending);
                    self.commit(cx, rows, RunUpdate::Continue).await?;
                    cx.decided = false;
                }
                Ok(pass)
            }
            Action::Control(Control::Delay(delay)) => {
                self.delay(cx, step, path, delay, started, ctx, last).await
            }
            Action::Control(Control::Call(call)) => {
                self.call(cx, step, path, call, started, ctx, last).await
            }
            Action::Control(Control::Respond(respond)) => {
                let result = self.respond(cx, respond, &ctx).await;
                self.outcome(cx, step, path, attempt, started, result, last)
                    .await
            }
        }
    }

    /// A `respond` step: renders the answer and hands it to the caller waiting on this node
    /// (none after a restart, or for a replay: `answered` is then false). The run goes on.
    async fn respond(
        &self,
        cx: &RunCx,
        r: &Respond,
        ctx: &jaq_json::Val,
    ) -> Result<StepOutput, StepError> {
        let expr = |what: &str, e: crate::expr::EvalError| {
            StepError::new(ErrorKind::Expression, format!("in `{what}`: {}", e.message))
        };
        let status = match &r.status {
            RespondStatus::Fixed(s) => *s,
            RespondStatus::Expr(t) => {
                let v = t.render(ctx).map_err(|e| expr("status", e))?;
                match v
                    .as_u64()
                    .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
                {
                    Some(s @ 100..=599) => s as u16,
                    _ => {
                        return Err(StepError::new(
                            ErrorKind::Expression,
                            format!(
                                "`status` must be an HTTP status from 100 to 599, got {}",
                                short(&v)
                            ),
                        ));
                    }
                }
            }
        };
        let mut headers: Vec<(String, String)> = Vec::new();
        for (name, t) in &r.headers {
            let v = t.render(ctx).map_err(|e| expr(name, e))?;
            let text = match v {
                Json::String(s) => s,
                other => other.to_string(),
            };
            if axum::http::HeaderValue::from_str(&text).is_err() {
                return Err(StepError::new(
                    ErrorKind::Expression,
                    format!("header `{name}`: the value is not a valid header value"),
                ));
            }
            headers.push((name.clone(), text));
        }
        let mut body = match &r.body {
            Some(t) => t.render(ctx).map_err(|e| expr("body", e))?,
            None => Json::Null,
        };
        if let Some(red) = &cx.redaction {
            crate::redact::scrub_values(&red.values, &mut body);
        }
        self.secrets.scrub_json(&mut body);
        let content_type = match headers.iter().find(|(n, _)| n == "content-type") {
            Some((_, v)) => v.clone(),
            None => {
                let t = "application/json".to_owned();
                headers.push(("content-type".into(), t.clone()));
                t
            }
        };
        let bytes = respond_body(&content_type, &body, r.body.is_some())?;
        if bytes.len() > MAX_RESPOND_BODY {
            return Err(StepError::new(
                ErrorKind::Config,
                format!(
                    "the response body is {} bytes, over the limit of {MAX_RESPOND_BODY}",
                    bytes.len()
                ),
            ));
        }
        let answered = self.reply(
            cx.run_id.as_str(),
            super::Reply::Respond {
                status,
                headers: headers.clone(),
                body: bytes,
            },
        );
        let headers: serde_json::Map<String, Json> = headers
            .into_iter()
            .map(|(k, v)| (k, Json::String(v)))
            .collect();
        Ok(StepOutput {
            value: json!({ "status": status, "headers": headers, "body": body, "answered": answered }),
            ..Default::default()
        })
    }

    /// The steps of the arm a `switch` took (boxed: arms nest).
    fn run_arm<'a>(
        &'a self,
        cx: &'a mut RunCx,
        sw: &'a Switch,
        arm: Arm,
        path: &'a StepPath,
        last: bool,
        until: Until,
    ) -> futures::future::BoxFuture<'a, Result<Pass, crate::store::StoreError>> {
        Box::pin(async move {
            let prefix = path.arm(&arm.segment());
            let steps = sw.arm(arm);
            match self
                .run_block(cx, steps, Some(&prefix), last, until)
                .await?
            {
                // An empty arm, or one whose steps were all done already, at the flow's end.
                Pass::Done if last => Ok(Pass::Stop(Outcome::succeed())),
                other => Ok(other),
            }
        })
    }

    /// A `foreach`: every item's steps, `concurrency` items at a time, each item's rows at
    /// `LOOP/INDEX/ID`. Items whose rows are all done (a resumed run) give their result
    /// again without running; the others run. The loop's own row is written once every item
    /// is done: its result is the items' results in input order.
    #[allow(clippy::too_many_arguments)]
    async fn foreach(
        &self,
        cx: &mut RunCx,
        step: &CompiledStep,
        path: StepPath,
        each: &Foreach,
        started: i64,
        ctx: jaq_json::Val,
        last: bool,
    ) -> Result<Pass, crate::store::StoreError> {
        use futures::StreamExt;

        let items = match self.foreach_items(each, &ctx).await {
            Ok(items) => items,
            Err(e) => return self.outcome(cx, step, path, 1, started, Err(e), last).await,
        };
        let total = items.len();
        // A decision waiting in `pending` is stored before any item calls out.
        self.store_decision(cx).await?;
        // What the stored rows say about each item, taken out of the run's map in one pass.
        let prefix = format!("{}/", path.as_str());
        let mut by_item: HashMap<usize, HashMap<String, Prior>> = HashMap::new();
        let keys: Vec<String> = cx
            .prior
            .keys()
            .filter(|k| k.starts_with(&prefix))
            .cloned()
            .collect();
        for key in keys {
            let index = key[prefix.len()..]
                .split('/')
                .next()
                .and_then(|i| i.parse().ok());
            if let (Some(index), Some(prior)) = (index, cx.prior.remove(&key)) {
                by_item.entry(index).or_default().insert(key, prior);
            }
        }

        let stop = std::sync::atomic::AtomicBool::new(false);
        let base = cx.outputs.clone();
        let (run_id, redaction) = (cx.run_id.clone(), cx.redaction.clone());
        let mut ends = futures::stream::iter(items.into_iter().enumerate())
            .map(|(index, item)| {
                let prior = by_item.remove(&index).unwrap_or_default();
                let run = (!stop.load(std::sync::atomic::Ordering::Relaxed)).then(|| {
                    let mut icx = RunCx::new(
                        run_id.clone(),
                        base.for_item(crate::expr::json_to_val(&item), index),
                        redaction.clone(),
                    );
                    icx.prior = prior;
                    icx
                });
                let item_path = format!("{}/{index}", path.as_str());
                async move {
                    match run {
                        Some(icx) => {
                            self.run_item(icx, &each.steps, each.output.as_ref(), item_path, false)
                                .await
                        }
                        None => Ok(ItemEnd::NotRun),
                    }
                }
            })
            .buffered(each.concurrency);

        let mut results: Vec<Json> = Vec::with_capacity(total);
        let mut failed: Vec<(usize, RunStatus, Json)> = Vec::new();
        let mut wake_at: Option<i64> = None;
        let mut rows: Vec<StepRow> = Vec::new();
        while let Some(end) = ends.next().await {
            let index = results.len();
            let (result, item_rows) = match end? {
                ItemEnd::Done(value, item_rows, _) => (value, item_rows),
                ItemEnd::Waiting(at, item_rows) => {
                    wake_at = Some(wake_at.map_or(at, |w: i64| w.min(at)));
                    (Json::Null, item_rows)
                }
                ItemEnd::Failed(status, error, item_rows) => {
                    failed.push((index, status, error.clone()));
                    if each.on_item_error.too_many(failed.len(), total) {
                        stop.store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                    (json!({ "error": error }), item_rows)
                }
                ItemEnd::NotRun => (Json::Null, Vec::new()),
            };
            results.push(result);
            rows.extend(item_rows);
            // Rows of steps that only compute ride along, a batch at a time: a long loop of
            // them holds no more than this in memory.
            if rows.len() >= 512 {
                let batch = std::mem::take(&mut rows);
                self.commit_as(
                    run_id.as_str(),
                    redaction.as_deref(),
                    batch,
                    RunUpdate::Continue,
                )
                .await?;
            }
        }
        drop(ends);
        cx.pending.extend(rows);

        if each.on_item_error.too_many(failed.len(), total) {
            let (index, _, error) = &failed[0];
            let dead = failed.iter().any(|(_, s, _)| *s == RunStatus::Dead);
            let message = format!(
                "item {index} failed: {}{}",
                error["message"].as_str().unwrap_or("(no message)"),
                match failed.len() {
                    1 => String::new(),
                    n => format!(" ({n} of {total} items failed)"),
                }
            );
            let mut e = StepError::new(ErrorKind::Items { retryable: dead }, message);
            e.response = Some(
                json!({ "failed_items": failed.iter().map(|(i, _, _)| *i).collect::<Vec<_>>() }),
            );
            return self.outcome(cx, step, path, 1, started, Err(e), last).await;
        }
        if let Some(at_ms) = wake_at {
            return Ok(Pass::Stop(Outcome::WaitUntil { at_ms }));
        }
        let out = StepOutput {
            value: Json::Array(results),
            ..Default::default()
        };
        self.outcome(cx, step, path, 1, started, Ok(out), last)
            .await
    }

    /// A `parallel`: its branches at the same time, each at `PAR/BRANCH/ID` in a `RunCx` of
    /// its own, joined as `join` says. With `any`, the first success wins and the other
    /// branches' futures are dropped: whatever they had not stored is gone, and what they
    /// had stored (a waiting delay) is never walked into again.
    async fn parallel(
        &self,
        cx: &mut RunCx,
        step: &CompiledStep,
        path: StepPath,
        par: &Parallel,
        started: i64,
        last: bool,
    ) -> Result<Pass, crate::store::StoreError> {
        use futures::StreamExt;

        self.store_decision(cx).await?;
        let mut running = futures::stream::FuturesUnordered::new();
        for (i, (name, steps)) in par.branches.iter().enumerate() {
            let prefix = path.arm(name);
            let mut icx = RunCx::new(cx.run_id.clone(), cx.outputs.clone(), cx.redaction.clone());
            let inner = format!("{prefix}/");
            let keys: Vec<String> = cx
                .prior
                .keys()
                .filter(|k| k.starts_with(&inner))
                .cloned()
                .collect();
            for k in keys {
                if let Some(p) = cx.prior.remove(&k) {
                    icx.prior.insert(k, p);
                }
            }
            let run = self.run_item(icx, steps, None, prefix, true);
            running.push(async move { (i, run.await) });
        }
        let mut ends: Vec<Option<ItemEnd>> = par.branches.iter().map(|_| None).collect();
        let mut winner = None;
        while let Some((i, end)) = running.next().await {
            let end = end?;
            let won = matches!(end, ItemEnd::Done(..)) && par.join == Join::Any;
            ends[i] = Some(end);
            if won {
                winner = Some(i);
                break;
            }
        }
        // With `any`, the branches still going are cancelled here.
        drop(running);

        let mut out = serde_json::Map::new();
        let mut failed: Vec<(String, RunStatus, Json)> = Vec::new();
        let mut wake_at: Option<i64> = None;
        for (i, end) in ends.into_iter().enumerate() {
            let name = &par.branches[i].0;
            match end {
                Some(ItemEnd::Done(value, rows, outputs)) => {
                    cx.pending.extend(rows);
                    for (id, v) in outputs {
                        cx.outputs.set_step(&id, &v);
                    }
                    if par.join == Join::Settled {
                        out.insert(
                            name.clone(),
                            json!({"status": "succeeded", "output": value}),
                        );
                    } else if par.join == Join::All || winner == Some(i) {
                        out.insert(name.clone(), value);
                    }
                }
                Some(ItemEnd::Waiting(at, rows)) => {
                    cx.pending.extend(rows);
                    wake_at = Some(wake_at.map_or(at, |w: i64| w.min(at)));
                }
                Some(ItemEnd::Failed(status, error, rows)) => {
                    cx.pending.extend(rows);
                    if par.join == Join::Settled {
                        out.insert(
                            name.clone(),
                            json!({"status": "failed", "error": error.clone()}),
                        );
                    }
                    failed.push((name.clone(), status, error));
                }
                Some(ItemEnd::NotRun) | None => {}
            }
        }
        if winner.is_none() {
            if let Some(at_ms) = wake_at {
                return Ok(Pass::Stop(Outcome::WaitUntil { at_ms }));
            }
            let give_up = match par.join {
                Join::All => !failed.is_empty(),
                Join::Settled => false,
                Join::Any => true,
            };
            if give_up {
                let dead = failed.iter().any(|(_, s, _)| *s == RunStatus::Dead);
                let list: Vec<String> = failed
                    .iter()
                    .map(|(n, _, e)| {
                        format!("`{n}`: {}", e["message"].as_str().unwrap_or("(no message)"))
                    })
                    .collect();
                let message = match par.join {
                    Join::Any => format!("every branch failed: {}", list.join("; ")),
                    _ => format!("branch {}", list.join("; branch ")),
                };
                let e = StepError::new(ErrorKind::Branches { retryable: dead }, message);
                return self.outcome(cx, step, path, 1, started, Err(e), last).await;
            }
        }
        let out = StepOutput {
            value: Json::Object(out),
            ..Default::default()
        };
        self.outcome(cx, step, path, 1, started, Ok(out), last)
            .await
    }

    /// The list a `foreach` goes over, checked against its limit.
    async fn foreach_items(
        &self,
        each: &Foreach,
        ctx: &jaq_json::Val,
    ) -> Result<Vec<Json>, StepError> {
        let value = match &each.items {
            Items::List(l) => Json::Array(l.clone()),
            Items::Expr(e) => crate::expr::eval_value(e, ctx, self.config.expr_timeout)
                .await
                .map_err(|e| {
                    StepError::new(ErrorKind::Expression, format!("in `items`: {}", e.message))
                })?,
        };
        let Json::Array(items) = value else {
            return Err(StepError::new(
                ErrorKind::Expression,
                format!("`items` must be a list, got {}", short(&value)),
            ));
        };
        if items.len() > each.max_items {
            return Err(StepError::new(
                ErrorKind::Expression,
                format!(
                    "`items` has {} entries, more than `max_items` ({}); raise `max_items` (at most {}) or split the list",
                    items.len(),
                    each.max_items,
                    crate::flow::control::MAX_ITEMS_LIMIT
                ),
            ));
        }
        Ok(items)
    }

    /// One item of a `foreach` (boxed: loops nest).
    fn run_item<'a>(
        &'a self,
        mut icx: RunCx,
        steps: &'a [CompiledStep],
        output: Option<&'a crate::expr::Template>,
        item_path: String,
        adopt: bool,
    ) -> futures::future::BoxFuture<'a, Result<ItemEnd, crate::store::StoreError>> {
        Box::pin(async move {
            let pass = self
                .run_block(&mut icx, steps, Some(&item_path), false, Until::End)
                .await?;
            let mut rows = std::mem::take(&mut icx.pending);
            if !icx.end_waits.is_empty() {
                // A wait inside it ended: stored now, with the item's rows so far.
                self.commit(&mut icx, std::mem::take(&mut rows), RunUpdate::Continue)
                    .await?;
            }
            Ok(match pass {
                // A `filter` inside an item ends the item, not the run.
                Pass::Done
                | Pass::Paused
                | Pass::Stop(Outcome::Finish {
                    status: RunStatus::Succeeded,
                    ..
                }) => {
                    let value = match output {
                        Some(t) => {
                            let ctx = icx.outputs.val();
                            match t.render(&ctx) {
                                Ok(v) => v,
                                Err(e) => {
                                    let error = json!({"kind": "expression", "message": format!("in `output`: {}", e.message)});
                                    return Ok(ItemEnd::Failed(RunStatus::Failed, error, rows));
                                }
                            }
                        }
                        None => steps
                            .last()
                            .and_then(|s| icx.outputs.step(&s.id))
                            .unwrap_or(Json::Null),
                    };
                    let outputs = if adopt {
                        steps
                            .iter()
                            .filter_map(|s| icx.outputs.step(&s.id).map(|v| (s.id.clone(), v)))
                            .collect()
                    } else {
                        Vec::new()
                    };
                    ItemEnd::Done(value, rows, outputs)
                }
                Pass::Stop(Outcome::RetryAt { at_ms } | Outcome::WaitUntil { at_ms }) => {
                    ItemEnd::Waiting(at_ms, rows)
                }
                Pass::Stop(Outcome::Finish { status, error }) => {
                    ItemEnd::Failed(status, error.unwrap_or(Json::Null), rows)
                }
                Pass::Stop(Outcome::Continue) => ItemEnd::Done(Json::Null, rows, Vec::new()),
            })
        })
    }

    /// The first case whose `when` is true, else the default arm.
    async fn choose(&self, sw: &Switch, ctx: &jaq_json::Val) -> Result<Arm, StepError> {
        for (i, case) in sw.cases.iter().enumerate() {
            let v = crate::expr::eval_value(&case.when, ctx, self.config.expr_timeout)
                .await
                .map_err(|e| {
                    StepError::new(
                        ErrorKind::Expression,
                        format!("in the `when` of case {i}: {}", e.message),
                    )
                })?;
            if crate::expr::truthy(&v) {
                return Ok(Arm::Case(i));
            }
        }
        Ok(Arm::Default)
    }

    /// A `delay`: the first time, a `waiting` row with the time it ends, and the run goes
    /// back to the queue until then; once that time has come, the row succeeds.
    #[allow(clippy::too_many_arguments)]
    async fn delay(
        &self,
        cx: &mut RunCx,
        step: &CompiledStep,
        path: StepPath,
        delay: &Delay,
        started: i64,
        ctx: jaq_json::Val,
        last: bool,
    ) -> Result<Pass, crate::store::StoreError> {
        let now = self.clock.now_ms();
        let (until_ms, started) = match cx.prior.get(path.as_str()) {
            Some(Prior::Waiting(row)) => {
                let until = row
                    .output
                    .as_ref()
                    .and_then(|o| o["until_ms"].as_i64())
                    .unwrap_or(now);
                (until, row.started_at_ms)
            }
            _ => match self.delay_until(delay, &ctx, now).await {
                Ok(until) => (until, started),
                Err(e) => return self.outcome(cx, step, path, 1, started, Err(e), last).await,
            },
        };
        let output = json!({ "until": crate::util::rfc3339(until_ms), "until_ms": until_ms });
        if until_ms > now {
            let row = StepRow {
                output: Some(output),
                ..row(
                    &path,
                    step,
                    StepStatus::Waiting,
                    0,
                    started,
                    now,
                    None,
                    None,
                )
            };
            self.report(cx, step, &row, Some(until_ms - now));
            cx.pending.push(row);
            cx.prior.insert(
                path.0,
                Prior::Waiting(StepRow {
                    path: String::new(),
                    ..cx.pending.last().cloned().expect("pushed")
                }),
            );
            self.note_due(until_ms);
            return Ok(Pass::Stop(Outcome::WaitUntil { at_ms: until_ms }));
        }
        let row = StepRow {
            output: Some(output.clone()),
            ..row(
                &path,
                step,
                StepStatus::Succeeded,
                0,
                started,
                now,
                None,
                None,
            )
        };
        self.report(cx, step, &row, None);
        cx.pending.push(row);
        cx.done(step, path, &output, None);
        Ok(if last {
            Pass::Stop(Outcome::succeed())
        } else {
            Pass::Done
        })
    }

    /// A `wait`: registers the wait (taking a signal that came within the lookback), else a
    /// `waiting` row and the run sleeps in the queue until the timeout; a signal makes it due
    /// at once. Woken, it takes the signal delivered to it, or times out, or sleeps again.
    #[allow(clippy::too_many_arguments)]
    async fn wait(
        &self,
        cx: &mut RunCx,
        step: &CompiledStep,
        path: StepPath,
        wait: &Wait,
        started: i64,
        ctx: jaq_json::Val,
        last: bool,
    ) -> Result<Pass, crate::store::StoreError> {
        let now = self.clock.now_ms();
        let (key, until_ms, started, data) = match cx.prior.get(path.as_str()) {
            Some(Prior::Waiting(row)) => {
                let out = row.output.clone().unwrap_or(Json::Null);
                let data = self
                    .store
                    .wait_signal(cx.run_id.as_str().to_owned(), path.as_str().to_owned())
                    .await?;
                let key = out["key"].as_str().unwrap_or_default().to_owned();
                (
                    key,
                    out["until_ms"].as_i64().unwrap_or(now),
                    row.started_at_ms,
                    data,
                )
            }
            _ => {
                let key = match signal_key(&wait.key, &ctx) {
                    Ok(k) => k,
                    Err(e) => return self.outcome(cx, step, path, 1, started, Err(e), last).await,
                };
                let until_ms = now + wait.timeout.as_millis() as i64;
                // Rows that only computed go first: the wait's registration is an effect
                // (it may take a signal), and must not be repeated on other inputs.
                if !cx.pending.is_empty() {
                    let rows = std::mem::take(&mut cx.pending);
                    self.commit(cx, rows, RunUpdate::Continue).await?;
                    cx.decided = false;
                }
                let data = self
                    .store
                    .register_wait(crate::store::NewWait {
                        run_id: cx.run_id.as_str().to_owned(),
                        path: path.as_str().to_owned(),
                        signal: wait.signal.clone(),
                        key: key.clone(),
                        since_ms: now - wait.lookback.as_millis() as i64,
                        until_ms,
                        now_ms: now,
                    })
                    .await?;
                (key, until_ms, started, data)
            }
        };
        if let Some(data) = data {
            cx.end_waits.push(path.as_str().to_owned());
            let out = StepOutput {
                value: data,
                ..Default::default()
            };
            // Stored at once: the signal is taken.
            return self
                .outcome_stored(cx, step, path, started, Ok(out), last)
                .await;
        }
        if now >= until_ms {
            cx.end_waits.push(path.as_str().to_owned());
            let e = StepError::new(
                ErrorKind::Timeout,
                format!(
                    "no signal `{}` with key `{key}` arrived within {}",
                    wait.signal,
                    humantime::format_duration(wait.timeout)
                ),
            );
            return self.outcome(cx, step, path, 1, started, Err(e), last).await;
        }
        let output = json!({
            "signal": wait.signal,
            "key": key,
            "until": crate::util::rfc3339(until_ms),
            "until_ms": until_ms,
        });
        Ok(self.sleep(cx, step, path, started, now, until_ms, output))
    }

    /// A step that sleeps in the queue until `until_ms` (a `wait`, a `call`): its `waiting`
    /// row records `output` (what a resume needs), and the run is due again then.
    #[allow(clippy::too_many_arguments)]
    fn sleep(
        &self,
        cx: &mut RunCx,
        step: &CompiledStep,
        path: StepPath,
        started: i64,
        now: i64,
        until_ms: i64,
        output: Json,
    ) -> Pass {
        let row = StepRow {
            output: Some(output),
            ..row(
                &path,
                step,
                StepStatus::Waiting,
                0,
                started,
                now,
                None,
                None,
            )
        };
        self.report(cx, step, &row, Some(until_ms - now));
        cx.prior.insert(path.0.clone(), Prior::Waiting(row.clone()));
        cx.pending.push(row);
        self.note_due(until_ms);
        Pass::Stop(Outcome::WaitUntil { at_ms: until_ms })
    }

    /// [`Engine::outcome`] of a step whose effect is out (a signal taken, a run started):
    /// stored at once when the run goes on, so a resume does not repeat it.
    async fn outcome_stored(
        &self,
        cx: &mut RunCx,
        step: &CompiledStep,
        path: StepPath,
        started: i64,
        result: Result<StepOutput, StepError>,
        last: bool,
    ) -> Result<Pass, crate::store::StoreError> {
        let pass = self
            .outcome(cx, step, path, 1, started, result, last)
            .await?;
        if matches!(pass, Pass::Done) {
            let rows = std::mem::take(&mut cx.pending);
            self.commit(cx, rows, RunUpdate::Continue).await?;
        }
        Ok(pass)
    }

    /// A `signal` step: the signal is stored and delivered, once per run and path.
    async fn send_signal(
        &self,
        cx: &RunCx,
        signal: &Signal,
        path: &StepPath,
        ctx: &jaq_json::Val,
    ) -> Result<StepOutput, StepError> {
        let key = signal_key(&signal.key, ctx)?;
        let data = match &signal.data {
            Some(t) => t.render(ctx).map_err(|e| {
                StepError::new(ErrorKind::Expression, format!("in `data`: {}", e.message))
            })?,
            None => Json::Null,
        };
        let resumed = self
            .signal(
                &signal.name,
                &key,
                &data,
                Some(format!("{}:{}", cx.run_id, path.as_str())),
            )
            .await
            .map_err(|e| {
                StepError::new(
                    ErrorKind::Config,
                    format!("the signal could not be stored: {e}"),
                )
            })?;
        Ok(StepOutput {
            value: json!({ "name": signal.name, "key": key, "resumed": resumed }),
            ..Default::default()
        })
    }

    /// Sends a signal: resumes the runs waiting for `name` and `key`, or keeps it for
    /// [`SIGNAL_KEEP`] for a wait that registers later. Returns how many waits it resumed.
    pub async fn signal(
        &self,
        name: &str,
        key: &str,
        data: &Json,
        origin: Option<String>,
    ) -> Result<u64, crate::store::StoreError> {
        let now = self.clock.now_ms();
        let resumed = self
            .store
            .send_signal(crate::store::NewSignal {
                signal: name.to_owned(),
                key: key.to_owned(),
                data: data.to_string(),
                now_ms: now,
                keep_until_ms: now + SIGNAL_KEEP.as_millis() as i64,
                origin,
            })
            .await?;
        if resumed > 0 {
            self.wake();
        }
        Ok(resumed)
    }

    /// A `call`: starts the called flow's run (once: its id comes from this run and path),
    /// then sleeps in the queue until that run's end wakes it (a `ferry:call` signal sent in
    /// the transaction that ends the child), or the timeout. `wait: false` goes on at once.
    #[allow(clippy::too_many_arguments)]
    async fn call(
        &self,
        cx: &mut RunCx,
        step: &CompiledStep,
        path: StepPath,
        call: &Call,
        started: i64,
        ctx: jaq_json::Val,
        last: bool,
    ) -> Result<Pass, crate::store::StoreError> {
        let now = self.clock.now_ms();
        let (child, until_ms, started, ended) = match cx.prior.get(path.as_str()) {
            Some(Prior::Waiting(row)) => {
                let out = row.output.clone().unwrap_or(Json::Null);
                let ended = self
                    .store
                    .wait_signal(cx.run_id.as_str().to_owned(), path.as_str().to_owned())
                    .await?;
                (
                    out["run"].as_str().unwrap_or_default().to_owned(),
                    out["until_ms"].as_i64().unwrap_or(now),
                    row.started_at_ms,
                    ended,
                )
            }
            _ => {
                let (child, event) = match self.child_event(cx, call, &path, &ctx).await {
                    Ok(c) => c,
                    Err(e) => return self.outcome(cx, step, path, 1, started, Err(e), last).await,
                };
                // Rows that only computed go first: starting the child is an effect.
                if !cx.pending.is_empty() {
                    let rows = std::mem::take(&mut cx.pending);
                    self.commit(cx, rows, RunUpdate::Continue).await?;
                    cx.decided = false;
                }
                let until_ms = now + call.timeout.as_millis() as i64;
                let version = self
                    .project
                    .flow(&call.flow)
                    .map(|f| f.version.clone())
                    .unwrap_or_default();
                let state = self
                    .store
                    .start_child(crate::store::NewChild {
                        id: child.clone(),
                        flow: call.flow.clone(),
                        flow_version: version,
                        event: event.to_string(),
                        now_ms: now,
                        parent_run: cx.run_id.as_str().to_owned(),
                        parent_path: path.as_str().to_owned(),
                        wait_until_ms: call.wait.then_some(until_ms),
                    })
                    .await?;
                self.wake();
                if !call.wait {
                    let out = StepOutput {
                        value: json!({ "run": child, "flow": call.flow }),
                        ..Default::default()
                    };
                    return self
                        .outcome_stored(cx, step, path, started, Ok(out), last)
                        .await;
                }
                let ended = match state {
                    crate::store::ChildState::Ended(end) => Some(end),
                    crate::store::ChildState::Running => None,
                };
                (child, until_ms, started, ended)
            }
        };
        if let Some(end) = ended {
            cx.end_waits.push(path.as_str().to_owned());
            let result = match end["status"].as_str() {
                Some("succeeded") => Ok(StepOutput {
                    value: end["output"].clone(),
                    ..Default::default()
                }),
                status => {
                    let why = end["error"]["message"]
                        .as_str()
                        .unwrap_or("no error recorded");
                    Err(StepError::new(
                        ErrorKind::Child,
                        format!(
                            "run {child} of flow `{}` {}: {why}",
                            call.flow,
                            status.unwrap_or("ended")
                        ),
                    ))
                }
            };
            return self
                .outcome_stored(cx, step, path, started, result, last)
                .await;
        }
        if now >= until_ms {
            cx.end_waits.push(path.as_str().to_owned());
            let e = StepError::new(
                ErrorKind::Timeout,
                format!(
                    "run {child} of flow `{}` did not end within {}",
                    call.flow,
                    humantime::format_duration(call.timeout)
                ),
            );
            return self.outcome(cx, step, path, 1, started, Err(e), last).await;
        }
        let output = json!({
            "run": child,
            "flow": call.flow,
            "until": crate::util::rfc3339(until_ms),
            "until_ms": until_ms,
        });
        Ok(self.sleep(cx, step, path, started, now, until_ms, output))
    }

    /// The called run's id and event: `.event.body` is the input (checked against the
    /// called flow's input schema), `.event.parent` says who called, and how deep.
    async fn child_event(
        &self,
        cx: &RunCx,
        call: &Call,
        path: &StepPath,
        ctx: &jaq_json::Val,
    ) -> Result<(String, Json), StepError> {
        let Some(callee) = self.project.flow(&call.flow) else {
            return Err(StepError::new(
                ErrorKind::Config,
                format!("flow `{}` is not loaded on this node", call.flow),
            ));
        };
        let input = match &call.input {
            Some(t) => t.render(ctx).map_err(|e| {
                StepError::new(ErrorKind::Expression, format!("in `input`: {}", e.message))
            })?,
            None => Json::Null,
        };
        if let crate::flow::Trigger::Flow(t) = &callee.trigger
            && let Some(schema) = &t.input
        {
            let wrong: Vec<String> = schema
                .iter_errors(&input)
                .take(5)
                .map(|e| {
                    let at = e.instance_path().to_string();
                    if at.is_empty() {
                        e.to_string()
                    } else {
                        format!("at {at}: {e}")
                    }
                })
                .collect();
            if !wrong.is_empty() {
                return Err(StepError::new(
                    ErrorKind::Input,
                    format!(
                        "the input does not match flow `{}`'s input schema: {}",
                        call.flow,
                        wrong.join("; ")
                    ),
                ));
            }
        }
        let depth = cx.outputs.event_json()["parent"]["depth"]
            .as_u64()
            .unwrap_or(0)
            + 1;
        if depth > u64::from(MAX_CALL_DEPTH) {
            return Err(StepError::new(
                ErrorKind::Child,
                format!(
                    "calls nest deeper than {MAX_CALL_DEPTH}: not calling flow `{}`",
                    call.flow
                ),
            ));
        }
        let child = child_id(&cx.run_id, path);
        let event = json!({
            "body": input,
            "parent": { "run": cx.run_id.as_str(), "step": path.as_str(), "depth": depth },
            "received_at": crate::util::rfc3339(self.clock.now_ms()),
        });
        Ok((child, event))
    }

    /// When a `delay` that starts `now` ends.
    async fn delay_until(
        &self,
        delay: &Delay,
        ctx: &jaq_json::Val,
        now: i64,
    ) -> Result<i64, StepError> {
        match delay {
            Delay::For(d) => Ok(now + d.as_millis() as i64),
            Delay::Until(expr) => {
                let v = crate::expr::eval_value(expr, ctx, self.config.expr_timeout)
                    .await
                    .map_err(|e| {
                        StepError::new(ErrorKind::Expression, format!("in `until`: {}", e.message))
                    })?;
                let Some(text) = v.as_str() else {
                    return Err(StepError::new(
                        ErrorKind::Expression,
                        format!(
                            "`until` must be an RFC 3339 time such as \"2026-12-24T09:00:00+07:00\", got {}",
                            short(&v)
                        ),
                    ));
                };
                let at = chrono::DateTime::parse_from_rfc3339(text.trim()).map_err(|e| {
                    StepError::new(
                        ErrorKind::Expression,
                        format!("`until` must be an RFC 3339 time such as \"2026-12-24T09:00:00+07:00\", got \"{text}\" ({e})"),
                    )
                })?;
                let at = at.timestamp_millis();
                let max = now + crate::flow::control::MAX_DELAY.as_millis() as i64;
                if at > max {
                    return Err(StepError::new(
                        ErrorKind::Expression,
                        format!("`until` is more than a year away: \"{text}\""),
                    ));
                }
                // A time already past ends the delay at once.
                Ok(at.max(now))
            }
        }
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
        cx: &RunCx,
        step: &CompiledStep,
        kind: &dyn crate::step::Step,
        path: &StepPath,
        ctx: jaq_json::Val,
    ) -> Result<StepOutput, StepError> {
        let run_id = cx.run_id.as_str();
        let scx = StepCx {
            ctx,
            run_id: run_id.to_owned(),
            step_path: path.as_str().to_owned(),
            idempotency_key: format!("{run_id}:{}", path.as_str()),
            http: self.http.clone(),
            guarded_http: self.guarded_http.clone(),
            net_policy: self.net_policy.clone(),
            expr_timeout: self.config.expr_timeout,
            secrets: self.secrets.clone(),
        };
        match tokio::time::timeout(step.timeout, kind.execute(&scx)).await {
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
        cx: &mut RunCx,
        step: &CompiledStep,
        path: StepPath,
        attempt: u32,
        started: i64,
        result: Result<StepOutput, StepError>,
        last: bool,
    ) -> Result<Pass, crate::store::StoreError> {
        let finished = self.clock.now_ms();
        match result {
            Ok(out) => {
                let row = StepRow {
                    output: Some(out.value),
                    request: out.request,
                    ..row(
                        &path,
                        step,
                        StepStatus::Succeeded,
                        attempt,
                        started,
                        finished,
                        None,
                        None,
                    )
                };
                self.report(cx, step, &row, None);
                cx.outputs
                    .set_step(&step.id, row.output.as_ref().expect("set"));
                cx.prior.insert(
                    path.0,
                    Prior::Done {
                        arm: None,
                        output: None,
                        failed: false,
                    },
                );
                cx.pending.push(row);
                let end = last || matches!(out.outcome, Outcome::Finish { .. });
                self.advance(cx, step, end).await
            }
            Err(e) => {
                let retryable = e.is_retryable(&step.retry);
                let error = e.to_json();
                let mut r = row(
                    &path,
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
                    self.report(cx, step, &r, Some(delay.as_millis() as i64));
                    cx.pending.push(r);
                    let at_ms = finished + delay.as_millis() as i64;
                    self.note_due(at_ms);
                    return Ok(Pass::Stop(Outcome::RetryAt { at_ms }));
                }
                self.report(cx, step, &r, None);
                match step.on_error {
                    OnError::Continue => {
                        let value = json!({ "error": error });
                        r.output = Some(value.clone());
                        cx.done(step, path.clone(), &value, None);
                        cx.pending.push(r);
                        match &step.fallback {
                            Some(block) => self.fallback(cx, block, &path, &error, last).await,
                            None => self.advance(cx, step, last).await,
                        }
                    }
                    OnError::Fail => {
                        cx.pending.push(r);
                        // Out of attempts on a failure that could pass later: dead. A failure
                        // no retry can fix (4xx, bad expression): failed. Both are dead letters.
                        let status = if retryable {
                            RunStatus::Dead
                        } else {
                            RunStatus::Failed
                        };
                        let mut error = error;
                        error["step"] = Json::String(step.id.clone());
                        Ok(Pass::Stop(Outcome::Finish {
                            status,
                            error: Some(error),
                        }))
                    }
                }
            }
        }
    }

    /// `on_error` fallback steps, at `ID/on_error/…`, with `.error` set (boxed: they nest).
    fn fallback<'a>(
        &'a self,
        cx: &'a mut RunCx,
        block: &'a [CompiledStep],
        path: &'a StepPath,
        error: &'a Json,
        last: bool,
    ) -> futures::future::BoxFuture<'a, Result<Pass, crate::store::StoreError>> {
        Box::pin(async move {
            let prefix = path.arm("on_error");
            cx.outputs.set_error(Some(error));
            let pass = self
                .run_block(cx, block, Some(&prefix), last, Until::End)
                .await;
            cx.outputs.set_error(None);
            match pass? {
                Pass::Done if last => Ok(Pass::Stop(Outcome::succeed())),
                other => Ok(other),
            }
        })
    }

    /// Before a step with effects outside Ferry: a decision waiting in `pending` (a
    /// `switch`'s arm) is stored first, so a resume cannot decide otherwise.
    async fn store_decision(&self, cx: &mut RunCx) -> Result<(), crate::store::StoreError> {
        if cx.decided {
            let rows = std::mem::take(&mut cx.pending);
            self.commit(cx, rows, RunUpdate::Continue).await?;
            cx.decided = false;
        }
        Ok(())
    }

    /// After a step's outcome is recorded in `pending`: end the run (as succeeded) when
    /// `done`, else go on — committing first when the step had effects outside Ferry.
    async fn advance(
        &self,
        cx: &mut RunCx,
        step: &CompiledStep,
        done: bool,
    ) -> Result<Pass, crate::store::StoreError> {
        if done {
            return Ok(Pass::Stop(Outcome::succeed()));
        }
        if step.calls_out() {
            let rows = std::mem::take(&mut cx.pending);
            self.commit(cx, rows, RunUpdate::Continue).await?;
            cx.decided = false;
        }
        Ok(Pass::Done)
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
        cx: &mut RunCx,
        rows: Vec<StepRow>,
        update: RunUpdate,
    ) -> Result<(), crate::store::StoreError> {
        let end_waits = std::mem::take(&mut cx.end_waits);
        let output = if matches!(update, RunUpdate::Finish { .. }) {
            cx.output.take()
        } else {
            None
        };
        self.commit_waits(
            cx.run_id.as_str(),
            cx.redaction.as_deref(),
            rows,
            update,
            end_waits,
            output,
        )
        .await
    }

    async fn commit_as(
        &self,
        run_id: &str,
        redaction: Option<&RunRedaction>,
        rows: Vec<StepRow>,
        update: RunUpdate,
    ) -> Result<(), crate::store::StoreError> {
        self.commit_waits(run_id, redaction, rows, update, Vec::new(), None)
            .await
    }

    async fn commit_waits(
        &self,
        run_id: &str,
        redaction: Option<&RunRedaction>,
        rows: Vec<StepRow>,
        update: RunUpdate,
        end_waits: Vec<String>,
        mut output: Option<Json>,
    ) -> Result<(), crate::store::StoreError> {
        // Secrets never reach the store.
        let (mut rows, mut update) = (rows, update);
        self.mask(redaction, &mut rows, &mut update);
        if let Some(o) = &mut output {
            if let Some(r) = redaction {
                crate::redact::scrub_values(&r.values, o);
            }
            self.secrets.scrub_json(o);
        }
        let succeeded = update.succeeded();
        let write = StepWrite {
            run_id: run_id.to_owned(),
            owner: self.owner.clone(),
            rows,
            update,
            now_ms: self.clock.now_ms(),
            end_waits,
            output,
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
        if let Err(e) = self.commit_as(run_id, None, rows, update).await {
            tracing::warn!(run = %run_id, error = %e, "could not store the run's result");
        }
    }

    fn report(&self, cx: &RunCx, step: &CompiledStep, row: &StepRow, retry_in_ms: Option<i64>) {
        if let Some(o) = &self.observer {
            let mut row = row.clone();
            self.scrub(&mut row);
            o.step(&StepReport {
                run_id: cx.run_id.as_str().to_owned(),
                step: row.path.clone(),
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

#[allow(clippy::too_many_arguments)]
fn row(
    path: &StepPath,
    step: &CompiledStep,
    status: StepStatus,
    attempts: u32,
    started: i64,
    finished: i64,
    output: Option<Json>,
    error: Option<Json>,
) -> StepRow {
    StepRow {
        path: path.as_str().to_owned(),
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

/// A value as a message quotes it: at most 80 characters.
fn short(v: &Json) -> String {
    let text = v.to_string();
    match text.char_indices().nth(80) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text,
    }
}

/// A resumed run past a `parallel`: `.steps.ID` of its branches' top steps, as stored (as a
/// `switch`'s steps are readable after it).
fn adopt_branches(cx: &mut RunCx, par: &Parallel, path: &StepPath) {
    for (name, steps) in &par.branches {
        for s in steps {
            let p = format!("{}/{name}/{}", path.as_str(), s.id);
            if let Some(Prior::Done {
                output: Some(output),
                ..
            }) = cx.prior.get(&p)
            {
                let output = output.clone();
                cx.outputs.set_step(&s.id, &output);
            }
        }
    }
}

/// A signal's key, rendered: a string as is, a number or boolean as its JSON text.
/// A `respond` body as sent: XML when the type says XML (an object with one key, the root
/// element; see docs/xml.md), a string as it is when the type is not JSON, else JSON.
fn respond_body(content_type: &str, body: &Json, written: bool) -> Result<Vec<u8>, StepError> {
    let ct = content_type.to_ascii_lowercase();
    let json_type = ct.contains("json");
    if !written {
        return Ok(Vec::new());
    }
    if let Json::String(s) = body
        && !json_type
    {
        return Ok(s.clone().into_bytes());
    }
    if ct.contains("xml") {
        let (root, value) = match body {
            Json::Object(o) if o.len() == 1 => o.iter().next().expect("one key"),
            _ => {
                return Err(StepError::new(
                    ErrorKind::Expression,
                    "an XML body is an object with one key, the root element, e.g. `{StockLevel: {sku: …, qty: …}}`",
                ));
            }
        };
        let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        crate::xml::write::write_element(&mut out, root, value, None).map_err(|e| {
            StepError::new(
                ErrorKind::Expression,
                format!("the body cannot be written as XML: {e}"),
            )
        })?;
        return Ok(out.into_bytes());
    }
    Ok(body.to_string().into_bytes())
}

/// The id of the run a `call` at `path` of run `parent` starts: a UUIDv7 with the parent's
/// time (so it sorts beside it) and bits from a hash of both, the same on every attempt,
/// replay and node.
fn child_id(parent: &RunId, path: &StepPath) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!("{}/{}", parent.as_str(), path.as_str()).as_bytes());
    let ms = uuid::Uuid::parse_str(parent.as_str())
        .ok()
        .and_then(|u| u.get_timestamp())
        .map(|t| {
            let (s, n) = t.to_unix();
            s * 1000 + u64::from(n) / 1_000_000
        })
        .unwrap_or(0);
    let mut bytes = [0u8; 10];
    bytes.copy_from_slice(&digest[..10]);
    uuid::Builder::from_unix_timestamp_millis(ms, &bytes)
        .into_uuid()
        .to_string()
}

fn signal_key(t: &crate::expr::Template, ctx: &jaq_json::Val) -> Result<String, StepError> {
    let v = t
        .render(ctx)
        .map_err(|e| StepError::new(ErrorKind::Expression, format!("in `key`: {}", e.message)))?;
    match v {
        Json::String(s) if !s.is_empty() => Ok(s),
        Json::Number(_) | Json::Bool(_) => Ok(v.to_string()),
        other => Err(StepError::new(
            ErrorKind::Expression,
            format!(
                "`key` must be a non-empty string or a number, got {}",
                short(&other)
            ),
        )),
    }
}
