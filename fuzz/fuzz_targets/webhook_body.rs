//! Inbound webhook bodies, as the server receives them: any bytes under each supported content
//! type (JSON, form, text, XML), with the server's default nesting limit.

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;

use ferry_core::expr::Reads;
use ferry_core::trigger::Body;
use ferry_core::trigger::webhook::{BodyError, json_depth, parse_body, parse_body_fast};

/// `ferry serve --max-depth` default.
const MAX_DEPTH: usize = 64;

const CONTENT_TYPES: &[&str] = &[
    "application/json",
    "application/x-www-form-urlencoded",
    "text/plain",
    "application/xml",
    "text/xml",
    "application/soap+xml",
];

fuzz_target!(|data: &[u8]| {
    let depth = json_depth(data);
    for ct in CONTENT_TYPES {
        let parsed = parse_body(Some(ct), data, MAX_DEPTH);
        // The webhook's own path (the body's text kept, its jq value built directly) accepts
        // exactly what the plain one does, with the same value and the same error.
        match (&parsed, parse_body_fast(Some(ct), data, MAX_DEPTH, &Reads::All)) {
            (Ok(v), Ok(Body::Json { text, val })) => {
                // As expressions see it (a float without a fraction reads as an integer).
                let seen = |v: &Value| ferry_core::expr::val_to_json(&ferry_core::expr::json_to_val(v));
                assert_eq!(seen(v), ferry_core::expr::val_to_json(&val));
                assert_eq!(*v, serde_json::from_str::<Value>(text).unwrap());
            }
            (Ok(v), Ok(Body::Other(w))) => assert_eq!(*v, w),
            (Err(a), Err(b)) => assert_eq!(*a, b),
            (a, b) => panic!("plain {a:?}, fast {}", b.is_ok()),
        }
        // Built only in the parts a flow reads: refused alike, and what is built is what the
        // whole value holds at those keys.
        let whole = parse_body_fast(Some(ct), data, MAX_DEPTH, &Reads::All);
        let part = parse_body_fast(Some(ct), data, MAX_DEPTH, &READS);
        match (whole, part) {
            (Ok(Body::Json { val: w, .. }), Ok(Body::Json { val: p, .. })) => {
                let (w, p) = (ferry_core::expr::val_to_json(&w), ferry_core::expr::val_to_json(&p));
                assert_eq!(project(&w), p);
            }
            (Ok(Body::Other(_)), Ok(Body::Other(_))) => {}
            (Err(a), Err(b)) => assert_eq!(a, b),
            (a, b) => panic!("whole {}, in part {}", a.is_ok(), b.is_ok()),
        }
        if *ct == "application/json" {
            match &parsed {
                // For valid JSON the pre-parse count is exact, not just an upper bound.
                Ok(v) => assert_eq!(depth, nesting(v), "json_depth of a parsed body"),
                Err(BodyError::TooDeep(_)) => assert!(depth > MAX_DEPTH),
                Err(_) => {}
            }
        }
    }
});

/// `.a.b` and `.c` of a body.
static READS: std::sync::LazyLock<Reads> = std::sync::LazyLock::new(|| {
    let mut r = Reads::default();
    r.add(ferry_core::expr::Expr::compile(".a.b, .c").unwrap().reads());
    r
});

/// What `READS` keeps of a whole value: objects on the way hold only the keys read.
fn project(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut out = serde_json::Map::new();
            if let Some(a) = m.get("a") {
                out.insert(
                    "a".into(),
                    match a {
                        Value::Object(am) => Value::Object(
                            am.get("b").map(|b| ("b".to_owned(), b.clone())).into_iter().collect(),
                        ),
                        other => other.clone(),
                    },
                );
            }
            if let Some(c) = m.get("c") {
                out.insert("c".into(), c.clone());
            }
            Value::Object(out)
        }
        other => other.clone(),
    }
}

fn nesting(v: &Value) -> usize {
    match v {
        Value::Array(items) => 1 + items.iter().map(nesting).max().unwrap_or(0),
        Value::Object(map) => 1 + map.values().map(nesting).max().unwrap_or(0),
        _ => 0,
    }
}
