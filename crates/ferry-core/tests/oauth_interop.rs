//! OAuth 2.0 against a real authorization server: `oauth2-mock-server` (npm, `tests/oauth`),
//! made strict by `tests/oauth/server.mjs` (one client, expiring tokens, rotating refresh
//! tokens). Needs node and npm; the first run installs the server with `scripts/oauth-setup`.
//!
//! The API the tokens are sent to is a local axum server that checks each token's
//! signature against the provider's JWKS, so "sent as Bearer" means "a token the provider
//! issued, unaltered".

use std::collections::HashSet;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use ferry_core::connection::Connection;
use ferry_core::connection::auth::{self, AuthError, resolve_env};
use ferry_core::flow::model::ConnectionConfig;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{DecodingKey, Validation};
use serde_json::{Value as Json, json};

#[path = "support/node.rs"]
mod node;
use node::{NodeServer, repo};

/// Installs the server once per test binary when it is missing.
fn setup() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        if repo()
            .join("tests/oauth/node_modules/oauth2-mock-server")
            .is_dir()
        {
            return;
        }
        let status = Command::new(repo().join("scripts/oauth-setup"))
            .status()
            .expect("scripts/oauth-setup runs (needs bash, node and npm)");
        assert!(status.success(), "scripts/oauth-setup failed: {status}");
    });
}

/// A running authorization server, stopped on drop.
struct Provider(NodeServer);

impl std::ops::Deref for Provider {
    type Target = NodeServer;
    fn deref(&self) -> &NodeServer {
        &self.0
    }
}

impl Provider {
    fn start(env: &[(&str, &str)]) -> Provider {
        setup();
        Provider(NodeServer::start("oauth", env))
    }

    fn token_url(&self) -> String {
        format!("{}/token", self.url)
    }

    /// Token requests answered so far. Waits a moment first: the server logs a request just
    /// before it answers, and the log arrives on another thread.
    async fn token_requests(&self) -> Vec<Json> {
        tokio::time::sleep(Duration::from_millis(150)).await;
        self.lines.lock().unwrap().clone()
    }

    async fn issued(&self) -> usize {
        self.token_requests()
            .await
            .iter()
            .filter(|e| e["status"] == 200)
            .count()
    }
}

/// The protected API: answers 200 with the token's claims to a valid provider token.
#[derive(Clone)]
struct Api {
    keys: Arc<JwkSet>,
    issuer: String,
    hits: Arc<AtomicUsize>,
    /// Tokens to refuse with 401 (revoked).
    revoked: Arc<Mutex<HashSet<String>>>,
    always_401: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<String>>>,
}

async fn protected(State(api): State<Api>, headers: HeaderMap) -> (StatusCode, axum::Json<Json>) {
    api.hits.fetch_add(1, Ordering::SeqCst);
    let unauthorized = |why: &str| {
        (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({ "error": why })),
        )
    };
    let Some(token) = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return unauthorized("no bearer token");
    };
    api.seen.lock().unwrap().push(token.to_owned());
    if api.always_401.load(Ordering::SeqCst) || api.revoked.lock().unwrap().contains(token) {
        return unauthorized("revoked");
    }
    let Ok(header) = jsonwebtoken::decode_header(token) else {
        return unauthorized("not a JWT");
    };
    let Some(jwk) = header.kid.and_then(|k| api.keys.find(&k).cloned()) else {
        return unauthorized("unknown key");
    };
    let mut v = Validation::new(header.alg);
    v.set_issuer(&[&api.issuer]);
    v.validate_aud = false;
    match jsonwebtoken::decode::<Json>(token, &DecodingKey::from_jwk(&jwk).unwrap(), &v) {
        Ok(data) => (StatusCode::OK, axum::Json(data.claims)),
        Err(e) => unauthorized(&e.to_string()),
    }
}

