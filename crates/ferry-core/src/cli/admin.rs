//! `ferry secrets …`, `ferry keys …` and `ferry audit`: against a data folder directly when
//! no server holds it, else through the running server's management API.

use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Subcommand;
use reqwest::Method;
use serde_json::{Value, json};
use zeroize::Zeroizing;

use super::client::{Client, server_url};
use crate::access::{Access, Caller, Role};
use crate::secret::Vault;
use crate::store::sqlite::SqliteStore;
use crate::store::{Store, StoreError};

#[derive(clap::Args)]
pub(super) struct Target {
    /// Go through the management API of the server at this URL (default: the data folder
    /// directly, or the server that holds it).
    #[arg(long, global = true, env = "FERRY_SERVER")]
    server: Option<String>,
    /// API key for --server (default: FERRY_ADMIN_KEY, else DATA/admin.key).
    #[arg(long, global = true, env = "FERRY_ADMIN_KEY", hide_env_values = true)]
    key: Option<String>,
    /// The data folder (the server's --data; by default PROJECT/.ferry).
    #[arg(long, global = true, env = "FERRY_DATA", default_value = ".ferry")]
    data: PathBuf,
}

#[derive(Subcommand)]
pub(super) enum SecretsCommand {
    /// Store or replace a secret. The value is read from standard input (or --from-file),
    /// never from an argument, so it stays out of shell history and `ps`.
    Set {
        name: String,
        /// Read the value from this file instead of standard input.
        #[arg(long)]
        from_file: Option<PathBuf>,
    },
    /// Names, versions and times; never values.
    List,
    /// Delete a secret.
    Rm { name: String },
    /// Re-encrypt every secret under a new master key (FERRY_NEW_MASTER_KEY, or a new key
    /// file when the key is in DATA/master.key).
    RotateMaster,
}

#[derive(Subcommand)]
pub(super) enum KeysCommand {
    /// Create an API key; it is printed once and cannot be shown again.
    Create {
        name: String,
        /// admin, operator or viewer.
        #[arg(long)]
        role: String,
    },
    /// Keys with their roles; never the keys themselves.
    List,
    /// Revoke a key by id (`key_…`).
    Revoke { id: String },
}

/// Where the command acts.
enum Backend {
    Local {
        store: Arc<dyn Store>,
        vault: Option<Arc<Vault>>,
        data: PathBuf,
    },
    Api(Client),
}

impl Backend {
    async fn open(t: Target, create: bool, with_vault: bool) -> anyhow::Result<Backend> {
        if let Some(url) = t.server {
            return Ok(Backend::Api(Client::connect(url, t.key, &t.data)?));
        }
        if !create && !t.data.join("ferry.db").exists() {
            bail!(
                "no Ferry data folder at `{}`; pass --data DIR (the server's data folder, by default PROJECT/.ferry) or --server URL",
                t.data.display()
            );
        }
        match SqliteStore::open(&t.data) {
            Ok(store) => {
                let store: Arc<dyn Store> = Arc::new(store);
                let vault = if with_vault {
                    Some(Vault::open(store.clone(), &t.data).await?)
                } else {
                    None
                };
                Ok(Backend::Local {
                    store,
                    vault,
                    data: t.data,
                })
            }
            Err(StoreError::Conflict(_)) => {
                let url = server_url(&t.data).with_context(|| {
                    format!(
                        "the data folder `{}` is in use by a running server; pass --server URL",
                        t.data.display()
                    )
                })?;
                say!("the data folder is in use by the server at {url}; going through its API");
                Ok(Backend::Api(Client::connect(url, t.key, &t.data)?))
            }
            Err(e) => Err(e).with_context(|| format!("opening `{}`", t.data.display())),
        }
    }

    fn vault(&self) -> &Arc<Vault> {
        match self {
            Backend::Local { vault: Some(v), .. } => v,
            _ => unreachable!("opened with a vault"),
        }
    }
}

