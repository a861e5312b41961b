//! Connections: how to reach one external API (base URL, headers, auth, TLS, timeout, retry
//! policy).
//!
//! Owns the retry policy's delay computation; `{ env }` and `{ secret }` values are resolved
//! at request time through the [`Vault`](crate::secret::Vault), so they are never stored;
//! [`auth`] owns outbound authentication and TLS. Does not send requests: the `http` step
//! does.

pub mod auth;

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;

use crate::flow::model::{Backoff, ConnectionConfig, DEFAULT_REDIRECTS, RetryConfig, ValueSource};

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_MAX_RESPONSE_BYTES: u64 = 10 * 1024 * 1024;

/// A compiled connection.
#[derive(Debug, Clone)]
pub struct Connection {
    pub id: String,
    pub base_url: ValueSource,
    pub headers: Vec<(String, ValueSource)>,
    pub timeout: Duration,
    pub retry: Option<RetryPolicy>,
    pub max_response_bytes: u64,
    pub auth: Option<Arc<auth::Auth>>,
    pub tls: Option<Arc<auth::Tls>>,
    /// `redact:` paths applied to request and response bodies before they are stored.
    pub redact: Vec<crate::redact::RedactPath>,
    /// The `auth:` values that may come from the environment or a secret (for the start-up
    /// check of unset secrets).
    pub auth_sources: Vec<ValueSource>,
    /// Redirects followed at most (`redirects:`; 0 = none, the 3xx is the answer).
    pub redirects: usize,
    /// `openapi:`, loaded once with the connection (what `operation:` steps resolve against).
    pub openapi: Option<Arc<crate::openapi::Spec>>,
}

impl Connection {
    /// A plain connection to `base_url`, for unit tests of what compiles against one.
    #[cfg(test)]
    pub(crate) fn for_tests(id: &str, base_url: &str) -> Connection {
        Connection {
            id: id.into(),
            base_url: ValueSource::Literal(base_url.into()),
            headers: vec![],
            timeout: std::time::Duration::from_secs(5),
            retry: None,
            max_response_bytes: 1024,
            auth: None,
            tls: None,
            redact: vec![],
            auth_sources: vec![],
            redirects: crate::flow::model::DEFAULT_REDIRECTS,
            openapi: None,
        }
    }

    /// Every configured value that may come from the environment or a secret.
    pub fn value_sources(&self) -> Vec<&ValueSource> {
        std::iter::once(&self.base_url)
            .chain(self.headers.iter().map(|(_, v)| v))
            .chain(self.auth_sources.iter())
            .collect()
    }

    /// Compiles a connection; `auth:` and `tls:` errors are load errors. TLS values are read
    /// now (the client is built once), through the environment resolver.
    pub fn from_config(c: &ConnectionConfig) -> Result<Connection, auth::AuthError> {
        Connection::from_config_with(c, &auth::resolve_env)
    }

    /// [`Connection::from_config`] with the resolver for the values `tls:` reads at load.
    pub fn from_config_with(
        c: &ConnectionConfig,
        resolve: &auth::Resolver<'_>,
    ) -> Result<Connection, auth::AuthError> {
        let auth = c.auth.as_ref().map(auth::Auth::compile).transpose()?;
        let redirects = c.redirects.map_or(DEFAULT_REDIRECTS, |r| r.0);
        // Built now, so a bad PEM is a load error rather than a failed request.
        let tls = c
            .tls
            .as_ref()
            .map(|t| auth::Tls::build(t, resolve, redirects))
            .transpose()?;
        Ok(Connection {
            id: c.id.value.clone(),
            base_url: c.base_url.clone(),
            headers: c.headers.0.clone(),
            timeout: c.timeout.map(|d| d.0).unwrap_or(DEFAULT_TIMEOUT),
            retry: c
                .retry
                .as_ref()
                .map(|r| RetryPolicy::from_config(r, &RetryPolicy::http_default())),
            max_response_bytes: c.max_response_bytes.unwrap_or(DEFAULT_MAX_RESPONSE_BYTES),
            auth: auth.map(Arc::new),
            redirects,
            tls: tls.map(Arc::new),
            auth_sources: c
                .auth
                .as_ref()
                .map(|a| a.value_sources().into_iter().cloned().collect())
                .unwrap_or_default(),
            // Checked with their positions by the loader (flow::compile).
            redact: c
                .redact
                .iter()
                .filter_map(|r| crate::redact::RedactPath::parse(&r.value).ok())
                .collect(),
            // Read by the loader (flow::compile), which knows where the file is.
            openapi: None,
        })
    }

