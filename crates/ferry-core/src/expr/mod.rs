//! Expressions: jq (through jaq) and `{{ expr }}` templates, compiled once when a flow loads.
//!
//! Owns compiling, locating syntax errors inside a template string, and evaluating against a
//! JSON context. Does not know about steps or runs: callers pass the context (SPEC §6).
//!
//! jaq values are `Rc`-based, so a whole evaluation happens inside one synchronous call, and
//! jaq has no step budget: `eval_blocking` runs evaluations on tokio's blocking pool, bounded
//! by a semaphore, with a timeout, so a runaway filter fails its step instead of hanging a
//! worker. The runaway thread itself cannot be stopped; it is counted and logged, and the pool
//! replaces it (at most `MAX_RUNAWAYS` before new evaluations wait).

mod reads;
mod template;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use jaq_core::load::{Arena, File, Loader};
use jaq_core::{Ctx, Vars, data, unwrap_valr};
use jaq_json::Val;

pub use reads::Reads;
pub use template::{Part, Piece, Template, TemplateError, split_template};

type JqFilter = jaq_core::Filter<data::JustLut<Val>>;

/// Definitions put in front of every expression, shadowing filters a flow may not use: they
/// read the process environment (secrets live there), stop the process, read stdin, or write
/// payloads to stderr. Shadowing keeps the standard library's own definitions compiling.
const PRELUDE: &str = concat!(
    "def env: error(\"`env` is not available in Ferry expressions\"); ",
    "def halt: error(\"`halt` is not available in Ferry expressions\"); ",
    "def halt(c): error(\"`halt` is not available in Ferry expressions\"); ",
    "def halt_error: error(\"`halt_error` is not available in Ferry expressions\"); ",
    "def halt_error(c): error(\"`halt_error` is not available in Ferry expressions\"); ",
    "def input: error(\"`input` is not available in Ferry expressions\"); ",
    "def inputs: error(\"`inputs` is not available in Ferry expressions\"); ",
    "def debug: .; def debug(m): .; def stderr: .; ",
    // jaq's `fromjson` recurses once per nesting level, so a string of 20,000 `[` taken from
    // a webhook body would overflow the stack and abort the server. A string long enough to
    // nest that deep must hold fewer than MAX_FROMJSON_BRACKETS `[`/`{` to be parsed.
    "def __ferry_native_fromjson: fromjson; ",
    "def fromjson: if type == \"string\" and length > 20000 ",
    "and ([explode[] | select(. == 91 or . == 123)] | length) > 20000 ",
    "then error(\"fromjson: more than 20000 `[` or `{` in the input; Ferry refuses JSON nested this deep\") ",
    "else __ferry_native_fromjson end; ",
);

/// Deepest bracket nesting accepted in an expression's source: jaq's parser recurses per
/// level, and a few thousand levels overflow a thread's stack.
pub const MAX_SOURCE_NESTING: usize = 256;

/// A compiled jq expression; cheap to clone.
#[derive(Clone)]
pub struct Expr {
    src: Arc<str>,
    filter: Arc<JqFilter>,
    bounded: bool,
    /// For a plain path (`.steps.contact`, `.event.body.email`), its keys: the commonest
    /// template is walked directly instead of through jq's interpreter.
    path: Option<Arc<[Val]>>,
    /// What it can read of its input (see `reads`).
    reads: Arc<Reads>,
}

impl std::fmt::Debug for Expr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Expr({:?})", self.src)
    }
}

/// A jq syntax or compile error, with the byte offset in the expression where it applies.
#[derive(Debug, Clone, PartialEq)]
pub struct CompileError {
    pub offset: usize,
    pub message: String,
}

/// A runtime failure of an expression.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct EvalError {
    pub message: String,
}

