//! The flow and connection files as written (`…Config` types). Doc comments are user docs:
//! they end up in the JSON Schema under `docs/schema/`.

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer};

use super::node::{Node, Spanned};

mod auth;
pub use auth::*;

/// A duration written as `500ms`, `10s`, `5m`, `1h 30m` (or a number of seconds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Secs(u64),
            Text(String),
        }
        match Raw::deserialize(d).map_err(|_| {
            serde::de::Error::custom("expected a duration such as `500ms`, `10s` or `5m`")
        })? {
            Raw::Secs(s) => Ok(Dur(Duration::from_secs(s))),
            Raw::Text(t) => humantime::parse_duration(t.trim()).map(Dur).map_err(|e| {
                serde::de::Error::custom(format_args!(
                    "invalid duration `{t}` ({e}); expected e.g. `500ms`, `10s`, `5m`"
                ))
            }),
        }
    }
}

impl JsonSchema for Dur {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A duration such as `500ms`, `10s`, `5m`, `1h 30m`, or a whole number of seconds.",
            "anyOf": [{"type": "string", "pattern": "^\\s*[0-9]+\\s*[a-zµ]+(\\s*[0-9]+\\s*[a-zµ]+)*\\s*$"}, {"type": "integer", "minimum": 0}]
        })
    }
}

/// Redirects followed at most by default (`redirects: follow`).
pub const DEFAULT_REDIRECTS: usize = 5;
/// The most a `redirects:` number may ask for.
pub const MAX_REDIRECTS: usize = 20;

/// How many redirects a request follows: `follow` (up to 5, the default), a number from 0 to
/// 20, or `none` (the 3xx answer is the result, with its `location` header).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Redirects(pub usize);

impl<'de> Deserialize<'de> for Redirects {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Count(i64),
            Word(String),
        }
        let bad = || {
            serde::de::Error::custom(format_args!(
                "expected `follow`, `none` or a number of redirects from 0 to {MAX_REDIRECTS}"
            ))
        };
        match Raw::deserialize(d).map_err(|_| bad())? {
            Raw::Count(n) if (0..=MAX_REDIRECTS as i64).contains(&n) => Ok(Redirects(n as usize)),
            Raw::Word(w) if w.trim() == "follow" => Ok(Redirects(DEFAULT_REDIRECTS)),
            Raw::Word(w) if w.trim() == "none" => Ok(Redirects(0)),
            _ => Err(bad()),
        }
    }
}

impl JsonSchema for Redirects {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Redirects".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "`follow` (up to 5 redirects, the default), `none` (a 3xx answer is the result), or a number of redirects from 0 to 20.",
            "anyOf": [{"enum": ["follow", "none"]}, {"type": "integer", "minimum": 0, "maximum": 20}]
        })
    }
}

/// The top of a flow file. `trigger` and each step are checked on their own so that every
/// error in the file is reported, not only the first.
#[derive(Deserialize, JsonSchema, Debug)]
#[serde(deny_unknown_fields)]
pub struct FlowConfig {
    /// Unique id of the flow: letters, digits, `-` and `_`.
    pub id: Spanned<String>,
    /// What the flow is for, for people reading it.
    #[serde(default)]
    pub description: Option<String>,
    /// What starts a run: exactly one of `webhook`, `manual`, `flow`.
    pub trigger: Node,
    /// The steps, run in order. Each has an `id` and exactly one kind key (`http`, `map`, …).
    pub steps: Vec<Node>,
    /// Paths whose values are masked (`***`) in stored runs, e.g. `.event.body.email` or
    /// `.steps.contact.body.card`. A value masked in the event is masked wherever it appears
    /// in the run's step records too. See docs/security.md.
    #[serde(default)]
    pub redact: Vec<Spanned<String>>,
    /// How long the payloads of finished runs are kept (default `30d`); after that the event
    /// and step records are deleted, the run's status and times stay.
    #[serde(default)]
    pub retention: Option<Dur>,
    /// What a run of the flow returns to a `call` step: a template over the run's context
    /// (`.event`, `.steps`), evaluated when it succeeds. Default: `null`.
    #[serde(default)]
    pub output: Option<Node>,
}

/// What starts a run of the flow.
#[derive(Deserialize, JsonSchema, Debug)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum TriggerConfig {
    /// Inbound HTTP: `POST PATH` stores the event durably, answers `202 {"run_id"}`.
    Webhook(WebhookConfig),
    /// Started through the API (`POST /api/v1/flows/{id}/runs`) or `ferry run`.
    Manual(ManualConfig),
    /// Called by another flow's `call` step (or started like a manual flow): the input is
    /// `.event.body`, and the flow's `output:` is what the caller gets.
    Flow(FlowTriggerConfig),
}

#[derive(Deserialize, JsonSchema, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct FlowTriggerConfig {
    /// A JSON Schema the input must match: a `call` whose input does not fails before the
    /// flow starts (kind `input`), naming what is wrong.
    #[serde(default)]
    pub input: Option<Spanned<serde_json::Value>>,
}

