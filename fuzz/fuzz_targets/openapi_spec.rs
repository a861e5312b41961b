//! OpenAPI documents (`ferry import openapi`, a connection's `openapi:`): any bytes that are
//! UTF-8 go through `openapi::Spec::parse` (JSON or YAML, `$ref`s, operations, security
//! schemes), then every operation's body schema is dereferenced and its path template
//! filled. A result or an error must come back; no panic, stack overflow or hang (reference
//! cycles included).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(spec) = ferry_core::openapi::Spec::parse(text, "fuzz.yaml") else {
        return;
    };
    let _ = spec.base_url(Some("https://fuzz.example/spec.yaml"));
    for op in &spec.operations {
        if let Some(schema) = op.body.as_ref().and_then(|b| b.json_schema.as_ref()) {
            let _ = spec.deref(schema);
        }
        let _ = op.path_names();
    }
});
