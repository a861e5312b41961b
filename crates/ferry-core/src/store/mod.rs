//! The store: runs (with their event and queue position), step results, dedupe keys.
//!
//! Knows rows and transactions, not HTTP, jq or YAML. The queue lives in the same database as
//! the state, so "stored" and "queued" are one transaction, and a claim is a lease with an
//! expiry: a node that dies leaves leases that run out, and its runs are claimed again.
//! One narrow trait, so that PostgreSQL is an addition, not a rewrite.

pub mod sqlite;

use futures::future::BoxFuture;
use serde::Serialize;
use serde_json::Value as Json;

use crate::secret::SealedSecret;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(String),
    /// The write queue is full: the caller should shed load (HTTP 429).
    #[error("the store is overloaded; try again shortly")]
    Overloaded,
    #[error("the store is shut down")]
    Closed,
    #[error("{0}")]
    Conflict(String),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Db(e.to_string())
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    Dead,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Queued => "queued",
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Dead => "dead",
        }
    }
    pub fn parse(s: &str) -> Option<RunStatus> {
        Some(match s {
            "queued" => RunStatus::Queued,
            "running" => RunStatus::Running,
            "succeeded" => RunStatus::Succeeded,
            "failed" => RunStatus::Failed,
            "dead" => RunStatus::Dead,
            _ => return None,
        })
    }
    pub fn is_final(self) -> bool {
        matches!(
            self,
            RunStatus::Succeeded | RunStatus::Failed | RunStatus::Dead
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Succeeded,
    Failed,
    Skipped,
    /// Failed an attempt; the run waits for the next one.
    Retrying,
    /// A `delay` (or, later, a wait for a signal or a child run) that has not ended: the run
    /// sleeps in the queue until the time in the row's output. Not an attempt.
    Waiting,
}

impl StepStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            StepStatus::Succeeded => "succeeded",
            StepStatus::Failed => "failed",
            StepStatus::Skipped => "skipped",
            StepStatus::Retrying => "retrying",
            StepStatus::Waiting => "waiting",
        }
    }
    pub fn parse(s: &str) -> StepStatus {
        match s {
            "succeeded" => StepStatus::Succeeded,
            "skipped" => StepStatus::Skipped,
            "retrying" => StepStatus::Retrying,
            "waiting" => StepStatus::Waiting,
            _ => StepStatus::Failed,
        }
    }
}

/// An event to store and queue as a new run.
#[derive(Debug, Clone)]
pub struct NewRun {
    pub id: String,
    pub flow: String,
    pub flow_version: String,
    pub event: String,
    pub dedupe: Option<Dedupe>,
    pub now_ms: i64,
    /// Store it already leased to this worker (it starts at once, without a claim).
    pub lease: Option<Lease>,
    /// Steps that ran while the event was ingested (they only compute), stored with it.
    pub steps: Vec<StepRow>,
    /// The run's state after those steps: `Continue` (queued, or running under `lease`), or
    /// finished, or waiting for a retry.
    pub update: RunUpdate,
}

#[derive(Debug, Clone)]
pub struct Lease {
    pub owner: String,
    pub until_ms: i64,
}

