//! Inbound webhook verification: any header values, query and body against every scheme, as
//! the server would call it (`verify_offline`, which is `verify` without the JWKS fetch).
//!
//! Input: the first byte picks the scheme; the rest splits at `\0` into the values of that
//! scheme's headers (in the order `schemes()` lists them), then the query string, then the body. Must
//! hold: a result, never a panic or hang, and no rejection text that contains a secret
//! the input did not.

#![no_main]

use std::sync::OnceLock;

use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use zeroize::Zeroizing;

use ferry_core::flow::model::ValueSource;
use ferry_core::verify::{Inbound, Verifier, VerifyConfig};

const NOW: i64 = 1_700_000_000;
const SW_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const SW_PUBLIC: &str = "whpk_jvT4modLV0KcSMp7NI5WubrmqWbj7havjHDvFlbyCDw=";
const SECRET: &str = "fuzz-secret-value-1234";
const RSA_PUBLIC: &str =
    include_str!("../../crates/ferry-core/src/verify/testdata/test-only-rsa-public.pem");

/// Each scheme's configuration (JSON) and the headers it reads.
fn schemes() -> Vec<(serde_json::Value, &'static [&'static str])> {
    use serde_json::json;
    vec![
        (
            json!({"scheme": "standard-webhooks", "secrets": [SW_SECRET, SW_PUBLIC]}),
            &["webhook-id", "webhook-timestamp", "webhook-signature"],
        ),
        (
            json!({"scheme": "standard-webhooks", "secret": SW_SECRET}),
            &["svix-id", "svix-timestamp", "svix-signature"],
        ),
        (
            json!({"scheme": "stripe", "secret": SECRET}),
            &["stripe-signature"],
        ),
        (
            json!({"scheme": "github", "secret": SECRET}),
            &["x-hub-signature-256", "x-github-delivery"],
        ),
        (
            json!({"scheme": "shopify", "secret": SECRET}),
            &["x-shopify-hmac-sha256", "x-shopify-webhook-id"],
        ),
        (
            json!({"scheme": "slack", "secret": SECRET}),
            &["x-slack-signature", "x-slack-request-timestamp"],
        ),
        (
            json!({"scheme": "hmac", "secret": SECRET, "header": "x-sig", "encoding": "base64",
                   "algorithm": "sha512", "signed": "{id}:{timestamp}:{body}",
                   "timestamp_header": "x-ts", "id_header": "x-id"}),
            &["x-sig", "x-ts", "x-id"],
        ),
        (
            json!({"scheme": "hmac", "secret": SECRET, "header": "x-sig", "algorithm": "sha1",
                   "prefix": "sha1="}),
            &["x-sig"],
        ),
        (
            json!({"scheme": "api_key", "secret": SECRET}),
            &["x-api-key"],
        ),
        (
            json!({"scheme": "api_key", "secret": SECRET, "query": "key"}),
            &[],
        ),
        (
            json!({"scheme": "basic", "username": "user", "password": SECRET}),
            &["authorization"],
        ),
        (
            json!({"scheme": "jwt", "key": SECRET, "issuer": "i", "audience": "a"}),
            &["authorization"],
        ),
        (
            json!({"scheme": "jwt", "key": RSA_PUBLIC}),
            &["authorization"],
        ),
        (
            json!({"scheme": "jwt", "jwks_url": "http://127.0.0.1:9/jwks.json", "header": "x-token"}),
            &["x-token"],
        ),
    ]
}

fn verifiers() -> &'static [(Verifier, &'static [&'static str])] {
    static V: OnceLock<Vec<(Verifier, &'static [&'static str])>> = OnceLock::new();
    V.get_or_init(|| {
        schemes()
            .into_iter()
            .map(|(cfg, headers)| {
                let cfg: VerifyConfig = serde_json::from_value(cfg).expect("config");
                (Verifier::compile(&cfg).expect("compile"), headers)
            })
            .collect()
    })
}

fn resolve(src: &ValueSource) -> Result<Zeroizing<String>, String> {
    match src {
        ValueSource::Literal(s) => Ok(Zeroizing::new(s.clone())),
        _ => Err("not set".into()),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let all = verifiers();
    let (verifier, names) = &all[usize::from(pick) % all.len()];
    let mut fields = rest.splitn(names.len() + 2, |b| *b == 0);
    let mut headers = HeaderMap::new();
    for name in names.iter() {
        let Some(value) = fields.next() else { break };
        // Bytes a client cannot send in a header (`\n`, …) never reach the verifier.
        if let Ok(v) = HeaderValue::from_bytes(value) {
            headers.insert(HeaderName::from_static(name), v);
        }
    }
    let query = fields.next().and_then(|q| std::str::from_utf8(q).ok());
    let body = fields.next().unwrap_or_default();
    let req = Inbound {
        headers: &headers,
        query,
        body,
    };
    if let Err(rejection) = verifier.verify_offline(&req, &resolve, NOW) {
        let text = rejection.to_string();
        // A rejection may quote the request (a malformed timestamp), never a secret the
        // request did not carry itself.
        for secret in [SECRET, SW_SECRET, "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"] {
            let sent = data.windows(secret.len()).any(|w| w == secret.as_bytes());
            assert!(
                sent || !text.contains(secret),
                "a rejection shows a secret: {text}"
            );
        }
    }
    let _ = verifier.message_id(&req);
});
