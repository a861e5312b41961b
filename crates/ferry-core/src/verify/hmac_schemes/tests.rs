use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signer, SigningKey};

use super::*;
use crate::verify::tests::{NOW, check, compile, compile_err, headers};
use crate::verify::{Inbound, Verifier};

const SW_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const SW_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
const BODY: &[u8] = br#"{"test": 2432232314}"#;

fn sw_key(secret: &str) -> Vec<u8> {
    B64.decode(secret.strip_prefix("whsec_").unwrap()).unwrap()
}

fn sw_sign(secret: &str, id: &str, ts: i64, body: &[u8]) -> String {
    let ts = ts.to_string();
    let mac = HmacAlgorithm::Sha256.sign(
        &sw_key(secret),
        &[id.as_bytes(), b".", ts.as_bytes(), b".", body],
    );
    format!("v1,{}", B64.encode(mac))
}

/// Headers as each scheme's sender makes them.
fn sign(scheme: SchemeName, secret: &str, ts: i64, body: &[u8]) -> Vec<(String, String)> {
    let t = ts.to_string();
    let s256 = |parts: &[&[u8]]| HmacAlgorithm::Sha256.sign(secret.as_bytes(), parts);
    let pairs: Vec<(&str, String)> = match scheme {
        SchemeName::StandardWebhooks => vec![
            ("webhook-id", SW_ID.into()),
            ("webhook-timestamp", t.clone()),
            ("webhook-signature", sw_sign(secret, SW_ID, ts, body)),
        ],
        SchemeName::Stripe => vec![(
            "stripe-signature",
            format!(
                "t={t},v1={},v0=deadbeef",
                hex::encode(s256(&[t.as_bytes(), b".", body]))
            ),
        )],
        SchemeName::Github => vec![
            (
                "x-hub-signature-256",
                format!("sha256={}", hex::encode(s256(&[body]))),
            ),
            (
                "x-github-delivery",
                "72d3162e-cc78-11e3-81ab-4c9367dc0958".into(),
            ),
        ],
        SchemeName::Shopify => vec![
            ("x-shopify-hmac-sha256", B64.encode(s256(&[body]))),
            (
                "x-shopify-webhook-id",
                "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043".into(),
            ),
        ],
        SchemeName::Slack => vec![
            ("x-slack-request-timestamp", t.clone()),
            (
                "x-slack-signature",
                format!(
                    "v0={}",
                    hex::encode(s256(&[b"v0:", t.as_bytes(), b":", body]))
                ),
            ),
        ],
        _ => unreachable!(),
    };
    pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

fn run(v: &Verifier, h: &[(String, String)], body: &[u8], now: i64) -> Result<Verified, Rejection> {
    let pairs: Vec<(&str, &str)> = h.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    check(v, &pairs, body, now)
}

const SCHEMES: [(SchemeName, &str, bool); 5] = [
    (SchemeName::StandardWebhooks, "webhook-signature", true),
    (SchemeName::Stripe, "stripe-signature", true),
    (SchemeName::Github, "x-hub-signature-256", false),
    (SchemeName::Shopify, "x-shopify-hmac-sha256", false),
    (SchemeName::Slack, "x-slack-signature", true),
];

#[test]
fn standard_webhooks_reference_vector_verifies() {
    assert_eq!(
        sw_sign(SW_SECRET, SW_ID, 1_614_265_330, BODY),
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    );
    let v = compile(&format!("scheme: standard-webhooks\nsecret: {SW_SECRET}\n"));
    let h = [
        ("webhook-id", SW_ID),
        ("webhook-timestamp", "1614265330"),
        (
            "webhook-signature",
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
        ),
    ];
    assert_eq!(check(&v, &h, BODY, NOW).unwrap().secret_index, Some(0));
    // The secret without its prefix is the same key.
    let bare = compile("scheme: standard-webhooks\nsecret: MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n");
    assert!(check(&bare, &h, BODY, NOW).is_ok());
    assert_eq!(
        check(&v, &h, br#"{"test": 2432232315}"#, NOW),
        Err(Rejection::BadSignature)
    );
}

#[test]
fn every_signature_scheme_accepts_its_own_signature_and_refuses_the_usual_forgeries() {
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let other = "whsec_dGhpcyBpcyBhIGRpZmZlcmVudCBrZXkh";
    for (scheme, sig_header, timestamped) in SCHEMES {
        let name = scheme.as_str();
        let v = compile(&format!("scheme: {name}\nsecret: {secret}\n"));
        let good = sign(scheme, secret, NOW, BODY);
        assert_eq!(
            run(&v, &good, BODY, NOW).map(|r| r.secret_index),
            Ok(Some(0)),
            "{name}"
        );
        // Tampered body, wrong secret.
        assert_eq!(
            run(&v, &good, b"{\"test\": 1}", NOW),
            Err(Rejection::BadSignature),
            "{name}"
        );
        let forged = sign(scheme, other, NOW, BODY);
        assert_eq!(
            run(&v, &forged, BODY, NOW),
            Err(Rejection::BadSignature),
            "{name}"
        );
        // Missing signature header.
        let without: Vec<_> = good
            .iter()
            .filter(|(k, _)| k != sig_header)
            .cloned()
            .collect();
        assert_eq!(
            run(&v, &without, BODY, NOW).unwrap_err().to_string(),
            format!("missing header `{sig_header}`"),
            "{name}"
        );
        // Rotation: the second of two secrets matches.
        let both = compile(&format!("scheme: {name}\nsecrets: [{other}, {secret}]\n"));
        assert_eq!(
            run(&both, &good, BODY, NOW).map(|r| r.secret_index),
            Ok(Some(1)),
            "{name}"
        );
        // Signature header oversized.
        let mut big = good.clone();
        for (k, v) in &mut big {
            if k == sig_header {
                v.push_str(&"A".repeat(crate::verify::MAX_HEADER_BYTES));
            }
        }
        assert!(
            matches!(run(&v, &big, BODY, NOW), Err(Rejection::Oversized { .. })),
            "{name}"
        );
        if timestamped {
            // Signed 301 s before now, or 301 s after.
            let old = sign(scheme, secret, NOW - 301, BODY);
            assert_eq!(
                run(&v, &old, BODY, NOW).unwrap_err().to_string(),
                "timestamp is 301 s old; tolerance is 300 s",
                "{name}"
            );
            let ahead = sign(scheme, secret, NOW + 301, BODY);
            assert_eq!(
                run(&v, &ahead, BODY, NOW),
                Err(Rejection::FutureTimestamp {
                    ahead: 301,
                    tolerance: 300
                }),
                "{name}"
            );
            // Within a configured tolerance.
            let lax = compile(&format!(
                "scheme: {name}\nsecret: {secret}\ntolerance: 10m\n"
            ));
            assert!(run(&lax, &old, BODY, NOW).is_ok(), "{name}");
        } else {
            // No timestamp: an old signature still verifies (replays are the dedupe's job).
            assert!(run(&v, &good, BODY, NOW + 86_400).is_ok(), "{name}");
        }
    }
}

#[test]
fn rejections_never_contain_the_secret_or_the_expected_signature() {
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    for (scheme, _, _) in SCHEMES {
        let v = compile(&format!("scheme: {}\nsecret: {secret}\n", scheme.as_str()));
        let good = sign(scheme, secret, NOW, BODY);
        let expected: Vec<String> = good.iter().map(|(_, v)| v.clone()).collect();
        let variants = [
            run(&v, &good, b"tampered", NOW),
            run(&v, &good, BODY, NOW + 10_000),
            run(
                &v,
                &sign(scheme, "whsec_dGhpcyBpcyBhIGRpZmZlcmVudCBrZXkh", NOW, BODY),
                BODY,
                NOW,
            ),
        ];
        // (Schemes without a timestamp accept the second: replays are the dedupe's job.)
        for r in variants.into_iter().filter(Result::is_err) {
            let text = r.unwrap_err().to_string();
            assert!(!text.contains("MfKQ9r8G"), "{text}");
            for e in &expected {
                assert!(e.len() < 40 || !text.contains(e.as_str()), "{text}");
            }
        }
    }
}

#[test]
fn an_unresolvable_secret_rejects_every_request_even_when_another_would_match() {
    for (scheme, _, _) in SCHEMES {
        let name = scheme.as_str();
        let v = compile(&format!(
            "scheme: {name}\nsecrets: [{SW_SECRET}, {{ env: NEW_SECRET }}]\n"
        ));
        let good = sign(scheme, SW_SECRET, NOW, BODY);
        let e = run(&v, &good, BODY, NOW).unwrap_err();
        assert_eq!(
            e.to_string(),
            "secret unavailable: secret 2 of 2 cannot be used: environment variable `NEW_SECRET` is not set",
            "{name}"
        );
        assert!(e.is_server_fault());
        // A request with no headers at all gets the same answer: the log says why at once.
        assert!(matches!(
            run(&v, &[], b"", NOW),
            Err(Rejection::SecretUnavailable(_))
        ));
    }
}

#[test]
fn standard_webhooks_takes_any_of_several_signatures_and_skips_unknown_versions() {
    let v = compile(&format!("scheme: standard-webhooks\nsecret: {SW_SECRET}\n"));
    let ts = NOW.to_string();
    let good = sw_sign(SW_SECRET, SW_ID, NOW, BODY);
    let wrong = sw_sign("whsec_dGhpcyBpcyBhIGRpZmZlcmVudCBrZXkh", SW_ID, NOW, BODY);
    let sigs = format!("v2,Zm9v {wrong} {good}");
    let h = [
        ("webhook-id", SW_ID),
        ("webhook-timestamp", &ts),
        ("webhook-signature", &sigs),
    ];
    assert!(check(&v, &h, BODY, NOW).is_ok());
    // Only unknown versions: nothing to check.
    let h = [
        ("webhook-id", SW_ID),
        ("webhook-timestamp", &ts),
        ("webhook-signature", "v2,Zm9v"),
    ];
    assert_eq!(
        check(&v, &h, BODY, NOW).unwrap_err().to_string(),
        "header `webhook-signature` holds no `v1` or `v1a` signature"
    );
    // Invalid base64, a missing comma, too many signatures.
    for (sig, text) in [
        (
            "v1,@@@@",
            "signature 1 in header `webhook-signature` is not valid base64",
        ),
        (
            &format!("{good} v1"),
            "signature 2 in header `webhook-signature` is not `VERSION,BASE64`",
        ),
        (
            &vec![good.as_str(); 17].join(" "),
            "header `webhook-signature` holds more than 16 signatures",
        ),
        (
            "v1a,Zm9v",
            "signature 1 in header `webhook-signature` is not 64 bytes (Ed25519)",
        ),
    ] {
        let h = [
            ("webhook-id", SW_ID),
            ("webhook-timestamp", &ts),
            ("webhook-signature", sig),
        ];
        assert_eq!(check(&v, &h, BODY, NOW).unwrap_err().to_string(), text);
    }
    // 16 signatures are fine.
    let sixteen = vec![good.as_str(); 16].join(" ");
    let h = [
        ("webhook-id", SW_ID),
        ("webhook-timestamp", &ts),
        ("webhook-signature", &sixteen),
    ];
    assert!(check(&v, &h, BODY, NOW).is_ok());
    // The id is signed: another id does not verify.
    let h = [
        ("webhook-id", "msg_other"),
        ("webhook-timestamp", &ts),
        ("webhook-signature", &good),
    ];
    assert_eq!(check(&v, &h, BODY, NOW), Err(Rejection::BadSignature));
    // A missing id or timestamp is named.
    let h = [
        ("webhook-timestamp", ts.as_str()),
        ("webhook-signature", &good),
    ];
    assert_eq!(
        check(&v, &h, BODY, NOW),
        Err(Rejection::MissingHeader("webhook-id".into()))
    );
}

#[test]
fn standard_webhooks_verifies_ed25519_v1a_signatures_with_a_whpk_key() {
    let sk = SigningKey::from_bytes(&[7u8; 32]);
    let pk = format!("whpk_{}", B64.encode(sk.verifying_key().as_bytes()));
    let v = compile(&format!(
        "scheme: standard-webhooks\nsecrets: [{SW_SECRET}, {pk}]\n"
    ));
    let ts = NOW.to_string();
    let msg = [SW_ID.as_bytes(), b".", ts.as_bytes(), b".", BODY].concat();
    let sig = format!("v1a,{}", B64.encode(sk.sign(&msg).to_bytes()));
    let h = [
        ("webhook-id", SW_ID),
        ("webhook-timestamp", &ts),
        ("webhook-signature", &sig),
    ];
    assert_eq!(check(&v, &h, BODY, NOW).unwrap().secret_index, Some(1));
    assert_eq!(check(&v, &h, b"{}", NOW), Err(Rejection::BadSignature));
    // Another key's signature does not verify.
    let other = SigningKey::from_bytes(&[8u8; 32]);
    let sig = format!("v1a,{}", B64.encode(other.sign(&msg).to_bytes()));
    let h = [
        ("webhook-id", SW_ID),
        ("webhook-timestamp", &ts),
        ("webhook-signature", &sig),
    ];
    assert_eq!(check(&v, &h, BODY, NOW), Err(Rejection::BadSignature));
    // The private key is refused as configuration.
    let e = compile_err("scheme: standard-webhooks\nsecret: whsk_AAAA\n");
    assert!(e.contains("private signing key"), "{e}");
    let e = compile_err("scheme: standard-webhooks\nsecret: whpk_AAAA\n");
    assert_eq!(
        e,
        "the secret cannot be used: a `whpk_` key must hold 32 bytes"
    );
    let e = compile_err("scheme: standard-webhooks\nsecrets: [whsec_AAAA, whsec_!!]\n");
    assert_eq!(
        e,
        "secret 2 of 2 cannot be used: expected `whsec_` followed by base64 (or `whpk_` for an Ed25519 key)"
    );
}

#[test]
fn standard_webhooks_accepts_svix_header_names_and_gives_the_message_id() {
    let v = compile(&format!("scheme: standard-webhooks\nsecret: {SW_SECRET}\n"));
    let ts = NOW.to_string();
    let sig = sw_sign(SW_SECRET, SW_ID, NOW, BODY);
    let h = headers(&[
        ("svix-id", SW_ID),
        ("svix-timestamp", &ts),
        ("svix-signature", &sig),
    ]);
    let req = Inbound {
        headers: &h,
        query: None,
        body: BODY,
    };
    assert!(
        v.verify_offline(&req, &crate::verify::tests::resolve, NOW)
            .is_ok()
    );
    assert_eq!(v.message_id(&req).as_deref(), Some(SW_ID));
    let h = headers(&[("webhook-id", "msg_1")]);
    let req = Inbound {
        headers: &h,
        query: None,
        body: BODY,
    };
    assert_eq!(v.message_id(&req).as_deref(), Some("msg_1"));
}

#[test]
fn message_ids_come_from_each_providers_delivery_header() {
    for (scheme, id) in [
        (
            SchemeName::Github,
            Some("72d3162e-cc78-11e3-81ab-4c9367dc0958"),
        ),
        (
            SchemeName::Shopify,
            Some("b54557e4-bdd9-4b37-8a5f-bf7d70bcd043"),
        ),
        (SchemeName::Slack, None),
        (SchemeName::Stripe, None),
    ] {
        let v = compile(&format!("scheme: {}\nsecret: s\n", scheme.as_str()));
        let pairs = sign(scheme, "s", NOW, BODY);
        let pairs: Vec<(&str, &str)> = pairs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let h = headers(&pairs);
        let req = Inbound {
            headers: &h,
            query: None,
            body: BODY,
        };
        assert_eq!(v.message_id(&req).as_deref(), id, "{}", scheme.as_str());
    }
    // Stripe's event id is in the body.
    let v = compile("scheme: stripe\nsecret: s\n");
    let h = headers(&[]);
    let body = br#"{"id": "evt_1NG8Du2eZvKYlo2CUI79vXWy", "object": "event"}"#;
    let req = Inbound {
        headers: &h,
        query: None,
        body,
    };
    assert_eq!(
        v.message_id(&req).as_deref(),
        Some("evt_1NG8Du2eZvKYlo2CUI79vXWy")
    );
    // An id that cannot be stored as one is no id.
    let v = compile("scheme: github\nsecret: s\n");
    let long = "x".repeat(300);
    let h = headers(&[("x-github-delivery", &long)]);
    let req = Inbound {
        headers: &h,
        query: None,
        body,
    };
    assert_eq!(v.message_id(&req), None);
}

#[test]
fn stripe_takes_any_v1_and_refuses_a_header_without_t_or_v1() {
    let secret = "whsec_stripe_test_secret";
    let v = compile(&format!("scheme: stripe\nsecret: {secret}\n"));
    let t = NOW.to_string();
    let good =
        hex::encode(HmacAlgorithm::Sha256.sign(secret.as_bytes(), &[t.as_bytes(), b".", BODY]));
    let bad = "0".repeat(64);
    let ok = format!("t={t},v1={bad},v1={good}");
    assert!(check(&v, &[("stripe-signature", &ok)], BODY, NOW).is_ok());
    for (value, text) in [
        (
            format!("v1={good}"),
            "header `stripe-signature` has no `t=` timestamp",
        ),
        (
            format!("t={t},v0={good}"),
            "header `stripe-signature` has no `v1=` signature",
        ),
        (
            format!("t={t},t={t},v1={good}"),
            "header `stripe-signature` has more than one `t=`",
        ),
        (
            format!("t={t},v1=zz{good}"),
            "signature in header `stripe-signature` is not valid hex",
        ),
        (
            format!("t={t},{good}"),
            "item 2 of header `stripe-signature` is not `KEY=VALUE`",
        ),
        (
            format!("t={t}{}", format!(",v1={good}").repeat(17)),
            "header `stripe-signature` holds more than 16 signatures",
        ),
        (
            format!("t=soon,v1={good}"),
            "header `stripe-signature` is `soon`; expected a unix timestamp in seconds",
        ),
    ] {
        assert_eq!(
            check(&v, &[("stripe-signature", &value)], BODY, NOW)
                .unwrap_err()
                .to_string(),
            text
        );
    }
    // Stripe does not base64-decode `whsec_`: a signature made with the decoded key fails.
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let v = compile(&format!("scheme: stripe\nsecret: {secret}\n"));
    let decoded =
        hex::encode(HmacAlgorithm::Sha256.sign(&sw_key(secret), &[t.as_bytes(), b".", BODY]));
    let value = format!("t={t},v1={decoded}");
    assert_eq!(
        check(&v, &[("stripe-signature", &value)], BODY, NOW),
        Err(Rejection::BadSignature)
    );
}

#[test]
fn github_shopify_and_slack_refuse_malformed_signatures_by_name() {
    let gh = compile("scheme: github\nsecret: s\n");
    for (value, text) in [
        (
            "sha1=abcd",
            "header `x-hub-signature-256` does not start with `sha256=`",
        ),
        (
            "sha256=xyz",
            "signature in header `x-hub-signature-256` is not valid hex",
        ),
    ] {
        assert_eq!(
            check(&gh, &[("x-hub-signature-256", value)], BODY, NOW)
                .unwrap_err()
                .to_string(),
            text
        );
    }
    let two = [
        ("x-hub-signature-256", "sha256=00"),
        ("x-hub-signature-256", "sha256=11"),
    ];
    assert_eq!(
        check(&gh, &two, BODY, NOW).unwrap_err().to_string(),
        "header `x-hub-signature-256` appears more than once; expected once"
    );
    let shop = compile("scheme: shopify\nsecret: s\n");
    assert_eq!(
        check(&shop, &[("x-shopify-hmac-sha256", "not*base64")], BODY, NOW)
            .unwrap_err()
            .to_string(),
        "signature in header `x-shopify-hmac-sha256` is not valid base64"
    );
    let slack = compile("scheme: slack\nsecret: s\n");
    let ts = NOW.to_string();
    assert_eq!(
        check(
            &slack,
            &[
                ("x-slack-signature", "v1=00"),
                ("x-slack-request-timestamp", &ts)
            ],
            BODY,
            NOW
        )
        .unwrap_err()
        .to_string(),
        "header `x-slack-signature` does not start with `v0=`"
    );
    assert_eq!(
        check(&slack, &[("x-slack-signature", "v0=00")], BODY, NOW)
            .unwrap_err()
            .to_string(),
        "missing header `x-slack-request-timestamp`"
    );
}

#[test]
fn generic_hmac_reads_its_header_algorithm_encoding_prefix_and_template() {
    let body = b"payload";
    // sha1, hex, with a prefix, over the body.
    let v =
        compile("scheme: hmac\nsecret: k\nheader: X-Signature\nalgorithm: sha1\nprefix: 'sha1='\n");
    let sig = format!(
        "sha1={}",
        hex::encode(HmacAlgorithm::Sha1.sign(b"k", &[body]))
    );
    assert!(check(&v, &[("x-signature", &sig)], body, NOW).is_ok());
    assert_eq!(
        check(&v, &[("x-signature", &sig)], b"other", NOW),
        Err(Rejection::BadSignature)
    );
    assert_eq!(
        check(&v, &[("x-signature", &sig[5..])], body, NOW)
            .unwrap_err()
            .to_string(),
        "header `x-signature` does not start with `sha1=`"
    );
    // sha512, base64, over `{timestamp}.{body}` with a timestamp header.
    let v = compile(
        "scheme: hmac\nsecrets: [old, k]\nheader: x-sig\nalgorithm: sha512\nencoding: base64\n\
         signed: '{timestamp}.{body}'\ntimestamp_header: x-ts\ntolerance: 1m\n",
    );
    let t = NOW.to_string();
    let sig = B64.encode(HmacAlgorithm::Sha512.sign(b"k", &[t.as_bytes(), b".", body]));
    let h = [("x-sig", sig.as_str()), ("x-ts", t.as_str())];
    assert_eq!(check(&v, &h, body, NOW).unwrap().secret_index, Some(1));
    assert_eq!(
        check(&v, &h, body, NOW + 61).unwrap_err().to_string(),
        "timestamp is 61 s old; tolerance is 60 s"
    );
    assert_eq!(
        check(&v, &[("x-sig", &sig)], body, NOW),
        Err(Rejection::MissingHeader("x-ts".into()))
    );
    assert_eq!(
        check(&v, &[("x-sig", "%%%"), ("x-ts", &t)], body, NOW)
            .unwrap_err()
            .to_string(),
        "signature in header `x-sig` is not valid base64"
    );
    // `{id}` with an id header, base64url; the id is the message id.
    let v = compile(
        "scheme: hmac\nsecret: k\nheader: x-sig\nencoding: base64url\nsigned: 'v1:{id}:{body}'\nid_header: x-id\n",
    );
    let mac = HmacAlgorithm::Sha256.sign(b"k", &[b"v1:", b"abc", b":", body]);
    let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac);
    let h = headers(&[("x-sig", &sig), ("x-id", "abc")]);
    let req = Inbound {
        headers: &h,
        query: None,
        body,
    };
    assert!(
        v.verify_offline(&req, &crate::verify::tests::resolve, NOW)
            .is_ok()
    );
    assert_eq!(v.message_id(&req).as_deref(), Some("abc"));
    let h = [("x-sig", sig.as_str()), ("x-id", "abd")];
    assert_eq!(check(&v, &h, body, NOW), Err(Rejection::BadSignature));
}

#[test]
fn generic_hmac_configuration_errors_say_what_to_add() {
    for (yaml, text) in [
        (
            "scheme: hmac\nsecret: k\n",
            "scheme `hmac` needs `header`: the header that holds the signature",
        ),
        (
            "scheme: hmac\nsecret: k\nheader: x\ntimestamp_header: t\n",
            "`timestamp_header` is set but `signed` does not contain `{timestamp}`; an unsigned timestamp does not stop replays",
        ),
        (
            "scheme: hmac\nsecret: k\nheader: x\nsigned: '{timestamp}.{body}'\n",
            "`signed` contains `{timestamp}`; set `timestamp_header` to the header that holds it",
        ),
        (
            "scheme: hmac\nsecret: k\nheader: x\nsigned: '{ts}.{body}'\n",
            "unknown placeholder `{ts}` in `signed`; expected `{timestamp}`, `{id}` or `{body}`",
        ),
        (
            "scheme: hmac\nsecret: k\nheader: x\nsigned: '{id}'\nid_header: i\n",
            "`signed` is `{id}`, which does not contain `{body}`; the body would be unprotected",
        ),
        (
            "scheme: hmac\nsecret: k\nheader: x\nsigned: '{body'\n",
            "`signed` has an unclosed `{` in `{body`",
        ),
        (
            "scheme: hmac\nsecret: k\nheader: 'a b'\n",
            "`header` is `a b`, which is not a valid header name",
        ),
        (
            "scheme: hmac\nsecret: k\nheader: x\ntolerance: 1m\n",
            "`tolerance` needs `timestamp_header` (and `{timestamp}` in `signed`)",
        ),
        (
            "scheme: hmac\nsecret: k\nheader: x\nsigned: '{id}.{body}'\n",
            "`signed` contains `{id}`; set `id_header` to the header that holds it",
        ),
    ] {
        assert_eq!(compile_err(yaml), text, "{yaml}");
    }
    assert!(
        compile_err("scheme: hmac\nsecret: k\nheader: x\nalgorithm: md5\n")
            .contains("unknown variant `md5`")
    );
}

#[test]
fn non_ascii_and_duplicate_headers_are_malformed_not_panics() {
    let v = compile("scheme: github\nsecret: s\n");
    let mut h = axum::http::HeaderMap::new();
    h.insert(
        "x-hub-signature-256",
        axum::http::HeaderValue::from_bytes(b"sha256=\xff\xfe").unwrap(),
    );
    let req = Inbound {
        headers: &h,
        query: None,
        body: BODY,
    };
    assert!(matches!(
        v.verify_offline(&req, &crate::verify::tests::resolve, NOW),
        Err(Rejection::Malformed(_))
    ));
}
