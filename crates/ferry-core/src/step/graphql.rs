//! `graphql`: one GraphQL operation over HTTP through a connection, optionally following a
//! relay-style connection page by page.
//!
//! ```yaml
//! - id: subscribe
//!   graphql:
//!     connection: mailer
//!     query: 'mutation($e: String!) { subscribe(email: $e) { id } }'
//!     variables: { e: '{{ .event.body.email }}' }
//! ```
//!
//! The request is `POST` with a JSON body `{query, variables, operationName}` (GraphQL over
//! HTTP). The result is `{"data", "errors"}` (plus `"pages"` when paginating). A response with
//! `errors` fails the step unless `allow_errors` is set; it is the server's answer, so it is
//! not retried. Transport failures and non-2xx statuses are retried like `http`'s.
//!
//! The query is checked when the flow loads by a small lexer (tokens, brackets, definitions,
//! operation names, declared variables), not by a full GraphQL parser: the server validates
//! against its schema anyway, and what Ferry can know without the schema is exactly what the
//! lexer sees. Errors point inside the query string, also in a `|` block.

use std::sync::Arc;

use futures::FutureExt;
use futures::future::BoxFuture;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value as Json, json};

use super::call::{self, OutBody, Outbound, scalar_text, type_name};
use super::{CompileCx, ErrorKind, Step, StepCx, StepDef, StepError, StepOutput};
use crate::connection::Connection;
use crate::diag::Pos;
use crate::expr::Template;
use crate::flow::node::{Node, Spanned, Value};

pub(super) const DEF: StepDef = StepDef {
    kind: "graphql",
    summary: "run a GraphQL query or mutation through a connection, with relay pagination",
    compile,
    schema: |g| g.subschema_for::<GraphqlConfig>(),
};

