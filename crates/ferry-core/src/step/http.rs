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
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value as Json, json};

use super::{CompileCx, ErrorKind, Step, StepCx, StepDef, StepError, StepOutput};
use crate::connection::auth;
use crate::connection::{Connection, DEFAULT_MAX_RESPONSE_BYTES, DEFAULT_TIMEOUT};
use crate::expr::{EvalError, Template};
use crate::flow::node::{Node, Spanned};

pub(super) const DEF: StepDef = StepDef {
    kind: "http",
    summary: "call a REST API (method, path or url, query, headers, JSON / form / text body)",
    compile,
    schema: |g| g.subschema_for::<HttpConfig>(),
};

pub const USER_AGENT: &str = concat!("ferry/", env!("CARGO_PKG_VERSION"));

/// Header names whose values never reach a stored run.
const MASKED_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
    "api-key",
    "x-auth-token",
];
pub(super) const MASK: &str = "***";
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
}

fn compile(node: &Node, cx: &mut CompileCx) -> Option<Box<dyn Step>> {
    let c: HttpConfig = cx.parse(node)?;
    let connection = match &c.connection {
        Some(name) => Some(cx.connection(name)?),
        None => None,
    };
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
    let method = match &c.method {
        Some(m) => {
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
        None if bodies > 0 => reqwest::Method::POST,
        None => reqwest::Method::GET,
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
    }))
}

