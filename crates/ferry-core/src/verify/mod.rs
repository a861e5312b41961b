//! Inbound webhook verification: the `verify:` block of a webhook trigger, compiled once into a
//! [`Verifier`] that says whether one request is authentic.
//!
//! Owns the schemes (Standard Webhooks, Stripe, GitHub, Shopify, Slack, generic HMAC, API key,
//! HTTP basic, JWT with a static key or a JWKS URL), their limits and their rejection texts.
//! Does not own HTTP serving, logging, dedupe or secret storage: the caller passes the request's
//! parts, a function that resolves a [`ValueSource`], the current time and an HTTP client (for
//! JWKS), and maps a [`Rejection`] to a response. Replays of a message id are dropped by the
//! engine's dedupe; [`Verifier::message_id`] tells it the id.
//!
//! Rules every scheme follows:
//! - constant-time comparison (`hmac`'s `verify_slice`, `subtle`);
//! - fail closed: a secret that cannot be resolved rejects every request
//!   ([`Rejection::SecretUnavailable`]), even if another secret would have matched;
//! - a rejection says which check failed, never a secret or the expected signature;
//! - outside input is bounded ([`MAX_HEADER_BYTES`], [`MAX_SIGNATURES`]) and never panics.

mod hmac_schemes;
mod jwt;
mod keys;

use std::time::Duration;

use axum::http::HeaderMap;
use base64::Engine as _;
use schemars::JsonSchema;
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::flow::model::{Dur, ValueSource};

pub use hmac_schemes::HmacAlgorithm;

/// Longest header value read (signature, timestamp, id, token); longer is
/// [`Rejection::Oversized`].
pub const MAX_HEADER_BYTES: usize = 8 * 1024;
/// Most signatures accepted in one header (Standard Webhooks, Stripe).
pub const MAX_SIGNATURES: usize = 16;
/// Most secrets one `verify:` block may list.
pub const MAX_SECRETS: usize = 16;
/// Default timestamp tolerance of the timestamped schemes.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(5 * 60);

/// How a webhook proves where its requests come from (`verify:` under `trigger.webhook`).
///
/// ```yaml
/// verify:
///   scheme: standard-webhooks
///   secrets: [{ env: WEBHOOK_SECRET }, { env: WEBHOOK_SECRET_OLD }]
///   tolerance: 5m
/// ```
///
/// Which other keys apply depends on `scheme`; a key the scheme does not use is an error.
/// Since v0.2.
#[derive(Deserialize, JsonSchema, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct VerifyConfig {
    /// The scheme: `standard-webhooks`, `stripe`, `github`, `shopify`, `slack`, `hmac`,
    /// `api_key`, `basic` or `jwt`.
    pub scheme: SchemeName,
    /// The secret (signing secret, API key, `user:pass` for `basic`, shared JWT secret).
    #[serde(default)]
    pub secret: Option<ValueSource>,
    /// Several secrets, for rotation: a request passes if any of them verifies it.
    #[serde(default)]
    pub secrets: Option<Vec<ValueSource>>,
    /// Largest difference between the request's timestamp and now, either way (default 5m).
    /// Timestamped schemes only: `standard-webhooks`, `stripe`, `slack`, `hmac` with
    /// `timestamp_header`.
    #[serde(default)]
    pub tolerance: Option<Dur>,
    /// `hmac`: the header holding the signature. `api_key`: the header holding the key
    /// (default `x-api-key`). `jwt`: the header holding the token (default `authorization`).
    #[serde(default)]
    pub header: Option<String>,
    /// `api_key`: read the key from this query parameter instead of a header.
    #[serde(default)]
    pub query: Option<String>,
    /// `hmac`: `sha1`, `sha256` (default) or `sha512`.
    #[serde(default)]
    pub algorithm: Option<HmacAlgorithm>,
    /// `hmac`: how the signature is written: `hex` (default), `base64` or `base64url`.
    #[serde(default)]
    pub encoding: Option<SignatureEncoding>,
    /// `hmac`, `api_key`: text before the signature or key in the header, e.g. `sha256=`.
    #[serde(default)]
    pub prefix: Option<String>,
    /// `hmac`: what is signed: `body` (default) or a template over `{timestamp}`, `{id}` and
    /// `{body}`, e.g. `"{timestamp}.{body}"`.
    #[serde(default)]
    pub signed: Option<String>,
    /// `hmac`: the header holding the unix timestamp (seconds) that `{timestamp}` stands for.
    #[serde(default)]
    pub timestamp_header: Option<String>,
    /// `hmac`: the header holding the message id that `{id}` stands for; also the dedupe id.
    #[serde(default)]
    pub id_header: Option<String>,
    /// `basic`: the user name.
    #[serde(default)]
    pub username: Option<ValueSource>,
    /// `basic`: the password.
    #[serde(default)]
    pub password: Option<ValueSource>,
    /// `jwt`: a static key: a PEM public key (RSA, EC or Ed25519) or a shared HMAC secret.
    #[serde(default)]
    pub key: Option<ValueSource>,
    /// `jwt`: where to fetch the signing keys (a JWKS document), instead of `key`.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// `jwt` with `jwks_url`: least time between two fetches of the JWKS, however many unknown
    /// key ids arrive (default 30s).
    #[serde(default)]
    pub jwks_min_interval: Option<Dur>,
    /// `jwt` with `jwks_url`: the keys are fetched again after this long (default 1h).
    #[serde(default)]
    pub jwks_max_age: Option<Dur>,
    /// `jwt`: the accepted `alg` values, e.g. `[RS256]`. Default: every algorithm of the key's
    /// type. `none` is never accepted.
    #[serde(default)]
    pub algorithms: Option<Vec<String>>,
    /// `jwt`: the required `iss` claim.
    #[serde(default)]
    pub issuer: Option<String>,
    /// `jwt`: the required `aud` claim (the token's `aud` must be or contain it).
    #[serde(default)]
    pub audience: Option<String>,
    /// `jwt`: clock skew allowed for `exp` and `nbf` (default 60s).
    #[serde(default)]
    pub leeway: Option<Dur>,
}

