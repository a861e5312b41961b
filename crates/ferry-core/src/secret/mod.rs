//! Secrets: values a flow needs (API keys, signing secrets, passwords) that nobody may see
//! again once stored.
//!
//! Owns the master key, sealing and opening values (XChaCha20-Poly1305, a random 24-byte nonce
//! per value, the secret's name as associated data so a sealed value cannot be moved to
//! another name), the decrypted in-memory set that `{ secret: NAME }` resolves from, and
//! scrubbing: every known secret value (and every value derived from one, such as an OAuth
//! access token) is replaced by `***` in anything Ferry stores or prints. Does not know HTTP or
//! the CLI; rows live in the [`Store`](crate::store::Store).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use serde::Serialize;
use serde_json::Value as Json;
use zeroize::Zeroizing;

use crate::flow::model::ValueSource;
use crate::store::Store;

/// What a masked value reads as, everywhere.
pub const MASK: &str = "***";
/// Values shorter than this are not scrubbed from free text (a two-letter secret would mask
/// every occurrence of those letters); they are still never stored or shown as such.
pub const MIN_SCRUB_LEN: usize = 4;
/// Longest secret value accepted.
pub const MAX_SECRET_BYTES: usize = 64 * 1024;

const FORMAT_V1: u8 = 1;
const NONCE_LEN: usize = 24;
const KEY_CHECK: &str = "master_key_check";
const KEY_CHECK_NAME: &str = "ferry:master-key-check";
const KEY_FILE: &str = "master.key";
const NEW_KEY_FILE: &str = "master.key.new";
pub const MASTER_KEY_ENV: &str = "FERRY_MASTER_KEY";
pub const NEW_MASTER_KEY_ENV: &str = "FERRY_NEW_MASTER_KEY";

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("{0}")]
    Invalid(String),
    #[error("secret `{0}` is not set")]
    Missing(String),
    #[error("{0}")]
    Key(String),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// The 256-bit key that seals every secret. Zeroed when dropped; never printed.
pub struct MasterKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(***)")
    }
}

impl MasterKey {
    pub fn generate() -> MasterKey {
        let mut k = Zeroizing::new([0u8; 32]);
        rand::rng().fill_bytes(k.as_mut());
        MasterKey(k)
    }

    /// 32 bytes as standard base64 (what `generate` writes) or 64 hex digits.
    pub fn parse(text: &str) -> Result<MasterKey, SecretError> {
        let text = text.trim();
        let bytes = Zeroizing::new(
            if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
                hex::decode(text).unwrap_or_default()
            } else {
                B64.decode(text).unwrap_or_default()
            },
        );
        let arr: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
            SecretError::Key(
                "a master key is 32 bytes written as base64 (44 characters) or 64 hex digits"
                    .into(),
            )
        })?;
        Ok(MasterKey(Zeroizing::new(arr)))
    }

    pub fn encode(&self) -> Zeroizing<String> {
        Zeroizing::new(B64.encode(self.0.as_ref()))
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new_from_slice(self.0.as_ref()).expect("32-byte key")
    }

    /// `[format][nonce][ciphertext+tag]`, bound to `name`.
    pub fn seal(&self, name: &str, value: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let ct = self
            .cipher()
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: value,
                    aad: name.as_bytes(),
                },
            )
            .expect("XChaCha20-Poly1305 encryption cannot fail for in-memory sizes");
        let mut out = Vec::with_capacity(1 + NONCE_LEN + ct.len());
        out.push(FORMAT_V1);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        out
    }

    /// Opens what [`seal`](Self::seal) made for the same name; `None` when the key, the name
    /// or the bytes do not match.
    pub fn open(&self, name: &str, sealed: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        if sealed.len() < 1 + NONCE_LEN || sealed[0] != FORMAT_V1 {
            return None;
        }
        let (nonce, ct) = sealed[1..].split_at(NONCE_LEN);
        let nonce = XNonce::try_from(nonce).ok()?;
        self.cipher()
            .decrypt(
                &nonce,
                Payload {
                    msg: ct,
                    aad: name.as_bytes(),
                },
            )
            .ok()
            .map(Zeroizing::new)
    }
}

/// Where the master key came from; rotation and error messages depend on it.
#[derive(Debug, Clone)]
pub enum KeySource {
    Env,
    File(PathBuf),
}