/// Everything the templates produced for one attempt.
struct Rendered {
    url: Option<Json>,
    path: Option<Json>,
    query: Option<Json>,
    headers: Option<Json>,
    body: Option<Json>,
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
        ];
        let bounded = parts.iter().flatten().all(Template::is_bounded);
        let mut out = cx
            .eval(bounded, move |ctx| {
                let names = ["url", "path", "query", "headers", "body"];
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
        })
    }

    async fn send(&self, cx: &StepCx, r: Rendered) -> Result<StepOutput, StepError> {
        let url = self.url_for(cx, &r)?;
        let mut record_headers = Map::new();
        let mut headers = HeaderMap::new();
        let mut add = |name: &str,
                       value: &str,
                       sensitive: bool,
                       headers: &mut HeaderMap|
         -> Result<(), StepError> {
            let hn = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                StepError::new(ErrorKind::Config, format!("invalid header name `{name}`"))
            })?;
            let hv = HeaderValue::from_str(value).map_err(|_| {
                StepError::new(
                    ErrorKind::Config,
                    format!("invalid value for header `{name}`"),
                )
            })?;
            let masked = sensitive || MASKED_HEADERS.contains(&hn.as_str());
            record_headers.insert(
                hn.as_str().to_owned(),
                Json::String(if masked {
                    MASK.into()
                } else {
                    value.to_owned()
                }),
            );
            headers.insert(hn, hv);
            Ok(())
        };
        if let Some(conn) = &self.connection {
            for (name, source) in &conn.headers {
                let value = cx
                    .secrets
                    .resolve(source)
                    .map_err(|e| StepError::new(ErrorKind::Config, e))?;
                add(name, &value, source.is_sensitive(), &mut headers)?;
            }
        }
        if let Some(Json::Object(h)) = &r.headers {
            for (name, value) in h {
                add(name, &scalar_text(value), false, &mut headers)?;
            }
        }
        add("idempotency-key", &cx.idempotency_key, false, &mut headers)?;
        add("user-agent", USER_AGENT, false, &mut headers)?;

        let mut url = url;
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

        let timeout = self
            .connection
            .as_ref()
            .map(|c| c.timeout)
            .unwrap_or(DEFAULT_TIMEOUT);
        // A URL built from data goes through the SSRF guard; one the operator wrote does not.
        let guarded = self.url.as_ref().is_some_and(|u| !u.is_literal());
        let http = match &self.connection {
            Some(c) => c.client_for(&cx.http),
            None if guarded => {
                if let Err(e) = cx.net_policy.check_url(&url) {
                    return Err(StepError::new(ErrorKind::Config, e.to_string()));
                }
                cx.guarded_http.clone()
            }
            None => cx.http.clone(),
        };
        let mut req = http
            .request(self.method.clone(), url.clone())
            .headers(headers)
            .timeout(timeout);
        let mut record_body = Json::Null;
        match (&self.body, r.body) {
            (Body::Json(_), Some(b)) => {
                let bytes = serde_json::to_vec(&b).expect("json values serialize");
                if !record_headers.contains_key("content-type") {
                    req = req.header(reqwest::header::CONTENT_TYPE, "application/json");
                    record_headers.insert(
                        "content-type".into(),
                        Json::String("application/json".into()),
                    );
                }
                req = req.body(bytes);
                record_body = b;
            }
            (Body::Form(_), Some(Json::Object(fields))) => {
                let pairs: Vec<(String, String)> = fields
                    .iter()
                    .map(|(k, v)| (k.clone(), scalar_text(v)))
                    .collect();
                req = req.form(&pairs);
                record_headers.insert(
                    "content-type".into(),
                    Json::String("application/x-www-form-urlencoded".into()),
                );
                record_body = Json::Object(fields);
            }
            (Body::Form(_), Some(other)) => {
                return Err(StepError::new(
                    ErrorKind::Expression,
                    format!("`form` must render to an object, got {}", type_name(&other)),
                ));
            }
            (Body::Text(_), Some(b)) => {
                if !record_headers.contains_key("content-type") {
                    req = req.header(reqwest::header::CONTENT_TYPE, "text/plain; charset=utf-8");
                    record_headers.insert(
                        "content-type".into(),
                        Json::String("text/plain; charset=utf-8".into()),
                    );
                }
                let text = scalar_text(&b);
                req = req.body(text.clone());
                record_body = Json::String(text);
            }
            _ => {}
        }
        let mut request_record = json!({
            "method": self.method.as_str(),
            "url": redact_url(&url),
            "headers": record_headers,
            "body": record_body,
        });
        let req = req.build().map_err(|e| {
            let mut e = StepError::new(ErrorKind::Config, format!("invalid request: {e}"));
            e.request = Some(request_record.clone());
            e
        })?;
        // Auth goes on last, on the built request (HMAC signs the final bytes); on a 401 an
        // OAuth 2.0 connection refreshes its token and sends once more.
        let conn_auth = self.connection.as_ref().and_then(|c| c.auth.as_deref());
        let resolve = |v: &crate::flow::model::ValueSource| cx.secrets.resolve(v);
        let sent = auth::send(conn_auth, &http, req, &resolve).await;
        let sent = sent.map_err(|e| {
            let kind = match e.is_retryable() {
                true => ErrorKind::Network,
                false => ErrorKind::Config,
            };
            let mut e = StepError::new(kind, format!("auth: {e}"));
            e.request = Some(request_record.clone());
            e
        })?;
        sent.applied.mask_record(&mut request_record);
        // Tokens and encoded credentials are scrubbed wherever an upstream echoes them.
        for v in &sent.applied.sensitive {
            cx.secrets.taint(v);
        }
        let with_request = |mut e: StepError| {
            e.request = Some(request_record.clone());
            e
        };

        let resp = sent
            .response
            .map_err(|e| with_request(transport_error(&e, timeout)))?;
        let status = resp.status().as_u16();
        let mut resp_headers = Map::new();
        for (name, value) in resp.headers() {
            let v = if MASKED_HEADERS.contains(&name.as_str()) {
                MASK.to_owned()
            } else {
                String::from_utf8_lossy(value.as_bytes()).into_owned()
            };
            match resp_headers.get_mut(name.as_str()) {
                Some(Json::String(prev)) => {
                    prev.push_str(", ");
                    prev.push_str(&v);
                }
                _ => {
                    resp_headers.insert(name.as_str().to_owned(), Json::String(v));
                }
            }
        }
        let is_json = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|ct| {
                let ct = ct
                    .split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase();
                ct == "application/json" || ct.ends_with("+json")
            })
            .unwrap_or(false);
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let bytes = read_limited(resp, self.max_response_bytes)
            .await
            .map_err(with_request)?;
        let body = if bytes.is_empty() {
            Json::Null
        } else if is_json {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Json::String(String::from_utf8_lossy(&bytes).into_owned()))
        } else {
            Json::String(String::from_utf8_lossy(&bytes).into_owned())
        };
        let result = json!({ "status": status, "headers": resp_headers, "body": body });
        if (200..300).contains(&status) {
            Ok(StepOutput {
                value: result,
                request: Some(request_record),
                stop: false,
            })
        } else {
            let mut e = StepError::new(
                ErrorKind::Status(status),
                format!("{} {} answered {status}", self.method, redact_url(&url)),
            );
            e.request = Some(request_record);
            e.response = Some(result);
            e.retry_after = retry_after;
            Err(e)
        }
    }

    fn url_for(&self, cx: &StepCx, r: &Rendered) -> Result<reqwest::Url, StepError> {
        let text = match (&self.connection, &r.url) {
            (Some(conn), _) => {
                let base = cx
                    .secrets
                    .resolve(&conn.base_url)
                    .map_err(|e| StepError::new(ErrorKind::Config, e))?;
                let path = r.path.as_ref().map(scalar_text).unwrap_or_default();
                join_url(&base, &path)
            }
            (None, Some(u)) => scalar_text(u),
            (None, None) => return Err(StepError::new(ErrorKind::Config, "no url")),
        };
        let url = reqwest::Url::parse(&text).map_err(|e| {
            StepError::new(ErrorKind::Config, format!("invalid url `{}`: {e}", text))
        })?;
        // Belt and braces for the rule in `join_url`: through a connection, the request goes
        // to the connection's host and nowhere else.
        if let Some(conn) = &self.connection {
            let base = cx
                .secrets
                .resolve(&conn.base_url)
                .map_err(|e| StepError::new(ErrorKind::Config, e))?;
            let same = reqwest::Url::parse(&base)
                .map(|b| {
                    b.scheme() == url.scheme()
                        && b.host_str() == url.host_str()
                        && b.port_or_known_default() == url.port_or_known_default()
                })
                .unwrap_or(false);
            if !same {
                return Err(StepError::new(
                    ErrorKind::Config,
                    format!(
                        "the request left connection `{}`'s host; `path` must stay under its base_url",
                        conn.id
                    ),
                ));
            }
        }
        if !matches!(url.scheme(), "http" | "https") {
            return Err(StepError::new(
                ErrorKind::Config,
                format!(
                    "unsupported url scheme `{}`; expected http or https",
                    url.scheme()
                ),
            ));
        }
        Ok(url)
    }
}

