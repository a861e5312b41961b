//! The engine: claims due runs from the store and executes them on a bounded worker pool.
//!
//! Knows the store's trait, never SQLite by name. See `docs/design/engine.md` for the run
//! state machine and why step positions are paths.

mod executor;
pub mod harness;
mod ingest;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use std::sync::atomic::AtomicI64;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use executor::{Observer, Prepared, RunId, StepPath, StepReport, redact_detail};
pub use ingest::IngestError;

use crate::flow::Project;
use crate::store::Store;

/// Engine time, passed in so tests (and `ferry test`) can control it: every due time the
/// engine computes and every wait of its loops go through it.
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> i64;
    /// Resolves when `now_ms() >= at_ms`, or earlier (callers look at the time again).
    fn sleep_until(&self, at_ms: i64) -> futures::future::BoxFuture<'static, ()>;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        chrono::Utc::now().timestamp_millis()
    }

    fn sleep_until(&self, at_ms: i64) -> futures::future::BoxFuture<'static, ()> {
        let ms = at_ms.saturating_sub(self.now_ms()).max(0) as u64;
        Box::pin(tokio::time::sleep(Duration::from_millis(ms)))
    }
}

/// Time that moves only when told to ([`ManualClock::advance`]): a retry due in an hour is
/// due the moment the clock is advanced by an hour, and not a millisecond earlier.
pub struct ManualClock {
    now_ms: tokio::sync::watch::Sender<i64>,
}

impl ManualClock {
    pub fn new(start_ms: i64) -> ManualClock {
        ManualClock {
            now_ms: tokio::sync::watch::Sender::new(start_ms),
        }
    }

    pub fn advance(&self, by: Duration) {
        self.now_ms.send_modify(|now| *now += by.as_millis() as i64);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        *self.now_ms.borrow()
    }

    fn sleep_until(&self, at_ms: i64) -> futures::future::BoxFuture<'static, ()> {
        // Subscribed before the time is read, so an advance in between is not missed.
        let mut moved = self.now_ms.subscribe();
        let due = *moved.borrow_and_update() >= at_ms;
        Box::pin(async move {
            while !due && *moved.borrow_and_update() < at_ms {
                if moved.changed().await.is_err() {
                    return;
                }
            }
        })
    }
}

#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Runs executing at once on this node.
    pub workers: usize,
    /// How long a claim lasts without renewal; a dead node's runs are claimed again after it.
    pub lease: Duration,
    /// Longest time one expression evaluation may take.
    pub expr_timeout: Duration,
    /// Internal networks that URLs built from data may reach (`--allow-network`).
    pub allow_networks: Vec<ipnet::IpNet>,
    /// How often expired dedupe keys and payloads past retention are deleted.
    pub maintenance_every: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            workers: 256,
            lease: Duration::from_secs(30),
            expr_timeout: Duration::from_secs(2),
            allow_networks: Vec::new(),
            maintenance_every: Duration::from_secs(60),
        }
    }
}

pub struct Engine {
    pub store: Arc<dyn Store>,
    pub project: Arc<Project>,
    pub config: EngineConfig,
    pub clock: Arc<dyn Clock>,
    pub http: reqwest::Client,
    /// For URLs built from data: refuses internal addresses (see [`crate::net`]).
    pub guarded_http: reqwest::Client,
    pub net_policy: Arc<crate::net::NetPolicy>,
    /// Secret values for `{ secret }` references, and what to scrub before storing.
    pub secrets: Arc<crate::secret::Vault>,
    /// Unique per process: the lease owner.
    pub owner: String,
    wake: Notify,
    observer: Option<Arc<dyn Observer>>,
    finished: AtomicU64,
    /// One permit per run executing on this node.
    slots: Arc<Semaphore>,
    tasks: TaskTracker,
    /// Set when shutdown begins: no new run starts here.
    stopping: CancellationToken,
    /// Earliest known time a waiting run becomes due (ms), so the dispatcher sleeps exactly
    /// until then instead of polling the store.
    next_due_hint: AtomicI64,
    /// Callers of `response: sync` webhooks waiting on this node, by run id.
    replies:
        std::sync::Mutex<std::collections::HashMap<String, tokio::sync::oneshot::Sender<Reply>>>,
}

