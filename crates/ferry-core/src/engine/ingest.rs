//! Events in, runs out: how an event becomes a stored run, and how a dead letter is queued
//! again. The HTTP handlers, `ferry run` and the test harness all come through here, so
//! none of them touches the store or the run's prepared state.

use std::sync::Arc;

use serde_json::Value as Json;

use super::Engine;
use crate::flow::Flow;
use crate::store::{Dedupe, Ingested, Lease, NewRun, ReplayFrom, ReplaySelect, StoreError};
use crate::trigger::Event;

/// Why an event was not stored.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The flow's `dedupe:` expression failed on this event: the sender's mistake (a 400).
    #[error("dedupe expression failed: {0}")]
    Dedupe(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Engine {
    /// Stores `event` as a new run of `flow` (deduplicated when the flow says so) and starts
    /// it. `message_id` is the id a verified sender gave (Standard Webhooks' `webhook-id`,
    /// GitHub's delivery id…): without a `dedupe:` of its own, the flow deduplicates on it, so
    /// a replayed signed message starts nothing. Returns once the run is durable.
    pub async fn ingest(
        self: &Arc<Self>,
        flow: &Arc<Flow>,
        event: Event,
        now: i64,
        message_id: Option<String>,
    ) -> Result<Ingested, IngestError> {
        self.ingest_with(flow, event, now, message_id, None).await
    }

    /// [`Engine::ingest`] for a `response: sync` webhook: the receiver gets the run's
    /// `respond` answer, or its end when it ends without one. For a duplicate, nothing is
    /// sent (the caller answers as for any duplicate).
    pub async fn ingest_sync(
        self: &Arc<Self>,
        flow: &Arc<Flow>,
        event: Event,
        now: i64,
        message_id: Option<String>,
    ) -> Result<(Ingested, tokio::sync::oneshot::Receiver<super::Reply>), IngestError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let ingested = self
            .ingest_with(flow, event, now, message_id, Some(tx))
            .await?;
        Ok((ingested, rx))
    }

    async fn ingest_with(
        self: &Arc<Self>,
        flow: &Arc<Flow>,
        event: Event,
        now: i64,
        message_id: Option<String>,
        reply: Option<tokio::sync::oneshot::Sender<super::Reply>>,
    ) -> Result<Ingested, IngestError> {
        let dedupe = self.dedupe(flow, &event, now, message_id).await?;
        // The flow's leading steps that only compute run now, and their results go into the
        // same write as the event: a flow of such steps is done in one write.
        let run_id = crate::util::new_run_id();
        let waits = reply.is_some();
        if let Some(tx) = reply {
            // Before the run can start: its `respond` finds the caller.
            self.expect_reply(&run_id, tx);
        }
        let Event {
            text: event_text,
            val: event,
        } = event;
        let mut prepared = self.prepare(flow, &run_id, event, &event_text).await;
        // With a free worker here, a run that goes on is stored already leased to this node
        // and goes on at once: one write instead of an insert plus a claim.
        let permit = if prepared.finished() {
            None
        } else {
            self.reserve()
        };
        let lease = permit.as_ref().map(|_| Lease {
            owner: self.owner.clone(),
            until_ms: self.lease_until(now),
        });
        let run = NewRun {
            id: run_id.clone(),
            flow: flow.id.clone(),
            flow_version: flow.version.clone(),
            event: prepared.redacted_event.take().unwrap_or(event_text),
            dedupe,
            now_ms: now,
            lease,
            steps: std::mem::take(&mut prepared.rows),
            update: prepared.update.clone(),
        };
        let update = prepared.update.clone();
        let ingested = match self.store.ingest(run).await {
            Ok(i) => i,
            Err(e) => {
                if waits {
                    self.forget_reply(&run_id);
                }
                return Err(e.into());
            }
        };
        if waits && let Ingested::Duplicate(_) = &ingested {
            self.forget_reply(&run_id);
        }
        if let Ingested::Created(id) = &ingested {
            if prepared.finished() {
                if waits && let crate::store::RunUpdate::Finish { status, error } = update {
                    self.reply(id, super::Reply::Ended { status, error });
                }
                self.count_finished();
            } else {
                match permit {
                    Some(permit) => self.start_prepared(flow.clone(), id.clone(), prepared, permit),
                    None => self.wake(),
                }
            }
        }
        Ok(ingested)
    }

    /// The dedupe key of `event`: the flow's `dedupe:` expression, else the sender's message
    /// id; none when the expression yields null or "".
    async fn dedupe(
        &self,
        flow: &Flow,
        event: &Event,
        now: i64,
        message_id: Option<String>,
    ) -> Result<Option<Dedupe>, IngestError> {
        let Some(w) = flow.webhook() else {
            return Ok(None);
        };
        let expires_at_ms = now + w.dedupe_window.as_millis() as i64;
        let Some(expr) = &w.dedupe else {
            return Ok(message_id.map(|id| Dedupe {
                key: format!("message-id:{id}"),
                expires_at_ms,
            }));
        };
        let ctx = crate::expr::event_context(&event.val);
        let key = crate::expr::eval_value(expr, &ctx, self.config.expr_timeout)
            .await
            .map_err(|e| IngestError::Dedupe(e.to_string()))?;
        let key = match key {
            Json::Null => None,
            Json::String(s) if s.is_empty() => None,
            Json::String(s) => Some(s),
            other => Some(other.to_string()),
        };
        Ok(key.map(|key| Dedupe { key, expires_at_ms }))
    }

    /// Queues failed or dead runs again (`from` the failed step or the start) and wakes the
    /// dispatcher. Returns the ids queued.
    pub async fn replay(
        &self,
        select: ReplaySelect,
        from: ReplayFrom,
    ) -> Result<Vec<String>, StoreError> {
        let ids = self.store.replay(select, from, self.clock.now_ms()).await?;
        if !ids.is_empty() {
            self.wake();
        }
        Ok(ids)
    }
}