/// The value of `scheme:`.
#[derive(Deserialize, JsonSchema, Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchemeName {
    #[serde(rename = "standard-webhooks", alias = "standard_webhooks")]
    StandardWebhooks,
    #[serde(rename = "stripe")]
    Stripe,
    #[serde(rename = "github")]
    Github,
    #[serde(rename = "shopify")]
    Shopify,
    #[serde(rename = "slack")]
    Slack,
    #[serde(rename = "hmac")]
    Hmac,
    #[serde(rename = "api_key", alias = "api-key")]
    ApiKey,
    #[serde(rename = "basic")]
    Basic,
    #[serde(rename = "jwt")]
    Jwt,
}

impl SchemeName {
    pub fn as_str(self) -> &'static str {
        match self {
            SchemeName::StandardWebhooks => "standard-webhooks",
            SchemeName::Stripe => "stripe",
            SchemeName::Github => "github",
            SchemeName::Shopify => "shopify",
            SchemeName::Slack => "slack",
            SchemeName::Hmac => "hmac",
            SchemeName::ApiKey => "api_key",
            SchemeName::Basic => "basic",
            SchemeName::Jwt => "jwt",
        }
    }

    /// The `verify:` keys this scheme reads, besides `scheme`.
    fn keys(self) -> &'static [&'static str] {
        match self {
            SchemeName::StandardWebhooks | SchemeName::Stripe | SchemeName::Slack => {
                &["secret", "secrets", "tolerance"]
            }
            SchemeName::Github | SchemeName::Shopify => &["secret", "secrets"],
            SchemeName::Hmac => &[
                "secret",
                "secrets",
                "tolerance",
                "header",
                "algorithm",
                "encoding",
                "prefix",
                "signed",
                "timestamp_header",
                "id_header",
            ],
            SchemeName::ApiKey => &["secret", "secrets", "header", "query", "prefix"],
            SchemeName::Basic => &["secret", "secrets", "username", "password"],
            SchemeName::Jwt => &[
                "key",
                "jwks_url",
                "jwks_min_interval",
                "jwks_max_age",
                "algorithms",
                "issuer",
                "audience",
                "leeway",
                "header",
            ],
        }
    }
}

/// How a generic `hmac` signature is written.
#[derive(Deserialize, JsonSchema, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SignatureEncoding {
    Hex,
    Base64,
    Base64url,
}

/// The parts of an inbound request that verification reads.
#[derive(Clone, Copy, Debug)]
pub struct Inbound<'a> {
    pub headers: &'a HeaderMap,
    /// The raw query string, without `?`.
    pub query: Option<&'a str>,
    /// The raw body, exactly as received (signatures are over these bytes).
    pub body: &'a [u8],
}

