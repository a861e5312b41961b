//! Who may use the management API, and the record of what they changed.
//!
//! Owns API keys (random, shown once, stored as SHA-256), roles, and the append-only audit
//! log. Keys are 256 random bits, so a plain SHA-256 is enough to store them (a slow password
//! hash protects guessable secrets; these are not guessable) and lets a key be found by its
//! hash in one index lookup.

use std::sync::Arc;

use serde::Serialize;
use serde_json::{Value as Json, json};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::store::{ApiKeyRow, AuditEntry, Store, StoreError};

/// What a key may do; each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads flows, runs and dead letters.
    Viewer,
    /// Also replays dead letters and triggers flows.
    Operator,
    /// Also manages secrets and keys, and reads the audit log.
    Admin,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "viewer" => Some(Role::Viewer),
            "operator" => Some(Role::Operator),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    /// For the audit log: `key:ID (NAME)`, `bootstrap` or `local:USER`.
    pub actor: String,
    pub role: Role,
}

impl Caller {
    /// Someone at the machine working on the data folder directly (the CLI without a server).
    pub fn local() -> Caller {
        let user = std::env::var("USER")
            .or_else(|_| std::env::var("LOGNAME"))
            .unwrap_or_else(|_| "unknown".into());
        Caller {
            actor: format!("local:{user}"),
            role: Role::Admin,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Denied {
    #[error("missing or invalid API key")]
    Unauthenticated,
    #[error("this needs the `{needed}` role; the key has `{has}`")]
    Forbidden {
        needed: &'static str,
        has: &'static str,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Caller {
    pub fn require(&self, role: Role) -> Result<(), Denied> {
        if self.role >= role {
            Ok(())
        } else {
            Err(Denied::Forbidden {
                needed: role.as_str(),
                has: self.role.as_str(),
            })
        }
    }
}

/// An API key as listed: never the key.
#[derive(Debug, Clone, Serialize)]
pub struct KeyInfo {
    pub id: String,
    pub name: String,
    pub role: String,
    pub created_at: String,
    pub revoked_at: Option<String>,
}

impl From<&ApiKeyRow> for KeyInfo {
    fn from(r: &ApiKeyRow) -> KeyInfo {
        KeyInfo {
            id: r.id.clone(),
            name: r.name.clone(),
            role: r.role.clone(),
            created_at: crate::util::rfc3339(r.created_at_ms),
            revoked_at: r.revoked_at_ms.map(crate::util::rfc3339),
        }
    }
}

fn hash(key: &str) -> Vec<u8> {
    Sha256::digest(key.trim().as_bytes()).to_vec()
}

pub struct Access {
    store: Arc<dyn Store>,
    bootstrap: String,
}

impl Access {
    pub fn new(store: Arc<dyn Store>, bootstrap: String) -> Access {
        Access { store, bootstrap }
    }

    /// The caller behind a presented key: the bootstrap admin key, or a stored, unrevoked key.
    pub async fn authenticate(&self, presented: &str) -> Result<Caller, Denied> {
        let presented = presented.trim();
        if presented.is_empty() || presented.len() > 256 {
            return Err(Denied::Unauthenticated);
        }
        if bool::from(presented.as_bytes().ct_eq(self.bootstrap.as_bytes())) {
            return Ok(Caller {
                actor: "bootstrap".into(),
                role: Role::Admin,
            });
        }
        match self.store.find_api_key(hash(presented)).await? {
            Some(k) if k.revoked_at_ms.is_none() => Ok(Caller {
                actor: format!("key:{} ({})", k.id, k.name),
                role: Role::parse(&k.role).ok_or(Denied::Unauthenticated)?,
            }),
            _ => Err(Denied::Unauthenticated),
        }
    }

    /// Creates a key; the returned string is the only time the key is ever seen.
    pub async fn create_key(
        &self,
        by: &Caller,
        name: &str,
        role: Role,
    ) -> Result<(KeyInfo, String), AccessError> {
        let name = key_name(name)?;
        use rand::RngCore;
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        let key = format!("fk_{}", hex::encode(bytes));
        let row = ApiKeyRow {
            id: format!("key_{}", &hex::encode(&Sha256::digest(key.as_bytes())[..6])),
            name: name.to_owned(),
            role: role.as_str().to_owned(),
            hash: hash(&key),
            created_at_ms: crate::util::now_ms(),
            revoked_at_ms: None,
        };
        self.store.create_api_key(row.clone()).await?;
        let info = KeyInfo::from(&row);
        self.audit(by, "key.create", &row.id, Some(json!({"after": &info})))
            .await;
        Ok((info, key))
    }

    pub async fn list_keys(&self) -> Result<Vec<KeyInfo>, AccessError> {
        Ok(self
            .store
            .list_api_keys()
            .await?
            .iter()
            .map(KeyInfo::from)
            .collect())
    }

    pub async fn revoke_key(&self, by: &Caller, id: &str) -> Result<bool, AccessError> {
        let revoked = self
            .store
            .revoke_api_key(id.to_owned(), crate::util::now_ms())
            .await?;
        if revoked {
            self.audit(by, "key.revoke", id, None).await;
        }
        Ok(revoked)
    }

    /// Appends to the audit log. A failure is logged, not returned: the change it records has
    /// already happened.
    pub async fn audit(&self, by: &Caller, action: &str, target: &str, detail: Option<Json>) {
        record(&*self.store, by, action, target, detail).await;
    }

    pub async fn list_audit(
        &self,
        limit: u32,
        before: Option<i64>,
    ) -> Result<Vec<Json>, AccessError> {
        Ok(self
            .store
            .list_audit(limit, before)
            .await?
            .into_iter()
            .map(audit_json)
            .collect())
    }
}

/// Appends one entry to the audit log of `store`.
pub async fn record(
    store: &dyn Store,
    by: &Caller,
    action: &str,
    target: &str,
    detail: Option<Json>,
) {
    let entry = AuditEntry {
        seq: 0,
        at_ms: crate::util::now_ms(),
        actor: by.actor.clone(),
        action: action.to_owned(),
        target: target.to_owned(),
        detail,
    };
    if let Err(e) = store.append_audit(entry).await {
        tracing::error!(error = %e, action, target, "could not write the audit log");
    }
}

pub fn audit_json(e: AuditEntry) -> Json {
    json!({
        "seq": e.seq,
        "at": crate::util::rfc3339(e.at_ms),
        "actor": e.actor,
        "action": e.action,
        "target": e.target,
        "detail": e.detail,
    })
}

/// Deletes every stored payload that contains `subject` (an e-mail, a customer id…) and
/// records the erasure in the audit log, by a hash of the subject (the log must not keep
/// what was erased). Returns `{"runs", "in_flight"}`. When the store deleted the rows but
/// could not yet remove their old versions from its files, the error says so, and the log
/// records that too.
pub async fn erase(store: &dyn Store, by: &Caller, subject: &str) -> Result<Json, AccessError> {
    let subject = subject.trim();
    if subject.chars().count() < 3 {
        return Err(AccessError::Invalid(
            "the subject must have at least 3 characters (a shorter one would match almost everything)".into(),
        ));
    }
    let outcome = store
        .erase(stored_forms(subject), crate::util::now_ms())
        .await;
    // Matching ignores ASCII case (SQLite LIKE); so does the hash in the log.
    let digest = hex::encode(Sha256::digest(subject.to_ascii_lowercase().as_bytes()));
    let detail = match &outcome {
        Ok((runs, in_flight)) => Some(json!({ "runs": runs, "in_flight": in_flight })),
        // The rows are gone; old versions of them are still in the store's files.
        Err(StoreError::Conflict(m)) => Some(json!({ "incomplete": m })),
        Err(_) => None,
    };
    if let Some(detail) = detail {
        let target = format!("sha256:{}", &digest[..16]);
        record(store, by, "erase", &target, Some(detail)).await;
    }
    let (runs, in_flight) = outcome?;
    Ok(json!({ "runs": runs, "in_flight": in_flight }))
}

/// The subject as it may appear in the store: inside JSON text (events, step records), as
/// written (a dedupe key), and URL-encoded (a recorded request's URL, where a template put
/// it in a query string or a path: `grace%40example.com`). A run whose event was redacted
/// may keep the subject only in such a URL.
fn stored_forms(subject: &str) -> Vec<String> {
    let json = serde_json::to_string(subject).expect("a string serializes");
    let mut path = url::Url::parse("http://x/").expect("a URL");
    path.path_segments_mut().expect("a base URL").push(subject);
    let mut forms = vec![
        json[1..json.len() - 1].to_owned(),
        subject.to_owned(),
        url::form_urlencoded::byte_serialize(subject.as_bytes()).collect(),
        path.path()[1..].to_owned(),
    ];
    forms.sort();
    forms.dedup();
    forms
}

#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A key name as given, trimmed: 1 to 100 printable characters (characters, not bytes: a
/// Vietnamese or Japanese name has as many as an English one).
fn key_name(name: &str) -> Result<&str, AccessError> {
    let name = name.trim();
    let chars = name.chars().count();
    if chars == 0 || chars > 100 || name.chars().any(char::is_control) {
        return Err(AccessError::Invalid(format!(
            "a key name is 1–100 printable characters; this one has {chars}"
        )));
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_name_is_counted_in_characters() {
        let vi = "Kế toán ".repeat(13); // 104 characters, 143 bytes
        let hundred: String = vi.chars().take(100).collect();
        assert!(hundred.len() > 100);
        assert_eq!(key_name(&hundred).unwrap(), hundred.trim());
        let long: String = "ế".repeat(101);
        let e = key_name(&long).unwrap_err().to_string();
        assert!(
            e.contains("1–100 printable characters; this one has 101"),
            "{e}"
        );
        assert!(key_name("  ").is_err());
        assert!(key_name("a\u{7}b").is_err());
    }

    #[test]
    fn a_subject_is_looked_for_in_each_form_it_may_be_stored_in() {
        assert_eq!(
            stored_forms("Grace.Hopper+ferry@example.com"),
            [
                "Grace.Hopper%2Bferry%40example.com",
                "Grace.Hopper+ferry@example.com",
            ]
        );
        assert_eq!(
            stored_forms(r#"Zoë "Z" O'Neil"#),
            [
                r#"Zo%C3%AB%20%22Z%22%20O'Neil"#,
                r#"Zo%C3%AB+%22Z%22+O%27Neil"#,
                r#"Zoë "Z" O'Neil"#,
                r#"Zoë \"Z\" O'Neil"#,
            ]
        );
    }
}
