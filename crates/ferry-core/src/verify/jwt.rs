//! `jwt`: a bearer token signed with a static key (PEM public key or shared HMAC secret) or
//! with a key from a JWKS URL.
//!
//! The token's `alg` must be in the accepted list and of the key's type: an `HS256` token is
//! never checked against an RSA or EC public key (algorithm confusion: the public key's PEM,
//! which anyone has, would be the HMAC secret), and `none` is never accepted. `exp` is
//! required; `exp`, `nbf`, `iss` and `aud` are checked here against the caller's clock, not by
//! `jsonwebtoken` against the system clock, so tests and the engine share one time.
//!
//! The JWKS is fetched on first use, again when a token names an unknown `kid` (key rotation)
//! or the keys are older than `jwks_max_age`, but never more often than once per
//! `jwks_min_interval`: a flood of tokens with made-up `kid`s costs one fetch per interval.

use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jsonwebtoken::jwk::{AlgorithmParameters, Jwk};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value as Json;
use sha2::{Digest, Sha256};

use super::{
    Inbound, Rejection, Resolve, Verified, VerifyConfig, b64_url, header, header_name, shorten,
};
use crate::flow::model::ValueSource;

/// Largest JWKS document read.
const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// Time limit of one JWKS fetch.
const JWKS_TIMEOUT: Duration = Duration::from_secs(10);

pub(super) struct Jwt {
    source: Source,
    /// As configured; `None` means every algorithm of the key's type.
    algorithms: Option<Vec<Algorithm>>,
    issuer: Option<String>,
    audience: Option<String>,
    leeway: u64,
    header: String,
}

enum Source {
    Static {
        key: ValueSource,
        /// Parsed at compile time when the key is a literal.
        literal: Option<Arc<Key>>,
        /// The last resolved key, by the SHA-256 of its text, so a PEM is not parsed per
        /// request; a changed value (rotation) is parsed again.
        cache: Mutex<Option<([u8; 32], Arc<Key>)>>,
    },
    Jwks(Jwks),
}

/// A usable verification key.
struct Key {
    key: DecodingKey,
    family: AlgorithmFamily,
    kid: Option<String>,
    /// The JWK's own `alg`, when it names one.
    alg: Option<Algorithm>,
}