impl Api {
    async fn start(provider: &Provider) -> (Api, String) {
        let keys: JwkSet = reqwest::get(format!("{}/jwks", provider.url))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let api = Api {
            keys: Arc::new(keys),
            issuer: provider.url.clone(),
            hits: Default::default(),
            revoked: Default::default(),
            always_401: Default::default(),
            seen: Default::default(),
        };
        let app = axum::Router::new()
            .route("/contacts", get(protected))
            .with_state(api.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (api, url)
    }
}

fn connection(api_url: &str, auth_yaml: &str) -> Connection {
    let yaml = format!("id: crm\nbase_url: {api_url}\nauth: {auth_yaml}\n");
    let cfg: ConnectionConfig = ferry_core::flow::node::parse_yaml(&yaml)
        .unwrap()
        .parse()
        .unwrap();
    Connection::from_config(&cfg).unwrap()
}

fn client_credentials(provider: &Provider, extra: &str) -> String {
    format!(
        "{{ oauth2: {{ token_url: '{}', client_id: ferry, client_secret: ferry-secret, scopes: [contacts.write], audience: crm{extra} }} }}",
        provider.token_url()
    )
}

/// One GET /contacts through the connection, as the http step sends it.
async fn call(conn: &Connection, http: &reqwest::Client) -> Result<(u16, Json), AuthError> {
    let req = http
        .get(format!(
            "{}/contacts",
            resolve_env(&conn.base_url).unwrap().as_str()
        ))
        .build()
        .unwrap();
    let sent = auth::send(conn.auth.as_deref(), http, req, &resolve_env).await?;
    let resp = sent.response.expect("the API answers");
    let status = resp.status().as_u16();
    Ok((status, resp.json().await.unwrap_or(Json::Null)))
}

#[tokio::test]
async fn client_credentials_token_is_sent_as_bearer_and_cached() {
    let provider = Provider::start(&[]);
    let (api, api_url) = Api::start(&provider).await;
    let http = reqwest::Client::new();
    let conn = connection(&api_url, &client_credentials(&provider, ""));

    let (status, claims) = call(&conn, &http).await.unwrap();
    assert_eq!(status, 200, "{claims}");
    assert_eq!(claims["sub"], "ferry");
    assert_eq!(claims["aud"], "crm");
    assert_eq!(claims["scope"], "contacts.write");
    let (status, _) = call(&conn, &http).await.unwrap();
    assert_eq!(status, 200);

    let events = provider.token_requests().await;
    assert_eq!(
        events.len(),
        1,
        "the second request reuses the token: {events:?}"
    );
    assert_eq!(events[0]["client_auth"], "basic");
    let issued = events[0]["access_token"].as_str().unwrap();
    assert_eq!(*api.seen.lock().unwrap(), vec![issued, issued]);
    let sensitive = conn.auth.as_ref().unwrap().sensitive_values();
    assert!(sensitive.iter().any(|s| s.as_str() == issued));

    // client_secret_post: the same server, the credentials in the body.
    let conn = connection(
        &api_url,
        &client_credentials(&provider, ", auth_method: post"),
    );
    assert_eq!(call(&conn, &http).await.unwrap().0, 200);
    let events = provider.token_requests().await;
    assert_eq!(events.len(), 2);
    assert_eq!(events[1]["client_auth"], "post");
}

#[tokio::test]
async fn the_token_is_refreshed_before_it_expires() {
    // 2s tokens: the margin is 10% (0.2s), so a new one is fetched after 1.8s.
    let provider = Provider::start(&[("OAUTH_EXPIRES_IN", "2")]);
    let (api, api_url) = Api::start(&provider).await;
    let http = reqwest::Client::new();
    let conn = connection(&api_url, &client_credentials(&provider, ""));

    assert_eq!(call(&conn, &http).await.unwrap().0, 200);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(call(&conn, &http).await.unwrap().0, 200);
    assert_eq!(provider.issued().await, 1, "still fresh after 1s");
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(call(&conn, &http).await.unwrap().0, 200);
    assert_eq!(provider.issued().await, 2, "refreshed before the 2s expiry");
    let seen = api.seen.lock().unwrap().clone();
    assert_eq!(seen[0], seen[1]);
    assert_ne!(seen[1], seen[2]);
}

#[tokio::test]
async fn fifty_concurrent_requests_cause_one_token_request() {
    let provider = Provider::start(&[("OAUTH_EXPIRES_IN", "2")]);
    let (api, api_url) = Api::start(&provider).await;
    let http = reqwest::Client::new();
    let conn = Arc::new(connection(&api_url, &client_credentials(&provider, "")));

    let burst = || {
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let (conn, http) = (conn.clone(), http.clone());
                tokio::spawn(async move { call(&conn, &http).await.unwrap().0 })
            })
            .collect();
        futures::future::join_all(tasks)
    };
    // No token yet: the first request fetches, the other 49 wait for it.
    for status in burst().await {
        assert_eq!(status.unwrap(), 200);
    }
    assert_eq!(provider.issued().await, 1);
    // The token expires: again one request for all.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    for status in burst().await {
        assert_eq!(status.unwrap(), 200);
    }
    assert_eq!(provider.issued().await, 2);
    assert_eq!(api.hits.load(Ordering::SeqCst), 100);
}

