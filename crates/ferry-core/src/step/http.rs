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
//! says JSON, text for other text types, `{base64, content_type, size}` for binary ones. A
//! non-2xx status fails the attempt (retried per SPEC §8.3), except a 3xx when the flow
//! turned redirects off. Every request carries `Idempotency-Key` (run + step, stable across
//! retries) and `User-Agent: ferry/VERSION`.
//!
//! With `paginate:` the step fetches page after page ([`super::paginate`] decides where the
//! next one is) and `.body` is every page's items. One attempt is the whole listing: a
//! failing page fails it, and a retry starts from the first page, since a cursor or offset
//! from a failed attempt may no longer be valid.
//!
//! Bodies: JSON, form, text, multipart (built here into bytes, so `auth:` signing sees the
//! final body) and binary (base64 in, raw bytes out).

use std::sync::Arc;

use futures::FutureExt;
use futures::future::BoxFuture;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value as Json, json};

use super::call::{self, OutBody, Outbound, Reply, scalar_text, type_name};
use super::paginate::{self, Next, PageSeen, Paginate, Style};
use super::{CompileCx, ErrorKind, Step, StepCx, StepDef, StepError, StepOutput};
use crate::connection::{Connection, DEFAULT_MAX_RESPONSE_BYTES};
use crate::expr::{EvalError, Template};
use crate::flow::model::Redirects;
use crate::flow::node::{Node, Spanned, Value};

pub(super) const DEF: StepDef = StepDef {
    kind: "http",
    summary: "call a REST API (method, path or url, query, headers, body; pagination)",
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
    /// A `multipart/form-data` body (templates): a map of field name to a text value or a part
    /// `{ text | base64, filename, content_type }`, or a list of parts each with a `name`.
    #[serde(default)]
    multipart: Option<Node>,
    /// Raw bytes (template): base64 text, or a binary result `{ base64, content_type }` such
    /// as another step's binary `.body`. Sent with its `content_type`, a `Content-Type`
    /// header, or `application/octet-stream`.
    #[serde(default)]
    binary: Option<Node>,
    /// Fetch every page of a listing: one of `link: next`, `cursor: { param, next }`,
    /// `page: { param, start }`, `offset: { param, limit_param, limit }`, with `items`,
    /// `max_pages` (default 100) and `max_items`. `.body` is then the items of all pages.
    #[serde(default)]
    #[schemars(with = "Option<paginate::PaginateConfig>")]
    paginate: Option<Node>,
    /// Redirects followed: `follow` (up to 5; default: the connection's), a number, or `none`
    /// (a 3xx answer is the result, so its `location` header can be read).
    #[serde(default)]
    redirects: Option<Spanned<Redirects>>,
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
    /// With the field names in the order written (a rendered JSON object loses it).
    Multipart(Template, Vec<String>),
    Binary(Template),
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
    paginate: Option<Paginate>,
    /// The step's `redirects:`, overriding the connection's.
    redirects: Option<usize>,
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
    let bodies = [&c.body, &c.form, &c.text, &c.multipart, &c.binary]
        .iter()
        .filter(|b| b.is_some())
        .count();
    if bodies > 1 {
        cx.error(
            node.pos,
            "give at most one of `body`, `form`, `text`, `multipart`, `binary`",
            None,
        );
        return None;
    }
    if let (Some(r), Some(conn)) = (&c.redirects, &connection)
        && conn.tls.is_some()
    {
        cx.error(
            r.pos,
            format!(
                "`redirects` cannot be set on a step whose connection `{}` has `tls:`",
                conn.id
            ),
            Some("set `redirects:` on the connection instead".into()),
        );
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
    } else if let Some(m) = &c.multipart {
        let parts_ok = check_multipart(m, cx);
        let order = match &m.value {
            Value::Map(entries) => entries.iter().map(|(k, _)| k.name.clone()).collect(),
            _ => Vec::new(),
        };
        t(&c.multipart, cx)
            .filter(|_| parts_ok)
            .map(|t| Body::Multipart(t, order))
    } else if c.binary.is_some() {
        t(&c.binary, cx).map(Body::Binary)
    } else {
        Some(Body::None)
    };
    let paginate = match &c.paginate {
        Some(p) => {
            let r = paginate::compile(p, cx);
            ok &= r.is_some();
            r
        }
        None => None,
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
        paginate,
        redirects: c.redirects.map(|r| r.value.0),
        operation: operation.map(|o| o.path),
        params,
    }))
}

