//! Outbound authentication: what a connection adds to each request so the API knows who is
//! calling (`auth:`), and the client certificate and CA it connects with (`tls:`).
//!
//! Owns compiling `auth:` once at load ([`Auth::compile`]), applying it to a fully built
//! request ([`Auth::apply`], so HMAC signs the final bytes), the OAuth 2.0 token cache and
//! its single-flight refresh, the one retry after a 401 ([`send`]), and the per-connection
//! TLS client ([`Tls`]). Does not build requests or record them: the `http` step does, and
//! masks what [`Applied`] names.
//!
//! Secrets are resolved through a [`Resolver`] on every use, so a rotated environment
//! variable or secret takes effect without a restart; only derived values (access tokens,
//! signed JWTs) are cached, and [`Auth::sensitive_values`] reports them for scrubbing.

mod hmac;
mod jwt;
mod oauth2;
mod tls;

pub use tls::Tls;

use std::sync::Mutex;

use base64::Engine as _;
use reqwest::header::{AUTHORIZATION, HeaderName, HeaderValue};
use serde_json::Value as Json;
use zeroize::Zeroizing;

use crate::flow::model::{AuthConfig, ValueSource};

/// Turns a value source into its value, or says why it cannot (naming the variable or secret,
/// never a value).
pub type Resolver<'a> = dyn Fn(&ValueSource) -> Result<Zeroizing<String>, String> + Sync + 'a;

/// The resolver for literals and `{ env: NAME }`, for values read when the project loads
/// (before the secrets are open): `tls:` material.
pub fn resolve_env(v: &ValueSource) -> Result<Zeroizing<String>, String> {
    match v {
        ValueSource::Literal(s) => Ok(Zeroizing::new(s.clone())),
        ValueSource::Env { env } => std::env::var(env)
            .map(Zeroizing::new)
            .map_err(|_| format!("environment variable `{env}` is not set")),
        ValueSource::Secret { secret } => Err(format!(
            "`{{ secret: {secret} }}` cannot be used here (read when the project loads, before secrets are open); use `{{ env: NAME }}` or a file path"
        )),
    }
}

/// Shown instead of a secret in records.
pub const MASK: &str = "***";

/// Why a request could not be authenticated. Messages never contain a secret.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AuthError {
    /// The settings are wrong; found at load.
    #[error("{0}")]
    Config(String),
    /// A value source could not be resolved.
    #[error("`{field}`: {message}")]
    Value {
        field: &'static str,
        message: String,
    },
    /// The token endpoint said no.
    #[error("token endpoint `{url}` answered {status}{}", describe(.error, .description))]
    TokenRejected {
        url: String,
        status: u16,
        error: Option<String>,
        description: Option<String>,
    },
    /// No answer from the token endpoint.
    #[error("token endpoint `{url}` is unreachable: {reason}")]
    TokenUnreachable { url: String, reason: String },
    /// An answer without a usable token.
    #[error("token endpoint `{url}` sent an unusable answer: {reason}")]
    TokenResponse { url: String, reason: String },
    /// The request could not be signed.
    #[error("cannot sign the request: {0}")]
    Sign(String),
    /// `tls:` is wrong (bad PEM, unreadable file); found at load.
    #[error("tls: {0}")]
    Tls(String),
}

fn describe(error: &Option<String>, description: &Option<String>) -> String {
    match (error, description) {
        (Some(e), Some(d)) => format!(": {e} ({d})"),
        (Some(e), None) => format!(": {e}"),
        (None, Some(d)) => format!(": {d}"),
        (None, None) => String::new(),
    }
}

impl AuthError {
    /// Whether trying the step again later can help: the token endpoint was down, slow or
    /// overloaded. A rejected client or a bad setting stays wrong until someone fixes it.
    pub fn is_retryable(&self) -> bool {
        match self {
            AuthError::TokenUnreachable { .. } => true,
            AuthError::TokenRejected { status, .. } => {
                matches!(status, 408 | 425 | 429) || *status >= 500
            }
            AuthError::TokenResponse { .. }
            | AuthError::Config(_)
            | AuthError::Value { .. }
            | AuthError::Sign(_)
            | AuthError::Tls(_) => false,
        }
    }

    /// The connection key the error is about (`auth` or `tls`), to place a load error.
    pub fn key(&self) -> &'static str {
        match self {
            AuthError::Tls(_) => "tls",
            _ => "auth",
        }
    }
}