struct Jwks {
    url: String,
    min_interval: i64,
    max_age: i64,
    state: Mutex<JwksState>,
    /// One fetch at a time; the others wait and then use its result.
    fetching: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct JwksState {
    keys: Vec<Arc<Key>>,
    /// When the keys in `keys` were fetched (unix seconds).
    fetched_at: Option<i64>,
    /// When the last fetch started, successful or not: the pacing clock.
    attempted_at: Option<i64>,
    last_error: Option<String>,
}

/// What the token's header says, read before any key is chosen.
struct TokenHeader {
    alg: Algorithm,
    kid: Option<String>,
}

impl Jwt {
    pub(super) fn compile(cfg: &VerifyConfig) -> Result<Jwt, String> {
        let algorithms = match &cfg.algorithms {
            None => None,
            Some(list) if list.is_empty() => {
                return Err("`algorithms` is empty; omit it to accept the key's own".into());
            }
            Some(list) => Some(
                list.iter()
                    .map(|a| parse_alg(a))
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        let source = match (&cfg.key, &cfg.jwks_url) {
            (Some(_), Some(_)) => {
                return Err("scheme `jwt` takes `key` or `jwks_url`, not both".into());
            }
            (None, None) => {
                return Err(
                    "scheme `jwt` needs `key` (a PEM public key or shared secret) or `jwks_url`"
                        .into(),
                );
            }
            (Some(key), None) => {
                if cfg.jwks_min_interval.is_some() || cfg.jwks_max_age.is_some() {
                    return Err("`jwks_min_interval` and `jwks_max_age` need `jwks_url`".into());
                }
                let literal = match key {
                    ValueSource::Literal(text) => {
                        Some(Arc::new(parse_key(text, algorithms.as_deref())?))
                    }
                    _ => None,
                };
                Source::Static {
                    key: key.clone(),
                    literal,
                    cache: Mutex::new(None),
                }
            }
            (None, Some(url)) => {
                let parsed = url::Url::parse(url)
                    .map_err(|e| format!("`jwks_url` `{url}` is not a URL: {e}"))?;
                if !matches!(parsed.scheme(), "https" | "http") {
                    return Err(format!("`jwks_url` `{url}` is not an http(s) URL"));
                }
                if let Some(hs) = algorithms
                    .iter()
                    .flatten()
                    .find(|a| a.family() == AlgorithmFamily::Hmac)
                {
                    return Err(format!(
                        "algorithm `{hs:?}` needs a shared `key`; a JWKS holds public keys"
                    ));
                }
                let secs = |d: Option<crate::flow::model::Dur>, default: u64| {
                    i64::try_from(d.map_or(default, |d| d.0.as_secs())).unwrap_or(i64::MAX)
                };
                Source::Jwks(Jwks {
                    url: url.clone(),
                    min_interval: secs(cfg.jwks_min_interval, 30),
                    max_age: secs(cfg.jwks_max_age, 3600),
                    state: Mutex::new(JwksState::default()),
                    fetching: tokio::sync::Mutex::new(()),
                })
            }
        };
        let header = match &cfg.header {
            Some(h) => header_name("header", h)?,
            None => "authorization".into(),
        };
        Ok(Jwt {
            source,
            algorithms,
            issuer: cfg.issuer.clone(),
            audience: cfg.audience.clone(),
            leeway: cfg.leeway.map_or(60, |d| d.0.as_secs()),
            header,
        })
    }

    pub(super) fn secret_sources(&self) -> Vec<&ValueSource> {
        match &self.source {
            Source::Static { key, .. } => vec![key],
            Source::Jwks(_) => Vec::new(),
        }
    }

    pub(super) async fn verify(
        &self,
        req: &Inbound<'_>,
        resolve: &Resolve<'_>,
        now: i64,
        http: &reqwest::Client,
    ) -> Result<Verified, Rejection> {
        let Source::Jwks(jwks) = &self.source else {
            return self.verify_cached(req, resolve, now);
        };
        let token = self.token(req)?;
        let th = read_header(token)?;
        let keys = jwks.keys_for(&th, now, http).await?;
        self.check(token, &th, &keys, now)
    }

    /// Verifies without fetching: a static key, or a JWKS already cached.
    pub(super) fn verify_cached(
        &self,
        req: &Inbound<'_>,
        resolve: &Resolve<'_>,
        now: i64,
    ) -> Result<Verified, Rejection> {
        let keys = match &self.source {
            Source::Static { .. } => vec![self.static_key(resolve)?],
            Source::Jwks(_) => Vec::new(),
        };
        let token = self.token(req)?;
        let th = read_header(token)?;
        let keys = match &self.source {
            Source::Jwks(jwks) => {
                let found = jwks.cached(&th);
                if found.is_empty() {
                    return Err(Rejection::KeysUnavailable(format!(
                        "no cached key from `{}` fits the token",
                        jwks.url
                    )));
                }
                found
            }
            Source::Static { .. } => keys,
        };
        self.check(token, &th, &keys, now)
    }

    fn static_key(&self, resolve: &Resolve<'_>) -> Result<Arc<Key>, Rejection> {
        let Source::Static {
            key,
            literal,
            cache,
        } = &self.source
        else {
            unreachable!("static_key is called for a static key only")
        };
        if let Some(k) = literal {
            return Ok(k.clone());
        }
        let text = resolve(key)
            .map_err(|e| Rejection::SecretUnavailable(format!("`key` cannot be used: {e}")))?;
        let digest: [u8; 32] = Sha256::digest(text.as_bytes()).into();
        if let Some((d, k)) = &*cache.lock().unwrap_or_else(|p| p.into_inner())
            && *d == digest
        {
            return Ok(k.clone());
        }
        let parsed = Arc::new(
            parse_key(&text, self.algorithms.as_deref()).map_err(Rejection::SecretUnavailable)?,
        );
        *cache.lock().unwrap_or_else(|p| p.into_inner()) = Some((digest, parsed.clone()));
        Ok(parsed)
    }

    /// The token from the configured header, without `Bearer `.
    fn token<'a>(&self, req: &Inbound<'a>) -> Result<&'a str, Rejection> {
        let value = header(req, &self.header)?;
        let token = match value.get(..7) {
            Some(p) if p.eq_ignore_ascii_case("bearer ") => value[7..].trim(),
            _ if self.header == "authorization" => {
                return Err(Rejection::Malformed(
                    "header `authorization` is not `Bearer …`".into(),
                ));
            }
            _ => value,
        };
        if token.is_empty() {
            return Err(Rejection::Malformed(format!(
                "header `{}` holds no token",
                self.header
            )));
        }
        Ok(token)
    }

