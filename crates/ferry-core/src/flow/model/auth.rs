//! A connection's `auth:` and `tls:` as written. Compiled by `connection::auth`; every
//! secret-bearing field is a [`ValueSource`], resolved at request time, never stored.

use schemars::JsonSchema;
use serde::Deserialize;

use super::indexmap_like::OrderedMap;
use super::{Dur, ValueSource};

/// How requests through the connection prove who sends them: exactly one kind. The header
/// or parameter it adds is masked (`***`) in stored runs.
#[derive(Deserialize, JsonSchema, Debug, Clone)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum AuthConfig {
    /// A static key in a header or a query parameter.
    ApiKey(ApiKeyAuth),
    /// HTTP basic: `Authorization: Basic base64(username:password)`.
    Basic(BasicAuth),
    /// A static token: `Authorization: Bearer TOKEN`.
    Bearer(BearerAuth),
    /// OAuth 2.0 client credentials or refresh token grant; the access token is cached
    /// until shortly before it expires and refreshed once for all concurrent requests.
    #[serde(rename = "oauth2")]
    OAuth2(OAuth2Auth),
    /// A JWT signed by Ferry (iat and exp added), cached until shortly before it expires.
    Jwt(JwtAuth),
    /// An HMAC signature over the final request (body, method, path, timestamp).
    Hmac(HmacAuth),
}

#[derive(Deserialize, JsonSchema, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyAuth {
    /// Send the key in this header, e.g. `X-Api-Key`.
    #[serde(default)]
    pub header: Option<String>,
    /// Or send it as this query parameter, e.g. `api_key`.
    #[serde(default)]
    pub query: Option<String>,
    /// The key.
    pub value: ValueSource,
}

#[derive(Deserialize, JsonSchema, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct BasicAuth {
    pub username: ValueSource,
    #[serde(default)]
    pub password: Option<ValueSource>,
}

#[derive(Deserialize, JsonSchema, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct BearerAuth {
    pub token: ValueSource,
}

/// Which OAuth 2.0 grant obtains the access token.
#[derive(Deserialize, JsonSchema, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum OAuth2Grant {
    /// RFC 6749 §4.4: the client's own credentials (default).
    #[default]
    ClientCredentials,
    /// RFC 6749 §6: a long-lived refresh token; a rotated one replaces it in memory.
    RefreshToken,
}

/// How the client authenticates to the token endpoint (RFC 6749 §2.3.1).
#[derive(Deserialize, JsonSchema, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuthMethod {
    /// `Authorization: Basic` with the client id and secret (`client_secret_basic`, default).
    #[default]
    Basic,
    /// `client_id` and `client_secret` in the form body (`client_secret_post`).
    Post,
}

#[derive(Deserialize, JsonSchema, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct OAuth2Auth {
    /// `client_credentials` (default) or `refresh_token`.
    #[serde(default)]
    pub grant: OAuth2Grant,
    /// The token endpoint, e.g. `https://crm.example.com/oauth/token`.
    pub token_url: String,
    pub client_id: ValueSource,
    /// Absent for public clients.
    #[serde(default)]
    pub client_secret: Option<ValueSource>,
    /// Requested scopes, sent space-separated.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Sent as `audience` (Auth0 and others need it to pick the API).
    #[serde(default)]
    pub audience: Option<String>,
    /// `basic` (default) or `post`.
    #[serde(default)]
    pub auth_method: ClientAuthMethod,
    /// The refresh token, for `grant: refresh_token`.
    #[serde(default)]
    pub refresh_token: Option<ValueSource>,
}

/// A JWS algorithm, as named in RFC 7518.
#[derive(Deserialize, JsonSchema, Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtAlgorithm {
    HS256,
    HS384,
    HS512,
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
}