impl std::fmt::Display for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::Env => write!(f, "{MASTER_KEY_ENV}"),
            KeySource::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// `FERRY_MASTER_KEY`, else `DATA/master.key`, generated (mode 0600) when neither exists.
pub fn load_master_key(data: &Path) -> Result<(MasterKey, KeySource), SecretError> {
    if let Ok(v) = std::env::var(MASTER_KEY_ENV)
        && !v.trim().is_empty()
    {
        let key =
            MasterKey::parse(&v).map_err(|e| SecretError::Key(format!("{MASTER_KEY_ENV}: {e}")))?;
        return Ok((key, KeySource::Env));
    }
    let path = data.join(KEY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let text = Zeroizing::new(text);
            let key = MasterKey::parse(&text)
                .map_err(|e| SecretError::Key(format!("{}: {e}", path.display())))?;
            Ok((key, KeySource::File(path)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = MasterKey::generate();
            crate::util::write_private(&path, key.encode().as_bytes())
                .map_err(|e| SecretError::Key(format!("cannot write `{}`: {e}", path.display())))?;
            tracing::info!(path = %path.display(), "generated the master key for secrets");
            Ok((key, KeySource::File(path)))
        }
        Err(e) => Err(SecretError::Key(format!(
            "cannot read `{}`: {e}",
            path.display()
        ))),
    }
}

/// A secret's metadata: everything `list` shows. Never the value.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SecretMeta {
    pub name: String,
    pub version: u32,
    pub created_at: String,
    pub updated_at: String,
}

/// A stored secret row as the store returns it.
#[derive(Debug, Clone)]
pub struct SealedSecret {
    pub name: String,
    pub version: u32,
    pub sealed: Vec<u8>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

impl SealedSecret {
    pub fn meta(&self) -> SecretMeta {
        SecretMeta {
            name: self.name.clone(),
            version: self.version,
            created_at: crate::util::rfc3339(self.created_at_ms),
            updated_at: crate::util::rfc3339(self.updated_at_ms),
        }
    }
}

/// Secret names: what a YAML reference and a CLI argument can carry unambiguously.
pub fn check_name(name: &str) -> Result<(), SecretError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(SecretError::Invalid(format!(
            "invalid secret name `{}`: use 1–128 letters, digits, `_`, `-` or `.`",
            name.escape_debug()
        )))
    }
}

/// The decrypted secrets of one node, and everything that must be scrubbed.
pub struct Vault {
    /// None for an in-memory vault (`ferry run` without a data folder, tests).
    store: Option<Arc<dyn Store>>,
    key: RwLock<MasterKey>,
    source: KeySource,
    values: RwLock<HashMap<String, Arc<Zeroizing<String>>>>,
    /// Values derived from secrets at run time (access tokens, encoded credentials) and
    /// environment values that connections use: scrubbed like secrets.
    derived: RwLock<Vec<Arc<Zeroizing<String>>>>,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault").finish_non_exhaustive()
    }
}

impl Vault {
    /// Loads the master key of `data`, checks it against the store, and decrypts every
    /// secret into memory. A wrong key is an error, not an empty vault.
    pub async fn open(store: Arc<dyn Store>, data: &Path) -> Result<Arc<Vault>, SecretError> {
        let (mut key, mut source) = load_master_key(data)?;
        let now = crate::util::now_ms();
        match store.get_meta(KEY_CHECK.into()).await? {
            None => {
                let check = key.seal(KEY_CHECK_NAME, b"ok");
                store.put_meta(KEY_CHECK.into(), check, now).await?;
            }
            Some(check) if key.open(KEY_CHECK_NAME, &check).is_some() => {
                // A rotation that committed but crashed before renaming its key file.
                let _ = std::fs::remove_file(data.join(NEW_KEY_FILE));
            }
            Some(check) => {
                // A rotation may have committed its re-encryption and crashed before it
                // could rename the new key file into place: finish it.
                let new_path = data.join(NEW_KEY_FILE);
                let finished = match (&source, std::fs::read_to_string(&new_path)) {
                    (KeySource::File(path), Ok(text)) => {
                        let text = Zeroizing::new(text);
                        match MasterKey::parse(&text) {
                            Ok(new) if new.open(KEY_CHECK_NAME, &check).is_some() => {
                                std::fs::rename(&new_path, path).map_err(|e| {
                                    SecretError::Key(format!(
                                        "cannot finish the interrupted key rotation: {e}"
                                    ))
                                })?;
                                key = new;
                                source = KeySource::File(path.clone());
                                true
                            }
                            _ => false,
                        }
                    }
                    _ => false,
                };
                if !finished {
                    return Err(SecretError::Key(format!(
                        "the master key from {source} is not the key this data folder's secrets were sealed with; \
                         set {MASTER_KEY_ENV} to the right key (or restore {}/{KEY_FILE})",
                        data.display()
                    )));
                }
            }
        }
        let mut values = HashMap::new();
        for row in store.secrets().await? {
            let plain = key.open(&row.name, &row.sealed).ok_or_else(|| {
                SecretError::Key(format!(
                    "secret `{}` cannot be decrypted with the master key from {source}",
                    row.name
                ))
            })?;
            let text = String::from_utf8(plain.to_vec())
                .map_err(|_| SecretError::Key(format!("secret `{}` is not UTF-8", row.name)))?;
            values.insert(row.name, Arc::new(Zeroizing::new(text)));
        }
        Ok(Arc::new(Vault {
            store: Some(store),
            key: RwLock::new(key),
            source,
            values: RwLock::new(values),
            derived: RwLock::new(Vec::new()),
        }))
    }

