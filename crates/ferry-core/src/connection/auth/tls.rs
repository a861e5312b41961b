//! `tls:`: a connection's own HTTP client, with a client certificate (mTLS) and extra
//! trusted CAs. Built once at load: a malformed PEM is a load error, not a failed request.

use std::time::Duration;

use zeroize::Zeroizing;

use super::{AuthError, Resolver, chain};
use crate::flow::model::{TlsConfig, ValueSource};

/// A connection's TLS client.
pub struct Tls {
    client: reqwest::Client,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls")
    }
}

/// PEM text as given, or read from the file the value names. An error names the field and,
/// for a literal path, the path; never a value from the environment or a secret store (it
/// might be a key that merely failed to look like PEM).
fn pem_or_file(
    field: &'static str,
    v: &ValueSource,
    resolve: &Resolver<'_>,
) -> Result<Zeroizing<Vec<u8>>, AuthError> {
    let text = resolve(v).map_err(|m| AuthError::Tls(format!("`{field}`: {m}")))?;
    if text.contains("-----BEGIN") {
        return Ok(Zeroizing::new(text.as_bytes().to_vec()));
    }
    let path = text.trim();
    match std::fs::read(path) {
        Ok(bytes) if String::from_utf8_lossy(&bytes).contains("-----BEGIN") => {
            Ok(Zeroizing::new(bytes))
        }
        result => {
            let why = match result {
                Ok(_) => "holds no PEM block (`-----BEGIN …`)".to_owned(),
                Err(e) => format!("cannot be read ({e})"),
            };
            Err(AuthError::Tls(match v {
                ValueSource::Literal(_) => format!("`{field}`: file `{path}` {why}"),
                _ => format!(
                    "`{field}`: the value is neither PEM text nor the path of a readable PEM file"
                ),
            }))
        }
    }
}

impl Tls {
    /// Reads and checks the PEM values and builds the client.
    /// `redirects` is the connection's `redirects:` (0: none followed).
    pub fn build(
        cfg: &TlsConfig,
        resolve: &Resolver<'_>,
        redirects: usize,
    ) -> Result<Tls, AuthError> {
        // The same settings as the engine's shared client (`engine::http_client`), which
        // this one replaces for the connection.
        let mut builder = reqwest::Client::builder()
            .referer(false)
            .pool_max_idle_per_host(256)
            .redirect(match redirects {
                0 => reqwest::redirect::Policy::none(),
                n => reqwest::redirect::Policy::limited(n),
            })
            .connect_timeout(Duration::from_secs(10));
        if let Some(ca) = &cfg.ca {
            let pem = pem_or_file("tls.ca", ca, resolve)?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| AuthError::Tls(format!("`tls.ca`: invalid PEM ({})", chain(&e))))?;
            if certs.is_empty() {
                return Err(AuthError::Tls(
                    "`tls.ca`: no `CERTIFICATE` block found".into(),
                ));
            }
            builder = builder.tls_certs_merge(certs);
        }
        match (&cfg.client_cert, &cfg.client_key) {
            (Some(cert), key) => {
                let mut pem = pem_or_file("tls.client_cert", cert, resolve)?;
                if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE") {
                    return Err(AuthError::Tls(
                        "`tls.client_cert`: no `CERTIFICATE` block found".into(),
                    ));
                }
                if let Some(key) = key {
                    let key = pem_or_file("tls.client_key", key, resolve)?;
                    pem.push(b'\n');
                    pem.extend_from_slice(&key);
                }
                if !String::from_utf8_lossy(&pem).contains("PRIVATE KEY-----") {
                    return Err(AuthError::Tls(
                        "`tls.client_cert`: no private key found; add `client_key`".into(),
                    ));
                }
                let identity = reqwest::Identity::from_pem(&pem).map_err(|e| {
                    AuthError::Tls(format!(
                        "`tls.client_cert`/`tls.client_key`: invalid PEM ({})",
                        chain(&e)
                    ))
                })?;
                builder = builder.identity(identity);
            }
            (None, Some(_)) => {
                return Err(AuthError::Tls(
                    "`tls.client_key` needs `client_cert`".into(),
                ));
            }
            (None, None) => {}
        }
        // Building parses every certificate and checks the key against the certificate.
        let client = builder.build().map_err(|e| {
            AuthError::Tls(format!(
                "the certificates or key are not usable ({})",
                chain(&e)
            ))
        })?;
        Ok(Tls { client })
    }

    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::resolver;
    use super::*;
    use crate::flow::node::parse_yaml;

    fn build(yaml: &str) -> Result<Tls, AuthError> {
        let cfg: TlsConfig = parse_yaml(yaml).unwrap().parse().unwrap();
        Tls::build(&cfg, &resolver, crate::flow::model::DEFAULT_REDIRECTS)
    }

    fn literal(s: &str) -> String {
        serde_json::to_string(s).unwrap()
    }

    #[test]
    fn a_generated_identity_and_ca_build_a_client() {
        let ca = rcgen::generate_simple_self_signed(vec!["ca".into()]).unwrap();
        let leaf = rcgen::generate_simple_self_signed(vec!["client".into()]).unwrap();
        let yaml = format!(
            "{{ ca: {}, client_cert: {}, client_key: {} }}",
            literal(&ca.cert.pem()),
            literal(&leaf.cert.pem()),
            literal(&leaf.signing_key.serialize_pem()),
        );
        build(&yaml).unwrap();
        // Both in one value works too.
        let both = format!("{}{}", leaf.cert.pem(), leaf.signing_key.serialize_pem());
        build(&format!("{{ client_cert: {} }}", literal(&both))).unwrap();
        // And from files.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, ca.cert.pem()).unwrap();
        build(&format!("{{ ca: {} }}", literal(path.to_str().unwrap()))).unwrap();
    }

    #[test]
    fn malformed_pem_is_a_clear_error_that_shows_no_secret() {
        let leaf = rcgen::generate_simple_self_signed(vec!["client".into()]).unwrap();
        let cert = literal(&leaf.cert.pem());

        let e = build(&format!("{{ client_cert: {cert} }}")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "tls: `tls.client_cert`: no private key found; add `client_key`"
        );
        let garbage_key = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        let e = build(&format!(
            "{{ client_cert: {cert}, client_key: {} }}",
            literal(garbage_key)
        ))
        .unwrap_err();
        assert!(e.to_string().starts_with("tls: "), "{e}");
        assert!(!e.to_string().contains("AAAA"), "{e}");
        let bad_ca = "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n";
        let e = build(&format!("{{ ca: {} }}", literal(bad_ca))).unwrap_err();
        assert!(
            e.to_string().starts_with("tls: `tls.ca`: invalid PEM"),
            "{e}"
        );

        let e = build("{ ca: /surely/not/here.pem }").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("tls: `tls.ca`: file `/surely/not/here.pem` cannot be read"),
            "{e}"
        );
        let e = build("{ client_key: { env: KEY } }").unwrap_err();
        assert_eq!(e.to_string(), "tls: `tls.client_key` needs `client_cert`");
        let e = build("{ ca: { env: CA_PEM } }").unwrap_err();
        assert_eq!(
            e.to_string(),
            "tls: `tls.ca`: the value is neither PEM text nor the path of a readable PEM file"
        );
        let e = build("{ ca: { env: MISSING } }").unwrap_err();
        assert_eq!(
            e.to_string(),
            "tls: `tls.ca`: environment variable `MISSING` is not set"
        );
        assert_eq!(e.key(), "tls");
    }
}