#[derive(Debug, Clone)]
pub struct Dedupe {
    pub key: String,
    pub expires_at_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ingested {
    Created(String),
    /// Same dedupe key within the window: the first run's id.
    Duplicate(String),
}

/// One step's record in a run.
#[derive(Debug, Clone, Serialize)]
pub struct StepRow {
    pub path: String,
    /// Order of the step in its run (its position in the flow; for nested steps later, the
    /// order they were reached in).
    pub seq: u32,
    pub status: StepStatus,
    pub attempts: u32,
    pub started_at_ms: i64,
    pub finished_at_ms: i64,
    pub output: Option<Json>,
    pub error: Option<Json>,
    pub request: Option<Json>,
    pub response: Option<Json>,
}

impl StepRow {
    /// The recorded payloads (output, error, request, response), for masking.
    pub fn payloads_mut(&mut self) -> impl Iterator<Item = &mut Json> {
        [
            &mut self.output,
            &mut self.error,
            &mut self.request,
            &mut self.response,
        ]
        .into_iter()
        .flatten()
    }
}

/// A run handed to a worker under a lease.
#[derive(Debug, Clone)]
pub struct ClaimedRun {
    pub id: String,
    pub flow: String,
    pub attempt: u32,
    /// The event as stored (JSON text): the executor parses it straight into jq values.
    pub event: String,
    pub steps: Vec<StepRow>,
}

/// What a step write does to its run.
#[derive(Debug, Clone)]
pub enum RunUpdate {
    /// Keep going (the lease is kept).
    Continue,
    /// Wait: back to the queue until `next_at_ms`, lease released.
    Retry { next_at_ms: i64 },
    /// Done.
    Finish {
        status: RunStatus,
        error: Option<Json>,
    },
}

impl RunUpdate {
    /// The run ends, succeeded.
    pub fn succeeded(&self) -> bool {
        matches!(
            self,
            RunUpdate::Finish {
                status: RunStatus::Succeeded,
                ..
            }
        )
    }
}

#[derive(Debug, Clone)]
pub struct StepWrite {
    pub run_id: String,
    pub owner: String,
    pub rows: Vec<StepRow>,
    pub update: RunUpdate,
    pub now_ms: i64,
    /// Waits of this run that end with this write (their step succeeded or timed out), by
    /// path. A finished run's waits all end.
    pub end_waits: Vec<String>,
    /// What the run returns to its caller (`output:`), with a `Finish`.
    pub output: Option<Json>,
}

/// The signal name that wakes a run waiting in a `call` step (keyed by the called run's id).
/// Users' signal names cannot contain `:`, so none can collide with it.
pub const CALL_SIGNAL: &str = "ferry:call";

/// A `call` step starting (or finding) the run it calls.
#[derive(Debug, Clone)]
pub struct NewChild {
    /// Derived from the caller's run and step path: the same call never starts two runs.
    pub id: String,
    pub flow: String,
    pub flow_version: String,
    pub event: String,
    pub now_ms: i64,
    pub parent_run: String,
    pub parent_path: String,
    /// The caller waits (until then) for the child's end: a wait for [`CALL_SIGNAL`] is
    /// registered with the child, in one transaction. `None`: `wait: false`.
    pub wait_until_ms: Option<i64>,
}

/// What a `call` found.
#[derive(Debug, Clone, PartialEq)]
pub enum ChildState {
    /// Started now, or started earlier and not ended yet (or failed earlier and queued again
    /// from its failed step, for a caller that reaches the call again on a replay).
    Running,
    /// Ended already: `{"status", "output", "error"}`, what the wake-up signal carries.
    Ended(Json),
}

/// A `wait` step registering: the signal it waits for, and until when.
#[derive(Debug, Clone)]
pub struct NewWait {
    pub run_id: String,
    pub path: String,
    pub signal: String,
    pub key: String,
    /// A signal received at or after this time and not delivered yet resumes the wait at
    /// once (the lookback).
    pub since_ms: i64,
    pub until_ms: i64,
    pub now_ms: i64,
}

/// A signal arriving.
#[derive(Debug, Clone)]
pub struct NewSignal {
    pub signal: String,
    pub key: String,
    /// JSON text.
    pub data: String,
    pub now_ms: i64,
    /// Kept this long for a wait that registers later (when no wait takes it now).
    pub keep_until_ms: i64,
    /// Who sent it, when sending it twice must count once (a `signal` step's `RUN:PATH`, an
    /// API caller's `Idempotency-Key`): a second signal from the same origin is not stored
    /// again, and answers what the first did.
    pub origin: Option<String>,
}

/// A signal kept for a wait that has not registered (yet).
#[derive(Debug, Clone, Serialize)]
pub struct KeptSignal {
    pub signal: String,
    pub key: String,
    pub data: Json,
    pub received_at_ms: i64,
    pub expires_at_ms: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    pub id: String,
    pub flow: String,
    pub flow_version: String,
    pub status: RunStatus,
    pub attempt: u32,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub error: Option<Json>,
}

#[derive(Debug, Clone)]
pub struct RunDetail {
    pub summary: RunSummary,
    pub event: Json,
    pub steps: Vec<StepRow>,
}

#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    pub flow: Option<String>,
    pub statuses: Vec<RunStatus>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    /// Only runs whose id sorts before this one (ids are time-ordered): the next page.
    pub before: Option<String>,
    pub limit: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayFrom {
    /// Keep the steps that succeeded; run the failed one and the rest again.
    Failed,
    /// Forget every step result and run the whole flow again.
    Start,
}

/// Which dead letters to replay: one run, or every failed/dead run matching a filter.
#[derive(Debug, Clone)]
pub enum ReplaySelect {
    One(String),
    Matching(RunFilter),
}

pub trait Store: Send + Sync + 'static {
    /// Stores an event as a queued run, durably, before returning.
    fn ingest(&self, run: NewRun) -> BoxFuture<'_, Result<Ingested>>;
    /// Leases up to `limit` runs that are due (or whose lease ran out).
    fn claim(
        &self,
        owner: &str,
        limit: usize,
        lease_ms: i64,
        now_ms: i64,
    ) -> BoxFuture<'_, Result<Vec<ClaimedRun>>>;
    /// Persists step results and the run's next state, in one transaction.
    fn write_step(&self, write: StepWrite) -> BoxFuture<'_, Result<()>>;
    /// Extends the leases `owner` holds.
    fn renew_leases(&self, owner: &str, until_ms: i64) -> BoxFuture<'_, Result<()>>;
    /// Puts runs `owner` still holds back in the queue (graceful shutdown).
    fn release(&self, owner: &str, now_ms: i64) -> BoxFuture<'_, Result<u64>>;
    /// Earliest time a queued run becomes due.
    fn next_due(&self) -> BoxFuture<'_, Result<Option<i64>>>;
    fn get_run(&self, id: &str) -> BoxFuture<'_, Result<Option<RunDetail>>>;
    fn list_runs(&self, filter: RunFilter) -> BoxFuture<'_, Result<Vec<RunSummary>>>;
    /// Requeues failed/dead runs; returns the ids requeued.
    fn replay(
        &self,
        select: ReplaySelect,
        from: ReplayFrom,
        now_ms: i64,
    ) -> BoxFuture<'_, Result<Vec<String>>>;
    /// Forgets dedupe keys whose window has passed.
    fn purge_dedupe(&self, now_ms: i64) -> BoxFuture<'_, Result<u64>>;