pub(crate) fn resolve_field(
    resolve: &Resolver<'_>,
    field: &'static str,
    v: &ValueSource,
) -> Result<Zeroizing<String>, AuthError> {
    resolve(v).map_err(|message| AuthError::Value { field, message })
}

fn header_name(field: &str, name: &str) -> Result<HeaderName, AuthError> {
    HeaderName::from_bytes(name.trim().as_bytes())
        .map_err(|_| AuthError::Config(format!("`{field}`: invalid header name `{name}`")))
}

/// A header value holding a secret: marked sensitive so hyper never logs it.
fn secret_header(field: &'static str, value: &str) -> Result<HeaderValue, AuthError> {
    let mut v = HeaderValue::from_str(value).map_err(|_| AuthError::Value {
        field,
        message: "the value is not valid in an HTTP header (control characters?)".into(),
    })?;
    v.set_sensitive(true);
    Ok(v)
}

/// A connection's compiled `auth:`. `Send + Sync`; shared by every request through the
/// connection (held in an `Arc`), so the OAuth 2.0 and JWT caches are per connection.
pub struct Auth {
    kind: Kind,
    /// The derived secrets last sent by the static kinds, for [`Auth::sensitive_values`].
    last: Mutex<Vec<Zeroizing<String>>>,
}

enum Kind {
    ApiKey { place: KeyPlace, value: ValueSource },
    Basic(ValueSource, Option<ValueSource>),
    Bearer(ValueSource),
    OAuth2(Box<oauth2::OAuth2>),
    Jwt(Box<jwt::Jwt>),
    Hmac(Box<hmac::Hmac>),
}

enum KeyPlace {
    Header(HeaderName),
    Query(String),
}

impl Auth {
    /// True when the credential travels in a header other than `Authorization`, which an
    /// HTTP client does not drop by itself on a redirect to another host.
    pub fn in_custom_header(&self) -> bool {
        match &self.kind {
            Kind::ApiKey {
                place: KeyPlace::Header(h),
                ..
            } => *h != AUTHORIZATION,
            Kind::Jwt(j) => j.header != AUTHORIZATION,
            _ => false,
        }
    }
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth").field("kind", &self.kind()).finish()
    }
}

/// What [`Auth::apply`] added to one request, for the record and for scrubbing.
#[derive(Default)]
pub struct Applied {
    /// Headers set, each with the text to record (`***` for secrets).
    pub headers: Vec<(HeaderName, String)>,
    /// Query parameters added; recorded as `***`.
    pub query: Vec<String>,
    /// The secret values sent, to scrub wherever they might be echoed.
    pub sensitive: Vec<Zeroizing<String>>,
    /// The OAuth 2.0 token generation sent, so a 401 invalidates only that token.
    generation: Option<u64>,
}

impl std::fmt::Debug for Applied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Applied")
            .field("headers", &self.headers)
            .field("query", &self.query)
            .field("sensitive", &self.sensitive.len())
            .finish()
    }
}

impl Applied {
    /// Masks what was applied in a request record `{"url", "headers", …}` (the `http` step's).
    pub fn mask_record(&self, record: &mut Json) {
        if let Some(Json::Object(h)) = record.get_mut("headers") {
            for (name, shown) in &self.headers {
                h.insert(name.as_str().to_owned(), Json::String(shown.clone()));
            }
        }
        if self.query.is_empty() {
            return;
        }
        // The record was made before auth ran: the parameters are added, masked.
        let Some(Json::String(url)) = record.get_mut("url") else {
            return;
        };
        if let Ok(mut u) = reqwest::Url::parse(url) {
            for name in &self.query {
                u.query_pairs_mut().append_pair(name, MASK);
            }
            *url = u.to_string();
        }
    }
}

