//! Inbound webhook bodies: content types, size and nesting limits, and the stored headers.
//!
//! Does not know HTTP servers: it takes bytes and header values and says what the event body
//! is, or why not (each reason maps to one 4xx in `server`).

use std::borrow::Cow;

use jaq_json::{Num, Val};
use serde::Deserialize;
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value as Json};

use crate::expr::Reads;

/// Header names whose values are masked before an event is stored.
pub const MASKED_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "x-api-key",
    "api-key",
    "x-auth-token",
];

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum BodyError {
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    #[error("JSON nested deeper than {0} levels")]
    TooDeep(usize),
    #[error(
        "unsupported content type `{0}`; expected `application/json` (or `*+json`), `application/xml`, `text/xml` (or `*+xml`), `application/x-www-form-urlencoded` or `text/*`"
    )]
    UnsupportedMediaType(String),
    #[error("body is not valid UTF-8")]
    NotUtf8,
    /// An XML body that is malformed, has a DTD, or is over a limit.
    #[error("{0}")]
    Xml(#[from] crate::xml::XmlError),
    /// An XML body within the element depth limit whose JSON form nests deeper than it (each
    /// repeated element and each element with attributes or children adds a level).
    #[error("XML nested deeper than {0} levels once mapped to JSON")]
    XmlTooDeep(usize),
}

/// [`parse_body`] for a webhook that stores what it receives: a JSON body is parsed straight
/// into jq values (by serde_json, so it is checked as strictly, with the same messages) and
/// keeps its text; other types are converted as `parse_body` does. Of a JSON body, only what
/// `reads` names is built as jq values (the rest is checked and skipped): what the flow's
/// expressions can read of `.event.body`.
pub fn parse_body_fast<'a>(
    content_type: Option<&str>,
    bytes: &'a [u8],
    max_depth: usize,
    reads: &Reads,
) -> Result<crate::trigger::Body<'a>, BodyError> {
    if is_json(content_type) && !bytes.is_empty() && !has_uncommon_escape(bytes) {
        let depth = json_depth(bytes);
        if depth > max_depth {
            return Err(BodyError::TooDeep(max_depth));
        }
        let val = if reads.is_all() {
            serde_json::from_slice(bytes)
        } else {
            let mut de = serde_json::Deserializer::from_slice(bytes);
            Projected(reads)
                .deserialize(&mut de)
                .and_then(|v| de.end().map(|()| v))
        }
        .map_err(|e| BodyError::MalformedJson(e.to_string()))?;
        // serde_json has checked every string, and JSON outside strings is ASCII.
        let text = std::str::from_utf8(bytes).map_err(|_| BodyError::NotUtf8)?;
        return Ok(crate::trigger::Body::Json { text, val });
    }
    parse_body(content_type, bytes, max_depth).map(crate::trigger::Body::Other)
}

/// Deserializes the parts of a JSON value that `.0` names as jq values, as jaq's own
/// deserializer would build them; of an object read in part, other entries are skipped.
struct Projected<'r>(&'r Reads);

impl<'de> DeserializeSeed<'de> for Projected<'_> {
    type Value = Val;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Val, D::Error> {
        match self.0 {
            Reads::All => Val::deserialize(d),
            Reads::Keys(_) => d.deserialize_any(self),
        }
    }
}

