//! The engine: claims due runs from the store and executes them on a bounded worker pool.
//!
//! Knows the store's trait, never SQLite by name. See `docs/design/engine.md` for the run
//! state machine and why step positions are paths.

mod executor;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use executor::{Observer, StepReport};

use crate::flow::Project;
use crate::store::Store;

/// Engine time, passed in so tests can control it.
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> i64;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        chrono::Utc::now().timestamp_millis()
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
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            workers: 256,
            lease: Duration::from_secs(30),
            expr_timeout: Duration::from_secs(2),
        }
    }
}

pub struct Engine {
    pub store: Arc<dyn Store>,
    pub project: Arc<Project>,
    pub config: EngineConfig,
    pub clock: Arc<dyn Clock>,
    pub http: reqwest::Client,
    /// Unique per process: the lease owner.
    pub owner: String,
    wake: Notify,
    observer: Option<Arc<dyn Observer>>,
    finished: AtomicU64,
}

pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .redirect(reqwest::redirect::Policy::limited(5))
        .connect_timeout(Duration::from_secs(10))
        .build()
        .expect("the HTTP client builds with static settings")
}

impl Engine {
    pub fn new(store: Arc<dyn Store>, project: Arc<Project>, config: EngineConfig) -> Engine {
        Engine {
            store,
            project,
            config,
            clock: Arc::new(SystemClock),
            http: http_client(),
            owner: format!("node-{}", uuid::Uuid::now_v7()),
            wake: Notify::new(),
            observer: None,
            finished: AtomicU64::new(0),
        }
    }

    pub fn with_observer(mut self, observer: Arc<dyn Observer>) -> Engine {
        self.observer = Some(observer);
        self
    }

    /// Something became due (a new event, a replay): look for work now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Runs finished on this node since start.
    pub fn finished_count(&self) -> u64 {
        self.finished.load(Ordering::Relaxed)
    }

    /// The dispatcher: claims due runs while workers are free, until `shutdown`; then gives
    /// in-flight runs `grace` to finish and puts the rest back in the queue.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken, grace: Duration) {
        let slots = Arc::new(Semaphore::new(self.config.workers));
        let mut tasks = JoinSet::new();
        let lease_ms = self.config.lease.as_millis() as i64;
        let renew = {
            let engine = self.clone();
            let stop = shutdown.clone();
            tokio::spawn(async move {
                let every = engine.config.lease / 3;
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(every) => {}
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
                        _ = tokio::time::sleep(Duration::from_secs(60)) => {}
                    }
                    if let Err(e) = engine.store.purge_dedupe(engine.clock.now_ms()).await {
                        tracing::warn!(error = %e, "purging dedupe keys failed");
                    }
                }
            })
        };

        while !shutdown.is_cancelled() {
            while tasks.try_join_next().is_some() {}
            let free = slots.available_permits();
            if free > 0 {
                let want = free.min(128);
                match self
                    .store
                    .claim(&self.owner, want, lease_ms, self.clock.now_ms())
                    .await
                {
                    Ok(runs) => {
                        let got = runs.len();
                        for run in runs {
                            let permit = slots
                                .clone()
                                .acquire_owned()
                                .await
                                .expect("semaphore is never closed");
                            let engine = self.clone();
                            tasks.spawn(async move {
                                engine.execute(run).await;
                                engine.finished.fetch_add(1, Ordering::Relaxed);
                                drop(permit);
                                engine.wake.notify_one();
                            });
                        }
                        if got == want {
                            continue;
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "claiming runs failed");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
            let wait = match self.store.next_due().await {
                Ok(Some(at)) => {
                    Duration::from_millis((at - self.clock.now_ms()).clamp(1, 1000) as u64)
                }
                _ => Duration::from_secs(1),
            };
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }

        let _ = renew.await;
        let _ = purge.await;
        if !tasks.is_empty() {
            tracing::info!(
                in_flight = tasks.len(),
                grace_ms = grace.as_millis() as u64,
                "waiting for in-flight runs"
            );
            let drained =
                tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} })
                    .await;
            if drained.is_err() {
                tasks.abort_all();
                while tasks.join_next().await.is_some() {}
            }
        }
        match self.store.release(&self.owner, self.clock.now_ms()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(runs = n, "runs left queued for the next start"),
            Err(e) => tracing::warn!(error = %e, "releasing leases failed; they will expire"),
        }
    }
}
