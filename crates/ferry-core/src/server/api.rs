//! The management API under `/api/v1`: flows, runs, dead letters, secrets, keys, audit.
//! `Authorization: Bearer KEY`; each route names the role it needs.

use std::sync::Arc;

use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, AppState};
use crate::access::{Caller, Role};
use crate::store::{
    ReplayFrom, ReplaySelect, RunDetail, RunFilter, RunStatus, RunSummary, StepRow,
};
use crate::util::{parse_time, rfc3339};

pub(super) fn router(state: Arc<AppState>) -> Router<Arc<AppState>> {
    Router::new()
        .route("/flows", get(list_flows))
        .route("/flows/{id}/runs", post(start_run))
        .route("/runs", get(list_runs))
        .route("/runs/{id}", get(get_run))
        .route("/runs/{id}/replay", post(replay_one))
        .route("/dlq", get(list_dlq))
        .route("/dlq/replay", post(replay_bulk))
        .route("/secrets", get(list_secrets))
        .route("/secrets/rotate-master", post(rotate_master))
        .route(
            "/secrets/{name}",
            axum::routing::put(set_secret).delete(delete_secret),
        )
        .route("/keys", get(list_keys).post(create_key))
        .route("/keys/{id}", axum::routing::delete(revoke_key))
        .route("/audit", get(list_audit))
        .route("/erase", post(erase))
        .route("/signals", get(list_signals))
        .route("/signals/{name}/{key}", post(send_signal))
        .fallback(|| async { ApiError::NotFound("no such API route".into()) })
        .method_not_allowed_fallback(|method: axum::http::Method| async move {
            // axum adds the route's own `Allow` header to this answer.
            ApiError::MethodNotAllowed {
                method: method.to_string(),
                allowed: String::new(),
            }
        })
        .with_state(state)
}

impl FromRequestParts<Arc<AppState>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, ApiError> {
        // The scheme is case-insensitive (RFC 9110 §11.1).
        let given = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, key)| key)
            .ok_or(ApiError::Unauthorized)?;
        Ok(state.access.authenticate(given).await?)
    }
}

/// JSON bodies whose errors are problem+json like the rest.
struct Body<T>(T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> axum::extract::FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|_| ApiError::TooLarge(2 * 1024 * 1024))?;
        if bytes.is_empty() {
            return serde_json::from_value(json!({}))
                .map(Body)
                .map_err(|e| ApiError::BadRequest(format!("invalid body: {e}")));
        }
        serde_json::from_slice(&bytes)
            .map(Body)
            .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))
    }
}

async fn list_flows(
    caller: Caller,
    State(state): State<Arc<AppState>>,
) -> Result<Json<Value>, ApiError> {
    caller.require(Role::Viewer)?;
    let flows: Vec<Value> = state
        .engine
        .project
        .flows
        .iter()
        .map(|f| {
            let trigger = match f.webhook() {
                Some(w) => json!({
                    "kind": "webhook",
                    "path": w.path,
                    "method": w.method,
                    "verify": w.verifier.as_ref().map(|v| v.scheme()),
                    "rejected_requests": state.rejections(&f.id),
                }),
                None => json!({"kind": "manual"}),
            };
            json!({
                "id": f.id,
                "version": f.version,
                "file": f.file,
                "trigger": trigger,
                "steps": f.steps.iter().map(|s| json!({"id": s.id, "kind": s.kind})).collect::<Vec<_>>(),
            })
        })
        .collect();
    Ok(Json(json!({ "flows": flows })))
}

