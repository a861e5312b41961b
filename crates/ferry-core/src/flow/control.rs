//! The control kinds: steps that hold other steps (`switch`) or shape when the run goes on
//! (`delay`). Unlike the kinds in `step/`, the engine runs them itself: they decide which
//! rows come next, and a step never touches the store.
//!
//! ```yaml
//! - id: route
//!   switch:
//!     cases:
//!       - when: '{{ .event.body.total > 10000000 }}'
//!         steps: [ { id: alert, http: { … } } ]
//!     default: [ { id: note, log: small order } ]
//! - id: big                      # the short form of a two-arm switch
//!   switch: { if: '{{ .event.body.vip }}', then: [ … ], else: [ … ] }
//! - id: cool-off
//!   delay: 30s                   # or delay: { until: '{{ .event.body.ship_at }}' }
//! ```

use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;

use super::compile::{CompiledStep, compile_block};
use super::model::Dur;
use super::node::{Node, Spanned, Value};
use crate::diag::Pos;
use crate::expr::Expr;
use crate::step::CompileCx;

/// Control kinds nest at most this deep (a `switch` in a `switch` is depth 2). Compiling
/// recurses once per level: 17 levels overflowed a 2 MiB thread stack in a debug build, so
/// the limit keeps well below (deeper logic belongs in a flow of its own, called).
pub const MAX_DEPTH: u32 = 8;
/// The shortest and the longest `delay`.
pub const MIN_DELAY: Duration = Duration::from_secs(1);
pub const MAX_DELAY: Duration = Duration::from_secs(366 * 24 * 3600);

pub struct ControlDef {
    pub kind: &'static str,
    pub summary: &'static str,
    /// The JSON Schema of the kind's settings; `step` is a reference to the step schema.
    pub schema: fn(&serde_json::Value) -> serde_json::Value,
}