    /// Checks the signature with each candidate key, then the claims.
    fn check(
        &self,
        token: &str,
        th: &TokenHeader,
        keys: &[Arc<Key>],
        now: i64,
    ) -> Result<Verified, Rejection> {
        let mut result = Err(Rejection::BadSignature);
        for key in keys {
            // Never let the token pick a verification the key was not made for.
            if th.alg.family() != key.family {
                result = Err(Rejection::InvalidToken(format!(
                    "algorithm `{:?}` does not fit the key, which is {}",
                    th.alg,
                    family_name(key.family)
                )));
                continue;
            }
            let allowed = match &self.algorithms {
                Some(list) => list.contains(&th.alg),
                None => true,
            };
            if !allowed || key.alg.is_some_and(|a| a != th.alg) {
                result = Err(Rejection::InvalidToken(format!(
                    "algorithm `{:?}` is not accepted",
                    th.alg
                )));
                continue;
            }
            let mut v = Validation::new(th.alg);
            v.required_spec_claims.clear();
            v.validate_exp = false;
            v.validate_nbf = false;
            v.validate_aud = false;
            match jsonwebtoken::decode::<Json>(token, &key.key, &v) {
                Ok(data) => {
                    let claims = data.claims;
                    self.check_claims(&claims, now)?;
                    return Ok(Verified {
                        subject: claims.get("sub").and_then(Json::as_str).map(str::to_owned),
                        claims: Some(claims),
                        secret_index: None,
                    });
                }
                Err(e) => {
                    use jsonwebtoken::errors::ErrorKind;
                    result = Err(match e.kind() {
                        ErrorKind::InvalidSignature => Rejection::BadSignature,
                        ErrorKind::Json(_) | ErrorKind::Base64(_) | ErrorKind::Utf8(_) => {
                            Rejection::Malformed("token is not a well-formed JWT".into())
                        }
                        _ => Rejection::InvalidToken(format!("{e}")),
                    });
                }
            }
        }
        result
    }

    fn check_claims(&self, claims: &Json, now: i64) -> Result<(), Rejection> {
        let bad = |m: String| Err(Rejection::InvalidToken(m));
        if !claims.is_object() {
            return bad("the claims are not a JSON object".into());
        }
        let time = |name: &str| -> Result<Option<i64>, Rejection> {
            match claims.get(name) {
                None => Ok(None),
                Some(v) => match v.as_i64().or_else(|| v.as_f64().map(|f| f as i64)) {
                    Some(t) => Ok(Some(t)),
                    None => Err(Rejection::InvalidToken(format!(
                        "claim `{name}` is not a number of seconds"
                    ))),
                },
            }
        };
        let leeway = i64::try_from(self.leeway).unwrap_or(i64::MAX);
        let Some(exp) = time("exp")? else {
            return bad("no `exp` claim; tokens must expire".into());
        };
        if now.saturating_sub(exp) > leeway {
            return bad(format!(
                "expired {} s ago; leeway is {} s",
                now.saturating_sub(exp),
                self.leeway
            ));
        }
        if let Some(nbf) = time("nbf")?
            && nbf.saturating_sub(now) > leeway
        {
            return bad(format!(
                "not valid for another {} s (`nbf`); leeway is {} s",
                nbf.saturating_sub(now),
                self.leeway
            ));
        }
        if let Some(want) = &self.issuer {
            match claims.get("iss").and_then(Json::as_str) {
                Some(got) if got == want => {}
                Some(got) => {
                    return bad(format!("issuer is `{}`; expected `{want}`", shorten(got)));
                }
                None => return bad(format!("no `iss` claim; expected `{want}`")),
            }
        }
        if let Some(want) = &self.audience {
            let ok = match claims.get("aud") {
                Some(Json::String(a)) => a == want,
                Some(Json::Array(list)) => list.iter().any(|a| a.as_str() == Some(want)),
                None => return bad(format!("no `aud` claim; expected `{want}`")),
                Some(_) => false,
            };
            if !ok {
                return bad(format!("audience does not include `{want}`"));
            }
        }
        Ok(())
    }
}

impl Jwks {
    /// Keys in the cache that fit the token: by `kid`, or every key of the algorithm's type
    /// when the token names none.
    fn cached(&self, th: &TokenHeader) -> Vec<Arc<Key>> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state
            .keys
            .iter()
            .filter(|k| match &th.kid {
                Some(kid) => k.kid.as_deref() == Some(kid.as_str()),
                None => k.family == th.alg.family(),
            })
            .cloned()
            .collect()
    }

