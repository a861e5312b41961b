//! `{{ expr }}` templates over JSON-shaped config values.
//!
//! A string that is exactly one `{{ expr }}` yields the expression's JSON value; any other
//! string with `{{ }}` inside is text with the values interpolated (strings as is, other
//! values as JSON). Objects and arrays are templates of templates.

use jaq_json::Val;
use serde_json::Value as Json;

use super::{CompileError, EvalError, Expr};

#[derive(Clone, Debug)]
pub enum Part {
    Text(String),
    Expr(Expr),
}

#[derive(Clone, Debug)]
pub enum Template {
    Literal(Json),
    /// The whole string was one `{{ }}`: the value, not its text.
    Value(Expr),
    Text(Vec<Part>),
    Array(Vec<Template>),
    Object(Vec<(String, Template)>),
}

/// Where a template failed to compile: byte offset in the string, and what is wrong.
#[derive(Debug, Clone, PartialEq)]
pub struct TemplateError {
    pub offset: usize,
    pub message: String,
}

/// Literal text (`Ok`) or the byte range of one `{{ }}` expression (`Err`).
pub type Piece = Result<String, (usize, usize)>;

/// Splits a string into text and `{{ }}` pieces, returning each expression's byte range.
///
/// The closing `}}` is the first one at which braces opened inside the expression are
/// balanced, so `{{ {a: {b: 1}} }}` works; braces inside jq string literals do not count.
pub fn split_template(s: &str) -> Result<Vec<Piece>, TemplateError> {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut text = String::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'{' && bytes.get(i + 1) == Some(&b'{') {
            let start = i + 2;
            let end = find_close(bytes, start).ok_or(TemplateError {
                offset: i,
                message: "unclosed `{{`: expected `}}`".into(),
            })?;
            if !text.is_empty() {
                out.push(Ok(std::mem::take(&mut text)));
            }
            out.push(Err((start, end)));
            i = end + 2;
        } else {
            let ch = s[i..].chars().next().expect("in bounds");
            text.push(ch);
            i += ch.len_utf8();
        }
    }
    if !text.is_empty() {
        out.push(Ok(text));
    }
    Ok(out)
}

fn find_close(bytes: &[u8], start: usize) -> Option<usize> {
    let mut depth = 0i32;
    let mut in_str = false;
    let mut i = start;
    while i < bytes.len() {
        let b = bytes[i];
        if in_str {
            match b {
                b'\\' => i += 1,
                b'"' => in_str = false,
                _ => {}
            }
        } else {
            match b {
                b'"' => in_str = true,
                b'{' => depth += 1,
                b'}' if depth == 0 && bytes.get(i + 1) == Some(&b'}') => return Some(i),
                b'}' => depth -= 1,
                _ => {}
            }
        }
        i += 1;
    }
    None
}

impl Template {
    /// Compiles a string template.
    pub fn compile_str(s: &str) -> Result<Template, TemplateError> {
        let pieces = split_template(s)?;
        let compile = |(a, b): (usize, usize)| -> Result<Expr, TemplateError> {
            let code = &s[a..b];
            Expr::compile(code).map_err(|CompileError { offset, message }| TemplateError {
                offset: a + offset,
                message,
            })
        };
        match pieces.as_slice() {
            [] => Ok(Template::Literal(Json::String(String::new()))),
            [Ok(text)] => Ok(Template::Literal(Json::String(text.clone()))),
            [Err(range)] => Ok(Template::Value(compile(*range)?)),
            _ => {
                let mut parts = Vec::with_capacity(pieces.len());
                for piece in pieces {
                    parts.push(match piece {
                        Ok(text) => Part::Text(text),
                        Err(range) => Part::Expr(compile(range)?),
                    });
                }
                Ok(Template::Text(parts))
            }
        }
    }

