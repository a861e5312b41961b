//! Checking and compiling flow and connection files into runtime types.
//!
//! Every part is checked on its own so that one pass reports every error: the top level,
//! the trigger, then each step (its common keys and its kind's settings).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use sha2::Digest;

use super::model::{
    ConnectionConfig, FlowConfig, OnError, STEP_COMMON_KEYS, StepCommon, TriggerConfig,
};
use super::node::{Key, Node, Value};
use crate::connection::{Connection, RetryPolicy};
use crate::diag::{Diagnostic, Diagnostics, Pos, did_you_mean};
use crate::expr::Expr;
use crate::flow::control::Control;
use crate::step::{CompileCx, STEPS, Step, kinds};

pub const DEFAULT_STEP_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_DEDUPE_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// A compiled, runnable flow.
pub struct Flow {
    pub id: String,
    pub file: String,
    /// Content hash of the file: a new hash is a new version.
    pub version: String,
    pub source: String,
    pub trigger: Trigger,
    pub steps: Vec<CompiledStep>,
    /// `redact:` rules on the event (paths below `.event`).
    pub redact_event: Vec<crate::redact::RedactPath>,
    /// `redact:` rules on step results, by step id (paths below `.steps.ID`).
    pub redact_steps: Vec<(String, crate::redact::RedactPath)>,
    /// How long payloads of finished runs are kept.
    pub retention: Duration,
    /// What the flow's expressions can read of `.event`: a webhook builds only that part of
    /// an event as jq values (see `expr::Reads`).
    pub event_reads: crate::expr::Reads,
    /// `output:`: what a run returns to the `call` step that started it.
    pub output: Option<crate::expr::Template>,
}

/// Payloads of finished runs are kept this long unless a flow says otherwise.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);

impl Flow {
    /// Configured values of the trigger and the steps that may come from the environment or
    /// a secret.
    pub fn value_sources(&self) -> Vec<&crate::flow::model::ValueSource> {
        let mut out = self
            .webhook()
            .and_then(|w| w.verifier.as_ref())
            .map(|v| v.secret_sources())
            .unwrap_or_default();
        out.extend(
            self.walk()
                .filter_map(|s| s.step())
                .flat_map(|s| s.value_sources()),
        );
        out
    }

    /// Every step of the flow, nested ones included, in the order they are written (their
    /// `seq`).
    pub fn walk(&self) -> impl Iterator<Item = &CompiledStep> {
        let mut out = Vec::new();
        walk_into(&self.steps, &mut out);
        out.into_iter()
    }

    /// The step with this id, at any depth (ids are unique in a flow).
    pub fn find(&self, id: &str) -> Option<&CompiledStep> {
        self.walk().find(|s| s.id == id)
    }

    pub fn webhook(&self) -> Option<&Webhook> {
        match &self.trigger {
            Trigger::Webhook(w) => Some(w),
            Trigger::Manual | Trigger::Flow(_) => None,
        }
    }

    /// The `call` steps of the flow: the flows it calls.
    pub fn calls(&self) -> impl Iterator<Item = &crate::flow::control::Call> {
        self.walk().filter_map(|s| match &s.action {
            Action::Control(Control::Call(c)) => Some(c),
            _ => None,
        })
    }
}

fn walk_into<'a>(steps: &'a [CompiledStep], out: &mut Vec<&'a CompiledStep>) {
    for s in steps {
        out.push(s);
        if let Action::Control(c) = &s.action {
            for block in c.blocks() {
                walk_into(block, out);
            }
        }
        if let Some(f) = &s.fallback {
            walk_into(f, out);
        }
    }
}

pub enum Trigger {
    Webhook(Webhook),
    Manual,
    /// Started by a `call` step of another flow.
    Flow(FlowTrigger),
}

pub struct FlowTrigger {
    /// `input:`, compiled: the schema a caller's input must match.
    pub input: Option<Arc<jsonschema::Validator>>,
}

pub struct Webhook {
    pub path: String,
    pub method: String,
    pub dedupe: Option<Expr>,
    pub dedupe_window: Duration,
    /// `verify:`, compiled; requests that fail it are refused before anything is stored.
    pub verifier: Option<Box<crate::verify::Verifier>>,
    pub pos: Pos,
    /// The names of the path's `{name}` segments, in order; empty for a literal path.
    pub params: Vec<String>,
    /// `response: sync`: the caller is answered by the run's `respond` step.
    pub sync: Option<SyncResponse>,
}

/// The most a caller of a `response: sync` webhook can be made to wait.
pub const MAX_SYNC_TIMEOUT: Duration = Duration::from_secs(300);
pub const DEFAULT_SYNC_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy)]
pub struct SyncResponse {
    pub timeout: Duration,
    /// Too slow: `202` with the run's URL instead of `504`.
    pub accept_on_timeout: bool,
}

impl Webhook {
    /// The path's parameters when `path` (a request's) matches this webhook's pattern.
    pub fn match_params(&self, path: &str) -> Option<serde_json::Map<String, serde_json::Value>> {
        let mut want = self.path.split('/');
        let mut got = path.split('/');
        let mut params = serde_json::Map::new();
        loop {
            match (want.next(), got.next()) {
                (None, None) => return Some(params),
                (Some(w), Some(g)) => {
                    if let Some(name) = w.strip_prefix('{').and_then(|w| w.strip_suffix('}')) {
                        if g.is_empty() {
                            return None;
                        }
                        let value = percent_encoding::percent_decode_str(g)
                            .decode_utf8()
                            .ok()?
                            .into_owned();
                        params.insert(name.to_owned(), value.into());
                    } else if w != g {
                        return None;
                    }
                }
                _ => return None,
            }
        }
    }

    /// How specific the pattern is, for choosing among several that match: literal
    /// segments win over parameters, earliest first.
    pub fn specificity(&self) -> Vec<bool> {
        self.path.split('/').map(|s| !s.starts_with('{')).collect()
    }
}

