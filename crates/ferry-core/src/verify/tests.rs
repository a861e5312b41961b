//! Helpers shared by the schemes' tests, and the configuration's own tests.

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use zeroize::Zeroizing;

use super::*;

/// A fixed "now" for every test (2021-02-21, the Standard Webhooks vector's day).
pub(super) const NOW: i64 = 1_614_265_330;

pub(super) fn config(yaml: &str) -> Result<VerifyConfig, String> {
    serde_saphyr::from_str(yaml).map_err(|e| e.to_string())
}

pub(super) fn compile(yaml: &str) -> Verifier {
    let cfg = config(yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    Verifier::compile(&cfg).unwrap_or_else(|e| panic!("{e}\n{yaml}"))
}

pub(super) fn compile_err(yaml: &str) -> String {
    match config(yaml) {
        Err(e) => e,
        Ok(cfg) => Verifier::compile(&cfg).expect_err(yaml),
    }
}

pub(super) fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (k, v) in pairs {
        map.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    map
}

/// Literal values resolve to themselves; `{ env: NAME }` never resolves (fail-closed tests).
pub(super) fn resolve(src: &ValueSource) -> Result<Zeroizing<String>, String> {
    match src {
        ValueSource::Literal(s) => Ok(Zeroizing::new(s.clone())),
        ValueSource::Env { env } => Err(format!("environment variable `{env}` is not set")),
        ValueSource::Secret { secret } => Err(format!("secret `{secret}` is not set")),
    }
}

pub(super) fn check(
    v: &Verifier,
    hdrs: &[(&str, &str)],
    body: &[u8],
    now: i64,
) -> Result<Verified, Rejection> {
    let map = headers(hdrs);
    let req = Inbound {
        headers: &map,
        query: None,
        body,
    };
    v.verify_offline(&req, &resolve, now)
}

#[test]
fn unknown_keys_and_schemes_are_refused_with_the_list_of_what_fits() {
    let e = compile_err("scheme: github\nsecret: s\nsecrte: t\n");
    assert!(e.contains("unknown field `secrte`"), "{e}");
    let e = compile_err("scheme: gitlab\nsecret: s\n");
    assert!(e.contains("unknown variant `gitlab`"), "{e}");
    assert_eq!(
        compile_err("scheme: github\nsecret: s\ntolerance: 5m\n"),
        "`tolerance` is not used by scheme `github`; its keys: secret, secrets"
    );
    assert_eq!(
        compile_err("scheme: stripe\n"),
        "scheme `stripe` needs `secret` (or `secrets` for rotation): the signing secret"
    );
    assert_eq!(
        compile_err("scheme: stripe\nsecret: a\nsecrets: [b]\n"),
        "scheme `stripe` takes `secret` or `secrets`, not both"
    );
    assert_eq!(
        compile_err("scheme: stripe\nsecrets: []\n"),
        "`secrets` of scheme `stripe` is empty"
    );
    // Both spellings of the two-word schemes.
    compile("scheme: standard_webhooks\nsecret: whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n");
    compile("scheme: api-key\nsecret: k\n");
}

#[test]
fn secret_sources_lists_every_secret_and_debug_shows_none() {
    let v = compile("scheme: stripe\nsecrets: [whsec_plain, { env: STRIPE_OLD }]\n");
    assert_eq!(
        v.secret_sources(),
        vec![
            &ValueSource::Literal("whsec_plain".into()),
            &ValueSource::Env {
                env: "STRIPE_OLD".into()
            }
        ]
    );
    assert_eq!(format!("{v:?}"), r#"Verifier { scheme: "stripe" }"#);
    let v = compile("scheme: basic\nusername: u\npassword: { env: PW }\n");
    assert_eq!(v.secret_sources().len(), 2);
    let v = compile("scheme: jwt\njwks_url: https://id.example.com/jwks.json\n");
    assert!(v.secret_sources().is_empty());
}

#[test]
fn timestamps_are_checked_both_ways_and_the_text_says_by_how_much() {
    let tol = Duration::from_secs(300);
    assert_eq!(check_timestamp("t", "1000", 1300, tol), Ok(1000));
    assert_eq!(check_timestamp("t", "1600", 1300, tol), Ok(1600));
    let stale = check_timestamp("t", "1000", 1612, tol).unwrap_err();
    assert_eq!(
        stale.to_string(),
        "timestamp is 612 s old; tolerance is 300 s"
    );
    let future = check_timestamp("t", "2000", 1300, tol).unwrap_err();
    assert_eq!(
        future.to_string(),
        "timestamp is 700 s in the future; tolerance is 300 s"
    );
    for bad in ["", "-5", "+5", "1e9", "12.5", "99999999999999999999", "abc"] {
        assert!(
            matches!(
                check_timestamp("t", bad, 0, tol),
                Err(Rejection::Malformed(_))
            ),
            "{bad:?}"
        );
    }
    // Extremes do not overflow.
    assert!(check_timestamp("t", "0", i64::MAX, tol).is_err());
    assert!(check_timestamp("t", "9223372036854775807", i64::MIN, tol).is_err());
    assert_eq!(
        check_timestamp("t", "not a time", 0, tol)
            .unwrap_err()
            .to_string(),
        "header `t` is `not a time`; expected a unix timestamp in seconds"
    );
}

#[test]
fn server_faults_are_the_unresolvable_secret_and_the_unreachable_jwks() {
    assert!(Rejection::SecretUnavailable("x".into()).is_server_fault());
    assert!(Rejection::KeysUnavailable("x".into()).is_server_fault());
    assert!(!Rejection::BadSignature.is_server_fault());
    assert!(
        !Rejection::StaleTimestamp {
            age: 1,
            tolerance: 0
        }
        .is_server_fault()
    );
}

#[test]
fn the_config_schema_lists_every_scheme() {
    let schema = serde_json::to_string(&schemars::schema_for!(VerifyConfig)).unwrap();
    for name in [
        "standard-webhooks",
        "stripe",
        "github",
        "shopify",
        "slack",
        "hmac",
        "api_key",
        "basic",
        "jwt",
    ] {
        assert!(schema.contains(&format!("\"{name}\"")), "{name}");
    }
}

#[test]
fn the_verifier_is_shared_across_requests_and_its_future_is_send() {
    fn send_sync<T: Send + Sync>(_: &T) {}
    fn send<T: Send>(_: &T) {}
    let v = compile("scheme: jwt\njwks_url: https://id.example.com/jwks.json\n");
    send_sync(&v);
    let h = HeaderMap::new();
    let req = Inbound {
        headers: &h,
        query: None,
        body: b"",
    };
    let client = reqwest::Client::new();
    let fut = v.verify(&req, &resolve, NOW, &client);
    send(&fut);
}