async fn start_run(
    caller: Caller,
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    Body(body): Body<Value>,
) -> Result<Response, ApiError> {
    caller.require(Role::Operator)?;
    let flow = state
        .engine
        .project
        .flow(&id)
        .cloned()
        .ok_or_else(|| ApiError::NotFound(format!("no flow `{id}`")))?;
    let now = state.engine.clock.now_ms();
    let path = format!("/api/v1/flows/{id}/runs");
    let event = crate::trigger::event(
        body,
        Default::default(),
        Default::default(),
        "POST",
        &path,
        now,
    );
    let (code, run_id) = super::webhook::ingest(&state, &flow, event, now).await?;
    state
        .access
        .audit(
            &caller,
            "flow.trigger",
            &id,
            Some(json!({ "run_id": run_id })),
        )
        .await;
    Ok((code, Json(json!({ "run_id": run_id }))).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    flow: Option<String>,
    status: Option<String>,
    since: Option<String>,
    until: Option<String>,
    before: Option<String>,
    limit: Option<u32>,
}

impl ListQuery {
    fn filter(self) -> Result<RunFilter, ApiError> {
        let statuses = match &self.status {
            None => Vec::new(),
            Some(s) => s
                .split(',')
                .map(|x| {
                    RunStatus::parse(x.trim()).ok_or_else(|| {
                        ApiError::BadRequest(format!("unknown status `{x}`; expected queued, running, succeeded, failed or dead"))
                    })
                })
                .collect::<Result<_, _>>()?,
        };
        let time = |v: &Option<String>, name: &str| -> Result<Option<i64>, ApiError> {
            v.as_deref()
                .map(|s| {
                    parse_time(s).ok_or_else(|| {
                        ApiError::BadRequest(format!(
                            "invalid `{name}` `{s}`; expected RFC 3339, e.g. 2026-11-25T08:00:00Z"
                        ))
                    })
                })
                .transpose()
        };
        Ok(RunFilter {
            since_ms: time(&self.since, "since")?,
            until_ms: time(&self.until, "until")?,
            flow: self.flow,
            statuses,
            before: self.before,
            limit: self.limit.unwrap_or(50).clamp(1, 1000),
        })
    }
}

fn query<T: serde::de::DeserializeOwned>(
    q: Result<Query<T>, axum::extract::rejection::QueryRejection>,
) -> Result<T, ApiError> {
    q.map(|Query(q)| q)
        .map_err(|e| ApiError::BadRequest(e.body_text()))
}

pub(crate) fn summary_json(s: &RunSummary) -> Value {
    json!({
        "id": s.id,
        "flow": s.flow,
        "flow_version": s.flow_version,
        "status": s.status,
        "attempt": s.attempt,
        "created_at": rfc3339(s.created_at_ms),
        "updated_at": rfc3339(s.updated_at_ms),
        "error": s.error,
    })
}

fn step_json(r: &StepRow) -> Value {
    let mut o = json!({
        "id": crate::engine::StepPath::step_id(&r.path),
        "path": r.path,
        "status": r.status,
        "attempts": r.attempts,
        "started_at": rfc3339(r.started_at_ms),
        "finished_at": rfc3339(r.finished_at_ms),
    });
    if let Some(e) = &r.error {
        o["error"] = e.clone();
    }
    if r.error.is_none() || r.output.is_some() {
        o["output"] = r.output.clone().unwrap_or(Value::Null);
    }
    if let Some(req) = &r.request {
        o["request"] = req.clone();
    }
    if let Some(resp) = &r.response {
        o["response"] = resp.clone();
    }
    o
}

pub(crate) fn run_json(d: &RunDetail) -> Value {
    let mut o = summary_json(&d.summary);
    o["event"] = d.event.clone();
    o["steps"] = Value::Array(d.steps.iter().map(step_json).collect());
    o
}

async fn list_runs(
    caller: Caller,
    State(state): State<Arc<AppState>>,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    caller.require(Role::Viewer)?;
    let filter = query(q)?.filter()?;
    page(&state, filter).await
}

/// One page of runs, newest first; `next` is the cursor for the following page (`before`).
async fn page(state: &AppState, filter: RunFilter) -> Result<Json<Value>, ApiError> {
    let limit = filter.limit as usize;
    // One more than asked: `next` is set only when another page really exists.
    let mut runs = state
        .engine
        .store
        .list_runs(RunFilter {
            limit: filter.limit + 1,
            ..filter
        })
        .await?;
    let next = if runs.len() > limit {
        runs.truncate(limit);
        runs.last().map(|r| r.id.clone())
    } else {
        None
    };
    Ok(Json(
        json!({ "runs": runs.iter().map(summary_json).collect::<Vec<_>>(), "next": next }),
    ))
}

async fn list_dlq(
    caller: Caller,
    State(state): State<Arc<AppState>>,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    caller.require(Role::Viewer)?;
    let mut filter = query(q)?.filter()?;
    if let Some(s) = filter
        .statuses
        .iter()
        .find(|s| !matches!(s, RunStatus::Failed | RunStatus::Dead))
    {
        return Err(ApiError::BadRequest(format!(
            "dead letters are `failed` or `dead` runs; `{}` is neither (use /api/v1/runs)",
            s.as_str()
        )));
    }
    if filter.statuses.is_empty() {
        filter.statuses = vec![RunStatus::Failed, RunStatus::Dead];
    }
    page(&state, filter).await
}

async fn get_run(
    caller: Caller,
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require(Role::Viewer)?;
    match state.engine.store.get_run(&id).await? {
        Some(mut d) => {
            if let Some(flow) = state.engine.project.flow(&d.summary.flow) {
                crate::engine::redact_detail(flow, &mut d);
            }
            Ok(Json(run_json(&d)))
        }
        None => Err(ApiError::NotFound(format!("no run `{id}`"))),
    }
}

/// `POST /runs/{id}/replay`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ReplayOneBody {
    #[serde(default)]
    from: Option<String>,
}