impl Expr {
    pub fn compile(src: &str) -> Result<Expr, CompileError> {
        let src_trim = src.trim();
        if src_trim.is_empty() {
            return Err(CompileError {
                offset: 0,
                message: "empty expression".into(),
            });
        }
        let defs = jaq_core::defs()
            .chain(jaq_std::defs())
            .chain(jaq_json::defs());
        let funs = jaq_core::funs()
            .chain(jaq_std::funs())
            .chain(jaq_json::funs());
        let loader = Loader::new(defs);
        let arena = Arena::default();
        if let Some(offset) = too_deep(src) {
            return Err(CompileError {
                offset,
                message: format!("expression nested deeper than {MAX_SOURCE_NESTING} levels"),
            });
        }
        let code = format!("{PRELUDE}{src}");
        let full = code.as_str();
        let offset_in = |_: &str, part: &str| offset_in(full, part).saturating_sub(PRELUDE.len());
        let modules = loader
            .load(
                &arena,
                File {
                    code: full,
                    path: (),
                },
            )
            .map_err(|errs| {
                let mut first = CompileError {
                    offset: 0,
                    message: "invalid jq expression".into(),
                };
                if let Some((_, err)) = errs.into_iter().next() {
                    first = match err {
                        jaq_core::load::Error::Io(e) => CompileError {
                            offset: 0,
                            message: e.first().map(|x| x.1.clone()).unwrap_or_default(),
                        },
                        jaq_core::load::Error::Lex(e) => match e.first() {
                            Some((expect, found)) => CompileError {
                                offset: offset_in(src, found),
                                message: format!("expected {}", expect.as_str()),
                            },
                            None => first,
                        },
                        jaq_core::load::Error::Parse(e) => match e.first() {
                            Some((expect, found)) => CompileError {
                                offset: offset_in(src, found),
                                message: if found.is_empty() {
                                    format!("expected {}, found end of expression", expect.as_str())
                                } else {
                                    format!("expected {}, found `{}`", expect.as_str(), found)
                                },
                            },
                            None => first,
                        },
                    };
                }
                first
            })?;
        let filter = jaq_core::Compiler::default()
            .with_funs(funs)
            .compile(modules)
            .map_err(|errs| {
                let (name, undefined) = errs
                    .into_iter()
                    .flat_map(|(_, e)| e)
                    .next()
                    .expect("compile errors are never empty");
                let what = undefined.as_str();
                CompileError {
                    offset: offset_in(src, name),
                    message: format!("undefined {what} `{name}`"),
                }
            })?;
        Ok(Expr {
            src: Arc::from(src),
            filter: Arc::new(filter),
            bounded: is_bounded(src),
            path: plain_path(src_trim),
            reads: Arc::new(reads::reads(src)),
        })
    }

    /// True when the expression provably finishes in time proportional to its input (see
    /// `is_bounded`); such expressions are evaluated inline, the rest on the blocking pool.
    pub fn is_bounded(&self) -> bool {
        self.bounded
    }

    /// What the expression can read of its input: a webhook builds only that part of an
    /// event as jq values.
    pub fn reads(&self) -> &Reads {
        &self.reads
    }

    pub fn source(&self) -> &str {
        &self.src
    }

    /// True for an expression written as the constant `false` (or `null`): a condition that
    /// can never hold.
    pub fn literal_false(&self) -> bool {
        let s = self
            .src
            .trim()
            .trim_start_matches('(')
            .trim_end_matches(')')
            .trim();
        s == "false" || s == "null"
    }

    /// Runs the expression and returns its first output (`null` when it yields nothing).
    pub fn eval(&self, input: &Val) -> Result<serde_json::Value, EvalError> {
        if let Some(v) = self.path.as_deref().and_then(|keys| walk(input, keys)) {
            return Ok(val_to_json(&v));
        }
        let ctx = Ctx::<data::JustLut<Val>>::new(&self.filter.lut, Vars::new([]));
        let mut out = self.filter.id.run((ctx, input.clone())).map(unwrap_valr);
        match out.next() {
            None => Ok(serde_json::Value::Null),
            Some(Ok(v)) => Ok(val_to_json(&v)),
            Some(Err(e)) => Err(EvalError {
                message: e.to_string(),
            }),
        }
    }

    /// True when the expression's first output is truthy (jq: anything but `false` and `null`).
    pub fn eval_bool(&self, input: &Val) -> Result<bool, EvalError> {
        Ok(!matches!(
            self.eval(input)?,
            serde_json::Value::Null | serde_json::Value::Bool(false)
        ))
    }
}

