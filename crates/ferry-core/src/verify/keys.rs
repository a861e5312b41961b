//! Shared-key schemes: `api_key` (a header or query parameter) and `basic` (HTTP basic auth).
//!
//! Both compare SHA-256 digests with `subtle`, so neither the key's content nor its length
//! shows in the time taken.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::{
    Inbound, MAX_HEADER_BYTES, Rejection, Resolve, Verified, VerifyConfig, b64_std, header,
    header_name, resolve_all, secret_label,
};
use crate::flow::model::ValueSource;

/// Constant-time equality of two byte strings of any length.
fn same(a: &[u8], b: &[u8]) -> bool {
    let (a, b) = (Sha256::digest(a), Sha256::digest(b));
    a.as_slice().ct_eq(b.as_slice()).into()
}

pub(super) struct ApiKey {
    pub(super) secrets: Vec<ValueSource>,
    from: From,
    prefix: String,
}

enum From {
    Header(String),
    Query(String),
}

impl ApiKey {
    pub(super) fn compile(cfg: &VerifyConfig) -> Result<ApiKey, String> {
        let secrets = cfg.secret_list("the API key")?;
        let from = match (&cfg.header, &cfg.query) {
            (Some(_), Some(_)) => {
                return Err("scheme `api_key` takes `header` or `query`, not both".into());
            }
            (Some(h), None) => From::Header(header_name("header", h)?),
            (None, Some(q)) if q.is_empty() => return Err("`query` is empty".into()),
            (None, Some(q)) => From::Query(q.clone()),
            (None, None) => From::Header("x-api-key".into()),
        };
        if cfg.prefix.is_some() && matches!(from, From::Query(_)) {
            return Err("`prefix` applies to a header, not to `query`".into());
        }
        Ok(ApiKey {
            secrets,
            from,
            prefix: cfg.prefix.clone().unwrap_or_default(),
        })
    }

    pub(super) fn verify(
        &self,
        req: &Inbound<'_>,
        resolve: &Resolve<'_>,
    ) -> Result<Verified, Rejection> {
        let secrets = resolve_all(&self.secrets, resolve)?;
        let presented: Zeroizing<String> = match &self.from {
            From::Header(name) => {
                let value = header(req, name)?;
                let key = strip_prefix_ignore_case(value, &self.prefix).ok_or_else(|| {
                    Rejection::Malformed(format!(
                        "header `{name}` does not start with `{}`",
                        self.prefix
                    ))
                })?;
                Zeroizing::new(key.trim().to_owned())
            }
            From::Query(name) => query_param(req.query, name)?,
        };
        if presented.is_empty() {
            return Err(Rejection::BadCredentials("API key"));
        }
        match secrets
            .iter()
            .position(|s| same(presented.as_bytes(), s.as_bytes()))
        {
            Some(i) => Ok(Verified {
                secret_index: Some(i),
                ..Verified::default()
            }),
            None => Err(Rejection::BadCredentials("API key")),
        }
    }
}

/// The one value of query parameter `name`.
fn query_param(query: Option<&str>, name: &str) -> Result<Zeroizing<String>, Rejection> {
    let query = query.unwrap_or("");
    if query.len() > MAX_HEADER_BYTES {
        return Err(Rejection::Oversized {
            name: "query string".into(),
            len: query.len(),
            limit: MAX_HEADER_BYTES,
        });
    }
    let mut found = None;
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        if k == name {
            if found.is_some() {
                return Err(Rejection::Malformed(format!(
                    "query parameter `{name}` appears more than once; expected once"
                )));
            }
            found = Some(Zeroizing::new(v.into_owned()));
        }
    }
    found.ok_or_else(|| Rejection::MissingQuery(name.to_owned()))
}

fn strip_prefix_ignore_case<'a>(value: &'a str, prefix: &str) -> Option<&'a str> {
    let head = value.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &value[prefix.len()..])
}

pub(super) struct Basic {
    creds: Creds,
}

enum Creds {
    Pair {
        username: ValueSource,
        password: ValueSource,
    },
    /// Each `user:pass`.
    Joined(Vec<ValueSource>),
}

impl Basic {
    pub(super) fn compile(cfg: &VerifyConfig) -> Result<Basic, String> {
        let creds = match (&cfg.username, &cfg.password) {
            (Some(u), Some(p)) => {
                if cfg.secret.is_some() || cfg.secrets.is_some() {
                    return Err(
                        "scheme `basic` takes `username` + `password` or `secret`/`secrets` (`user:pass`), not both"
                            .into(),
                    );
                }
                Creds::Pair {
                    username: u.clone(),
                    password: p.clone(),
                }
            }
            (Some(_), None) => return Err("`username` needs `password`".into()),
            (None, Some(_)) => return Err("`password` needs `username`".into()),
            (None, None) => {
                let list = cfg.secret_list("`user:pass`, or `username` + `password`")?;
                for (i, s) in list.iter().enumerate() {
                    if let ValueSource::Literal(t) = s
                        && !t.contains(':')
                    {
                        return Err(secret_label(i, list.len(), "expected `user:pass`"));
                    }
                }
                Creds::Joined(list)
            }
        };
        Ok(Basic { creds })
    }

    pub(super) fn secret_sources(&self) -> Vec<&ValueSource> {
        match &self.creds {
            Creds::Pair { username, password } => vec![username, password],
            Creds::Joined(list) => list.iter().collect(),
        }
    }

    pub(super) fn verify(
        &self,
        req: &Inbound<'_>,
        resolve: &Resolve<'_>,
    ) -> Result<Verified, Rejection> {
        let expected: Vec<Zeroizing<String>> = match &self.creds {
            Creds::Pair { username, password } => {
                let u = resolve(username).map_err(|e| {
                    Rejection::SecretUnavailable(format!("`username` cannot be used: {e}"))
                })?;
                let p = resolve(password).map_err(|e| {
                    Rejection::SecretUnavailable(format!("`password` cannot be used: {e}"))
                })?;
                vec![Zeroizing::new(format!("{}:{}", u.as_str(), p.as_str()))]
            }
            Creds::Joined(list) => {
                let all = resolve_all(list, resolve)?;
                if let Some(i) = all.iter().position(|s| !s.contains(':')) {
                    return Err(Rejection::SecretUnavailable(secret_label(
                        i,
                        all.len(),
                        "expected `user:pass`",
                    )));
                }
                all
            }
        };
        let value = header(req, "authorization")?;
        let b64 = strip_prefix_ignore_case(value, "Basic ").ok_or_else(|| {
            Rejection::Malformed("header `authorization` is not `Basic …`".into())
        })?;
        let decoded = Zeroizing::new(b64_std(b64.trim()).ok_or_else(|| {
            Rejection::Malformed("`authorization` credentials are not valid base64".into())
        })?);
        match expected.iter().position(|e| same(&decoded, e.as_bytes())) {
            Some(i) => {
                let user = decoded.split(|b| *b == b':').next().unwrap_or_default();
                Ok(Verified {
                    subject: Some(String::from_utf8_lossy(user).into_owned()),
                    secret_index: Some(i),
                    ..Verified::default()
                })
            }
            None => Err(Rejection::BadCredentials("user name or password")),
        }
    }
}

#[cfg(test)]
mod tests;