#[derive(Deserialize, JsonSchema, Debug)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// The URL path that receives events, e.g. `/hooks/shop/customers`. A segment `{name}`
    /// matches any one segment, read as `.event.params.name` (`/stock/{sku}`); a literal
    /// path wins over one with parameters.
    pub path: Spanned<String>,
    /// The HTTP method accepted (default `POST`).
    #[serde(default)]
    pub method: Option<Spanned<String>>,
    /// An expression over the event whose value identifies duplicates, e.g.
    /// `'{{ .event.headers["webhook-id"] }}'`. A duplicate within `dedupe_window` answers 200
    /// with the first run's id and starts nothing.
    #[serde(default)]
    pub dedupe: Option<Spanned<String>>,
    /// How long a dedupe key is remembered (default `24h`).
    #[serde(default)]
    pub dedupe_window: Option<Dur>,
    /// Check that each request comes from the sender (a signature, key, or token); a request
    /// that fails is answered 401 and stored nowhere. See docs/security.md.
    #[serde(default)]
    pub verify: Option<Spanned<Box<crate::verify::VerifyConfig>>>,
    /// `async` (default): answer `202 {"run_id"}` once the event is stored. `sync`: wait
    /// until the run reaches a `respond` step and answer with it (Ferry as an API facade).
    #[serde(default)]
    pub response: Option<Spanned<ResponseMode>>,
    /// With `response: sync`: how long the caller waits for the `respond` step (default
    /// `10s`, at most `5m`).
    #[serde(default)]
    pub timeout: Option<Spanned<Dur>>,
    /// With `response: sync`, what a run too slow to respond answers: `error` (default, a
    /// `504`) or `accept` (a `202` with the run's id and status URL). The run goes on.
    #[serde(default)]
    pub on_timeout: Option<OnTimeout>,
}

#[derive(Deserialize, JsonSchema, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ResponseMode {
    Async,
    Sync,
}

#[derive(Deserialize, JsonSchema, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnTimeout {
    #[default]
    Error,
    Accept,
}

#[derive(Deserialize, JsonSchema, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct ManualConfig {}

/// The keys every step may have, beside its kind key.
#[derive(Deserialize, JsonSchema, Debug)]
#[serde(deny_unknown_fields)]
pub struct StepCommon {
    /// Unique within the flow; the step's result is `.steps.<id>`.
    pub id: Spanned<String>,
    /// Run the step only when this expression is true; otherwise it is skipped.
    #[serde(default, rename = "if")]
    pub when: Option<Spanned<String>>,
    /// Retry policy for this step; overrides the connection's.
    #[serde(default)]
    pub retry: Option<RetryConfig>,
    /// Time limit for one attempt of the step (default: the connection's timeout + 1s, else
    /// 30s). One HTTP request is also bounded by its connection's `timeout`.
    #[serde(default)]
    pub timeout: Option<Dur>,
    /// What a failure does to the run: `fail` (default), `continue`, or a list of fallback
    /// steps run with `.error` in their context (the run goes on after them).
    #[serde(default)]
    pub on_error: Option<OnErrorConfig>,
    /// For people reading the flow.
    #[serde(default)]
    pub description: Option<String>,
}

pub const STEP_COMMON_KEYS: &[&str] = &["id", "if", "retry", "timeout", "on_error", "description"];

/// `on_error:` as written: a policy, or fallback steps.
#[derive(Deserialize, JsonSchema, Debug)]
#[serde(untagged)]
pub enum OnErrorConfig {
    Policy(OnError),
    /// Steps run when the step fails for good, with `.error` (kind, message, status).
    Steps(#[schemars(with = "Vec<serde_json::Value>")] Vec<Node>),
}

/// What a step failure (after retries) does to the run.
#[derive(Deserialize, JsonSchema, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// The run stops and becomes a dead letter (default).
    #[default]
    Fail,
    /// The failure is recorded as the step's result and the run goes on.
    Continue,
}

/// How often and how fast to retry a failed attempt.
#[derive(Deserialize, JsonSchema, Debug, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Total attempts, the first included (1 = no retry).
    #[serde(default)]
    pub attempts: Option<u32>,
    /// `exponential` (default, with full jitter) or `fixed`.
    #[serde(default)]
    pub backoff: Option<Backoff>,
    /// Delay before the first retry (default 1s).
    #[serde(default)]
    pub initial: Option<Dur>,
    /// Longest delay between two attempts (default 5m).
    #[serde(default)]
    pub max: Option<Dur>,
    /// Also retry these HTTP statuses (by default: 408, 409, 425, 429 and 5xx).
    #[serde(default)]
    pub on_status: Vec<u16>,
}

#[derive(Deserialize, JsonSchema, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Backoff {
    Exponential,
    Fixed,
}