/// `base` + `path` with exactly one `/` between them. The path never replaces the base: a
/// rendered path such as `https://elsewhere/x` stays under the base URL, so event data cannot
/// send a connection's headers (its credentials) to another host.
pub(super) fn join_url(base: &str, path: &str) -> String {
    if path.is_empty() {
        return base.to_owned();
    }
    format!(
        "{}/{}",
        base.trim_end_matches('/'),
        path.trim_start_matches('/')
    )
}

/// A URL as recorded: user info masked.
fn redact_url(url: &reqwest::Url) -> String {
    if url.password().is_some() || !url.username().is_empty() {
        let mut u = url.clone();
        let _ = u.set_username("");
        let _ = u.set_password(None);
        return u.to_string();
    }
    url.to_string()
}

fn scalar_text(v: &Json) -> String {
    match v {
        Json::String(s) => s.clone(),
        Json::Null => String::new(),
        other => other.to_string(),
    }
}

fn type_name(v: &Json) -> &'static str {
    match v {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "a list",
        Json::Object(_) => "an object",
    }
}

fn transport_error(e: &reqwest::Error, timeout: Duration) -> StepError {
    if let Some(refused) = crate::net::refusal(e) {
        // Not retryable: the address will not become public by waiting.
        return StepError::new(ErrorKind::Config, refused);
    }
    if e.is_timeout() {
        return StepError::new(
            ErrorKind::Timeout,
            format!("no answer within {}", humantime::format_duration(timeout)),
        );
    }
    // The chain says what actually failed (refused, reset, DNS); reqwest's top line does not.
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg = format!("{msg}: {s}");
        src = s.source();
    }
    StepError::new(ErrorKind::Network, msg)
}

/// `Retry-After` as seconds or an HTTP date.
fn parse_retry_after(v: &str) -> Option<Duration> {
    if let Ok(secs) = v.trim().parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = chrono::DateTime::parse_from_rfc2822(v.trim()).ok()?;
    let delta = when.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(delta.to_std().unwrap_or(Duration::ZERO))
}

async fn read_limited(mut resp: reqwest::Response, limit: u64) -> Result<Vec<u8>, StepError> {
    if let Some(len) = resp.content_length()
        && len > limit
    {
        return Err(StepError::new(
            ErrorKind::BadResponse,
            format!("response body of {len} bytes exceeds the limit of {limit}"),
        ));
    }
    let mut buf = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                if buf.len() as u64 + chunk.len() as u64 > limit {
                    return Err(StepError::new(
                        ErrorKind::BadResponse,
                        format!("response body exceeds the limit of {limit} bytes"),
                    ));
                }
                buf.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(buf),
            Err(e) if e.is_timeout() => {
                return Err(StepError::new(
                    ErrorKind::Timeout,
                    "response body did not arrive in time",
                ));
            }
            Err(e) => {
                return Err(StepError::new(
                    ErrorKind::Network,
                    format!("reading the response failed: {e}"),
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_join_with_one_slash() {
        assert_eq!(
            join_url("https://x/api/", "/contacts"),
            "https://x/api/contacts"
        );
        assert_eq!(
            join_url("https://x/api", "contacts"),
            "https://x/api/contacts"
        );
        assert_eq!(join_url("https://x/api", ""), "https://x/api");
        // A path never swaps the host (regression: event data could redirect credentials).
        assert_eq!(
            join_url("https://x/api", "https://evil.example/steal"),
            "https://x/api/https://evil.example/steal"
        );
        for path in [
            "https://evil.example/",
            "//evil.example/a",
            "@evil.example",
            "..%2f..%2f",
        ] {
            let url = reqwest::Url::parse(&join_url("https://x/api", path)).unwrap();
            assert_eq!(url.host_str(), Some("x"), "{path}");
        }
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }
}
