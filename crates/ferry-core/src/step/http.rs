//! `http`: one REST call, through a connection (`connection` + `path`) or to an absolute `url`.
//!
//! ```yaml
//! - id: contact
//!   http:
//!     connection: crm
//!     method: POST
//!     path: /contacts
//!     body: { email: '{{ .event.body.email }}' }
//! ```
//!
//! The result is `{"status", "headers", "body"}`, the body parsed as JSON when the response
//! says JSON, else text. A non-2xx status fails the attempt (retried per SPEC §8.3). Every
//! request carries `Idempotency-Key` (run + step, stable across retries) and
//! `User-Agent: ferry/VERSION`.

use std::sync::Arc;

use futures::FutureExt;
use futures::future::BoxFuture;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value as Json;

use super::call::{self, OutBody, Outbound, scalar_text, type_name};
use super::{CompileCx, ErrorKind, Step, StepCx, StepDef, StepError, StepOutput};
use crate::connection::{Connection, DEFAULT_MAX_RESPONSE_BYTES};
use crate::expr::{EvalError, Template};
use crate::flow::node::{Node, Spanned};

pub(super) const DEF: StepDef = StepDef {
    kind: "http",
    summary: "call a REST API (method, path or url, query, headers, JSON / form / text body)",
    compile,
    schema: |g| g.subschema_for::<HttpConfig>(),
};

/// Methods a step may use; anything else is most likely a typo (`PSOT`).
const KNOWN_METHODS: &[&str] = &["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct HttpConfig {
    /// The connection to call through; `path` is appended to its `base_url`.
    #[serde(default)]
    connection: Option<Spanned<String>>,
    /// An absolute URL (template), instead of `connection` + `path`.
    #[serde(default)]
    url: Option<Node>,
    /// `GET` (default, or `POST` when a body is given), `POST`, `PUT`, `PATCH`, `DELETE`, …
    #[serde(default)]
    method: Option<Spanned<String>>,
    /// Path after the connection's base URL (template), e.g. `/contacts/{{ .event.body.id }}`.
    #[serde(default)]
    path: Option<Node>,
    /// Query parameters (templates).
    #[serde(default)]
    query: Option<Node>,
    /// Request headers (templates).
    #[serde(default)]
    headers: Option<Node>,
    /// A JSON body (template).
    #[serde(default)]
    body: Option<Node>,
    /// A form body, `application/x-www-form-urlencoded` (templates).
    #[serde(default)]
    form: Option<Node>,
    /// A text body, `text/plain` unless a `Content-Type` header says otherwise (template).
    #[serde(default)]
    text: Option<Node>,
    /// Largest response body accepted, in bytes (default: the connection's, else 10 MiB).
    #[serde(default)]
    max_response_bytes: Option<u64>,
    /// An operation of the connection's OpenAPI spec (its `operationId`), instead of
    /// `method` + `path`; the step is checked against the spec at load. See docs/flows.md.
    #[serde(default)]
    operation: Option<Spanned<String>>,
    /// Values of the operation's path parameters (templates), e.g. `{ id: '{{ .event.body.id }}' }`.
    #[serde(default)]
    params: Option<Node>,
}

enum Body {
    None,
    Json(Template),
    Form(Template),
    Text(Template),
}

struct Http {
    connection: Option<Arc<Connection>>,
    method: reqwest::Method,
    url: Option<Template>,
    path: Option<Template>,
    query: Option<Template>,
    headers: Option<Template>,
    body: Body,
    max_response_bytes: u64,
    /// `operation:`: the path template that `params` fills.
    operation: Option<crate::openapi::check::PathTemplate>,
    params: Option<Template>,
}

