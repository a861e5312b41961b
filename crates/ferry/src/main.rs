fn main() {
    std::process::exit(ferry_core::cli::main())
}
