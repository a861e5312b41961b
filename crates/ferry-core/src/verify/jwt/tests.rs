use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::json;
use zeroize::Zeroizing;

use crate::flow::model::ValueSource;
use crate::verify::tests::{NOW, check, compile, compile_err, headers, resolve};
use crate::verify::{Inbound, Rejection, Verified, Verifier};

const RSA_PRIVATE: &str = include_str!("../testdata/test-only-rsa-private.pem");
const RSA_PUBLIC: &str = include_str!("../testdata/test-only-rsa-public.pem");
const RSA2_PRIVATE: &str = include_str!("../testdata/test-only-rsa2-private.pem");
const EC_PRIVATE: &str = include_str!("../testdata/test-only-ec-private.pem");
const EC_PUBLIC: &str = include_str!("../testdata/test-only-ec-public.pem");
const ED_PRIVATE: &str = include_str!("../testdata/test-only-ed25519-private.pem");
const ED_PUBLIC: &str = include_str!("../testdata/test-only-ed25519-public.pem");
const HS_SECRET: &str = "a-shared-secret-of-at-least-32-bytes!";

fn claims() -> serde_json::Value {
    json!({"sub": "alice", "iss": "https://id.example.com", "aud": ["ferry", "other"], "exp": NOW + 600})
}

fn token(
    alg: Algorithm,
    key: &EncodingKey,
    kid: Option<&str>,
    claims: &serde_json::Value,
) -> String {
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_owned);
    encode(&h, claims, key).unwrap()
}

fn rsa() -> EncodingKey {
    EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap()
}

/// A `verify:` block with a PEM (JSON strings are YAML double-quoted scalars).
fn with_key(key: &str, extra: &str) -> Verifier {
    compile(&format!(
        "scheme: jwt\nkey: {}\n{extra}",
        serde_json::to_string(key).unwrap()
    ))
}

fn bearer(v: &Verifier, tok: &str, now: i64) -> Result<Verified, Rejection> {
    check(v, &[("authorization", &format!("Bearer {tok}"))], b"", now)
}

#[test]
fn hs256_with_a_shared_secret_verifies_and_gives_sub_and_claims() {
    let v = compile(&format!("scheme: jwt\nkey: {HS_SECRET}\n"));
    let key = EncodingKey::from_secret(HS_SECRET.as_bytes());
    let tok = token(Algorithm::HS256, &key, None, &claims());
    let ok = bearer(&v, &tok, NOW).unwrap();
    assert_eq!(ok.subject.as_deref(), Some("alice"));
    assert_eq!(ok.claims.unwrap()["iss"], "https://id.example.com");
    // A lower-case scheme word is fine too.
    assert!(check(&v, &[("authorization", &format!("bearer {tok}"))], b"", NOW).is_ok());
    // Wrong secret; a payload swapped under the signature.
    let other = token(
        Algorithm::HS256,
        &EncodingKey::from_secret(b"another secret"),
        None,
        &claims(),
    );
    assert_eq!(bearer(&v, &other, NOW), Err(Rejection::BadSignature));
    let forged_payload = B64URL.encode(json!({"sub": "mallory", "exp": NOW + 600}).to_string());
    let parts: Vec<&str> = tok.split('.').collect();
    let forged = format!("{}.{forged_payload}.{}", parts[0], parts[2]);
    assert_eq!(bearer(&v, &forged, NOW), Err(Rejection::BadSignature));
}

#[test]
fn rs256_es256_and_eddsa_verify_with_static_pem_public_keys() {
    for (public, private, alg) in [
        (RSA_PUBLIC, rsa(), Algorithm::RS256),
        (RSA_PUBLIC, rsa(), Algorithm::PS256),
        (
            EC_PUBLIC,
            EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).unwrap(),
            Algorithm::ES256,
        ),
        (
            ED_PUBLIC,
            EncodingKey::from_ed_pem(ED_PRIVATE.as_bytes()).unwrap(),
            Algorithm::EdDSA,
        ),
    ] {
        let v = with_key(public, "");
        let tok = token(alg, &private, None, &claims());
        assert_eq!(
            bearer(&v, &tok, NOW).unwrap().subject.as_deref(),
            Some("alice"),
            "{alg:?}"
        );
    }
    // Another RSA key's token does not verify.
    let v = with_key(RSA_PUBLIC, "");
    let other = EncodingKey::from_rsa_pem(RSA2_PRIVATE.as_bytes()).unwrap();
    assert_eq!(
        bearer(&v, &token(Algorithm::RS256, &other, None, &claims()), NOW),
        Err(Rejection::BadSignature)
    );
    // `algorithms` narrows what the key accepts.
    let v = with_key(RSA_PUBLIC, "algorithms: [RS256]\n");
    assert_eq!(
        bearer(&v, &token(Algorithm::PS256, &rsa(), None, &claims()), NOW)
            .unwrap_err()
            .to_string(),
        "token rejected: algorithm `PS256` is not accepted"
    );
}

