//! `jwt`: a JWT signed by Ferry, sent with each request and re-signed shortly before it
//! expires.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::header::{AUTHORIZATION, HeaderName};
use serde_json::{Map, Value as Json};
use zeroize::Zeroizing;

use super::{AuthError, Resolver, header_name, resolve_field};
use crate::flow::model::{JwtAlgorithm, JwtAuth, ValueSource};

const DEFAULT_TTL: Duration = Duration::from_secs(300);

pub(super) struct Jwt {
    algorithm: JwtAlgorithm,
    key: ValueSource,
    claims: Vec<(String, String)>,
    ttl: Duration,
    pub(super) header: HeaderName,
    scheme: String,
    kid: Option<String>,
    /// The token and when to stop using it.
    cache: Mutex<Option<(Zeroizing<String>, Instant)>>,
}

fn algorithm(a: JwtAlgorithm) -> Algorithm {
    match a {
        JwtAlgorithm::HS256 => Algorithm::HS256,
        JwtAlgorithm::HS384 => Algorithm::HS384,
        JwtAlgorithm::HS512 => Algorithm::HS512,
        JwtAlgorithm::RS256 => Algorithm::RS256,
        JwtAlgorithm::RS384 => Algorithm::RS384,
        JwtAlgorithm::RS512 => Algorithm::RS512,
        JwtAlgorithm::PS256 => Algorithm::PS256,
        JwtAlgorithm::PS384 => Algorithm::PS384,
        JwtAlgorithm::PS512 => Algorithm::PS512,
        JwtAlgorithm::ES256 => Algorithm::ES256,
        JwtAlgorithm::ES384 => Algorithm::ES384,
        JwtAlgorithm::EdDSA => Algorithm::EdDSA,
    }
}

/// How long before expiry a cached credential is replaced: 10% of its lifetime, at most 30s,
/// so a token is never sent in its last moments (clock skew, slow networks).
pub(super) fn margin(lifetime: Duration) -> Duration {
    (lifetime / 10).min(Duration::from_secs(30))
}

fn encoding_key(algorithm: JwtAlgorithm, key: &str) -> Result<EncodingKey, AuthError> {
    let bad = |what: &str, e: jsonwebtoken::errors::Error| AuthError::Value {
        field: "jwt.key",
        message: format!("not {what} ({e})"),
    };
    use JwtAlgorithm as A;
    match algorithm {
        A::HS256 | A::HS384 | A::HS512 => Ok(EncodingKey::from_secret(key.as_bytes())),
        A::RS256 | A::RS384 | A::RS512 | A::PS256 | A::PS384 | A::PS512 => {
            EncodingKey::from_rsa_pem(key.as_bytes()).map_err(|e| bad("a PEM RSA private key", e))
        }
        A::ES256 | A::ES384 => EncodingKey::from_ec_pem(key.as_bytes())
            .map_err(|e| bad("a PEM PKCS#8 EC private key", e)),
        A::EdDSA => EncodingKey::from_ed_pem(key.as_bytes())
            .map_err(|e| bad("a PEM PKCS#8 Ed25519 private key", e)),
    }
}

impl Jwt {
    pub(super) fn compile(c: &JwtAuth) -> Result<Jwt, AuthError> {
        for (k, _) in &c.claims.0 {
            if k == "iat" || k == "exp" {
                return Err(AuthError::Config(format!(
                    "`jwt.claims`: `{k}` is added by Ferry from `ttl`; remove it"
                )));
            }
        }
        let ttl = c.ttl.map(|d| d.0).unwrap_or(DEFAULT_TTL);
        if ttl < Duration::from_secs(1) {
            return Err(AuthError::Config("`jwt.ttl` must be at least 1s".into()));
        }
        let j = Jwt {
            algorithm: c.algorithm,
            key: c.key.clone(),
            claims: c.claims.0.clone(),
            ttl,
            header: match &c.header {
                Some(h) => header_name("jwt.header", h)?,
                None => AUTHORIZATION,
            },
            scheme: c.scheme.clone().unwrap_or_else(|| "Bearer".into()),
            kid: c.kid.clone(),
            cache: Mutex::new(None),
        };
        if let ValueSource::Literal(k) = &j.key {
            encoding_key(j.algorithm, k)?;
        }
        Ok(j)
    }

    /// The header's value: `SCHEME TOKEN`, or the bare token when the scheme is empty.
    pub(super) fn header_value(&self, token: &str) -> Zeroizing<String> {
        Zeroizing::new(if self.scheme.trim().is_empty() {
            token.to_owned()
        } else {
            format!("{} {token}", self.scheme.trim())
        })
    }

    /// The cached token, or a new one when it is close to expiry.
    pub(super) fn token(&self, resolve: &Resolver<'_>) -> Result<Zeroizing<String>, AuthError> {
        let now = Instant::now();
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((t, until)) = cache.as_ref()
            && now < *until
        {
            return Ok(t.clone());
        }
        let key = resolve_field(resolve, "jwt.key", &self.key)?;
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let token = Zeroizing::new(self.sign(&key, unix)?);
        *cache = Some((token.clone(), now + self.ttl - margin(self.ttl)));
        Ok(token)
    }