pub struct CompiledStep {
    pub id: String,
    /// Position in the flow (0-based, nested steps counted where they are written): the
    /// order of the step's records in a run.
    pub seq: u32,
    pub kind: &'static str,
    pub when: Option<Expr>,
    pub retry: RetryPolicy,
    pub timeout: Duration,
    pub on_error: OnError,
    /// `on_error:` as a list: the steps run when this one fails for good (at `ID/on_error/…`).
    pub fallback: Option<Vec<CompiledStep>>,
    pub action: Action,
}

/// What a step does: a kind of `step/` that computes or calls out, or a control kind the
/// engine runs itself (it holds steps, or decides when the run goes on).
pub enum Action {
    Run(Box<dyn Step>),
    Control(crate::flow::control::Control),
}

impl CompiledStep {
    /// The step kind, unless it is a control kind.
    pub fn step(&self) -> Option<&dyn Step> {
        match &self.action {
            Action::Run(s) => Some(s.as_ref()),
            Action::Control(_) => None,
        }
    }

    /// See [`Step::calls_out`]; a control kind does not (its steps may).
    pub fn calls_out(&self) -> bool {
        self.step().is_some_and(|s| s.calls_out())
    }

    /// See [`Step::inline`]; a control kind is not (it is run by a worker).
    pub fn inline(&self) -> bool {
        self.step().is_some_and(|s| s.inline())
    }
}