    /// Registers a wait, in one transaction with looking for a signal it may take: one
    /// received since `since_ms`, not delivered, for the same name and key. Returns that
    /// signal's data (and consumes it), or `None` (the wait is stored). Idempotent per
    /// (run, path): registering again returns the data delivered to it, if any.
    fn register_wait(&self, wait: NewWait) -> BoxFuture<'_, Result<Option<Json>>>;

    /// Stores a signal and, in the same transaction, delivers it to every wait registered
    /// for its name and key that has none yet, and makes their runs due now. Returns how
    /// many waits it resumed; with none, it is kept until `keep_until_ms`.
    fn send_signal(&self, signal: NewSignal) -> BoxFuture<'_, Result<u64>>;

    /// The data of the signal delivered to a wait, if one was.
    fn wait_signal(&self, run_id: String, path: String) -> BoxFuture<'_, Result<Option<Json>>>;

    /// Signals kept for a wait (not delivered, not expired), newest first.
    fn kept_signals(&self, now_ms: i64, limit: u32) -> BoxFuture<'_, Result<Vec<KeptSignal>>>;

    /// Forgets kept signals past their time, and delivered ones whose waits have ended.
    fn purge_signals(&self, now_ms: i64) -> BoxFuture<'_, Result<u64>>;
    /// Starts the run a `call` step calls, once per id; with [`NewChild::wait_until_ms`],
    /// also registers the caller's wait for its end. A child that ended already answers
    /// its end; one that failed or is dead is queued again from its failed step.
    fn start_child(&self, child: NewChild) -> BoxFuture<'_, Result<ChildState>>;
    /// A cheap read that proves the database answers.
    fn ping(&self) -> BoxFuture<'_, Result<()>>;