    fn sign(&self, key: &str, iat: u64) -> Result<String, AuthError> {
        let key = encoding_key(self.algorithm, key)?;
        let mut claims = Map::new();
        for (k, v) in &self.claims {
            claims.insert(k.clone(), Json::String(v.clone()));
        }
        claims.insert("iat".into(), iat.into());
        claims.insert("exp".into(), (iat + self.ttl.as_secs()).into());
        let mut header = Header::new(algorithm(self.algorithm));
        header.kid = self.kid.clone();
        jsonwebtoken::encode(&header, &claims, &key).map_err(|e| AuthError::Sign(e.to_string()))
    }

    pub(super) fn sensitive_values(&self) -> Vec<Zeroizing<String>> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        match cache.as_ref() {
            Some((t, _)) => vec![t.clone(), self.header_value(t)],
            None => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{DecodingKey, Validation, decode, decode_header};

    use super::super::tests::{apply, auth, request};
    use super::*;

    /// A fresh key pair as (private PKCS#8 PEM, public PEM); made per test, so no private
    /// key sits in the repository.
    fn key_pair(alg: &'static rcgen::SignatureAlgorithm) -> (String, String) {
        let kp = rcgen::KeyPair::generate_for(alg).unwrap();
        (kp.serialize_pem(), kp.public_key_pem())
    }

    fn yaml(alg: &str, key: &str, extra: &str) -> String {
        let key = serde_json::to_string(key).unwrap();
        format!(
            "jwt: {{ algorithm: {alg}, key: {key}, claims: {{ iss: ferry, sub: svc-1, aud: crm }}{extra} }}"
        )
    }

    async fn token_of(yaml: &str) -> (String, Auth) {
        let a = auth(yaml).unwrap();
        let mut req = request("GET", "https://api.example/", "");
        apply(&a, &mut req).await.unwrap();
        let v = req.headers()["authorization"].to_str().unwrap().to_owned();
        (v, a)
    }

    use super::super::Auth;

    fn check(token: &str, alg: Algorithm, key: &DecodingKey) -> Map<String, Json> {
        let mut v = Validation::new(alg);
        v.set_audience(&["crm"]);
        v.set_issuer(&["ferry"]);
        let data = decode::<Map<String, Json>>(token, key, &v).unwrap();
        assert_eq!(data.header.alg, alg);
        data.claims
    }

    #[tokio::test]
    async fn rs256_tokens_verify_with_the_public_key_and_carry_the_claims() {
        let (key, public) = key_pair(&rcgen::PKCS_RSA_SHA256);
        let (value, a) = token_of(&yaml("RS256", &key, ", ttl: 10m, kid: k1")).await;
        let token = value.strip_prefix("Bearer ").unwrap();
        let public = DecodingKey::from_rsa_pem(public.as_bytes()).unwrap();
        let claims = check(token, Algorithm::RS256, &public);
        assert_eq!(claims["sub"], "svc-1");
        let (iat, exp) = (
            claims["iat"].as_u64().unwrap(),
            claims["exp"].as_u64().unwrap(),
        );
        assert_eq!(exp - iat, 600);
        assert_eq!(decode_header(token).unwrap().kid.as_deref(), Some("k1"));
        // Cached: the same token again, and reported for masking.
        let mut req = request("GET", "https://api.example/", "");
        apply(&a, &mut req).await.unwrap();
        assert_eq!(req.headers()["authorization"], value.as_str());
        assert!(a.sensitive_values().iter().any(|s| **s == *token));
    }

    #[tokio::test]
    async fn es256_and_hs256_sign_and_the_header_and_scheme_are_configurable() {
        let (key, public) = key_pair(&rcgen::PKCS_ECDSA_P256_SHA256);
        let (value, _) = token_of(&yaml("ES256", &key, "")).await;
        let token = value.strip_prefix("Bearer ").unwrap();
        let public = DecodingKey::from_ec_pem(public.as_bytes()).unwrap();
        check(token, Algorithm::ES256, &public);

        let a = auth(&yaml("HS256", "shh", ", header: X-Assertion, scheme: ''")).unwrap();
        let mut req = request("GET", "https://api.example/", "");
        apply(&a, &mut req).await.unwrap();
        let token = req.headers()["x-assertion"].to_str().unwrap();
        let claims = check(token, Algorithm::HS256, &DecodingKey::from_secret(b"shh"));
        assert_eq!(claims["iss"], "ferry");
        assert!(req.headers().get("authorization").is_none());
    }

    #[test]
    fn bad_keys_and_reserved_claims_are_load_errors() {
        let e = auth(&yaml("RS256", "not a key", "")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("`jwt.key`: not a PEM RSA private key"),
            "{e}"
        );
        let (rsa, _) = key_pair(&rcgen::PKCS_RSA_SHA256);
        let e = auth(&yaml("ES256", &rsa, "")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("`jwt.key`: not a PEM PKCS#8 EC private key"),
            "{e}"
        );
        assert!(!e.to_string().contains("PRIVATE"), "{e}");
        let e = auth("jwt: { algorithm: HS256, key: k, claims: { exp: '1' } }").unwrap_err();
        assert_eq!(
            e.to_string(),
            "`jwt.claims`: `exp` is added by Ferry from `ttl`; remove it"
        );
        assert_eq!(margin(Duration::from_secs(3600)), Duration::from_secs(30));
        assert_eq!(margin(Duration::from_secs(60)), Duration::from_secs(6));
    }
}
