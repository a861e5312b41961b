//! `FERRY_SKIP_INTEROP=1` marks the tests that need Node.js and the providers' npm libraries
//! `#[ignore]` (cfg `ferry_skip_interop`), so a machine without them reports them as ignored
//! in cargo's summary instead of counting a test that did not run as passed.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(ferry_skip_interop)");
    println!("cargo::rerun-if-env-changed=FERRY_SKIP_INTEROP");
    if std::env::var_os("FERRY_SKIP_INTEROP").is_some_and(|v| v == "1") {
        println!("cargo::rustc-cfg=ferry_skip_interop");
    }
}