    /// A vault with no store behind it, for `ferry run` without a data folder and for tests.
    pub fn in_memory(values: HashMap<String, String>) -> Arc<Vault> {
        Arc::new(Vault {
            store: None,
            key: RwLock::new(MasterKey::generate()),
            source: KeySource::Env,
            values: RwLock::new(
                values
                    .into_iter()
                    .map(|(k, v)| (k, Arc::new(Zeroizing::new(v))))
                    .collect(),
            ),
            derived: RwLock::new(Vec::new()),
        })
    }

    fn store(&self) -> Result<&Arc<dyn Store>, SecretError> {
        self.store.as_ref().ok_or_else(|| {
            SecretError::Invalid("secrets can only be changed in a data folder".into())
        })
    }

    pub fn key_source(&self) -> &KeySource {
        &self.source
    }

    /// The value of secret `name`, if set.
    pub fn get(&self, name: &str) -> Option<Arc<Zeroizing<String>>> {
        self.values.read().expect("vault").get(name).cloned()
    }

    /// Resolves a config value now: a literal, an environment variable or a secret. The
    /// error names what is missing, never a value.
    pub fn resolve(&self, src: &ValueSource) -> Result<Zeroizing<String>, String> {
        match src {
            ValueSource::Literal(s) => Ok(Zeroizing::new(s.clone())),
            ValueSource::Env { env } => std::env::var(env)
                .map(|v| {
                    if v.len() >= MIN_SCRUB_LEN {
                        self.taint(&v);
                    }
                    Zeroizing::new(v)
                })
                .map_err(|_| format!("environment variable `{env}` is not set")),
            ValueSource::Secret { secret } => self
                .get(secret)
                .map(|v| Zeroizing::new(v.as_str().to_owned()))
                .ok_or_else(|| {
                    format!(
                        "secret `{secret}` is not set (add it with `ferry secrets set {secret}`)"
                    )
                }),
        }
    }

    /// Marks a value derived from a secret (a token, an encoded credential) for scrubbing.
    pub fn taint(&self, value: &str) {
        if value.len() < MIN_SCRUB_LEN {
            return;
        }
        if self.is_known(value) {
            return;
        }
        let mut d = self.derived.write().expect("vault");
        // Bounded: tokens rotate; the newest few hundred are the ones that can still appear.
        if d.len() >= 512 {
            d.remove(0);
        }
        d.push(Arc::new(Zeroizing::new(value.to_owned())));
    }

    fn is_known(&self, value: &str) -> bool {
        self.derived
            .read()
            .expect("vault")
            .iter()
            .any(|v| v.as_str() == value)
            || self
                .values
                .read()
                .expect("vault")
                .values()
                .any(|v| v.as_str() == value)
    }