#[tokio::test]
async fn a_401_from_the_api_refreshes_the_token_once_and_retries_once() {
    let provider = Provider::start(&[]);
    let (api, api_url) = Api::start(&provider).await;
    let http = reqwest::Client::new();
    let conn = connection(&api_url, &client_credentials(&provider, ""));

    assert_eq!(call(&conn, &http).await.unwrap().0, 200);
    let first = api.seen.lock().unwrap()[0].clone();
    // The API revokes the token before it expires: one refresh, one retry, success.
    api.revoked.lock().unwrap().insert(first.clone());
    assert_eq!(call(&conn, &http).await.unwrap().0, 200);
    assert_eq!(provider.issued().await, 2);
    assert_eq!(api.hits.load(Ordering::SeqCst), 3);
    let seen = api.seen.lock().unwrap().clone();
    assert_eq!(seen[1], first);
    assert_ne!(seen[2], first);

    // An API that refuses everything gets exactly two tries, and the 401 is the answer.
    api.always_401.store(true, Ordering::SeqCst);
    assert_eq!(call(&conn, &http).await.unwrap().0, 401);
    assert_eq!(api.hits.load(Ordering::SeqCst), 5);
    assert_eq!(provider.issued().await, 3);

    // Other kinds do not retry: a bearer token cannot be refreshed.
    let bearer = connection(&api_url, "{ bearer: { token: static } }");
    assert_eq!(call(&bearer, &http).await.unwrap().0, 401);
    assert_eq!(api.hits.load(Ordering::SeqCst), 6);
}

#[tokio::test]
async fn token_endpoint_failures_are_clear_errors_without_secrets() {
    let provider = Provider::start(&[]);
    let http = reqwest::Client::new();

    let wrong = format!(
        "{{ oauth2: {{ token_url: '{}', client_id: ferry, client_secret: not-the-secret }} }}",
        provider.token_url()
    );
    let conn = connection("http://127.0.0.1:9", &wrong);
    let e = call(&conn, &http).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "token endpoint `{}` answered 401: invalid_client (client authentication failed)",
            provider.token_url()
        )
    );
    assert!(!e.is_retryable());

    // Down: nothing listens on the port any more.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let down = format!(
        "{{ oauth2: {{ token_url: 'http://127.0.0.1:{port}/token', client_id: ferry, client_secret: s3cr3t-value }} }}"
    );
    let conn = connection("http://127.0.0.1:9", &down);
    let e = call(&conn, &http).await.unwrap_err();
    let text = e.to_string();
    assert!(
        text.starts_with(&format!(
            "token endpoint `http://127.0.0.1:{port}/token` is unreachable: "
        )),
        "{text}"
    );
    assert!(!text.contains("s3cr3t-value"), "{text}");
    assert!(e.is_retryable());

    let missing = format!(
        "{{ oauth2: {{ token_url: '{}', client_id: ferry, client_secret: {{ env: FERRY_TEST_SURELY_UNSET_SECRET }} }} }}",
        provider.token_url()
    );
    let conn = connection("http://127.0.0.1:9", &missing);
    assert_eq!(
        call(&conn, &http).await.unwrap_err().to_string(),
        "`oauth2.client_secret`: environment variable `FERRY_TEST_SURELY_UNSET_SECRET` is not set"
    );
}

#[tokio::test]
async fn the_refresh_token_grant_uses_each_rotated_refresh_token() {
    let provider = Provider::start(&[
        ("OAUTH_EXPIRES_IN", "1"),
        ("OAUTH_REFRESH_TOKEN", "rt-initial"),
    ]);
    let (api, api_url) = Api::start(&provider).await;
    let http = reqwest::Client::new();
    let yaml = format!(
        "{{ oauth2: {{ grant: refresh_token, token_url: '{}', client_id: ferry, client_secret: ferry-secret, refresh_token: rt-initial }} }}",
        provider.token_url()
    );
    let conn = connection(&api_url, &yaml);

    // The server accepts each refresh token once, so every success after the first proves
    // the rotated token replaced the old one.
    for _ in 0..3 {
        assert_eq!(call(&conn, &http).await.unwrap().0, 200);
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
    let events = provider.token_requests().await;
    assert_eq!(events.len(), 3, "{events:?}");
    assert!(
        events
            .iter()
            .all(|e| e["status"] == 200 && e["grant"] == "refresh_token")
    );
    let latest = events[2]["refresh_token"].as_str().unwrap();
    let sensitive = conn.auth.as_ref().unwrap().sensitive_values();
    assert!(sensitive.iter().any(|s| s.as_str() == latest));
    assert_eq!(api.hits.load(Ordering::SeqCst), 3);
}
