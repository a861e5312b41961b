//! One outbound HTTP exchange, shared by every step that calls out (`http`, `graphql`, `soap`).
//!
//! The step decides what to send; this module sends it the same way for all of them: the
//! connection's headers and `auth:`, `Idempotency-Key` and `User-Agent`, the SSRF guard for
//! URLs built from data, the connection's timeout, the response size limit, and a request
//! record with credentials masked. Whatever fails carries that record, so a stored run shows
//! what was sent.

use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Map, Value as Json, json};

use super::{ErrorKind, StepCx, StepError};
use crate::connection::auth;
use crate::connection::{Connection, DEFAULT_TIMEOUT};
use crate::flow::model::DEFAULT_REDIRECTS;

pub const USER_AGENT: &str = concat!("ferry/", env!("CARGO_PKG_VERSION"));

/// Header names whose values never reach a stored run.
pub(super) const MASKED_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
    "api-key",
    "x-auth-token",
];
pub(super) const MASK: &str = "***";

/// What a step sends.
pub(super) struct Outbound<'a> {
    pub(super) connection: Option<&'a Connection>,
    pub(super) method: reqwest::Method,
    pub(super) url: reqwest::Url,
    /// The URL was built from event data and no connection pins its host: it goes through
    /// the SSRF guard.
    pub(super) guarded: bool,
    /// The step's own headers, sent after the connection's (so they win).
    pub(super) headers: Vec<(String, String)>,
    pub(super) body: OutBody,
    pub(super) max_response_bytes: u64,
}

/// A request body and how it is recorded.
#[derive(Clone)]
pub(super) enum OutBody {
    None,
    /// Sent as `application/json` unless a header says otherwise.
    Json(Json),
    /// `application/x-www-form-urlencoded`.
    Form(Vec<(String, String)>),
    /// `text/plain; charset=utf-8` unless a header says otherwise.
    Text(String),
    /// Any other bytes (XML, multipart, binary), with the content type they need and what the
    /// run record shows in their place.
    Bytes {
        content_type: String,
        bytes: Vec<u8>,
        record: Json,
    },
}

/// What came back, read within the size limit.
pub(super) struct Reply {
    pub(super) status: u16,
    /// Response headers as recorded (credentials masked; repeated headers joined by `, `).
    pub(super) headers: Map<String, Json>,
    /// The media type, lower-cased, without parameters (`application/json`).
    pub(super) media_type: Option<String>,
    pub(super) bytes: Vec<u8>,
    pub(super) retry_after: Option<Duration>,
    /// The request as stored in the run (masked).
    pub(super) request: Json,
}

impl Reply {
    pub(super) fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// True for `application/json` and `…+json`.
    pub(super) fn is_json(&self) -> bool {
        self.media_type
            .as_deref()
            .is_some_and(|ct| ct == "application/json" || ct.ends_with("+json"))
    }

    /// The body as a step result: parsed JSON when the response says JSON (text when it does
    /// not parse), else text; `null` when empty.
    pub(super) fn body_value(&self) -> Json {
        if self.bytes.is_empty() {
            Json::Null
        } else if self.is_json() {
            serde_json::from_slice(&self.bytes).unwrap_or_else(|_| self.text())
        } else {
            self.text()
        }
    }

    /// True when the body is not text: a media type other than JSON, XML, text or a form,
    /// or none and bytes that are not UTF-8. Such a body is passed on as base64
    /// ([`Reply::binary_value`]) instead of lossy text.
    pub(super) fn is_binary(&self) -> bool {
        match self.media_type.as_deref() {
            None | Some("") => !self.bytes.is_empty() && std::str::from_utf8(&self.bytes).is_err(),
            Some(ct) => !is_textual(ct),
        }
    }

    /// `{"base64", "content_type", "size"}`: a binary body as run data, to be sent on with a
    /// `binary:` body.
    pub(super) fn binary_value(&self) -> Json {
        use base64::Engine as _;
        json!({
            "base64": base64::engine::general_purpose::STANDARD.encode(&self.bytes),
            "content_type": self.media_type.as_deref().unwrap_or("application/octet-stream"),
            "size": self.bytes.len(),
        })
    }

