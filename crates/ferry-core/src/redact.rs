//! Redaction rules: jq-style paths whose values are masked (`***`) in stored runs.
//!
//! A path is a jq path expression of field names and indexes: `.email`, `.card.number`,
//! `.items[].email` (every element), `.items[0]`, `.["odd key"]`. Only paths, not filters: a
//! rule must say exactly what it masks, and applying it must not run user code.

use serde_json::Value as Json;

use crate::secret::MASK;

#[derive(Debug, Clone, PartialEq)]
enum Seg {
    Key(String),
    Index(usize),
    Each,
}

/// One parsed rule.
#[derive(Debug, Clone, PartialEq)]
pub struct RedactPath {
    segs: Vec<Seg>,
    text: String,
}

impl RedactPath {
    pub fn parse(text: &str) -> Result<RedactPath, String> {
        let s = text.trim();
        let b = s.as_bytes();
        if !s.starts_with('.') {
            return Err(format!(
                "`{s}` is not a path; paths start with `.`, e.g. `.email`"
            ));
        }
        let mut segs = Vec::new();
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'.' if i + 1 < b.len() && b[i + 1] == b'[' => i += 1,
                b'.' => {
                    let start = i + 1;
                    let mut j = start;
                    while j < b.len()
                        && (b[j].is_ascii_alphanumeric() || b[j] == b'_' || b[j] == b'-')
                    {
                        j += 1;
                    }
                    if j == start {
                        if s == "." {
                            return Err("`.` would mask everything; name a field".into());
                        }
                        return Err(format!(
                            "`{s}`: expected a field name after `.` at {}",
                            i + 1
                        ));
                    }
                    segs.push(Seg::Key(s[start..j].to_owned()));
                    i = j;
                }
                b'[' => {
                    let close = s[i..]
                        .find(']')
                        .map(|k| i + k)
                        .ok_or_else(|| format!("`{s}`: `[` without `]`"))?;
                    let inner = s[i + 1..close].trim();
                    if inner.is_empty() {
                        segs.push(Seg::Each);
                    } else if let Ok(n) = inner.parse::<usize>() {
                        segs.push(Seg::Index(n));
                    } else if inner.len() >= 2 && inner.starts_with('"') && inner.ends_with('"') {
                        let key: String = serde_json::from_str(inner)
                            .map_err(|_| format!("`{s}`: invalid quoted key {inner}"))?;
                        segs.push(Seg::Key(key));
                    } else {
                        return Err(format!(
                            "`{s}`: inside `[ ]` use nothing (every element), an index or a quoted key"
                        ));
                    }
                    i = close + 1;
                }
                _ => {
                    return Err(format!(
                        "`{s}`: unexpected `{}` at {}; a rule is a path such as `.customer.email` or `.items[].card`",
                        s[i..].chars().next().unwrap_or(' '),
                        i + 1
                    ));
                }
            }
        }
        Ok(RedactPath {
            segs,
            text: s.to_owned(),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The first field name, and the rest of the path: `.steps.contact.body.email` →
    /// (`steps`, `.contact.body.email`).
    pub fn split_first_key(&self) -> Option<(&str, RedactPath)> {
        match self.segs.first() {
            Some(Seg::Key(k)) => Some((
                k,
                RedactPath {
                    segs: self.segs[1..].to_vec(),
                    text: self.text.clone(),
                },
            )),
            _ => None,
        }
    }

    /// Masks what the path points at in `v`; a path that does not match changes nothing.
    pub fn apply(&self, v: &mut Json) {
        apply(&self.segs, v);
    }
}

fn apply(segs: &[Seg], v: &mut Json) {
    let Some((first, rest)) = segs.split_first() else {
        if !v.is_null() {
            *v = Json::String(MASK.into());
        }
        return;
    };
    match (first, v) {
        (Seg::Key(k), Json::Object(m)) => {
            if let Some(child) = m.get_mut(k) {
                apply(rest, child);
            }
        }
        (Seg::Index(n), Json::Array(a)) => {
            if let Some(child) = a.get_mut(*n) {
                apply(rest, child);
            }
        }
        (Seg::Each, Json::Array(a)) => a.iter_mut().for_each(|c| apply(rest, c)),
        (Seg::Each, Json::Object(m)) => m.values_mut().for_each(|c| apply(rest, c)),
        _ => {}
    }
}

/// The text values (strings, and numbers as written) the rules point at in `v`: masking them
/// in the event masks them wherever the run copies them.
pub fn collect_values(rules: &[RedactPath], v: &Json) -> Vec<String> {
    let mut out = Vec::new();
    for r in rules {
        collect(&r.segs, v, &mut out);
    }
    out.retain(|s| s.len() >= crate::secret::MIN_SCRUB_LEN);
    out.sort_by_key(|s| std::cmp::Reverse(s.len()));
    out.dedup();
    out
}

fn collect(segs: &[Seg], v: &Json, out: &mut Vec<String>) {
    let Some((first, rest)) = segs.split_first() else {
        match v {
            Json::String(s) => out.push(s.clone()),
            Json::Number(n) => out.push(n.to_string()),
            Json::Array(_) | Json::Object(_) => {
                // A masked subtree: every scalar inside it.
                let each = [Seg::Each];
                match v {
                    Json::Array(a) => a.iter().for_each(|c| collect(&each[1..], c, out)),
                    Json::Object(m) => m.values().for_each(|c| collect(&each[1..], c, out)),
                    _ => {}
                }
            }
            _ => {}
        }
        return;
    };
    match (first, v) {
        (Seg::Key(k), Json::Object(m)) => {
            if let Some(c) = m.get(k) {
                collect(rest, c, out);
            }
        }
        (Seg::Index(n), Json::Array(a)) => {
            if let Some(c) = a.get(*n) {
                collect(rest, c, out);
            }
        }
        (Seg::Each, Json::Array(a)) => a.iter().for_each(|c| collect(rest, c, out)),
        (Seg::Each, Json::Object(m)) => m.values().for_each(|c| collect(rest, c, out)),
        _ => {}
    }
}

/// Replaces every occurrence of `values` in the strings of `v` by `***`.
pub fn scrub_values(values: &[String], v: &mut Json) {
    match v {
        Json::String(s) => {
            for val in values {
                if s.contains(val.as_str()) {
                    *s = s.replace(val.as_str(), MASK);
                }
            }
        }
        Json::Array(a) => a.iter_mut().for_each(|c| scrub_values(values, c)),
        Json::Object(m) => m.values_mut().for_each(|c| scrub_values(values, c)),
        _ => {}
    }
}

/// Applies every rule to `v`.
pub fn apply_all(rules: &[RedactPath], v: &mut Json) {
    for r in rules {
        r.apply(v);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn paths_mask_fields_elements_and_quoted_keys() {
        let mut v = json!({
            "email": "a@x.io",
            "card": {"number": "4242", "brand": "visa"},
            "items": [{"email": "b@x.io"}, {"email": "c@x.io", "n": 1}],
            "odd key": 1,
            "none": null
        });
        for p in [
            ".email",
            ".card.number",
            ".items[].email",
            ".[\"odd key\"]",
            ".missing.x",
            ".none",
        ] {
            RedactPath::parse(p).unwrap().apply(&mut v);
        }
        assert_eq!(
            v,
            json!({
                "email": "***",
                "card": {"number": "***", "brand": "visa"},
                "items": [{"email": "***"}, {"email": "***", "n": 1}],
                "odd key": "***",
                "none": null
            })
        );
        let mut a = json!([1, 2]);
        RedactPath::parse(".[1]").unwrap().apply(&mut a);
        assert_eq!(a, json!([1, "***"]));
    }

    #[test]
    fn bad_paths_say_what_is_wrong() {
        for (p, msg) in [
            ("email", "start with `.`"),
            (".", "mask everything"),
            (".a..b", "expected a field name"),
            (".a[", "without `]`"),
            (".a[x]", "inside `[ ]`"),
            (".a | .b", "unexpected"),
        ] {
            let e = RedactPath::parse(p).unwrap_err();
            assert!(e.contains(msg), "{p}: {e}");
        }
    }

    #[test]
    fn split_first_key_walks_into_the_run_document() {
        let p = RedactPath::parse(".steps.contact.body.email").unwrap();
        let (k, rest) = p.split_first_key().unwrap();
        assert_eq!(k, "steps");
        let (id, rest) = rest.split_first_key().unwrap();
        assert_eq!(id, "contact");
        let mut out = json!({"body": {"email": "x"}});
        rest.apply(&mut out);
        assert_eq!(out, json!({"body": {"email": "***"}}));
    }
}
