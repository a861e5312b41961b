//! An engine in this process, on a throwaway store and a [`ManualClock`]: runs are started
//! and driven without HTTP and without real time. A retry due in an hour happens when the test
//! says an hour has passed ([`Harness::advance`]), and [`Harness::settle`] returns once
//! nothing more can happen at the current time — so a test never races the engine and never
//! sleeps. Steps still make their real calls (to servers the test starts on loopback).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value as Json;
use tokio_util::sync::CancellationToken;

use super::{Engine, EngineConfig, IngestError, ManualClock};
use crate::flow::Project;
use crate::store::sqlite::SqliteStore;
use crate::store::{Ingested, ReplayFrom, ReplaySelect, RunDetail, Store, StoreError};
use crate::trigger::Event;

/// The time a harness starts at: 2026-01-01T00:00:00Z.
pub const START_MS: i64 = 1_767_225_600_000;

pub struct Harness {
    pub engine: Arc<Engine>,
    pub clock: Arc<ManualClock>,
    shutdown: CancellationToken,
    dispatcher: Option<tokio::task::JoinHandle<()>>,
    _data: tempfile::TempDir,
}

impl Harness {
    /// An engine for `project`, with its dispatcher running, on a store in a new temporary
    /// folder.
    pub fn new(project: Project) -> Result<Harness, StoreError> {
        let data = tempfile::tempdir()
            .map_err(|e| StoreError::Db(format!("cannot create a temporary folder: {e}")))?;
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(data.path())?);
        let clock = Arc::new(ManualClock::new(START_MS));
        let config = EngineConfig {
            // Loopback servers started by the test are where steps call.
            allow_networks: vec!["127.0.0.0/8".parse().expect("a network")],
            ..EngineConfig::default()
        };
        let engine =
            Arc::new(Engine::new(store, Arc::new(project), config).with_clock(clock.clone()));
        let shutdown = CancellationToken::new();
        let dispatcher = tokio::spawn(engine.clone().run(shutdown.clone(), Duration::ZERO));
        Ok(Harness {
            engine,
            clock,
            shutdown,
            dispatcher: Some(dispatcher),
            _data: data,
        })
    }

    /// [`Harness::new`] for the project in `dir` (`flows/`, `connections/`); panics with the
    /// loader's diagnostics when it does not load.
    pub fn load(dir: &Path) -> Harness {
        let project = crate::flow::load_project(dir).unwrap_or_else(|d| panic!("{d}"));
        Harness::new(project).expect("a temporary store")
    }

    /// Starts a run of `flow` with `body` as the event's body, as `POST
    /// /api/v1/flows/{flow}/runs` does. Returns the run id.
    pub async fn start(&self, flow: &str, body: Json) -> Result<String, IngestError> {
        let flow = self
            .engine
            .project
            .flow(flow)
            .cloned()
            .unwrap_or_else(|| panic!("no flow `{flow}` in the project"));
        let now = self.clock_now();
        let path = format!("/api/v1/flows/{}/runs", flow.id);
        let event = crate::trigger::event(
            body,
            Default::default(),
            Default::default(),
            "POST",
            &path,
            now,
        );
        match self
            .engine
            .ingest(&flow, Event::from_json(&event), now, None)
            .await?
        {
            Ingested::Created(id) | Ingested::Duplicate(id) => Ok(id),
        }
    }

    pub fn clock_now(&self) -> i64 {
        use super::Clock;
        self.clock.now_ms()
    }

    /// Moves time on by `by`, then [`Harness::settle`]s.
    pub async fn advance(&self, by: Duration) {
        self.clock.advance(by);
        self.engine.wake();
        self.settle().await;
    }

    /// Waits until nothing more happens at the current time: no run executes, and no queued
    /// run is due. What is due later waits for [`Harness::advance`].
    pub async fn settle(&self) {
        // Idle twice in a row: a run that just ended may have queued work (a wake-up) that the
        // dispatcher has not claimed yet; the second look sees it.
        let mut idle_looks = 0;
        loop {
            // A run claimed but not yet spawned is `running` in the store with no task yet.
            let running = self
                .engine
                .store
                .list_runs(crate::store::RunFilter {
                    statuses: vec![crate::store::RunStatus::Running],
                    limit: 1,
                    ..Default::default()
                })
                .await
                .unwrap_or_else(|e| panic!("the store failed: {e}"));
            let idle = self.engine.tasks.is_empty()
                && running.is_empty()
                && match self.engine.store.next_due().await {
                    Ok(Some(at)) => at > self.clock_now(),
                    Ok(None) => true,
                    Err(e) => panic!("the store failed: {e}"),
                };
            if idle {
                idle_looks += 1;
                if idle_looks == 2 {
                    return;
                }
            } else {
                idle_looks = 0;
                self.engine.wake();
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// The run as stored.
    pub async fn run(&self, id: &str) -> RunDetail {
        self.engine
            .store
            .get_run(id)
            .await
            .expect("the store answers")
            .unwrap_or_else(|| panic!("no run {id}"))
    }

    /// Replays one failed or dead run, then settles.
    pub async fn replay(&self, id: &str, from: ReplayFrom) -> Result<(), StoreError> {
        self.engine
            .replay(ReplaySelect::One(id.to_owned()), from)
            .await?;
        self.settle().await;
        Ok(())
    }

    /// Stops the dispatcher; runs still executing are released to the queue.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(d) = self.dispatcher.take() {
            let _ = d.await;
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
