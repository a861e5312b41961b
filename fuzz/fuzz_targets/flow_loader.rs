//! Flow and connection files: any bytes that are UTF-8 go through the whole loader (YAML with
//! positions, validation, template and jq compilation) and must come back as diagnostics,
//! never as a panic, a stack overflow or a hang.
//!
//! Runs on the main thread, where `ferry serve` and `ferry validate` load files too (inside
//! `block_on`, not on a runtime worker).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let diags = ferry_core::flow::load::check_source("fuzz.yaml", text);
    // Rendering the report is part of `ferry validate`; it must not panic either.
    let _ = diags.to_string();
});