    fn scrub_list(&self) -> Vec<Arc<Zeroizing<String>>> {
        let mut all: Vec<_> = self
            .values
            .read()
            .expect("vault")
            .values()
            .filter(|v| v.len() >= MIN_SCRUB_LEN)
            .cloned()
            .collect();
        all.extend(self.derived.read().expect("vault").iter().cloned());
        // A value sent in XML (a SOAP envelope, an XML body) travels escaped, and an upstream
        // echoes it that way.
        let escaped: Vec<_> = all
            .iter()
            .filter(|v| v.contains(['&', '<', '>', '"', '\'']))
            .map(|v| Arc::new(Zeroizing::new(crate::xml::escape(v))))
            .collect();
        all.extend(escaped);
        // Longest first, so a secret that contains another is masked whole.
        all.sort_by_key(|v| std::cmp::Reverse(v.len()));
        all
    }

    /// Replaces every known secret value in `text` by `***`.
    pub fn scrub_str(&self, text: &str) -> String {
        let list = self.scrub_list();
        scrub_with(&list, text).unwrap_or_else(|| text.to_owned())
    }

    /// Replaces every known secret value in the strings (and keys) of `v` by `***`.
    pub fn scrub_json(&self, v: &mut Json) {
        self.scrub_all(std::iter::once(v));
    }

    /// [`scrub_json`](Self::scrub_json) for several values, listing the secrets once.
    pub fn scrub_all<'a>(&self, values: impl Iterator<Item = &'a mut Json>) {
        let list = self.scrub_list();
        if !list.is_empty() {
            values.for_each(|v| scrub_value(&list, v));
        }
    }

    pub async fn list(&self) -> Result<Vec<SecretMeta>, SecretError> {
        Ok(self
            .store()?
            .secrets()
            .await?
            .iter()
            .map(SealedSecret::meta)
            .collect())
    }

    /// Stores (or replaces) a secret; the new value is used from the next request on.
    pub async fn set(
        &self,
        name: &str,
        value: Zeroizing<String>,
    ) -> Result<SecretMeta, SecretError> {
        check_name(name)?;
        if value.is_empty() {
            return Err(SecretError::Invalid(format!(
                "the value for secret `{name}` is empty"
            )));
        }
        if value.len() > MAX_SECRET_BYTES {
            return Err(SecretError::Invalid(format!(
                "the value for secret `{name}` is larger than {MAX_SECRET_BYTES} bytes"
            )));
        }
        let sealed = self.key.read().expect("vault").seal(name, value.as_bytes());
        let meta = self
            .store()?
            .put_secret(name.to_owned(), sealed, crate::util::now_ms())
            .await?;
        // The old value stays scrubbable: it may still sit in a response being recorded.
        // (The lock is released before `taint`, which reads the values again.)
        let old = self
            .values
            .write()
            .expect("vault")
            .insert(name.to_owned(), Arc::new(value));
        if let Some(old) = old {
            self.taint(&old);
        }
        Ok(meta.meta())
    }

    pub async fn remove(&self, name: &str) -> Result<bool, SecretError> {
        check_name(name)?;
        let removed = self.store()?.delete_secret(name.to_owned()).await?;
        let old = self.values.write().expect("vault").remove(name);
        if let Some(old) = old {
            self.taint(&old);
        }
        Ok(removed)
    }

    /// Re-encrypts every secret under a new master key, in one transaction. With the key in
    /// a file, the new key is written beside it first and renamed over it after the commit
    /// (a crash in between is finished at the next start); with the key in
    /// `FERRY_MASTER_KEY`, the new key must come from `FERRY_NEW_MASTER_KEY`.
    pub async fn rotate_master(&self, data: &Path) -> Result<usize, SecretError> {
        let new = match std::env::var(NEW_MASTER_KEY_ENV) {
            Ok(v) if !v.trim().is_empty() => MasterKey::parse(&v)
                .map_err(|e| SecretError::Key(format!("{NEW_MASTER_KEY_ENV}: {e}")))?,
            _ => match self.source {
                KeySource::Env => {
                    return Err(SecretError::Key(format!(
                        "the master key comes from {MASTER_KEY_ENV}; put the new key in {NEW_MASTER_KEY_ENV} \
                         (32 random bytes as base64, e.g. `openssl rand -base64 32`) and run again"
                    )));
                }
                KeySource::File(_) => MasterKey::generate(),
            },
        };
        let new_path = data.join(NEW_KEY_FILE);
        if let KeySource::File(_) = self.source {
            let _ = std::fs::remove_file(&new_path);
            crate::util::write_private(&new_path, new.encode().as_bytes()).map_err(|e| {
                SecretError::Key(format!("cannot write `{}`: {e}", new_path.display()))
            })?;
        }
        let rows = self.store()?.secrets().await?;
        let mut resealed = Vec::with_capacity(rows.len());
        {
            let old = self.key.read().expect("vault");
            for row in &rows {
                let plain = old.open(&row.name, &row.sealed).ok_or_else(|| {
                    SecretError::Key(format!("secret `{}` cannot be decrypted", row.name))
                })?;
                resealed.push((row.name.clone(), new.seal(&row.name, &plain)));
            }
        }
        let check = new.seal(KEY_CHECK_NAME, b"ok");
        self.store()?
            .reseal_secrets(resealed, check, crate::util::now_ms())
            .await?;
        if let KeySource::File(path) = &self.source {
            std::fs::rename(&new_path, path).map_err(|e| {
                SecretError::Key(format!(
                    "secrets are re-encrypted but `{}` could not replace `{}`: {e}; the next start finishes it",
                    new_path.display(),
                    path.display()
                ))
            })?;
        }
        *self.key.write().expect("vault") = new;
        Ok(rows.len())
    }
}