/// Keys a multipart part may have; `name` only in the list form.
const PART_KEYS: &[&str] = &["name", "text", "base64", "filename", "content_type"];

/// Checks the parts written literally in `multipart:` (a part built by an expression is
/// checked when it renders).
fn check_multipart(node: &Node, cx: &mut CompileCx) -> bool {
    let mut ok = true;
    let mut part = |n: &Node, listed: bool, cx: &mut CompileCx| {
        let Value::Map(entries) = &n.value else {
            if listed && !matches!(n.value, Value::Str(_)) {
                cx.error(
                    n.pos,
                    "a multipart part in a list must be a mapping with `name`",
                    Some(
                        "e.g. `- { name: file, filename: a.pdf, base64: '{{ .event.body.pdf }}' }`"
                            .into(),
                    ),
                );
                ok = false;
            }
            return;
        };
        for (k, _) in entries {
            if !PART_KEYS.contains(&k.name.as_str()) || (!listed && k.name == "name") {
                let allowed = &PART_KEYS[usize::from(!listed)..];
                let hint = match crate::diag::did_you_mean(&k.name, allowed.iter().copied()) {
                    Some(m) => format!("did you mean `{m}`? allowed: {}", allowed.join(", ")),
                    None => format!("allowed: {}", allowed.join(", ")),
                };
                cx.error(
                    k.pos,
                    format!("unknown multipart part key `{}`", k.name),
                    Some(hint),
                );
                ok = false;
            }
        }
        let has = |key: &str| entries.iter().any(|(k, _)| k.name == key);
        if has("text") == has("base64") {
            cx.error(
                n.pos,
                "a multipart part needs exactly one of `text`, `base64`",
                Some("`text:` for text content, `base64:` for bytes".into()),
            );
            ok = false;
        }
        if listed && !has("name") {
            cx.error(
                n.pos,
                "a multipart part in a list needs `name`",
                Some("add `name: <field name>`".into()),
            );
            ok = false;
        }
    };
    match &node.value {
        Value::Map(entries) => entries.iter().for_each(|(_, v)| part(v, false, cx)),
        Value::Seq(items) => items.iter().for_each(|v| part(v, true, cx)),
        Value::Str(_) => {}
        _ => {
            cx.error(
                node.pos,
                "`multipart` must be a mapping of field names to parts, or a list of parts",
                None,
            );
            ok = false;
        }
    }
    ok
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

    fn requests_per_attempt(&self) -> u64 {
        self.paginate.as_ref().map_or(1, |p| p.max_pages)
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
        let body = match &self.body {
            Body::None => None,
            Body::Json(t)
            | Body::Form(t)
            | Body::Text(t)
            | Body::Multipart(t, _)
            | Body::Binary(t) => Some(t.clone()),
        };
        let mut out = cx
            .render_named(vec![
                ("url", self.url.clone()),
                ("path", self.path.clone()),
                ("query", self.query.clone()),
                ("headers", self.headers.clone()),
                ("body", body),
                ("params", self.params.clone()),
            ])
            .await?;
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
        let body = self.out_body(r.body, &headers)?;
        let out = |url: reqwest::Url| Outbound {
            connection: self.connection.as_deref(),
            method: self.method.clone(),
            url,
            // A URL built from data goes through the SSRF guard; one the operator wrote does not.
            guarded: self.url.as_ref().is_some_and(|u| !u.is_literal()),
            headers: headers.clone(),
            body: body.clone(),
            max_response_bytes: self.max_response_bytes,
        };
        if let Some(p) = &self.paginate {
            return self.send_pages(cx, p, url, out).await;
        }
        let reply = call::send_with(cx, out(url.clone()), self.redirects).await?;
        let body = self.reply_body(&reply);
        if self.accepts(&reply) {
            Ok(StepOutput {
                value: reply.result(body),
                request: Some(reply.request),
                outcome: super::Outcome::Continue,
            })
        } else {
            Err(reply.status_error(&self.method, &url, body))
        }
    }

    /// True for 2xx, and for 3xx when redirects are off for this request (the flow asked to
    /// read the `location` itself).
    fn accepts(&self, reply: &Reply) -> bool {
        let redirects = self
            .redirects
            .or(self.connection.as_ref().map(|c| c.redirects));
        reply.is_success() || (redirects == Some(0) && (300..400).contains(&reply.status))
    }

    fn reply_body(&self, reply: &Reply) -> Json {
        if reply.is_binary() {
            reply.binary_value()
        } else {
            reply.body_value()
        }
    }

    /// Fetches pages until the listing ends or a bound is reached; any failing page fails
    /// the attempt (a retry starts again from the first page).
    async fn send_pages<'a>(
        &'a self,
        cx: &StepCx,
        p: &Paginate,
        url: reqwest::Url,
        out: impl Fn(reqwest::Url) -> Outbound<'a>,
    ) -> Result<StepOutput, StepError> {
        // A `Link` page must stay where the listing started: on the connection's host.
        let pin = match &self.connection {
            Some(conn) => call::connection_url(cx, conn, "")?,
            None => url.clone(),
        };
        let mut next = p.first(&url);
        let mut items: Vec<Json> = Vec::new();
        let mut urls: Vec<Json> = Vec::new();
        let mut first_request = None;
        let mut pages = 0u64;
        // Every URL fetched: an API whose next page is one already fetched (a `Link` to
        // itself, cursors going round) would otherwise be read until `max_pages`.
        let mut fetched = std::collections::HashSet::new();
        loop {
            fetched.insert(next.to_string());
            let reply = call::send_with(cx, out(next.clone()), self.redirects).await?;
            pages += 1;
            let body = self.reply_body(&reply);
            if !self.accepts(&reply) {
                return Err(reply.status_error(&self.method, &next, body));
            }
            urls.push(reply.request["url"].clone());
            let (page_items, cursor) =
                self.page_values(cx, p, &reply, body)
                    .await
                    .map_err(|mut e| {
                        e.message = format!("page {pages}: {}", e.message);
                        e.request = Some(reply.request.clone());
                        e
                    })?;
            let count = page_items.len();
            items.extend(page_items);
            let mut truncated = false;
            if let Some(max) = p.max_items
                && items.len() as u64 > max
            {
                items.truncate(max as usize);
                truncated = true;
            }
            let seen = PageSeen {
                url: &next,
                link: reply.headers.get("link").and_then(Json::as_str),
                items: count,
                cursor: cursor.as_ref(),
            };
            let after = p
                .next(&seen, pages, items.len() as u64, &pin)
                .map_err(|m| {
                    let mut e = StepError::new(ErrorKind::BadResponse, m);
                    e.request = Some(reply.request.clone());
                    e
                })?;
            let request = first_request.get_or_insert_with(|| reply.request.clone());
            if let Next::Fetch(u) = &after
                && !truncated
                && fetched.contains(u.as_str())
            {
                let mut e = StepError::new(
                    ErrorKind::BadResponse,
                    format!(
                        "page {pages}: the next page `{}` was fetched already; the API's pagination goes round in a loop",
                        call::redact_url(u)
                    ),
                );
                e.request = Some(reply.request.clone());
                return Err(e);
            }
            match after {
                Next::Fetch(u) if !truncated => next = u,
                Next::Fetch(_) | Next::Done | Next::Truncated => {
                    let truncated = truncated || after == Next::Truncated;
                    let mut value = reply.result(Json::Array(items));
                    value["pages"] = pages.into();
                    value["truncated"] = truncated.into();
                    let mut request = request.clone();
                    request["pages"] = Json::Array(urls);
                    return Ok(StepOutput {
                        value,
                        request: Some(request),
                        outcome: super::Outcome::Continue,
                    });
                }
            }
        }
    }

    /// A page's items and next cursor, from the expressions run on the step context plus
    /// `.page = {status, headers, body}`.
    async fn page_values(
        &self,
        cx: &StepCx,
        p: &Paginate,
        reply: &Reply,
        body: Json,
    ) -> Result<(Vec<Json>, Option<Json>), StepError> {
        let items_expr = p.items.clone();
        let cursor_expr = match &p.style {
            Style::Cursor { next, .. } => Some(next.clone()),
            _ => None,
        };
        if items_expr.is_none() && cursor_expr.is_none() {
            let items = paginate::items_of(body, false)
                .map_err(|m| StepError::new(ErrorKind::BadResponse, m))?;
            return Ok((items, None));
        }
        let page = reply.result(body);
        let (items, cursor) = cx
            .eval(p.is_bounded(), move |ctx| {
                let ctx = crate::expr::with_field(ctx, "page", crate::expr::json_to_val(&page));
                let items = match &items_expr {
                    Some(e) => Some(e.eval(&ctx).map_err(|err| EvalError {
                        message: format!("in `paginate.items`: {}", err.message),
                    })?),
                    None => None,
                };
                let cursor = match &cursor_expr {
                    Some(e) => Some(e.eval(&ctx).map_err(|err| EvalError {
                        message: format!("in `paginate.cursor.next`: {}", err.message),
                    })?),
                    None => None,
                };
                Ok((items.ok_or(page), cursor))
            })
            .await?;
        let items = match items {
            Ok(v) => {
                paginate::items_of(v, true).map_err(|m| StepError::new(ErrorKind::Expression, m))?
            }
            Err(page) => paginate::items_of(page["body"].clone(), false)
                .map_err(|m| StepError::new(ErrorKind::BadResponse, m))?,
        };
        Ok((items, cursor))
    }

    fn out_body(
        &self,
        rendered: Option<Json>,
        headers: &[(String, String)],
    ) -> Result<OutBody, StepError> {
        Ok(match (&self.body, rendered) {
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
            (Body::Multipart(_, order), Some(b)) => multipart_body(b, order)?,
            (Body::Binary(_), Some(b)) => binary_body(b, headers)?,
            _ => OutBody::None,
        })
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

/// The `multipart/form-data` body for a rendered `multipart:` (a map of name to part, or a
/// list of parts with `name`). Built here rather than as a reqwest stream so the request has
/// its final bytes (HMAC `auth:` signs them) and the run records what each part was.
fn multipart_body(v: Json, order: &[String]) -> Result<OutBody, StepError> {
    let bad = |m: String| StepError::new(ErrorKind::Expression, format!("`multipart`: {m}"));
    let parts: Vec<(String, Json)> = match v {
        Json::Object(m) => {
            let mut parts: Vec<(String, Json)> = m.into_iter().collect();
            // As written; names the template did not write (none today) go last.
            parts.sort_by_key(|(k, _)| order.iter().position(|o| o == k).unwrap_or(usize::MAX));
            parts
        }
        Json::Array(items) => items
            .into_iter()
            .map(|p| match p.get("name").map(scalar_text) {
                Some(name) if !name.is_empty() => Ok((name, p)),
                _ => Err(bad("a part in a list needs `name`".into())),
            })
            .collect::<Result<_, _>>()?,
        other => {
            return Err(bad(format!(
                "must render to a mapping or a list, got {}",
                type_name(&other)
            )));
        }
    };
    let boundary = format!("ferry-{:032x}", rand::random::<u128>());
    let mut bytes = Vec::new();
    let mut record = Vec::new();
    for (name, part) in parts {
        let (content, filename, content_type, recorded) = match part {
            Json::Object(mut p) => {
                for k in p.keys() {
                    if !PART_KEYS.contains(&k.as_str()) {
                        return Err(bad(format!("unknown part key `{k}` in part `{name}`")));
                    }
                }
                let filename = p.remove("filename").map(|f| scalar_text(&f));
                let content_type = p.remove("content_type").map(|c| scalar_text(&c));
                let (content, recorded) = match (p.remove("text"), p.remove("base64")) {
                    (Some(t), None) => {
                        let t = scalar_text(&t);
                        (t.clone().into_bytes(), Json::String(t))
                    }
                    (None, Some(b)) => {
                        let b = decode_base64(&scalar_text(&b))
                            .map_err(|e| bad(format!("part `{name}`: {e}")))?;
                        let n = b.len();
                        (b, json!({ "size": n }))
                    }
                    _ => {
                        return Err(bad(format!(
                            "part `{name}` needs exactly one of `text`, `base64`"
                        )));
                    }
                };
                (content, filename, content_type, recorded)
            }
            other => {
                let t = scalar_text(&other);
                (t.clone().into_bytes(), None, None, Json::String(t))
            }
        };
        bytes.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        let mut disposition = format!("form-data; name=\"{}\"", quote_param(&name));
        if let Some(f) = &filename {
            disposition.push_str(&format!("; filename=\"{}\"", quote_param(f)));
        }
        bytes.extend_from_slice(format!("Content-Disposition: {disposition}\r\n").as_bytes());
        if let Some(ct) = &content_type {
            if ct.contains(['\r', '\n']) {
                return Err(bad(format!(
                    "part `{name}`: `content_type` has a line break"
                )));
            }
            bytes.extend_from_slice(format!("Content-Type: {ct}\r\n").as_bytes());
        }
        bytes.extend_from_slice(b"\r\n");
        bytes.extend_from_slice(&content);
        bytes.extend_from_slice(b"\r\n");
        let mut r = json!({ "name": name, "value": recorded });
        if let Some(f) = filename {
            r["filename"] = f.into();
        }
        if let Some(ct) = content_type {
            r["content_type"] = ct.into();
        }
        record.push(r);
    }
    bytes.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    Ok(OutBody::Bytes {
        content_type: format!("multipart/form-data; boundary={boundary}"),
        bytes,
        record: json!({ "multipart": record }),
    })
}

/// A name or file name inside `"…"` in a `Content-Disposition` (the HTML form encoding:
/// quotes and line breaks percent-encoded).
fn quote_param(s: &str) -> String {
    s.replace('"', "%22")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

/// The raw bytes for a rendered `binary:`: base64 text, or `{ base64, content_type }`.
fn binary_body(v: Json, headers: &[(String, String)]) -> Result<OutBody, StepError> {
    let bad = |m: String| StepError::new(ErrorKind::Expression, format!("`binary`: {m}"));
    let (b64, ct) = match &v {
        Json::String(s) => (s.as_str(), None),
        Json::Object(o) => match o.get("base64") {
            Some(Json::String(s)) => (s.as_str(), o.get("content_type").and_then(Json::as_str)),
            _ => return Err(bad("an object needs a `base64` string".into())),
        },
        other => {
            return Err(bad(format!(
                "must render to base64 text or `{{base64, content_type}}`, got {}",
                type_name(other)
            )));
        }
    };
    let bytes = decode_base64(b64).map_err(bad)?;
    let header_ct = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        .map(|(_, v)| v.as_str());
    let content_type = header_ct
        .or(ct)
        .unwrap_or("application/octet-stream")
        .to_owned();
    let size = bytes.len();
    Ok(OutBody::Bytes {
        record: json!({ "binary": { "content_type": content_type, "size": size } }),
        content_type,
        bytes,
    })
}

fn decode_base64(s: &str) -> Result<Vec<u8>, String> {
    use base64::Engine as _;
    let cleaned: String = s.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(&cleaned)
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(&cleaned))
        .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(&cleaned))
        .map_err(|e| format!("invalid base64 ({e})"))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::diag::Diagnostics;

    /// The compile errors of an `http:` setting, as `ferry validate` prints them.
    fn errors(yaml: &str) -> String {
        let node = crate::flow::node::parse_yaml(yaml).unwrap();
        let conns = HashMap::new();
        let mut diags = Diagnostics::default();
        let mut cx = CompileCx {
            file: "f.yaml",
            source: yaml,
            connections: &conns,
            broken_connections: &[],
            diags: &mut diags,
            steps_before: vec![],
            all_steps: vec![],
            reads: Default::default(),
            seen: HashMap::new(),
            next_seq: 0,
            depth: 0,
        };
        let compiled = compile(&node, &mut cx).is_some();
        assert_eq!(
            compiled,
            diags.is_empty(),
            "None exactly when an error was reported"
        );
        diags.sort();
        diags.to_string()
    }

    #[test]
    fn bad_pagination_multipart_and_redirect_settings_are_located() {
        insta::assert_snapshot!(errors("url: https://x.example/a\npaginate: { link: next, cursor: { param: c, next: .page.body.n } }\n"), @r"
        f.yaml:2:11: error: `paginate` takes one way of finding the next page, got `link` and `cursor`
          hint: e.g. `paginate: { link: next }` or `paginate: { cursor: { param: after, next: .page.body.next } }`
        ");
        insta::assert_snapshot!(errors("url: https://x.example/a\npaginate: { items: .data }\n"), @r"
        f.yaml:2:11: error: `paginate` needs one of `link`, `cursor`, `page`, `offset`
          hint: e.g. `paginate: { link: next }` or `paginate: { cursor: { param: after, next: .page.body.next } }`
        ");
        insta::assert_snapshot!(errors("url: https://x.example/a\npaginate:\n  link: prev\n  max_items: -1\n  items: '.page.body | nope'\n"), @r#"
        f.yaml:3:9: error: unknown link relation `prev`
          hint: `link: next` follows the `Link` header's rel="next"
        f.yaml:4:14: error: `max_items` must be at least 1, got -1
          hint: give a number of 1 or more
        f.yaml:5:24: error: invalid expression: undefined filter `nope`
          hint: expressions are jq, e.g. `{{ .event.body.email | ascii_downcase }}`; see docs/expressions.md
        "#);
        insta::assert_snapshot!(errors("url: https://x.example/a\npaginate: { offset: { param: o, limit_param: l, limit: 0 } }\n"), @r"
        f.yaml:2:56: error: `offset.limit` must be at least 1, got 0
          hint: give a number of 1 or more
        ");
        insta::assert_snapshot!(errors("url: https://x.example/a\nmultipart:\n  - { text: a }\n  - { name: f, base64: eA==, text: x }\n"), @r"
        f.yaml:3:5: error: a multipart part in a list needs `name`
          hint: add `name: <field name>`
        f.yaml:4:5: error: a multipart part needs exactly one of `text`, `base64`
          hint: `text:` for text content, `base64:` for bytes
        ");
        insta::assert_snapshot!(errors("url: https://x.example/a\nredirects: sometimes\nbody: {}\nbinary: eA==\n"), @r"
        f.yaml:2:12: error: expected `follow`, `none` or a number of redirects from 0 to 20
          hint: see docs/flows.md for the keys each part takes
        ");
        insta::assert_snapshot!(errors("url: https://x.example/a\nbody: {}\nbinary: eA==\n"), @"f.yaml:1:1: error: give at most one of `body`, `form`, `text`, `multipart`, `binary`");
    }

    #[test]
    fn multipart_bodies_keep_the_written_order_and_record_sizes_not_bytes() {
        let body = multipart_body(
            json!({
                "b": 2,
                "a\"\r\n": { "filename": "x\"y.txt", "content_type": "text/plain", "base64": "aGk=" },
            }),
            &["b".into(), "a\"\r\n".into()],
        )
        .unwrap();
        let OutBody::Bytes {
            content_type,
            bytes,
            record,
        } = body
        else {
            panic!("bytes");
        };
        let boundary = content_type
            .strip_prefix("multipart/form-data; boundary=")
            .unwrap();
        let text = String::from_utf8(bytes).unwrap();
        assert_eq!(
            text,
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"b\"\r\n\r\n2\r\n\
                 --{boundary}\r\nContent-Disposition: form-data; name=\"a%22%0D%0A\"; filename=\"x%22y.txt\"\r\nContent-Type: text/plain\r\n\r\nhi\r\n\
                 --{boundary}--\r\n"
            )
        );
        assert_eq!(record["multipart"][0], json!({"name": "b", "value": "2"}));
        assert_eq!(record["multipart"][1]["value"], json!({"size": 2}));

        let err = |v: Json| match multipart_body(v, &[]) {
            Err(e) => (e.kind, e.message),
            Ok(_) => panic!("accepted"),
        };
        assert_eq!(
            err(json!({"f": {"txt": "x"}})),
            (
                ErrorKind::Expression,
                "`multipart`: unknown part key `txt` in part `f`".into()
            )
        );
        assert!(err(json!([{"text": "x"}])).1.contains("needs `name`"));
        assert!(
            err(json!({"f": {"base64": "%%%"}}))
                .1
                .contains("invalid base64")
        );
        assert!(
            err(json!({"f": {"text": "x", "content_type": "a\r\nX-Evil: 1"}}))
                .1
                .contains("line break")
        );
        assert!(err(json!("x")).1.contains("got a string"));
    }

    #[test]
    fn binary_bodies_take_the_header_then_the_value_content_type() {
        let ct = |v: Json, headers: &[(String, String)]| match binary_body(v, headers).unwrap() {
            OutBody::Bytes {
                content_type,
                bytes,
                record,
            } => {
                assert_eq!(bytes, b"hi");
                assert_eq!(record["binary"]["size"], 2);
                content_type
            }
            _ => panic!("bytes"),
        };
        let pdf = json!({"base64": "aGk=", "content_type": "application/pdf", "size": 2});
        assert_eq!(ct(pdf.clone(), &[]), "application/pdf");
        assert_eq!(
            ct(pdf, &[("Content-Type".into(), "image/png".into())]),
            "image/png"
        );
        assert_eq!(ct(json!("aGk"), &[]), "application/octet-stream");
        assert_eq!(ct(json!("aG\nk="), &[]), "application/octet-stream");
        for bad in [json!(3), json!({"content_type": "x"}), json!("not base64!")] {
            let e = binary_body(bad.clone(), &[]).map(|_| ()).unwrap_err();
            assert_eq!(e.kind, ErrorKind::Expression, "{bad}");
            assert!(e.message.starts_with("`binary`: "), "{}", e.message);
        }
    }
}