#[test]
fn alg_none_is_refused_in_tokens_and_in_configuration() {
    let v = compile(&format!("scheme: jwt\nkey: {HS_SECRET}\n"));
    let head = B64URL.encode(r#"{"alg":"none","typ":"JWT"}"#);
    let body = B64URL.encode(claims().to_string());
    for tok in [format!("{head}.{body}."), format!("{head}.{body}.c2ln")] {
        assert_eq!(
            bearer(&v, &tok, NOW).unwrap_err().to_string(),
            "token rejected: algorithm `none` (an unsigned token) is never accepted"
        );
    }
    let head = B64URL.encode(r#"{"alg":"NONE"}"#);
    assert!(matches!(
        bearer(&v, &format!("{head}.{body}."), NOW),
        Err(Rejection::InvalidToken(_))
    ));
    assert_eq!(
        compile_err(&format!(
            "scheme: jwt\nkey: {HS_SECRET}\nalgorithms: [HS256, none]\n"
        )),
        "algorithm `none` (unsigned tokens) is never accepted"
    );
    assert!(
        compile_err(&format!(
            "scheme: jwt\nkey: {HS_SECRET}\nalgorithms: [HS999]\n"
        ))
        .starts_with("unknown algorithm `HS999`")
    );
}

#[test]
fn an_hs256_token_keyed_with_the_rsa_public_pem_is_refused() {
    // Algorithm confusion: the attacker uses the public key's PEM text as the HMAC secret.
    let v = with_key(RSA_PUBLIC, "");
    for pem in [RSA_PUBLIC, RSA_PUBLIC.trim()] {
        let forged = token(
            Algorithm::HS256,
            &EncodingKey::from_secret(pem.as_bytes()),
            None,
            &claims(),
        );
        assert_eq!(
            bearer(&v, &forged, NOW).unwrap_err().to_string(),
            "token rejected: algorithm `HS256` does not fit the key, which is an RSA public key"
        );
    }
    // Even when the configuration lists HS256 next to RS256, it is refused at load.
    let e = compile_err(&format!(
        "scheme: jwt\nkey: {}\nalgorithms: [RS256, HS256]\n",
        serde_json::to_string(RSA_PUBLIC).unwrap()
    ));
    assert_eq!(
        e,
        "algorithm `HS256` does not fit `key`, which is an RSA public key"
    );
    let e = compile_err(&format!(
        "scheme: jwt\nkey: {}\n",
        serde_json::to_string(RSA_PRIVATE).unwrap()
    ));
    assert_eq!(e, "`key` is a private key; configure the public key");
    let e = compile_err(
        "scheme: jwt\nkey: \"-----BEGIN PUBLIC KEY-----\\nAAAA\\n-----END PUBLIC KEY-----\"\n",
    );
    assert_eq!(e, "`key` is PEM but not an RSA, EC or Ed25519 public key");
    // An EC key does not take RS tokens either.
    let v = with_key(EC_PUBLIC, "");
    assert!(matches!(
        bearer(&v, &token(Algorithm::RS256, &rsa(), None, &claims()), NOW),
        Err(Rejection::InvalidToken(_))
    ));
}

#[test]
fn exp_nbf_iss_and_aud_are_checked_with_leeway() {
    let v = with_key(
        RSA_PUBLIC,
        "issuer: https://id.example.com\naudience: ferry\nleeway: 30s\n",
    );
    let sign = |c: serde_json::Value| token(Algorithm::RS256, &rsa(), None, &c);
    assert!(bearer(&v, &sign(claims()), NOW).is_ok());
    let mut c = claims();
    c["exp"] = json!(NOW - 30);
    assert!(bearer(&v, &sign(c.clone()), NOW).is_ok(), "within leeway");
    c["exp"] = json!(NOW - 31);
    assert_eq!(
        bearer(&v, &sign(c), NOW).unwrap_err().to_string(),
        "token rejected: expired 31 s ago; leeway is 30 s"
    );
    let mut c = claims();
    c["nbf"] = json!(NOW + 30);
    assert!(bearer(&v, &sign(c.clone()), NOW).is_ok(), "within leeway");
    c["nbf"] = json!(NOW + 100);
    assert_eq!(
        bearer(&v, &sign(c), NOW).unwrap_err().to_string(),
        "token rejected: not valid for another 100 s (`nbf`); leeway is 30 s"
    );
    let mut c = claims();
    c.as_object_mut().unwrap().remove("exp");
    assert_eq!(
        bearer(&v, &sign(c), NOW).unwrap_err().to_string(),
        "token rejected: no `exp` claim; tokens must expire"
    );
    let mut c = claims();
    c["iss"] = json!("https://evil.example.com");
    assert_eq!(
        bearer(&v, &sign(c), NOW).unwrap_err().to_string(),
        "token rejected: issuer is `https://evil.example.com`; expected `https://id.example.com`"
    );
    let mut c = claims();
    c["aud"] = json!("billing");
    assert_eq!(
        bearer(&v, &sign(c), NOW).unwrap_err().to_string(),
        "token rejected: audience does not include `ferry`"
    );
    let mut c = claims();
    c["aud"] = json!("ferry");
    assert!(bearer(&v, &sign(c), NOW).is_ok());
    let mut c = claims();
    c.as_object_mut().unwrap().remove("aud");
    assert_eq!(
        bearer(&v, &sign(c), NOW).unwrap_err().to_string(),
        "token rejected: no `aud` claim; expected `ferry`"
    );
    let mut c = claims();
    c["exp"] = json!("tomorrow");
    assert_eq!(
        bearer(&v, &sign(c), NOW).unwrap_err().to_string(),
        "token rejected: claim `exp` is not a number of seconds"
    );
}

#[test]
fn malformed_tokens_and_headers_are_named() {
    let v = compile(&format!("scheme: jwt\nkey: {HS_SECRET}\n"));
    for (value, text) in [
        ("Basic abc", "header `authorization` is not `Bearer …`"),
        ("Bearer ", "header `authorization` is not `Bearer …`"),
        (
            "Bearer a.b",
            "token is not a JWT (`HEADER.PAYLOAD.SIGNATURE`)",
        ),
        (
            "Bearer a.b.c.d",
            "token is not a JWT (`HEADER.PAYLOAD.SIGNATURE`)",
        ),
        (
            "Bearer !!!.b.c",
            "token is not a JWT (`HEADER.PAYLOAD.SIGNATURE`)",
        ),
    ] {
        assert_eq!(
            check(&v, &[("authorization", value)], b"", NOW)
                .unwrap_err()
                .to_string(),
            text,
            "{value}"
        );
    }
    assert_eq!(
        check(&v, &[], b"", NOW),
        Err(Rejection::MissingHeader("authorization".into()))
    );
    let head = B64URL.encode(r#"{"alg":"HS256"}"#);
    assert!(bearer(&v, &format!("{head}.!!!.c2ln"), NOW).is_err());
    let head = B64URL.encode(r#"{"alg":"XS256"}"#);
    assert_eq!(
        bearer(&v, &format!("{head}.e30.c2ln"), NOW)
            .unwrap_err()
            .to_string(),
        "token rejected: unsupported algorithm `XS256`"
    );
    // A custom header without `Bearer `.
    let v = compile(&format!("scheme: jwt\nkey: {HS_SECRET}\nheader: x-token\n"));
    let tok = token(
        Algorithm::HS256,
        &EncodingKey::from_secret(HS_SECRET.as_bytes()),
        None,
        &claims(),
    );
    assert!(check(&v, &[("x-token", &tok)], b"", NOW).is_ok());
}

#[test]
fn a_key_from_the_environment_is_resolved_per_request_and_fails_closed() {
    let v = compile("scheme: jwt\nkey: { env: JWT_KEY }\n");
    let tok = token(Algorithm::RS256, &rsa(), None, &claims());
    let e = bearer(&v, &tok, NOW).unwrap_err();
    assert_eq!(
        e.to_string(),
        "secret unavailable: `key` cannot be used: environment variable `JWT_KEY` is not set"
    );
    // A resolver whose value changes (rotation): the new key is used at once.
    let current = Mutex::new(RSA_PUBLIC.to_owned());
    let resolver = |_: &ValueSource| Ok(Zeroizing::new(current.lock().unwrap().clone()));
    let h = headers(&[("authorization", &format!("Bearer {tok}"))]);
    let req = Inbound {
        headers: &h,
        query: None,
        body: b"",
    };
    assert!(v.verify_offline(&req, &resolver, NOW).is_ok());
    assert!(v.verify_offline(&req, &resolver, NOW).is_ok(), "cached");
    *current.lock().unwrap() = EC_PUBLIC.to_owned();
    assert!(matches!(
        v.verify_offline(&req, &resolver, NOW),
        Err(Rejection::InvalidToken(_))
    ));
    // A resolved value that is no usable key fails closed.
    *current.lock().unwrap() = "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----".into();
    assert!(matches!(
        v.verify_offline(&req, &resolver, NOW),
        Err(Rejection::SecretUnavailable(_))
    ));
}

#[test]
fn jwt_configuration_errors() {
    assert_eq!(
        compile_err("scheme: jwt\n"),
        "scheme `jwt` needs `key` (a PEM public key or shared secret) or `jwks_url`"
    );
    assert_eq!(
        compile_err("scheme: jwt\nkey: k\njwks_url: https://x/jwks\n"),
        "scheme `jwt` takes `key` or `jwks_url`, not both"
    );
    assert_eq!(
        compile_err("scheme: jwt\njwks_url: https://x/jwks\nalgorithms: [HS256]\n"),
        "algorithm `HS256` needs a shared `key`; a JWKS holds public keys"
    );
    assert_eq!(
        compile_err("scheme: jwt\njwks_url: ftp://x/jwks\n"),
        "`jwks_url` `ftp://x/jwks` is not an http(s) URL"
    );
    assert_eq!(
        compile_err("scheme: jwt\nkey: k\njwks_max_age: 1h\n"),
        "`jwks_min_interval` and `jwks_max_age` need `jwks_url`"
    );
    assert_eq!(
        compile_err("scheme: jwt\nsecret: k\n"),
        "`secret` is not used by scheme `jwt`; its keys: key, jwks_url, jwks_min_interval, jwks_max_age, algorithms, issuer, audience, leeway, header"
    );
}

// ---- JWKS ----

struct JwksServer {
    url: String,
    doc: Arc<Mutex<String>>,
    hits: Arc<AtomicUsize>,
}

async fn jwks_server(doc: String) -> JwksServer {
    let doc = Arc::new(Mutex::new(doc));
    let hits = Arc::new(AtomicUsize::new(0));
    let (d, n) = (doc.clone(), hits.clone());
    let app = axum::Router::new().route(
        "/jwks.json",
        axum::routing::get(move || {
            let (d, n) = (d.clone(), n.clone());
            async move {
                n.fetch_add(1, Ordering::SeqCst);
                let body = d.lock().unwrap().clone();
                ([("content-type", "application/json")], body)
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    JwksServer {
        url: format!("http://{addr}/jwks.json"),
        doc,
        hits,
    }
}

fn jwks(keys: &[(&EncodingKey, Algorithm, &str)]) -> String {
    let set = JwkSet {
        keys: keys
            .iter()
            .map(|(k, alg, kid)| {
                let mut jwk = Jwk::from_encoding_key(k, *alg).unwrap();
                jwk.common.key_id = Some((*kid).to_owned());
                jwk
            })
            .collect(),
    };
    serde_json::to_string(&set).unwrap()
}

async fn verify_bearer(v: &Verifier, tok: &str, now: i64) -> Result<Verified, Rejection> {
    let h = headers(&[("authorization", &format!("Bearer {tok}"))]);
    let req = Inbound {
        headers: &h,
        query: None,
        body: b"",
    };
    v.verify(&req, &resolve, now, &reqwest::Client::new()).await
}

#[tokio::test]
async fn jwks_keys_are_fetched_once_cached_and_refetched_for_an_unknown_kid_at_most_once_per_interval()
 {
    let ec = EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).unwrap();
    let rsa2 = EncodingKey::from_rsa_pem(RSA2_PRIVATE.as_bytes()).unwrap();
    let server = jwks_server(jwks(&[
        (&rsa(), Algorithm::RS256, "k1"),
        (&ec, Algorithm::ES256, "k2"),
    ]))
    .await;
    let v = compile(&format!(
        "scheme: jwt\njwks_url: {}\njwks_min_interval: 30s\naudience: ferry\n",
        server.url
    ));
    assert_eq!(v.secret_sources().len(), 0);

    let t1 = token(Algorithm::RS256, &rsa(), Some("k1"), &claims());
    let t2 = token(Algorithm::ES256, &ec, Some("k2"), &claims());
    assert_eq!(
        verify_bearer(&v, &t1, NOW)
            .await
            .unwrap()
            .subject
            .as_deref(),
        Some("alice")
    );
    assert!(verify_bearer(&v, &t2, NOW + 1).await.is_ok());
    assert_eq!(
        server.hits.load(Ordering::SeqCst),
        1,
        "one fetch for both keys"
    );
    // The kid must match the signing key: k1's kid on an EC token is refused.
    let confused = token(Algorithm::ES256, &ec, Some("k1"), &claims());
    assert!(verify_bearer(&v, &confused, NOW + 1).await.is_err());

    // Rotation: k3 replaces k1. A token with k3 arrives within the interval: no fetch yet.
    *server.doc.lock().unwrap() = jwks(&[
        (&rsa2, Algorithm::RS256, "k3"),
        (&ec, Algorithm::ES256, "k2"),
    ]);
    let t3 = token(Algorithm::RS256, &rsa2, Some("k3"), &claims());
    assert_eq!(
        verify_bearer(&v, &t3, NOW + 10)
            .await
            .unwrap_err()
            .to_string(),
        "token rejected: unknown key id `k3`"
    );
    assert_eq!(server.hits.load(Ordering::SeqCst), 1, "within the interval");
    // After the interval, the unknown kid triggers one refetch and verifies.
    assert!(verify_bearer(&v, &t3, NOW + 31).await.is_ok());
    assert_eq!(server.hits.load(Ordering::SeqCst), 2);
    // A flood of made-up kids costs no fetch within the interval.
    for i in 0..50 {
        let fake = token(
            Algorithm::RS256,
            &rsa2,
            Some(&format!("fake-{i}")),
            &claims(),
        );
        assert!(verify_bearer(&v, &fake, NOW + 32).await.is_err());
    }
    assert_eq!(server.hits.load(Ordering::SeqCst), 2);
    // k1 is gone from the new set.
    assert_eq!(
        verify_bearer(&v, &t1, NOW + 33)
            .await
            .unwrap_err()
            .to_string(),
        "token rejected: unknown key id `k1`"
    );
    // Offline verification uses the cache only.
    let h = headers(&[("authorization", &format!("Bearer {t3}"))]);
    let req = Inbound {
        headers: &h,
        query: None,
        body: b"",
    };
    assert!(v.verify_offline(&req, &resolve, NOW + 34).is_ok());
}

#[tokio::test]
async fn an_unreachable_or_broken_jwks_is_a_rejection_not_a_panic() {
    // A port that was just free: nothing listens there.
    let closed = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let v = compile(&format!(
        "scheme: jwt\njwks_url: http://{closed}/jwks.json\n"
    ));
    let tok = token(Algorithm::RS256, &rsa(), Some("k1"), &claims());
    let e = verify_bearer(&v, &tok, NOW).await.unwrap_err();
    assert!(matches!(e, Rejection::KeysUnavailable(_)), "{e}");
    assert!(e.is_server_fault());
    assert!(
        e.to_string().starts_with(&format!(
            "signing keys unavailable: fetching `http://{closed}/jwks.json` failed"
        )),
        "{e}"
    );

    // A server that answers garbage, then an empty set, then a set of only a shared secret.
    let server = jwks_server("not json".into()).await;
    let v = compile(&format!(
        "scheme: jwt\njwks_url: {}\njwks_min_interval: 1s\n",
        server.url
    ));
    let e = verify_bearer(&v, &tok, NOW).await.unwrap_err();
    assert!(e.to_string().contains("not a JWKS document"), "{e}");
    *server.doc.lock().unwrap() =
        r#"{"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "k1"}, {"kty": "XYZ"}]}"#.into();
    let e = verify_bearer(&v, &tok, NOW + 2).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "signing keys unavailable: `{}`: the JWKS holds no usable RSA, EC or Ed25519 key",
            server.url
        )
    );
    // Then the real keys: it recovers on the next fetch.
    *server.doc.lock().unwrap() = jwks(&[(&rsa(), Algorithm::RS256, "k1")]);
    assert!(verify_bearer(&v, &tok, NOW + 4).await.is_ok());
    // And keeps the cached keys while the server is down later on.
    *server.doc.lock().unwrap() = "down".into();
    let other_kid = token(Algorithm::RS256, &rsa(), Some("k9"), &claims());
    assert!(verify_bearer(&v, &other_kid, NOW + 10).await.is_err());
    assert!(verify_bearer(&v, &tok, NOW + 11).await.is_ok());
}