fn read_value(name: &str, from_file: Option<&Path>) -> anyhow::Result<Zeroizing<String>> {
    let mut buf = Zeroizing::new(String::new());
    match from_file {
        Some(p) => {
            let bytes = Zeroizing::new(
                std::fs::read(p).with_context(|| format!("reading `{}`", p.display()))?,
            );
            buf.push_str(
                std::str::from_utf8(&bytes)
                    .with_context(|| format!("`{}` is not UTF-8 text", p.display()))?,
            );
        }
        None => {
            if std::io::stdin().is_terminal() {
                say!("value for secret `{name}` (end with Enter, then Ctrl-D):");
            }
            std::io::stdin()
                .read_to_string(&mut buf)
                .context("reading the value from standard input")?;
        }
    }
    // One trailing newline is the terminal's or `echo`'s, not the secret's.
    let trimmed = buf
        .strip_suffix("\r\n")
        .or_else(|| buf.strip_suffix('\n'))
        .map(str::len);
    if let Some(len) = trimmed {
        buf.truncate(len);
    }
    if buf.is_empty() {
        bail!("the value for secret `{name}` is empty; nothing was stored");
    }
    Ok(buf)
}

fn print_rows(rows: &[Value], cols: &[(&str, &str)]) {
    if rows.is_empty() {
        say!("none");
        return;
    }
    let widths: Vec<usize> = cols
        .iter()
        .map(|(title, key)| {
            rows.iter()
                .map(|r| cell(&r[*key]).len())
                .chain([title.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    out!(
        "{}",
        line(cols.iter().map(|(t, _)| t.to_string()).collect())
    );
    for r in rows {
        out!("{}", line(cols.iter().map(|(_, k)| cell(&r[*k])).collect()));
    }
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

pub(super) async fn secrets(cmd: SecretsCommand, t: Target) -> anyhow::Result<()> {
    let create = matches!(cmd, SecretsCommand::Set { .. });
    let backend = Backend::open(t, create, true).await?;
    let local = Caller::local();
    match cmd {
        SecretsCommand::Set { name, from_file } => {
            crate::secret::check_name(&name)?;
            let value = read_value(&name, from_file.as_deref())?;
            let meta = match &backend {
                Backend::Api(c) => {
                    c.call(
                        Method::PUT,
                        &format!("/secrets/{name}"),
                        &[],
                        Some(json!({ "value": value.as_str() })),
                    )
                    .await?
                }
                Backend::Local { store, .. } => {
                    let existed = backend.vault().get(&name).is_some();
                    let meta = backend.vault().set(&name, value).await?;
                    crate::access::record(
                        &**store,
                        &local,
                        "secret.set",
                        &name,
                        Some(json!({ "before": existed.then_some("***"), "after": "***", "version": meta.version })),
                    )
                    .await;
                    json!(meta)
                }
            };
            say!("secret `{name}` stored (version {})", meta["version"]);
        }
        SecretsCommand::List => {
            let v = match &backend {
                Backend::Api(c) => c.call(Method::GET, "/secrets", &[], None).await?,
                Backend::Local { .. } => json!({ "secrets": backend.vault().list().await? }),
            };
            let rows = v["secrets"].as_array().cloned().unwrap_or_default();
            print_rows(
                &rows,
                &[
                    ("NAME", "name"),
                    ("VERSION", "version"),
                    ("CREATED", "created_at"),
                    ("UPDATED", "updated_at"),
                ],
            );
        }
        SecretsCommand::Rm { name } => {
            match &backend {
                Backend::Api(c) => {
                    c.call(Method::DELETE, &format!("/secrets/{name}"), &[], None)
                        .await?;
                }
                Backend::Local { store, .. } => {
                    if !backend.vault().remove(&name).await? {
                        bail!("no secret `{name}`");
                    }
                    crate::access::record(&**store, &local, "secret.delete", &name, None).await;
                }
            }
            say!("secret `{name}` deleted");
        }
        SecretsCommand::RotateMaster => {
            let n = match &backend {
                Backend::Api(c) => c
                    .call(Method::POST, "/secrets/rotate-master", &[], None)
                    .await?["resealed"]
                    .as_u64()
                    .unwrap_or(0) as usize,
                Backend::Local { store, data, .. } => {
                    let n = backend.vault().rotate_master(data).await?;
                    crate::access::record(
                        &**store,
                        &local,
                        "secret.rotate-master",
                        "secrets",
                        Some(json!({ "resealed": n })),
                    )
                    .await;
                    n
                }
            };
            say!("re-encrypted {n} secret(s) under the new master key");
        }
    }
    Ok(())
}

pub(super) async fn keys(cmd: KeysCommand, t: Target) -> anyhow::Result<()> {
    let create = matches!(cmd, KeysCommand::Create { .. });
    let backend = Backend::open(t, create, false).await?;
    let local = Caller::local();
    let access = |store: &Arc<dyn Store>| Access::new(store.clone(), String::new());
    match cmd {
        KeysCommand::Create { name, role } => {
            let Some(parsed) = Role::parse(&role) else {
                bail!("unknown role `{role}`; expected admin, operator or viewer");
            };
            let v = match &backend {
                Backend::Api(c) => {
                    c.call(
                        Method::POST,
                        "/keys",
                        &[],
                        Some(json!({ "name": name, "role": role })),
                    )
                    .await?
                }
                Backend::Local { store, .. } => {
                    let (info, key) = access(store).create_key(&local, &name, parsed).await?;
                    let mut v = json!(info);
                    v["key"] = Value::String(key);
                    v
                }
            };
            say!(
                "created {} `{}` with role {}; the key is shown only this once:",
                v["id"].as_str().unwrap_or(""),
                v["name"].as_str().unwrap_or(""),
                v["role"].as_str().unwrap_or("")
            );
            out!("{}", v["key"].as_str().unwrap_or(""));
        }
        KeysCommand::List => {
            let v = match &backend {
                Backend::Api(c) => c.call(Method::GET, "/keys", &[], None).await?,
                Backend::Local { store, .. } => json!({ "keys": access(store).list_keys().await? }),
            };
            let rows = v["keys"].as_array().cloned().unwrap_or_default();
            print_rows(
                &rows,
                &[
                    ("ID", "id"),
                    ("NAME", "name"),
                    ("ROLE", "role"),
                    ("CREATED", "created_at"),
                    ("REVOKED", "revoked_at"),
                ],
            );
        }
        KeysCommand::Revoke { id } => {
            match &backend {
                Backend::Api(c) => {
                    c.call(Method::DELETE, &format!("/keys/{id}"), &[], None)
                        .await?;
                }
                Backend::Local { store, .. } => {
                    if !access(store).revoke_key(&local, &id).await? {
                        bail!("no active key `{id}`");
                    }
                }
            }
            say!("key `{id}` revoked");
        }
    }
    Ok(())
}

pub(super) async fn audit(limit: u32, t: Target) -> anyhow::Result<()> {
    let backend = Backend::open(t, false, false).await?;
    let entries = match &backend {
        Backend::Api(c) => c
            .call(Method::GET, "/audit", &[("limit", limit.to_string())], None)
            .await?["entries"]
            .as_array()
            .cloned()
            .unwrap_or_default(),
        Backend::Local { store, .. } => {
            Access::new(store.clone(), String::new())
                .list_audit(limit, None)
                .await?
        }
    };
    let rows: Vec<Value> = entries
        .into_iter()
        .map(|mut e| {
            e["detail"] = match &e["detail"] {
                Value::Null => Value::Null,
                d => Value::String(d.to_string()),
            };
            e
        })
        .collect();
    print_rows(
        &rows,
        &[
            ("SEQ", "seq"),
            ("AT", "at"),
            ("ACTOR", "actor"),
            ("ACTION", "action"),
            ("TARGET", "target"),
            ("DETAIL", "detail"),
        ],
    );
    Ok(())
}

pub(super) async fn erase(subject: String, t: Target) -> anyhow::Result<()> {
    let backend = Backend::open(t, false, false).await?;
    let v = match &backend {
        Backend::Api(c) => {
            c.call(
                Method::POST,
                "/erase",
                &[],
                Some(json!({ "subject": subject })),
            )
            .await?
        }
        Backend::Local { store, .. } => {
            crate::access::erase(&**store, &Caller::local(), &subject).await?
        }
    };
    say!(
        "erased the payloads of {} run(s) that mentioned the subject",
        v["runs"]
    );
    if v["in_flight"].as_u64().unwrap_or(0) > 0 {
        say!(
            "{} of them were still queued or running and may store the subject again; run `ferry erase` once more after they finish",
            v["in_flight"]
        );
    }
    Ok(())
}
