//! `POST <webhook path>`: store the event durably, answer 202 with its run id.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value as Json, json};

use super::{ApiError, AppState};
use crate::engine::{IngestError, Reply};
use crate::expr::Reads;
use crate::flow::Flow;
use crate::store::{Ingested, RunStatus};
use crate::trigger::Event;
use crate::trigger::webhook::{BodyError, MASKED_HEADERS, parse_body, parse_body_fast};

pub(super) async fn receive(
    State(state): State<Arc<AppState>>,
    req: Request<Body>,
) -> Result<Response, ApiError> {
    let path = req.uri().path().to_owned();
    let Some((flows, params)) = state.route(&path) else {
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
    let mut message_id = None;
    let mut verified = None;
    if let Some(verifier) = flow.webhook().and_then(|w| w.verifier.as_ref()) {
        let inbound = crate::verify::Inbound {
            headers: &parts.headers,
            query: parts.uri.query(),
            body: &bytes,
        };
        let secrets = &state.engine.secrets;
        let resolve = |v: &crate::flow::model::ValueSource| secrets.resolve(v);
        let now_unix = state.engine.clock.now_ms() / 1000;
        match verifier
            .verify(&inbound, &resolve, now_unix, &state.engine.http)
            .await
        {
            Ok(v) => {
                if v.secret_index.is_some_and(|i| i > 0) {
                    tracing::debug!(flow = %flow.id, secret = v.secret_index, "verified with a secret other than the first (rotation)");
                }
                verified = Some(json!({
                    "scheme": verifier.scheme(),
                    "subject": v.subject,
                    "claims": v.claims,
                }));
            }
            Err(rejection) => {
                state.count_rejection(&flow.id);
                // Fail closed (SPEC §8.7): a verifier that cannot work refuses everything, says
                // why in the log, and tells the sender only that it should try again later.
                if rejection.is_server_fault() {
                    tracing::error!(flow = %flow.id, reason = %rejection, "webhook verification cannot run; refusing every request");
                    return Err(ApiError::VerifierUnavailable);
                }
                tracing::warn!(flow = %flow.id, reason = %rejection, "webhook request failed verification");
                return Err(ApiError::VerificationFailed(format!(
                    "verification failed: {rejection}"
                )));
            }
        }
        message_id = verifier.message_id(&inbound);
    }
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let max_depth = state.limits.max_depth;
    let bad_body = |e: BodyError| match e {
        BodyError::UnsupportedMediaType(_) => ApiError::UnsupportedMediaType(e.to_string()),
        other => ApiError::BadRequest(other.to_string()),
    };

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
    let event = match verified {
        // Path parameters: the event is built as a tree, with `params` beside `path`.
        None if params.is_some() => {
            let body = parse_body(content_type, &bytes, max_depth).map_err(bad_body)?;
            let mut event = crate::trigger::event(body, headers, query, &method, &path, now);
            if let (Json::Object(map), Some(p)) = (&mut event, params) {
                map.insert("params".into(), Json::Object(p));
            }
            Event::from_json(&event)
        }
        None => {
            let reads = &flow.event_reads;
            let body_reads = reads.get("body").unwrap_or(Reads::nothing());
            let body =
                parse_body_fast(content_type, &bytes, max_depth, body_reads).map_err(bad_body)?;
            crate::trigger::event_parts(body, &headers, &query, &method, &path, now, reads)
        }
        // The event is scrubbed and amended, so it is built as a tree (from the text: jq
        // values would hold an integer beyond i64 as a float).
        Some(v) => {
            let body = parse_body(content_type, &bytes, max_depth).map_err(bad_body)?;
            let mut event = crate::trigger::event(body, headers, query, &method, &path, now);
            // A key or token the sender put in a header or the query is not stored.
            state.engine.secrets.scrub_json(&mut event);
            // Who the verifier says sent it: `.event.verified.subject` (JWT `sub`, basic user).
            if let Json::Object(map) = &mut event {
                map.insert("verified".into(), v);
                if let Some(p) = params {
                    map.insert("params".into(), Json::Object(p));
                }
            }
            Event::from_json(&event)
        }
    };
    if let Some(sync) = flow.webhook().and_then(|w| w.sync) {
        return answer_sync(&state, &flow, event, now, message_id, sync).await;
    }
    let (code, run_id) = ingest_with_id(&state, &flow, event, now, message_id).await?;
    Ok((code, axum::Json(json!({ "run_id": run_id }))).into_response())
}

/// `response: sync`: the event is stored like any other, then the caller waits for the run's
/// `respond` step (on this node), at most the webhook's `timeout`.
async fn answer_sync(
    state: &AppState,
    flow: &Arc<Flow>,
    event: Event,
    now: i64,
    message_id: Option<String>,
    sync: crate::flow::SyncResponse,
) -> Result<Response, ApiError> {
    let (ingested, rx) = match state.engine.ingest_sync(flow, event, now, message_id).await {
        Ok(r) => r,
        Err(IngestError::Dedupe(m)) => {
            return Err(ApiError::BadRequest(format!(
                "dedupe expression failed: {m}"
            )));
        }
        Err(IngestError::Store(e)) => return Err(e.into()),
    };
    let run_id = match ingested {
        Ingested::Created(id) => id,
        Ingested::Duplicate(id) => {
            return Ok((StatusCode::OK, axum::Json(json!({ "run_id": id }))).into_response());
        }
    };
    let problem = |status: StatusCode, slug: &str, detail: String| {
        let body = json!({
            "type": format!("https://ferry.dev/problems/{slug}"),
            "title": status.canonical_reason().unwrap_or("error"),
            "status": status.as_u16(),
            "detail": detail,
            "run_id": run_id,
        });
        let mut resp = (status, body.to_string()).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/problem+json"),
        );
        resp
    };
    match tokio::time::timeout(sync.timeout, rx).await {
        Ok(Ok(Reply::Respond {
            status,
            headers,
            body,
        })) => {
            let mut resp = Response::new(Body::from(body));
            *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            for (name, value) in headers {
                if let (Ok(n), Ok(v)) = (
                    header::HeaderName::from_bytes(name.as_bytes()),
                    header::HeaderValue::from_str(&value),
                ) {
                    resp.headers_mut().append(n, v);
                }
            }
            if let Ok(v) = header::HeaderValue::from_str(&run_id) {
                resp.headers_mut().insert("ferry-run-id", v);
            }
            Ok(resp)
        }
        Ok(Ok(Reply::Ended { status, error })) => {
            let why = error
                .as_ref()
                .and_then(|e| e["message"].as_str())
                .map(|m| format!(": {m}"))
                .unwrap_or_default();
            let (code, detail) = match status {
                RunStatus::Succeeded => (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("run {run_id} ended without reaching a `respond` step"),
                ),
                other => (
                    StatusCode::BAD_GATEWAY,
                    format!("run {run_id} {} before it responded{why}", other.as_str()),
                ),
            };
            Ok(problem(code, "run-did-not-respond", detail))
        }
        // Too slow (or its node let go of it): the run goes on either way.
        Ok(Err(_)) | Err(_) => {
            state.engine.forget_reply(&run_id);
            if sync.accept_on_timeout {
                let url = format!("/api/v1/runs/{run_id}");
                let mut resp = (
                    StatusCode::ACCEPTED,
                    axum::Json(json!({ "run_id": run_id, "status_url": url })),
                )
                    .into_response();
                if let Ok(v) = header::HeaderValue::from_str(&url) {
                    resp.headers_mut().insert(header::LOCATION, v);
                }
                Ok(resp)
            } else {
                Ok(problem(
                    StatusCode::GATEWAY_TIMEOUT,
                    "response-timeout",
                    format!(
                        "run {run_id} did not respond within {}; it goes on (GET /api/v1/runs/{run_id})",
                        humantime::format_duration(sync.timeout)
                    ),
                ))
            }
        }
    }
}

/// Stores an event for `flow` (deduplicated when the flow says so) and wakes the engine.
pub(super) async fn ingest(
    state: &AppState,
    flow: &Arc<Flow>,
    event: Json,
    now: i64,
) -> Result<(StatusCode, String), ApiError> {
    ingest_with_id(state, flow, Event::from_json(&event), now, None).await
}

/// [`ingest`], with the message id a verified sender gave (see [`crate::engine::Engine::ingest`]).
async fn ingest_with_id(
    state: &AppState,
    flow: &Arc<Flow>,
    event: Event,
    now: i64,
    message_id: Option<String>,
) -> Result<(StatusCode, String), ApiError> {
    match state.engine.ingest(flow, event, now, message_id).await {
        Ok(Ingested::Created(id)) => Ok((StatusCode::ACCEPTED, id)),
        Ok(Ingested::Duplicate(id)) => Ok((StatusCode::OK, id)),
        Err(IngestError::Dedupe(m)) => Err(ApiError::BadRequest(format!(
            "dedupe expression failed: {m}"
        ))),
        Err(IngestError::Store(e)) => Err(e.into()),
    }
}