impl Auth {
    /// Checks and compiles `auth:`: header names, templates, token URL, and keys written
    /// literally. Values from the environment or a secret store are checked when used.
    pub fn compile(cfg: &AuthConfig) -> Result<Auth, AuthError> {
        let kind = match cfg {
            AuthConfig::ApiKey(c) => {
                let place = match (&c.header, &c.query) {
                    (Some(h), None) => KeyPlace::Header(header_name("api_key.header", h)?),
                    (None, Some(q)) if !q.trim().is_empty() => KeyPlace::Query(q.trim().into()),
                    _ => {
                        return Err(AuthError::Config(
                            "`api_key` needs exactly one of `header` or `query`".into(),
                        ));
                    }
                };
                Kind::ApiKey {
                    place,
                    value: c.value.clone(),
                }
            }
            AuthConfig::Basic(c) => Kind::Basic(c.username.clone(), c.password.clone()),
            AuthConfig::Bearer(c) => Kind::Bearer(c.token.clone()),
            AuthConfig::OAuth2(c) => Kind::OAuth2(Box::new(oauth2::OAuth2::compile(c)?)),
            AuthConfig::Jwt(c) => Kind::Jwt(Box::new(jwt::Jwt::compile(c)?)),
            AuthConfig::Hmac(c) => Kind::Hmac(Box::new(hmac::Hmac::compile(c)?)),
        };
        Ok(Auth {
            kind,
            last: Mutex::new(Vec::new()),
        })
    }

    /// The kind's YAML name.
    pub fn kind(&self) -> &'static str {
        match self.kind {
            Kind::ApiKey { .. } => "api_key",
            Kind::Basic(..) => "basic",
            Kind::Bearer(_) => "bearer",
            Kind::OAuth2(_) => "oauth2",
            Kind::Jwt(_) => "jwt",
            Kind::Hmac(_) => "hmac",
        }
    }

    /// Adds the credential to a fully built request (headers, URL and body final). May
    /// call the token endpoint through `http` (OAuth 2.0), at most once for all concurrent
    /// callers.
    pub async fn apply(
        &self,
        req: &mut reqwest::Request,
        resolve: &Resolver<'_>,
        http: &reqwest::Client,
    ) -> Result<Applied, AuthError> {
        let mut applied = Applied::default();
        match &self.kind {
            Kind::ApiKey { place, value } => {
                let v = resolve_field(resolve, "api_key.value", value)?;
                match place {
                    KeyPlace::Header(name) => {
                        req.headers_mut()
                            .insert(name.clone(), secret_header("api_key.value", &v)?);
                        applied.headers.push((name.clone(), MASK.into()));
                    }
                    KeyPlace::Query(name) => {
                        req.url_mut().query_pairs_mut().append_pair(name, &v);
                        applied.query.push(name.clone());
                    }
                }
                applied.sensitive.push(v);
            }
            Kind::Basic(user, password) => {
                let user = resolve_field(resolve, "basic.username", user)?;
                let password = match password {
                    Some(p) => resolve_field(resolve, "basic.password", p)?,
                    None => Zeroizing::new(String::new()),
                };
                let joined = Zeroizing::new(format!("{}:{}", *user, *password));
                let encoded = Zeroizing::new(
                    base64::engine::general_purpose::STANDARD.encode(joined.as_bytes()),
                );
                let value = Zeroizing::new(format!("Basic {}", *encoded));
                req.headers_mut()
                    .insert(AUTHORIZATION, secret_header("basic", &value)?);
                applied.headers.push((AUTHORIZATION, MASK.into()));
                applied.sensitive.extend([encoded, value, password]);
            }
            Kind::Bearer(token) => {
                let token = resolve_field(resolve, "bearer.token", token)?;
                let value = Zeroizing::new(format!("Bearer {}", *token));
                req.headers_mut()
                    .insert(AUTHORIZATION, secret_header("bearer.token", &value)?);
                applied.headers.push((AUTHORIZATION, MASK.into()));
                applied.sensitive.extend([token, value]);
            }
            Kind::OAuth2(o) => {
                let token = o.token(http, resolve).await?;
                let value = Zeroizing::new(format!("Bearer {}", *token.access));
                req.headers_mut()
                    .insert(AUTHORIZATION, secret_header("oauth2", &value)?);
                applied.headers.push((AUTHORIZATION, MASK.into()));
                applied.sensitive.extend([token.access.clone(), value]);
                applied.generation = Some(token.generation);
                // The cache itself answers `sensitive_values`.
                return Ok(applied);
            }
            Kind::Jwt(j) => {
                let token = j.token(resolve)?;
                let value = j.header_value(&token);
                req.headers_mut()
                    .insert(j.header.clone(), secret_header("jwt", &value)?);
                applied.headers.push((j.header.clone(), MASK.into()));
                applied.sensitive.extend([token, value]);
                return Ok(applied);
            }
            Kind::Hmac(h) => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                h.apply(req, resolve, now, &mut applied)?;
                return Ok(applied);
            }
        }
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = applied.sensitive.clone();
        Ok(applied)
    }

    /// After the API answered 401 to a request sent with `applied`: whether one retry with a
    /// fresh credential can help (OAuth 2.0 only). Forgets the token that was refused, unless
    /// another request already replaced it, so a burst of 401s costs one token request.
    pub fn on_unauthorized(&self, applied: &Applied) -> bool {
        match &self.kind {
            Kind::OAuth2(o) => {
                if let Some(g) = applied.generation {
                    o.invalidate(g);
                }
                true
            }
            _ => false,
        }
    }

    /// The derived secrets now in use (access and refresh tokens, signed JWT, basic header
    /// value), for the engine to mask in stored records.
    pub fn sensitive_values(&self) -> Vec<Zeroizing<String>> {
        match &self.kind {
            Kind::OAuth2(o) => o.sensitive_values(),
            Kind::Jwt(j) => j.sensitive_values(),
            _ => self.last.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        }
    }
}

