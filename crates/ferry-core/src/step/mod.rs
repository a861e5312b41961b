//! Step kinds: one file each (config, compile, execute, tests), registered in `STEPS`.
//!
//! A step never touches the store or the server: it gets a context and returns an outcome;
//! the engine persists outcomes and decides what runs next (`docs/specs/step.md`).

mod call;
mod filter;
pub mod graphql;
mod http;
mod log;
mod map;
pub mod paginate;
mod soap;

pub use call::USER_AGENT;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use jaq_json::Val;
use serde_json::Value as Json;

use crate::connection::{Connection, RetryPolicy};
use crate::diag::{Diagnostic, Diagnostics, Pos};
use crate::expr::{self, EvalError, Expr, Template};
use crate::flow::node::{Node, NodeError, Spanned, Value};

/// One step kind; `kind` is the key that names it in a step (`http:`, `map:`, …).
pub struct StepDef {
    pub kind: &'static str,
    pub summary: &'static str,
    pub compile: fn(&Node, &mut CompileCx) -> Option<Box<dyn Step>>,
    /// The JSON Schema of the kind's settings (for `docs/schema/`).
    pub schema: fn(&mut schemars::SchemaGenerator) -> schemars::Schema,
}

pub const STEPS: &[StepDef] = &[
    http::DEF,
    graphql::DEF,
    soap::DEF,
    map::DEF,
    filter::DEF,
    log::DEF,
];

/// Every step kind: those of `step/`, then the control kinds the engine runs itself.
pub fn kinds() -> impl Iterator<Item = &'static str> {
    STEPS
        .iter()
        .map(|d| d.kind)
        .chain(crate::flow::control::CONTROLS.iter().map(|c| c.kind))
}

/// A compiled step.
pub trait Step: Send + Sync + 'static {
    fn execute<'a>(&'a self, cx: &'a StepCx) -> BoxFuture<'a, Result<StepOutput, StepError>>;

    /// The connection whose retry policy and timeout apply, if any.
    fn connection(&self) -> Option<&Connection> {
        None
    }

    /// Steps that only compute cannot change their outcome by retrying.
    fn default_retry(&self) -> RetryPolicy {
        match self.connection().and_then(|c| c.retry.clone()) {
            Some(p) => p,
            None if self.calls_out() => RetryPolicy::http_default(),
            None => RetryPolicy::none(),
        }
    }

    /// The most requests one attempt may send (a paginated listing: its `max_pages`). The
    /// step's default timeout allows each of them the connection's timeout.
    fn requests_per_attempt(&self) -> u64 {
        1
    }

    /// True for steps with effects outside Ferry (their outcome must be stored before the
    /// next step starts).
    fn calls_out(&self) -> bool {
        false
    }

    /// True for a step that only computes, in time bounded by its input (no effect outside
    /// Ferry, no unbounded expression): it may run while its event is ingested, its result
    /// stored in the same write as the event.
    fn inline(&self) -> bool {
        false
    }

    /// The step's own settings that may come from the environment or a secret (for the
    /// start-up check of unset secrets).
    fn value_sources(&self) -> Vec<&crate::flow::model::ValueSource> {
        Vec::new()
    }
}

/// What a step sees while it runs.
pub struct StepCx {
    /// The expression context of SPEC §6 (`event`, `steps`, `run`, `item`).
    pub ctx: Val,
    pub run_id: String,
    pub step_path: String,
    /// Stable per run and step: the same on every retry and after a crash.
    pub idempotency_key: String,
    pub http: reqwest::Client,
    /// For URLs built from data: internal addresses are refused (SSRF guard).
    pub guarded_http: reqwest::Client,
    pub net_policy: std::sync::Arc<crate::net::NetPolicy>,
    pub expr_timeout: Duration,
    /// Resolves `{ env }` / `{ secret }` values; knows what must be masked.
    pub secrets: std::sync::Arc<crate::secret::Vault>,
}

