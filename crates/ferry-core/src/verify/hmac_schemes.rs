//! The signature schemes: Standard Webhooks (HMAC `v1` and Ed25519 `v1a`), Stripe, GitHub,
//! Shopify, Slack and the generic `hmac`. Each reads its headers, checks the timestamp where it
//! has one, and compares every signature in the request with every secret in constant time.

use std::time::Duration;

use ed25519_dalek::{Signature, VerifyingKey};
use hmac::{Hmac, KeyInit, Mac};
use schemars::JsonSchema;
use serde::Deserialize;
use zeroize::Zeroizing;

use super::{
    Inbound, MAX_SIGNATURES, Rejection, Resolve, SchemeName, SignatureEncoding, Verified,
    VerifyConfig, b64_std, b64_url, check_timestamp, header, header_name, optional_header,
    resolve_all, secret_label,
};
use crate::flow::model::ValueSource;

/// The hash of a generic `hmac` signature.
#[derive(Deserialize, JsonSchema, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum HmacAlgorithm {
    Sha1,
    Sha256,
    Sha512,
}

impl HmacAlgorithm {
    /// True when `tag` is the HMAC of the concatenated `parts` under `key` (constant time).
    fn verify(self, key: &[u8], parts: &[&[u8]], tag: &[u8]) -> bool {
        match self {
            HmacAlgorithm::Sha1 => mac_verify::<Hmac<sha1::Sha1>>(key, parts, tag),
            HmacAlgorithm::Sha256 => mac_verify::<Hmac<sha2::Sha256>>(key, parts, tag),
            HmacAlgorithm::Sha512 => mac_verify::<Hmac<sha2::Sha512>>(key, parts, tag),
        }
    }

    #[cfg(test)]
    pub(super) fn sign(self, key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
        fn run<M: Mac + KeyInit>(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
            let mut m = <M as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
            for p in parts {
                m.update(p);
            }
            m.finalize().into_bytes().to_vec()
        }
        match self {
            HmacAlgorithm::Sha1 => run::<Hmac<sha1::Sha1>>(key, parts),
            HmacAlgorithm::Sha256 => run::<Hmac<sha2::Sha256>>(key, parts),
            HmacAlgorithm::Sha512 => run::<Hmac<sha2::Sha512>>(key, parts),
        }
    }
}

fn mac_verify<M: Mac + KeyInit>(key: &[u8], parts: &[&[u8]], tag: &[u8]) -> bool {
    let Ok(mut m) = <M as KeyInit>::new_from_slice(key) else {
        return false;
    };
    for p in parts {
        m.update(p);
    }
    // `verify_slice` compares in constant time; a tag of the wrong length simply fails.
    m.verify_slice(tag).is_ok()
}

/// One compiled signature scheme.
pub(super) struct HmacScheme {
    name: SchemeName,
    pub(super) secrets: Vec<ValueSource>,
    tolerance: Duration,
    generic: Option<Generic>,
}

/// The generic `hmac` scheme's settings.
struct Generic {
    header: String,
    algorithm: HmacAlgorithm,
    encoding: SignatureEncoding,
    prefix: String,
    signed: Vec<Part>,
    timestamp_header: Option<String>,
    id_header: Option<String>,
}

/// A piece of the generic scheme's `signed:` template.
#[derive(Debug, PartialEq)]
enum Part {
    Text(Vec<u8>),
    Timestamp,
    Id,
    Body,
}

/// A Standard Webhooks secret: `whsec_…` (HMAC key) or `whpk_…` (Ed25519 public key).
enum SwKey {
    Hmac(Zeroizing<Vec<u8>>),
    Ed25519(VerifyingKey),
}

