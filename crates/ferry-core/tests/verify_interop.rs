//! Interop of `ferry_core::verify` with the providers' own signing libraries (npm
//! `standardwebhooks`, `svix`, `stripe`, `@octokit/webhooks-methods`; Shopify and Slack through
//! `node:crypto`, as they publish no signing library): what they sign must verify, and their
//! signatures over another body, with another secret or at an old time must not.
//!
//! One node process signs every case (`tests/interop/sign.mjs --batch`); the libraries are
//! installed by `scripts/interop-setup`, which is quick when they already are. Needs `node` and
//! `npm` on PATH. On a machine without them, `FERRY_SKIP_INTEROP=1` at build time marks these
//! tests ignored (crates/ferry-core/build.rs): cargo's summary then counts them as ignored, and
//! `scripts/test` names them, instead of a green line over tests that did not run.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Value as Json, json};
use zeroize::Zeroizing;

use ferry_core::flow::model::ValueSource;
use ferry_core::verify::{Inbound, Rejection, Verified, Verifier, VerifyConfig};

const BODY: &str = r#"{"type":"invoice.paid","text":"héllo ✓","n":[1,2.5,null]}"#;
const OTHER_SECRET: &str = "whsec_dGhpcyBpcyBhIGRpZmZlcmVudCBrZXkh";

/// (label, `scheme:` value, library name in sign.mjs, secret, timestamped).
const LIBRARIES: &[(&str, &str, &str, &str, bool)] = &[
    (
        "standardwebhooks",
        "standard-webhooks",
        "standard-webhooks",
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        true,
    ),
    (
        "svix",
        "standard-webhooks",
        "svix",
        "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
        true,
    ),
    (
        "stripe",
        "stripe",
        "stripe",
        "whsec_interop_stripe_secret",
        true,
    ),
    (
        "octokit",
        "github",
        "github",
        "It's a Secret to Everybody",
        false,
    ),
    (
        "shopify",
        "shopify",
        "shopify",
        "shpss_interop_secret",
        false,
    ),
    (
        "slack",
        "slack",
        "slack",
        "8f742231b10e8888abcd99yyyzzz85a5",
        true,
    ),
];

/// What a case is signed with: the right secret now, the wrong secret, or 1000 s ago.
#[derive(Clone, Copy, PartialEq)]
enum Variant {
    Good,
    WrongSecret,
    Old,
}
const VARIANTS: [Variant; 3] = [Variant::Good, Variant::WrongSecret, Variant::Old];

struct Signed {
    now: i64,
    /// Per library, per variant: the headers the library produced.
    headers: Vec<[HeaderMap; 3]>,
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Installs the libraries if needed and signs every case with one node process.
fn signed() -> &'static Signed {
    static SIGNED: OnceLock<Signed> = OnceLock::new();
    SIGNED.get_or_init(|| {
        let root = repo_root();
        let setup = Command::new(root.join("scripts/interop-setup"))
            .status()
            .expect("run scripts/interop-setup (needs bash, node and npm)");
        assert!(setup.success(), "scripts/interop-setup failed: {setup}");

        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let mut cases = Vec::new();
        for (_, _, lib, secret, _) in LIBRARIES {
            for variant in VARIANTS {
                let (secret, ts) = match variant {
                    Variant::Good => (*secret, now),
                    Variant::WrongSecret => (OTHER_SECRET, now),
                    Variant::Old => (*secret, now - 1000),
                };
                cases.push(json!({
                    "scheme": lib, "secret": secret, "body": BODY, "timestamp": ts,
                    "id": "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W",
                }));
            }
        }
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), serde_json::to_vec(&cases).unwrap()).unwrap();
        let out = Command::new("node")
            .arg(root.join("tests/interop/sign.mjs"))
            .arg("--batch")
            .arg(file.path())
            .output()
            .expect("run node (install Node.js, or build the tests with FERRY_SKIP_INTEROP=1)");
        assert!(
            out.status.success(),
            "sign.mjs failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let results: Vec<Json> = serde_json::from_slice(&out.stdout).expect("sign.mjs prints JSON");
        assert_eq!(results.len(), cases.len());
        let maps: Vec<HeaderMap> = results
            .iter()
            .map(|r| {
                let mut map = HeaderMap::new();
                for (k, v) in r["headers"].as_object().expect("headers object") {
                    map.insert(
                        HeaderName::from_bytes(k.as_bytes()).unwrap(),
                        HeaderValue::from_str(v.as_str().unwrap()).unwrap(),
                    );
                }
                map
            })
            .collect();
        let headers = maps
            .chunks(3)
            .map(|c| [c[0].clone(), c[1].clone(), c[2].clone()])
            .collect();
        Signed { now, headers }
    })
}