/// What the caller of a `response: sync` webhook is answered.
#[derive(Debug)]
pub enum Reply {
    /// The run reached a `respond` step.
    Respond {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// The run ended without one (it failed before, or never reached it).
    Ended {
        status: crate::store::RunStatus,
        error: Option<serde_json::Value>,
    },
}

impl Engine {
    pub fn new(store: Arc<dyn Store>, project: Arc<Project>, config: EngineConfig) -> Engine {
        let policy = Arc::new(crate::net::NetPolicy::new(config.allow_networks.clone()));
        Engine {
            store,
            project,
            clock: Arc::new(SystemClock),
            http: crate::net::client(policy.clone()),
            guarded_http: crate::net::guarded_client(policy.clone()),
            net_policy: policy,
            secrets: crate::secret::Vault::in_memory(Default::default()),
            owner: format!("node-{}", uuid::Uuid::now_v7()),
            wake: Notify::new(),
            observer: None,
            finished: AtomicU64::new(0),
            slots: Arc::new(Semaphore::new(config.workers.max(1))),
            tasks: TaskTracker::new(),
            stopping: CancellationToken::new(),
            next_due_hint: AtomicI64::new(i64::MAX),
            replies: Default::default(),
            config,
        }
    }

    /// A caller waits for run `run_id`'s `respond` step (or its end) on this node.
    pub(crate) fn expect_reply(&self, run_id: &str, tx: tokio::sync::oneshot::Sender<Reply>) {
        self.replies
            .lock()
            .expect("not poisoned")
            .insert(run_id.to_owned(), tx);
    }

    /// The caller of run `run_id` stopped waiting (it timed out, or the event was a
    /// duplicate).
    pub fn forget_reply(&self, run_id: &str) {
        self.replies.lock().expect("not poisoned").remove(run_id);
    }

    /// Answers the caller waiting for run `run_id`, if one is (on this node): true when one
    /// was.
    pub(crate) fn reply(&self, run_id: &str, reply: Reply) -> bool {
        let tx = self.replies.lock().expect("not poisoned").remove(run_id);
        tx.is_some_and(|tx| tx.send(reply).is_ok())
    }

    pub fn with_secrets(mut self, secrets: Arc<crate::secret::Vault>) -> Engine {
        self.secrets = secrets;
        self
    }

    /// Engine time from `clock` instead of the system's (tests, `ferry test`).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Engine {
        self.clock = clock;
        self
    }

    pub fn with_observer(mut self, observer: Arc<dyn Observer>) -> Engine {
        self.observer = Some(observer);
        self
    }

