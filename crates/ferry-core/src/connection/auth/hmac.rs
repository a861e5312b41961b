//! `hmac`: a signature over the final request, in a header.

use base64::Engine as _;
use hmac::{KeyInit, Mac};
use reqwest::header::{HeaderName, HeaderValue};
use zeroize::Zeroizing;

use super::{Applied, AuthError, MASK, Resolver, header_name, resolve_field};
use crate::flow::model::{Encoding, HmacAlgorithm, HmacAuth, KeyEncoding, ValueSource};

pub(super) struct Hmac {
    algorithm: HmacAlgorithm,
    key: ValueSource,
    key_encoding: KeyEncoding,
    header: HeaderName,
    encoding: Encoding,
    prefix: String,
    signed: Vec<Piece>,
    timestamp_header: Option<HeaderName>,
}

#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Text(String),
    Method,
    Path,
    Query,
    Target,
    Host,
    Timestamp,
    Body,
}

const PLACEHOLDERS: &str = "{method}, {path}, {query}, {target}, {host}, {timestamp}, {body}";

/// `signed:` as pieces. `\n`, `\r`, `\t` and `\\` are escapes, so a single-quoted YAML
/// string can say "newline" (YAML only unescapes in double quotes).
fn parse_signed(text: &str) -> Result<Vec<Piece>, String> {
    if text.trim() == "body" {
        return Ok(vec![Piece::Body]);
    }
    let mut out = Vec::new();
    let mut lit = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some('n') => lit.push('\n'),
                Some('r') => lit.push('\r'),
                Some('t') => lit.push('\t'),
                Some('\\') => lit.push('\\'),
                Some('{') => lit.push('{'),
                other => {
                    lit.push('\\');
                    lit.extend(other);
                }
            },
            '{' => {
                let name: String = chars.by_ref().take_while(|c| *c != '}').collect();
                let piece = match name.as_str() {
                    "method" => Piece::Method,
                    "path" => Piece::Path,
                    "query" => Piece::Query,
                    "target" => Piece::Target,
                    "host" => Piece::Host,
                    "timestamp" => Piece::Timestamp,
                    "body" => Piece::Body,
                    other => {
                        return Err(format!(
                            "`hmac.signed`: unknown placeholder `{{{other}}}`; expected {PLACEHOLDERS}"
                        ));
                    }
                };
                if !lit.is_empty() {
                    out.push(Piece::Text(std::mem::take(&mut lit)));
                }
                out.push(piece);
            }
            c => lit.push(c),
        }
    }
    if !lit.is_empty() {
        out.push(Piece::Text(lit));
    }
    Ok(out)
}

impl Hmac {
    pub(super) fn compile(c: &HmacAuth) -> Result<Hmac, AuthError> {
        let signed =
            parse_signed(c.signed.as_deref().unwrap_or("body")).map_err(AuthError::Config)?;
        let timestamp_header = c
            .timestamp_header
            .as_deref()
            .map(|h| header_name("hmac.timestamp_header", h))
            .transpose()?;
        if signed.contains(&Piece::Timestamp) && timestamp_header.is_none() {
            return Err(AuthError::Config(
                "`hmac.signed` uses `{timestamp}` but `timestamp_header` is not set; the receiver needs it to check the signature".into(),
            ));
        }
        let h = Hmac {
            algorithm: c.algorithm,
            key: c.key.clone(),
            key_encoding: c.key_encoding,
            header: header_name("hmac.header", &c.header)?,
            encoding: c.encoding,
            prefix: c.prefix.clone().unwrap_or_default(),
            signed,
            timestamp_header,
        };
        if let ValueSource::Literal(k) = &h.key {
            h.key_bytes(k)?;
        }
        Ok(h)
    }

    fn key_bytes(&self, key: &str) -> Result<Zeroizing<Vec<u8>>, AuthError> {
        let bad = |what: &str| AuthError::Value {
            field: "hmac.key",
            message: format!("the key is not valid {what} (`key_encoding`)"),
        };
        Ok(Zeroizing::new(match self.key_encoding {
            KeyEncoding::Text => key.as_bytes().to_vec(),
            KeyEncoding::Hex => hex::decode(key.trim()).map_err(|_| bad("hex"))?,
            KeyEncoding::Base64 => base64::engine::general_purpose::STANDARD
                .decode(key.trim())
                .map_err(|_| bad("base64"))?,
        }))
    }

    /// The bytes signed for `req` at Unix time `now`.
    fn message(&self, req: &reqwest::Request, now: u64) -> Result<Vec<u8>, AuthError> {
        let body: &[u8] = match req.body() {
            None => &[],
            Some(b) => b.as_bytes().ok_or_else(|| {
                AuthError::Sign("a streamed body cannot be signed; send it whole".into())
            })?,
        };
        let url = req.url();
        let mut out = Vec::with_capacity(body.len() + 64);
        for p in &self.signed {
            match p {
                Piece::Text(t) => out.extend_from_slice(t.as_bytes()),
                Piece::Method => out.extend_from_slice(req.method().as_str().as_bytes()),
                Piece::Path => out.extend_from_slice(url.path().as_bytes()),
                Piece::Query => out.extend_from_slice(url.query().unwrap_or("").as_bytes()),
                Piece::Target => {
                    out.extend_from_slice(url.path().as_bytes());
                    if let Some(q) = url.query() {
                        out.push(b'?');
                        out.extend_from_slice(q.as_bytes());
                    }
                }
                Piece::Host => out.extend_from_slice(url.host_str().unwrap_or("").as_bytes()),
                Piece::Timestamp => out.extend_from_slice(now.to_string().as_bytes()),
                Piece::Body => out.extend_from_slice(body),
            }
        }
        Ok(out)
    }

