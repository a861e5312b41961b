//! `ferry runs …` and `ferry dlq …`: thin clients of the management API.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Subcommand;
use serde_json::{Value, json};

/// Where `ferry runs` and `ferry dlq` look without `--server` and without `DATA/server.url`.
const DEFAULT_SERVER: &str = "http://127.0.0.1:8080";

/// The address a running `ferry serve` wrote to `DATA/server.url`, if any.
pub(super) fn server_url(data: &std::path::Path) -> Option<String> {
    let url = std::fs::read_to_string(data.join("server.url")).ok()?;
    Some(url.trim().to_owned()).filter(|u| !u.is_empty())
}

#[derive(clap::Args)]
pub(super) struct ServerArgs {
    /// The server's base URL (default: the address in DATA/server.url, which `ferry serve`
    /// writes, else http://127.0.0.1:8080).
    #[arg(long, global = true, env = "FERRY_SERVER")]
    server: Option<String>,
    /// Admin API key (default: FERRY_ADMIN_KEY, else DATA/admin.key).
    #[arg(long, global = true, env = "FERRY_ADMIN_KEY", hide_env_values = true)]
    key: Option<String>,
    /// The server's data folder, where `admin.key` is.
    #[arg(long, global = true, env = "FERRY_DATA", default_value = ".ferry")]
    data: PathBuf,
}

#[derive(Subcommand)]
pub(super) enum RunsCommand {
    /// Recent runs, newest first.
    List {
        #[arg(long)]
        flow: Option<String>,
        /// queued, running, succeeded, failed, dead (comma-separated).
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// One run with its steps, as JSON.
    Show { id: String },
}

#[derive(Subcommand)]
pub(super) enum DlqCommand {
    /// Failed and dead runs, newest first.
    List {
        #[arg(long)]
        flow: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// One dead letter with its steps, as JSON.
    Show { id: String },
    /// Replay one run by id, or every dead letter matching --flow / --since / --until.
    Replay {
        id: Option<String>,
        #[arg(long)]
        flow: Option<String>,
        /// RFC 3339 time, e.g. 2026-11-25T08:00:00Z.
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        until: Option<String>,
        /// `failed` (keep completed steps) or `start`.
        #[arg(long, default_value = "failed")]
        from: String,
    },
}

pub(super) struct Client {
    base: String,
    key: String,
    http: reqwest::Client,
}

impl Client {
    fn new(args: ServerArgs) -> anyhow::Result<Client> {
        // A server started with `--listen 127.0.0.1:0` (or any other address) is found
        // through its data folder, as `ferry secrets` finds it.
        let server = args
            .server
            .or_else(|| server_url(&args.data))
            .unwrap_or_else(|| DEFAULT_SERVER.to_owned());
        Client::connect(server, args.key, &args.data)
    }

    /// A client for the server at `server`, with `key` or else `DATA/admin.key`.
    pub(super) fn connect(
        server: String,
        key: Option<String>,
        data: &std::path::Path,
    ) -> anyhow::Result<Client> {
        let key = match key {
            Some(k) => k,
            None => {
                let path = data.join("admin.key");
                std::fs::read_to_string(&path)
                    .with_context(|| format!("no API key: set FERRY_ADMIN_KEY or pass --data to the server's data folder (tried `{}`)", path.display()))?
                    .trim()
                    .to_owned()
            }
        };
        Ok(Client {
            base: server.trim().trim_end_matches('/').to_owned(),
            key,
            http: reqwest::Client::new(),
        })
    }

    pub(super) async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let url = format!("{}/api/v1{path}", self.base);
        let mut req = self
            .http
            .request(method, &url)
            .bearer_auth(&self.key)
            .query(query);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("cannot reach the server at {}", self.base))?;
        let status = resp.status();
        if status == reqwest::StatusCode::NO_CONTENT {
            return Ok(Value::Null);
        }
        let value: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            let detail = value["detail"].as_str().unwrap_or("no detail");
            bail!("server answered {status}: {detail}");
        }
        Ok(value)
    }
}

fn print_table(runs: &Value) {
    let empty = vec![];
    let runs = runs["runs"].as_array().unwrap_or(&empty);
    if runs.is_empty() {
        say!("no runs");
        return;
    }
    out!(
        "{:<36}  {:<24}  {:<9}  {:>7}  {:<24}  ERROR",
        "ID",
        "FLOW",
        "STATUS",
        "ATTEMPT",
        "CREATED"
    );
    for r in runs {
        let err = r["error"]["message"].as_str().unwrap_or("");
        out!(
            "{:<36}  {:<24}  {:<9}  {:>7}  {:<24}  {}",
            r["id"].as_str().unwrap_or(""),
            r["flow"].as_str().unwrap_or(""),
            r["status"].as_str().unwrap_or(""),
            r["attempt"].as_u64().unwrap_or(0),
            r["created_at"].as_str().unwrap_or(""),
            err
        );
    }
}

pub(super) async fn runs(cmd: RunsCommand, server: ServerArgs) -> anyhow::Result<()> {
    let c = Client::new(server)?;
    match cmd {
        RunsCommand::List {
            flow,
            status,
            limit,
        } => {
            let mut q = vec![("limit", limit.to_string())];
            q.extend(flow.map(|f| ("flow", f)));
            q.extend(status.map(|s| ("status", s)));
            print_table(&c.call(reqwest::Method::GET, "/runs", &q, None).await?);
        }
        RunsCommand::Show { id } => {
            let v = c
                .call(reqwest::Method::GET, &format!("/runs/{id}"), &[], None)
                .await?;
            out!("{}", serde_json::to_string_pretty(&v)?);
        }
    }
    Ok(())
}

pub(super) async fn dlq(cmd: DlqCommand, server: ServerArgs) -> anyhow::Result<()> {
    let c = Client::new(server)?;
    match cmd {
        DlqCommand::List { flow, limit } => {
            let mut q = vec![("limit", limit.to_string())];
            q.extend(flow.map(|f| ("flow", f)));
            print_table(&c.call(reqwest::Method::GET, "/dlq", &q, None).await?);
        }
        DlqCommand::Show { id } => {
            let v = c
                .call(reqwest::Method::GET, &format!("/runs/{id}"), &[], None)
                .await?;
            out!("{}", serde_json::to_string_pretty(&v)?);
        }
        DlqCommand::Replay {
            id,
            flow,
            since,
            until,
            from,
        } => {
            let v = match id {
                Some(id) => {
                    c.call(
                        reqwest::Method::POST,
                        &format!("/runs/{id}/replay"),
                        &[],
                        Some(json!({"from": from})),
                    )
                    .await?
                }
                None => {
                    if flow.is_none() && since.is_none() && until.is_none() {
                        bail!(
                            "give a run id, or select dead letters with --flow, --since or --until"
                        );
                    }
                    c.call(
                        reqwest::Method::POST,
                        "/dlq/replay",
                        &[],
                        Some(json!({"from": from, "flow": flow, "since": since, "until": until})),
                    )
                    .await?
                }
            };
            out!("{}", serde_json::to_string_pretty(&v)?);
            say!("replayed {} run(s)", v["replayed"]);
        }
    }
    Ok(())
}