/// What a verified request proved.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Verified {
    /// Who sent it, where the scheme says: the JWT `sub`, the basic-auth user name.
    pub subject: Option<String>,
    /// The JWT's claims (`jwt` only).
    pub claims: Option<serde_json::Value>,
    /// Which configured secret matched (0-based, in `secrets:` order), for the schemes with
    /// secrets: lets operators see when an old secret is no longer used.
    pub secret_index: Option<usize>,
}

/// Why a request was refused. The text says which check failed and never contains a secret or
/// an expected signature, so it may be logged and (for client faults) returned.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Rejection {
    #[error("missing header `{0}`")]
    MissingHeader(String),
    #[error("missing query parameter `{0}`")]
    MissingQuery(String),
    #[error("header `{name}` is {len} bytes; limit is {limit}")]
    Oversized {
        name: String,
        len: usize,
        limit: usize,
    },
    #[error("{0}")]
    Malformed(String),
    #[error("timestamp is {age} s old; tolerance is {tolerance} s")]
    StaleTimestamp { age: u64, tolerance: u64 },
    #[error("timestamp is {ahead} s in the future; tolerance is {tolerance} s")]
    FutureTimestamp { ahead: u64, tolerance: u64 },
    #[error("signature does not match")]
    BadSignature,
    #[error("{0} does not match")]
    BadCredentials(&'static str),
    #[error("token rejected: {0}")]
    InvalidToken(String),
    /// A configured secret or key cannot be resolved or is unusable: every request is refused
    /// until it is fixed (fail closed). A server fault.
    #[error("secret unavailable: {0}")]
    SecretUnavailable(String),
    /// The JWKS cannot be fetched and no cached key fits. A server fault.
    #[error("signing keys unavailable: {0}")]
    KeysUnavailable(String),
}

impl Rejection {
    /// True when the fault is on this side (configuration, key server), not the sender's:
    /// answer 5xx (the sender retries later) and log it; otherwise answer 401.
    pub fn is_server_fault(&self) -> bool {
        matches!(
            self,
            Rejection::SecretUnavailable(_) | Rejection::KeysUnavailable(_)
        )
    }
}

/// A resolver of secret values, supplied by the caller (environment, secret store).
pub type Resolve<'r> = dyn Fn(&ValueSource) -> Result<Zeroizing<String>, String> + Sync + 'r;

/// A compiled `verify:` block. Built once at flow load; `Send + Sync`, shared by requests.
pub struct Verifier {
    scheme: Scheme,
}

enum Scheme {
    Hmac(hmac_schemes::HmacScheme),
    ApiKey(keys::ApiKey),
    Basic(keys::Basic),
    Jwt(Box<jwt::Jwt>),
}

impl Verifier {
    /// The scheme's name as written in `verify: { scheme: … }`.
    pub fn scheme(&self) -> &'static str {
        match &self.scheme {
            Scheme::Hmac(h) => h.name().as_str(),
            Scheme::ApiKey(_) => "api_key",
            Scheme::Basic(_) => "basic",
            Scheme::Jwt(_) => "jwt",
        }
    }
}

impl std::fmt::Debug for Verifier {
    /// Names the scheme only: literal secrets must not reach a log through `{:?}`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = self.scheme();
        f.debug_struct("Verifier").field("scheme", &name).finish()
    }
}

impl Verifier {
    /// Checks the configuration and compiles it. The error is one line of human text naming
    /// the key at fault.
    pub fn compile(cfg: &VerifyConfig) -> Result<Verifier, String> {
        let name = cfg.scheme;
        let allowed = name.keys();
        for (key, set) in cfg.keys_set() {
            if set && !allowed.contains(&key) {
                return Err(format!(
                    "`{key}` is not used by scheme `{}`; its keys: {}",
                    name.as_str(),
                    allowed.join(", ")
                ));
            }
        }
        let scheme = match name {
            SchemeName::ApiKey => Scheme::ApiKey(keys::ApiKey::compile(cfg)?),
            SchemeName::Basic => Scheme::Basic(keys::Basic::compile(cfg)?),
            SchemeName::Jwt => Scheme::Jwt(Box::new(jwt::Jwt::compile(cfg)?)),
            _ => Scheme::Hmac(hmac_schemes::HmacScheme::compile(cfg)?),
        };
        Ok(Verifier { scheme })
    }