/// Builtins whose cost is bounded by the size of their input (linear or n·log n, or a
/// small polynomial of it). Anything else — `range`, `repeat`, `while`, `until`, `recurse`,
/// `limit` over a generator, regular expressions, `combinations`, user `def`s, `reduce`,
/// `foreach`, `label`, `as` bindings — may run away, and is sent to the time-limited pool.
const BOUNDED: &[&str] = &[
    "if",
    "then",
    "elif",
    "else",
    "end",
    "and",
    "or",
    "not",
    "try",
    "catch",
    "null",
    "true",
    "false",
    "length",
    "utf8bytelength",
    "keys",
    "keys_unsorted",
    "values",
    "has",
    "in",
    "inside",
    "contains",
    "map",
    "map_values",
    "select",
    "empty",
    "error",
    "add",
    "any",
    "all",
    "flatten",
    "to_entries",
    "from_entries",
    "with_entries",
    "del",
    "delpaths",
    "getpath",
    "setpath",
    "paths",
    "leaf_paths",
    "path",
    "tostream",
    "fromstream",
    "walk",
    "first",
    "last",
    "nth",
    "isempty",
    "reverse",
    "sort",
    "sort_by",
    "group_by",
    "unique",
    "unique_by",
    "min",
    "max",
    "min_by",
    "max_by",
    "transpose",
    "indices",
    "index",
    "rindex",
    "startswith",
    "endswith",
    "ltrimstr",
    "rtrimstr",
    "trim",
    "ltrim",
    "rtrim",
    "explode",
    "implode",
    "split",
    "join",
    "ascii_downcase",
    "ascii_upcase",
    "ascii",
    "tostring",
    "tonumber",
    "tojson",
    "fromjson",
    "type",
    "objects",
    "arrays",
    "strings",
    "numbers",
    "booleans",
    "nulls",
    "iterables",
    "scalars",
    "infinite",
    "nan",
    "isinfinite",
    "isnan",
    "isnormal",
    "floor",
    "ceil",
    "round",
    "fabs",
    "abs",
    "sqrt",
    "pow",
    "log",
    "log10",
    "log2",
    "exp",
    "exp10",
    "now",
    "todate",
    "fromdate",
    "date",
    "todateiso8601",
    "fromdateiso8601",
    "mktime",
    "gmtime",
    "localtime",
    "strftime",
    "strptime",
    "dateadd",
    "datesub",
    "tojson",
    "ascii",
    "splits_literal",
    "toarray",
    "IN",
    "INDEX",
    "debug",
    "stderr",
    "input_filename",
];

/// The keys of `src` when it is only `.name.name…` with identifier names (what jq reads as
/// object lookups, e.g. `.steps.contact`), else `None`.
fn plain_path(src: &str) -> Option<Arc<[Val]>> {
    let rest = src.strip_prefix('.')?;
    let mut keys = Vec::new();
    for name in rest.split('.') {
        let mut chars = name.chars();
        let first = chars.next()?;
        if !(first.is_ascii_alphabetic() || first == '_')
            || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return None;
        }
        keys.push(Val::from(name.to_owned()));
    }
    Some(keys.into())
}

/// Follows `keys` through objects as jq's `.a.b` does (a missing key or a `null` gives
/// `null`). `None` when something on the way is neither an object nor `null`: jq then says
/// what is wrong, with its own message.
fn walk(input: &Val, keys: &[Val]) -> Option<Val> {
    let mut v = input;
    for k in keys {
        match v {
            Val::Obj(m) => match m.get(k) {
                Some(next) => v = next,
                None => return Some(Val::Null),
            },
            Val::Null => return Some(Val::Null),
            _ => return None,
        }
    }
    Some(v.clone())
}