impl SwKey {
    fn parse(text: &str) -> Result<SwKey, &'static str> {
        let text = text.trim();
        if let Some(pk) = text.strip_prefix("whpk_") {
            let bytes = super::b64_std(pk).ok_or("`whpk_` is not followed by base64")?;
            let bytes: [u8; 32] = bytes
                .try_into()
                .map_err(|_| "a `whpk_` key must hold 32 bytes")?;
            return VerifyingKey::from_bytes(&bytes)
                .map(SwKey::Ed25519)
                .map_err(|_| "the `whpk_` key is not a valid Ed25519 public key");
        }
        if text.starts_with("whsk_") {
            return Err(
                "a `whsk_` value is a private signing key; configure its public key (`whpk_…`)",
            );
        }
        let b64 = text.strip_prefix("whsec_").unwrap_or(text);
        match super::b64_std(b64) {
            Some(bytes) if !bytes.is_empty() => Ok(SwKey::Hmac(Zeroizing::new(bytes))),
            _ => Err("expected `whsec_` followed by base64 (or `whpk_` for an Ed25519 key)"),
        }
    }
}

impl HmacScheme {
    pub(super) fn name(&self) -> SchemeName {
        self.name
    }

    pub(super) fn compile(cfg: &VerifyConfig) -> Result<HmacScheme, String> {
        let name = cfg.scheme;
        let secrets = cfg.secret_list("the signing secret")?;
        if name == SchemeName::StandardWebhooks {
            // Literal secrets can be checked now; others are checked when resolved.
            for (i, s) in secrets.iter().enumerate() {
                if let ValueSource::Literal(text) = s {
                    SwKey::parse(text).map_err(|e| secret_label(i, secrets.len(), e))?;
                }
            }
        }
        let generic = if name == SchemeName::Hmac {
            Some(Generic::compile(cfg)?)
        } else {
            None
        };
        Ok(HmacScheme {
            name,
            secrets,
            tolerance: cfg.tolerance(),
            generic,
        })
    }

    pub(super) fn verify(
        &self,
        req: &Inbound<'_>,
        resolve: &Resolve<'_>,
        now: i64,
    ) -> Result<Verified, Rejection> {
        // Secrets first: an unresolvable secret rejects every request, well-formed or not,
        // so the caller's log says so on the first request.
        let secrets = resolve_all(&self.secrets, resolve)?;
        let matched = match self.name {
            SchemeName::StandardWebhooks => self.standard(req, &secrets, now)?,
            SchemeName::Stripe => self.stripe(req, &secrets, now)?,
            SchemeName::Github => {
                let value = header(req, "x-hub-signature-256")?;
                let hex = value.strip_prefix("sha256=").ok_or_else(|| {
                    Rejection::Malformed(
                        "header `x-hub-signature-256` does not start with `sha256=`".into(),
                    )
                })?;
                let tag = decode_hex("x-hub-signature-256", hex)?;
                first_match(&secrets, |key| {
                    HmacAlgorithm::Sha256.verify(key, &[req.body], &tag)
                })
            }
            SchemeName::Shopify => {
                let value = header(req, "x-shopify-hmac-sha256")?;
                let tag = decode_base64("x-shopify-hmac-sha256", value, SignatureEncoding::Base64)?;
                first_match(&secrets, |key| {
                    HmacAlgorithm::Sha256.verify(key, &[req.body], &tag)
                })
            }
            SchemeName::Slack => {
                let value = header(req, "x-slack-signature")?;
                let ts = header(req, "x-slack-request-timestamp")?;
                let hex = value.strip_prefix("v0=").ok_or_else(|| {
                    Rejection::Malformed(
                        "header `x-slack-signature` does not start with `v0=`".into(),
                    )
                })?;
                let tag = decode_hex("x-slack-signature", hex)?;
                check_timestamp("x-slack-request-timestamp", ts, now, self.tolerance)?;
                let parts: [&[u8]; 4] = [b"v0:", ts.as_bytes(), b":", req.body];
                first_match(&secrets, |key| {
                    HmacAlgorithm::Sha256.verify(key, &parts, &tag)
                })
            }
            _ => self.generic(req, &secrets, now)?,
        };
        match matched {
            Some(i) => Ok(Verified {
                secret_index: Some(i),
                ..Verified::default()
            }),
            None => Err(Rejection::BadSignature),
        }
    }