    /// Every secret row, sealed, by name.
    fn secrets(&self) -> BoxFuture<'_, Result<Vec<SealedSecret>>>;
    /// Inserts or replaces a sealed secret (its version goes up by one); returns its
    /// metadata (with an empty `sealed`).
    fn put_secret(
        &self,
        name: String,
        sealed: Vec<u8>,
        now_ms: i64,
    ) -> BoxFuture<'_, Result<SealedSecret>>;
    fn delete_secret(&self, name: String) -> BoxFuture<'_, Result<bool>>;
    /// Replaces every sealed value and the master key's check value in one transaction
    /// (key rotation). Fails with `Conflict` when the set of secrets changed meanwhile.
    fn reseal_secrets(
        &self,
        rows: Vec<(String, Vec<u8>)>,
        key_check: Vec<u8>,
        now_ms: i64,
    ) -> BoxFuture<'_, Result<()>>;
    fn get_meta(&self, key: String) -> BoxFuture<'_, Result<Option<Vec<u8>>>>;

    fn create_api_key(&self, key: ApiKeyRow) -> BoxFuture<'_, Result<()>>;
    fn list_api_keys(&self) -> BoxFuture<'_, Result<Vec<ApiKeyRow>>>;
    /// The key with this SHA-256, revoked or not.
    fn find_api_key(&self, hash: Vec<u8>) -> BoxFuture<'_, Result<Option<ApiKeyRow>>>;
    /// False when no such key exists or it was revoked already.
    fn revoke_api_key(&self, id: String, now_ms: i64) -> BoxFuture<'_, Result<bool>>;

    /// Replaces a run's stored event (redaction after the run succeeded).
    fn replace_event(&self, run_id: String, event: String) -> BoxFuture<'_, Result<()>>;
    /// Deletes the payloads (event, step outputs, requests, responses) of runs of `flow`
    /// that finished before `before_ms`; status, times and errors stay. Returns how many.
    fn purge_payloads(
        &self,
        flow: String,
        before_ms: i64,
        now_ms: i64,
    ) -> BoxFuture<'_, Result<u64>>;
    /// Erases a subject: deletes the payloads of every run whose event, step records or
    /// error contain one of `needles` (the subject in each form it may be stored in: JSON
    /// text, URL-encoded…; ASCII case ignored), as `purge_payloads` does, and the dedupe
    /// keys that contain one. Returns (runs erased, of which still queued or running).
    ///
    /// When it returns `Ok`, no needle is on any page of the store's files: not in the
    /// tables or their indexes, not in free space, not in a write-ahead log, not in an old
    /// version of a row kept for readers. Deleting rows alone does not give that: every
    /// backend keeps old versions somewhere (SQLite: WAL frames, freed cells; PostgreSQL: dead
    /// tuples until VACUUM, WAL segments until a checkpoint recycles them), and erase must
    /// wait for them to go or overwrite them. Only what is written after it began can
    /// hold a needle again (a run in flight, counted in the second number; a new event).
    /// When old versions cannot be removed in time (a reader holds an old snapshot), the
    /// rows are deleted all the same and it fails with `Conflict`, saying how many runs
    /// were erased and what is left; erasing again, later, completes it.
    fn erase(&self, needles: Vec<String>, now_ms: i64) -> BoxFuture<'_, Result<(u64, u64)>>;

    fn append_audit(&self, entry: AuditEntry) -> BoxFuture<'_, Result<()>>;
    /// Newest first; entries with `seq < before` when given.
    fn list_audit(&self, limit: u32, before: Option<i64>)
    -> BoxFuture<'_, Result<Vec<AuditEntry>>>;
    fn put_meta(&self, key: String, value: Vec<u8>, now_ms: i64) -> BoxFuture<'_, Result<()>>;
}

/// A management API key as stored: never the key itself, only its SHA-256.
#[derive(Debug, Clone)]
pub struct ApiKeyRow {
    pub id: String,
    pub name: String,
    pub role: String,
    pub hash: Vec<u8>,
    pub created_at_ms: i64,
    pub revoked_at_ms: Option<i64>,
}

/// One line of the audit log: who did what to which thing, when.
#[derive(Debug, Clone)]
pub struct AuditEntry {
    pub seq: i64,
    pub at_ms: i64,
    pub actor: String,
    pub action: String,
    pub target: String,
    /// Before/after and parameters, with secrets masked.
    pub detail: Option<Json>,
}