pub const CONTROLS: &[ControlDef] = &[
    ControlDef {
        kind: "switch",
        summary: "run the steps of the first case whose `when` is true, else the `default` steps",
        schema: |step| {
            let steps = serde_json::json!({"type": "array", "items": step});
            serde_json::json!({
                "type": "object",
                "additionalProperties": false,
                "properties": {
                    "cases": {"type": "array", "minItems": 1, "items": {
                        "type": "object", "additionalProperties": false, "required": ["when", "steps"],
                        "properties": {
                            "when": {"type": ["string", "boolean"], "description": "An expression; the first true case runs."},
                            "steps": steps,
                        }
                    }},
                    "default": steps,
                    "if": {"type": ["string", "boolean"], "description": "The short form: an expression; `then` runs when it is true, else `else`."},
                    "then": steps,
                    "else": steps,
                }
            })
        },
    },
    ControlDef {
        kind: "foreach",
        summary: "run steps once per item of a list, a few items at a time; the results in input order",
        schema: |step| {
            serde_json::json!({
                "type": "object",
                "additionalProperties": false,
                "required": ["items", "steps"],
                "properties": {
                    "items": {"type": ["string", "array"], "description": "A template yielding a list (or a literal list)."},
                    "steps": {"type": "array", "minItems": 1, "items": step},
                    "concurrency": {"type": "integer", "minimum": 1, "maximum": MAX_CONCURRENCY, "description": "Items in flight at once (default 8)."},
                    "max_items": {"type": "integer", "minimum": 1, "maximum": MAX_ITEMS_LIMIT, "description": "More items than this fail the step (default 10000)."},
                    "on_item_error": {"anyOf": [
                        {"enum": ["fail", "continue"]},
                        {"type": "object", "additionalProperties": false, "required": ["tolerate"],
                         "properties": {"tolerate": {"type": ["integer", "string"], "description": "How many failed items (`3`) or what share (`10%`) the loop tolerates."}}}
                    ]},
                    "output": {"description": "What each item contributes to the loop's result (a template over the item's context); default: its last step's result."},
                }
            })
        },
    },
    ControlDef {
        kind: "parallel",
        summary: "run named branches of steps at the same time; join when all, the settled or the first one end",
        schema: |step| {
            serde_json::json!({
                "type": "object",
                "additionalProperties": false,
                "required": ["branches"],
                "properties": {
                    "branches": {"type": "object", "minProperties": 1, "description": "Branch name -> its steps.",
                                 "additionalProperties": {"type": "array", "minItems": 1, "items": step}},
                    "join": {"enum": ["all", "settled", "any", "race"], "description": "`all` (default): every branch must succeed; `settled`: collect every outcome; `any` (or `race`): the first success wins, the others are cancelled."},
                }
            })
        },
    },
    ControlDef {
        kind: "wait",
        summary: "sleep until a signal with this name and key arrives (the callback pattern), at most `timeout`",
        schema: |_| {
            serde_json::json!({
                "type": "object",
                "additionalProperties": false,
                "required": ["signal", "key", "timeout"],
                "properties": {
                    "signal": {"type": "string", "description": "The signal's name: letters, digits, `-`, `_`, `.`."},
                    "key": {"type": "string", "description": "Which signal of that name: a template, e.g. the order id."},
                    "timeout": {"$ref": "#/$defs/Duration"},
                    "lookback": {"$ref": "#/$defs/Duration"},
                }
            })
        },
    },
    ControlDef {
        kind: "signal",
        summary: "send a signal that resumes the runs waiting for its name and key",
        schema: |_| {
            serde_json::json!({
                "type": "object",
                "additionalProperties": false,
                "required": ["name", "key"],
                "properties": {
                    "name": {"type": "string"},
                    "key": {"type": "string", "description": "A template."},
                    "data": {"description": "What the waiting step gets as its result (a template); default `null`."},
                }
            })
        },
    },
    ControlDef {
        kind: "call",
        summary: "run another flow (one with a `flow` trigger) as a run of its own; its `output` is the step's result",
        schema: |_| {
            serde_json::json!({
                "type": "object",
                "additionalProperties": false,
                "required": ["flow"],
                "properties": {
                    "flow": {"type": "string", "description": "The id of the flow to run; it has `trigger: { flow: {} }`."},
                    "input": {"description": "Its `.event.body` (a template); default `null`."},
                    "wait": {"type": "boolean", "description": "Wait for the called run to end (default `true`); `false` starts it and goes on."},
                    "timeout": {"$ref": "#/$defs/Duration"},
                }
            })
        },
    },
    ControlDef {
        kind: "respond",
        summary: "answer the caller of a `response: sync` webhook (status, headers, body); the run goes on",
        schema: |_| {
            serde_json::json!({
                "type": "object",
                "additionalProperties": false,
                "properties": {
                    "status": {"type": ["integer", "string"], "description": "The HTTP status (default 200), or a template yielding it."},
                    "headers": {"type": "object", "additionalProperties": {"type": "string"}, "description": "Header name -> value (templates)."},
                    "body": {"description": "The body (a template): JSON, or XML when `content-type` says XML (docs/xml.md), or text when it is a string and the type is not JSON."},
                }
            })
        },
    },
    ControlDef {
        kind: "delay",
        summary: "sleep (durably, in the queue) for a duration or until a time",
        schema: |_| {
            serde_json::json!({"anyOf": [
                {"$ref": "#/$defs/Duration"},
                {"type": "object", "additionalProperties": false, "required": ["until"],
                 "properties": {"until": {"type": "string", "description": "An RFC 3339 time, usually a template."}}}
            ]})
        },
    },
];

pub enum Control {
    Switch(Switch),
    Foreach(Foreach),
    Parallel(Parallel),
    Wait(Wait),
    Signal(Signal),
    Delay(Delay),
    Call(Call),
    Respond(Respond),
}

/// The largest body a `respond` step sends.
pub const MAX_RESPOND_BODY: usize = 10 * 1024 * 1024;

pub struct Respond {
    pub status: RespondStatus,
    pub headers: Vec<(String, crate::expr::Template)>,
    pub body: Option<crate::expr::Template>,
    pub pos: Pos,
}