    pub(super) fn text(&self) -> Json {
        Json::String(String::from_utf8_lossy(&self.bytes).into_owned())
    }

    /// `{"status", "headers", "body"}` with the given body.
    pub(super) fn result(&self, body: Json) -> Json {
        json!({ "status": self.status, "headers": self.headers, "body": body })
    }

    /// The error for a non-2xx answer, carrying request and response for the run record.
    pub(super) fn status_error(
        self,
        method: &reqwest::Method,
        url: &reqwest::Url,
        body: Json,
    ) -> StepError {
        let mut e = StepError::new(
            ErrorKind::Status(self.status),
            format!("{method} {} answered {}", redact_url(url), self.status),
        );
        e.response = Some(self.result(body));
        e.request = Some(self.request);
        e.retry_after = self.retry_after;
        e
    }
}

/// Sends one request and reads the answer. A non-2xx status is not an error here: the step
/// decides (a GraphQL server may answer errors with 200, a SOAP fault comes with 500).
pub(super) async fn send(cx: &StepCx, out: Outbound<'_>) -> Result<Reply, StepError> {
    send_with(cx, out, None).await
}

/// [`send`], following at most `redirects` redirects when given (a step's `redirects:`),
/// else the connection's (default 5). With 0, a 3xx is the reply.
pub(super) async fn send_with(
    cx: &StepCx,
    out: Outbound<'_>,
    redirects: Option<usize>,
) -> Result<Reply, StepError> {
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
    if let Some(conn) = out.connection {
        for (name, source) in &conn.headers {
            let value = cx
                .secrets
                .resolve(source)
                .map_err(|e| StepError::new(ErrorKind::Config, e))?;
            add(name, &value, source.is_sensitive(), &mut headers)?;
        }
    }
    for (name, value) in &out.headers {
        add(name, value, false, &mut headers)?;
    }
    add("idempotency-key", &cx.idempotency_key, false, &mut headers)?;
    add("user-agent", USER_AGENT, false, &mut headers)?;

    let timeout = out.connection.map(|c| c.timeout).unwrap_or(DEFAULT_TIMEOUT);
    let redirects = redirects
        .or(out.connection.map(|c| c.redirects))
        .unwrap_or(DEFAULT_REDIRECTS);
    let custom = redirects != DEFAULT_REDIRECTS;
    // Credentials in headers other than `Authorization` (an API key header, a secret
    // header) would follow a redirect to another host: such requests do not follow one.
    let pinned = out.connection.is_some_and(|c| {
        c.auth.as_deref().is_some_and(|a| a.in_custom_header())
            || c.headers.iter().any(|(name, source)| {
                let name = name.to_ascii_lowercase();
                (source.is_sensitive() || MASKED_HEADERS.contains(&name.as_str()))
                    && !matches!(
                        name.as_str(),
                        "authorization" | "cookie" | "proxy-authorization"
                    )
            })
    });
    let http = match out.connection {
        // A `tls:` connection's own client already follows the connection's `redirects:`
        // (the http step refuses a step-level override there).
        Some(c) if c.tls.is_some() => c.client_for(&cx.http),
        Some(_) if pinned => cx.net_policy.pinned_client(redirects),
        Some(_) if custom => cx.net_policy.client_with_redirects(false, redirects),
        Some(c) => c.client_for(&cx.http),
        None if out.guarded => {
            if let Err(e) = cx.net_policy.check_url(&out.url) {
                return Err(StepError::new(ErrorKind::Config, e.to_string()));
            }
            match custom {
                true => cx.net_policy.client_with_redirects(true, redirects),
                false => cx.guarded_http.clone(),
            }
        }
        None if custom => cx.net_policy.client_with_redirects(false, redirects),
        None => cx.http.clone(),
    };
    let url = out.url;
    let method = out.method;
    let mut req = http
        .request(method.clone(), url.clone())
        .headers(headers)
        .timeout(timeout);
    let mut default_type = |req: reqwest::RequestBuilder, ct: &str| {
        if record_headers.contains_key("content-type") {
            return req;
        }
        record_headers.insert("content-type".into(), Json::String(ct.into()));
        req.header(reqwest::header::CONTENT_TYPE, ct)
    };
    let record_body = match out.body {
        OutBody::None => Json::Null,
        OutBody::Json(b) => {
            let bytes = serde_json::to_vec(&b).expect("json values serialize");
            req = default_type(req, "application/json").body(bytes);
            b
        }
        OutBody::Form(pairs) => {
            req = req.form(&pairs);
            record_headers.insert(
                "content-type".into(),
                Json::String("application/x-www-form-urlencoded".into()),
            );
            Json::Object(
                pairs
                    .into_iter()
                    .map(|(k, v)| (k, Json::String(v)))
                    .collect(),
            )
        }
        OutBody::Text(text) => {
            req = default_type(req, "text/plain; charset=utf-8").body(text.clone());
            Json::String(text)
        }
        OutBody::Bytes {
            content_type,
            bytes,
            record,
        } => {
            req = default_type(req, &content_type).body(bytes);
            record
        }
    };
    let mut request_record = json!({
        "method": method.as_str(),
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
    let conn_auth = out.connection.and_then(|c| c.auth.as_deref());
    let resolve = |v: &crate::flow::model::ValueSource| cx.secrets.resolve(v);
    let sent = auth::send(conn_auth, &http, req, &resolve)
        .await
        .map_err(|e| {
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
    let media_type = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|ct| {
            ct.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        });
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after);
    let bytes = read_limited(resp, out.max_response_bytes)
        .await
        .map_err(with_request)?;
    Ok(Reply {
        status,
        headers: resp_headers,
        media_type,
        bytes,
        retry_after,
        request: request_record,
    })
}

/// Media types whose bodies are text: JSON, XML, `text/*`, forms, JavaScript, YAML, CSV.
fn is_textual(ct: &str) -> bool {
    ct.starts_with("text/")
        || ct.ends_with("+json")
        || ct.ends_with("+xml")
        || matches!(
            ct,
            "application/json"
                | "application/xml"
                | "application/x-www-form-urlencoded"
                | "application/javascript"
                | "application/ecmascript"
                | "application/yaml"
                | "application/x-yaml"
                | "application/x-ndjson"
                | "application/csv"
                | "application/graphql"
                | "application/problem+json"
        )
}

/// The URL for `path` under a connection's `base_url`, refusing anything that would leave the
/// connection's host (its credentials must not travel elsewhere).
pub(super) fn connection_url(
    cx: &StepCx,
    conn: &Connection,
    path: &str,
) -> Result<reqwest::Url, StepError> {
    let base = cx
        .secrets
        .resolve(&conn.base_url)
        .map_err(|e| StepError::new(ErrorKind::Config, e))?;
    let url = parse_url(&join_url(&base, path))?;
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
    Ok(url)
}

/// An absolute http(s) URL, or a configuration error saying what is wrong with it.
pub(super) fn parse_url(text: &str) -> Result<reqwest::Url, StepError> {
    let url = reqwest::Url::parse(text)
        .map_err(|e| StepError::new(ErrorKind::Config, format!("invalid url `{text}`: {e}")))?;
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
pub(super) fn redact_url(url: &reqwest::Url) -> String {
    if url.password().is_some() || !url.username().is_empty() {
        let mut u = url.clone();
        let _ = u.set_username("");
        let _ = u.set_password(None);
        return u.to_string();
    }
    url.to_string()
}

/// A JSON value as it goes into a header, query parameter or form field.
pub(super) fn scalar_text(v: &Json) -> String {
    match v {
        Json::String(s) => s.clone(),
        Json::Null => String::new(),
        other => other.to_string(),
    }
}

pub(super) fn type_name(v: &Json) -> &'static str {
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