fn compile(node: &Node, cx: &mut CompileCx) -> Option<Box<dyn Step>> {
    let c: HttpConfig = cx.parse(node)?;
    let connection = match &c.connection {
        Some(name) => Some(cx.connection(name)?),
        None => None,
    };
    let operation = match &c.operation {
        Some(op) => Some(crate::openapi::check::compile(
            cx,
            node,
            connection.as_deref(),
            op,
        )?),
        None => None,
    };
    if let (None, Some(p)) = (&c.operation, &c.params) {
        cx.error(
            p.pos,
            "`params` needs `operation`",
            Some("write path values into `path`, or name an OpenAPI `operation`".into()),
        );
        return None;
    }
    match (&connection, &c.url, &c.path) {
        (None, None, _) => {
            cx.error(
                node.pos,
                "an http step needs `connection` (with `path`) or `url`",
                Some("add `connection: <id>` or `url: https://…`".into()),
            );
            return None;
        }
        (Some(_), Some(url), _) => {
            cx.error(
                url.pos,
                "`url` and `connection` exclude each other",
                Some("use `path` with a connection".into()),
            );
            return None;
        }
        (None, Some(_), Some(path)) => {
            cx.error(
                path.pos,
                "`path` needs a `connection`",
                Some("put the whole address in `url`".into()),
            );
            return None;
        }
        _ => {}
    }
    let bodies = [&c.body, &c.form, &c.text]
        .iter()
        .filter(|b| b.is_some())
        .count();
    if bodies > 1 {
        cx.error(node.pos, "give at most one of `body`, `form`, `text`", None);
        return None;
    }
    let method = match (&operation, &c.method) {
        (Some(op), _) => op.method.clone(),
        (None, Some(m)) => {
            match reqwest::Method::from_bytes(m.value.trim().to_ascii_uppercase().as_bytes())
                .ok()
                .filter(|m| KNOWN_METHODS.contains(&m.as_str()))
            {
                Some(m) => m,
                None => {
                    let hint = match crate::diag::did_you_mean(
                        &m.value.to_ascii_uppercase(),
                        KNOWN_METHODS.iter().copied(),
                    ) {
                        Some(g) => {
                            format!("did you mean `{g}`? methods: {}", KNOWN_METHODS.join(", "))
                        }
                        None => format!("methods: {}", KNOWN_METHODS.join(", ")),
                    };
                    cx.error(
                        m.pos,
                        format!("invalid HTTP method `{}`", m.value),
                        Some(hint),
                    );
                    return None;
                }
            }
        }
        (None, None) if bodies > 0 => reqwest::Method::POST,
        (None, None) => reqwest::Method::GET,
    };
    let mut ok = true;
    let mut t = |n: &Option<Node>, cx: &mut CompileCx| -> Option<Template> {
        let n = n.as_ref()?;
        let r = cx.template(n);
        ok &= r.is_some();
        r
    };
    let url = t(&c.url, cx);
    let path = t(&c.path, cx);
    let query = t(&c.query, cx);
    let headers = t(&c.headers, cx);
    let params = t(&c.params, cx);
    let body = if c.body.is_some() {
        t(&c.body, cx).map(Body::Json)
    } else if c.form.is_some() {
        t(&c.form, cx).map(Body::Form)
    } else if c.text.is_some() {
        t(&c.text, cx).map(Body::Text)
    } else {
        Some(Body::None)
    };
    if !ok {
        return None;
    }
    let max_response_bytes = c
        .max_response_bytes
        .or(connection.as_ref().map(|c| c.max_response_bytes))
        .unwrap_or(DEFAULT_MAX_RESPONSE_BYTES);
    Some(Box::new(Http {
        connection,
        method,
        url,
        path,
        query,
        headers,
        body: body?,
        max_response_bytes,
        operation: operation.map(|o| o.path),
        params,
    }))
}

/// Everything the templates produced for one attempt.
struct Rendered {
    url: Option<Json>,
    path: Option<Json>,
    query: Option<Json>,
    headers: Option<Json>,
    body: Option<Json>,
    params: Option<Json>,
}

impl Step for Http {
    fn connection(&self) -> Option<&Connection> {
        self.connection.as_deref()
    }

    fn calls_out(&self) -> bool {
        true
    }

    fn execute<'a>(&'a self, cx: &'a StepCx) -> BoxFuture<'a, Result<StepOutput, StepError>> {
        async move {
            let rendered = self.render(cx).await?;
            self.send(cx, rendered).await
        }
        .boxed()
    }
}

