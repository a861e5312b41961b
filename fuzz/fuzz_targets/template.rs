//! `{{ }}` templates: splitting, compiling, and rendering the bounded ones.
//!
//! Only bounded templates are rendered: an unbounded jq filter (`range(1e18)`) may run forever
//! by design, and the engine puts those on the time-limited pool instead. A bounded one is
//! rendered inline on a runtime worker, so here it runs on a thread with a worker's stack
//! (tokio's default, 2 MiB): a recursion that only fits in the main thread's 8 MiB would still
//! take the server down.

#![no_main]

use libfuzzer_sys::fuzz_target;

use ferry_core::expr::{Template, json_to_val, split_template};

const WORKER_STACK: usize = 2 * 1024 * 1024;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let text = text.to_owned();
    let worker = std::thread::Builder::new()
        .stack_size(WORKER_STACK)
        .spawn(move || check(&text))
        .expect("spawn a worker-sized thread");
    if let Err(panic) = worker.join() {
        std::panic::resume_unwind(panic);
    }
});

fn check(text: &str) {
    if let Ok(pieces) = split_template(text) {
        for piece in pieces {
            if let Err((start, end)) = piece {
                // The compiler slices the text with these; they must be in order and in bounds.
                assert!(
                    start <= end && end <= text.len(),
                    "{start}..{end} in {}",
                    text.len()
                );
                assert!(text.is_char_boundary(start) && text.is_char_boundary(end));
            }
        }
    }
    let Ok(template) = Template::compile_str(text) else {
        return;
    };
    if !template.is_bounded() {
        return;
    }
    let ctx = json_to_val(&serde_json::json!({"event": {"body": {"a": [1, "x", null]}}}));
    let _ = template.render(&ctx);
}