#[derive(Deserialize, JsonSchema, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct JwtAuth {
    /// `RS256`, `ES256`, `HS256`, … (RFC 7518 names).
    pub algorithm: JwtAlgorithm,
    /// A PEM private key (RS*, PS*, ES*, EdDSA; PKCS#8, or PKCS#1 for RSA) or the shared
    /// secret (HS*).
    pub key: ValueSource,
    /// Claims as plain strings, e.g. `{ iss: ferry, sub: svc, aud: api }`; `iat` and `exp`
    /// are added.
    #[serde(default)]
    pub claims: OrderedMap<String>,
    /// Lifetime of each token (default `5m`).
    #[serde(default)]
    pub ttl: Option<Dur>,
    /// The header that carries the token (default `authorization`).
    #[serde(default)]
    pub header: Option<String>,
    /// Written before the token (default `Bearer`; `''` for none).
    #[serde(default)]
    pub scheme: Option<String>,
    /// The `kid` header, naming the key to the receiver.
    #[serde(default)]
    pub kid: Option<String>,
}

#[derive(Deserialize, JsonSchema, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum HmacAlgorithm {
    Sha1,
    #[default]
    Sha256,
    Sha512,
}

#[derive(Deserialize, JsonSchema, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    #[default]
    Hex,
    Base64,
}

/// How the HMAC key is written.
#[derive(Deserialize, JsonSchema, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum KeyEncoding {
    /// The key's bytes are the text as written (default).
    #[default]
    Text,
    Hex,
    Base64,
}

#[derive(Deserialize, JsonSchema, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct HmacAuth {
    /// `sha256` (default), `sha1` or `sha512`.
    #[serde(default)]
    pub algorithm: HmacAlgorithm,
    pub key: ValueSource,
    /// `text` (default), `hex` or `base64`.
    #[serde(default)]
    pub key_encoding: KeyEncoding,
    /// The header that carries the signature, e.g. `X-Signature`.
    pub header: String,
    /// `hex` (default) or `base64`.
    #[serde(default)]
    pub encoding: Encoding,
    /// Written before the signature, e.g. `sha256=`.
    #[serde(default)]
    pub prefix: Option<String>,
    /// What is signed: `body` (default) or a template of `{method}`, `{path}`, `{query}`,
    /// `{target}` (path and query), `{host}`, `{timestamp}`, `{body}`, with `\n` for a
    /// newline, e.g. `'{method}\n{path}\n{timestamp}\n{body}'`.
    #[serde(default)]
    pub signed: Option<String>,
    /// Send the Unix time in seconds (what `{timestamp}` signs) in this header.
    #[serde(default)]
    pub timestamp_header: Option<String>,
}

/// Client certificate (mTLS) and extra trusted CA for the connection. Each value is PEM
/// text (typically `{ env: NAME }`) or the path of a PEM file.
#[derive(Deserialize, JsonSchema, Debug, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The client certificate chain (PEM, or a file path).
    #[serde(default)]
    pub client_cert: Option<ValueSource>,
    /// The client certificate's private key (PEM, or a file path); may be omitted when
    /// `client_cert` holds both.
    #[serde(default)]
    pub client_key: Option<ValueSource>,
    /// CA certificates trusted in addition to the system's (PEM, or a file path).
    #[serde(default)]
    pub ca: Option<ValueSource>,
}

impl AuthConfig {
    /// Every value that may come from the environment or a secret.
    pub fn value_sources(&self) -> Vec<&ValueSource> {
        match self {
            AuthConfig::ApiKey(c) => vec![&c.value],
            AuthConfig::Basic(c) => std::iter::once(&c.username)
                .chain(c.password.as_ref())
                .collect(),
            AuthConfig::Bearer(c) => vec![&c.token],
            AuthConfig::OAuth2(c) => std::iter::once(&c.client_id)
                .chain(c.client_secret.as_ref())
                .chain(c.refresh_token.as_ref())
                .collect(),
            AuthConfig::Jwt(c) => vec![&c.key],
            AuthConfig::Hmac(c) => vec![&c.key],
        }
    }
}