/// What a GraphQL-over-HTTP server is asked to answer with.
const ACCEPT: &str = "application/graphql-response+json, application/json;q=0.9";
const DEFAULT_MAX_PAGES: u64 = 10;
/// GraphQL error messages quoted in a step error; the rest are counted.
const MAX_QUOTED_ERRORS: usize = 5;
/// Longest GraphQL error message quoted, in characters.
const MAX_MESSAGE_CHARS: usize = 200;

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct GraphqlConfig {
    /// The connection to call through; the request goes to its `base_url` (or `path` under it).
    connection: Spanned<String>,
    /// Path after the connection's base URL (template), e.g. `/graphql`. Default: none, the
    /// request goes to `base_url` itself.
    #[serde(default)]
    path: Option<Node>,
    /// The GraphQL document: a query or a mutation, e.g.
    /// `mutation($e: String!) { subscribe(email: $e) { id } }`. Not a template: pass values
    /// with `variables`.
    query: Spanned<String>,
    /// Values for the operation's variables (template that renders to an object), e.g.
    /// `{ e: '{{ .event.body.email }}' }`. Default: none.
    #[serde(default)]
    variables: Option<Node>,
    /// Which operation of the document to run (`operationName`). Needed when the document
    /// holds more than one. Default: the name of the only operation, if it has one.
    #[serde(default)]
    operation_name: Option<Spanned<String>>,
    /// Request headers (templates). They replace connection headers of the same name.
    #[serde(default)]
    headers: Option<Node>,
    /// Succeed with partial `data` when the response also holds `errors` (default `false`: any
    /// error fails the step).
    #[serde(default)]
    allow_errors: bool,
    /// Follow a relay-style connection (`pageInfo { hasNextPage endCursor }`) page by page and
    /// concatenate its `edges` and `nodes`. Default: one request.
    #[serde(default)]
    paginate: Option<PaginateConfig>,
    /// Largest response body accepted per request, in bytes (default: the connection's, else
    /// 10 MiB).
    #[serde(default)]
    max_response_bytes: Option<u64>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct PaginateConfig {
    /// Where the relay connection sits in the response, as a dotted path from `data`, e.g.
    /// `data.customers` or `data.viewer.repositories` (a leading `.` is allowed).
    path: Spanned<String>,
    /// The variable that carries the cursor: each next page is requested with it set to the
    /// previous page's `pageInfo.endCursor` (default `after`). The query must declare it.
    #[serde(default)]
    cursor_var: Option<Spanned<String>>,
    /// Most pages fetched, the first included (default 10). When the limit stops the
    /// pagination, the result's `pageInfo.hasNextPage` stays `true`.
    #[serde(default)]
    max_pages: Option<Spanned<u64>>,
    /// Most items (`edges` or `nodes`) kept; pagination stops once reached. Default: no limit
    /// other than `max_pages`.
    #[serde(default)]
    max_items: Option<Spanned<u64>>,
}

/// Compiled pagination settings.
#[derive(Clone, Debug)]
struct Pager {
    /// Keys under `data`, e.g. `["customers"]`.
    path: Vec<String>,
    cursor_var: String,
    max_pages: u64,
    max_items: Option<u64>,
}

struct Graphql {
    connection: Arc<Connection>,
    path: Option<Template>,
    query: String,
    variables: Option<Template>,
    operation_name: Option<String>,
    headers: Option<Template>,
    allow_errors: bool,
    pager: Option<Pager>,
    max_response_bytes: u64,
}

fn compile(node: &Node, cx: &mut CompileCx) -> Option<Box<dyn Step>> {
    let c: GraphqlConfig = cx.parse(node)?;
    let connection = cx.connection(&c.connection);
    let mut ok = connection.is_some();

    // `{{ }}` is valid GraphQL inside a string literal, but it is never substituted: say so
    // rather than send it as written.
    let template = c
        .query
        .value
        .find("{{")
        .filter(|&i| c.query.value[i..].contains("}}"))
        .map(|i| SyntaxError {
            offset: i,
            message: "the query is not a template: `{{ }}` is sent as written".into(),
            hint: String::new(),
        });
    let doc = match template.map_or_else(|| check_document(&c.query.value), Err) {
        Ok(doc) => Some(doc),
        Err(e) => {
            let pos = pos_in_query(cx, &c.query, e.offset);
            let hint = if c.query.value.contains("{{") {
                "pass values with `variables` and declare them in the query, e.g. `query($id: ID!) { customer(id: $id) { name } }` with `variables: { id: '{{ .event.body.id }}' }`".to_owned()
            } else {
                e.hint
            };
            cx.error(pos, e.message, Some(hint));
            ok = false;
            None
        }
    };
    // The operation the server will run: the named one, or the only one.
    let op = doc.as_ref().and_then(|doc| match &c.operation_name {
        Some(name) => match doc.operations.iter().find(|o| o.name.as_deref() == Some(name)) {
            Some(op) => Some(op),
            None => {
                let names: Vec<&str> = doc
                    .operations
                    .iter()
                    .filter_map(|o| o.name.as_deref())
                    .collect();
                let hint = match crate::diag::did_you_mean(name, names.iter().copied()) {
                    Some(m) => format!("did you mean `{m}`?"),
                    None if names.is_empty() => {
                        "the query names no operation; name it, e.g. `query Customers { … }`, or drop `operation_name`".into()
                    }
                    None => format!("operations in the query: {}", names.join(", ")),
                };
                cx.error(
                    name.pos,
                    format!("the query has no operation named `{}`", name.value),
                    Some(hint),
                );
                ok = false;
                None
            }
        },
        None if doc.operations.len() > 1 => {
            cx.error(
                c.query.pos,
                format!(
                    "the query holds {} operations; `operation_name` must say which one to run",
                    doc.operations.len()
                ),
                Some("add `operation_name: NAME`, or keep one operation in the query".into()),
            );
            ok = false;
            None
        }
        None => doc.operations.first(),
    });
    if let Some(op) = op
        && op.kind == "subscription"
    {
        let pos = pos_in_query(cx, &c.query, op.offset);
        cx.error(
            pos,
            "subscriptions are not supported by the graphql step",
            Some("use a `query` or a `mutation`".into()),
        );
        ok = false;
    }

    // Sent as `operationName` also when only the query names it: servers key their logs
    // and metrics by it.
    let operation_name = c
        .operation_name
        .as_ref()
        .map(|n| n.value.clone())
        .or_else(|| op.and_then(|o| o.name.clone()));
    let pager = match &c.paginate {
        Some(p) => {
            let pager = compile_pager(p, cx);
            if let (Some(pager), Some(op)) = (&pager, op)
                && !op.variables.contains(&pager.cursor_var)
            {
                let pos = p.cursor_var.as_ref().map_or(p.path.pos, |v| v.pos);
                let var = &pager.cursor_var;
                cx.error(
                    pos,
                    format!("the query declares no `${var}` variable to carry the cursor"),
                    Some(format!(
                        "declare it and pass it on, e.g. `query($first: Int, ${var}: String) {{ customers(first: $first, {var}: ${var}) {{ … }} }}`"
                    )),
                );
                ok = false;
            }
            ok &= pager.is_some();
            pager
        }
        None => None,
    };

    let mut t = |n: &Option<Node>, cx: &mut CompileCx| -> Option<Template> {
        let n = n.as_ref()?;
        let r = cx.template(n);
        ok &= r.is_some();
        r
    };
    let path = t(&c.path, cx);
    let variables = t(&c.variables, cx);
    let headers = t(&c.headers, cx);
    // A mapping, or one `{{ expr }}` that renders to one; anything else written literally
    // can only fail when it runs.
    for (key, node) in [("variables", &c.variables), ("headers", &c.headers)] {
        if let Some(n) = node
            && !matches!(&n.value, Value::Map(_) | Value::Null)
            && !matches!(&n.value, Value::Str(s) if s.contains("{{"))
        {
            cx.error(
                n.pos,
                format!("`{key}` must be an object"),
                Some(format!(
                    "e.g. `{key}: {{ name: '{{{{ .event.body.name }}}}' }}`"
                )),
            );
            ok = false;
        }
    }
    if !ok {
        return None;
    }
    let connection = connection?;
    let max_response_bytes = c
        .max_response_bytes
        .unwrap_or(connection.max_response_bytes);
    Some(Box::new(Graphql {
        connection,
        path,
        query: c.query.value,
        variables,
        operation_name,
        headers,
        allow_errors: c.allow_errors,
        pager,
        max_response_bytes,
    }))
}

fn compile_pager(p: &PaginateConfig, cx: &mut CompileCx) -> Option<Pager> {
    let mut ok = true;
    let text = p.path.value.trim();
    let segments: Vec<&str> = text.strip_prefix('.').unwrap_or(text).split('.').collect();
    if segments.first() != Some(&"data") || segments.len() < 2 {
        cx.error(
            p.path.pos,
            format!(
                "`paginate.path` must start at `data` and name the relay connection, got `{}`",
                p.path.value
            ),
            Some("e.g. `data.customers`, where the response holds `{\"data\": {\"customers\": {\"edges\": […], \"pageInfo\": {…}}}}`".into()),
        );
        ok = false;
    } else if let Some(bad) = segments.iter().find(|s| !is_name(s)) {
        cx.error(
            p.path.pos,
            format!(
                "`paginate.path` has `{bad}` where a field name was expected, in `{}`",
                p.path.value
            ),
            Some(
                "a dotted path of field names (or aliases), e.g. `data.viewer.repositories`".into(),
            ),
        );
        ok = false;
    }
    let cursor_var = match &p.cursor_var {
        Some(v) => {
            let name = v.value.trim_start_matches('$');
            if !is_name(name) {
                cx.error(
                    v.pos,
                    format!("`cursor_var` must be a variable name, got `{}`", v.value),
                    Some("e.g. `after` (for `$after`)".into()),
                );
                ok = false;
            }
            name.to_owned()
        }
        None => "after".to_owned(),
    };
    for (limit, key) in [(&p.max_pages, "max_pages"), (&p.max_items, "max_items")] {
        if let Some(l) = limit
            && l.value == 0
        {
            cx.error(
                l.pos,
                format!("`{key}` must be at least 1"),
                Some(format!("remove `{key}` for the default")),
            );
            ok = false;
        }
    }
    if let Some(l) = &p.max_pages
        && l.value > super::paginate::MAX_MAX_PAGES
    {
        cx.error(
            l.pos,
            format!(
                "`max_pages` is at most {}, got {}",
                super::paginate::MAX_MAX_PAGES,
                l.value
            ),
            Some("every page is held in memory and stored with the run; split a bigger export into several runs".into()),
        );
        ok = false;
    }
    ok.then(|| Pager {
        path: segments[1..].iter().map(|s| (*s).to_owned()).collect(),
        cursor_var,
        max_pages: p.max_pages.as_ref().map_or(DEFAULT_MAX_PAGES, |m| m.value),
        max_items: p.max_items.as_ref().map(|m| m.value),
    })
}

/// The position of byte `offset` of the query: inside a one-line string, or inside a literal
/// block (`|`), line by line; else the position of the string.
fn pos_in_query(cx: &CompileCx, query: &Spanned<String>, offset: usize) -> Pos {
    let value = query.value.as_str();
    let offset = offset.min(value.len());
    let before = &value[..offset];
    // A literal block keeps its lines: line `row` of the value is written `row` lines below
    // its first line, after the block's indentation. The parser places the block at its first
    // line (or at the `|`, then the text starts on the next line). Folded and multi-line
    // quoted strings do not keep lines: checked by comparing, else the string's position.
    let lines: Vec<&str> = cx.source.lines().collect();
    let at = query.pos.line.saturating_sub(1) as usize;
    let col0 = query.pos.col.saturating_sub(1) as usize;
    // A block placed at its first line: the line above ends with its `|` (a block's first
    // character may be a quote, which does not open a quoted string there).
    let below_indicator = at > 0
        && lines.get(at - 1).is_some_and(|l| {
            let l = l.trim_end().trim_end_matches(['-', '+']);
            let l = l.trim_end_matches(|c: char| c.is_ascii_digit());
            l.ends_with('|')
        });
    // A block placed at its `|`, unless that `|` is the block's own first character (its
    // indicator is then on the line above).
    let at_indicator = !below_indicator
        && lines
            .get(at)
            .and_then(|l| l.get(col0..))
            .is_some_and(|rest| rest.starts_with('|'));
    if !at_indicator && !below_indicator && !before.contains('\n') {
        return cx.pos_in_string(query.pos, value, offset);
    }
    let (first, indent) = if at_indicator {
        let first = at + 1;
        let indent = lines
            .iter()
            .skip(first)
            .find(|l| !l.trim().is_empty())
            .map_or(0, |l| l.len() - l.trim_start_matches(' ').len());
        (first, indent)
    } else {
        (at, col0)
    };
    let row = before.matches('\n').count();
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let value_line = value[line_start..].split('\n').next().unwrap_or("");
    let source_line = lines.get(first + row).copied().unwrap_or("");
    if source_line.get(indent..).unwrap_or("").trim_end() != value_line.trim_end() {
        return query.pos;
    }
    Pos {
        line: (first + row + 1) as u32,
        col: (indent + before[line_start..].chars().count() + 1) as u32,
    }
}

fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

// ---------------------------------------------------------------------------------------------
// The compile-time check of a GraphQL document.

/// A syntax problem at byte `offset` of the query.
#[derive(Debug, PartialEq)]
pub struct SyntaxError {
    pub offset: usize,
    pub message: String,
    pub hint: String,
}

/// What the check learnt about an executable document.
#[derive(Debug, Default, PartialEq)]
pub struct Document {
    pub operations: Vec<Operation>,
}

#[derive(Debug, PartialEq)]
pub struct Operation {
    /// `query`, `mutation` or `subscription` (`query` for the `{ … }` shorthand).
    pub kind: &'static str,
    pub name: Option<String>,
    /// Declared variables, without `$`.
    pub variables: Vec<String>,
    pub offset: usize,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok<'a> {
    Name(&'a str),
    Punct(char),
    Spread,
    Value,
}

/// GraphQL's lexical grammar (spec §2.1): names, punctuators, numbers, strings, block strings;
/// whitespace, commas and `#` comments ignored.
fn tokens(src: &str) -> Result<Vec<(usize, Tok<'_>)>, SyntaxError> {
    let b = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let err = |offset, message: String, hint: &str| SyntaxError {
        offset,
        message,
        hint: hint.to_owned(),
    };
    while i < b.len() {
        let c = b[i];
        match c {
            b' ' | b'\t' | b'\n' | b'\r' | b',' => i += 1,
            b'#' => {
                while i < b.len() && b[i] != b'\n' && b[i] != b'\r' {
                    i += 1;
                }
            }
            b'!' | b'$' | b'&' | b'(' | b')' | b':' | b'=' | b'@' | b'[' | b']' | b'{' | b'|'
            | b'}' => {
                out.push((i, Tok::Punct(c as char)));
                i += 1;
            }
            b'.' => {
                if b[i..].starts_with(b"...") {
                    out.push((i, Tok::Spread));
                    i += 3;
                } else {
                    return Err(err(
                        i,
                        "invalid GraphQL: `.` outside `...`".into(),
                        "a fragment spread is `...Name`; fields are selected with `{ … }`, not dots",
                    ));
                }
            }
            b'_' | b'a'..=b'z' | b'A'..=b'Z' => {
                let start = i;
                while i < b.len() && (b[i] == b'_' || b[i].is_ascii_alphanumeric()) {
                    i += 1;
                }
                out.push((start, Tok::Name(&src[start..i])));
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                i += 1;
                while i < b.len()
                    && (b[i].is_ascii_alphanumeric() || matches!(b[i], b'.' | b'+' | b'-'))
                {
                    i += 1;
                }
                let text = &src[start..i];
                if text.parse::<f64>().is_err() || text.starts_with("--") {
                    return Err(err(
                        start,
                        format!("invalid GraphQL: bad number `{text}`"),
                        "numbers look like `10`, `-1.5` or `2e3`",
                    ));
                }
                out.push((start, Tok::Value));
            }
            b'"' => {
                let start = i;
                if b[i..].starts_with(b"\"\"\"") {
                    // Block string: ends at the first `"""` not escaped as `\"""`.
                    i += 3;
                    loop {
                        if i >= b.len() {
                            return Err(err(
                                start,
                                "invalid GraphQL: unterminated block string".into(),
                                "close it with `\"\"\"`",
                            ));
                        }
                        if b[i..].starts_with(b"\\\"\"\"") {
                            i += 4;
                        } else if b[i..].starts_with(b"\"\"\"") {
                            i += 3;
                            break;
                        } else {
                            i += 1;
                        }
                    }
                } else {
                    i += 1;
                    loop {
                        match b.get(i) {
                            None | Some(b'\n' | b'\r') => {
                                return Err(err(
                                    start,
                                    "invalid GraphQL: unterminated string".into(),
                                    "close it with `\"` on the same line, or use a block string `\"\"\"…\"\"\"`",
                                ));
                            }
                            Some(b'\\') => i += 2,
                            Some(b'"') => {
                                i += 1;
                                break;
                            }
                            Some(_) => i += 1,
                        }
                    }
                }
                out.push((start, Tok::Value));
            }
            _ if b[i..].starts_with("\u{feff}".as_bytes()) => i += 3,
            _ => {
                let ch = src.get(i..).and_then(|r| r.chars().next()).unwrap_or('?');
                return Err(err(
                    i,
                    format!("invalid GraphQL: unexpected character `{ch}`"),
                    "check the query's syntax; see https://spec.graphql.org/ for the grammar",
                ));
            }
        }
    }
    Ok(out)
}

/// Checks what can be checked without the schema: tokens, balanced brackets, that every
/// top-level definition is an operation or a fragment, and the operations' names and
/// declared variables. Public for the `graphql_query` fuzz target.
pub fn check_document(src: &str) -> Result<Document, SyntaxError> {
    let toks = tokens(src)?;
    if toks.is_empty() {
        return Err(SyntaxError {
            offset: 0,
            message: "the query is empty".into(),
            hint: "write a GraphQL operation, e.g. `query { viewer { id } }`".into(),
        });
    }
    let mut doc = Document::default();
    let mut stack: Vec<(usize, char)> = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        let (offset, tok) = toks[i].clone();
        if stack.is_empty() {
            // The start of a definition.
            let kind = match tok {
                Tok::Punct('{') => Some("query"),
                Tok::Name("query") => Some("query"),
                Tok::Name("mutation") => Some("mutation"),
                Tok::Name("subscription") => Some("subscription"),
                Tok::Name("fragment") => None,
                other => {
                    let found = match other {
                        Tok::Name(n) => format!("`{n}`"),
                        Tok::Punct(c) => format!("`{c}`"),
                        Tok::Spread => "`...`".into(),
                        Tok::Value => "a value".into(),
                    };
                    let hint = match other {
                        Tok::Name(
                            "type" | "schema" | "input" | "enum" | "interface" | "union" | "scalar"
                            | "directive" | "extend",
                        ) => {
                            "a schema definition cannot be executed; write an operation against the schema"
                        }
                        _ => {
                            "a GraphQL document is a list of operations (`query …`, `mutation …`, `{ … }`) and fragments"
                        }
                    };
                    return Err(SyntaxError {
                        offset,
                        message: format!(
                            "invalid GraphQL: expected `query`, `mutation`, `subscription`, `fragment` or `{{`, found {found}"
                        ),
                        hint: hint.into(),
                    });
                }
            };
            // The header up to the selection set: name, variables, directives.
            let mut name = None;
            let mut variables = Vec::new();
            let mut j = i + if matches!(tok, Tok::Punct('{')) { 0 } else { 1 };
            if let Some((_, Tok::Name(n))) = toks.get(j)
                && kind.is_some()
            {
                name = Some((*n).to_owned());
                j += 1;
            }
            let mut depth = 0usize;
            while let Some((o, t)) = toks.get(j) {
                match t {
                    Tok::Punct('{') if depth == 0 => break,
                    Tok::Punct('(' | '[') => depth += 1,
                    Tok::Punct(')' | ']') => {
                        depth = depth.checked_sub(1).ok_or_else(|| SyntaxError {
                            offset: *o,
                            message: format!("invalid GraphQL: unexpected `{}`", tok_char(t)),
                            hint: "it closes nothing".into(),
                        })?
                    }
                    Tok::Punct('$') if depth == 1 => {
                        if let Some((_, Tok::Name(v))) = toks.get(j + 1)
                            && matches!(toks.get(j + 2), Some((_, Tok::Punct(':'))))
                        {
                            variables.push((*v).to_owned());
                        }
                    }
                    Tok::Punct('}') => {
                        return Err(SyntaxError {
                            offset: *o,
                            message: "invalid GraphQL: unexpected `}`".into(),
                            hint: "it closes nothing".into(),
                        });
                    }
                    _ => {}
                }
                j += 1;
            }
            if toks.get(j).is_none() {
                return Err(SyntaxError {
                    offset,
                    message: "invalid GraphQL: the definition has no selection set".into(),
                    hint: "select fields in braces, e.g. `query { viewer { id } }`".into(),
                });
            }
            if let Some(kind) = kind {
                doc.operations.push(Operation {
                    kind,
                    name,
                    variables,
                    offset,
                });
            }
            // Walk the header and the selection set's `{` again for bracket balance (cheap,
            // and keeps one code path).
            for (o, t) in &toks[i..=j] {
                balance(&mut stack, *o, t)?;
            }
            i = j + 1;
            continue;
        }
        balance(&mut stack, offset, &tok)?;
        i += 1;
    }
    if let Some((o, c)) = stack.pop() {
        return Err(SyntaxError {
            offset: o,
            message: format!("invalid GraphQL: `{c}` is never closed"),
            hint: format!(
                "add the matching `{}`, or the one missing inside it",
                closer(c)
            ),
        });
    }
    Ok(doc)
}

fn tok_char(t: &Tok) -> char {
    match t {
        Tok::Punct(c) => *c,
        _ => '?',
    }
}

fn closer(c: char) -> char {
    match c {
        '{' => '}',
        '(' => ')',
        _ => ']',
    }
}

fn balance(stack: &mut Vec<(usize, char)>, offset: usize, t: &Tok) -> Result<(), SyntaxError> {
    match t {
        Tok::Punct(c @ ('{' | '(' | '[')) => stack.push((offset, *c)),
        Tok::Punct(c @ ('}' | ')' | ']')) => match stack.pop() {
            Some((_, open)) if closer(open) == *c => {}
            Some((o, open)) => {
                return Err(SyntaxError {
                    offset,
                    message: format!(
                        "invalid GraphQL: `{c}` where `{}` was expected",
                        closer(open)
                    ),
                    hint: format!("the `{open}` at offset {o} is still open"),
                });
            }
            None => {
                return Err(SyntaxError {
                    offset,
                    message: format!("invalid GraphQL: unexpected `{c}`"),
                    hint: "it closes nothing".into(),
                });
            }
        },
        _ => {}
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Executing.

/// Everything the templates produced for one attempt.
struct Rendered {
    path: Option<Json>,
    variables: Option<Json>,
    headers: Option<Json>,
}

/// One GraphQL response: `data` (`None` when the key is absent: the operation did not run)
/// and `errors` (empty when none).
#[derive(Debug, PartialEq)]
struct Response {
    data: Option<Json>,
    errors: Vec<Json>,
}

impl Response {
    /// The step result shape: `{"data", "errors"}`, `errors` null when there are none.
    fn to_json(&self) -> Json {
        json!({
            "data": self.data.clone().unwrap_or(Json::Null),
            "errors": if self.errors.is_empty() { Json::Null } else { Json::Array(self.errors.clone()) },
        })
    }
}

/// A GraphQL response body, or why it is not one.
fn parse_response(bytes: &[u8]) -> Result<Response, String> {
    let v: Json = serde_json::from_slice(bytes).map_err(|e| format!("is not JSON ({e})"))?;
    let Json::Object(mut o) = v else {
        return Err(format!(
            "is {}, not a GraphQL response object",
            type_name(&v)
        ));
    };
    let data = o.remove("data");
    let errors = match o.remove("errors") {
        None | Some(Json::Null) => Vec::new(),
        Some(Json::Array(e)) => e,
        Some(other) => {
            return Err(format!(
                "has `errors` as {}; expected a list",
                type_name(&other)
            ));
        }
    };
    if data.is_none() && errors.is_empty() {
        return Err("has neither `data` nor `errors`".into());
    }
    Ok(Response { data, errors })
}

/// One line listing GraphQL errors: `message (at a.b.0)`, the first few, then a count.
fn describe_errors(errors: &[Json]) -> String {
    let mut parts: Vec<String> = errors
        .iter()
        .take(MAX_QUOTED_ERRORS)
        .map(|e| {
            let msg = e
                .get("message")
                .and_then(Json::as_str)
                .map(|m| m.split_whitespace().collect::<Vec<_>>().join(" "))
                .unwrap_or_else(|| "(no message)".into());
            let mut msg: String = if msg.chars().count() > MAX_MESSAGE_CHARS {
                msg.chars().take(MAX_MESSAGE_CHARS).chain(['…']).collect()
            } else {
                msg
            };
            if let Some(Json::Array(path)) = e.get("path")
                && !path.is_empty()
            {
                let p: Vec<String> = path.iter().map(scalar_text).collect();
                msg.push_str(&format!(" (at {})", p.join(".")));
            }
            msg
        })
        .collect();
    if errors.len() > MAX_QUOTED_ERRORS {
        parts.push(format!("and {} more", errors.len() - MAX_QUOTED_ERRORS));
    }
    parts.join("; ")
}

/// The relay connection under `data` at `path`, if the page has one.
fn connection_at<'a>(data: &'a mut Json, path: &[String]) -> Option<&'a mut Map<String, Json>> {
    let mut v = data;
    for key in path {
        v = v.get_mut(key)?;
    }
    v.as_object_mut()
}

/// Where one page leaves the pagination.
#[derive(Debug, PartialEq)]
enum Next {
    /// Ask for the page after this cursor.
    Page(Json),
    Done,
}

/// Accumulates pages: the first page's `data`, with the connection's `edges` and `nodes`
/// extended by later pages and its `pageInfo` replaced by the last page's.
struct Merged {
    data: Json,
    errors: Vec<Json>,
    pages: u64,
}

impl Merged {
    /// Adds one page (`pages` counts it) and says whether to fetch another.
    fn add(&mut self, pager: &Pager, page: Response, allow_errors: bool) -> Result<Next, String> {
        self.pages += 1;
        self.errors.extend(page.errors);
        let mut data = page.data.unwrap_or(Json::Null);
        let shown = format!("data.{}", pager.path.join("."));
        let Some(conn) = connection_at(&mut data, &pager.path) else {
            // With `allow_errors`, a failed connection ends the pagination with what came.
            if allow_errors && !self.errors.is_empty() {
                if self.pages == 1 {
                    self.data = data;
                }
                return Ok(Next::Done);
            }
            return Err(format!(
                "page {} has no object at `{shown}`; `paginate.path` must name a relay connection",
                self.pages
            ));
        };
        let info = conn.get("pageInfo").cloned().unwrap_or(Json::Null);
        if !info.is_object() {
            return Err(format!(
                "page {} has no `pageInfo` at `{shown}`; select `pageInfo {{ hasNextPage endCursor }}`",
                self.pages
            ));
        }
        let has_next = info.get("hasNextPage").and_then(Json::as_bool);
        let Some(has_next) = has_next else {
            return Err(format!(
                "page {} has no boolean `{shown}.pageInfo.hasNextPage`; select `pageInfo {{ hasNextPage endCursor }}`",
                self.pages
            ));
        };
        let cursor = info.get("endCursor").cloned().unwrap_or(Json::Null);
        if self.pages == 1 {
            self.data = data;
        } else {
            let page_conn = std::mem::take(conn);
            let acc = connection_at(&mut self.data, &pager.path)
                .ok_or_else(|| format!("`{shown}` vanished from the first page"))?;
            for list in ["edges", "nodes"] {
                if let Some(Json::Array(items)) = page_conn.get(list)
                    && let Some(Json::Array(into)) = acc.get_mut(list)
                {
                    into.extend(items.iter().cloned());
                }
            }
            acc.insert("pageInfo".into(), info.clone());
        }
        let acc = connection_at(&mut self.data, &pager.path).expect("checked above");
        let mut items = 0u64;
        for list in ["edges", "nodes"] {
            if let Some(Json::Array(l)) = acc.get_mut(list) {
                if let Some(max) = pager.max_items {
                    l.truncate(max.try_into().unwrap_or(usize::MAX));
                }
                items = items.max(l.len() as u64);
            }
        }
        let full = pager.max_items.is_some_and(|m| items >= m);
        if !has_next || full || self.pages >= pager.max_pages {
            return Ok(Next::Done);
        }
        if cursor.is_null() {
            return Err(format!(
                "page {} says `hasNextPage` but its `endCursor` is null",
                self.pages
            ));
        }
        Ok(Next::Page(cursor))
    }
}

impl Step for Graphql {
    fn connection(&self) -> Option<&Connection> {
        Some(&self.connection)
    }

    fn requests_per_attempt(&self) -> u64 {
        self.pager.as_ref().map_or(1, |p| p.max_pages)
    }

    fn calls_out(&self) -> bool {
        true
    }

    fn execute<'a>(&'a self, cx: &'a StepCx) -> BoxFuture<'a, Result<StepOutput, StepError>> {
        async move {
            let rendered = self.render(cx).await?;
            self.run(cx, rendered).await
        }
        .boxed()
    }
}

impl Graphql {
    async fn render(&self, cx: &StepCx) -> Result<Rendered, StepError> {
        let mut out = cx
            .render_named(vec![
                ("path", self.path.clone()),
                ("variables", self.variables.clone()),
                ("headers", self.headers.clone()),
            ])
            .await?;
        let mut next = || out.next().flatten();
        Ok(Rendered {
            path: next(),
            variables: next(),
            headers: next(),
        })
    }

    async fn run(&self, cx: &StepCx, r: Rendered) -> Result<StepOutput, StepError> {
        let path = r.path.as_ref().map(scalar_text).unwrap_or_default();
        let url = call::connection_url(cx, &self.connection, &path)?;
        let mut variables = match r.variables {
            None | Some(Json::Null) => Map::new(),
            Some(Json::Object(v)) => v,
            Some(other) => {
                return Err(StepError::new(
                    ErrorKind::Expression,
                    format!(
                        "`variables` must render to an object, got {}",
                        type_name(&other)
                    ),
                ));
            }
        };
        let mut headers = vec![("accept".to_owned(), ACCEPT.to_owned())];
        if let Some(Json::Object(h)) = &r.headers {
            headers.extend(h.iter().map(|(k, v)| (k.clone(), scalar_text(v))));
        }
        let Some(pager) = &self.pager else {
            let (page, request) = self.send(cx, &url, &headers, &variables).await?;
            return Ok(StepOutput {
                value: page.to_json(),
                request: Some(request),
                outcome: super::Outcome::Continue,
            });
        };
        let mut merged = Merged {
            data: Json::Null,
            errors: Vec::new(),
            pages: 0,
        };
        loop {
            let (page, request) = self.send(cx, &url, &headers, &variables).await?;
            match merged.add(pager, page, self.allow_errors) {
                Ok(Next::Page(cursor)) => {
                    if variables.get(&pager.cursor_var) == Some(&cursor) {
                        let mut e = StepError::new(
                            ErrorKind::BadResponse,
                            format!(
                                "POST {} returned the same `endCursor` twice; the pagination would not advance",
                                call::redact_url(&url)
                            ),
                        );
                        e.request = Some(request);
                        return Err(e);
                    }
                    variables.insert(pager.cursor_var.clone(), cursor);
                }
                Ok(Next::Done) => {
                    let errors = match merged.errors.is_empty() {
                        true => Json::Null,
                        false => Json::Array(merged.errors),
                    };
                    return Ok(StepOutput {
                        value: json!({ "data": merged.data, "errors": errors, "pages": merged.pages }),
                        request: Some(request),
                        outcome: super::Outcome::Continue,
                    });
                }
                Err(message) => {
                    let mut e = StepError::new(
                        ErrorKind::BadResponse,
                        format!("POST {}: {message}", call::redact_url(&url)),
                    );
                    e.request = Some(request);
                    return Err(e);
                }
            }
        }
    }

    /// One request: the page's response (errors already judged) and the request record.
    async fn send(
        &self,
        cx: &StepCx,
        url: &reqwest::Url,
        headers: &[(String, String)],
        variables: &Map<String, Json>,
    ) -> Result<(Response, Json), StepError> {
        let mut body = Map::new();
        body.insert("query".into(), Json::String(self.query.clone()));
        if !variables.is_empty() {
            body.insert("variables".into(), Json::Object(variables.clone()));
        }
        if let Some(name) = &self.operation_name {
            body.insert("operationName".into(), Json::String(name.clone()));
        }
        let reply = call::send(
            cx,
            Outbound {
                connection: Some(&self.connection),
                method: reqwest::Method::POST,
                url: url.clone(),
                guarded: false,
                headers: headers.to_vec(),
                body: OutBody::Json(Json::Object(body)),
                max_response_bytes: self.max_response_bytes,
            },
        )
        .await?;
        let shown = call::redact_url(url);
        let parsed = parse_response(&reply.bytes);
        if !reply.is_success() {
            // GraphQL over HTTP: a 4xx/5xx may carry `errors`; retries still follow the status.
            return Err(match parsed {
                Ok(page) if !page.errors.is_empty() => {
                    let message = format!(
                        "POST {shown} answered {}: {}",
                        reply.status,
                        describe_errors(&page.errors)
                    );
                    let mut e = reply.status_error(&reqwest::Method::POST, url, Json::Null);
                    e.message = message;
                    e.response = Some(page.to_json());
                    e
                }
                _ => {
                    let body = reply.body_value();
                    reply.status_error(&reqwest::Method::POST, url, body)
                }
            });
        }
        let page = match parsed {
            Ok(page) => page,
            Err(why) => {
                let mut e = StepError::new(
                    ErrorKind::BadResponse,
                    format!(
                        "POST {shown} answered {} with a body that {why}",
                        reply.status
                    ),
                );
                e.response = Some(reply.result(reply.body_value()));
                e.request = Some(reply.request);
                return Err(e);
            }
        };
        // Errors are the server's answer, not a transport fault: retrying rarely helps, so
        // the kind is one that is not retried. Without `data` the operation did not run at
        // all (a request error), which `allow_errors` does not cover.
        if !page.errors.is_empty() && (!self.allow_errors || page.data.is_none()) {
            let what = if page.data.is_none() {
                "a request error"
            } else {
                "graphql errors"
            };
            let mut e = StepError::new(
                ErrorKind::BadResponse,
                format!(
                    "POST {shown} answered {} with {what}: {}",
                    reply.status,
                    describe_errors(&page.errors)
                ),
            );
            e.response = Some(page.to_json());
            e.request = Some(reply.request);
            return Err(e);
        }
        Ok((page, reply.request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    use crate::diag::Diagnostics;

    fn compile_errors(steps: &str) -> String {
        // `\` at the end of a Rust line eats the next line's indentation: put it back.
        let flow = format!("id: f\ntrigger: manual\nsteps:\n  {steps}");
        let mut conns = HashMap::new();
        let c = Connection::for_tests("shop", "http://127.0.0.1:1");
        conns.insert("shop".to_owned(), Arc::new(c));
        let node = crate::flow::node::parse_yaml(&flow).unwrap();
        let mut diags = Diagnostics::default();
        let Some(crate::flow::node::Value::Seq(steps)) = node.get("steps").map(|s| &s.value) else {
            panic!("a list of steps")
        };
        let mut cx = CompileCx {
            file: "f.yaml",
            source: &flow,
            connections: &conns,
            broken_connections: &[],
            diags: &mut diags,
            steps_before: vec!["one".into()],
            all_steps: vec![],
            reads: Default::default(),
            seen: HashMap::new(),
            next_seq: 0,
            depth: 0,
        };
        for step in steps {
            let _ = compile(step.get("graphql").expect("a graphql step"), &mut cx);
        }
        diags.sort();
        diags.to_string()
    }

    #[test]
    fn a_valid_step_compiles_in_every_form() {
        let steps = "\
  - id: one
    graphql:
      connection: shop
      path: /graphql
      query: 'mutation($e: String!) { subscribe(email: $e) { id } }'
      variables: { e: '{{ .event.body.email }}' }
  - id: block
    graphql:
      connection: shop
      operation_name: Customers
      query: |
        # every customer
        query Customers($after: String) {
          customers(first: 50, after: $after) {
            edges { cursor node { id name } }
            pageInfo { hasNextPage endCursor }
          }
        }
        query Other { x }
      paginate: { path: .data.customers, max_pages: 3, max_items: 120 }
      headers: { X-Tenant: '{{ .steps.one.data.subscribe.id }}' }
      allow_errors: true
  - id: shorthand
    graphql: { connection: shop, query: '{ viewer { id } } fragment F on User { id }' }
";
        assert_eq!(compile_errors(steps), "");
    }

    #[test]
    fn variables_and_headers_written_as_anything_but_an_object_are_located() {
        let steps = "\
  - id: a
    graphql: { connection: shop, query: '{ x }', variables: [1, 2] }
  - id: b
    graphql: { connection: shop, query: '{ x }', headers: 'nope' }
  - id: c
    graphql: { connection: shop, query: '{ x }', variables: '{{ .event.body }}' }
";
        insta::assert_snapshot!(compile_errors(steps), @r"
        f.yaml:5:61: error: `variables` must be an object
          hint: e.g. `variables: { name: '{{ .event.body.name }}' }`
        f.yaml:7:59: error: `headers` must be an object
          hint: e.g. `headers: { name: '{{ .event.body.name }}' }`
        ");
    }

    #[test]
    fn query_errors_point_inside_the_query() {
        let steps = "\
  - id: a
    graphql: { connection: shop, query: '{ customers(first: 2 { id } }' }
  - id: b
    graphql:
      connection: shop
      query: |
        query {
          customer(id: \"c1) { id }
        }
  - id: c
    graphql: { connection: shp, query: 'type Customer { id: ID }' }
  - id: d
    graphql: { connection: shop, query: '{ customer(id: \"{{ .event.body.id }}\") { id } }' }
  - id: e
    graphql: { connection: shop, query: '   ' }
";
        insta::assert_snapshot!(compile_errors(steps), @r#"
        f.yaml:5:70: error: invalid GraphQL: `}` where `)` was expected
          hint: the `(` at offset 11 is still open
        f.yaml:11:24: error: invalid GraphQL: unterminated string
          hint: close it with `"` on the same line, or use a block string `"""…"""`
        f.yaml:14:28: error: unknown connection `shp`
          hint: did you mean `shop`?
        f.yaml:14:41: error: invalid GraphQL: expected `query`, `mutation`, `subscription`, `fragment` or `{`, found `type`
          hint: a schema definition cannot be executed; write an operation against the schema
        f.yaml:16:58: error: the query is not a template: `{{ }}` is sent as written
          hint: pass values with `variables` and declare them in the query, e.g. `query($id: ID!) { customer(id: $id) { name } }` with `variables: { id: '{{ .event.body.id }}' }`
        f.yaml:18:42: error: the query is empty
          hint: write a GraphQL operation, e.g. `query { viewer { id } }`
        "#);
    }

    #[test]
    fn query_errors_count_escapes_and_doubled_quotes_as_written() {
        // Found by the graphql_query fuzz target: `\"` is one character of the query but two
        // of the file, so the error sat two columns early; and a block whose first character
        // is a quote was taken for a quoted string (one column late).
        let steps = r#"- id: a
    graphql: { connection: shop, query: "{ c(id: \"x\") { id } \u00e9 }" }
  - id: b
    graphql: { connection: shop, query: '{ c(id: "''") { id } } ]' }
  - id: c
    graphql:
      connection: shop
      query: |-
        """ie
"#;
        insta::assert_snapshot!(compile_errors(steps), @r#"
        f.yaml:5:64: error: invalid GraphQL: unexpected character `é`
          hint: check the query's syntax; see https://spec.graphql.org/ for the grammar
        f.yaml:7:65: error: invalid GraphQL: expected `query`, `mutation`, `subscription`, `fragment` or `{`, found `]`
          hint: a GraphQL document is a list of operations (`query …`, `mutation …`, `{ … }`) and fragments
        f.yaml:12:9: error: invalid GraphQL: unterminated block string
          hint: close it with `"""`
        "#);
    }

    #[test]
    fn a_block_whose_first_character_is_a_bar_is_not_taken_for_its_indicator() {
        // Found by the graphql_query fuzz target: the query's own first `|` was read as the
        // block's `|` indicator, so its first line was looked for one line down, did not
        // match, and the error fell back to the start of the query (8:9, not 8:50).
        let steps = "- id: a
    graphql:
      connection: shop
      query: |-
        |||query : cmquerz Rrde||||| Ir($id:{v I{;;;
  - id: b
    graphql:
      connection: shop
      query: |
        | { x ; }
";
        insta::assert_snapshot!(compile_errors(steps), @r"
        f.yaml:8:50: error: invalid GraphQL: unexpected character `;`
          hint: check the query's syntax; see https://spec.graphql.org/ for the grammar
        f.yaml:13:15: error: invalid GraphQL: unexpected character `;`
          hint: check the query's syntax; see https://spec.graphql.org/ for the grammar
        ");
    }

    #[test]
    fn operations_and_pagination_settings_are_checked_against_the_query() {
        let steps = "\
  - id: a
    graphql:
      connection: shop
      query: 'query A { x } query B { y }'
  - id: b
    graphql:
      connection: shop
      query: 'query A { x } query B { y }'
      operation_name: C
  - id: c
    graphql:
      connection: shop
      query: 'query($first: Int) { customers(first: $first) { nodes { id } } }'
      paginate: { path: data.customers }
  - id: d
    graphql:
      connection: shop
      query: 'query($cursor: String) { customers(after: $cursor) { nodes { id } } }'
      paginate: { path: customers, cursor_var: cursor, max_pages: 0 }
  - id: e
    graphql:
      connection: shop
      query: 'subscription { ticks }'
      allow_erors: true
";
        insta::assert_snapshot!(compile_errors(steps), @r#"
        f.yaml:7:14: error: the query holds 2 operations; `operation_name` must say which one to run
          hint: add `operation_name: NAME`, or keep one operation in the query
        f.yaml:12:23: error: the query has no operation named `C`
          hint: operations in the query: A, B
        f.yaml:17:25: error: the query declares no `$after` variable to carry the cursor
          hint: declare it and pass it on, e.g. `query($first: Int, $after: String) { customers(first: $first, after: $after) { … } }`
        f.yaml:22:25: error: `paginate.path` must start at `data` and name the relay connection, got `customers`
          hint: e.g. `data.customers`, where the response holds `{"data": {"customers": {"edges": […], "pageInfo": {…}}}}`
        f.yaml:22:67: error: `max_pages` must be at least 1
          hint: remove `max_pages` for the default
        f.yaml:27:7: error: unknown key `allow_erors`
          hint: did you mean `allow_errors`? allowed: connection, path, query, variables, operation_name, headers, allow_errors, paginate, max_response_bytes
        "#);
    }

    #[test]
    fn the_lexer_knows_strings_comments_and_variables() {
        let doc = check_document(
            "# c { \n query Q($a: String = \"}\", $b: [Int!]! @d) { f(s: \"\"\"a\n}\"\"\" n: -1.5e3, v: $a) { ...F } }\nfragment F on T { g }",
        )
        .unwrap();
        assert_eq!(
            doc.operations,
            vec![Operation {
                kind: "query",
                name: Some("Q".into()),
                variables: vec!["a".into(), "b".into()],
                offset: 8,
            }]
        );
        // Multi-byte text in block strings and after escapes (regression: a byte index
        // inside a character panicked).
        assert!(check_document("{ a(s: \"\"\"é\\\"\"\"ü\"\"\", t: \"\\é\") }").is_ok());
        let e = check_document("{ a } }").unwrap_err();
        assert_eq!(
            (e.offset, e.message.as_str()),
            (
                6,
                "invalid GraphQL: expected `query`, `mutation`, `subscription`, `fragment` or `{`, found `}`"
            )
        );
        let e = check_document("query { a { b }").unwrap_err();
        assert_eq!(
            (e.offset, e.message.as_str()),
            (6, "invalid GraphQL: `{` is never closed")
        );
        let e = check_document("query Q($a: Int)").unwrap_err();
        assert_eq!(
            e.message,
            "invalid GraphQL: the definition has no selection set"
        );
        let e = check_document("{ a % }").unwrap_err();
        assert_eq!(
            (e.offset, e.message.as_str()),
            (4, "invalid GraphQL: unexpected character `%`")
        );
    }

    proptest::proptest! {
        // Any text is checked without a panic, and an error's offset can slice the query
        // (positions inside it are computed from that offset).
        #[test]
        fn any_query_is_checked_without_panic(text in "(\\PC|[{}()\\[\\]\"$#.\n\\\\]){0,200}") {
            if let Err(e) = check_document(&text) {
                proptest::prop_assert!(e.offset <= text.len() && text.is_char_boundary(e.offset), "{e:?}");
            }
        }
    }

    #[test]
    fn responses_are_read_per_graphql_over_http() {
        let ok = parse_response(br#"{"data": {"a": 1}}"#).unwrap();
        assert_eq!(ok.to_json(), json!({"data": {"a": 1}, "errors": null}));
        let partial = parse_response(
            br#"{"data": {"a": null}, "errors": [{"message": "m", "path": ["a"]}]}"#,
        )
        .unwrap();
        assert_eq!(partial.errors.len(), 1);
        assert_eq!(partial.data, Some(json!({"a": null})));
        let request_error = parse_response(br#"{"errors": [{"message": "bad"}]}"#).unwrap();
        assert_eq!(request_error.data, None);
        assert_eq!(
            request_error.to_json(),
            json!({"data": null, "errors": [{"message": "bad"}]})
        );
        assert_eq!(
            parse_response(b"<html>").unwrap_err(),
            "is not JSON (expected value at line 1 column 1)"
        );
        assert_eq!(
            parse_response(b"{}").unwrap_err(),
            "has neither `data` nor `errors`"
        );
        assert_eq!(
            parse_response(br#"{"errors": "x"}"#).unwrap_err(),
            "has `errors` as a string; expected a list"
        );
        assert_eq!(
            parse_response(b"[1]").unwrap_err(),
            "is a list, not a GraphQL response object"
        );
    }

    #[test]
    fn error_messages_list_messages_and_paths_on_one_line() {
        let errors: Vec<Json> = (0..7)
            .map(|i| json!({"message": format!("bad\nthing {i}"), "path": ["items", i, "name"]}))
            .collect();
        assert_eq!(
            describe_errors(&errors),
            "bad thing 0 (at items.0.name); bad thing 1 (at items.1.name); bad thing 2 (at items.2.name); bad thing 3 (at items.3.name); bad thing 4 (at items.4.name); and 2 more"
        );
        assert_eq!(describe_errors(&[json!({"x": 1})]), "(no message)");
        let long = describe_errors(&[json!({"message": "x".repeat(500)})]);
        assert_eq!(long.chars().count(), MAX_MESSAGE_CHARS + 1);
    }

    fn page(ids: &[&str], has_next: bool, cursor: Option<&str>) -> Response {
        Response {
            data: Some(json!({"shop": {"customers": {
                "total": 7,
                "edges": ids.iter().map(|i| json!({"cursor": i, "node": {"id": i}})).collect::<Vec<_>>(),
                "nodes": ids.iter().map(|i| json!({"id": i})).collect::<Vec<_>>(),
                "pageInfo": {"hasNextPage": has_next, "endCursor": cursor},
            }}})),
            errors: vec![],
        }
    }

    fn pager(max_pages: u64, max_items: Option<u64>) -> Pager {
        Pager {
            path: vec!["shop".into(), "customers".into()],
            cursor_var: "after".into(),
            max_pages,
            max_items,
        }
    }

    fn start() -> Merged {
        Merged {
            data: Json::Null,
            errors: vec![],
            pages: 0,
        }
    }

    #[test]
    fn pages_concatenate_in_order_and_keep_the_last_page_info() {
        let p = pager(10, None);
        let mut m = start();
        assert_eq!(
            m.add(&p, page(&["a", "b"], true, Some("b")), false),
            Ok(Next::Page(json!("b")))
        );
        assert_eq!(
            m.add(&p, page(&["c", "d"], true, Some("d")), false),
            Ok(Next::Page(json!("d")))
        );
        assert_eq!(
            m.add(&p, page(&["e"], false, Some("e")), false),
            Ok(Next::Done)
        );
        let conn = &m.data["shop"]["customers"];
        assert_eq!(
            conn["nodes"],
            json!([{"id": "a"}, {"id": "b"}, {"id": "c"}, {"id": "d"}, {"id": "e"}])
        );
        assert_eq!(
            conn["edges"][4],
            json!({"cursor": "e", "node": {"id": "e"}})
        );
        assert_eq!(
            conn["pageInfo"],
            json!({"hasNextPage": false, "endCursor": "e"})
        );
        assert_eq!(conn["total"], 7);
        assert_eq!(m.pages, 3);
    }

    #[test]
    fn pagination_stops_at_its_limits_and_on_broken_pages() {
        // max_pages: the result says there is more.
        let p = pager(2, None);
        let mut m = start();
        m.add(&p, page(&["a", "b"], true, Some("b")), false)
            .unwrap();
        assert_eq!(
            m.add(&p, page(&["c", "d"], true, Some("d")), false),
            Ok(Next::Done)
        );
        assert_eq!(m.data["shop"]["customers"]["pageInfo"]["hasNextPage"], true);
        // max_items: cut to the limit.
        let p = pager(10, Some(3));
        let mut m = start();
        m.add(&p, page(&["a", "b"], true, Some("b")), false)
            .unwrap();
        assert_eq!(
            m.add(&p, page(&["c", "d"], true, Some("d")), false),
            Ok(Next::Done)
        );
        assert_eq!(
            m.data["shop"]["customers"]["nodes"]
                .as_array()
                .unwrap()
                .len(),
            3
        );
        assert_eq!(
            m.data["shop"]["customers"]["edges"]
                .as_array()
                .unwrap()
                .len(),
            3
        );
        // A next page without a cursor, a page without pageInfo, a wrong path.
        let p = pager(10, None);
        assert_eq!(
            start().add(&p, page(&["a"], true, None), false),
            Err("page 1 says `hasNextPage` but its `endCursor` is null".into())
        );
        let bare = Response {
            data: Some(json!({"shop": {"customers": {"nodes": []}}})),
            errors: vec![],
        };
        assert_eq!(
            start().add(&p, bare, false),
            Err("page 1 has no `pageInfo` at `data.shop.customers`; select `pageInfo { hasNextPage endCursor }`".into())
        );
        let other = Response {
            data: Some(json!({"shop": null})),
            errors: vec![],
        };
        assert_eq!(
            start().add(&p, other, false),
            Err("page 1 has no object at `data.shop.customers`; `paginate.path` must name a relay connection".into())
        );
        // With allow_errors, a failed connection ends the pagination with what came before.
        let mut m = start();
        m.add(&p, page(&["a"], true, Some("a")), true).unwrap();
        let failed = Response {
            data: Some(json!({"shop": null})),
            errors: vec![json!({"message": "down"})],
        };
        assert_eq!(m.add(&p, failed, true), Ok(Next::Done));
        assert_eq!(m.data["shop"]["customers"]["nodes"], json!([{"id": "a"}]));
        assert_eq!(m.errors, vec![json!({"message": "down"})]);
    }
}
