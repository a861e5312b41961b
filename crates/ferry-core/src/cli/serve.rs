//! `ferry serve [DIR]`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio_util::sync::CancellationToken;

use crate::engine::{Engine, EngineConfig};
use crate::server::{AppState, Limits};
use crate::store::sqlite::SqliteStore;

#[derive(clap::Args)]
pub(super) struct ServeArgs {
    /// Project folder with flows/ and connections/.
    #[arg(default_value = ".")]
    dir: PathBuf,
    /// Address to listen on; port 0 picks a free one.
    #[arg(long, env = "FERRY_LISTEN", default_value = "127.0.0.1:8080")]
    listen: String,
    /// Data folder (SQLite); default DIR/.ferry.
    #[arg(long, env = "FERRY_DATA")]
    data: Option<PathBuf>,
    /// Shared PostgreSQL database for several nodes (postgres://…).
    #[arg(long, env = "FERRY_DATABASE")]
    database: Option<String>,
    /// Runs executed at once.
    #[arg(long, env = "FERRY_WORKERS", default_value_t = 256)]
    workers: usize,
    /// On shutdown, how long in-flight runs may take to finish.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    grace: Duration,
    /// Largest webhook body, in bytes.
    #[arg(long, env = "FERRY_MAX_BODY", default_value_t = 1024 * 1024)]
    max_body: usize,
    /// Deepest JSON nesting accepted in a webhook body.
    #[arg(long, default_value_t = 64)]
    max_depth: usize,
    /// An internal network (CIDR or address) that URLs built from event data may reach;
    /// repeatable. Loopback, private, link-local and metadata addresses are refused otherwise.
    #[arg(
        long = "allow-network",
        env = "FERRY_ALLOW_NETWORK",
        value_delimiter = ','
    )]
    allow_network: Vec<String>,
    /// How often expired dedupe keys and payloads past their flow's retention are deleted.
    #[arg(long, env = "FERRY_MAINTENANCE_INTERVAL", default_value = "60s", value_parser = humantime::parse_duration)]
    maintenance_interval: Duration,
}

pub(super) async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    if let Some(db) = &args.database {
        let scheme = db.split(':').next().unwrap_or("");
        bail!(
            "`--database {scheme}://…` is not supported by this build yet; leave it out to use the embedded SQLite store"
        );
    }
    let project = match crate::flow::load_project(&args.dir) {
        Ok(p) => p,
        Err(diags) => {
            out!("{diags}");
            bail!("{} error(s) in flow files; nothing started", diags.len());
        }
    };
    let data = args.data.clone().unwrap_or_else(|| args.dir.join(".ferry"));
    let store = SqliteStore::open(&data)
        .with_context(|| format!("opening the data folder `{}`", data.display()))?;
    let admin_key = admin_key(&data)?;
    let allow_networks =
        crate::net::NetPolicy::parse_allow(&args.allow_network).map_err(anyhow::Error::msg)?;
    let config = EngineConfig {
        workers: args.workers.max(1),
        allow_networks,
        maintenance_every: args.maintenance_interval.max(Duration::from_millis(100)),
        ..EngineConfig::default()
    };
    let flows = project.flows.len();
    let store: Arc<dyn crate::store::Store> = Arc::new(store);
    let secrets = crate::secret::Vault::open(store.clone(), &data)
        .await
        .context("opening the secrets")?;
    warn_missing_secrets(&project, &secrets);
    let engine = Arc::new(Engine::new(store, Arc::new(project), config).with_secrets(secrets));
    let state = AppState::new(
        engine.clone(),
        admin_key,
        data.clone(),
        Limits {
            max_body: args.max_body,
            max_depth: args.max_depth,
        },
    );

    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on `{}`", args.listen))?;
    let addr = listener.local_addr()?;
    // Where `ferry secrets` finds this server when the data folder is locked by it.
    let _ = std::fs::write(data.join("server.url"), format!("http://{addr}\n"));
    let shutdown = CancellationToken::new();
    let engine_task = tokio::spawn(engine.clone().run(shutdown.clone(), args.grace));
    let signalled = shutdown_signal()?;
    tracing::info!(flows, data = %data.display(), "listening on {addr}");

    let signal = shutdown.clone();
    tokio::spawn(async move {
        signalled.await;
        tracing::info!("shutting down: no new requests; in-flight runs get the grace period");
        signal.cancel();
    });
    crate::server::serve(listener, state, shutdown.clone())
        .await
        .context("server failed")?;
    shutdown.cancel();
    engine_task.await.context("engine task")?;
    tracing::info!("stopped");
    Ok(())
}

/// Installs the SIGINT/SIGTERM handlers now (before "listening on" is logged, so a signal
/// sent right after start is not lost) and returns a future that ends on the first signal.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        Ok(async move {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
        })
    }
}

/// `FERRY_ADMIN_KEY`, or `DATA/admin.key` (created at first start, mode 0600).
fn admin_key(data: &std::path::Path) -> anyhow::Result<String> {
    if let Ok(k) = std::env::var("FERRY_ADMIN_KEY")
        && !k.trim().is_empty()
    {
        return Ok(k.trim().to_owned());
    }
    let path = data.join("admin.key");
    if let Ok(k) = std::fs::read_to_string(&path) {
        return Ok(k.trim().to_owned());
    }
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let key = format!("fk_{}", crate::flow::compile::hex(&bytes));
    crate::util::write_private(&path, key.as_bytes())
        .with_context(|| format!("writing `{}`", path.display()))?;
    tracing::info!(path = %path.display(), "generated the admin API key");
    Ok(key)
}

/// Says at start which `{ secret }` references have no value yet (requests that need them
/// fail, and webhooks that verify with them reject everything, until they are set).
fn warn_missing_secrets(project: &crate::flow::Project, vault: &crate::secret::Vault) {
    for name in project.secret_refs() {
        if vault.get(&name).is_none() {
            tracing::warn!(secret = %name, "secret is referenced but not set; set it with `ferry secrets set {name}`");
        }
    }
}