    /// The client for requests through this connection: its own when it has `tls:`.
    pub fn client_for(&self, default: &reqwest::Client) -> reqwest::Client {
        match &self.tls {
            Some(t) => t.client().clone(),
            None => default.clone(),
        }
    }
}

impl ValueSource {
    /// True when the value must be masked wherever a request is recorded.
    pub fn is_sensitive(&self) -> bool {
        !matches!(self, ValueSource::Literal(_))
    }
}

/// How many attempts, and how long to wait between them.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub backoff: Backoff,
    pub initial: Duration,
    pub max: Duration,
    pub on_status: Vec<u16>,
}

impl RetryPolicy {
    /// For steps that call out (http): a few attempts over a few minutes.
    pub fn http_default() -> RetryPolicy {
        RetryPolicy {
            attempts: 5,
            backoff: Backoff::Exponential,
            initial: Duration::from_secs(1),
            max: Duration::from_secs(300),
            on_status: Vec::new(),
        }
    }

    /// For steps that only compute: retrying cannot change the outcome.
    pub fn none() -> RetryPolicy {
        RetryPolicy {
            attempts: 1,
            ..RetryPolicy::http_default()
        }
    }

    /// A policy as written, with unset fields taken from `base`.
    pub fn from_config(c: &RetryConfig, base: &RetryPolicy) -> RetryPolicy {
        RetryPolicy {
            attempts: c.attempts.unwrap_or(base.attempts).max(1),
            backoff: c.backoff.unwrap_or(base.backoff),
            initial: c.initial.map(|d| d.0).unwrap_or(base.initial),
            max: c.max.map(|d| d.0).unwrap_or(base.max),
            on_status: if c.on_status.is_empty() {
                base.on_status.clone()
            } else {
                c.on_status.clone()
            },
        }
    }

    /// Delay before attempt `attempt + 1`, after `attempt` failed attempts (1-based).
    ///
    /// Exponential backoff uses full jitter (a uniform draw in `[0, min(max, initial·2^(n-1))]`),
    /// which spreads a burst of failures instead of retrying them in lockstep. A server's
    /// `Retry-After` wins when it asks for longer, capped at `max`.
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let ceiling = match self.backoff {
            Backoff::Fixed => self.initial,
            Backoff::Exponential => {
                let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(30));
                self.initial.saturating_mul(factor).min(self.max)
            }
        };
        let drawn = match self.backoff {
            Backoff::Fixed => ceiling,
            Backoff::Exponential => {
                let ms = ceiling.as_millis() as u64;
                Duration::from_millis(if ms == 0 {
                    0
                } else {
                    rand::rng().random_range(0..=ms)
                })
            }
        };
        match retry_after {
            Some(ra) => ra.min(self.max).max(drawn),
            None => drawn,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponential_delay_is_jittered_under_a_growing_ceiling() {
        let p = RetryPolicy {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
            ..RetryPolicy::http_default()
        };
        for _ in 0..200 {
            assert!(p.delay(1, None) <= Duration::from_millis(100));
            assert!(p.delay(3, None) <= Duration::from_millis(400));
            assert!(p.delay(20, None) <= Duration::from_secs(1));
        }
    }

    #[test]
    fn retry_after_is_honoured_up_to_the_maximum() {
        let p = RetryPolicy {
            initial: Duration::from_millis(10),
            max: Duration::from_secs(5),
            ..RetryPolicy::http_default()
        };
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(2))),
            Duration::from_secs(2)
        );
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(60))),
            Duration::from_secs(5)
        );
    }

    #[test]
    fn env_values_are_resolved_late_and_marked_sensitive() {
        let v = ValueSource::Env {
            env: "FERRY_TEST_SURELY_UNSET_VAR".into(),
        };
        assert!(v.is_sensitive());
        let vault = crate::secret::Vault::in_memory(Default::default());
        assert_eq!(
            vault.resolve(&v).unwrap_err(),
            "environment variable `FERRY_TEST_SURELY_UNSET_VAR` is not set"
        );
        let s = ValueSource::Secret {
            secret: "crm_token".into(),
        };
        assert!(s.is_sensitive());
        assert!(
            vault
                .resolve(&s)
                .unwrap_err()
                .contains("ferry secrets set crm_token")
        );
    }
}