    fn standard(
        &self,
        req: &Inbound<'_>,
        secrets: &[Zeroizing<String>],
        now: i64,
    ) -> Result<Option<usize>, Rejection> {
        let keys = secrets
            .iter()
            .enumerate()
            .map(|(i, s)| {
                SwKey::parse(s)
                    .map_err(|e| Rejection::SecretUnavailable(secret_label(i, secrets.len(), e)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        // Svix sends the same scheme under `svix-*` names.
        let prefix = if req.headers.contains_key("webhook-signature")
            || !req.headers.contains_key("svix-signature")
        {
            "webhook"
        } else {
            "svix"
        };
        let sig_name = format!("{prefix}-signature");
        let ts_name = format!("{prefix}-timestamp");
        let id_name = format!("{prefix}-id");
        let signatures = header(req, &sig_name)?;
        let ts = header(req, &ts_name)?;
        let id = header(req, &id_name)?;

        let mut hmacs = Vec::new();
        let mut eds = Vec::new();
        for (n, item) in signatures.split_ascii_whitespace().enumerate() {
            if n == MAX_SIGNATURES {
                return Err(Rejection::Malformed(format!(
                    "header `{sig_name}` holds more than {MAX_SIGNATURES} signatures"
                )));
            }
            let Some((version, b64)) = item.split_once(',') else {
                return Err(Rejection::Malformed(format!(
                    "signature {} in header `{sig_name}` is not `VERSION,BASE64`",
                    n + 1
                )));
            };
            let bytes = || {
                b64_std(b64).ok_or_else(|| {
                    Rejection::Malformed(format!(
                        "signature {} in header `{sig_name}` is not valid base64",
                        n + 1
                    ))
                })
            };
            match version {
                "v1" => hmacs.push(bytes()?),
                "v1a" => eds.push(Signature::from_slice(&bytes()?).map_err(|_| {
                    Rejection::Malformed(format!(
                        "signature {} in header `{sig_name}` is not 64 bytes (Ed25519)",
                        n + 1
                    ))
                })?),
                // Versions from the future are skipped, as the specification asks.
                _ => {}
            }
        }
        if hmacs.is_empty() && eds.is_empty() {
            return Err(Rejection::Malformed(format!(
                "header `{sig_name}` holds no `v1` or `v1a` signature"
            )));
        }
        check_timestamp(&ts_name, ts, now, self.tolerance)?;

        let parts: [&[u8]; 5] = [id.as_bytes(), b".", ts.as_bytes(), b".", req.body];
        let message = if eds.is_empty() {
            Vec::new()
        } else {
            parts.concat()
        };
        Ok(keys.iter().position(|key| match key {
            SwKey::Hmac(k) => hmacs
                .iter()
                .any(|tag| HmacAlgorithm::Sha256.verify(k, &parts, tag)),
            SwKey::Ed25519(pk) => eds
                .iter()
                .any(|sig| pk.verify_strict(&message, sig).is_ok()),
        }))
    }

    fn stripe(
        &self,
        req: &Inbound<'_>,
        secrets: &[Zeroizing<String>],
        now: i64,
    ) -> Result<Option<usize>, Rejection> {
        const NAME: &str = "stripe-signature";
        let value = header(req, NAME)?;
        let mut ts = None;
        let mut tags = Vec::new();
        for (n, item) in value.split(',').enumerate() {
            if n == 2 * MAX_SIGNATURES {
                return Err(Rejection::Malformed(format!(
                    "header `{NAME}` holds more than {} items",
                    2 * MAX_SIGNATURES
                )));
            }
            let Some((k, v)) = item.trim().split_once('=') else {
                return Err(Rejection::Malformed(format!(
                    "item {} of header `{NAME}` is not `KEY=VALUE`",
                    n + 1
                )));
            };
            match k {
                "t" if ts.is_some() => {
                    return Err(Rejection::Malformed(format!(
                        "header `{NAME}` has more than one `t=`"
                    )));
                }
                "t" => ts = Some(v),
                "v1" if tags.len() == MAX_SIGNATURES => {
                    return Err(Rejection::Malformed(format!(
                        "header `{NAME}` holds more than {MAX_SIGNATURES} signatures"
                    )));
                }
                "v1" => tags.push(decode_hex(NAME, v)?),
                // `v0` (test mode) and unknown schemes are not verified, as Stripe's libraries do.
                _ => {}
            }
        }
        let ts = ts.ok_or_else(|| {
            Rejection::Malformed(format!("header `{NAME}` has no `t=` timestamp"))
        })?;
        if tags.is_empty() {
            return Err(Rejection::Malformed(format!(
                "header `{NAME}` has no `v1=` signature"
            )));
        }
        check_timestamp(NAME, ts, now, self.tolerance)?;
        let parts: [&[u8]; 3] = [ts.as_bytes(), b".", req.body];
        // Stripe uses the secret's text as the key, `whsec_` included; it is not base64.
        Ok(first_match(secrets, |key| {
            tags.iter()
                .any(|tag| HmacAlgorithm::Sha256.verify(key, &parts, tag))
        }))
    }

    fn generic(
        &self,
        req: &Inbound<'_>,
        secrets: &[Zeroizing<String>],
        now: i64,
    ) -> Result<Option<usize>, Rejection> {
        let Some(g) = &self.generic else {
            return Ok(None);
        };
        let value = header(req, &g.header)?;
        let encoded = value.strip_prefix(g.prefix.as_str()).ok_or_else(|| {
            Rejection::Malformed(format!(
                "header `{}` does not start with `{}`",
                g.header, g.prefix
            ))
        })?;
        let tag = match g.encoding {
            SignatureEncoding::Hex => decode_hex(&g.header, encoded)?,
            enc => decode_base64(&g.header, encoded, enc)?,
        };
        let ts = match &g.timestamp_header {
            Some(name) => {
                let ts = header(req, name)?;
                check_timestamp(name, ts, now, self.tolerance)?;
                ts
            }
            None => "",
        };
        let id = match &g.id_header {
            Some(name) => header(req, name)?,
            None => "",
        };
        let parts: Vec<&[u8]> = g
            .signed
            .iter()
            .map(|p| match p {
                Part::Text(t) => t.as_slice(),
                Part::Timestamp => ts.as_bytes(),
                Part::Id => id.as_bytes(),
                Part::Body => req.body,
            })
            .collect();
        Ok(first_match(secrets, |key| {
            g.algorithm.verify(key, &parts, &tag)
        }))
    }

    pub(super) fn message_id(&self, req: &Inbound<'_>) -> Option<String> {
        let name = match self.name {
            SchemeName::StandardWebhooks => {
                if req.headers.contains_key("webhook-id") {
                    "webhook-id"
                } else {
                    "svix-id"
                }
            }
            SchemeName::Github => "x-github-delivery",
            SchemeName::Shopify => "x-shopify-webhook-id",
            SchemeName::Hmac => self.generic.as_ref()?.id_header.as_deref()?,
            SchemeName::Stripe => return stripe_event_id(req.body),
            _ => return None,
        };
        let id = optional_header(req, name).ok()??;
        usable_id(id)
    }
}

/// Stripe signs no id header; its events carry `"id": "evt_…"` in the body.
fn stripe_event_id(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Event {
        id: String,
    }
    let event: Event = serde_json::from_slice(body).ok()?;
    usable_id(&event.id)
}

/// An id the dedupe store can keep: 1 to 256 visible ASCII characters.
fn usable_id(id: &str) -> Option<String> {
    (!id.is_empty() && id.len() <= 256 && id.bytes().all(|b| b.is_ascii_graphic()))
        .then(|| id.to_owned())
}

/// Index of the first secret for which `check` holds.
fn first_match(secrets: &[Zeroizing<String>], check: impl Fn(&[u8]) -> bool) -> Option<usize> {
    secrets.iter().position(|s| check(s.as_bytes()))
}

fn decode_hex(name: &str, text: &str) -> Result<Vec<u8>, Rejection> {
    hex::decode(text.trim())
        .map_err(|_| Rejection::Malformed(format!("signature in header `{name}` is not valid hex")))
}

fn decode_base64(name: &str, text: &str, enc: SignatureEncoding) -> Result<Vec<u8>, Rejection> {
    let text = text.trim();
    let bytes = match enc {
        SignatureEncoding::Base64url => b64_url(text),
        _ => b64_std(text),
    };
    bytes.ok_or_else(|| {
        Rejection::Malformed(format!("signature in header `{name}` is not valid base64"))
    })
}

impl Generic {
    fn compile(cfg: &VerifyConfig) -> Result<Generic, String> {
        let header = cfg
            .header
            .as_deref()
            .ok_or("scheme `hmac` needs `header`: the header that holds the signature")?;
        let header = header_name("header", header)?;
        let timestamp_header = cfg
            .timestamp_header
            .as_deref()
            .map(|h| header_name("timestamp_header", h))
            .transpose()?;
        let id_header = cfg
            .id_header
            .as_deref()
            .map(|h| header_name("id_header", h))
            .transpose()?;
        let signed = parse_signed(cfg.signed.as_deref().unwrap_or("body"))?;
        if signed.contains(&Part::Timestamp) != timestamp_header.is_some() {
            return Err(if timestamp_header.is_some() {
                "`timestamp_header` is set but `signed` does not contain `{timestamp}`; \
                 an unsigned timestamp does not stop replays"
                    .to_owned()
            } else {
                "`signed` contains `{timestamp}`; set `timestamp_header` to the header that holds it"
                    .to_owned()
            });
        }
        if signed.contains(&Part::Id) && id_header.is_none() {
            return Err(
                "`signed` contains `{id}`; set `id_header` to the header that holds it".to_owned(),
            );
        }
        if cfg.tolerance.is_some() && timestamp_header.is_none() {
            return Err(
                "`tolerance` needs `timestamp_header` (and `{timestamp}` in `signed`)".into(),
            );
        }
        Ok(Generic {
            header,
            algorithm: cfg.algorithm.unwrap_or(HmacAlgorithm::Sha256),
            encoding: cfg.encoding.unwrap_or(SignatureEncoding::Hex),
            prefix: cfg.prefix.clone().unwrap_or_default(),
            signed,
            timestamp_header,
            id_header,
        })
    }
}

/// `body`, or a template such as `{timestamp}.{body}`.
fn parse_signed(text: &str) -> Result<Vec<Part>, String> {
    if text == "body" {
        return Ok(vec![Part::Body]);
    }
    let mut parts = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            parts.push(Part::Text(rest.as_bytes()[..open].to_vec()));
        }
        let after = &rest[open + 1..];
        let close = after
            .find('}')
            .ok_or_else(|| format!("`signed` has an unclosed `{{` in `{text}`"))?;
        parts.push(match &after[..close] {
            "timestamp" => Part::Timestamp,
            "id" => Part::Id,
            "body" => Part::Body,
            other => {
                return Err(format!(
                    "unknown placeholder `{{{other}}}` in `signed`; expected `{{timestamp}}`, `{{id}}` or `{{body}}`"
                ));
            }
        });
        rest = &after[close + 1..];
    }
    if !rest.is_empty() {
        parts.push(Part::Text(rest.as_bytes().to_vec()));
    }
    if !parts.contains(&Part::Body) {
        return Err(format!(
            "`signed` is `{text}`, which does not contain `{{body}}`; the body would be unprotected"
        ));
    }
    Ok(parts)
}

#[cfg(test)]
mod tests;