/// `POST /dlq/replay`: which dead letters, and from where.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ReplayBody {
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    flow: Option<String>,
    #[serde(default)]
    since: Option<String>,
    #[serde(default)]
    until: Option<String>,
    #[serde(default)]
    limit: Option<u32>,
}

fn replay_from(s: Option<&str>) -> Result<ReplayFrom, ApiError> {
    match s.unwrap_or("failed") {
        "failed" => Ok(ReplayFrom::Failed),
        "start" => Ok(ReplayFrom::Start),
        other => Err(ApiError::BadRequest(format!(
            "unknown `from` `{other}`; expected `failed` or `start`"
        ))),
    }
}

async fn replay_one(
    caller: Caller,
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    Body(b): Body<ReplayOneBody>,
) -> Result<Response, ApiError> {
    caller.require(Role::Operator)?;
    let from = replay_from(b.from.as_deref())?;
    let ids = state
        .engine
        .replay(ReplaySelect::One(id.clone()), from)
        .await
        .map_err(|e| match e {
            crate::store::StoreError::Conflict(m) if m.starts_with("no run") => {
                ApiError::NotFound(m)
            }
            other => other.into(),
        })?;
    state
        .access
        .audit(&caller, "run.replay", &id, Some(json!({ "from": b.from })))
        .await;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "replayed": ids.len(), "run_ids": ids })),
    )
        .into_response())
}

async fn replay_bulk(
    caller: Caller,
    State(state): State<Arc<AppState>>,
    Body(b): Body<ReplayBody>,
) -> Result<Response, ApiError> {
    caller.require(Role::Operator)?;
    let from = replay_from(b.from.as_deref())?;
    if b.flow.is_none() && b.since.is_none() && b.until.is_none() {
        return Err(ApiError::BadRequest(
            "select the dead letters to replay with `flow`, `since` or `until`".into(),
        ));
    }
    let selector = json!({ "flow": b.flow, "since": b.since, "until": b.until, "from": b.from });
    let filter = ListQuery {
        flow: b.flow,
        status: None,
        since: b.since,
        until: b.until,
        before: None,
        limit: None,
    }
    .filter()?;
    let filter = RunFilter {
        limit: b.limit.unwrap_or(10_000),
        ..filter
    };
    let ids = state
        .engine
        .replay(ReplaySelect::Matching(filter), from)
        .await?;
    state
        .access
        .audit(
            &caller,
            "dlq.replay",
            "runs",
            Some(json!({ "selector": selector, "replayed": ids.len() })),
        )
        .await;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "replayed": ids.len(), "run_ids": ids })),
    )
        .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretBody {
    value: String,
}

async fn list_secrets(
    caller: Caller,
    State(state): State<Arc<AppState>>,
) -> Result<Json<Value>, ApiError> {
    caller.require(Role::Admin)?;
    let items = state.engine.secrets.list().await?;
    Ok(Json(json!({ "secrets": items })))
}