    /// Every secret this verifier reads, so the caller can check at start that they resolve.
    pub fn secret_sources(&self) -> Vec<&ValueSource> {
        match &self.scheme {
            Scheme::Hmac(h) => h.secrets.iter().collect(),
            Scheme::ApiKey(k) => k.secrets.iter().collect(),
            Scheme::Basic(b) => b.secret_sources(),
            Scheme::Jwt(j) => j.secret_sources(),
        }
    }

    /// Verifies one request. `now_unix` is the current time in unix seconds (timestamps, JWT
    /// `exp`/`nbf`, JWKS refetch pacing); `http` fetches the JWKS (`jwt` with `jwks_url` only).
    pub async fn verify(
        &self,
        req: &Inbound<'_>,
        resolve: &Resolve<'_>,
        now_unix: i64,
        http: &reqwest::Client,
    ) -> Result<Verified, Rejection> {
        match &self.scheme {
            Scheme::Jwt(j) => j.verify(req, resolve, now_unix, http).await,
            _ => self.verify_offline(req, resolve, now_unix),
        }
    }

    /// Verifies one request without any network access: every scheme except `jwt` with
    /// `jwks_url`, which answers [`Rejection::KeysUnavailable`] here unless its keys are
    /// cached. For fuzzing and synchronous callers.
    pub fn verify_offline(
        &self,
        req: &Inbound<'_>,
        resolve: &Resolve<'_>,
        now_unix: i64,
    ) -> Result<Verified, Rejection> {
        match &self.scheme {
            Scheme::Hmac(h) => h.verify(req, resolve, now_unix),
            Scheme::ApiKey(k) => k.verify(req, resolve),
            Scheme::Basic(b) => b.verify(req, resolve),
            Scheme::Jwt(j) => j.verify_cached(req, resolve, now_unix),
        }
    }

    /// The sender's id of this message, for schemes that have one (Standard Webhooks
    /// `webhook-id`, GitHub `X-GitHub-Delivery`, Shopify `X-Shopify-Webhook-Id`, Stripe's event
    /// `id`, `hmac` with `id_header`), so the engine can drop replays. Call it only after
    /// [`Verifier::verify`] succeeded: before, the id is whatever the request says.
    pub fn message_id(&self, req: &Inbound<'_>) -> Option<String> {
        match &self.scheme {
            Scheme::Hmac(h) => h.message_id(req),
            _ => None,
        }
    }
}

impl VerifyConfig {
    /// Every optional key and whether it is set, for "not used by this scheme" errors.
    fn keys_set(&self) -> [(&'static str, bool); 21] {
        [
            ("secret", self.secret.is_some()),
            ("secrets", self.secrets.is_some()),
            ("tolerance", self.tolerance.is_some()),
            ("header", self.header.is_some()),
            ("query", self.query.is_some()),
            ("algorithm", self.algorithm.is_some()),
            ("encoding", self.encoding.is_some()),
            ("prefix", self.prefix.is_some()),
            ("signed", self.signed.is_some()),
            ("timestamp_header", self.timestamp_header.is_some()),
            ("id_header", self.id_header.is_some()),
            ("username", self.username.is_some()),
            ("password", self.password.is_some()),
            ("key", self.key.is_some()),
            ("jwks_url", self.jwks_url.is_some()),
            ("jwks_min_interval", self.jwks_min_interval.is_some()),
            ("jwks_max_age", self.jwks_max_age.is_some()),
            ("algorithms", self.algorithms.is_some()),
            ("issuer", self.issuer.is_some()),
            ("audience", self.audience.is_some()),
            ("leeway", self.leeway.is_some()),
        ]
    }

    /// `secret` or `secrets` (exactly one, at least one value), or an error naming the scheme.
    fn secret_list(&self, what: &str) -> Result<Vec<ValueSource>, String> {
        let scheme = self.scheme.as_str();
        let list = match (&self.secret, &self.secrets) {
            (Some(_), Some(_)) => {
                return Err(format!(
                    "scheme `{scheme}` takes `secret` or `secrets`, not both"
                ));
            }
            (Some(s), None) => vec![s.clone()],
            (None, Some(list)) => list.clone(),
            (None, None) => {
                return Err(format!(
                    "scheme `{scheme}` needs `secret` (or `secrets` for rotation): {what}"
                ));
            }
        };
        if list.is_empty() {
            return Err(format!("`secrets` of scheme `{scheme}` is empty"));
        }
        if list.len() > MAX_SECRETS {
            return Err(format!(
                "`secrets` lists {} values; at most {MAX_SECRETS}",
                list.len()
            ));
        }
        Ok(list)
    }

    fn tolerance(&self) -> Duration {
        self.tolerance.map_or(DEFAULT_TOLERANCE, |d| d.0)
    }
}

// ---- helpers shared by the schemes ----

/// The single value of header `name`, bounded. Absent → `MissingHeader`; several values,
/// oversized or not visible ASCII → a rejection naming the header.
fn header<'a>(req: &Inbound<'a>, name: &str) -> Result<&'a str, Rejection> {
    optional_header(req, name)?.ok_or_else(|| Rejection::MissingHeader(name.to_owned()))
}

