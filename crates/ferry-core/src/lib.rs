//! Ferry's engine as a library; the `ferry` binary is a thin `main` over [`cli::main`].
//!
//! # Layout
//!
//! Imports run one way: `cli → server → engine → step / trigger → expr, connection → flow`,
//! and `engine → store` (traits) ← `store::sqlite`.
//!
//! - [`access`]: management API keys, roles, the audit log
//! - [`diag`]: located diagnostics (`FILE:LINE:COL: error: …` + hint)
//! - [`flow`]: YAML with positions → checked, compiled flows and connections
//! - [`expr`]: jq (jaq) and `{{ }}` templates, compiled once
//! - [`connection`]: base URL, headers, timeout, retry policy
//! - [`net`]: the SSRF guard (which addresses templated URLs may reach)
//! - [`openapi`]: OpenAPI 3.0/3.1 specs, the `http` step's `operation:` and its checks
//! - [`step`]: step kinds (`http`, `map`, `filter`, `log`) and their registry
//! - [`trigger`]: the event shape, webhook body parsing
//! - [`xml`]: the one XML ↔ JSON mapping, parsed safely (no DTD, limits)
//! - [`engine`]: the dispatcher and the run executor
//! - [`store`]: the store trait and the embedded SQLite store
//! - [`redact`]: `redact:` rules (paths masked in stored runs)
//! - [`secret`]: the master key, sealed secrets, scrubbing of secret values
//! - [`server`]: webhooks, health, management API
//! - [`soap`]: WSDL parsing and SOAP envelopes (for the `soap` step and `ferry import wsdl`)
//! - [`cli`]: the `ferry` commands

pub mod access;
pub mod cli;
pub mod connection;
pub mod diag;
pub mod engine;
pub mod expr;
pub mod flow;
pub mod net;
pub mod openapi;
pub mod redact;
pub mod secret;
pub mod server;
pub mod soap;
pub mod step;
pub mod store;
pub mod trigger;
pub mod util;
pub mod verify;
pub mod xml;
