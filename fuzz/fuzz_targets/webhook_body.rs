//! Inbound webhook bodies, as the server receives them: any bytes under each supported content
//! type (JSON, form, text, XML), with the server's default nesting limit.

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;

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
        match (&parsed, parse_body_fast(Some(ct), data, MAX_DEPTH)) {
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

fn nesting(v: &Value) -> usize {
    match v {
        Value::Array(items) => 1 + items.iter().map(nesting).max().unwrap_or(0),
        Value::Object(map) => 1 + map.values().map(nesting).max().unwrap_or(0),
        _ => 0,
    }
}
