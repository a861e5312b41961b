//! The `ferry` binary: everything lives in `ferry_core::cli`.

// mimalloc: glibc malloc's arena locks and consolidation were a quarter of the CPU profile
// under webhook load (many small JSON allocations across worker threads).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    std::process::exit(ferry_core::cli::main())
}