fn valid_param(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

pub(crate) fn compile_connection(
    file: &str,
    node: &Node,
    diags: &mut Diagnostics,
) -> Option<(Connection, Pos)> {
    match parse_top::<ConnectionConfig>(file, node, diags, "see docs/flows.md#connection-files") {
        Some((c, true)) => {
            if !valid_id(&c.id.value) {
                diags.push(
                    Diagnostic::new(
                        file,
                        c.id.pos,
                        format!("invalid connection id `{}`", c.id.value),
                    )
                    .hint("use letters, digits, `-` and `_`"),
                );
                return None;
            }
            if let crate::flow::model::ValueSource::Literal(url) = &c.base_url
                && reqwest::Url::parse(url).is_err()
            {
                let pos = node.get("base_url").map(|n| n.pos).unwrap_or(node.pos);
                diags.push(
                    Diagnostic::new(file, pos, format!("invalid base_url `{url}`"))
                        .hint("an absolute URL, e.g. https://api.example.com/v1"),
                );
                return None;
            }
            let mut bad_rule = false;
            for rule in &c.redact {
                if let Err(e) = crate::redact::RedactPath::parse(&rule.value) {
                    diags.push(
                        Diagnostic::new(file, rule.pos, format!("invalid redact rule: {e}"))
                            .hint("a path in the request or response body, e.g. `.email` or `.card.number`"),
                    );
                    bad_rule = true;
                }
            }
            if bad_rule {
                return None;
            }
            match Connection::from_config(&c) {
                Ok(mut conn) => {
                    if let Some(spec) = &c.openapi {
                        conn.openapi = Some(load_openapi(file, spec, diags)?);
                    }
                    Some((conn, c.id.pos))
                }
                Err(e) => {
                    let pos = node.get(e.key()).map(|n| n.pos).unwrap_or(node.pos);
                    diags.push(
                        Diagnostic::new(file, pos, e.to_string()).hint("see docs/security.md"),
                    );
                    None
                }
            }
        }
        // Every error is reported already.
        Some((_, false)) | None => None,
    }
}

/// Reads the top of a flow or connection file, reporting every top-level key that is wrong
/// (unknown, of the wrong type, an invalid value) instead of stopping at the first one:
/// each is reported, left out, and the rest read again. Returns the value read without the
/// wrong keys and whether there were none (`true`); `None` when a required key is missing
/// or wrong, or the top is not a mapping (reported too).
fn parse_top<T: serde::de::DeserializeOwned>(
    file: &str,
    node: &Node,
    diags: &mut Diagnostics,
    default_hint: &str,
) -> Option<(T, bool)> {
    let mut node = node.clone();
    let mut left_out: Vec<String> = Vec::new();
    loop {
        let e = match node.parse::<T>() {
            Ok(v) => return Some((v, left_out.is_empty())),
            Err(e) => e,
        };
        // A required key that was left out for its own error: that error says enough.
        if left_out
            .iter()
            .any(|k| e.message == format!("missing key `{k}`"))
        {
            return None;
        }
        let pos = e.pos.unwrap_or(node.pos);
        let hint = e.hint.unwrap_or_else(|| default_hint.to_owned());
        diags.push(Diagnostic::new(file, pos, e.message).hint(hint));
        // The top-level entry the error is in: the last whose key starts at or before it.
        let Value::Map(entries) = &mut node.value else {
            return None;
        };
        let at = (pos.line, pos.col);
        let i = entries
            .iter()
            .rposition(|(k, _)| (k.pos.line, k.pos.col) <= at)?;
        left_out.push(entries.remove(i).0.name);
    }
}

/// Reads a connection's `openapi:` spec. `file` is the connection file's path as the
/// loader read it (relative to the working folder, or absolute); the spec path is relative
/// to the project folder, the parent of `connections/` (or the file's own folder when it is
/// not in one).
fn load_openapi(
    file: &str,
    spec: &crate::flow::node::Spanned<String>,
    diags: &mut Diagnostics,
) -> Option<Arc<crate::openapi::Spec>> {
    let text = spec.value.trim();
    if text.contains("://") {
        diags.push(
            Diagnostic::new(
                file,
                spec.pos,
                format!("`openapi:` must be a file in the project, found the URL `{text}`"),
            )
            .hint(format!(
                "fetch it once with `ferry import openapi {text}`, which stores it under specs/"
            )),
        );
        return None;
    }
    let conn_dir = std::path::Path::new(file)
        .parent()
        .unwrap_or(std::path::Path::new(""));
    let project = match conn_dir.file_name() {
        Some(n) if n == "connections" => conn_dir.parent().unwrap_or(std::path::Path::new("")),
        _ => conn_dir,
    };
    let path = project.join(text);
    match crate::openapi::Spec::load(&path) {
        Ok(s) => Some(Arc::new(s)),
        Err(e) => {
            diags.push(
                Diagnostic::new(file, spec.pos, format!("invalid `openapi:`: {e}"))
                    .hint("a path relative to the project folder, e.g. `specs/crm.yaml`, of an OpenAPI 3.0 or 3.1 document"),
            );
            None
        }
    }
}

pub(crate) fn compile_flow(
    file: &str,
    source: &str,
    node: &Node,
    connections: &HashMap<String, Arc<Connection>>,
    broken_connections: &[String],
    diags: &mut Diagnostics,
) -> Option<(Flow, Pos)> {
    let before = diags.len();
    // Errors at the top are reported and the rest of the file is still checked (the trigger,
    // every step); `diags.len() > before` below keeps such a flow from loading.
    let (config, _) = parse_top::<FlowConfig>(
        file,
        node,
        diags,
        "a flow file has `id`, `trigger` and `steps`; see docs/flows.md",
    )?;
    if !valid_id(&config.id.value) {
        diags.push(
            Diagnostic::new(
                file,
                config.id.pos,
                format!("invalid flow id `{}`", config.id.value),
            )
            .hint("use letters, digits, `-` and `_`"),
        );
    }

    // Step ids first, so that references can tell "later" from "unknown".
    let mut ids: Vec<String> = Vec::new();
    for step in &config.steps {
        collect_ids(step, &mut ids);
    }

    let mut cx = CompileCx {
        file,
        source,
        connections,
        broken_connections,
        diags,
        steps_before: Vec::new(),
        all_steps: ids,
        reads: Default::default(),
        seen: HashMap::new(),
        next_seq: 0,
        depth: 0,
    };
    let trigger = compile_trigger(&config.trigger, &mut cx);
    let steps = compile_block(&config.steps, &mut cx);
    let sync = matches!(&trigger, Some(Trigger::Webhook(w)) if w.sync.is_some());
    if trigger.is_some() && !sync {
        let mut responds = Vec::new();
        walk_into(&steps, &mut responds);
        for s in responds {
            if let Action::Control(Control::Respond(r)) = &s.action {
                cx.error(
                    r.pos,
                    format!("step `{}` responds, but the flow's webhook does not wait for it", s.id),
                    Some("a `respond` step answers a `response: sync` webhook: add `response: sync` to the trigger".into()),
                );
            }
        }
    }
    if config.steps.is_empty() {
        cx.error(
            node.get("steps").map(|n| n.pos).unwrap_or(node.pos),
            "a flow needs at least one step",
            Some("add a step under `steps:`".into()),
        );
    }
    let mut redact_event = Vec::new();
    let mut redact_steps = Vec::new();
    for rule in &config.redact {
        let parsed = crate::redact::RedactPath::parse(&rule.value);
        let placed = parsed.and_then(|p| {
            let (root, rest) = p.split_first_key().ok_or_else(|| {
                format!("`{}` must start with `.event` or `.steps.ID`", p.as_str())
            })?;
            match root {
                "event" => Ok(Ok(rest)),
                "steps" => match rest.split_first_key() {
                    Some((id, rest)) if cx.all_steps.iter().any(|s| s == id) => {
                        Ok(Err((id.to_owned(), rest)))
                    }
                    Some((id, _)) => Err(format!("`{}`: no step `{id}` in this flow", p.as_str())),
                    None => Err(format!(
                        "`{}`: name a step, e.g. `.steps.contact.body.email`",
                        p.as_str()
                    )),
                },
                other => Err(format!(
                    "`{}` starts at `.{other}`; rules start with `.event` or `.steps.ID`",
                    p.as_str()
                )),
            }
        });
        match placed {
            Ok(Ok(p)) => redact_event.push(p),
            Ok(Err(s)) => redact_steps.push(s),
            Err(e) => cx.error(
                rule.pos,
                format!("invalid redact rule: {e}"),
                Some(
                    "a path such as `.event.body.email` or `.steps.contact.body.card.number`"
                        .into(),
                ),
            ),
        }
    }
    let output = match &config.output {
        Some(n) => cx.template(n),
        None => None,
    };
    let event_reads = cx.reads.get("event").cloned().unwrap_or_default();
    if diags.len() > before {
        return None;
    }
    let version = hex(&sha2::Sha256::digest(source.as_bytes())[..8]);
    Some((
        Flow {
            id: config.id.value.clone(),
            file: file.to_owned(),
            version,
            source: source.to_owned(),
            trigger: trigger?,
            steps,
            redact_event,
            redact_steps,
            retention: config.retention.map(|d| d.0).unwrap_or(DEFAULT_RETENTION),
            event_reads,
            output,
        },
        config.id.pos,
    ))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn compile_trigger(node: &Node, cx: &mut CompileCx) -> Option<Trigger> {
    let config: TriggerConfig = cx.parse(node)?;
    match config {
        TriggerConfig::Manual(_) => Some(Trigger::Manual),
        TriggerConfig::Flow(f) => {
            let input = match &f.input {
                Some(schema) => {
                    match jsonschema::validator_for(&schema.value) {
                        Ok(v) => Some(Arc::new(v)),
                        Err(e) => {
                            cx.error(
                            schema.pos,
                            format!("invalid input schema: {e}"),
                            Some("a JSON Schema, e.g. `input: { type: object, required: [email] }`".into()),
                        );
                            return None;
                        }
                    }
                }
                None => None,
            };
            Some(Trigger::Flow(FlowTrigger { input }))
        }
        TriggerConfig::Webhook(w) => {
            let path = w.path.value.trim().to_owned();
            let mut ok = true;
            if !path.starts_with('/') || path.contains(['?', '#', ' ']) {
                cx.error(
                    w.path.pos,
                    format!("invalid webhook path `{path}`"),
                    Some("a path such as /hooks/shop/customers".into()),
                );
                ok = false;
            } else if crate::server::reserved_prefixes()
                .any(|p| path == p || path.starts_with(&format!("{p}/")))
            {
                cx.error(
                    w.path.pos,
                    format!("webhook path `{path}` is reserved"),
                    Some(format!(
                        "Ferry serves {} itself, and {} are reserved for the coming metrics and dashboard endpoints; use e.g. /hooks/…",
                        crate::server::SERVED_PREFIXES.join(", "),
                        crate::server::COMING_PREFIXES.join(" and ")
                    )),
                );
                ok = false;
            }
            let method = match &w.method {
                Some(m) => {
                    let up = m.value.trim().to_ascii_uppercase();
                    if !matches!(up.as_str(), "POST" | "PUT" | "PATCH" | "GET" | "DELETE") {
                        cx.error(
                            m.pos,
                            format!("unsupported webhook method `{}`", m.value),
                            Some("POST, PUT, PATCH, GET or DELETE".into()),
                        );
                        ok = false;
                    }
                    up
                }
                None => "POST".into(),
            };
            let saved = std::mem::take(&mut cx.steps_before);
            let dedupe = match &w.dedupe {
                Some(d) => {
                    let e = cx.expr(d);
                    ok &= e.is_some();
                    e
                }
                None => None,
            };
            cx.steps_before = saved;
            let dedupe_window = w
                .dedupe_window
                .map(|d| d.0)
                .unwrap_or(DEFAULT_DEDUPE_WINDOW);
            let verifier = match &w.verify {
                Some(v) => match crate::verify::Verifier::compile(&v.value) {
                    Ok(verifier) => Some(Box::new(verifier)),
                    Err(e) => {
                        cx.error(
                            v.pos,
                            format!("invalid `verify:`: {e}"),
                            Some("see docs/security.md for each scheme's keys".into()),
                        );
                        ok = false;
                        None
                    }
                },
                None => None,
            };
            let mut params: Vec<String> = Vec::new();
            for seg in path.split('/') {
                let opens = seg.contains('{') || seg.contains('}');
                let name = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}'));
                match name {
                    Some(n) if valid_param(n) && !params.iter().any(|p| p == n) => {
                        params.push(n.to_owned())
                    }
                    Some(n) if params.iter().any(|p| p == n) => {
                        cx.error(
                            w.path.pos,
                            format!("path parameter `{n}` appears twice in `{path}`"),
                            Some("give each parameter its own name".into()),
                        );
                        ok = false;
                    }
                    _ if opens => {
                        cx.error(
                            w.path.pos,
                            format!("invalid path segment `{seg}` in `{path}`"),
                            Some("a parameter is a whole segment `{name}` (letters, digits, `_`), e.g. /stock/{sku}".into()),
                        );
                        ok = false;
                    }
                    _ => {}
                }
            }
            let sync = match w.response.as_ref().map(|r| r.value) {
                Some(crate::flow::model::ResponseMode::Sync) => {
                    let timeout = w
                        .timeout
                        .as_ref()
                        .map_or(DEFAULT_SYNC_TIMEOUT, |t| t.value.0);
                    if timeout.is_zero() || timeout > MAX_SYNC_TIMEOUT {
                        cx.error(
                            w.timeout.as_ref().map_or(w.path.pos, |t| t.pos),
                            "a synchronous webhook's `timeout` is above 0 and at most 5m",
                            Some("how long the caller waits for the `respond` step, e.g. `timeout: 10s`".into()),
                        );
                        ok = false;
                    }
                    Some(SyncResponse {
                        timeout,
                        accept_on_timeout: w.on_timeout
                            == Some(crate::flow::model::OnTimeout::Accept),
                    })
                }
                _ => {
                    if let Some(t) = &w.timeout {
                        cx.error(
                            t.pos,
                            "`timeout` applies to `response: sync` only",
                            Some("an asynchronous webhook answers 202 as soon as the event is stored".into()),
                        );
                        ok = false;
                    }
                    if w.on_timeout.is_some() {
                        cx.error(
                            w.path.pos,
                            "`on_timeout` applies to `response: sync` only",
                            Some("add `response: sync`, or remove `on_timeout`".into()),
                        );
                        ok = false;
                    }
                    None
                }
            };
            ok.then_some(Trigger::Webhook(Webhook {
                path,
                method,
                dedupe,
                dedupe_window,
                verifier,
                pos: w.path.pos,
                params,
                sync,
            }))
        }
    }
}

/// The ids of a step and of the steps nested in it (any mapping with an `id` in a list under
/// a control kind).
fn collect_ids(step: &Node, ids: &mut Vec<String>) {
    let Value::Map(entries) = &step.value else {
        return;
    };
    if let Some(id) = step.get("id").and_then(Node::as_str) {
        ids.push(id.to_owned());
    }
    fn nested(n: &Node, ids: &mut Vec<String>) {
        match &n.value {
            Value::Seq(items) => {
                for item in items {
                    if item.get("id").is_some() {
                        collect_ids(item, ids);
                    } else {
                        nested(item, ids);
                    }
                }
            }
            Value::Map(entries) => entries.iter().for_each(|(_, v)| nested(v, ids)),
            _ => {}
        }
    }
    for (k, v) in entries {
        if crate::flow::control::is_control(&k.name) || k.name == "on_error" {
            nested(v, ids);
        }
    }
}

/// A list of steps (the flow's, or one nested in a control kind), in order: each step's
/// expressions may read the steps before it in this block and the blocks around it, and the
/// steps nested in those.
pub(crate) fn compile_block(nodes: &[Node], cx: &mut CompileCx) -> Vec<CompiledStep> {
    let mut steps = Vec::new();
    for step_node in nodes {
        if let Some(step) = compile_step(step_node, cx) {
            steps.push(step);
        }
        // A step that failed to compile still names its ids, so that later references to
        // them are not reported too (once: a duplicate id fails here too).
        let mut ids = Vec::new();
        collect_ids(step_node, &mut ids);
        for id in ids {
            if !cx.steps_before.contains(&id) {
                cx.steps_before.push(id);
            }
        }
    }
    steps
}

fn compile_step(node: &Node, cx: &mut CompileCx) -> Option<CompiledStep> {
    let Value::Map(entries) = &node.value else {
        cx.error(
            node.pos,
            format!("a step is a mapping, found {}", node.kind_name()),
            Some("e.g. `- id: contact` then `http: {…}`".into()),
        );
        return None;
    };
    let mut common = Vec::new();
    let mut kind: Vec<(&Key, &Node)> = Vec::new();
    let mut ok = true;
    for (k, v) in entries {
        if STEP_COMMON_KEYS.contains(&k.name.as_str()) {
            common.push((k.clone(), v.clone()));
        } else if kinds().any(|kd| kd == k.name) {
            kind.push((k, v));
        } else {
            let all: Vec<&str> = kinds().chain(STEP_COMMON_KEYS.iter().copied()).collect();
            let guess = did_you_mean(&k.name, all.iter().copied());
            let kind_list = kinds().collect::<Vec<_>>().join(", ");
            let (message, hint) = match guess {
                Some(g) if kinds().any(|kd| kd == g) => (
                    format!("unknown step kind `{}`", k.name),
                    format!("did you mean `{g}`? kinds: {kind_list}"),
                ),
                Some(g) => (
                    format!("unknown key `{}` in step", k.name),
                    format!("did you mean `{g}`?"),
                ),
                None => (
                    format!("unknown key `{}` in step", k.name),
                    format!(
                        "a step has {} and one kind: {kind_list}",
                        STEP_COMMON_KEYS.join(", ")
                    ),
                ),
            };
            cx.error(k.pos, message, Some(hint));
            ok = false;
        }
    }
    let common_node = Node {
        pos: node.pos,
        value: Value::Map(common),
    };
    let common: Option<StepCommon> = cx.parse(&common_node);
    // Checked on the raw node so that a step with other errors still claims its id.
    if let Some(id_node) = node.get("id")
        && let Some(id) = id_node.as_str()
    {
        if !valid_id(id) {
            cx.error(
                id_node.pos,
                format!("invalid step id `{id}`"),
                Some("use letters, digits, `-` and `_`".into()),
            );
            ok = false;
        } else if let Some(first) = cx.seen.insert(id.to_owned(), id_node.pos) {
            cx.error(
                id_node.pos,
                format!("duplicate step id `{id}`"),
                Some(format!(
                    "first used at line {}; step ids must be unique",
                    first.line
                )),
            );
            ok = false;
        }
    }
    let (kind_key, kind_node) = match kind.as_slice() {
        [one] => *one,
        [] => {
            if ok {
                let kind_list = kinds().collect::<Vec<_>>().join(", ");
                cx.error(
                    node.pos,
                    "step has no kind",
                    Some(format!("add one of: {kind_list}")),
                );
            }
            return None;
        }
        [_, second, ..] => {
            cx.error(
                second.0.pos,
                format!(
                    "a step has exactly one kind; found {}",
                    kind.iter()
                        .map(|(k, _)| format!("`{}`", k.name))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                Some("split it into two steps".into()),
            );
            return None;
        }
    };
    // The step's place: numbered before the steps nested in it.
    let seq = cx.next_seq;
    cx.next_seq += 1;
    if crate::flow::control::is_control(&kind_key.name) {
        return compile_control(node, cx, common, kind_key, kind_node, ok, seq);
    }
    let def = STEPS
        .iter()
        .find(|d| d.kind == kind_key.name)
        .expect("kind checked above");
    let step = (def.compile)(kind_node, cx);
    let common = common?;
    let when = match &common.when {
        Some(w) => Some(cx.expr(w)?),
        None => None,
    };
    let (on_error, fallback) = compile_on_error(&common, cx)?;
    let step = step?;
    if !ok {
        return None;
    }
    let base = step.default_retry();
    let retry = match &common.retry {
        Some(r) => RetryPolicy::from_config(r, &base),
        None => base,
    };
    let timeout = common
        .timeout
        .map(|d| d.0)
        .or_else(|| {
            step.connection().map(|c| {
                let requests =
                    u32::try_from(step.requests_per_attempt().max(1)).unwrap_or(u32::MAX);
                c.timeout.saturating_mul(requests) + Duration::from_secs(1)
            })
        })
        .unwrap_or(DEFAULT_STEP_TIMEOUT);
    Some(CompiledStep {
        id: common.id.value.clone(),
        seq,
        kind: def.kind,
        when,
        retry,
        timeout,
        on_error,
        fallback,
        action: Action::Run(step),
    })
}

/// `on_error`: the policy, and the fallback steps when it is a list. Fallback steps read the
/// steps before this one and this one (`.steps.ID` is `{"error": …}`), and `.error`.
fn compile_on_error(
    common: &StepCommon,
    cx: &mut CompileCx,
) -> Option<(OnError, Option<Vec<CompiledStep>>)> {
    use crate::flow::model::OnErrorConfig;
    match &common.on_error {
        None => Some((OnError::Fail, None)),
        Some(OnErrorConfig::Policy(p)) => Some((*p, None)),
        Some(OnErrorConfig::Steps(nodes)) => {
            if nodes.is_empty() {
                cx.error(
                    common.id.pos,
                    "`on_error` is an empty list of fallback steps",
                    Some("write `fail`, `continue`, or at least one step".into()),
                );
                return None;
            }
            if too_deep(cx, common.id.pos) {
                return None;
            }
            let saved = cx.steps_before.clone();
            cx.steps_before.push(common.id.value.clone());
            let before = cx.diags.len();
            cx.depth += 1;
            let block = compile_block(nodes, cx);
            cx.depth -= 1;
            cx.steps_before = saved;
            (cx.diags.len() == before).then_some((OnError::Continue, Some(block)))
        }
    }
}

/// Reports nesting past [`crate::flow::control::MAX_DEPTH`] at `pos`; true when it is.
fn too_deep(cx: &mut CompileCx, pos: Pos) -> bool {
    let max = crate::flow::control::MAX_DEPTH;
    if cx.depth < max {
        return false;
    }
    cx.error(
        pos,
        format!("steps nest more than {max} levels deep here"),
        Some("move the inner part into a flow of its own".into()),
    );
    true
}

/// A step of a control kind: its `if:` and common keys as for any step; `retry` and
/// `timeout` mean nothing to it and are refused.
fn compile_control(
    node: &Node,
    cx: &mut CompileCx,
    common: Option<StepCommon>,
    kind_key: &Key,
    kind_node: &Node,
    ok: bool,
    seq: u32,
) -> Option<CompiledStep> {
    let common = common?;
    let when = match &common.when {
        Some(w) => Some(cx.expr(w)?),
        None => None,
    };
    let mut ok = ok;
    for key in ["retry", "timeout"] {
        if let Some(n) = node.get(key) {
            cx.error(
                n.pos,
                format!("`{key}` does not apply to a `{}` step", kind_key.name),
                Some("set it on the steps inside, or remove it".into()),
            );
            ok = false;
        }
    }
    if too_deep(cx, kind_key.pos) {
        return None;
    }
    cx.depth += 1;
    let control = crate::flow::control::compile(&kind_key.name, &common.id.value, kind_node, cx);
    cx.depth -= 1;
    let (on_error, fallback) = compile_on_error(&common, cx)?;
    let (kind, control) = control?;
    if !ok {
        return None;
    }
    Some(CompiledStep {
        id: common.id.value.clone(),
        seq,
        kind,
        when,
        retry: RetryPolicy::none(),
        timeout: DEFAULT_STEP_TIMEOUT,
        on_error,
        fallback,
        action: Action::Control(control),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(flow: &str) -> String {
        let mut conns = HashMap::new();
        let c = Connection::for_tests("crm", "http://127.0.0.1:1");
        conns.insert("crm".to_owned(), Arc::new(c));
        let node = crate::flow::node::parse_yaml(flow).unwrap();
        let mut diags = Diagnostics::default();
        let _ = compile_flow("f.yaml", flow, &node, &conns, &[], &mut diags);
        diags.sort();
        diags.to_string()
    }

    #[test]
    fn a_paginated_step_allows_every_page_the_connections_timeout() {
        let flow = "\
id: f
trigger: { manual: {} }
steps:
  - id: one
    http: { connection: crm, path: /x }
  - id: pages
    http: { connection: crm, path: /x, paginate: { link: next, max_pages: 4 } }
  - id: own
    http: { connection: crm, path: /x, paginate: { link: next } }
    timeout: 3s
";
        let mut conns = HashMap::new();
        let c = Connection::for_tests("crm", "http://127.0.0.1:1");
        conns.insert("crm".to_owned(), Arc::new(c));
        let node = crate::flow::node::parse_yaml(flow).unwrap();
        let mut diags = Diagnostics::default();
        let (f, _) =
            compile_flow("f.yaml", flow, &node, &conns, &[], &mut diags).expect("compiles");
        let timeouts: Vec<Duration> = f.steps.iter().map(|s| s.timeout).collect();
        // The test connection's timeout is 5 s.
        assert_eq!(
            timeouts,
            [6, 21, 3].map(Duration::from_secs).to_vec(),
            "{diags}"
        );
    }

    #[test]
    fn every_error_in_a_flow_is_reported_with_its_location() {
        let flow = "\
id: signup
trigger:
  webhook: { path: /hooks/a, dedupe: '{{ .event.headers[\"x\"] }}' }
steps:
  - id: a
    htpp: { connection: crm, path: /x }
  - id: b
    http: { connection: crn, path: /x }
    timeout: soon
  - id: b
    map: { x: '{{ .steps.nope.body | bad_fn }}' }
  - id: d
    map: '{{ .steps.e }}'
  - id: e
    filter: '{{ .x == }}'
";
        insta::assert_snapshot!(errors(flow), @r"
        f.yaml:6:5: error: unknown step kind `htpp`
          hint: did you mean `http`? kinds: http, graphql, soap, map, filter, log, switch, foreach, parallel, wait, signal, call, respond, delay
        f.yaml:8:25: error: unknown connection `crn`
          hint: did you mean `crm`?
        f.yaml:9:14: error: invalid duration `soon` (expected number at 0); expected e.g. `500ms`, `10s`, `5m`
          hint: see docs/flows.md for the keys each part takes
        f.yaml:10:9: error: duplicate step id `b`
          hint: first used at line 7; step ids must be unique
        f.yaml:11:38: error: invalid expression: undefined filter `bad_fn`
          hint: expressions are jq, e.g. `{{ .event.body.email | ascii_downcase }}`; see docs/expressions.md
        f.yaml:13:21: error: reference to unknown step `e`
          hint: step `e` runs later; a step can only read the results of steps before it
        f.yaml:15:23: error: invalid expression: expected term, found end of expression
          hint: expressions are jq, e.g. `{{ .event.body.email | ascii_downcase }}`; see docs/expressions.md
        ");
    }

    #[test]
    fn a_reserved_webhook_path_says_what_is_served_and_what_is_kept_for_later() {
        // Issue 12: the hint said Ferry serves `/metrics` and `/dashboard`, which answer 404.
        let flow = |path: &str| {
            format!(
                "id: f\ntrigger: {{ webhook: {{ path: {path} }} }}\nsteps:\n  - id: a\n    log: hi\n"
            )
        };
        for path in ["/metrics/x", "/dashboard", "/api"] {
            let e = errors(&flow(path));
            assert!(
                e.contains(&format!("webhook path `{path}` is reserved")),
                "{e}"
            );
            assert!(
                e.contains("Ferry serves /api, /healthz, /readyz itself")
                    && e.contains("/metrics and /dashboard are reserved"),
                "{e}"
            );
        }
        assert_eq!(errors(&flow("/apis")), "");
        assert_eq!(errors(&flow("/hooks/metrics")), "");
    }

    #[test]
    fn errors_at_the_top_do_not_hide_the_rest_of_the_file() {
        // Each top-level key in error is reported and left out; the trigger and the steps
        // are still checked. A required key in error is reported once, not also as missing.
        let flow = "\
id: f
descripton: a typo
retention: banana
trigger: { webhook: { path: /a, dedupe_window: 5 parsecs } }
steps:
  - id: a
    htpp: { connection: crm, path: /x }
  - id: a
    map: { x: 1 }
extra: 1
";
        insta::assert_snapshot!(errors(flow), @r#"
        f.yaml:2:1: error: unknown key `descripton`
          hint: did you mean `description`? allowed: id, description, trigger, steps, redact, retention, output
        f.yaml:3:12: error: invalid duration `banana` (expected number at 0); expected e.g. `500ms`, `10s`, `5m`
          hint: a flow file has `id`, `trigger` and `steps`; see docs/flows.md
        f.yaml:4:48: error: invalid duration `5 parsecs` (unknown time unit "parsecs", supported units: ns, us/µs, ms, sec, min, hours, days, weeks, months, years (and few variations)); expected e.g. `500ms`, `10s`, `5m`
          hint: see docs/flows.md for the keys each part takes
        f.yaml:7:5: error: unknown step kind `htpp`
          hint: did you mean `http`? kinds: http, graphql, soap, map, filter, log, switch, foreach, parallel, wait, signal, call, respond, delay
        f.yaml:8:9: error: duplicate step id `a`
          hint: first used at line 6; step ids must be unique
        f.yaml:10:1: error: unknown key `extra`
          hint: allowed: id, description, trigger, steps, redact, retention, output
        "#);
        insta::assert_snapshot!(errors("id: f\ntrigger: { manual: {} }\nsteps: 3\n"), @r"
        f.yaml:3:8: error: expected a sequence, found integer `3`
          hint: a flow file has `id`, `trigger` and `steps`; see docs/flows.md
        ");
    }

    #[test]
    fn every_error_in_a_connection_file_is_reported() {
        let text = "id: c\nbase_url: http://x\ntimout: 5s\nretry: { attempts: lots }\n";
        let node = crate::flow::node::parse_yaml(text).unwrap();
        let mut diags = Diagnostics::default();
        assert!(compile_connection("c.yaml", &node, &mut diags).is_none());
        insta::assert_snapshot!(diags.to_string(), @r#"
        c.yaml:3:1: error: unknown key `timout`
          hint: did you mean `timeout`? allowed: id, description, base_url, headers, timeout, retry, max_response_bytes, redact, auth, tls, redirects, openapi
        c.yaml:4:20: error: expected u32, found string "lots"
          hint: see docs/flows.md#connection-files
        "#);
    }

    #[test]
    fn a_step_naming_a_connection_whose_file_has_errors_says_so() {
        let flow = "id: f\ntrigger: { manual: {} }\nsteps:\n  - id: a\n    http: { connection: shop, path: /x }\n";
        let node = crate::flow::node::parse_yaml(flow).unwrap();
        let mut diags = Diagnostics::default();
        let broken = ["shop".to_owned()];
        assert!(
            compile_flow("f.yaml", flow, &node, &HashMap::new(), &broken, &mut diags).is_none()
        );
        insta::assert_snapshot!(diags.to_string(), @r"
        f.yaml:5:25: error: connection `shop` has errors
          hint: fix its file first; its errors are listed with it
        ");
    }

    #[test]
    fn manual_trigger_takes_every_short_form() {
        for trigger in [
            "trigger: manual",
            "trigger: { manual: }",
            "trigger: { manual: {} }",
        ] {
            let flow = format!("id: m\n{trigger}\nsteps:\n  - id: a\n    map: 1\n");
            assert_eq!(errors(&flow), "", "{trigger}");
        }
    }

    #[test]
    fn typos_in_methods_and_value_sources_are_explained() {
        let flow = "id: m\ntrigger: manual\nsteps:\n  - id: a\n    http: { url: 'http://x', method: PSOT }\n";
        let e = errors(flow);
        assert!(e.contains("5:38: error: invalid HTTP method `PSOT`"), "{e}");
        assert!(e.contains("did you mean `POST`?"), "{e}");

        let node = crate::flow::node::parse_yaml("id: c\nbase_url: { secret: k }\n").unwrap();
        let mut diags = Diagnostics::default();
        assert!(compile_connection("c.yaml", &node, &mut diags).is_some());
        for (value, message) in [
            ("{ secret: 'a b' }", "invalid secret name `a b`"),
            ("{ vault: k }", "unknown value source `vault`"),
            ("{ env: A, secret: b }", "with one key"),
        ] {
            let node =
                crate::flow::node::parse_yaml(&format!("id: c\nbase_url: {value}\n")).unwrap();
            let mut diags = Diagnostics::default();
            assert!(compile_connection("c.yaml", &node, &mut diags).is_none());
            assert!(diags.to_string().contains(message), "{value}: {diags}");
        }
    }

    #[test]
    fn redact_rules_are_checked_against_the_flow() {
        let flow = |rules: &str| {
            format!("id: m\ntrigger: manual\nredact: [{rules}]\nsteps:\n  - id: a\n    map: 1\n")
        };
        assert_eq!(errors(&flow("'.event.body.email', '.steps.a.x[].y'")), "");
        for (rules, msg) in [
            ("'.steps.b.x'", "no step `b`"),
            ("'.run.id'", "rules start with `.event` or `.steps.ID`"),
            ("'email'", "paths start with `.`"),
            ("'.event | .x'", "unexpected"),
        ] {
            let e = errors(&flow(rules));
            assert!(e.contains("3:") && e.contains(msg), "{rules}: {e}");
        }
    }

    #[test]
    fn control_kinds_are_checked_where_they_are_written() {
        let flow = "\
id: f
trigger: manual
steps:
  - id: route
    switch:
      cases:
        - when: false
          steps: [ { id: a, map: 1 } ]
        - when: '{{ false }}'
          steps: [ { id: b, map: '{{ .steps.a }}' } ]
        - when: '{{ .event.body.x > }}'
          steps: [ { id: c, htpp: {} } ]
      default: [ { id: d, map: '{{ .steps.later }}' } ]
  - id: short
    switch: { if: '{{ true }}', else: [ { id: e, map: 1 } ] }
  - id: both
    switch: { if: '{{ true }}', then: [ { id: g, map: 1 } ], cases: [] }
  - id: empty
    switch: { cases: [ { when: '{{ true }}', steps: [] } ] }
  - id: nap
    delay: 500ms
  - id: long
    delay: 2 years
  - id: when
    delay: { until: '{{ .event.body.at' }
  - id: tuned
    delay: 1s
    retry: { attempts: 3 }
  - id: route
    map: '{{ .steps.d }}'
  - id: later
    map: '{{ .steps.b }}'
";
        insta::assert_snapshot!(errors(flow), @r"
        f.yaml:7:17: error: this case can never run: its `when` is always false
          hint: remove the case, or write the condition it stands for
        f.yaml:9:17: error: this case can never run: its `when` is always false
          hint: remove the case, or write the condition it stands for
        f.yaml:10:45: error: reference to unknown step `a`
          hint: step `a` is in another arm of a switch or branch of a parallel, which this one cannot read
        f.yaml:11:37: error: invalid expression: expected term, found end of expression
          hint: expressions are jq, e.g. `{{ .event.body.email | ascii_downcase }}`; see docs/expressions.md
        f.yaml:12:29: error: unknown step kind `htpp`
          hint: did you mean `http`? kinds: http, graphql, soap, map, filter, log, switch, foreach, parallel, wait, signal, call, respond, delay
        f.yaml:13:43: error: reference to unknown step `later`
          hint: step `later` runs later; a step can only read the results of steps before it
        f.yaml:15:13: error: the short form of a switch needs `if` and `then`
          hint: e.g. `switch: { if: '{{ .event.body.vip }}', then: [ … ], else: [ … ] }`
        f.yaml:17:13: error: a switch has either `cases`/`default` or the short form `if`/`then`/`else`, not both
          hint: keep one form
        f.yaml:19:53: error: an arm of a switch needs at least one step
          hint: add a step, or remove the arm
        f.yaml:21:12: error: a delay is from 1s to 1 year, found 500ms
          hint: e.g. `delay: 30s`, `delay: 2h`, `delay: 7d`
        f.yaml:23:12: error: a delay is from 1s to 1 year, found 2years
          hint: e.g. `delay: 30s`, `delay: 2h`, `delay: 7d`
        f.yaml:25:39: error: invalid expression: expected closing brace
          hint: expressions are jq, e.g. `{{ .event.body.email | ascii_downcase }}`; see docs/expressions.md
        f.yaml:28:12: error: `retry` does not apply to a `delay` step
          hint: set it on the steps inside, or remove it
        f.yaml:29:9: error: duplicate step id `route`
          hint: first used at line 4; step ids must be unique
        ");
    }

    #[test]
    fn foreach_settings_are_checked() {
        let flow = "\
id: f
trigger: manual
steps:
  - id: a
    foreach: { items: 5, steps: [ { id: a1, map: 1 } ] }
  - id: b
    foreach: { items: '{{ .event.body.x }}', concurrency: 0, max_items: 2000000, steps: [ { id: b1, map: 1 } ] }
  - id: c
    foreach: { items: [1, 2], on_item_error: sometimes, steps: [ { id: c1, map: '{{ .item }}' } ] }
  - id: d
    foreach: { items: [1], on_item_error: { tolerate: 120% }, steps: [] }
  - id: e
    foreach: { items: '{{ .event.body.x }}', on_item_error: { tolerate: 10% }, output: '{{ .steps.e1 }}', steps: [ { id: e1, map: '{{ .index }}' } ] }
  - id: g
    map: '{{ .steps.e }}'
";
        insta::assert_snapshot!(errors(flow), @r"
        f.yaml:5:23: error: `items` must be a list, or a template yielding one; found an integer
          hint: e.g. `items: '{{ .event.body.lines }}'`
        f.yaml:7:59: error: `concurrency` must be from 1 to 1000, found 0
          hint: remove it for the default (8)
        f.yaml:7:73: error: `max_items` must be from 1 to 1000000, found 2000000
          hint: remove it for the default (10000)
        f.yaml:9:46: error: `on_item_error` is `fail`, `continue`, or `{ tolerate: N }` / `{ tolerate: 10% }`
          hint: `fail` (the default) fails the loop at the first failed item
        f.yaml:11:43: error: `on_item_error` is `fail`, `continue`, or `{ tolerate: N }` / `{ tolerate: 10% }`
          hint: `fail` (the default) fails the loop at the first failed item
        f.yaml:11:70: error: a foreach needs at least one step
          hint: add the steps each item runs under `steps:`
        ");
    }

    #[test]
    fn parallel_settings_are_checked() {
        let flow = "\
id: f
trigger: manual
steps:
  - id: a
    parallel: { branches: [ { id: x, map: 1 } ] }
  - id: b
    parallel: { branches: {}, join: all }
  - id: c
    parallel: { join: first, branches: { one: [ { id: c1, map: 1 } ] } }
  - id: d
    parallel: { branches: { 'no/slash': [ { id: d1, map: 1 } ], empty: [], two: [ { id: d2, map: '{{ .steps.d1 }}' } ] } }
  - id: e
    parallel: { join: race, branches: { one: [ { id: e1, map: '{{ .steps.a }}' } ] } }
";
        insta::assert_snapshot!(errors(flow), @r"
        f.yaml:5:27: error: `branches` maps branch names to steps, found a list
          hint: e.g. `branches: { crm: [ … ], mailer: [ … ] }`
        f.yaml:7:27: error: `branches` is empty
          hint: add a branch: `branches: { crm: [ … ] }`
        f.yaml:9:23: error: unknown value `first`
          hint: expected one of: all, settled, any, race
        f.yaml:11:29: error: invalid branch name `no/slash`
          hint: use letters, digits, `-` and `_`
        f.yaml:11:72: error: branch `empty` has no steps
          hint: add a step, or remove the branch
        f.yaml:11:109: error: reference to unknown step `d1`
          hint: step `d1` runs later; a step can only read the results of steps before it
        ");
    }

    #[test]
    fn control_kinds_nest_at_most_eight_deep() {
        let mut steps = String::from("[ { id: leaf, map: 1 } ]");
        for i in 0..9 {
            steps =
                format!("[ {{ id: s{i}, switch: {{ if: '{{{{ true }}}}', then: {steps} }} }} ]");
        }
        let e = errors(&format!("id: f\ntrigger: manual\nsteps: {steps}\n"));
        assert!(
            e.contains("error: steps nest more than 8 levels deep here"),
            "{e}"
        );
        assert_eq!(e.matches("error:").count(), 1, "{e}");
    }

    #[test]
    fn a_valid_flow_compiles() {
        let flow = "\
id: ok
trigger: { manual: {} }
steps:
  - id: m
    map: { email: '{{ .event.body.email | ascii_downcase }}' }
  - id: call
    http: { connection: crm, method: post, path: /contacts, body: '{{ .steps.m }}' }
";
        assert_eq!(errors(flow), "");
    }
}