/// A request sent through [`send`]: the answer, and what auth added (for the record).
pub struct Sent {
    pub response: Result<reqwest::Response, reqwest::Error>,
    pub applied: Applied,
}

/// Applies `auth` to `req` and sends it with `http`. When the API answers 401 and the auth
/// can get a fresh credential (OAuth 2.0), refreshes once and sends once more; the second
/// answer is final, whatever it is.
pub async fn send(
    auth: Option<&Auth>,
    http: &reqwest::Client,
    mut req: reqwest::Request,
    resolve: &Resolver<'_>,
) -> Result<Sent, AuthError> {
    let Some(auth) = auth else {
        return Ok(Sent {
            response: http.execute(req).await,
            applied: Applied::default(),
        });
    };
    // Cloned before auth touches it: the retry gets a fresh credential, not a second one.
    let spare = match auth.kind {
        Kind::OAuth2(_) => req.try_clone(),
        _ => None,
    };
    let applied = auth.apply(&mut req, resolve, http).await?;
    let response = http.execute(req).await;
    if let (Ok(r), Some(mut again)) = (&response, spare)
        && r.status() == reqwest::StatusCode::UNAUTHORIZED
        && auth.on_unauthorized(&applied)
    {
        let applied = auth.apply(&mut again, resolve, http).await?;
        return Ok(Sent {
            response: http.execute(again).await,
            applied,
        });
    }
    Ok(Sent { response, applied })
}