    /// True when every expression inside is bounded (`Expr::is_bounded`).
    pub fn is_bounded(&self) -> bool {
        match self {
            Template::Literal(_) => true,
            Template::Value(e) => e.is_bounded(),
            Template::Text(parts) => parts.iter().all(|p| match p {
                Part::Text(_) => true,
                Part::Expr(e) => e.is_bounded(),
            }),
            Template::Array(items) => items.iter().all(Template::is_bounded),
            Template::Object(fields) => fields.iter().all(|(_, t)| t.is_bounded()),
        }
    }

    /// Adds to `into` what the expressions inside can read of the context.
    pub fn add_reads(&self, into: &mut super::Reads) {
        match self {
            Template::Literal(_) => {}
            Template::Value(e) => into.add(e.reads()),
            Template::Text(parts) => {
                for p in parts {
                    if let Part::Expr(e) = p {
                        into.add(e.reads());
                    }
                }
            }
            Template::Array(items) => items.iter().for_each(|t| t.add_reads(into)),
            Template::Object(fields) => fields.iter().for_each(|(_, t)| t.add_reads(into)),
        }
    }

    /// True when rendering cannot depend on the context.
    pub fn is_literal(&self) -> bool {
        matches!(self, Template::Literal(_))
    }

    /// Renders against a jaq context value. `at` names the config path for error messages.
    pub fn render(&self, ctx: &Val) -> Result<Json, EvalError> {
        match self {
            Template::Literal(v) => Ok(v.clone()),
            Template::Value(e) => e.eval(ctx).map_err(|err| with_expr(err, e)),
            Template::Text(parts) => {
                let mut out = String::new();
                for part in parts {
                    match part {
                        Part::Text(t) => out.push_str(t),
                        Part::Expr(e) => match e.eval(ctx).map_err(|err| with_expr(err, e))? {
                            Json::String(s) => out.push_str(&s),
                            Json::Null => {}
                            other => out.push_str(&other.to_string()),
                        },
                    }
                }
                Ok(Json::String(out))
            }
            Template::Array(items) => items
                .iter()
                .map(|t| t.render(ctx))
                .collect::<Result<Vec<_>, _>>()
                .map(Json::Array),
            Template::Object(fields) => {
                let mut map = serde_json::Map::with_capacity(fields.len());
                for (k, t) in fields {
                    let v = t.render(ctx).map_err(|e| EvalError {
                        message: format!("at `{k}`: {}", e.message),
                    })?;
                    map.insert(k.clone(), v);
                }
                Ok(Json::Object(map))
            }
        }
    }
}

fn with_expr(err: EvalError, e: &Expr) -> EvalError {
    EvalError {
        message: format!("{} (in `{}`)", err.message, e.source().trim()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expr::json_to_val;
    use serde_json::json;

    fn render(t: &str, ctx: Json) -> Json {
        Template::compile_str(t)
            .unwrap()
            .render(&json_to_val(&ctx))
            .unwrap()
    }

    #[test]
    fn whole_expression_yields_the_json_value() {
        assert_eq!(render("{{ .a }}", json!({"a": [1, 2]})), json!([1, 2]));
        assert_eq!(render("  {{.n}}", json!({"n": 5})), json!("  5"));
        assert_eq!(
            render("Hi {{ .name }}!", json!({"name": "Ada"})),
            json!("Hi Ada!")
        );
        assert_eq!(
            render("{{ {a: {b: 1}} }}", json!(null)),
            json!({"a": {"b": 1}})
        );
        assert_eq!(render("{{ \"}}\" }}", json!(null)), json!("}}"));
        assert_eq!(render("plain", json!(null)), json!("plain"));
    }

    #[test]
    fn errors_point_inside_the_string() {
        let err = Template::compile_str("x {{ .a | nope }}").unwrap_err();
        assert_eq!(err.offset, 10);
        let err = Template::compile_str("x {{ .a ").unwrap_err();
        assert_eq!(err.offset, 2);
        assert!(err.message.contains("unclosed"));
    }
}