    fn fresh(&self, now: i64) -> bool {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state
            .fetched_at
            .is_some_and(|t| now.saturating_sub(t) < self.max_age)
    }

    fn may_fetch(&self, now: i64) -> bool {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state
            .attempted_at
            .is_none_or(|t| now.saturating_sub(t) >= self.min_interval || now < t)
    }

    async fn keys_for(
        &self,
        th: &TokenHeader,
        now: i64,
        http: &reqwest::Client,
    ) -> Result<Vec<Arc<Key>>, Rejection> {
        let found = self.cached(th);
        if !found.is_empty() && self.fresh(now) {
            return Ok(found);
        }
        if self.may_fetch(now) {
            let _one = self.fetching.lock().await;
            // Another request may have fetched while this one waited.
            if self.may_fetch(now) {
                self.state
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .attempted_at = Some(now);
                let fetched = self.fetch(http).await;
                let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
                match fetched {
                    Ok(keys) => {
                        state.keys = keys;
                        state.fetched_at = Some(now);
                        state.last_error = None;
                    }
                    // Keys already cached stay usable while the JWKS is down.
                    Err(e) => state.last_error = Some(e),
                }
            }
        }
        let found = self.cached(th);
        if !found.is_empty() {
            return Ok(found);
        }
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match (&state.last_error, &th.kid) {
            (Some(e), _) if state.keys.is_empty() => Err(Rejection::KeysUnavailable(e.clone())),
            (_, Some(kid)) => Err(Rejection::InvalidToken(format!(
                "unknown key id `{}`",
                shorten(kid)
            ))),
            (_, None) => Err(Rejection::InvalidToken(format!(
                "no `kid` in the token and no {} in the JWKS",
                family_name(th.alg.family())
            ))),
        }
    }

