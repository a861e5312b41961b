//! `oauth2`: client credentials (RFC 6749 §4.4) and refresh token (§6) grants, with the
//! access token cached per connection.
//!
//! Hand-written over reqwest rather than the `oauth2` crate: the two grants are one
//! form-encoded POST each, and the crate's reqwest adapter pins reqwest 0.12 (a second HTTP
//! stack). What matters here is the cache around the call, which the crate does not provide.
//!
//! The cache: a token is used until `expires_in` minus a margin ([`super::jwt::margin`]);
//! then the first request to notice takes the refresh permit (a `tokio::sync::Mutex<()>`
//! that guards no data) and fetches, while the others wait for the permit and find the new
//! token when they get it. So a burst of requests with an expired token costs one token
//! request, and a failed fetch is shared with those that queued behind it instead of being
//! repeated by each. The token itself sits behind a `std::sync::Mutex` that is never held
//! across an `.await`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderValue};
use serde::Deserialize;
use zeroize::Zeroizing;

use super::jwt::margin;
use super::{AuthError, Resolver, chain, resolve_field};
use crate::flow::model::{ClientAuthMethod, OAuth2Auth, OAuth2Grant, ValueSource};

/// Time limit for one token request.
const TOKEN_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest token response read.
const MAX_TOKEN_RESPONSE: usize = 256 * 1024;