async fn set_secret(
    caller: Caller,
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    Body(b): Body<SecretBody>,
) -> Result<Response, ApiError> {
    caller.require(Role::Admin)?;
    let value = zeroize::Zeroizing::new(b.value);
    let before = state.engine.secrets.get(&name).is_some();
    let meta = state.engine.secrets.set(&name, value).await?;
    state
        .access
        .audit(
            &caller,
            "secret.set",
            &name,
            Some(json!({ "before": before.then_some("***"), "after": "***", "version": meta.version })),
        )
        .await;
    let code = if before {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((code, Json(json!(meta))).into_response())
}

async fn delete_secret(
    caller: Caller,
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require(Role::Admin)?;
    if !state.engine.secrets.remove(&name).await? {
        return Err(ApiError::NotFound(format!("no secret `{name}`")));
    }
    state
        .access
        .audit(&caller, "secret.delete", &name, None)
        .await;
    Ok(StatusCode::NO_CONTENT)
}

async fn rotate_master(
    caller: Caller,
    State(state): State<Arc<AppState>>,
) -> Result<Json<Value>, ApiError> {
    caller.require(Role::Admin)?;
    let n = state.engine.secrets.rotate_master(&state.data_dir).await?;
    state
        .access
        .audit(
            &caller,
            "secret.rotate-master",
            "secrets",
            Some(json!({ "resealed": n })),
        )
        .await;
    Ok(Json(json!({ "resealed": n })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyBody {
    name: String,
    role: String,
}

async fn create_key(
    caller: Caller,
    State(state): State<Arc<AppState>>,
    Body(b): Body<KeyBody>,
) -> Result<Response, ApiError> {
    caller.require(Role::Admin)?;
    let role = Role::parse(&b.role).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "unknown role `{}`; expected admin, operator or viewer",
            b.role
        ))
    })?;
    let (info, key) = state.access.create_key(&caller, &b.name, role).await?;
    let mut body = json!(info);
    body["key"] = Value::String(key);
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

async fn list_keys(
    caller: Caller,
    State(state): State<Arc<AppState>>,
) -> Result<Json<Value>, ApiError> {
    caller.require(Role::Admin)?;
    Ok(Json(json!({ "keys": state.access.list_keys().await? })))
}

async fn revoke_key(
    caller: Caller,
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require(Role::Admin)?;
    if state.access.revoke_key(&caller, &id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound(format!("no active key `{id}`")))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    limit: Option<u32>,
    before: Option<i64>,
}

async fn list_audit(
    caller: Caller,
    State(state): State<Arc<AppState>>,
    q: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    caller.require(Role::Admin)?;
    let Query(q) =
        q.map_err(|e| ApiError::BadRequest(format!("invalid query: {}", e.body_text())))?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let mut entries = state.access.list_audit(limit + 1, q.before).await?;
    let next = if entries.len() > limit as usize {
        entries.truncate(limit as usize);
        entries.last().and_then(|e| e["seq"].as_i64())
    } else {
        None
    };
    Ok(Json(json!({ "entries": entries, "next_before": next })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EraseBody {
    subject: String,
}

/// `POST /signals/{name}/{key}`: the body (any JSON) is the signal's data; it resumes the
/// runs waiting for it, or is kept for a wait that registers within the lookback. An
/// `Idempotency-Key` header makes a resend count once.
async fn send_signal(
    caller: Caller,
    State(state): State<Arc<AppState>>,
    Path((name, key)): Path<(String, String)>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    caller.require(Role::Operator)?;
    if !crate::flow::control::valid_signal_name(&name) {
        return Err(ApiError::BadRequest(format!(
            "invalid signal name `{name}`; use letters, digits, `-`, `_` and `.`"
        )));
    }
    if key.is_empty() || key.len() > 512 {
        return Err(ApiError::BadRequest(
            "the signal key must have 1 to 512 characters".into(),
        ));
    }
    if body.len() > 1024 * 1024 {
        return Err(ApiError::BadRequest(
            "a signal's data is at most 1 MiB".into(),
        ));
    }
    let data: Value = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::BadRequest(format!("the body is not JSON: {e}")))?
    };
    let origin = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(|k| format!("api:{k}"));
    let resumed = state.engine.signal(&name, &key, &data, origin).await?;
    state
        .access
        .audit(
            &caller,
            "signal.send",
            &format!("{name}/{key}"),
            Some(json!({ "resumed": resumed })),
        )
        .await;
    let kept = crate::flow::control::SIGNAL_KEEP.as_secs();
    Ok((
        axum::http::StatusCode::ACCEPTED,
        Json(json!({
            "signal": name,
            "key": key,
            "resumed": resumed,
            "kept_for_s": if resumed == 0 { Some(kept) } else { None },
        })),
    )
        .into_response())
}

/// `GET /signals`: signals kept for a wait that has not registered yet.
async fn list_signals(
    caller: Caller,
    State(state): State<Arc<AppState>>,
) -> Result<Response, ApiError> {
    caller.require(Role::Viewer)?;
    let now = state.engine.clock.now_ms();
    let kept = state.engine.store.kept_signals(now, 100).await?;
    let signals: Vec<Value> = kept
        .into_iter()
        .map(|s| {
            json!({
                "signal": s.signal,
                "key": s.key,
                "data": s.data,
                "received_at": rfc3339(s.received_at_ms),
                "expires_at": rfc3339(s.expires_at_ms),
            })
        })
        .collect();
    Ok(Json(json!({ "signals": signals })).into_response())
}

/// `POST /erase`: deletes every stored payload that mentions `subject` (GDPR erasure).
async fn erase(
    caller: Caller,
    State(state): State<Arc<AppState>>,
    Body(b): Body<EraseBody>,
) -> Result<Json<Value>, ApiError> {
    caller.require(Role::Admin)?;
    let report = crate::access::erase(&*state.engine.store, &caller, &b.subject)
        .await
        .map_err(|e| match e {
            crate::access::AccessError::Invalid(m) => ApiError::BadRequest(m),
            crate::access::AccessError::Store(s) => s.into(),
        })?;
    Ok(Json(report))
}