impl StepCx {
    /// Evaluates templates against the context. `bounded` (known when the flow compiled)
    /// says every expression finishes in time proportional to its input: those run inline,
    /// saving two thread hand-offs; the others run on the blocking pool with a time limit.
    pub async fn eval<T, F>(&self, bounded: bool, f: F) -> Result<T, StepError>
    where
        T: Send + 'static,
        F: FnOnce(&Val) -> Result<T, EvalError> + Send + 'static,
    {
        if bounded {
            return f(&self.ctx).map_err(StepError::expression);
        }
        let ctx = self.ctx.clone();
        expr::eval_blocking(self.expr_timeout, move || f(&ctx))
            .await
            .map_err(StepError::expression)
    }
}

impl StepCx {
    /// Renders a step's optional templates in one evaluation, each error naming its setting
    /// (`in `body`: …`). The result has one entry per part, in order; absent parts stay `None`.
    pub async fn render_named(
        &self,
        parts: Vec<(&'static str, Option<Template>)>,
    ) -> Result<std::vec::IntoIter<Option<Json>>, StepError> {
        let bounded = parts
            .iter()
            .filter_map(|(_, t)| t.as_ref())
            .all(Template::is_bounded);
        let out = self
            .eval(bounded, move |ctx| {
                parts
                    .iter()
                    .map(|(name, t)| match t {
                        Some(t) => t.render(ctx).map(Some).map_err(|e| EvalError {
                            message: format!("in `{name}`: {}", e.message),
                        }),
                        None => Ok(None),
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .await?;
        Ok(out.into_iter())
    }
}

/// A step's result and what the engine should do next.
#[derive(Debug, Default)]
pub struct StepOutput {
    /// `.steps.<id>` for the steps after this one.
    pub value: Json,
    /// What was sent (after masking), for the run record.
    pub request: Option<Json>,
    /// What the run does next: go on, or (a `filter` that did not pass) end as succeeded.
    pub outcome: Outcome,
}

/// What happens to a run after a step: the engine's decision, which a step kind proposes
/// (`Continue`, or `Finish` for a `filter`) and the engine completes (a retry, a `delay`).
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Outcome {
    /// The next step runs.
    #[default]
    Continue,
    /// The step failed an attempt; the run is queued for the next one at this time.
    RetryAt { at_ms: i64 },
    /// The run sleeps in the queue (a `delay`) until this time; not an attempt.
    WaitUntil { at_ms: i64 },
    /// The run ends here.
    Finish {
        status: crate::store::RunStatus,
        error: Option<Json>,
    },
}

impl Outcome {
    /// The run ends as succeeded.
    pub fn succeed() -> Outcome {
        Outcome::Finish {
            status: crate::store::RunStatus::Succeeded,
            error: None,
        }
    }
}

/// Why an attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The peer answered with an HTTP status that is not a success.
    Status(u16),
    /// No answer: connection refused or reset, DNS, TLS.
    Network,
    /// No answer in time.
    Timeout,
    /// The answer broke a limit (too large) or could not be read.
    BadResponse,
    /// An expression failed at run time.
    Expression,
    /// The flow or its environment is wrong (missing variable, bad URL).
    Config,
    /// The peer answered with a protocol-level fault (a SOAP Fault): retried when the peer
    /// says the fault is its own (`Server`/`Receiver`), not when it blames the request.
    Fault { retryable: bool },
    /// Items of a `foreach` failed, more than it tolerates: retryable when one of them ran
    /// out of attempts on a failure that could pass later (the run is then dead).
    Items { retryable: bool },
    /// Branches of a `parallel` failed (as its `join` counts them); retryable as `Items`.
    Branches { retryable: bool },
    /// A `call`'s input does not match the called flow's input schema.
    Input,
    /// The run a `call` started failed (its error is in the message), or calls nest too
    /// deep.
    Child,
}

#[derive(Debug, Clone)]
pub struct StepError {
    pub kind: ErrorKind,
    pub message: String,
    pub request: Option<Json>,
    pub response: Option<Json>,
    pub retry_after: Option<Duration>,
}

impl StepError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        StepError {
            kind,
            message: message.into(),
            request: None,
            response: None,
            retry_after: None,
        }
    }

    pub fn expression(e: EvalError) -> Self {
        StepError::new(ErrorKind::Expression, e.message)
    }

    /// The one place that decides whether an attempt is worth repeating (SPEC §8.3): network
    /// failures, timeouts, 408/409/425/429 and 5xx are; other 4xx are not unless the policy
    /// lists them; a failed expression or a configuration error never is.
    pub fn is_retryable(&self, policy: &RetryPolicy) -> bool {
        match self.kind {
            ErrorKind::Status(s) => {
                matches!(s, 408 | 409 | 425 | 429) || s >= 500 || policy.on_status.contains(&s)
            }
            ErrorKind::Network | ErrorKind::Timeout => true,
            ErrorKind::BadResponse
            | ErrorKind::Expression
            | ErrorKind::Config
            | ErrorKind::Input
            | ErrorKind::Child => false,
            ErrorKind::Fault { retryable }
            | ErrorKind::Items { retryable }
            | ErrorKind::Branches { retryable } => retryable,
        }
    }

    /// The error as stored in a run and shown by the API.
    pub fn to_json(&self) -> Json {
        let mut o = serde_json::json!({ "kind": self.kind_name(), "message": self.message });
        if let ErrorKind::Status(s) = self.kind {
            o["status"] = s.into();
        }
        o
    }

    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            ErrorKind::Status(_) => "http_status",
            ErrorKind::Network => "network",
            ErrorKind::Timeout => "timeout",
            ErrorKind::BadResponse => "bad_response",
            ErrorKind::Expression => "expression",
            ErrorKind::Config => "config",
            ErrorKind::Fault { .. } => "fault",
            ErrorKind::Items { .. } => "items",
            ErrorKind::Branches { .. } => "branches",
            ErrorKind::Input => "input",
            ErrorKind::Child => "child",
        }
    }
}

