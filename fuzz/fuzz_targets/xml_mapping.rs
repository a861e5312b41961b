//! The XML mapping (`ferry_core::xml`), as webhooks and SOAP responses reach it: any bytes,
//! under small limits and under the defaults, untyped and with typing hints; and every
//! document that maps is written back and must map to the same JSON again.

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;

use ferry_core::xml::{Limits, Scalar, Types, Untyped, XmlError, to_json, write_element};

/// Hints that type some names, so the typed paths run on every input.
struct Hints;

impl Types for Hints {
    fn scalar(&self, path: &[&str]) -> Option<Scalar> {
        match path.last().map(|n| n.len() % 5) {
            Some(1) => Some(Scalar::Integer),
            Some(2) => Some(Scalar::Decimal),
            Some(3) => Some(Scalar::Boolean),
            Some(4) => Some(Scalar::String),
            _ => None,
        }
    }
    fn repeated(&self, path: &[&str]) -> bool {
        path.len() % 2 == 0
    }
}

fuzz_target!(|data: &[u8]| {
    let small = Limits {
        max_bytes: 4096,
        max_depth: 8,
        max_attributes: 4,
        max_nodes: 256,
    };
    let _ = to_json(data, &small, &Untyped);
    let _ = to_json(data, &Limits::default(), &Hints);
    match to_json(data, &Limits::default(), &Untyped) {
        Ok(Value::Object(m)) => {
            assert_eq!(m.len(), 1, "one key: the root element");
            let (root, v) = m.iter().next().unwrap();
            let mut out = String::new();
            write_element(&mut out, root, v, None).expect("a mapped document writes back");
            let again = to_json(out.as_bytes(), &Limits::default(), &Untyped)
                .unwrap_or_else(|e| panic!("written XML does not parse: {e}\n{out}"));
            assert_eq!(
                again,
                Value::Object(m),
                "write then read changed the mapping: {out}"
            );
        }
        Ok(other) => panic!("a document maps to an object, not {other}"),
        Err(XmlError::Malformed { line, col, .. }) => assert!(line >= 1 && col >= 1),
        Err(_) => {}
    }
});
