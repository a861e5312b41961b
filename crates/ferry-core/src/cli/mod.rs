//! The `ferry` command line. Data goes to stdout, messages to stderr; `anyhow` lives here.

/// `println!` that ignores a closed stdout (`ferry runs list | head` must not panic).
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// `eprintln!` that ignores a closed stderr.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod admin;
mod client;
mod import;
mod import_wsdl;
mod run;
mod serve;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "ferry",
    version,
    about = "Ferry: connect business applications through their APIs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the engine: webhooks, management API, workers.
    Serve(serve::ServeArgs),
    /// Run one flow once, in-process, and print the run as JSON.
    Run(run::RunArgs),
    /// Check flow and connection files; print every error as FILE:LINE:COL.
    Validate {
        /// Project folders, flow/connection folders or files.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Write a connection from an API description (`openapi`) and list its operations.
    Import {
        #[command(subcommand)]
        kind: import::ImportKind,
    },
    /// Inspect runs on a running server.
    Runs {
        #[command(subcommand)]
        command: client::RunsCommand,
        #[command(flatten)]
        server: client::ServerArgs,
    },
    /// Dead letters on a running server: list, show, replay.
    Dlq {
        #[command(subcommand)]
        command: client::DlqCommand,
        #[command(flatten)]
        server: client::ServerArgs,
    },
    /// Encrypted secrets for `{ secret: NAME }`: set, list, rm, rotate-master.
    Secrets {
        #[command(subcommand)]
        command: admin::SecretsCommand,
        #[command(flatten)]
        target: admin::Target,
    },
    /// Management API keys with roles: create, list, revoke.
    Keys {
        #[command(subcommand)]
        command: admin::KeysCommand,
        #[command(flatten)]
        target: admin::Target,
    },
    /// Delete every stored payload (events, step records) that mentions a subject, e.g. a
    /// customer's e-mail address (GDPR erasure). Audited by a hash of the subject.
    Erase {
        #[arg(long)]
        subject: String,
        #[command(flatten)]
        target: admin::Target,
    },
    /// The audit log of changes, newest first.
    Audit {
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[command(flatten)]
        target: admin::Target,
    },
}

/// Entry point for `main`: the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    init_logging();
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // jq evaluation recurses per nesting level of the data it walks; a large stack
        // (address space, not memory: only touched pages are resident) keeps deep but legal
        // values from overflowing it.
        .thread_stack_size(64 * 1024 * 1024)
        // Bounded: at most 64 abandoned runaway expressions (expr::MAX_RUNAWAYS) plus room
        // for store reads and other evaluations, instead of tokio's default of 512 threads.
        .max_blocking_threads(128)
        .build()
        .expect("tokio runtime");
    // On a worker thread (large stack, see above), not on the main thread's 8 MiB.
    let main = runtime.spawn(async move {
        match cli.command {
            Command::Serve(args) => serve::serve(args).await.map(|_| 0),
            Command::Run(args) => run::run(args).await,
            Command::Validate { paths } => Ok(validate(&paths)),
            Command::Import { kind } => import::import(kind).await,
            Command::Runs { command, server } => client::runs(command, server).await.map(|_| 0),
            Command::Dlq { command, server } => client::dlq(command, server).await.map(|_| 0),
            Command::Secrets { command, target } => {
                admin::secrets(command, target).await.map(|_| 0)
            }
            Command::Keys { command, target } => admin::keys(command, target).await.map(|_| 0),
            Command::Erase { subject, target } => admin::erase(subject, target).await.map(|_| 0),
            Command::Audit { limit, target } => admin::audit(limit, target).await.map(|_| 0),
        }
    });
    let result = runtime
        .block_on(main)
        .unwrap_or_else(|e| Err(anyhow::anyhow!("internal error: {e}")));
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(code) => code,
        Err(e) => {
            say!("error: {e:#}");
            2
        }
    }
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("FERRY_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("FERRY_LOG_FORMAT").is_ok_and(|v| v == "json");
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        // A log reader that goes away (a closed pipe) must not take the server down: the
        // default reports write errors with say!, which panics on a closed stderr.
        .log_internal_errors(false)
        .with_target(false);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn validate(paths: &[PathBuf]) -> i32 {
    let diags = crate::flow::validate_paths(paths);
    if diags.is_empty() {
        say!("ok: no errors");
        0
    } else {
        out!("{diags}");
        say!(
            "{} error{}",
            diags.len(),
            if diags.len() == 1 { "" } else { "s" }
        );
        1
    }
}