/// What compiling a step (or a flow) has at hand, and where its errors go.
pub struct CompileCx<'a> {
    pub file: &'a str,
    pub source: &'a str,
    pub connections: &'a HashMap<String, Arc<Connection>>,
    /// Ids of connection files that failed to load (their errors are reported already).
    pub broken_connections: &'a [String],
    pub diags: &'a mut Diagnostics,
    /// Ids of the steps before the one being compiled (what `.steps.X` may name).
    pub steps_before: Vec<String>,
    /// Ids of every step in the flow (to tell "later" from "unknown").
    pub all_steps: Vec<String>,
    /// What the expressions compiled so far can read of a run's context.
    pub reads: crate::expr::Reads,
    /// Step ids met so far, at any depth, with where (ids are unique in a flow).
    pub seen: HashMap<String, Pos>,
    /// The `seq` of the next step compiled.
    pub next_seq: u32,
    /// How many control kinds enclose the step being compiled.
    pub depth: u32,
}

impl CompileCx<'_> {
    pub fn error(&mut self, pos: Pos, message: impl Into<String>, hint: Option<String>) {
        let mut d = Diagnostic::new(self.file, pos, message);
        d.hint = hint;
        self.diags.push(d);
    }

    pub fn node_error(&mut self, e: NodeError, fallback: Pos) {
        let hint = e
            .hint
            .or_else(|| Some("see docs/flows.md for the keys each part takes".into()));
        self.error(e.pos.unwrap_or(fallback), e.message, hint);
    }

    /// Typed settings from a node, or `None` with the error recorded.
    pub fn parse<T: serde::de::DeserializeOwned>(&mut self, node: &Node) -> Option<T> {
        match node.parse::<T>() {
            Ok(v) => Some(v),
            Err(e) => {
                self.node_error(e, node.pos);
                None
            }
        }
    }

    /// The position of byte `offset` inside the string written at `pos`, when the string
    /// sits on one line (quoted or plain); else the string's own position. Columns count the
    /// source as written: an escape (`\"`, `\u00e9`) in a double-quoted string and a doubled
    /// `''` in a single-quoted one take their room.
    pub(crate) fn pos_in_string(&self, pos: Pos, value: &str, offset: usize) -> Pos {
        if value[..offset.min(value.len())].contains('\n') {
            return pos;
        }
        let line = self
            .source
            .lines()
            .nth(pos.line.saturating_sub(1) as usize)
            .unwrap_or("");
        let written: Vec<char> = line
            .chars()
            .skip(pos.col.saturating_sub(1) as usize)
            .collect();
        let chars = value[..offset.min(value.len())].chars().count();
        let col = match written.first() {
            Some('"') => source_cols(&written[1..], chars, Quote::Double).map(|c| c + 1),
            Some('\'') => source_cols(&written[1..], chars, Quote::Single).map(|c| c + 1),
            _ => Some(chars),
        };
        Pos {
            line: pos.line,
            col: pos.col + col.unwrap_or(chars) as u32,
        }
    }

    /// A jq expression written bare or as `{{ expr }}` (for `if:` and `filter:`).
    pub fn expr(&mut self, s: &Spanned<String>) -> Option<Expr> {
        let text = s.value.as_str();
        let trimmed = text.trim();
        let (code, base) = if trimmed.starts_with("{{") && trimmed.ends_with("}}") {
            let start = text.find("{{").expect("checked") + 2;
            let end = text.rfind("}}").expect("checked");
            (&text[start..end], start)
        } else {
            (text, 0)
        };
        match Expr::compile(code) {
            Ok(e) => {
                self.reads.add(e.reads());
                self.check_step_refs(s.pos, text, base, code);
                Some(e)
            }
            Err(e) => {
                let pos = self.pos_in_string(s.pos, text, base + e.offset);
                self.error(
                    pos,
                    format!("invalid expression: {}", e.message),
                    Some(expr_hint(code)),
                );
                None
            }
        }
    }

    /// A template over any value: strings may hold `{{ }}`, maps and lists nest.
    pub fn template(&mut self, node: &Node) -> Option<Template> {
        match &node.value {
            Value::Str(s) => match Template::compile_str(s) {
                Ok(t) => {
                    t.add_reads(&mut self.reads);
                    if let Ok(pieces) = crate::expr::split_template(s) {
                        for (a, b) in pieces.into_iter().filter_map(Result::err) {
                            self.check_step_refs(node.pos, s, a, &s[a..b]);
                        }
                    }
                    Some(t)
                }
                Err(e) => {
                    let pos = self.pos_in_string(node.pos, s, e.offset);
                    self.error(
                        pos,
                        format!("invalid expression: {}", e.message),
                        Some(expr_hint(s)),
                    );
                    None
                }
            },
            Value::Seq(items) => {
                let mut out = Vec::with_capacity(items.len());
                let mut ok = true;
                for item in items {
                    match self.template(item) {
                        Some(t) => out.push(t),
                        None => ok = false,
                    }
                }
                ok.then_some(Template::Array(out))
            }
            Value::Map(entries) => {
                let mut out = Vec::with_capacity(entries.len());
                let mut ok = true;
                for (k, v) in entries {
                    match self.template(v) {
                        Some(t) => out.push((k.name.clone(), t)),
                        None => ok = false,
                    }
                }
                if !ok {
                    return None;
                }
                // An object with no expression inside renders to itself: keep it literal.
                if out.iter().all(|(_, t)| t.is_literal()) {
                    return Some(Template::Literal(node.to_json()));
                }
                Some(Template::Object(out))
            }
            _ => Some(Template::Literal(node.to_json())),
        }
    }

    /// Reports `.steps.X` where X is not a step that runs before this one.
    fn check_step_refs(&mut self, pos: Pos, text: &str, base: usize, code: &str) {
        for (offset, name) in step_refs(code) {
            if self.steps_before.contains(&name) {
                continue;
            }
            let at = self.pos_in_string(pos, text, base + offset);
            let hint = if self.seen.contains_key(&name) {
                format!(
                    "step `{name}` is in another arm of a switch or branch of a parallel, which this one cannot read"
                )
            } else if self.all_steps.contains(&name) {
                format!(
                    "step `{name}` runs later; a step can only read the results of steps before it"
                )
            } else {
                match crate::diag::did_you_mean(&name, self.steps_before.iter().map(String::as_str))
                {
                    Some(m) => format!("did you mean `{m}`?"),
                    None if self.steps_before.is_empty() => "no step runs before this one".into(),
                    None => format!("steps before this one: {}", self.steps_before.join(", ")),
                }
            };
            self.error(
                at,
                format!("reference to unknown step `{name}`"),
                Some(hint),
            );
        }
    }

    pub fn connection(&mut self, name: &Spanned<String>) -> Option<Arc<Connection>> {
        match self.connections.get(name.value.as_str()) {
            Some(c) => Some(c.clone()),
            None if self.broken_connections.contains(&name.value) => {
                self.error(
                    name.pos,
                    format!("connection `{}` has errors", name.value),
                    Some("fix its file first; its errors are listed with it".into()),
                );
                None
            }
            None => {
                let known: Vec<&str> = self.connections.keys().map(String::as_str).collect();
                let hint = match crate::diag::did_you_mean(&name.value, known.iter().copied()) {
                    Some(m) => format!("did you mean `{m}`?"),
                    None if known.is_empty() => {
                        "add a file under connections/ with this `id`".into()
                    }
                    None => format!("known connections: {}", known.join(", ")),
                };
                self.error(
                    name.pos,
                    format!("unknown connection `{}`", name.value),
                    Some(hint),
                );
                None
            }
        }
    }
}

