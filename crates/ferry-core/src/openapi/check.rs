//! `operation:` in an `http` step: resolved against the connection's spec when the flow
//! compiles, with every mismatch reported at its position.
//!
//! Checked: the operation exists (did-you-mean among operation ids); `method`/`path` are not
//! given as well; `params` names exactly the path's placeholders; `query` names only the
//! operation's query parameters and all the required ones; a body only when the operation
//! takes one, and one when it requires one; and the body's literal shape against the JSON
//! request schema: required properties, properties refused by `additionalProperties: false`,
//! literal types (`type`, 3.0 `nullable`, 3.1 type lists), `enum`/`const` of literal
//! scalars, through `$ref`, `allOf`, `anyOf`/`oneOf` (one alternative must fit), `items` and
//! `additionalProperties` schemas. A value written as a `{{ }}` expression is only known at
//! run time and passes. Header parameters, formats, lengths and ranges are not checked.

use serde_json::Value as Json;

use super::{Operation, ParamIn, Spec};
use crate::connection::Connection;
use crate::diag::{Pos, did_you_mean};
use crate::flow::node::{Node, Spanned, Value};
use crate::step::CompileCx;

/// What an `operation:` compiles to.
pub struct Resolved {
    pub method: reqwest::Method,
    pub path: PathTemplate,
}

/// The operation's path template, filled from the step's rendered `params` per attempt.
#[derive(Debug, Clone)]
pub struct PathTemplate {
    template: String,
}

