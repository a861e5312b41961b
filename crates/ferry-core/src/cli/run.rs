//! `ferry run FLOW --event FILE`: one run, in-process, on a throwaway store.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};

use crate::engine::{Engine, EngineConfig, Observer, StepReport};
use crate::store::sqlite::SqliteStore;
use crate::store::{Ingested, NewRun, RunStatus, StepStatus, Store};

#[derive(clap::Args)]
pub(super) struct RunArgs {
    /// The flow file.
    flow: PathBuf,
    /// A JSON file: the event body, or a whole event (`{"body", "headers", "query"}`).
    #[arg(long)]
    event: Option<PathBuf>,
    /// Project folder (for connections); default: the folder above the flow's `flows/`.
    #[arg(long)]
    project: Option<PathBuf>,
    /// A data folder whose secrets `{ secret: NAME }` resolves from (no server may hold it).
    /// Without it, only literal and `{ env }` values resolve.
    #[arg(long, env = "FERRY_DATA")]
    data: Option<PathBuf>,
}

struct Printer;

impl Observer for Printer {
    fn step(&self, r: &StepReport) {
        let ms = r.row.finished_at_ms - r.row.started_at_ms;
        let mark = match r.row.status {
            StepStatus::Succeeded => "ok",
            StepStatus::Skipped => "skipped",
            StepStatus::Retrying => "retry",
            StepStatus::Waiting => "waiting",
            StepStatus::Failed => "FAILED",
        };
        let detail = match (&r.row.error, &r.row.output) {
            (Some(e), _) => format!(": {}", e["message"].as_str().unwrap_or_default()),
            (None, Some(o)) if r.kind == "http" => format!(": {}", o["status"]),
            _ => String::new(),
        };
        let retry = r
            .retry_in_ms
            .map(|ms| format!(" (next attempt in {ms} ms)"))
            .unwrap_or_default();
        say!(
            "  {mark:<7} {} [{}] attempt {} in {ms} ms{detail}{retry}",
            r.step,
            r.kind,
            r.row.attempts
        );
    }
}

fn project_dir(flow: &Path) -> PathBuf {
    let parent = flow.parent().unwrap_or(Path::new("."));
    if parent.file_name().is_some_and(|n| n == "flows") {
        parent
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."))
    } else {
        parent.to_path_buf()
    }
}

pub(super) async fn run(args: RunArgs) -> anyhow::Result<i32> {
    // A flow file that is not there is an operational error (exit 2), not an invalid flow.
    if !args.flow.is_file() {
        anyhow::bail!(
            "cannot read the flow file `{}`: no such file",
            args.flow.display()
        );
    }
    let dir = args
        .project
        .clone()
        .unwrap_or_else(|| project_dir(&args.flow));
    let mut paths = vec![args.flow.clone()];
    if dir.join("connections").is_dir() {
        paths.push(dir.join("connections"));
    }
    let diags = crate::flow::validate_paths(&paths);
    if !diags.is_empty() {
        out!("{diags}");
        return Ok(1);
    }
    let project = crate::flow::load::load_files(&args.flow, &dir.join("connections"))
        .map_err(|d| anyhow::anyhow!("{d}"))?;
    let flow = project
        .flows
        .first()
        .cloned()
        .context("the file holds no flow")?;

    let event_doc: serde_json::Value = match &args.event {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading `{}`", p.display()))?;
            serde_json::from_str(&text)
                .with_context(|| format!("`{}` is not valid JSON", p.display()))?
        }
        None => serde_json::Value::Null,
    };
    let now = chrono::Utc::now().timestamp_millis();
    let event = as_event(event_doc, now);

    let tmp = tempfile::tempdir().context("creating a temporary store")?;
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(tmp.path())?);
    // Secrets come from the data folder when one is named; the run itself stays throwaway.
    let mut _data_store = None;
    let secrets = match &args.data {
        Some(data) => {
            let ds: Arc<dyn Store> = Arc::new(SqliteStore::open(data).with_context(|| {
                format!(
                    "opening the data folder `{}` for its secrets",
                    data.display()
                )
            })?);
            let vault = crate::secret::Vault::open(ds.clone(), data).await?;
            _data_store = Some(ds);
            vault
        }
        None => crate::secret::Vault::in_memory(Default::default()),
    };
    let engine = Engine::new(store.clone(), Arc::new(project), EngineConfig::default())
        .with_secrets(secrets)
        .with_observer(Arc::new(Printer));
    let run_id = crate::util::new_run_id();
    let new = NewRun {
        id: run_id.clone(),
        flow: flow.id.clone(),
        flow_version: flow.version.clone(),
        event: event.to_string(),
        dedupe: None,
        now_ms: now,
        lease: None,
        steps: Vec::new(),
        update: crate::store::RunUpdate::Continue,
    };
    if store.ingest(new).await? != Ingested::Created(run_id.clone()) {
        bail!("could not queue the run");
    }
    say!("run {run_id} of flow `{}`", flow.id);
    loop {
        let now = chrono::Utc::now().timestamp_millis();
        let claimed = store.claim(&engine.owner, 1, 60_000, now).await?;
        match claimed.into_iter().next() {
            Some(run) => engine.execute(run).await,
            None => {
                let due = store.next_due().await?;
                match due {
                    Some(at) => {
                        tokio::time::sleep(std::time::Duration::from_millis(
                            (at - now).clamp(1, 60_000) as u64,
                        ))
                        .await
                    }
                    None => break,
                }
            }
        }
        let detail = store
            .get_run(&run_id)
            .await?
            .context("the run disappeared")?;
        if detail.summary.status.is_final() {
            break;
        }
    }
    let detail = store
        .get_run(&run_id)
        .await?
        .context("the run disappeared")?;
    out!(
        "{}",
        serde_json::to_string_pretty(&crate::server::run_json(&detail))?
    );
    say!("run {}", detail.summary.status.as_str());
    Ok(if detail.summary.status == RunStatus::Succeeded {
        0
    } else {
        1
    })
}

/// A file with only event keys (and `body`) is a whole event; anything else is the body.
fn as_event(doc: serde_json::Value, now: i64) -> serde_json::Value {
    const KEYS: &[&str] = &["body", "headers", "query", "method", "path"];
    if let serde_json::Value::Object(m) = &doc
        && m.contains_key("body")
        && m.keys().all(|k| KEYS.contains(&k.as_str()))
    {
        let obj = |k: &str| {
            m.get(k)
                .and_then(|v| v.as_object())
                .cloned()
                .unwrap_or_default()
        };
        let headers = obj("headers")
            .into_iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v))
            .collect();
        let method = m.get("method").and_then(|v| v.as_str()).unwrap_or("POST");
        let path = m.get("path").and_then(|v| v.as_str()).unwrap_or("/");
        return crate::trigger::event(m["body"].clone(), headers, obj("query"), method, path, now);
    }
    crate::trigger::event(
        doc,
        Default::default(),
        Default::default(),
        "POST",
        "/",
        now,
    )
}