/// Conservative check that `src` only uses builtins from `BOUNDED` (fields like `.range`,
/// variables and format strings are fine; string interpolation is not analysed, so it counts
/// as unbounded).
fn is_bounded(src: &str) -> bool {
    let bytes = src.as_bytes();
    // Open brackets, innermost last: in `{…}` a name right after `{` or `,` is a key
    // (`{sku, qty: .n}` is `{sku: .sku, qty: .n}`), not a call.
    let mut open: Vec<u8> = Vec::new();
    let mut last_sig: Option<u8> = None;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'"' {
            i += 1;
            while i < bytes.len() && bytes[i] != b'"' {
                if bytes[i] == b'\\' {
                    if bytes.get(i + 1) == Some(&b'(') {
                        return false;
                    }
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            last_sig = Some(b'"');
            continue;
        }
        if b.is_ascii_alphabetic() || b == b'_' {
            let start = i;
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
            let prev = if start == 0 {
                None
            } else {
                Some(bytes[start - 1])
            };
            let before = last_sig;
            last_sig = Some(b'a');
            // `.name`, `$name`, `@base64`, `?//` targets are not calls.
            if matches!(prev, Some(b'.' | b'$' | b'@')) {
                continue;
            }
            // `{name: …}` object keys are not calls either, nor `{name, …}` shorthands.
            let rest = src[i..].trim_start();
            if rest.starts_with(':') && !rest.starts_with("::") {
                continue;
            }
            if open.last() == Some(&b'{')
                && matches!(before, Some(b'{' | b','))
                && (rest.starts_with(',') || rest.starts_with('}'))
            {
                continue;
            }
            if !BOUNDED.contains(&&src[start..i]) {
                return false;
            }
            continue;
        }
        match b {
            b'(' | b'[' | b'{' => open.push(b),
            b')' | b']' | b'}' => {
                open.pop();
            }
            _ => {}
        }
        if !b.is_ascii_whitespace() {
            last_sig = Some(b);
        }
        i += 1;
    }
    true
}

/// Where `src` first nests brackets deeper than `MAX_SOURCE_NESTING`, if it does.
fn too_deep(src: &str) -> Option<usize> {
    let mut depth = 0usize;
    for (i, b) in src.bytes().enumerate() {
        match b {
            b'(' | b'[' | b'{' => {
                depth += 1;
                if depth > MAX_SOURCE_NESTING {
                    return Some(i);
                }
            }
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    None
}

/// Byte offset of `part` in `whole` when `part` is a slice of it (jaq's errors are), else 0.
fn offset_in(whole: &str, part: &str) -> usize {
    let (w, p) = (whole.as_ptr() as usize, part.as_ptr() as usize);
    if p >= w && p + part.len() <= w + whole.len() {
        p - w
    } else {
        0
    }
}

/// The expression context of a run (SPEC §6) as jaq values. The event is converted once per
/// run and each step's output once, when it is produced; every step then gets a context that
/// shares them (jaq values are reference-counted) instead of converting the whole run again.
#[derive(Clone)]
pub struct RunContext {
    event: Val,
    run: Val,
    steps: jaq_json::Map,
    /// Inside a `foreach` item: the item and its index; else `null`.
    item: Val,
    index: Val,
    /// In `on_error` fallback steps: the failed step's error; else `null`.
    error: Val,
}

fn key(k: &str) -> Val {
    Val::from(k.to_owned())
}

impl RunContext {
    /// From the event as stored (JSON text), parsed straight into jq values: cheaper than
    /// text → serde_json → jq (a tenth of a worker's time under load went to the latter).
    pub fn from_text(event: &str, run: &serde_json::Value) -> RunContext {
        let event = jaq_json::read::parse_single(event.as_bytes()).unwrap_or(Val::Null);
        RunContext {
            event,
            run: json_to_val(run),
            steps: jaq_json::Map::default(),
            item: Val::Null,
            index: Val::Null,
            error: Val::Null,
        }
    }

    /// From an event already in jq values (parsed while it was ingested).
    pub fn new(event: Val, run: &serde_json::Value) -> RunContext {
        RunContext {
            event,
            run: json_to_val(run),
            steps: jaq_json::Map::default(),
            item: Val::Null,
            index: Val::Null,
            error: Val::Null,
        }
    }

    /// Records `.steps.<id>`.
    pub fn set_step(&mut self, id: &str, output: &serde_json::Value) {
        self.steps.insert(key(id), json_to_val(output));
    }

    /// The context of one `foreach` item: this one's steps, with `.item` and `.index` set.
    pub fn for_item(&self, item: Val, index: usize) -> RunContext {
        RunContext {
            item,
            index: Val::from(index as isize),
            ..self.clone()
        }
    }

    /// Sets (or clears) `.error`, for fallback steps.
    pub fn set_error(&mut self, error: Option<&serde_json::Value>) {
        self.error = error.map_or(Val::Null, json_to_val);
    }

    /// `.event` as JSON.
    pub fn event_json(&self) -> serde_json::Value {
        val_to_json(&self.event)
    }

    /// `.steps.<id>` as recorded, if it is.
    pub fn step(&self, id: &str) -> Option<serde_json::Value> {
        self.steps.get(&key(id)).map(val_to_json)
    }

    /// `{"event", "steps", "run", "item", "index"}`.
    pub fn val(&self) -> Val {
        let mut m = jaq_json::Map::default();
        m.insert(key("event"), self.event.clone());
        m.insert(key("steps"), Val::obj(self.steps.clone()));
        m.insert(key("run"), self.run.clone());
        m.insert(key("item"), self.item.clone());
        m.insert(key("index"), self.index.clone());
        if !matches!(self.error, Val::Null) {
            m.insert(key("error"), self.error.clone());
        }
        Val::obj(m)
    }
}

/// `ctx` (an object) with `name` set to `value`: a step's context plus something only that
/// step's expressions see (`.page` in pagination). Shares every other field with `ctx`.
pub fn with_field(ctx: &Val, name: &str, value: Val) -> Val {
    let mut m = match ctx {
        Val::Obj(m) => (**m).clone(),
        _ => jaq_json::Map::default(),
    };
    m.insert(key(name), value);
    Val::obj(m)
}

/// `{"event": event}`: what a webhook's `dedupe:` sees.
pub fn event_context(event: &Val) -> Val {
    let mut m = jaq_json::Map::default();
    m.insert(key("event"), event.clone());
    Val::obj(m)
}

/// Turns a JSON value into a jaq value.
pub fn json_to_val(v: &serde_json::Value) -> Val {
    use serde::Deserialize;
    Val::deserialize(v).unwrap_or(Val::Null)
}

pub fn val_to_json(v: &Val) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        Val::Null => J::Null,
        Val::Bool(b) => J::Bool(*b),
        Val::Num(n) => num_to_json(n),
        Val::TStr(b) | Val::BStr(b) => J::String(String::from_utf8_lossy(b).into_owned()),
        Val::Arr(items) => J::Array(items.iter().map(val_to_json).collect()),
        Val::Obj(map) => J::Object(
            map.iter()
                .map(|(k, v)| {
                    let key = match k {
                        Val::TStr(b) | Val::BStr(b) => String::from_utf8_lossy(b).into_owned(),
                        other => other.to_string(),
                    };
                    (key, val_to_json(v))
                })
                .collect(),
        ),
    }
}

fn num_to_json(n: &jaq_json::Num) -> serde_json::Value {
    use jaq_json::Num;
    match n {
        Num::Int(i) => serde_json::Value::from(*i as i64),
        Num::Float(f) => float_json(*f),
        other => {
            let text = other.to_string();
            if let Ok(i) = text.parse::<i64>() {
                serde_json::Value::from(i)
            } else {
                float_json(text.parse::<f64>().unwrap_or(f64::NAN))
            }
        }
    }
}

fn float_json(f: f64) -> serde_json::Value {
    if f.fract() == 0.0 && f.abs() < 9.0e15 {
        return serde_json::Value::from(f as i64);
    }
    serde_json::Number::from_f64(f)
        .map(serde_json::Value::Number)
        .unwrap_or(serde_json::Value::Null)
}

/// Evaluations running on the blocking pool right now, and runaways given up on.
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);
static RUNAWAYS: AtomicUsize = AtomicUsize::new(0);
const MAX_RUNAWAYS: usize = 64;