    pub(super) fn apply(
        &self,
        req: &mut reqwest::Request,
        resolve: &Resolver<'_>,
        now: u64,
        applied: &mut Applied,
    ) -> Result<(), AuthError> {
        let key = resolve_field(resolve, "hmac.key", &self.key)?;
        let key = self.key_bytes(&key)?;
        let message = self.message(req, now)?;
        let mac = sign(self.algorithm, &key, &message);
        let encoded = match self.encoding {
            Encoding::Hex => hex::encode(mac),
            Encoding::Base64 => base64::engine::general_purpose::STANDARD.encode(mac),
        };
        let value = format!("{}{encoded}", self.prefix);
        let hv = HeaderValue::from_str(&value)
            .map_err(|_| AuthError::Config("`hmac.prefix` is not valid in a header".into()))?;
        if let Some(th) = &self.timestamp_header {
            req.headers_mut().insert(th.clone(), HeaderValue::from(now));
            applied.headers.push((th.clone(), now.to_string()));
        }
        req.headers_mut().insert(self.header.clone(), hv);
        applied.headers.push((self.header.clone(), MASK.into()));
        Ok(())
    }
}

fn sign(algorithm: HmacAlgorithm, key: &[u8], message: &[u8]) -> Vec<u8> {
    fn run<M: Mac + KeyInit>(key: &[u8], message: &[u8]) -> Vec<u8> {
        let mut m = <M as KeyInit>::new_from_slice(key).expect("HMAC takes keys of any length");
        m.update(message);
        m.finalize().into_bytes().to_vec()
    }
    match algorithm {
        HmacAlgorithm::Sha1 => run::<hmac::Hmac<sha1::Sha1>>(key, message),
        HmacAlgorithm::Sha256 => run::<hmac::Hmac<sha2::Sha256>>(key, message),
        HmacAlgorithm::Sha512 => run::<hmac::Hmac<sha2::Sha512>>(key, message),
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{auth, request, resolver};
    use super::*;

    fn signature(yaml: &str, req: &mut reqwest::Request, now: u64) -> (String, Applied) {
        let a = auth(yaml).unwrap();
        let super::super::Kind::Hmac(h) = &a.kind else {
            panic!("not hmac")
        };
        let mut applied = Applied::default();
        h.apply(req, &resolver, now, &mut applied).unwrap();
        let name = h.header.clone();
        (req.headers()[name].to_str().unwrap().to_owned(), applied)
    }

    #[test]
    fn rfc_4231_and_2202_vectors_sign_the_body() {
        // RFC 4231 test case 2 and RFC 2202 test case 2: key "Jefe".
        let body = "what do ya want for nothing?";
        let mut req = request("POST", "https://api.example/hooks", body);
        let (sig, applied) = signature(
            "hmac: { key: Jefe, header: X-Signature, prefix: 'sha256=' }",
            &mut req,
            0,
        );
        assert_eq!(
            sig,
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(
            applied.headers,
            vec![(HeaderName::from_static("x-signature"), MASK.into())]
        );
        let mut req = request("POST", "https://api.example/hooks", body);
        let (sig, _) = signature(
            "hmac: { algorithm: sha1, key: Jefe, header: X-Hub-Signature }",
            &mut req,
            0,
        );
        assert_eq!(sig, "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79");
        let mut req = request("POST", "https://api.example/hooks", body);
        let (sig, _) = signature(
            "hmac: { algorithm: sha512, key: 4a656665, key_encoding: hex, header: S, encoding: base64 }",
            &mut req,
            0,
        );
        let expected = hex::decode("164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea2505549758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737").unwrap();
        assert_eq!(
            sig,
            base64::engine::general_purpose::STANDARD.encode(expected)
        );
    }

    #[test]
    fn a_template_signs_method_path_query_and_timestamp() {
        let yaml = r"hmac: { key: k, header: X-Sig, signed: '{method}\n{target}\n{timestamp}\n{body}', timestamp_header: X-Timestamp }";
        let mut req = request("PUT", "https://api.example/v1/c?id=7", "{\"a\":1}");
        let (sig, applied) = signature(yaml, &mut req, 1_700_000_000);
        let expected = hex::encode(sign(
            HmacAlgorithm::Sha256,
            b"k",
            b"PUT\n/v1/c?id=7\n1700000000\n{\"a\":1}",
        ));
        assert_eq!(sig, expected);
        assert_eq!(req.headers()["x-timestamp"], "1700000000");
        assert_eq!(applied.headers[0].1, "1700000000");
        assert_eq!(
            parse_signed("{path}|{query}|{host}").unwrap(),
            vec![
                Piece::Path,
                Piece::Text("|".into()),
                Piece::Query,
                Piece::Text("|".into()),
                Piece::Host
            ]
        );
    }

    #[test]
    fn bad_templates_and_keys_are_load_errors() {
        let e = auth("hmac: { key: k, header: S, signed: '{methd}' }").unwrap_err();
        assert_eq!(
            e.to_string(),
            "`hmac.signed`: unknown placeholder `{methd}`; expected {method}, {path}, {query}, {target}, {host}, {timestamp}, {body}"
        );
        let e = auth("hmac: { key: k, header: S, signed: '{timestamp}.{body}' }").unwrap_err();
        assert!(
            e.to_string().contains("`timestamp_header` is not set"),
            "{e}"
        );
        let e = auth("hmac: { key: zz, key_encoding: hex, header: S }").unwrap_err();
        assert_eq!(
            e.to_string(),
            "`hmac.key`: the key is not valid hex (`key_encoding`)"
        );
    }
}