    /// Retention: deletes the payloads of finished runs older than their flow's `retention`.
    pub async fn purge_expired_payloads(&self) {
        let now = self.clock.now_ms();
        for flow in &self.project.flows {
            let before = now - flow.retention.as_millis() as i64;
            match self
                .store
                .purge_payloads(flow.id.clone(), before, now)
                .await
            {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(flow = %flow.id, runs = n, "retention: deleted the payloads of old runs")
                }
                Err(e) => tracing::warn!(flow = %flow.id, error = %e, "retention purge failed"),
            }
        }
    }

    /// Something became due (a new event, a replay): look for work now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// A worker slot for a run that is being ingested here, so it can start without a trip
    /// through the queue (`start_claimed`). `None` when every worker is busy or the engine is
    /// stopping: the run is then queued as usual.
    pub fn reserve(&self) -> Option<OwnedSemaphorePermit> {
        if self.stopping.is_cancelled() {
            return None;
        }
        self.slots.clone().try_acquire_owned().ok()
    }

    /// The lease to store with a run ingested under `reserve`.
    pub fn lease_until(&self, now_ms: i64) -> i64 {
        now_ms + self.config.lease.as_millis() as i64
    }

    /// Executes a run this node already holds the lease of.
    pub fn start_claimed(
        self: &Arc<Self>,
        run: crate::store::ClaimedRun,
        permit: OwnedSemaphorePermit,
    ) {
        let run_id = run.id.clone();
        let engine = self.clone();
        self.spawn_run(run_id, permit, async move { engine.execute(run).await });
    }

    /// Goes on with a run [`Engine::prepare`] started, once the store holds it leased to
    /// this node: from its first step that calls out, with the context already in memory.
    pub fn start_prepared(
        self: &Arc<Self>,
        flow: Arc<crate::flow::Flow>,
        run_id: String,
        prepared: Prepared,
        permit: OwnedSemaphorePermit,
    ) {
        let engine = self.clone();
        self.spawn_run(run_id, permit, async move {
            engine.execute_prepared(&flow, prepared).await
        });
    }

    fn spawn_run(
        self: &Arc<Self>,
        run_id: String,
        permit: OwnedSemaphorePermit,
        run: impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        let engine = self.clone();
        self.tasks.spawn(async move {
            use futures::FutureExt;
            // A panic is a bug, and would repeat on every retry: end the run as failed (a dead
            // letter, replayable once fixed) instead of leaving it leased and renewed forever.
            if std::panic::AssertUnwindSafe(run).catch_unwind().await.is_err() {
                tracing::error!(run = %run_id, "run panicked; it is failed and kept as a dead letter");
                let error = serde_json::json!({"kind": "internal", "message": "internal error while executing the run; see the server log"});
                engine.fail_run(&run_id, error).await;
            }
            engine.finished.fetch_add(1, Ordering::Relaxed);
            drop(permit);
            engine.wake.notify_one();
        });
    }

    /// A run waits until `at_ms` (a retry): wake the dispatcher then.
    pub(crate) fn note_due(&self, at_ms: i64) {
        self.next_due_hint.fetch_min(at_ms, Ordering::Relaxed);
        self.wake.notify_one();
    }

    /// A run ended while it was ingested (see [`Engine::prepare`]).
    pub fn count_finished(&self) {
        self.finished.fetch_add(1, Ordering::Relaxed);
    }

    /// Runs finished on this node since start.
    pub fn finished_count(&self) -> u64 {
        self.finished.load(Ordering::Relaxed)
    }

    /// The dispatcher: claims due runs while workers are free, until `shutdown`; then gives
    /// in-flight runs `grace` to finish and puts the rest back in the queue.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken, grace: Duration) {
        let lease_ms = self.config.lease.as_millis() as i64;
        let renew = {
            let engine = self.clone();
            let stop = shutdown.clone();
            tokio::spawn(async move {
                let every = engine.config.lease / 3;
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = engine.clock.sleep_until(engine.clock.now_ms() + every.as_millis() as i64) => {}
                    }
                    let until = engine.clock.now_ms() + lease_ms;
                    if let Err(e) = engine.store.renew_leases(&engine.owner, until).await {
                        tracing::warn!(error = %e, "renewing leases failed");
                    }
                }
            })
        };
        let purge = {
            let engine = self.clone();
            let stop = shutdown.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = engine.clock.sleep_until(engine.clock.now_ms() + engine.config.maintenance_every.as_millis() as i64) => {}
                    }
                    if let Err(e) = engine.store.purge_dedupe(engine.clock.now_ms()).await {
                        tracing::warn!(error = %e, "purging dedupe keys failed");
                    }
                    if let Err(e) = engine.store.purge_signals(engine.clock.now_ms()).await {
                        tracing::warn!(error = %e, "purging signals failed");
                    }
                    engine.purge_expired_payloads().await;
                }
            })
        };

        // Runs queued before this start (or by other nodes, or by replays) are found here;
        // runs ingested on this node with a free worker start directly (`start_claimed`).
        while !shutdown.is_cancelled() {
            let free = self.slots.available_permits();
            let mut claimed_all = false;
            if free > 0 {
                let want = free.min(128);
                let now = self.clock.now_ms();
                if self.next_due_hint.load(Ordering::Relaxed) <= now {
                    self.next_due_hint.store(i64::MAX, Ordering::Relaxed);
                }
                match self.store.claim(&self.owner, want, lease_ms, now).await {
                    Ok(runs) => {
                        claimed_all = runs.len() == want;
                        let idle = runs.is_empty();
                        for run in runs {
                            let permit = self
                                .slots
                                .clone()
                                .acquire_owned()
                                .await
                                .expect("semaphore is never closed");
                            self.start_claimed(run, permit);
                        }
                        if idle {
                            // Nothing due now: learn when the next waiting run is due.
                            if let Ok(Some(at)) = self.store.next_due().await {
                                self.next_due_hint.fetch_min(at, Ordering::Relaxed);
                            }
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "claiming runs failed");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
            if claimed_all {
                continue;
            }
            // Sleep until the next known due time, at most a second (other nodes and
            // replays queue runs this node learns of only from the store).
            let now = self.clock.now_ms();
            let hint = self.next_due_hint.load(Ordering::Relaxed);
            let until = hint.clamp(now + 1, now + 1000);
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = self.wake.notified() => {}
                _ = self.clock.sleep_until(until) => {}
            }
        }
        self.stopping.cancel();

        let _ = renew.await;
        let _ = purge.await;
        self.tasks.close();
        let in_flight = self.tasks.len();
        if in_flight > 0 {
            tracing::info!(
                in_flight,
                grace_ms = grace.as_millis() as u64,
                "waiting for in-flight runs"
            );
            if tokio::time::timeout(grace, self.tasks.wait())
                .await
                .is_err()
            {
                tracing::warn!(
                    still_running = self.tasks.len(),
                    "grace period over; unfinished runs go back to the queue"
                );
            }
        }
        // Runs still leased here go back to the queue; a straggler's later write is refused
        // by the store because the run is no longer leased to this node.
        match self.store.release(&self.owner, self.clock.now_ms()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(runs = n, "runs left queued for the next start"),
            Err(e) => tracing::warn!(error = %e, "releasing leases failed; they will expire"),
        }
    }
}