impl PathTemplate {
    /// `/contacts/{id}` + `{"id": "a b"}` → `/contacts/a%20b`. Each value is one path
    /// segment: `/`, `?`, `#` and the like are percent-encoded, so data cannot change which
    /// resource is called.
    pub fn fill(&self, params: Option<&Json>) -> Result<String, String> {
        let mut out = String::with_capacity(self.template.len());
        let mut rest = self.template.as_str();
        while let Some(start) = rest.find('{') {
            let Some(len) = rest[start..].find('}') else {
                break;
            };
            out.push_str(&rest[..start]);
            let name = &rest[start + 1..start + len];
            let text = match params.and_then(|p| p.get(name)) {
                Some(Json::String(s)) if !s.is_empty() => s.clone(),
                Some(v @ (Json::Number(_) | Json::Bool(_))) => v.to_string(),
                Some(Json::String(_)) => {
                    return Err(format!(
                        "path parameter `{name}` rendered to an empty string"
                    ));
                }
                Some(Json::Null) | None => {
                    return Err(format!("path parameter `{name}` rendered to null"));
                }
                Some(_) => {
                    return Err(format!(
                        "path parameter `{name}` must render to a string or a number"
                    ));
                }
            };
            encode_segment(&text, &mut out);
            rest = &rest[start + len + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }
}

fn encode_segment(text: &str, out: &mut String) {
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

/// Resolves `operation` (the http step's mapping is `node`) and checks the step against it;
/// `None` when anything was reported.
pub fn compile(
    cx: &mut CompileCx,
    node: &Node,
    connection: Option<&Connection>,
    operation: &Spanned<String>,
) -> Option<Resolved> {
    let Some(conn) = connection else {
        cx.error(
            operation.pos,
            "`operation` needs a `connection` whose file has `openapi:`",
            Some("add `connection: <id>`; `ferry import openapi SPEC` writes one".into()),
        );
        return None;
    };
    let Some(spec) = conn.openapi.as_deref() else {
        cx.error(
            operation.pos,
            format!("connection `{}` has no OpenAPI spec", conn.id),
            Some(format!(
                "add `openapi: specs/{0}.yaml` to its file, or run `ferry import openapi SPEC --id {0}`",
                conn.id
            )),
        );
        return None;
    };
    let Some(op) = spec.operation(&operation.value) else {
        let ids = spec.operations.iter().map(|o| o.id.as_str());
        let hint = match did_you_mean(&operation.value, ids.clone()) {
            Some(g) => format!("did you mean `{g}`?"),
            None => {
                let all: Vec<&str> = ids.collect();
                if all.len() <= 12 {
                    format!("operations: {}", all.join(", "))
                } else {
                    format!(
                        "{} operations; list them with `ferry import openapi` or read the spec",
                        all.len()
                    )
                }
            }
        };
        cx.error(
            operation.pos,
            format!(
                "unknown operation `{}` in connection `{}`'s spec",
                operation.value, conn.id
            ),
            Some(hint),
        );
        return None;
    };
    let before = cx.diags.len();
    let what = format!("`{}` (`{} {}`)", op.id, op.method, op.path);
    for key in ["method", "path", "url"] {
        if let Some(n) = node.get(key) {
            cx.error(
                n.pos,
                format!("`{key}` and `operation` exclude each other"),
                Some(format!(
                    "operation {what} sets the method and the path; remove `{key}`"
                )),
            );
        }
    }
    check_params(cx, node, op, operation.pos, &what);
    check_query(cx, spec, node, op, operation.pos, &what);
    check_body(cx, spec, node, op, operation.pos, &what);
    if cx.diags.len() > before {
        return None;
    }
    Some(Resolved {
        method: reqwest::Method::from_bytes(op.method.as_bytes()).ok()?,
        path: PathTemplate {
            template: op.path.clone(),
        },
    })
}

fn check_params(cx: &mut CompileCx, node: &Node, op: &Operation, op_pos: Pos, what: &str) {
    let names = op.path_names();
    let params = node.get("params");
    let entries = match params.map(|p| &p.value) {
        Some(Value::Map(entries)) => entries.as_slice(),
        // One expression for all of them: only known at run time.
        Some(Value::Str(_)) => return,
        Some(_) => {
            let p = params.expect("matched");
            cx.error(
                p.pos,
                format!("`params` must be a mapping, found {}", p.kind_name()),
                Some("e.g. `params: { id: '{{ .event.body.id }}' }`".into()),
            );
            return;
        }
        None => &[],
    };
    for (key, _) in entries {
        if !names.contains(&key.name.as_str()) {
            let hint = match did_you_mean(&key.name, names.iter().copied()) {
                Some(g) => format!("did you mean `{g}`? path parameters: {}", names.join(", ")),
                None if names.is_empty() => format!("`{}` has no path parameters", op.path),
                None => format!("path parameters: {}", names.join(", ")),
            };
            cx.error(
                key.pos,
                format!("unknown path parameter `{}` for operation {what}", key.name),
                Some(hint),
            );
        }
    }
    for name in &names {
        if !entries.iter().any(|(k, _)| k.name == *name) {
            cx.error(
                params.map(|p| p.pos).unwrap_or(op_pos),
                format!("missing path parameter `{name}` for operation {what}"),
                Some(format!("add it under `params:`, e.g. `params: {{ {name}: '{{{{ .event.body.{name} }}}}' }}`")),
            );
        }
    }
}

fn check_query(
    cx: &mut CompileCx,
    spec: &Spec,
    node: &Node,
    op: &Operation,
    op_pos: Pos,
    what: &str,
) {
    let query = node.get("query");
    let entries = match query.map(|q| &q.value) {
        Some(Value::Map(entries)) => entries.as_slice(),
        Some(_) => return,
        None => &[],
    };
    let known: Vec<&str> = op
        .params_in(ParamIn::Query)
        .map(|p| p.name.as_str())
        .collect();
    // An object parameter (`style: form` exploded, `deepObject`) spreads into keys the spec
    // does not name: any key may be right.
    let free_form = op.params_in(ParamIn::Query).any(|p| {
        p.schema
            .as_ref()
            .and_then(|s| spec.deref(s).ok())
            .is_some_and(|s| s.get("type").and_then(Json::as_str) == Some("object"))
    });
    if !free_form {
        for (key, _) in entries {
            if !known.contains(&key.name.as_str()) {
                let hint = match did_you_mean(&key.name, known.iter().copied()) {
                    Some(g) => {
                        format!("did you mean `{g}`? query parameters: {}", known.join(", "))
                    }
                    None if known.is_empty() => {
                        format!("operation `{}` takes no query parameters", op.id)
                    }
                    None => format!("query parameters: {}", known.join(", ")),
                };
                cx.error(
                    key.pos,
                    format!(
                        "unknown query parameter `{}` for operation {what}",
                        key.name
                    ),
                    Some(hint),
                );
            }
        }
    }
    for p in op.params_in(ParamIn::Query).filter(|p| p.required) {
        if !entries.iter().any(|(k, _)| k.name == p.name) {
            cx.error(
                query.map(|q| q.pos).unwrap_or(op_pos),
                format!(
                    "missing required query parameter `{}` for operation {what}",
                    p.name
                ),
                Some(format!("add `{}` under `query:`", p.name)),
            );
        }
    }
}

fn check_body(
    cx: &mut CompileCx,
    spec: &Spec,
    node: &Node,
    op: &Operation,
    op_pos: Pos,
    what: &str,
) {
    let given = ["body", "form", "text"]
        .into_iter()
        .find_map(|k| node.get(k).map(|n| (k, n)));
    let Some(body) = &op.body else {
        if let Some((key, n)) = given {
            cx.error(
                n.pos,
                format!("operation {what} takes no request body"),
                Some(format!("remove `{key}`")),
            );
        }
        return;
    };
    let Some((key, n)) = given else {
        if body.required {
            cx.error(
                op_pos,
                format!("operation {what} requires a request body"),
                Some(format!("add `body:` ({})", body.media_types.join(", "))),
            );
        }
        return;
    };
    if key != "body" {
        return;
    }
    let Some(schema) = &body.json_schema else {
        return;
    };
    let budget = std::cell::Cell::new(CHECK_BUDGET);
    let mut checker = Checker {
        spec,
        errors: Vec::new(),
        budget: &budget,
    };
    checker.value(n, schema, "body", 0);
    for (pos, message, hint) in checker.errors {
        cx.error(
            pos,
            message,
            Some(hint.unwrap_or_else(|| {
                format!("see the request body schema of operation `{}`", op.id)
            })),
        );
    }
}

/// The static check of a literal value against a schema.
struct Checker<'a> {
    spec: &'a Spec,
    errors: Vec<(Pos, String, Option<String>)>,
    /// Schema visits left for the whole body, shared with `anyOf`/`oneOf` trials: nested
    /// alternatives multiply, and a hostile spec (`S: {anyOf: [$ref S, $ref S]}`) must not
    /// make `ferry validate` hang. When it runs out, the rest passes unchecked.
    budget: &'a std::cell::Cell<u32>,
}

/// Schema visits per body: far above any real request schema.
const CHECK_BUDGET: u32 = 20_000;

/// How deep a body is walked: deeper literals are rare and cycles end here.
const MAX_DEPTH: usize = 32;

/// A string that is one `{{ }}` expression: its value (of any type) is known at run time.
fn is_expression(s: &str) -> bool {
    let t = s.trim();
    t.starts_with("{{") && t.ends_with("}}") && t.matches("{{").count() == 1
}

impl Checker<'_> {
    fn value(&mut self, node: &Node, schema: &Json, at: &str, depth: usize) {
        if depth > MAX_DEPTH || self.budget.get() == 0 {
            return;
        }
        self.budget.set(self.budget.get() - 1);
        let Ok(schema) = self.spec.deref(schema) else {
            return;
        };
        if let Value::Str(s) = &node.value
            && is_expression(s)
        {
            return;
        }
        for part in schema
            .get("allOf")
            .and_then(Json::as_array)
            .into_iter()
            .flatten()
        {
            self.value(node, part, at, depth + 1);
        }
        for key in ["anyOf", "oneOf"] {
            if let Some(alternatives) = schema.get(key).and_then(Json::as_array) {
                let fits = alternatives.iter().any(|alt| {
                    let mut trial = Checker {
                        spec: self.spec,
                        errors: Vec::new(),
                        budget: self.budget,
                    };
                    trial.value(node, alt, at, depth + 1);
                    trial.errors.is_empty()
                });
                if !fits && !alternatives.is_empty() {
                    self.errors.push((
                        node.pos,
                        format!("`{at}` matches none of the `{key}` alternatives"),
                        None,
                    ));
                }
            }
        }
        if !self.type_fits(node, schema, at) {
            return;
        }
        self.enum_fits(node, schema, at);
        match &node.value {
            Value::Map(entries) => self.object(node, entries, schema, at, depth),
            Value::Seq(items) => {
                if let Some(items_schema) = schema.get("items").filter(|i| i.is_object()) {
                    for (i, item) in items.iter().enumerate() {
                        self.value(item, items_schema, &format!("{at}[{i}]"), depth + 1);
                    }
                }
            }
            _ => {}
        }
    }

    fn object(
        &mut self,
        node: &Node,
        entries: &[(crate::flow::node::Key, Node)],
        schema: &Json,
        at: &str,
        depth: usize,
    ) {
        let props = schema.get("properties").and_then(Json::as_object);
        // A readOnly property is sent by the server only; `required` does not apply to
        // requests (OpenAPI 3.0 §4.7.25.1).
        let read_only = |name: &str| {
            props
                .and_then(|p| p.get(name))
                .and_then(|s| self.spec.deref(s).ok())
                .and_then(|s| s.get("readOnly"))
                .and_then(Json::as_bool)
                .unwrap_or(false)
        };
        let missing: Vec<&str> = schema
            .get("required")
            .and_then(Json::as_array)
            .into_iter()
            .flatten()
            .filter_map(Json::as_str)
            .filter(|r| !entries.iter().any(|(k, _)| k.name == *r) && !read_only(r))
            .collect();
        for name in missing {
            self.errors.push((
                node.pos,
                format!("`{at}` is missing the required property `{name}`"),
                Some(format!("add `{name}:`")),
            ));
        }
        let additional = schema.get("additionalProperties");
        for (key, value) in entries {
            let path = format!("{at}.{}", key.name);
            match props.and_then(|p| p.get(&key.name)) {
                Some(s) => self.value(value, s, &path, depth + 1),
                None => match additional {
                    Some(Json::Bool(false)) => {
                        let names: Vec<&str> = props
                            .into_iter()
                            .flat_map(|p| p.keys().map(String::as_str))
                            .collect();
                        let hint = match did_you_mean(&key.name, names.iter().copied()) {
                            Some(g) => {
                                format!("did you mean `{g}`? properties: {}", names.join(", "))
                            }
                            None => format!("properties: {}", names.join(", ")),
                        };
                        self.errors.push((
                            key.pos,
                            format!("property `{}` is not allowed in `{at}`", key.name),
                            Some(hint),
                        ));
                    }
                    Some(s @ Json::Object(_)) => self.value(value, s, &path, depth + 1),
                    _ => {}
                },
            }
        }
    }

    /// False (with an error) when the literal's type is not one the schema allows.
    fn type_fits(&mut self, node: &Node, schema: &Json, at: &str) -> bool {
        let mut types: Vec<&str> = match schema.get("type") {
            Some(Json::String(t)) => vec![t.as_str()],
            Some(Json::Array(ts)) => ts.iter().filter_map(Json::as_str).collect(),
            _ => return true,
        };
        if schema.get("nullable").and_then(Json::as_bool) == Some(true) {
            types.push("null");
        }
        let found: &[&str] = match &node.value {
            Value::Null => &["null"],
            Value::Bool(_) => &["boolean"],
            Value::Int(_) => &["integer", "number"],
            Value::Float(f) if f.fract() == 0.0 => &["integer", "number"],
            Value::Float(_) => &["number"],
            Value::Str(_) => &["string"],
            Value::Seq(_) => &["array"],
            Value::Map(_) => &["object"],
        };
        if found.iter().any(|f| types.contains(f)) {
            return true;
        }
        let expected: Vec<String> = types.iter().map(|t| article(t)).collect();
        self.errors.push((
            node.pos,
            format!(
                "`{at}` must be {}, found {}",
                expected.join(" or "),
                node.kind_name()
            ),
            Some(format!(
                "the schema says `type: {}`; write {} or a `{{{{ }}}}` expression",
                types.join(", "),
                expected.first().map(String::as_str).unwrap_or("a value"),
            )),
        ));
        false
    }

    fn enum_fits(&mut self, node: &Node, schema: &Json, at: &str) {
        if matches!(node.value, Value::Map(_) | Value::Seq(_))
            || matches!(&node.value, Value::Str(s) if s.contains("{{"))
        {
            return;
        }
        let value = node.to_json();
        let allowed: Vec<&Json> = match (schema.get("enum"), schema.get("const")) {
            (Some(Json::Array(values)), _) => values.iter().collect(),
            (_, Some(c)) => vec![c],
            _ => return,
        };
        if !allowed.contains(&&value) {
            let list: Vec<String> = allowed.iter().map(|v| v.to_string()).collect();
            self.errors.push((
                node.pos,
                format!("`{at}` is {value}, not one of the allowed values"),
                Some(format!("allowed: {}", list.join(", "))),
            ));
        }
    }
}

fn article(t: &str) -> String {
    match t {
        "null" => "null".into(),
        "integer" | "object" | "array" => format!("an {t}"),
        "boolean" | "string" | "number" => format!("a {t}"),
        other => format!("`{other}`"),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::path::Path;
    use std::sync::Arc;

    use super::*;
    use crate::diag::Diagnostics;

    fn project(flow_steps: &str) -> String {
        let spec = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/openapi/crm.yaml");
        let conn_yaml = format!(
            "id: crm\nbase_url: http://127.0.0.1:1\nopenapi: {}\n",
            spec.display()
        );
        let node = crate::flow::node::parse_yaml(&conn_yaml).unwrap();
        let mut diags = Diagnostics::default();
        let (conn, _) =
            crate::flow::compile::compile_connection("connections/crm.yaml", &node, &mut diags)
                .unwrap_or_else(|| panic!("{diags}"));
        let mut conns = HashMap::new();
        conns.insert("crm".to_owned(), Arc::new(conn));
        let flow = format!(
            "id: f\ntrigger: manual\nsteps:\n{}",
            flow_steps.trim_start_matches('\n')
        );
        let node = crate::flow::node::parse_yaml(&flow).unwrap();
        let _ = crate::flow::compile::compile_flow("f.yaml", &flow, &node, &conns, &[], &mut diags);
        diags.sort();
        diags.to_string()
    }

    #[test]
    fn a_well_formed_operation_step_compiles() {
        let errors = project(
            "  - id: c\n    http:\n      connection: crm\n      operation: createContact\n      body:\n        email: '{{ .event.body.email }}'\n        name: null\n        age: 42\n        source: web-shop\n        tags: [a, '{{ .event.body.tag }}']\n        address: { city: Lyon }\n  - id: g\n    http:\n      connection: crm\n      operation: getContact\n      params: { id: '{{ .steps.c.body.id }}' }\n      query: { expand: true }\n  - id: n\n    http: { connection: crm, operation: getContactsByIdNotes, params: { id: 7 } }\n  - id: whole\n    http: { connection: crm, operation: createContact, body: '{{ .event.body }}' }\n",
        );
        assert_eq!(errors, "");
    }

    #[test]
    fn every_mismatch_is_located() {
        let errors = project(
            "
  - id: a
    http: { connection: crm, operation: createContac, body: {} }
  - id: b
    http: { connection: crm, operation: getContact, method: GET, params: { idd: 1 }, query: { expnd: true } }
  - id: c
    http: { connection: crm, operation: searchContacts }
  - id: d
    http: { connection: crm, operation: deleteContact, params: { id: 1 }, body: { x: 1 } }
  - id: e
    http:
      connection: crm
      operation: createContact
      body:
        emial: a@b.c
        age: '42'
        source: shop
        address: { street: x }
  - id: f
    http: { connection: crm, operation: createContact }
",
        );
        insta::assert_snapshot!(errors, @r#"
        f.yaml:5:41: error: unknown operation `createContac` in connection `crm`'s spec
          hint: did you mean `createContact`?
        f.yaml:7:61: error: `method` and `operation` exclude each other
          hint: operation `getContact` (`GET /contacts/{id}`) sets the method and the path; remove `method`
        f.yaml:7:74: error: missing path parameter `id` for operation `getContact` (`GET /contacts/{id}`)
          hint: add it under `params:`, e.g. `params: { id: '{{ .event.body.id }}' }`
        f.yaml:7:76: error: unknown path parameter `idd` for operation `getContact` (`GET /contacts/{id}`)
          hint: did you mean `id`? path parameters: id
        f.yaml:7:95: error: unknown query parameter `expnd` for operation `getContact` (`GET /contacts/{id}`)
          hint: did you mean `expand`? query parameters: expand
        f.yaml:9:41: error: missing required query parameter `q` for operation `searchContacts` (`GET /contacts/search`)
          hint: add `q` under `query:`
        f.yaml:11:81: error: operation `deleteContact` (`DELETE /contacts/{id}`) takes no request body
          hint: remove `body`
        f.yaml:17:9: error: `body` is missing the required property `email`
          hint: add `email:`
        f.yaml:17:9: error: property `emial` is not allowed in `body`
          hint: did you mean `email`? properties: address, age, email, name, source, tags
        f.yaml:18:14: error: `body.age` must be an integer, found a string
          hint: the schema says `type: integer`; write an integer or a `{{ }}` expression
        f.yaml:19:17: error: `body.source` is "shop", not one of the allowed values
          hint: allowed: "web-shop", "import", "api"
        f.yaml:20:18: error: `body.address` is missing the required property `city`
          hint: add `city:`
        f.yaml:22:41: error: operation `createContact` (`POST /contacts`) requires a request body
          hint: add `body:` (application/json)
        "#);
    }

    #[test]
    fn nested_alternatives_cannot_make_the_check_hang() {
        let spec = Spec::parse(
            "openapi: 3.1.0\npaths:\n  /x:\n    post:\n      operationId: x\n      requestBody:\n        content:\n          application/json:\n            schema: { $ref: '#/components/schemas/S' }\ncomponents:\n  schemas:\n    S: { anyOf: [{ allOf: [{ $ref: '#/components/schemas/S' }, { type: string }] }, { allOf: [{ $ref: '#/components/schemas/S' }, { type: string }] }] }\n",
            "s.yaml",
        )
        .unwrap();
        let schema = spec.operations[0]
            .body
            .as_ref()
            .unwrap()
            .json_schema
            .clone()
            .unwrap();
        let node = crate::flow::node::parse_yaml("a: 1\n").unwrap();
        let budget = std::cell::Cell::new(CHECK_BUDGET);
        let mut checker = Checker {
            spec: &spec,
            errors: Vec::new(),
            budget: &budget,
        };
        checker.value(&node, &schema, "body", 0);
        // 2^32 paths without a budget; with it, the check ends.
        assert_eq!(budget.get(), 0);
    }

    #[test]
    fn path_parameters_are_one_encoded_segment_each() {
        let t = PathTemplate {
            template: "/contacts/{id}/notes/{n}".into(),
        };
        let p = serde_json::json!({"id": "a/b?c#d e", "n": 7});
        assert_eq!(
            t.fill(Some(&p)).unwrap(),
            "/contacts/a%2Fb%3Fc%23d%20e/notes/7"
        );
        let p = serde_json::json!({"id": null, "n": 7});
        assert_eq!(
            t.fill(Some(&p)).unwrap_err(),
            "path parameter `id` rendered to null"
        );
        assert!(
            t.fill(Some(&serde_json::json!({"id": [1], "n": 1})))
                .is_err()
        );
        assert!(t.fill(None).is_err());
    }

    #[test]
    fn whole_expressions_are_unknown_and_partial_ones_are_strings() {
        assert!(is_expression("{{ .a }}"));
        assert!(is_expression(" {{ .a | tostring }} "));
        assert!(!is_expression("id-{{ .a }}"));
        assert!(!is_expression("{{ .a }}-{{ .b }}"));
    }
}
