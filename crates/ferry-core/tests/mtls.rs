//! `tls:` against a server that requires client certificates: a CA, a server certificate
//! and client certificates are made at test time (rcgen); the server is tokio-rustls on
//! 127.0.0.1:0 and answers one plain HTTP/1.1 response per connection, naming the client
//! certificate it saw.

use std::sync::Arc;

use ferry_core::connection::Connection;
use ferry_core::connection::auth::AuthError;
use ferry_core::flow::model::{ConnectionConfig, ValueSource};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use zeroize::Zeroizing;

struct Ca {
    cert: rcgen::Certificate,
    issuer: Issuer<'static, KeyPair>,
}

fn ca(name: &str) -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    Ca {
        cert,
        issuer: Issuer::new(params, key),
    }
}

/// A leaf certificate signed by `ca`: (certificate PEM, key PEM, certificate DER, key DER).
fn leaf(ca: &Ca, names: &[&str], cn: &str) -> (String, String, CertificateDer<'static>, Vec<u8>) {
    let mut params =
        CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    (
        cert.pem(),
        key.serialize_pem(),
        cert.der().clone(),
        key.serialize_der(),
    )
}

/// Starts the server; returns its base URL.
async fn server(ca: &Ca) -> String {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = RootCertStore::empty();
    roots.add(ca.cert.der().clone()).unwrap();
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .unwrap();
    let (_, _, cert, key) = leaf(ca, &["127.0.0.1", "localhost"], "server");
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![cert],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key)),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // A refused handshake just ends the connection; the client sees the alert.
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let client = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|c| c.len())
                    .unwrap_or(0);
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let body = format!("client certificate of {client} bytes");
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(resp.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    url
}

fn connection(url: &str, tls_yaml: &str, env: &[(&str, String)]) -> Result<Connection, AuthError> {
    let yaml = format!("id: secure\nbase_url: {url}\ntls: {tls_yaml}\n");
    let cfg: ConnectionConfig = ferry_core::flow::node::parse_yaml(&yaml)
        .unwrap()
        .parse()
        .unwrap();
    // Environment values come from the test, not the process (setting variables is unsafe).
    let resolve = |v: &ValueSource| match v {
        ValueSource::Literal(s) => Ok(Zeroizing::new(s.clone())),
        ValueSource::Env { env: name } => env
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| Zeroizing::new(v.clone()))
            .ok_or_else(|| format!("environment variable `{name}` is not set")),
        #[allow(unreachable_patterns)]
        _ => Err("unsupported value source".into()),
    };
    Connection::from_config_with(&cfg, &resolve)
}

async fn get(conn: &Connection, url: &str) -> Result<String, String> {
    let client = conn.client_for(&reqwest::Client::new());
    let resp = client.get(format!("{url}/ping")).send().await;
    match resp {
        Ok(r) => Ok(r.text().await.unwrap()),
        Err(e) => {
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg = format!("{msg}: {s}");
                src = s.source();
            }
            Err(msg)
        }
    }
}

#[tokio::test]
async fn a_connection_with_a_client_certificate_reaches_a_server_that_requires_one() {
    let ca = ca("Ferry test CA");
    let url = server(&ca).await;
    let (cert, key, _, _) = leaf(&ca, &["ferry-client"], "ferry-client");
    let env = [
        ("CA_PEM", ca.cert.pem()),
        ("CERT_PEM", cert.clone()),
        ("KEY_PEM", key.clone()),
    ];

    // PEM from the environment.
    let conn = connection(
        &url,
        "{ ca: { env: CA_PEM }, client_cert: { env: CERT_PEM }, client_key: { env: KEY_PEM } }",
        &env,
    )
    .unwrap();
    let body = get(&conn, &url).await.unwrap();
    assert!(body.starts_with("client certificate of "), "{body}");
    assert!(!body.starts_with("client certificate of 0 "), "{body}");

    // PEM files named by path.
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let yaml = format!(
        "{{ ca: '{}', client_cert: '{}', client_key: '{}' }}",
        path("ca.pem", &ca.cert.pem()),
        path("client.pem", &cert),
        path("client.key", &key)
    );
    let conn = connection(&url, &yaml, &[]).unwrap();
    assert!(get(&conn, &url).await.is_ok());
}

#[tokio::test]
async fn without_the_client_certificate_or_the_ca_the_connection_fails() {
    let ours = ca("Ferry test CA");
    let url = server(&ours).await;
    let env = [("CA_PEM", ours.cert.pem())];

    // Trusts the server, but shows no certificate: the server refuses the handshake.
    let conn = connection(&url, "{ ca: { env: CA_PEM } }", &env).unwrap();
    let e = get(&conn, &url).await.unwrap_err();
    assert!(e.contains("CertificateRequired"), "{e}");

    // A certificate from another CA is refused too.
    let other = ca("Another CA");
    let (cert, key, _, _) = leaf(&other, &["intruder"], "intruder");
    let env = [
        ("CA_PEM", ours.cert.pem()),
        ("CERT_PEM", cert),
        ("KEY_PEM", key),
    ];
    let conn = connection(
        &url,
        "{ ca: { env: CA_PEM }, client_cert: { env: CERT_PEM }, client_key: { env: KEY_PEM } }",
        &env,
    )
    .unwrap();
    assert!(get(&conn, &url).await.is_err());

    // Without `ca`, the client does not trust the test CA's server certificate.
    let (cert, key, _, _) = leaf(&ours, &["ferry-client"], "ferry-client");
    let env = [("CERT_PEM", cert), ("KEY_PEM", key)];
    let conn = connection(
        &url,
        "{ client_cert: { env: CERT_PEM }, client_key: { env: KEY_PEM } }",
        &env,
    )
    .unwrap();
    let e = get(&conn, &url).await.unwrap_err();
    assert!(e.contains("UnknownIssuer"), "{e}");
}

#[test]
fn a_key_that_does_not_match_the_certificate_is_a_load_error() {
    let ca = ca("Ferry test CA");
    let (cert, _, _, _) = leaf(&ca, &["a"], "a");
    let (_, other_key, _, _) = leaf(&ca, &["b"], "b");
    let env = [("CERT_PEM", cert), ("KEY_PEM", other_key.clone())];
    let e = connection(
        "https://127.0.0.1:1",
        "{ client_cert: { env: CERT_PEM }, client_key: { env: KEY_PEM } }",
        &env,
    )
    .unwrap_err();
    let text = e.to_string();
    assert!(text.starts_with("tls: "), "{text}");
    assert!(!text.contains(other_key.lines().nth(1).unwrap()), "{text}");
}