/// A connection file: how to reach one external API.
#[derive(Deserialize, JsonSchema, Debug)]
#[serde(deny_unknown_fields)]
pub struct ConnectionConfig {
    /// Unique id; steps refer to it as `connection: <id>`.
    pub id: Spanned<String>,
    #[serde(default)]
    pub description: Option<String>,
    /// Base URL that step paths are appended to, e.g. `https://crm.example.com/api/v2`.
    pub base_url: ValueSource,
    /// Headers sent with every request. Values from `{ env: NAME }` are masked in stored runs.
    #[serde(default)]
    pub headers: indexmap_like::OrderedMap<ValueSource>,
    /// Time limit for one request (default 30s).
    #[serde(default)]
    pub timeout: Option<Dur>,
    /// Retry policy for requests through this connection.
    #[serde(default)]
    pub retry: Option<RetryConfig>,
    /// Largest response body accepted, in bytes (default 10 MiB).
    #[serde(default)]
    pub max_response_bytes: Option<u64>,
    /// Paths in request and response bodies masked (`***`) in stored runs, e.g. `.email`
    /// or `.customer.card.number`.
    #[serde(default)]
    pub redact: Vec<Spanned<String>>,
    /// How requests prove who sends them (`api_key`, `basic`, `bearer`, `oauth2`, `jwt`,
    /// `hmac`); see docs/security.md.
    #[serde(default)]
    pub auth: Option<AuthConfig>,
    /// Client certificate and extra CA for this connection.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Redirects followed: `follow` (up to 5, the default), a number, or `none` (a 3xx answer
    /// is the step's result). A step's own `redirects:` wins.
    #[serde(default)]
    pub redirects: Option<Redirects>,
    /// The API's OpenAPI 3.0/3.1 document (JSON or YAML), a file path relative to the
    /// project folder (the folder holding `connections/`), e.g. `specs/crm.yaml`. Read when
    /// the flows load; lets `http` steps name an `operation:` and checks them against it.
    /// `ferry import openapi` writes it.
    #[serde(default)]
    pub openapi: Option<Spanned<String>>,
}

/// A literal value, or one read from the environment at request time.
#[derive(JsonSchema, Debug, Clone, PartialEq)]
#[serde(untagged)]
pub enum ValueSource {
    Literal(String),
    Env {
        /// Name of the environment variable.
        env: String,
    },
    Secret {
        /// Name of a secret stored with `ferry secrets set NAME`.
        secret: String,
    },
}

impl<'de> Deserialize<'de> for ValueSource {
    /// By hand, for messages that say what is expected (an untagged enum only says "data did
    /// not match any variant").
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = ValueSource;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string, `{ env: NAME }` or `{ secret: NAME }`")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ValueSource, E> {
                Ok(ValueSource::Literal(v.to_owned()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ValueSource, E> {
                Ok(ValueSource::Literal(v.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ValueSource, E> {
                Ok(ValueSource::Literal(v.to_string()))
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<ValueSource, E> {
                Ok(ValueSource::Literal(v.to_string()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<ValueSource, A::Error> {
                let Some(key) = map.next_key::<String>()? else {
                    return Err(serde::de::Error::custom(
                        "expected `{ env: NAME }` or `{ secret: NAME }`, found an empty mapping",
                    ));
                };
                let value: String = map.next_value()?;
                if map.next_key::<String>()?.is_some() {
                    return Err(serde::de::Error::custom(
                        "expected `{ env: NAME }` or `{ secret: NAME }`, with one key",
                    ));
                }
                match key.as_str() {
                    "env" => Ok(ValueSource::Env { env: value }),
                    "secret" => match crate::secret::check_name(&value) {
                        Ok(()) => Ok(ValueSource::Secret { secret: value }),
                        Err(e) => Err(serde::de::Error::custom(e)),
                    },
                    other => Err(serde::de::Error::custom(format_args!(
                        "unknown value source `{other}`; expected `{{ env: NAME }}` or `{{ secret: NAME }}`"
                    ))),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// A string-keyed map that keeps the file's order (headers are sent in that order).
pub mod indexmap_like {
    use schemars::JsonSchema;
    use serde::{Deserialize, Deserializer};

    #[derive(Debug, Clone, PartialEq)]
    pub struct OrderedMap<V>(pub Vec<(String, V)>);

    impl<V> Default for OrderedMap<V> {
        fn default() -> Self {
            OrderedMap(Vec::new())
        }
    }

    impl<'de, V: Deserialize<'de>> Deserialize<'de> for OrderedMap<V> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct Vis<V>(std::marker::PhantomData<V>);
            impl<'de, V: Deserialize<'de>> serde::de::Visitor<'de> for Vis<V> {
                type Value = OrderedMap<V>;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("a mapping")
                }
                fn visit_unit<E>(self) -> Result<Self::Value, E> {
                    Ok(OrderedMap(Vec::new()))
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(
                    self,
                    mut map: A,
                ) -> Result<Self::Value, A::Error> {
                    let mut out = Vec::new();
                    while let Some((k, v)) = map.next_entry::<String, V>()? {
                        out.push((k, v));
                    }
                    Ok(OrderedMap(out))
                }
            }
            d.deserialize_map(Vis(std::marker::PhantomData))
        }
    }

    impl<V: JsonSchema> JsonSchema for OrderedMap<V> {
        fn schema_name() -> std::borrow::Cow<'static, str> {
            format!("Map_of_{}", V::schema_name()).into()
        }
        fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
            let inner = generator.subschema_for::<V>();
            schemars::json_schema!({"type": "object", "additionalProperties": inner})
        }
    }
}