/// `.steps.NAME` and `.steps["NAME"]` in jq code, with the byte offset of NAME.
fn step_refs(code: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    let mut from = 0;
    while let Some(i) = code[from..].find(".steps") {
        let start = from + i + ".steps".len();
        from = start;
        // `.stepsfoo` is another field; `$x.steps` is fine too.
        let rest = &code[start..];
        let (skip, quoted) = if rest.starts_with(".\"") || rest.starts_with("[\"") {
            (2, true)
        } else if rest.starts_with('.') {
            (1, false)
        } else {
            continue;
        };
        let name_start = start + skip;
        let mut end = name_start;
        while end < bytes.len() {
            let c = bytes[end];
            let ok = if quoted {
                c != b'"'
            } else {
                c.is_ascii_alphanumeric() || c == b'_'
            };
            if !ok {
                break;
            }
            end += 1;
        }
        if end > name_start {
            out.push((name_start, code[name_start..end].to_owned()));
        }
    }
    out
}

fn expr_hint(code: &str) -> String {
    // `.steps.only-paid` parses as `.steps.only - paid`: the usual cause of "undefined filter".
    let mut from = 0;
    while let Some(i) = code[from..].find(".steps.") {
        let start = from + i + ".steps.".len();
        let name: String = code[start..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
            .collect();
        if name.contains('-') {
            return format!("a step id with `-` needs brackets: `.steps[\"{name}\"]`");
        }
        from = start;
    }
    "expressions are jq, e.g. `{{ .event.body.email | ascii_downcase }}`; see docs/expressions.md"
        .into()
}

#[derive(Clone, Copy)]
enum Quote {
    Single,
    Double,
}

/// How many source characters of a quoted string (after its opening quote) write its first
/// `chars` characters; `None` when the line ends first (the string goes on below).
fn source_cols(written: &[char], chars: usize, quote: Quote) -> Option<usize> {
    let mut i = 0;
    for _ in 0..chars {
        let step = match (quote, written.get(i)?) {
            (Quote::Single, '\'') => 2,
            (Quote::Double, '\\') => match written.get(i + 1)? {
                'x' => 4,
                'u' => 6,
                'U' => 10,
                _ => 2,
            },
            _ => 1,
        };
        i += step;
    }
    (i <= written.len()).then_some(i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hyphenated_step_ids_get_a_bracket_hint() {
        assert_eq!(
            expr_hint(".steps.only-paid.body"),
            "a step id with `-` needs brackets: `.steps[\"only-paid\"]`"
        );
        assert!(expr_hint(".steps.ok | nope").starts_with("expressions are jq"));
    }

    #[test]
    fn step_references_are_found_in_both_spellings() {
        assert_eq!(
            step_refs(".steps.contact.body.id"),
            vec![(7, "contact".to_owned())]
        );
        assert_eq!(
            step_refs(r#".steps["my-step"].status"#),
            vec![(8, "my-step".to_owned())]
        );
        assert_eq!(step_refs(".stepsish"), vec![]);
    }
}