impl<'de> Visitor<'de> for Projected<'_> {
    type Value = Val;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any valid JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Val, E> {
        Ok(Val::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Val, E> {
        Ok(Val::Num(Num::from_integral(v)))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Val, E> {
        Ok(Val::Num(Num::from_integral(v)))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Val, E> {
        Ok(Val::Num(Num::Float(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Val, E> {
        Ok(Val::utf8_str(v.as_bytes().to_vec()))
    }
    fn visit_string<E>(self, v: String) -> Result<Val, E> {
        Ok(Val::utf8_str(v.into_bytes()))
    }
    fn visit_unit<E>(self) -> Result<Val, E> {
        Ok(Val::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Val, A::Error> {
        std::iter::from_fn(|| seq.next_element::<Val>().transpose()).collect()
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Val, A::Error> {
        let mut out = jaq_json::Map::default();
        while let Some(Key(key)) = map.next_key()? {
            match self.0.get(&key) {
                Some(reads) => {
                    let v = map.next_value_seed(Projected(reads))?;
                    out.insert(Val::utf8_str(key.as_bytes().to_vec()), v);
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Val::obj(out))
    }
}

/// An object key, borrowed from the body when it has no escape.
struct Key<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// Whether a JSON text holds an escape serde_json does not write (`\uXXXX`, `\/`). Such a body
/// is stored re-serialized, as `parse_body` stores it: `ferry erase` looks for a subject as
/// serde_json writes it, and would miss `zo\u00eb@…` (Python's `json.dumps`) or `https:\/\/…`
/// (PHP's `json_encode`) stored as sent.
fn has_uncommon_escape(bytes: &[u8]) -> bool {
    let mut i = 0;
    while let Some(at) = bytes.get(i..).and_then(|rest| memchr::memchr(b'\\', rest)) {
        match bytes.get(i + at + 1) {
            Some(b'u' | b'/') => return true,
            // Past the escaped byte (`\\u` is a backslash, then a `u`).
            _ => i += at + 2,
        }
    }
    false
}

fn is_json(content_type: Option<&str>) -> bool {
    let Some(c) = content_type else { return false };
    let c = c.split(';').next().unwrap_or("").trim();
    c.eq_ignore_ascii_case("application/json")
        || (c.len() >= 5 && c.as_bytes()[c.len() - 5..].eq_ignore_ascii_case(b"+json"))
}

/// Parses a request body by its content type.
pub fn parse_body(
    content_type: Option<&str>,
    bytes: &[u8],
    max_depth: usize,
) -> Result<Json, BodyError> {
    let ct = content_type.map(|c| {
        c.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
    });
    match ct.as_deref() {
        None | Some("") if bytes.is_empty() => Ok(Json::Null),
        Some("application/json") => parse_json(bytes, max_depth),
        Some(c) if c.ends_with("+json") => parse_json(bytes, max_depth),
        Some("application/x-www-form-urlencoded") => Ok(Json::Object(form_object(bytes))),
        Some("application/xml" | "text/xml") => parse_xml(bytes, max_depth),
        Some(c) if c.ends_with("+xml") => parse_xml(bytes, max_depth),
        Some(c) if c.starts_with("text/") => std::str::from_utf8(bytes)
            .map(|s| Json::String(s.to_owned()))
            .map_err(|_| BodyError::NotUtf8),
        None | Some("") => Err(BodyError::UnsupportedMediaType("(none)".into())),
        Some(other) => Err(BodyError::UnsupportedMediaType(other.to_owned())),
    }
}

/// JSON with a nesting limit checked before parsing, so a hostile body cannot exhaust the
/// stack or allocate deep trees.
pub fn parse_json(bytes: &[u8], max_depth: usize) -> Result<Json, BodyError> {
    let depth = json_depth(bytes);
    if depth > max_depth {
        return Err(BodyError::TooDeep(max_depth));
    }
    serde_json::from_slice(bytes).map_err(|e| BodyError::MalformedJson(e.to_string()))
}

/// XML by the one mapping (`crate::xml`), keyed by the root element, without a schema (so all
/// text stays text). The server has already limited the size; `max_depth` limits both the
/// element nesting and the nesting of the JSON it becomes, so the stored event reads back
/// like any JSON body (serde_json refuses to read more than 128 levels).
pub fn parse_xml(bytes: &[u8], max_depth: usize) -> Result<Json, BodyError> {
    let limits = crate::xml::Limits {
        max_bytes: usize::MAX,
        max_depth,
        ..crate::xml::Limits::default()
    };
    let body = crate::xml::to_json(bytes, &limits, &crate::xml::Untyped)?;
    if nesting(&body) > max_depth {
        return Err(BodyError::XmlTooDeep(max_depth));
    }
    Ok(body)
}

/// Levels of arrays and objects in a value (a scalar is 0).
fn nesting(v: &Json) -> usize {
    match v {
        Json::Array(items) => 1 + items.iter().map(nesting).max().unwrap_or(0),
        Json::Object(map) => 1 + map.values().map(nesting).max().unwrap_or(0),
        _ => 0,
    }
}

/// Deepest nesting of `[`/`{` outside strings (an upper bound for invalid input).
pub fn json_depth(bytes: &[u8]) -> usize {
    // Most of a body is string contents: those are skipped with memchr (SIMD) to the next
    // quote or backslash instead of being looked at byte by byte (a tenth of ingest's
    // instructions went to the byte-by-byte scan).
    let (mut depth, mut max, mut i) = (0usize, 0usize, 0usize);
    while let Some(&b) = bytes.get(i) {
        i += 1;
        match b {
            b'"' => loop {
                let Some(at) = bytes
                    .get(i..)
                    .and_then(|rest| memchr::memchr2(b'"', b'\\', rest))
                else {
                    // An unterminated string runs to the end.
                    return max;
                };
                i += at + 1;
                if bytes[i - 1] == b'"' {
                    break;
                }
                // A backslash escapes the byte after it, whatever it is.
                i += 1;
            },
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// `a=1&b=2&b=3` → `{"a": "1", "b": ["2", "3"]}`.
pub fn form_object(bytes: &[u8]) -> Map<String, Json> {
    let mut out = Map::new();
    for (k, v) in url::form_urlencoded::parse(bytes) {
        let v = Json::String(v.into_owned());
        match out.get_mut(k.as_ref()) {
            Some(Json::Array(items)) => items.push(v),
            Some(prev) => {
                let first = prev.take();
                *prev = Json::Array(vec![first, v]);
            }
            None => {
                out.insert(k.into_owned(), v);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn bodies_parse_by_content_type() {
        assert_eq!(
            parse_body(Some("application/json; charset=utf-8"), br#"{"a":1}"#, 8).unwrap(),
            json!({"a": 1})
        );
        assert_eq!(
            parse_body(
                Some("application/x-www-form-urlencoded"),
                b"a=1&b=x+y&b=z",
                8
            )
            .unwrap(),
            json!({"a": "1", "b": ["x y", "z"]})
        );
        assert_eq!(
            parse_body(Some("text/plain"), b"hi", 8).unwrap(),
            json!("hi")
        );
        assert_eq!(parse_body(None, b"", 8).unwrap(), json!(null));
        assert_eq!(
            parse_body(Some("image/png"), b"x", 8).unwrap_err(),
            BodyError::UnsupportedMediaType("image/png".into())
        );
        assert!(matches!(
            parse_body(Some("application/json"), b"{\"a\":", 8),
            Err(BodyError::MalformedJson(_))
        ));
        assert_eq!(
            parse_body(Some("application/json"), b"[[[[1]]]]", 3).unwrap_err(),
            BodyError::TooDeep(3)
        );
    }

    #[test]
    fn xml_bodies_map_by_the_root_element_and_text_stays_text() {
        let order = b"<order xmlns='urn:shop'><id>5</id><item sku='a'/><item sku='b'/></order>";
        let want = json!({"order": {"id": "5", "item": [{"@sku": "a"}, {"@sku": "b"}]}});
        for ct in [
            "application/xml",
            "text/xml; charset=utf-8",
            "application/soap+xml",
            "Application/Atom+XML",
        ] {
            assert_eq!(parse_body(Some(ct), order, 8).unwrap(), want, "{ct}");
        }
        // Other text/* stays a string.
        assert_eq!(
            parse_body(Some("text/plain"), b"<a/>", 8).unwrap(),
            json!("<a/>")
        );
    }

    #[test]
    fn xml_bodies_are_refused_with_the_reason() {
        let e = parse_body(
            Some("application/xml"),
            b"<!DOCTYPE x [<!ENTITY e SYSTEM 'file:///etc/passwd'>]><x>&e;</x>",
            8,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "XML with a DTD is refused (no entities are expanded)"
        );
        assert_eq!(
            parse_body(Some("text/xml"), b"<a>\n<b></a>", 8)
                .unwrap_err()
                .to_string(),
            "malformed XML at line 2, column 4: expected 'b' tag, not 'a'"
        );
        assert_eq!(
            parse_body(Some("text/xml"), b"<a><b><c/></b></a>", 2).unwrap_err(),
            BodyError::Xml(crate::xml::XmlError::TooDeep(2))
        );
        // Three elements deep, but five levels of JSON: refused at a limit of 4.
        let doc = b"<a><b x='1'/><b><c/><c/></b></a>";
        assert!(parse_body(Some("text/xml"), doc, 5).is_ok());
        assert_eq!(
            parse_body(Some("text/xml"), doc, 4).unwrap_err(),
            BodyError::XmlTooDeep(4)
        );
    }

    #[test]
    fn brackets_inside_strings_do_not_count_as_depth() {
        assert_eq!(json_depth(br#"{"a": "[[[[\"[["}"#), 1);
    }

    /// An error's kind and where it points, without serde_json's wording.
    fn at_place(e: &BodyError) -> String {
        match e {
            BodyError::MalformedJson(m) => {
                format!(
                    "json {}",
                    m.rfind(" at line ").map_or(m.as_str(), |i| &m[i..])
                )
            }
            other => format!("{other:?}"),
        }
    }

    proptest! {
        #[test]
        fn any_bytes_are_parsed_or_refused_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse_body(Some("application/json"), &bytes, 16);
            let _ = parse_body(Some("application/x-www-form-urlencoded"), &bytes, 16);
            let _ = parse_body(Some("text/plain"), &bytes, 16);
            let _ = parse_body(Some("application/xml"), &bytes, 16);
        }

        /// A body built only in the parts a flow's expressions read answers every one of
        /// those expressions as the whole body does, errors included; a malformed body is
        /// refused alike.
        #[test]
        fn expressions_answer_alike_on_the_parts_they_read(
            body in arb_json(),
            picks in proptest::collection::vec(0..READERS.len(), 1..4),
            cut in proptest::option::of(0usize..200),
        ) {
            let mut text = body.to_string();
            if let Some(at) = cut.filter(|&at| at < text.len() && text.is_char_boundary(at)) {
                text.truncate(at);
            }
            let exprs: Vec<crate::expr::Expr> = picks
                .iter()
                .map(|&i| crate::expr::Expr::compile(READERS[i]).unwrap())
                .collect();
            let mut reads = Reads::default();
            for e in &exprs {
                reads.add(e.reads());
            }
            let full = parse_body_fast(Some("application/json"), text.as_bytes(), 64, &Reads::All);
            let part = parse_body_fast(Some("application/json"), text.as_bytes(), 64, &reads);
            match (full, part) {
                (Ok(crate::trigger::Body::Json { val: full, .. }), Ok(crate::trigger::Body::Json { val: part, .. })) => {
                    for e in &exprs {
                        prop_assert_eq!(e.eval(&full), e.eval(&part), "{}", e.source());
                    }
                }
                // Refused at the same place; serde_json words a number cut after its `.`
                // differently when it skips it ("invalid number" for "EOF while parsing").
                (Err(a), Err(b)) => prop_assert_eq!(at_place(&a), at_place(&b), "{:?} / {:?}", a, b),
                (a, b) => prop_assert!(false, "full {:?}, in part {:?}", a.is_ok(), b.is_ok()),
            }
        }

        /// The memchr scans answer as a plain byte-by-byte scan does, for any bytes.
        #[test]
        fn scans_agree_with_a_plain_scan(bytes in proptest::collection::vec(
            prop_oneof![Just(b'"'), Just(b'\\'), Just(b'['), Just(b'{'), Just(b']'), Just(b'}'), Just(b'u'), Just(b'/'), any::<u8>()],
            0..64,
        )) {
            prop_assert_eq!(json_depth(&bytes), plain_depth(&bytes));
            prop_assert_eq!(has_uncommon_escape(&bytes), plain_uncommon_escape(&bytes));
        }

        #[test]
        fn depth_check_matches_real_nesting(depth in 1usize..100) {
            let doc = format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
            prop_assert_eq!(json_depth(doc.as_bytes()), depth);
            prop_assert_eq!(parse_json(doc.as_bytes(), 64).is_ok(), depth <= 64);
        }
    }

    /// Expressions over a body (as its root), of the shapes flows use.
    const READERS: &[&str] = &[
        ".a",
        ".a.b",
        ".a.b.c | ascii_downcase",
        ".b[0]",
        ".a | keys",
        ".a.c + .b",
        "[.a.b, .c] | tojson",
        ".a.b?.c",
        ".c | length",
        "{a} | tojson",
        r#""\(.a.a)-\(.b.b)""#,
        ".a.b as $x | $x.c",
        "if .c then .a.a else .b end",
        ".b.a.c.b",
        "tojson",
    ];

    fn arb_json() -> impl Strategy<Value = Json> {
        let leaf = prop_oneof![
            Just(Json::Null),
            any::<bool>().prop_map(Json::Bool),
            any::<i32>().prop_map(|n| json!(n)),
            (-1e6f64..1e6).prop_map(|f| json!(f)),
            "[a-c é\\\"]{0,4}".prop_map(Json::String),
        ];
        leaf.prop_recursive(4, 40, 5, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Json::Array),
                proptest::collection::vec(("[a-c]", inner), 0..5)
                    .prop_map(|kv| Json::Object(kv.into_iter().collect())),
            ]
        })
    }

    fn plain_depth(bytes: &[u8]) -> usize {
        let (mut depth, mut max, mut in_str, mut escaped) = (0usize, 0usize, false, false);
        for &b in bytes {
            if in_str {
                if escaped {
                    escaped = false;
                } else if b == b'\\' {
                    escaped = true;
                } else if b == b'"' {
                    in_str = false;
                }
                continue;
            }
            match b {
                b'"' => in_str = true,
                b'[' | b'{' => {
                    depth += 1;
                    max = max.max(depth);
                }
                b']' | b'}' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        max
    }

    fn plain_uncommon_escape(bytes: &[u8]) -> bool {
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'\\' {
                if matches!(bytes.get(i + 1), Some(b'u' | b'/')) {
                    return true;
                }
                i += 2;
            } else {
                i += 1;
            }
        }
        false
    }
}