fn resolve(src: &ValueSource) -> Result<Zeroizing<String>, String> {
    match src {
        ValueSource::Literal(s) => Ok(Zeroizing::new(s.clone())),
        other => Err(format!("unexpected source {other:?}")),
    }
}

fn verifier(scheme: &str, secrets: &[&str]) -> Verifier {
    let yaml = format!(
        "scheme: {scheme}\nsecrets: {}\n",
        serde_json::to_string(secrets).unwrap()
    );
    let cfg: VerifyConfig = serde_saphyr::from_str(&yaml).unwrap();
    Verifier::compile(&cfg).unwrap()
}

fn verify(v: &Verifier, headers: &HeaderMap, body: &str, now: i64) -> Result<Verified, Rejection> {
    let req = Inbound {
        headers,
        query: None,
        body: body.as_bytes(),
    };
    v.verify_offline(&req, &resolve, now)
}

/// Runs the checks for one library.
fn library(label: &str) {
    let signed = signed();
    let i = LIBRARIES.iter().position(|l| l.0 == label).unwrap();
    let (_, scheme, _, secret, timestamped) = LIBRARIES[i];
    let [good, wrong, old] = &signed.headers[i];
    let now = signed.now;
    let v = verifier(scheme, &[secret]);

    let ok = verify(&v, good, BODY, now);
    assert!(ok.is_ok(), "{label}: its own signature: {ok:?}");
    // Rotation: the library's secret second in the list.
    let rotated = verifier(scheme, &[OTHER_SECRET, secret]);
    assert_eq!(
        verify(&rotated, good, BODY, now).unwrap().secret_index,
        Some(1),
        "{label}"
    );
    assert_eq!(
        verify(&v, good, &BODY.replace("2.5", "3.5"), now),
        Err(Rejection::BadSignature),
        "{label}: tampered body"
    );
    assert_eq!(
        verify(&v, wrong, BODY, now),
        Err(Rejection::BadSignature),
        "{label}: another secret"
    );
    if timestamped {
        assert!(
            matches!(
                verify(&v, old, BODY, now),
                Err(Rejection::StaleTimestamp {
                    age: 1000,
                    tolerance: 300
                })
            ),
            "{label}: signed 1000 s ago"
        );
    } else {
        // No timestamp in these schemes: an old delivery verifies (dedupe handles replays).
        assert!(verify(&v, old, BODY, now).is_ok(), "{label}");
    }
    if matches!(scheme, "standard-webhooks" | "github" | "shopify") {
        let req = Inbound {
            headers: good,
            query: None,
            body: BODY.as_bytes(),
        };
        assert_eq!(
            v.message_id(&req).as_deref(),
            Some("msg_2KWPBgLlAfxdpx2AI54pPJ85f4W"),
            "{label}"
        );
    }
}

#[test]
#[cfg_attr(
    ferry_skip_interop,
    ignore = "FERRY_SKIP_INTEROP=1: needs node and the providers' npm libraries"
)]
fn verify_interop_standardwebhooks_library() {
    library("standardwebhooks");
}

#[test]
#[cfg_attr(
    ferry_skip_interop,
    ignore = "FERRY_SKIP_INTEROP=1: needs node and the providers' npm libraries"
)]
fn verify_interop_svix_library() {
    library("svix");
}

#[test]
#[cfg_attr(
    ferry_skip_interop,
    ignore = "FERRY_SKIP_INTEROP=1: needs node and the providers' npm libraries"
)]
fn verify_interop_stripe_library() {
    library("stripe");
}

#[test]
#[cfg_attr(
    ferry_skip_interop,
    ignore = "FERRY_SKIP_INTEROP=1: needs node and the providers' npm libraries"
)]
fn verify_interop_octokit_webhooks_methods() {
    library("octokit");
}

#[test]
#[cfg_attr(
    ferry_skip_interop,
    ignore = "FERRY_SKIP_INTEROP=1: needs node and the providers' npm libraries"
)]
fn verify_interop_shopify_with_node_crypto() {
    library("shopify");
}

#[test]
#[cfg_attr(
    ferry_skip_interop,
    ignore = "FERRY_SKIP_INTEROP=1: needs node and the providers' npm libraries"
)]
fn verify_interop_slack_with_node_crypto() {
    library("slack");
}