impl Http {
    async fn render(&self, cx: &StepCx) -> Result<Rendered, StepError> {
        let parts: Vec<Option<Template>> = vec![
            self.url.clone(),
            self.path.clone(),
            self.query.clone(),
            self.headers.clone(),
            match &self.body {
                Body::None => None,
                Body::Json(t) | Body::Form(t) | Body::Text(t) => Some(t.clone()),
            },
            self.params.clone(),
        ];
        let bounded = parts.iter().flatten().all(Template::is_bounded);
        let mut out = cx
            .eval(bounded, move |ctx| {
                let names = ["url", "path", "query", "headers", "body", "params"];
                parts
                    .iter()
                    .zip(names)
                    .map(|(t, name)| match t {
                        Some(t) => t.render(ctx).map(Some).map_err(|e| EvalError {
                            message: format!("in `{name}`: {}", e.message),
                        }),
                        None => Ok(None),
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .await?
            .into_iter();
        let mut next = || out.next().flatten();
        Ok(Rendered {
            url: next(),
            path: next(),
            query: next(),
            headers: next(),
            body: next(),
            params: next(),
        })
    }

    async fn send(&self, cx: &StepCx, r: Rendered) -> Result<StepOutput, StepError> {
        let mut url = self.url_for(cx, &r)?;
        if let Some(Json::Object(q)) = &r.query {
            let mut pairs = url.query_pairs_mut();
            for (k, v) in q {
                match v {
                    Json::Null => {}
                    Json::Array(items) => {
                        for item in items {
                            pairs.append_pair(k, &scalar_text(item));
                        }
                    }
                    other => {
                        pairs.append_pair(k, &scalar_text(other));
                    }
                }
            }
        }
        let headers = match &r.headers {
            Some(Json::Object(h)) => h.iter().map(|(k, v)| (k.clone(), scalar_text(v))).collect(),
            _ => Vec::new(),
        };
        let body = match (&self.body, r.body) {
            (Body::Json(_), Some(b)) => OutBody::Json(b),
            (Body::Form(_), Some(Json::Object(fields))) => OutBody::Form(
                fields
                    .iter()
                    .map(|(k, v)| (k.clone(), scalar_text(v)))
                    .collect(),
            ),
            (Body::Form(_), Some(other)) => {
                return Err(StepError::new(
                    ErrorKind::Expression,
                    format!("`form` must render to an object, got {}", type_name(&other)),
                ));
            }
            (Body::Text(_), Some(b)) => OutBody::Text(scalar_text(&b)),
            _ => OutBody::None,
        };
        let reply = call::send(
            cx,
            Outbound {
                connection: self.connection.as_deref(),
                method: self.method.clone(),
                url: url.clone(),
                // A URL built from data goes through the SSRF guard; one the operator wrote does not.
                guarded: self.url.as_ref().is_some_and(|u| !u.is_literal()),
                headers,
                body,
                max_response_bytes: self.max_response_bytes,
            },
        )
        .await?;
        let body = reply.body_value();
        if reply.is_success() {
            Ok(StepOutput {
                value: reply.result(body),
                request: Some(reply.request),
                stop: false,
            })
        } else {
            Err(reply.status_error(&self.method, &url, body))
        }
    }

    fn url_for(&self, cx: &StepCx, r: &Rendered) -> Result<reqwest::Url, StepError> {
        match (&self.connection, &r.url) {
            (Some(conn), _) => {
                let path = match &self.operation {
                    Some(op) => op.fill(r.params.as_ref()).map_err(|e| {
                        StepError::new(ErrorKind::Expression, format!("in `params`: {e}"))
                    })?,
                    None => r.path.as_ref().map(scalar_text).unwrap_or_default(),
                };
                call::connection_url(cx, conn, &path)
            }
            (None, Some(u)) => call::parse_url(&scalar_text(u)),
            (None, None) => Err(StepError::new(ErrorKind::Config, "no url")),
        }
    }
}
