//! `POST <webhook path>`: store the event durably, answer 202 with its run id.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value as Json, json};

use super::{ApiError, AppState};
use crate::flow::Flow;
use crate::store::{ClaimedRun, Dedupe, Ingested, Lease, NewRun};
use crate::trigger::webhook::{BodyError, MASKED_HEADERS, parse_body};

pub(super) async fn receive(
    State(state): State<Arc<AppState>>,
    req: Request<Body>,
) -> Result<Response, ApiError> {
    let path = req.uri().path().to_owned();
    let Some(flows) = state.hooks.get(&path) else {
        return Err(ApiError::NotFound(format!("no webhook at `{path}`")));
    };
    let method = req.method().as_str().to_owned();
    let Some(flow) = flows
        .iter()
        .find(|f| f.webhook().is_some_and(|w| w.method == method))
        .cloned()
    else {
        let allowed = flows
            .iter()
            .filter_map(|f| f.webhook().map(|w| w.method.clone()))
            .collect::<Vec<_>>()
            .join(", ");
        return Err(ApiError::MethodNotAllowed { method, allowed });
    };
    let max = state.limits.max_body;
    if let Some(len) = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        && len > max
    {
        return Err(ApiError::TooLarge(max));
    }
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, max)
        .await
        .map_err(|_| ApiError::TooLarge(max))?;
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let body = parse_body(content_type, &bytes, state.limits.max_depth).map_err(|e| match e {
        BodyError::UnsupportedMediaType(_) => ApiError::UnsupportedMediaType(e.to_string()),
        other => ApiError::BadRequest(other.to_string()),
    })?;

    let mut headers = Map::new();
    for (name, value) in &parts.headers {
        let v = if MASKED_HEADERS.contains(&name.as_str()) {
            "***".to_owned()
        } else {
            String::from_utf8_lossy(value.as_bytes()).into_owned()
        };
        match headers.get_mut(name.as_str()) {
            Some(Json::String(prev)) => {
                prev.push_str(", ");
                prev.push_str(&v);
            }
            _ => {
                headers.insert(name.as_str().to_owned(), Json::String(v));
            }
        }
    }
    let query = parts
        .uri
        .query()
        .map(|q| crate::trigger::webhook::form_object(q.as_bytes()))
        .unwrap_or_default();
    let now = state.engine.clock.now_ms();
    let event = crate::trigger::event(body, headers, query, &method, &path, now);
    let (code, run_id) = ingest(&state, &flow, event, now).await?;
    Ok((code, axum::Json(json!({ "run_id": run_id }))).into_response())
}

/// Stores an event for `flow` (deduplicated when the flow says so) and wakes the engine.
pub(super) async fn ingest(
    state: &AppState,
    flow: &Arc<Flow>,
    event: Json,
    now: i64,
) -> Result<(StatusCode, String), ApiError> {
    let mut dedupe = None;
    if let Some(w) = flow.webhook()
        && let Some(expr) = &w.dedupe
    {
        let ctx = crate::expr::event_context(&event);
        let key = crate::expr::eval_value(expr, &ctx, state.engine.config.expr_timeout)
            .await
            .map_err(|e| ApiError::BadRequest(format!("dedupe expression failed: {e}")))?;
        let key = match key {
            Json::Null => None,
            Json::String(s) if s.is_empty() => None,
            Json::String(s) => Some(s),
            other => Some(other.to_string()),
        };
        dedupe = key.map(|key| Dedupe {
            key,
            expires_at_ms: now + w.dedupe_window.as_millis() as i64,
        });
    }
    // With a free worker here, the run is stored already leased to this node and starts at
    // once: one write instead of an insert plus a claim.
    let permit = state.engine.reserve();
    let lease = permit.as_ref().map(|_| Lease {
        owner: state.engine.owner.clone(),
        until_ms: state.engine.lease_until(now),
    });
    let event = event.to_string();
    let run_event = permit.as_ref().map(|_| event.clone());
    let run = NewRun {
        id: crate::util::new_run_id(),
        flow: flow.id.clone(),
        flow_version: flow.version.clone(),
        event,
        dedupe,
        now_ms: now,
        lease,
    };
    match state.engine.store.ingest(run).await? {
        Ingested::Created(id) => {
            match permit {
                Some(permit) => {
                    let run = ClaimedRun {
                        id: id.clone(),
                        flow: flow.id.clone(),
                        attempt: 1,
                        event: run_event.unwrap_or_default(),
                        steps: Vec::new(),
                    };
                    state.engine.start_claimed(run, permit);
                }
                None => state.engine.wake(),
            }
            Ok((StatusCode::ACCEPTED, id))
        }
        Ingested::Duplicate(id) => Ok((StatusCode::OK, id)),
    }
}