/// `e` and its sources, for errors whose top line says little ("builder error").
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let s_text = s.to_string();
        if !msg.contains(&s_text) {
            msg = format!("{msg}: {s_text}");
        }
        src = s.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::node::parse_yaml;

    pub(super) fn auth(yaml: &str) -> Result<Auth, AuthError> {
        let cfg: AuthConfig = parse_yaml(yaml).unwrap().parse().unwrap();
        Auth::compile(&cfg)
    }

    pub(super) fn request(method: &str, url: &str, body: &str) -> reqwest::Request {
        let mut r = reqwest::Request::new(method.parse().unwrap(), url.parse().unwrap());
        if !body.is_empty() {
            *r.body_mut() = Some(body.to_owned().into());
        }
        r
    }

    pub(super) fn resolver(v: &ValueSource) -> Result<Zeroizing<String>, String> {
        match v {
            ValueSource::Env { env } if env == "MISSING" => {
                Err(format!("environment variable `{env}` is not set"))
            }
            ValueSource::Env { env } => Ok(Zeroizing::new(format!("<{env}>"))),
            ValueSource::Literal(s) => Ok(Zeroizing::new(s.clone())),
            ValueSource::Secret { secret } => Err(format!("secret `{secret}` is not set")),
        }
    }

    pub(super) async fn apply(a: &Auth, req: &mut reqwest::Request) -> Result<Applied, AuthError> {
        a.apply(req, &resolver, &reqwest::Client::new()).await
    }

    fn header(req: &reqwest::Request, name: &str) -> String {
        req.headers()[name].to_str().unwrap().to_owned()
    }

    #[tokio::test]
    async fn api_keys_go_in_a_header_or_the_query_and_are_masked() {
        let a = auth("api_key: { header: X-Api-Key, value: { env: CRM_KEY } }").unwrap();
        let mut req = request("GET", "https://api.example/x?a=1", "");
        let applied = apply(&a, &mut req).await.unwrap();
        assert_eq!(header(&req, "x-api-key"), "<CRM_KEY>");
        assert!(req.headers()["x-api-key"].is_sensitive());
        let mut record = serde_json::json!({"url": req.url().as_str(), "headers": {}});
        applied.mask_record(&mut record);
        assert_eq!(record["headers"]["x-api-key"], MASK);
        assert_eq!(*a.sensitive_values()[0], "<CRM_KEY>");

        let a = auth("api_key: { query: api_key, value: s3cret }").unwrap();
        let mut req = request("GET", "https://api.example/x?a=1", "");
        // The http step records the request before auth adds to it.
        let mut record = serde_json::json!({"url": req.url().as_str(), "headers": {}});
        let applied = apply(&a, &mut req).await.unwrap();
        assert_eq!(
            req.url().as_str(),
            "https://api.example/x?a=1&api_key=s3cret"
        );
        applied.mask_record(&mut record);
        assert_eq!(record["url"], "https://api.example/x?a=1&api_key=***");

        let e = auth("api_key: { header: X, query: y, value: v }").unwrap_err();
        assert_eq!(
            e.to_string(),
            "`api_key` needs exactly one of `header` or `query`"
        );
        let e = auth("api_key: { header: 'bad header', value: v }").unwrap_err();
        assert_eq!(
            e.to_string(),
            "`api_key.header`: invalid header name `bad header`"
        );
    }

    #[tokio::test]
    async fn basic_and_bearer_set_authorization_and_report_derived_values() {
        // RFC 7617 §2's example.
        let a = auth("basic: { username: Aladdin, password: open sesame }").unwrap();
        let mut req = request("GET", "https://api.example/", "");
        apply(&a, &mut req).await.unwrap();
        assert_eq!(
            header(&req, "authorization"),
            "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
        );
        let sensitive: Vec<String> = a.sensitive_values().iter().map(|s| s.to_string()).collect();
        assert!(sensitive.contains(&"QWxhZGRpbjpvcGVuIHNlc2FtZQ==".to_owned()));
        assert!(sensitive.contains(&"open sesame".to_owned()));

        let a = auth("bearer: { token: { env: CRM_TOKEN } }").unwrap();
        let mut req = request("GET", "https://api.example/", "");
        let applied = apply(&a, &mut req).await.unwrap();
        assert_eq!(header(&req, "authorization"), "Bearer <CRM_TOKEN>");
        assert_eq!(applied.headers, vec![(AUTHORIZATION, MASK.to_owned())]);
        assert_eq!(a.kind(), "bearer");
    }

    #[tokio::test]
    async fn a_missing_value_names_the_variable_and_not_a_value() {
        let a = auth("basic: { username: u, password: { env: MISSING } }").unwrap();
        let e = apply(&a, &mut request("GET", "https://x/", ""))
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "`basic.password`: environment variable `MISSING` is not set"
        );
        assert!(!e.is_retryable());
        let bad = auth("bearer: { token: \"a\\nb\" }").unwrap();
        let e = apply(&bad, &mut request("GET", "https://x/", ""))
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "`bearer.token`: the value is not valid in an HTTP header (control characters?)"
        );
    }

    #[test]
    fn unknown_keys_and_kinds_are_rejected() {
        let cfg = parse_yaml("bearer: { token: x, tokne: y }")
            .unwrap()
            .parse::<AuthConfig>();
        assert!(cfg.unwrap_err().message.contains("tokne"));
        let cfg = parse_yaml("oauth: { token_url: x }")
            .unwrap()
            .parse::<AuthConfig>();
        assert!(cfg.unwrap_err().message.contains("oauth"));
    }

    #[test]
    fn token_endpoint_errors_say_what_the_server_said_and_whether_to_retry() {
        let e = AuthError::TokenRejected {
            url: "https://id.example/token".into(),
            status: 401,
            error: Some("invalid_client".into()),
            description: Some("bad secret".into()),
        };
        assert_eq!(
            e.to_string(),
            "token endpoint `https://id.example/token` answered 401: invalid_client (bad secret)"
        );
        assert!(!e.is_retryable());
        let e = AuthError::TokenRejected {
            url: "u".into(),
            status: 503,
            error: None,
            description: None,
        };
        assert_eq!(e.to_string(), "token endpoint `u` answered 503");
        assert!(e.is_retryable());
    }
}