    async fn fetch(&self, http: &reqwest::Client) -> Result<Vec<Arc<Key>>, String> {
        let url = &self.url;
        let mut resp = http
            .get(url)
            .timeout(JWKS_TIMEOUT)
            .send()
            .await
            .map_err(|e| format!("fetching `{url}` failed: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("`{url}` answered {}", resp.status()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| format!("reading `{url}` failed: {e}"))?
        {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(format!("`{url}` sent more than {MAX_JWKS_BYTES} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        parse_jwks(&body).map_err(|e| format!("`{url}`: {e}"))
    }
}

/// The usable public keys of a JWKS document; symmetric (`oct`) keys and keys this library
/// cannot read are skipped.
fn parse_jwks(body: &[u8]) -> Result<Vec<Arc<Key>>, String> {
    #[derive(Deserialize)]
    struct Set {
        keys: Vec<Json>,
    }
    let set: Set = serde_json::from_slice(body)
        .map_err(|e| format!("not a JWKS document (`{{\"keys\": [...]}}`): {e}"))?;
    let keys: Vec<Arc<Key>> = set
        .keys
        .into_iter()
        .filter_map(|v| serde_json::from_value::<Jwk>(v).ok())
        .filter_map(|jwk| {
            let family = match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => AlgorithmFamily::Rsa,
                AlgorithmParameters::EllipticCurve(_) => AlgorithmFamily::Ec,
                AlgorithmParameters::OctetKeyPair(_) => AlgorithmFamily::Ed,
                // A shared secret has no place in a published key set.
                _ => return None,
            };
            let alg = match jwk.common.key_algorithm {
                Some(a) => Some(Algorithm::from_str(&a.to_string()).ok()?),
                None => None,
            };
            if alg.is_some_and(|a| a.family() != family) {
                return None;
            }
            let key = DecodingKey::from_jwk(&jwk).ok()?;
            Some(Arc::new(Key {
                key,
                family,
                kid: jwk.common.key_id,
                alg,
            }))
        })
        .collect();
    if keys.is_empty() {
        return Err("the JWKS holds no usable RSA, EC or Ed25519 key".into());
    }
    Ok(keys)
}

/// Reads the token's `alg` and `kid` before choosing a key, refusing `none` by name.
fn read_header(token: &str) -> Result<TokenHeader, Rejection> {
    let malformed =
        || Rejection::Malformed("token is not a JWT (`HEADER.PAYLOAD.SIGNATURE`)".into());
    let mut parts = token.split('.');
    let (Some(head), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed());
    };
    #[derive(Deserialize)]
    struct Head {
        alg: String,
        #[serde(default)]
        kid: Option<String>,
    }
    let bytes = b64_url(head).ok_or_else(malformed)?;
    let h: Head = serde_json::from_slice(&bytes).map_err(|_| malformed())?;
    if h.alg.eq_ignore_ascii_case("none") {
        return Err(Rejection::InvalidToken(
            "algorithm `none` (an unsigned token) is never accepted".into(),
        ));
    }
    let alg = Algorithm::from_str(&h.alg).map_err(|_| {
        Rejection::InvalidToken(format!("unsupported algorithm `{}`", shorten(&h.alg)))
    })?;
    Ok(TokenHeader { alg, kid: h.kid })
}

fn parse_alg(name: &str) -> Result<Algorithm, String> {
    if name.eq_ignore_ascii_case("none") {
        return Err("algorithm `none` (unsigned tokens) is never accepted".into());
    }
    Algorithm::from_str(name).map_err(|_| {
        format!(
            "unknown algorithm `{name}`; expected one of HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA"
        )
    })
}

fn family_name(f: AlgorithmFamily) -> &'static str {
    match f {
        AlgorithmFamily::Hmac => "a shared secret",
        AlgorithmFamily::Rsa => "an RSA public key",
        AlgorithmFamily::Ec => "an EC public key",
        AlgorithmFamily::Ed => "an Ed25519 public key",
    }
}

/// A static `key:` value: a PEM public key, or else a shared HMAC secret. Text that looks like
/// PEM is never used as an HMAC secret.
fn parse_key(text: &str, algorithms: Option<&[Algorithm]>) -> Result<Key, String> {
    let t = text.trim();
    let (key, family) = if t.starts_with("-----BEGIN") {
        if t.contains("PRIVATE KEY") {
            return Err("`key` is a private key; configure the public key".into());
        }
        let b = t.as_bytes();
        if let Ok(k) = DecodingKey::from_rsa_pem(b) {
            (k, AlgorithmFamily::Rsa)
        } else if let Ok(k) = DecodingKey::from_ec_pem(b) {
            (k, AlgorithmFamily::Ec)
        } else if let Ok(k) = DecodingKey::from_ed_pem(b) {
            (k, AlgorithmFamily::Ed)
        } else {
            return Err("`key` is PEM but not an RSA, EC or Ed25519 public key".into());
        }
    } else {
        if t.is_empty() {
            return Err("`key` is empty".into());
        }
        (
            DecodingKey::from_secret(t.as_bytes()),
            AlgorithmFamily::Hmac,
        )
    };
    if let Some(bad) = algorithms
        .into_iter()
        .flatten()
        .find(|a| a.family() != family)
    {
        return Err(format!(
            "algorithm `{bad:?}` does not fit `key`, which is {}",
            family_name(family)
        ));
    }
    Ok(Key {
        key,
        family,
        kid: None,
        alg: None,
    })
}

#[cfg(test)]
mod tests;
