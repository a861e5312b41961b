//! Triggers: what turns the outside world into events. `webhook` parses inbound HTTP bodies
//! into the event shape of SPEC §6; `manual` events come from the API and `ferry run`.

pub mod webhook;

use jaq_json::Val;
use serde_json::{Map, Value as Json, json};

use crate::expr::Reads;

/// An event in the two forms the engine needs: the JSON text it is stored as, and jq values
/// for the expressions that run while it is ingested. Built once per inbound request.
pub struct Event {
    pub text: String,
    pub val: Val,
}

impl Event {
    /// From an event object (`trigger::event`, or one a verifier amended).
    pub fn from_json(event: &Json) -> Event {
        Event {
            text: event.to_string(),
            val: crate::expr::json_to_val(event),
        }
    }
}

/// A request body. JSON keeps the text it arrived as: it is stored as is (keys in the
/// sender's order, numbers as written) instead of being re-serialized.
pub enum Body<'a> {
    Json { text: &'a str, val: Val },
    Other(Json),
}

/// [`event`], without building a `serde_json` tree: the stored text is assembled around the
/// body's own text, and the jq value around its parsed value. Keys in the order `event`
/// gives them (alphabetical), so both builds read back alike. Of the jq value, only what
/// `reads` names is built (what a flow's expressions can read of `.event`).
pub fn event_parts(
    body: Body<'_>,
    headers: &Map<String, Json>,
    query: &Map<String, Json>,
    method: &str,
    path: &str,
    received_at_ms: i64,
    reads: &Reads,
) -> Event {
    let (body_text, body_val) = match body {
        Body::Json { text, val } => (std::borrow::Cow::Borrowed(text), val),
        Body::Other(v) => (
            std::borrow::Cow::Owned(v.to_string()),
            crate::expr::json_to_val(&v),
        ),
    };
    let received_at = crate::util::rfc3339(received_at_ms);
    let headers_text = serde_json::to_string(headers).expect("JSON maps serialize");
    let query_text = serde_json::to_string(query).expect("JSON maps serialize");
    let mut text =
        String::with_capacity(body_text.len() + headers_text.len() + query_text.len() + 128);
    let string = |s: &str| Json::String(s.to_owned()).to_string();
    for (key, value) in [
        ("{\"body\":", &*body_text),
        (",\"headers\":", &headers_text),
        (",\"method\":", &string(method)),
        (",\"path\":", &string(path)),
        (",\"query\":", &query_text),
        (",\"received_at\":", &string(&received_at)),
    ] {
        text.push_str(key);
        text.push_str(value);
    }
    text.push('}');
    // Only the parts the flow's expressions can read are built as jq values.
    let wanted = |k: &str| reads.get(k).is_some();
    let obj = |m: &Map<String, Json>| {
        Val::obj(
            m.iter()
                .map(|(k, v)| (Val::from(k.clone()), crate::expr::json_to_val(v)))
                .collect(),
        )
    };
    let mut fields = jaq_json::Map::default();
    let mut put = |k: &str, v: &dyn Fn() -> Val| {
        if wanted(k) {
            fields.insert(Val::from(k.to_owned()), v());
        }
    };
    put("body", &|| body_val.clone());
    put("headers", &|| obj(headers));
    put("method", &|| Val::from(method.to_owned()));
    put("path", &|| Val::from(path.to_owned()));
    put("query", &|| obj(query));
    put("received_at", &|| Val::from(received_at.clone()));
    let val = Val::obj(fields);
    Event { text, val }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    /// Both builds of an event store the same JSON and give expressions the same values.
    #[test]
    fn the_fast_build_reads_back_like_the_plain_one() {
        let raw = r#"{"z": 1, "a": {"b": [1, 2.5, "x\u00e9"]}, "n": null}"#;
        let mut headers = Map::new();
        headers.insert("content-type".into(), "application/json".into());
        let mut query = Map::new();
        query.insert("q".into(), "1".into());
        let val: Val = serde_json::from_str(raw).unwrap();
        let fast = event_parts(
            Body::Json { text: raw, val },
            &headers,
            &query,
            "POST",
            "/h",
            1_700_000_000_000,
            &Reads::All,
        );
        let body: Json = serde_json::from_str(raw).unwrap();
        let plain = Event::from_json(&event(
            body,
            headers,
            query,
            "POST",
            "/h",
            1_700_000_000_000,
        ));
        let fast_json: Json = serde_json::from_str(&fast.text).unwrap();
        let plain_json: Json = serde_json::from_str(&plain.text).unwrap();
        assert_eq!(fast_json, plain_json);
        assert_eq!(
            crate::expr::val_to_json(&fast.val),
            crate::expr::val_to_json(&plain.val)
        );
        // The body is stored as it came.
        assert!(
            fast.text.starts_with(r#"{"body":{"z": 1, "a""#),
            "{}",
            fast.text
        );
    }

    /// `ferry erase` finds a subject by its text as serde_json writes it (`\u00eb` unescaped,
    /// `/` bare), so a body that escapes more than that must not be stored as it came: a
    /// sender using Python's `json.dumps` (`\u00eb`) or PHP's `json_encode` (`\/`) would
    /// otherwise keep its runs out of reach of an erasure.
    #[test]
    fn a_body_with_other_escapes_is_stored_as_serde_json_writes_it() {
        let raw = br#"{"email": "zo\u00eb@example.com", "site": "https:\/\/shop.example\/zed", "n": "a\\u"}"#;
        let body =
            webhook::parse_body_fast(Some("application/json"), raw, 64, &Reads::All).unwrap();
        let event = event_parts(body, &Map::new(), &Map::new(), "POST", "/h", 0, &Reads::All);
        assert!(
            event.text.contains("zo\u{eb}@example.com"),
            "{}",
            event.text
        );
        assert!(
            event.text.contains("https://shop.example/zed"),
            "{}",
            event.text
        );
        assert_eq!(
            crate::expr::val_to_json(&event.val)["body"],
            json!({"email": "zo\u{eb}@example.com", "site": "https://shop.example/zed", "n": "a\\u"})
        );
        // Escapes serde_json writes too keep the body as it came.
        let raw = br#"{"a": "line\nbreak \"q\" \\u"}"#;
        let body =
            webhook::parse_body_fast(Some("application/json"), raw, 64, &Reads::All).unwrap();
        let event = event_parts(body, &Map::new(), &Map::new(), "POST", "/h", 0, &Reads::All);
        assert!(
            event.text.starts_with(r#"{"body":{"a": "line"#),
            "{}",
            event.text
        );
    }
}
