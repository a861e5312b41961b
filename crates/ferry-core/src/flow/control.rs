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
    Delay(Delay),
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
            Control::Delay(_) => Vec::new(),
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
        "delay" => compile_delay(node, cx).map(|d| ("delay", Control::Delay(d))),
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