pub enum RespondStatus {
    Fixed(u16),
    Expr(crate::expr::Template),
}

/// Calls nest at most this deep at run time (a run started by a `call` in a run started by a
/// `call` is depth 2); cycles that can be seen in the files are refused when they load.
pub const MAX_CALL_DEPTH: u32 = 16;
/// How long a `call` waits for the run it started, by default.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);

pub struct Call {
    /// The called flow's id.
    pub flow: String,
    pub input: Option<crate::expr::Template>,
    pub wait: bool,
    pub timeout: Duration,
    /// Where `flow:` is written, for the checks across files.
    pub pos: Pos,
}

/// How long a signal that no wait took is kept, and the longest `lookback`.
pub const SIGNAL_KEEP: Duration = Duration::from_secs(600);

pub struct Wait {
    pub signal: String,
    pub key: crate::expr::Template,
    pub timeout: Duration,
    pub lookback: Duration,
}

pub struct Signal {
    pub name: String,
    pub key: crate::expr::Template,
    pub data: Option<crate::expr::Template>,
}

/// A signal name: what `POST /api/v1/signals/NAME/KEY` and `wait.signal` use.
pub fn valid_signal_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Named branches, in the order written.
pub struct Parallel {
    pub branches: Vec<(String, Vec<CompiledStep>)>,
    pub join: Join,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Join {
    /// Every branch must succeed; a failure fails the step once the others have settled.
    All,
    /// Every branch runs to its end; each one's outcome is collected.
    Settled,
    /// The first branch to succeed wins; the others are cancelled.
    #[serde(alias = "race")]
    Any,
}

/// Items in flight at once, by default and at most.
pub const DEFAULT_CONCURRENCY: usize = 8;
pub const MAX_CONCURRENCY: usize = 1000;
/// Items a loop takes, by default and at most.
pub const DEFAULT_MAX_ITEMS: usize = 10_000;
pub const MAX_ITEMS_LIMIT: usize = 1_000_000;

pub struct Foreach {
    pub items: Items,
    pub steps: Vec<CompiledStep>,
    pub concurrency: usize,
    pub max_items: usize,
    pub on_item_error: ItemErrors,
    /// What each item contributes; `None`: its last step's result.
    pub output: Option<crate::expr::Template>,
}

pub enum Items {
    Expr(Expr),
    List(Vec<serde_json::Value>),
}

/// What failed items do to a `foreach`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ItemErrors {
    /// The first failure fails the loop (the items in flight finish; no new one starts).
    Fail,
    /// Every item runs; a failed item's result is `{"error": …}`.
    Continue,
    /// Like `Continue` while at most this many items failed.
    Tolerate(usize),
    /// Like `Continue` while at most this share (0–100 %) of the items failed.
    TolerateShare(f64),
}

impl ItemErrors {
    /// True when `failed` of `total` items is more than the loop accepts.
    pub fn too_many(self, failed: usize, total: usize) -> bool {
        match self {
            ItemErrors::Fail => failed > 0,
            ItemErrors::Continue => false,
            ItemErrors::Tolerate(n) => failed > n,
            ItemErrors::TolerateShare(p) => failed as f64 > total as f64 * p / 100.0,
        }
    }
}

/// The arms of a `switch`, in order; the `default` arm last (empty when not written).
pub struct Switch {
    pub cases: Vec<Case>,
    pub default: Vec<CompiledStep>,
}

pub struct Case {
    pub when: Expr,
    pub steps: Vec<CompiledStep>,
}

/// Which arm a `switch` took: what its row records, and `.steps.ID.case`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arm {
    Case(usize),
    Default,
}

impl Arm {
    /// The path segment of the arm's steps: `route/0/alert`, `route/default/note`.
    pub fn segment(self) -> String {
        match self {
            Arm::Case(i) => i.to_string(),
            Arm::Default => "default".into(),
        }
    }