pub(super) struct OAuth2 {
    grant: OAuth2Grant,
    token_url: reqwest::Url,
    client_id: ValueSource,
    client_secret: Option<ValueSource>,
    scope: Option<String>,
    audience: Option<String>,
    method: ClientAuthMethod,
    refresh_token: Option<ValueSource>,
    cache: Mutex<Cache>,
    /// Held while fetching: one token request at a time per connection.
    permit: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct Cache {
    token: Option<Arc<Token>>,
    /// A refresh token the server rotated; replaces the configured one until restart.
    rotated: Option<Zeroizing<String>>,
    generation: u64,
    /// The last failed fetch, shared with the requests that waited for it.
    failure: Option<(Instant, AuthError)>,
}

pub(super) struct Token {
    pub(super) access: Zeroizing<String>,
    /// When to stop using it; `None` when the server gave no `expires_in`.
    refresh_at: Option<Instant>,
    pub(super) generation: u64,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    token_type: Option<String>,
    #[serde(default)]
    expires_in: Option<serde_json::Value>,
    #[serde(default)]
    refresh_token: Option<String>,
}

#[derive(Deserialize, Default)]
struct ErrorResponse {
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    error_description: Option<String>,
}

/// RFC 6749 §2.3.1: the client id and secret are form-encoded before they go into the
/// basic header.
fn form_encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

impl OAuth2 {
    pub(super) fn compile(c: &OAuth2Auth) -> Result<OAuth2, AuthError> {
        let token_url = reqwest::Url::parse(c.token_url.trim())
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .ok_or_else(|| {
                AuthError::Config(format!(
                    "`oauth2.token_url`: invalid URL `{}`; expected an absolute http(s) URL",
                    c.token_url
                ))
            })?;
        match (c.grant, &c.refresh_token) {
            (OAuth2Grant::RefreshToken, None) => {
                return Err(AuthError::Config(
                    "`oauth2`: `grant: refresh_token` needs `refresh_token`".into(),
                ));
            }
            (OAuth2Grant::ClientCredentials, Some(_)) => {
                return Err(AuthError::Config(
                    "`oauth2`: `refresh_token` is only used with `grant: refresh_token`".into(),
                ));
            }
            _ => {}
        }
        let scopes: Vec<&str> = c.scopes.iter().map(|s| s.trim()).collect();
        Ok(OAuth2 {
            grant: c.grant,
            token_url,
            client_id: c.client_id.clone(),
            client_secret: c.client_secret.clone(),
            scope: (!scopes.is_empty()).then(|| scopes.join(" ")),
            audience: c.audience.clone(),
            method: c.auth_method,
            refresh_token: c.refresh_token.clone(),
            cache: Mutex::new(Cache::default()),
            permit: tokio::sync::Mutex::new(()),
        })
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn fresh(&self) -> Option<Arc<Token>> {
        let now = Instant::now();
        self.cache()
            .token
            .as_ref()
            .filter(|t| t.refresh_at.is_none_or(|at| now < at))
            .cloned()
    }

    /// A usable access token: the cached one, or a new one (one fetch at a time).
    pub(super) async fn token(
        &self,
        http: &reqwest::Client,
        resolve: &Resolver<'_>,
    ) -> Result<Arc<Token>, AuthError> {
        if let Some(t) = self.fresh() {
            return Ok(t);
        }
        let asked = Instant::now();
        let _permit = self.permit.lock().await;
        // Whoever held the permit before may have done the work.
        if let Some(t) = self.fresh() {
            return Ok(t);
        }
        if let Some((at, e)) = &self.cache().failure
            && *at >= asked
        {
            return Err(e.clone());
        }
        match self.fetch(http, resolve).await {
            Ok(t) => Ok(t),
            Err(e) => {
                self.cache().failure = Some((Instant::now(), e.clone()));
                Err(e)
            }
        }
    }

    /// Forgets token `generation` (the API refused it), unless it was already replaced.
    pub(super) fn invalidate(&self, generation: u64) {
        let mut c = self.cache();
        if c.token.as_ref().is_some_and(|t| t.generation == generation) {
            c.token = None;
        }
    }

    pub(super) fn sensitive_values(&self) -> Vec<Zeroizing<String>> {
        let c = self.cache();
        let mut out = Vec::new();
        if let Some(t) = &c.token {
            out.push(t.access.clone());
        }
        out.extend(c.rotated.clone());
        out
    }

    async fn fetch(
        &self,
        http: &reqwest::Client,
        resolve: &Resolver<'_>,
    ) -> Result<Arc<Token>, AuthError> {
        let url = self.token_url.as_str().to_owned();
        let client_id = resolve_field(resolve, "oauth2.client_id", &self.client_id)?;
        let secret = self
            .client_secret
            .as_ref()
            .map(|s| resolve_field(resolve, "oauth2.client_secret", s))
            .transpose()?;
        let refresh = match self.grant {
            OAuth2Grant::ClientCredentials => None,
            OAuth2Grant::RefreshToken => Some(match self.cache().rotated.clone() {
                Some(r) => r,
                None => resolve_field(
                    resolve,
                    "oauth2.refresh_token",
                    self.refresh_token.as_ref().expect("checked at compile"),
                )?,
            }),
        };

        let mut form: Vec<(&str, &str)> = Vec::with_capacity(6);
        match &refresh {
            None => form.push(("grant_type", "client_credentials")),
            Some(r) => {
                form.push(("grant_type", "refresh_token"));
                form.push(("refresh_token", r));
            }
        }
        if let Some(s) = &self.scope {
            form.push(("scope", s));
        }
        if let Some(a) = &self.audience {
            form.push(("audience", a));
        }
        let mut basic = None;
        match (&secret, self.method) {
            (Some(s), ClientAuthMethod::Basic) => {
                use base64::Engine as _;
                let pair =
                    Zeroizing::new(format!("{}:{}", form_encode(&client_id), form_encode(s)));
                let mut v = HeaderValue::from_str(&format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(pair.as_bytes())
                ))
                .map_err(|_| AuthError::Value {
                    field: "oauth2.client_secret",
                    message: "not valid in an HTTP header".into(),
                })?;
                v.set_sensitive(true);
                basic = Some(v);
            }
            (Some(s), ClientAuthMethod::Post) => {
                form.push(("client_id", &client_id));
                form.push(("client_secret", s));
            }
            // A public client names itself in the body (RFC 6749 §3.2.1).
            (None, _) => form.push(("client_id", &client_id)),
        }
        let body = Zeroizing::new(
            url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs(&form)
                .finish(),
        );
        let mut req = http
            .post(self.token_url.clone())
            .header(ACCEPT, "application/json")
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .timeout(TOKEN_TIMEOUT)
            .body(body.as_bytes().to_vec());
        if let Some(v) = basic {
            req = req.header(AUTHORIZATION, v);
        }
        // Anything the server echoes back is scrubbed of what was sent.
        let secrets: Vec<&str> = secret
            .iter()
            .chain(refresh.iter())
            .map(|s| s.as_str())
            .collect();
        let scrub = |text: &str| -> String {
            let mut t: String = text.chars().take(300).collect();
            for s in &secrets {
                if !s.is_empty() {
                    t = t.replace(s, super::MASK);
                }
            }
            t
        };

        let resp = req.send().await.map_err(|e| AuthError::TokenUnreachable {
            url: url.clone(),
            reason: if e.is_timeout() {
                format!(
                    "no answer within {}",
                    humantime::format_duration(TOKEN_TIMEOUT)
                )
            } else {
                scrub(&chain(&e))
            },
        })?;
        let status = resp.status();
        let bytes = read_limited(resp)
            .await
            .map_err(|reason| AuthError::TokenUnreachable {
                url: url.clone(),
                reason,
            })?;
        if !status.is_success() {
            let e: ErrorResponse = serde_json::from_slice(&bytes).unwrap_or_default();
            return Err(AuthError::TokenRejected {
                url,
                status: status.as_u16(),
                error: e.error.map(|s| scrub(&s)),
                description: e.error_description.map(|s| scrub(&s)),
            });
        }
        let bytes = Zeroizing::new(bytes);
        let parsed: TokenResponse =
            serde_json::from_slice(&bytes).map_err(|e| AuthError::TokenResponse {
                url: url.clone(),
                reason: format!(
                    "expected JSON with `access_token` ({})",
                    scrub(&e.to_string())
                ),
            })?;
        if let Some(tt) = &parsed.token_type
            && !tt.eq_ignore_ascii_case("bearer")
        {
            return Err(AuthError::TokenResponse {
                url,
                reason: format!("unsupported token_type `{}`; expected `Bearer`", scrub(tt)),
            });
        }
        if parsed.access_token.is_empty() {
            return Err(AuthError::TokenResponse {
                url,
                reason: "`access_token` is empty".into(),
            });
        }
        // Some servers send `"3600"`; a non-positive or unreadable lifetime means "until
        // refused" would be wrong, so it counts as already due (used once, then refetched).
        let lifetime = match &parsed.expires_in {
            None | Some(serde_json::Value::Null) => None,
            Some(v) => Some(
                v.as_f64()
                    .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
                    .filter(|s| s.is_finite() && *s > 0.0)
                    .map(|s| Duration::from_secs_f64(s.min(10.0 * 365.0 * 86_400.0)))
                    .unwrap_or(Duration::ZERO),
            ),
        };
        let now = Instant::now();
        let mut c = self.cache();
        c.generation += 1;
        let token = Arc::new(Token {
            access: Zeroizing::new(parsed.access_token),
            refresh_at: lifetime.map(|l| now + l - margin(l)),
            generation: c.generation,
        });
        if self.grant == OAuth2Grant::RefreshToken
            && let Some(r) = parsed.refresh_token
            && !r.is_empty()
        {
            c.rotated = Some(Zeroizing::new(r));
        }
        c.token = Some(token.clone());
        c.failure = None;
        Ok(token)
    }
}

async fn read_limited(mut resp: reqwest::Response) -> Result<Vec<u8>, String> {
    let mut buf = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| format!("reading the answer failed: {}", chain(&e)))?
    {
        if buf.len() + chunk.len() > MAX_TOKEN_RESPONSE {
            return Err(format!("the answer exceeds {MAX_TOKEN_RESPONSE} bytes"));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::super::tests::auth;

    #[test]
    fn grants_and_urls_are_checked_at_load() {
        let e = auth("oauth2: { token_url: 'not a url', client_id: c }").unwrap_err();
        assert_eq!(
            e.to_string(),
            "`oauth2.token_url`: invalid URL `not a url`; expected an absolute http(s) URL"
        );
        let e = auth("oauth2: { grant: refresh_token, token_url: 'https://id/t', client_id: c }")
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "`oauth2`: `grant: refresh_token` needs `refresh_token`"
        );
        assert!(auth("oauth2: { token_url: 'https://id/t', client_id: c, auth_method: post, scopes: [a, b], audience: x }").is_ok());
        assert_eq!(super::form_encode("a b:c"), "a+b%3Ac");
    }
}