/// How many evaluations were abandoned after their timeout since start (for metrics).
pub fn runaway_count() -> usize {
    RUNAWAYS.load(Ordering::Relaxed)
}

/// Evaluates one expression against a JSON context: inline when it is bounded, else on the
/// time-limited pool.
pub async fn eval_value(
    e: &Expr,
    ctx: &Val,
    timeout: Duration,
) -> Result<serde_json::Value, EvalError> {
    if e.is_bounded() {
        return e.eval(ctx);
    }
    let (e, ctx) = (e.clone(), ctx.clone());
    eval_blocking(timeout, move || e.eval(&ctx)).await
}

/// jq truthiness: anything but `false` and `null`.
pub fn truthy(v: &serde_json::Value) -> bool {
    !matches!(v, serde_json::Value::Null | serde_json::Value::Bool(false))
}

/// Runs `f` (which evaluates expressions) off the async workers, failing after `timeout`.
pub async fn eval_blocking<T, F>(timeout: Duration, f: F) -> Result<T, EvalError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, EvalError> + Send + 'static,
{
    if RUNAWAYS.load(Ordering::Relaxed) >= MAX_RUNAWAYS {
        return Err(EvalError {
            message: "too many runaway expressions on this node; restart it".into(),
        });
    }
    IN_FLIGHT.fetch_add(1, Ordering::Relaxed);
    let handle = tokio::task::spawn_blocking(move || {
        let out = f();
        IN_FLIGHT.fetch_sub(1, Ordering::Relaxed);
        out
    });
    match tokio::time::timeout(timeout, handle).await {
        Ok(Ok(out)) => out,
        Ok(Err(join)) => Err(EvalError {
            message: format!("expression evaluation crashed: {join}"),
        }),
        Err(_) => {
            let n = RUNAWAYS.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::warn!(
                runaways = n,
                timeout_ms = timeout.as_millis() as u64,
                "expression exceeded its time limit"
            );
            Err(EvalError {
                message: format!(
                    "expression did not finish within {}",
                    humantime::format_duration(timeout)
                ),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(src: &str, input: serde_json::Value) -> Result<serde_json::Value, EvalError> {
        Expr::compile(src).unwrap().eval(&json_to_val(&input))
    }

    #[test]
    fn evaluates_jq_with_the_standard_library() {
        assert_eq!(
            run(".a | ascii_downcase", json!({"a": "HeLLo"})).unwrap(),
            json!("hello")
        );
        assert_eq!(
            run("[.[] | . * 2]", json!([1, 2, 3])).unwrap(),
            json!([2, 4, 6])
        );
        assert_eq!(
            run(".a + \" \" + .b", json!({"a": "Ada", "b": "Lovelace"})).unwrap(),
            json!("Ada Lovelace")
        );
        assert_eq!(
            run("{x: .n / 2}", json!({"n": 3})).unwrap(),
            json!({"x": 1.5})
        );
        assert_eq!(run("empty", json!(1)).unwrap(), json!(null));
    }

    /// A plain path is walked without jq's interpreter; it must answer exactly as jq does.
    #[test]
    fn plain_paths_answer_as_jq_does() {
        let input = json!({"a": {"b": {"c": [1, {"d": 2}]}, "n": null, "s": "text"}, "_x1": 3});
        for src in [
            ".a",
            ".a.b.c",
            ".a.n",
            ".a.n.deeper",
            ".missing",
            ".missing.more",
            "._x1",
            " .a.b ",
        ] {
            let e = Expr::compile(src).unwrap();
            assert!(e.path.is_some(), "{src} is a plain path");
            let jq = Expr {
                path: None,
                ..e.clone()
            };
            assert_eq!(
                e.eval(&json_to_val(&input)),
                jq.eval(&json_to_val(&input)),
                "{src}"
            );
        }
        // Indexing a string: jq's own error, from jq.
        let e = Expr::compile(".a.s.x").unwrap();
        assert!(
            e.eval(&json_to_val(&input))
                .unwrap_err()
                .message
                .contains("cannot")
        );
        for src in [
            ".", ".a[0]", ".a | .b", ".a.b?", ".\"a\"", ".1a", ".a.", "..a", ".a-b", "$x",
        ] {
            assert!(
                plain_path(src.trim()).is_none(),
                "{src} is not a plain path"
            );
        }
    }

    #[test]
    fn runtime_errors_are_reported_not_panicked() {
        let err = run(".a + 1", json!({"a": "x"})).unwrap_err();
        assert!(err.message.contains("cannot"), "{}", err.message);
    }

    #[test]
    fn syntax_errors_carry_an_offset() {
        let err = Expr::compile(".a | ascii_downcase(").unwrap_err();
        assert!(err.offset > 0, "{err:?}");
        let err = Expr::compile(".a | nosuchfn").unwrap_err();
        assert_eq!(err.offset, 5);
        assert_eq!(err.message, "undefined filter `nosuchfn`");
    }

    #[test]
    fn bounded_expressions_are_told_from_possible_runaways() {
        for src in [
            ".a.b",
            ".event.body.email | ascii_downcase",
            "{a: .x, range: .y}",
            ".range",
            "\"range(1e9)\"",
            "[.[] | select(.n > 1)] | length",
            "@base64",
            "$x",
            // Object shorthands are keys, not calls.
            "[.items[] | {sku, quantity: .qty, unitPrice: .price}]",
            "{range}",
            "{a, $x, b: .c, d}",
        ] {
            assert!(is_bounded(src), "{src} should be bounded");
        }
        for src in [
            "range(10)",
            "repeat(1)",
            "def f: f; f",
            "reduce .[] as $x (0; . + $x)",
            "test(\"a+\")",
            "\"\\(range(9))\"",
            ".[] as $a | $a",
            "[range, 2]",
            "{a: range(3)}",
            "{a: (.x, range), b}",
            "{a: .x | repeat}",
        ] {
            assert!(!is_bounded(src), "{src} should not be bounded");
        }
    }

    #[test]
    fn deep_nesting_is_refused_instead_of_overflowing_the_stack() {
        // Regression (fuzzing): 3,200 nested parentheses aborted `ferry validate`.
        let src = format!("{}1{}", "(".repeat(3200), ")".repeat(3200));
        let err = Expr::compile(&src).unwrap_err();
        assert_eq!(err.message, "expression nested deeper than 256 levels");
        assert_eq!(err.offset, 256);
        // Regression (fuzzing): `fromjson` on a 40 KB string of `[` aborted the server.
        let deep = format!("{}{}", "[".repeat(30_000), "]".repeat(30_000));
        let e = Expr::compile(".s | fromjson").unwrap();
        let err = e.eval(&json_to_val(&json!({"s": deep}))).unwrap_err();
        assert!(err.message.contains("nested this deep"), "{}", err.message);
        // Ordinary use is untouched, long strings included.
        let ok = format!("[{}1]", "1,".repeat(30_000));
        assert_eq!(
            e.eval(&json_to_val(&json!({"s": "{\"a\": [1, 2]}"})))
                .unwrap(),
            json!({"a": [1, 2]})
        );
        assert_eq!(
            e.eval(&json_to_val(&json!({"s": ok})))
                .unwrap()
                .as_array()
                .unwrap()
                .len(),
            30_001
        );
    }

    #[test]
    fn environment_and_halt_are_not_reachable() {
        assert!(Expr::compile("$ENV").is_err());
        for src in ["env", "env.HOME", "halt", "halt_error(1)", "input"] {
            let err = Expr::compile(src).unwrap().eval(&Val::Null).unwrap_err();
            assert!(
                err.message.contains("not available"),
                "{src}: {}",
                err.message
            );
        }
    }

    #[test]
    fn runaway_expressions_time_out() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let e = Expr::compile("last(range(1e18))").unwrap();
        let err = rt
            .block_on(eval_blocking(Duration::from_millis(100), move || {
                e.eval(&Val::Null)
            }))
            .unwrap_err();
        assert!(err.message.contains("did not finish"), "{}", err.message);
        // The runaway thread cannot be joined; leave it behind instead of waiting for it.
        rt.shutdown_background();
    }
}