    pub fn to_json(self) -> serde_json::Value {
        match self {
            Arm::Case(i) => serde_json::json!({ "case": i }),
            Arm::Default => serde_json::json!({ "case": "default" }),
        }
    }

    /// The arm a stored row records.
    pub fn from_json(v: &serde_json::Value) -> Option<Arm> {
        match &v["case"] {
            serde_json::Value::String(s) if s == "default" => Some(Arm::Default),
            serde_json::Value::Number(n) => n.as_u64().map(|i| Arm::Case(i as usize)),
            _ => None,
        }
    }
}

impl Switch {
    pub fn arm(&self, arm: Arm) -> &[CompiledStep] {
        match arm {
            Arm::Case(i) => self.cases.get(i).map_or(&[], |c| c.steps.as_slice()),
            Arm::Default => &self.default,
        }
    }
}

pub enum Delay {
    For(Duration),
    /// An expression yielding an RFC 3339 time.
    Until(Expr),
}

impl Control {
    /// The blocks of steps it holds, in order.
    pub fn blocks(&self) -> Vec<&[CompiledStep]> {
        match self {
            Control::Switch(s) => s
                .cases
                .iter()
                .map(|c| c.steps.as_slice())
                .chain([s.default.as_slice()])
                .collect(),
            Control::Foreach(f) => vec![f.steps.as_slice()],
            Control::Parallel(p) => p.branches.iter().map(|(_, b)| b.as_slice()).collect(),
            Control::Delay(_)
            | Control::Wait(_)
            | Control::Signal(_)
            | Control::Call(_)
            | Control::Respond(_) => Vec::new(),
        }
    }
}

pub fn is_control(kind: &str) -> bool {
    CONTROLS.iter().any(|c| c.kind == kind)
}