fn optional_header<'a>(req: &Inbound<'a>, name: &str) -> Result<Option<&'a str>, Rejection> {
    let mut values = req.headers.get_all(name).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(Rejection::Malformed(format!(
            "header `{name}` appears more than once; expected once"
        )));
    }
    let bytes = value.as_bytes();
    if bytes.len() > MAX_HEADER_BYTES {
        return Err(Rejection::Oversized {
            name: name.to_owned(),
            len: bytes.len(),
            limit: MAX_HEADER_BYTES,
        });
    }
    let text = value.to_str().map_err(|_| {
        Rejection::Malformed(format!(
            "header `{name}` is not visible ASCII; expected a signature or timestamp"
        ))
    })?;
    Ok(Some(text.trim()))
}

/// Parses a unix timestamp (seconds) from header `name` and checks it against `now`.
fn check_timestamp(
    name: &str,
    text: &str,
    now: i64,
    tolerance: Duration,
) -> Result<i64, Rejection> {
    let ts: i64 =
        if !text.is_empty() && text.len() <= 19 && text.bytes().all(|b| b.is_ascii_digit()) {
            text.parse().map_err(|_| bad_timestamp(name, text))?
        } else {
            return Err(bad_timestamp(name, text));
        };
    let tolerance = tolerance.as_secs();
    let delta = i128::from(now) - i128::from(ts);
    let clamp = |v: i128| u64::try_from(v).unwrap_or(u64::MAX);
    if delta > i128::from(tolerance) {
        return Err(Rejection::StaleTimestamp {
            age: clamp(delta),
            tolerance,
        });
    }
    if -delta > i128::from(tolerance) {
        return Err(Rejection::FutureTimestamp {
            ahead: clamp(-delta),
            tolerance,
        });
    }
    Ok(ts)
}

fn bad_timestamp(name: &str, text: &str) -> Rejection {
    Rejection::Malformed(format!(
        "header `{name}` is `{}`; expected a unix timestamp in seconds",
        shorten(text)
    ))
}

/// At most 32 characters of outside input, for error messages.
fn shorten(text: &str) -> String {
    let mut out: String = text.chars().take(32).collect();
    if out.len() < text.len() {
        out.push('…');
    }
    out
}

/// Resolves every secret, in order; the first that fails rejects the request (fail closed).
fn resolve_all(
    secrets: &[ValueSource],
    resolve: &Resolve<'_>,
) -> Result<Vec<Zeroizing<String>>, Rejection> {
    secrets
        .iter()
        .enumerate()
        .map(|(i, s)| {
            resolve(s).map_err(|e| Rejection::SecretUnavailable(secret_label(i, secrets.len(), &e)))
        })
        .collect()
}

fn secret_label(i: usize, n: usize, why: &str) -> String {
    if n == 1 {
        format!("the secret cannot be used: {why}")
    } else {
        format!("secret {} of {n} cannot be used: {why}", i + 1)
    }
}

/// Base64 (standard alphabet) with or without padding.
fn b64_std(text: &str) -> Option<Vec<u8>> {
    const ENGINE: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    ENGINE.decode(text).ok()
}

/// Base64 (URL-safe alphabet) with or without padding.
fn b64_url(text: &str) -> Option<Vec<u8>> {
    const ENGINE: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
        &base64::alphabet::URL_SAFE,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    ENGINE.decode(text).ok()
}

/// A header name from the configuration, checked and lower-cased.
fn header_name(key: &str, name: &str) -> Result<String, String> {
    axum::http::HeaderName::from_bytes(name.trim().as_bytes())
        .map(|h| h.as_str().to_owned())
        .map_err(|_| format!("`{key}` is `{name}`, which is not a valid header name"))
}

#[cfg(test)]
mod tests;