fn scrub_with(list: &[Arc<Zeroizing<String>>], text: &str) -> Option<String> {
    let mut out: Option<String> = None;
    for v in list {
        let cur = out.as_deref().unwrap_or(text);
        if cur.contains(v.as_str()) {
            out = Some(cur.replace(v.as_str(), MASK));
        }
    }
    out
}

fn scrub_value(list: &[Arc<Zeroizing<String>>], v: &mut Json) {
    match v {
        Json::String(s) => {
            if let Some(clean) = scrub_with(list, s) {
                *s = clean;
            }
        }
        Json::Array(items) => items.iter_mut().for_each(|i| scrub_value(list, i)),
        Json::Object(map) => {
            let dirty_keys = map.keys().any(|k| scrub_with(list, k).is_some());
            if dirty_keys {
                let old = std::mem::take(map);
                for (k, mut val) in old {
                    scrub_value(list, &mut val);
                    let k = scrub_with(list, &k).unwrap_or(k);
                    map.insert(k, val);
                }
            } else {
                map.values_mut().for_each(|i| scrub_value(list, i));
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_under_the_same_key_and_name() {
        let k = MasterKey::generate();
        let sealed = k.seal("crm", b"s3cret-value");
        assert_eq!(k.open("crm", &sealed).unwrap().as_slice(), b"s3cret-value");
        assert!(k.open("other", &sealed).is_none(), "bound to its name");
        assert!(MasterKey::generate().open("crm", &sealed).is_none());
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(k.open("crm", &tampered).is_none());
        assert!(k.open("crm", &[]).is_none());
        assert!(!sealed.windows(12).any(|w| w == b"s3cret-value"));
        // A fresh nonce every time.
        assert_ne!(k.seal("crm", b"x"), k.seal("crm", b"x"));
    }

    #[test]
    fn master_keys_parse_from_base64_or_hex_and_say_what_is_wrong() {
        let k = MasterKey::generate();
        let again = MasterKey::parse(&k.encode()).unwrap();
        assert_eq!(k.0.as_ref(), again.0.as_ref());
        assert!(MasterKey::parse(&"ab".repeat(32)).is_ok());
        let e = MasterKey::parse("short").unwrap_err().to_string();
        assert!(e.contains("32 bytes"), "{e}");
        assert_eq!(format!("{k:?}"), "MasterKey(***)");
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("crm_client-secret.v2").is_ok());
        for bad in ["", "a b", "x/y", "é", &"x".repeat(129)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn scrubbing_masks_secrets_and_derived_values_in_text_and_json() {
        let v = Vault::in_memory(HashMap::from([
            ("token".to_owned(), "tok_live_123456".to_owned()),
            ("pin".to_owned(), "12".to_owned()),
        ]));
        v.taint("derived-access-token");
        assert_eq!(
            v.scrub_str("Bearer tok_live_123456 and derived-access-token; 12 stays"),
            "Bearer *** and ***; 12 stays"
        );
        let mut j = serde_json::json!({
            "echo": {"authorization": "Bearer tok_live_123456"},
            "tok_live_123456": [1, "x derived-access-token y"],
        });
        v.scrub_json(&mut j);
        assert_eq!(
            j,
            serde_json::json!({"echo": {"authorization": "Bearer ***"}, "***": [1, "x *** y"]})
        );
    }
}
