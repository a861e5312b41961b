//! Triggers: what turns the outside world into events. `webhook` parses inbound HTTP bodies
//! into the event shape of SPEC §6; `manual` events come from the API and `ferry run`.

pub mod webhook;

use serde_json::{Map, Value as Json, json};

/// The event object every expression sees as `.event`.
pub fn event(
    body: Json,
    headers: Map<String, Json>,
    query: Map<String, Json>,
    method: &str,
    path: &str,
    received_at_ms: i64,
) -> Json {
    json!({
        "body": body,
        "headers": headers,
        "query": query,
        "method": method,
        "path": path,
        "received_at": crate::util::rfc3339(received_at_ms),
    })
}