/// Compiles the control kind `kind` of step `id` (its settings are `node`).
pub(crate) fn compile(
    kind: &str,
    id: &str,
    node: &Node,
    cx: &mut CompileCx,
) -> Option<(&'static str, Control)> {
    match kind {
        "switch" => compile_switch(id, node, cx).map(|s| ("switch", Control::Switch(s))),
        "foreach" => compile_foreach(node, cx).map(|f| ("foreach", Control::Foreach(f))),
        "parallel" => compile_parallel(node, cx).map(|p| ("parallel", Control::Parallel(p))),
        "wait" => compile_wait(node, cx).map(|w| ("wait", Control::Wait(w))),
        "signal" => compile_signal(node, cx).map(|w| ("signal", Control::Signal(w))),
        "delay" => compile_delay(node, cx).map(|d| ("delay", Control::Delay(d))),
        "call" => compile_call(node, cx).map(|c| ("call", Control::Call(c))),
        "respond" => compile_respond(node, cx).map(|r| ("respond", Control::Respond(r))),
        other => unreachable!("not a control kind: {other}"),
    }
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct SwitchConfig {
    #[serde(default)]
    cases: Option<Spanned<Vec<CaseConfig>>>,
    #[serde(default)]
    default: Option<Spanned<Vec<Node>>>,
    #[serde(default, rename = "if")]
    when: Option<Node>,
    #[serde(default)]
    then: Option<Spanned<Vec<Node>>>,
    #[serde(default, rename = "else")]
    otherwise: Option<Spanned<Vec<Node>>>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct CaseConfig {
    when: Node,
    steps: Spanned<Vec<Node>>,
}

fn compile_switch(id: &str, node: &Node, cx: &mut CompileCx) -> Option<Switch> {
    let c: SwitchConfig = cx.parse(node)?;
    let short = c.when.is_some() || c.then.is_some() || c.otherwise.is_some();
    let long = c.cases.is_some() || c.default.is_some();
    let arms: Vec<(Node, Spanned<Vec<Node>>)> = match (long, short) {
        (true, true) => {
            cx.error(
                node.pos,
                "a switch has either `cases`/`default` or the short form `if`/`then`/`else`, not both",
                Some("keep one form".into()),
            );
            return None;
        }
        (false, false) => {
            cx.error(
                node.pos,
                "a switch needs `cases` (or the short form `if` and `then`)",
                Some("e.g. `switch: { cases: [ { when: '{{ .event.body.vip }}', steps: [ … ] } ], default: [ … ] }`".into()),
            );
            return None;
        }
        (true, false) => {
            let Some(cases) = c.cases else {
                cx.error(
                    node.pos,
                    "a switch with `default` needs `cases` too",
                    Some("add `cases: [ { when: …, steps: [ … ] } ]`, or write the steps without a switch".into()),
                );
                return None;
            };
            if cases.value.is_empty() {
                cx.error(
                    cases.pos,
                    "`cases` is empty",
                    Some("add a case: `{ when: '{{ … }}', steps: [ … ] }`".into()),
                );
                return None;
            }
            cases.value.into_iter().map(|c| (c.when, c.steps)).collect()
        }
        (false, true) => {
            let (Some(when), Some(then)) = (c.when, c.then) else {
                cx.error(
                    node.pos,
                    "the short form of a switch needs `if` and `then`",
                    Some(
                        "e.g. `switch: { if: '{{ .event.body.vip }}', then: [ … ], else: [ … ] }`"
                            .into(),
                    ),
                );
                return None;
            };
            vec![(when, then)]
        }
    };
    let default = c.default.or(c.otherwise);

    let saved = cx.steps_before.clone();
    let mut ok = true;
    let mut cases = Vec::new();
    for (when, steps) in arms {
        let expr = case_expr(&when, cx);
        cx.steps_before = saved.clone();
        cx.steps_before.push(id.to_owned());
        let block = arm_block(&steps, cx);
        match (expr, block) {
            (Some(when), Some(steps)) => cases.push(Case { when, steps }),
            _ => ok = false,
        }
    }
    cx.steps_before = saved.clone();
    cx.steps_before.push(id.to_owned());
    let default = match &default {
        Some(steps) => arm_block(steps, cx),
        None => Some(Vec::new()),
    };
    cx.steps_before = saved;
    let default = default?;
    ok.then_some(Switch { cases, default })
}

/// A case's `when`: an expression; a literal `false` is refused (the case can never run).
fn case_expr(when: &Node, cx: &mut CompileCx) -> Option<Expr> {
    let never = |pos: Pos, cx: &mut CompileCx| {
        cx.error(
            pos,
            "this case can never run: its `when` is always false",
            Some("remove the case, or write the condition it stands for".into()),
        );
    };
    let text = match &when.value {
        Value::Bool(false) => {
            never(when.pos, cx);
            return None;
        }
        Value::Bool(true) => "true".to_owned(),
        Value::Str(s) => s.clone(),
        other => {
            let _ = other;
            cx.error(
                when.pos,
                format!("`when` is an expression, found {}", when.kind_name()),
                Some("e.g. `when: '{{ .event.body.total > 100 }}'`".into()),
            );
            return None;
        }
    };
    let expr = cx.expr(&Spanned {
        value: text,
        pos: when.pos,
    })?;
    if expr.literal_false() {
        never(when.pos, cx);
        return None;
    }
    Some(expr)
}

fn arm_block(steps: &Spanned<Vec<Node>>, cx: &mut CompileCx) -> Option<Vec<CompiledStep>> {
    if steps.value.is_empty() {
        cx.error(
            steps.pos,
            "an arm of a switch needs at least one step",
            Some("add a step, or remove the arm".into()),
        );
        return None;
    }
    let before = cx.diags.len();
    let block = compile_block(&steps.value, cx);
    (cx.diags.len() == before).then_some(block)
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct ForeachConfig {
    items: Node,
    steps: Spanned<Vec<Node>>,
    #[serde(default)]
    concurrency: Option<Spanned<i64>>,
    #[serde(default)]
    max_items: Option<Spanned<i64>>,
    #[serde(default)]
    on_item_error: Option<Node>,
    #[serde(default)]
    output: Option<Node>,
}

fn compile_foreach(node: &Node, cx: &mut CompileCx) -> Option<Foreach> {
    let c: ForeachConfig = cx.parse(node)?;
    let mut ok = true;
    let items = match &c.items.value {
        Value::Seq(_) => match c.items.to_json() {
            serde_json::Value::Array(a) => Some(Items::List(a)),
            _ => None,
        },
        Value::Str(s) if s.contains("{{") => cx
            .expr(&Spanned {
                value: s.clone(),
                pos: c.items.pos,
            })
            .map(Items::Expr),
        _ => {
            cx.error(
                c.items.pos,
                format!(
                    "`items` must be a list, or a template yielding one; found {}",
                    c.items.kind_name()
                ),
                Some("e.g. `items: '{{ .event.body.lines }}'`".into()),
            );
            None
        }
    };
    let mut bounded =
        |v: &Option<Spanned<i64>>, name: &str, default: usize, max: usize, cx: &mut CompileCx| {
            match v {
                None => default,
                Some(n) if n.value >= 1 && n.value as u64 <= max as u64 => n.value as usize,
                Some(n) => {
                    cx.error(
                        n.pos,
                        format!("`{name}` must be from 1 to {max}, found {}", n.value),
                        Some(format!("remove it for the default ({default})")),
                    );
                    ok = false;
                    default
                }
            }
        };
    let concurrency = bounded(
        &c.concurrency,
        "concurrency",
        DEFAULT_CONCURRENCY,
        MAX_CONCURRENCY,
        cx,
    );
    let max_items = bounded(
        &c.max_items,
        "max_items",
        DEFAULT_MAX_ITEMS,
        MAX_ITEMS_LIMIT,
        cx,
    );
    let on_item_error = match &c.on_item_error {
        None => ItemErrors::Fail,
        Some(n) => match item_errors(n) {
            Some(p) => p,
            None => {
                cx.error(
                    n.pos,
                    "`on_item_error` is `fail`, `continue`, or `{ tolerate: N }` / `{ tolerate: 10% }`",
                    Some("`fail` (the default) fails the loop at the first failed item".into()),
                );
                ok = false;
                ItemErrors::Fail
            }
        },
    };
    if c.steps.value.is_empty() {
        cx.error(
            c.steps.pos,
            "a foreach needs at least one step",
            Some("add the steps each item runs under `steps:`".into()),
        );
        return None;
    }
    let saved = cx.steps_before.clone();
    let before = cx.diags.len();
    let steps = compile_block(&c.steps.value, cx);
    let output = match &c.output {
        Some(t) => cx.template(t),
        None => None,
    };
    cx.steps_before = saved;
    if cx.diags.len() > before || !ok {
        return None;
    }
    Some(Foreach {
        items: items?,
        steps,
        concurrency,
        max_items,
        on_item_error,
        output,
    })
}

fn item_errors(n: &Node) -> Option<ItemErrors> {
    match &n.value {
        Value::Str(s) if s == "fail" => Some(ItemErrors::Fail),
        Value::Str(s) if s == "continue" => Some(ItemErrors::Continue),
        Value::Map(entries) if entries.len() == 1 && entries[0].0.name == "tolerate" => {
            match &entries[0].1.value {
                Value::Int(i) if *i >= 0 => Some(ItemErrors::Tolerate(*i as usize)),
                Value::Str(s) => {
                    let p: f64 = s.trim().strip_suffix('%')?.trim().parse().ok()?;
                    (0.0..=100.0)
                        .contains(&p)
                        .then_some(ItemErrors::TolerateShare(p))
                }
                _ => None,
            }
        }
        _ => None,
    }
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct ParallelConfig {
    branches: Node,
    #[serde(default)]
    join: Option<Join>,
}

fn compile_parallel(node: &Node, cx: &mut CompileCx) -> Option<Parallel> {
    let c: ParallelConfig = cx.parse(node)?;
    let Value::Map(entries) = &c.branches.value else {
        cx.error(
            c.branches.pos,
            format!(
                "`branches` maps branch names to steps, found {}",
                c.branches.kind_name()
            ),
            Some("e.g. `branches: { crm: [ … ], mailer: [ … ] }`".into()),
        );
        return None;
    };
    if entries.is_empty() {
        cx.error(
            c.branches.pos,
            "`branches` is empty",
            Some("add a branch: `branches: { crm: [ … ] }`".into()),
        );
        return None;
    }
    let saved = cx.steps_before.clone();
    let before = cx.diags.len();
    let mut branches = Vec::new();
    for (name, steps) in entries {
        let valid = !name.name.is_empty()
            && name.name.len() <= 64
            && name
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !valid {
            cx.error(
                name.pos,
                format!("invalid branch name `{}`", name.name),
                Some("use letters, digits, `-` and `_`".into()),
            );
            continue;
        }
        let Value::Seq(list) = &steps.value else {
            cx.error(
                steps.pos,
                format!(
                    "branch `{}` is a list of steps, found {}",
                    name.name,
                    steps.kind_name()
                ),
                Some("e.g. `crm: [ { id: upsert, http: { … } } ]`".into()),
            );
            continue;
        };
        if list.is_empty() {
            cx.error(
                steps.pos,
                format!("branch `{}` has no steps", name.name),
                Some("add a step, or remove the branch".into()),
            );
            continue;
        }
        // A branch reads the steps before the parallel, and the steps before it in itself.
        cx.steps_before = saved.clone();
        branches.push((name.name.clone(), compile_block(list, cx)));
    }
    cx.steps_before = saved;
    (cx.diags.len() == before).then_some(Parallel {
        branches,
        join: c.join.unwrap_or(Join::All),
    })
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct WaitConfig {
    signal: Spanned<String>,
    key: Node,
    #[serde(default)]
    timeout: Option<Spanned<Dur>>,
    #[serde(default)]
    lookback: Option<Spanned<Dur>>,
}

fn signal_name(name: &Spanned<String>, cx: &mut CompileCx) -> Option<String> {
    if valid_signal_name(&name.value) {
        return Some(name.value.clone());
    }
    cx.error(
        name.pos,
        format!("invalid signal name `{}`", name.value),
        Some("use letters, digits, `-`, `_` and `.`, e.g. `payment` or `carrier.pickup`".into()),
    );
    None
}

fn compile_wait(node: &Node, cx: &mut CompileCx) -> Option<Wait> {
    let c: WaitConfig = cx.parse(node)?;
    let name = signal_name(&c.signal, cx);
    let key = cx.template(&c.key);
    let Some(timeout) = c.timeout else {
        cx.error(
            node.pos,
            "a wait needs a `timeout`",
            Some("how long to wait at most, e.g. `timeout: 2d`; on timeout the step fails with kind `timeout` and `on_error` decides".into()),
        );
        return None;
    };
    if timeout.value.0 < MIN_DELAY || timeout.value.0 > MAX_DELAY {
        cx.error(
            timeout.pos,
            "a wait's `timeout` is from 1s to 1 year",
            Some("e.g. `timeout: 30m`, `timeout: 2d`".into()),
        );
        return None;
    }
    let lookback = match c.lookback {
        None => SIGNAL_KEEP,
        Some(l) if l.value.0 <= SIGNAL_KEEP => l.value.0,
        Some(l) => {
            cx.error(
                l.pos,
                "`lookback` is at most 10m (how long a signal that no wait took is kept)",
                Some("remove it for the default (10m)".into()),
            );
            return None;
        }
    };
    Some(Wait {
        signal: name?,
        key: key?,
        timeout: timeout.value.0,
        lookback,
    })
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct SignalConfig {
    name: Spanned<String>,
    key: Node,
    #[serde(default)]
    data: Option<Node>,
}

fn compile_signal(node: &Node, cx: &mut CompileCx) -> Option<Signal> {
    let c: SignalConfig = cx.parse(node)?;
    let name = signal_name(&c.name, cx);
    let key = cx.template(&c.key);
    let data = match &c.data {
        Some(d) => Some(cx.template(d)?),
        None => None,
    };
    Some(Signal {
        name: name?,
        key: key?,
        data,
    })
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct DelayUntil {
    until: Spanned<String>,
}

fn compile_delay(node: &Node, cx: &mut CompileCx) -> Option<Delay> {
    if let Value::Map(_) = node.value {
        let c: DelayUntil = cx.parse(node)?;
        return cx.expr(&c.until).map(Delay::Until);
    }
    let d: Dur = cx.parse(node)?;
    if d.0 < MIN_DELAY || d.0 > MAX_DELAY {
        cx.error(
            node.pos,
            format!(
                "a delay is from 1s to 1 year, found {}",
                humantime::format_duration(d.0)
            ),
            Some("e.g. `delay: 30s`, `delay: 2h`, `delay: 7d`".into()),
        );
        return None;
    }
    Some(Delay::For(d.0))
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct CallConfig {
    flow: Spanned<String>,
    #[serde(default)]
    input: Option<Node>,
    #[serde(default)]
    wait: Option<bool>,
    #[serde(default)]
    timeout: Option<Spanned<Dur>>,
}

/// The called flow is looked up once every file is loaded (`load::check_calls`).
fn compile_call(node: &Node, cx: &mut CompileCx) -> Option<Call> {
    let c: CallConfig = cx.parse(node)?;
    let input = match &c.input {
        Some(n) => Some(cx.template(n)?),
        None => None,
    };
    let timeout = match &c.timeout {
        None => DEFAULT_CALL_TIMEOUT,
        Some(t) if t.value.0 >= MIN_DELAY && t.value.0 <= MAX_DELAY => t.value.0,
        Some(t) => {
            cx.error(
                t.pos,
                "a call's `timeout` is from 1s to 1 year",
                Some("how long to wait for the called run, e.g. `timeout: 1h` (default 7d)".into()),
            );
            return None;
        }
    };
    let wait = c.wait.unwrap_or(true);
    if !wait && c.timeout.is_some() {
        cx.error(
            node.pos,
            "`timeout` means nothing with `wait: false`",
            Some("the step does not wait for the called run; remove `timeout`".into()),
        );
        return None;
    }
    Some(Call {
        flow: c.flow.value.trim().to_owned(),
        input,
        wait,
        timeout,
        pos: c.flow.pos,
    })
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RespondConfig {
    #[serde(default)]
    status: Option<Node>,
    #[serde(default)]
    headers: Option<Spanned<std::collections::BTreeMap<String, Node>>>,
    #[serde(default)]
    body: Option<Node>,
}

/// Whether the flow's trigger allows it is checked with the whole flow (`compile_flow`).
fn compile_respond(node: &Node, cx: &mut CompileCx) -> Option<Respond> {
    let c: RespondConfig = cx.parse(node)?;
    let status = match &c.status {
        None => RespondStatus::Fixed(200),
        Some(n) => match &n.value {
            Value::Int(i) if (100..=599).contains(i) => RespondStatus::Fixed(*i as u16),
            Value::Str(_) => RespondStatus::Expr(cx.template(n)?),
            _ => {
                cx.error(
                    n.pos,
                    "`status` is an HTTP status from 100 to 599, or a template",
                    Some("e.g. `status: 200`, `status: '{{ if .steps.find.body then 200 else 404 end }}'`".into()),
                );
                return None;
            }
        },
    };
    let mut headers = Vec::new();
    let mut ok = true;
    if let Some(h) = &c.headers {
        for (name, value) in &h.value {
            if axum::http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                cx.error(h.pos, format!("invalid header name `{name}`"), None);
                ok = false;
                continue;
            }
            match cx.template(value) {
                Some(t) => headers.push((name.to_ascii_lowercase(), t)),
                None => ok = false,
            }
        }
    }
    let body = match &c.body {
        Some(b) => Some(cx.template(b)?),
        None => None,
    };
    ok.then_some(Respond {
        status,
        headers,
        body,
        pos: node.pos,
    })
}
