//! JSON → XML elements, the reverse of the mapping in `xml/mod.rs`: `@name` keys are
//! attributes, `#text` is text, an array is the element repeated, `null` is `xsi:nil="true"`.
//!
//! Writes text, not a DOM: names are checked (an XML name without a prefix), text and
//! attribute values escaped, and a character XML 1.0 cannot carry at all (most control
//! characters) is an error rather than something silently dropped.

use serde_json::Value as Json;

use super::XSI;

/// Why a JSON value cannot be written as XML. Names the key at fault.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum WriteError {
    #[error(
        "`{0}` is not a valid XML name (a letter or `_`, then letters, digits, `-`, `_` or `.`; no `:`)"
    )]
    InvalidName(String),
    #[error("`{0}` holds the character {1:?}, which XML 1.0 cannot carry")]
    InvalidChar(String, char),
    #[error("`{0}` is a list inside a list; XML has no nested lists")]
    NestedArray(String),
    #[error("`{0}` must be a string, number, boolean or null")]
    NotScalar(String),
}

/// The order of an element's children, when a schema says it (`xsd:sequence`): JSON objects
/// carry no order a reader can rely on, but a strict SOAP server refuses children out of it.
pub trait Order {
    /// The child element names of the element at `path` (local names from the written
    /// element down, itself included), in the order they must be written; `None` when unknown.
    fn children(&self, path: &[&str]) -> Option<Vec<String>>;
}

/// No schema: children are written in the JSON object's order.
pub struct Unordered;

impl Order for Unordered {
    fn children(&self, _: &[&str]) -> Option<Vec<String>> {
        None
    }
}

/// Writes `value` as the element `name` (or, for an array, one `name` element per item) at the
/// end of `out`. `ns`, when given, becomes the default namespace (`xmlns="…"`) of the element(s)
/// written here, and so of their children too.
///
/// `out` is left as it was when this fails.
pub fn write_element(
    out: &mut String,
    name: &str,
    value: &Json,
    ns: Option<&str>,
) -> Result<(), WriteError> {
    write_element_ordered(out, name, value, ns, &Unordered)
}

/// [`write_element`], with children in the order `order` gives; children it does not name
/// follow in the object's order.
pub fn write_element_ordered(
    out: &mut String,
    name: &str,
    value: &Json,
    ns: Option<&str>,
    order: &dyn Order,
) -> Result<(), WriteError> {
    let mut buf = String::new();
    let mut path = Vec::new();
    elements(&mut buf, name, value, ns, order, &mut path)?;
    out.push_str(&buf);
    Ok(())
}

fn elements<'a>(
    out: &mut String,
    name: &'a str,
    value: &'a Json,
    ns: Option<&str>,
    order: &dyn Order,
    path: &mut Vec<&'a str>,
) -> Result<(), WriteError> {
    match value {
        Json::Array(items) => {
            for item in items {
                if item.is_array() {
                    return Err(WriteError::NestedArray(name.to_owned()));
                }
                element(out, name, item, ns, order, path)?;
            }
            Ok(())
        }
        _ => element(out, name, value, ns, order, path),
    }
}

fn element<'a>(
    out: &mut String,
    name: &'a str,
    value: &'a Json,
    ns: Option<&str>,
    order: &dyn Order,
    path: &mut Vec<&'a str>,
) -> Result<(), WriteError> {
    check_name(name)?;
    out.push('<');
    out.push_str(name);
    if let Some(ns) = ns {
        attribute(out, "xmlns", ns, name)?;
    }
    match value {
        Json::Null => {
            out.push_str(" xsi:nil=\"true\" xmlns:xsi=\"");
            out.push_str(XSI);
            out.push_str("\"/>");
        }
        Json::Object(map) => {
            for (key, v) in map {
                if let Some(attr) = key.strip_prefix('@') {
                    check_name(attr)?;
                    if attr == "xmlns" {
                        // It would be read as a namespace declaration, not an attribute.
                        return Err(WriteError::InvalidName(key.clone()));
                    }
                    if let Some(text) = scalar_text(v, key)? {
                        attribute(out, attr, &text, key)?;
                    }
                }
            }
            let content = map.keys().any(|k| !k.starts_with('@'));
            if !content {
                out.push_str("/>");
                return Ok(());
            }
            out.push('>');
            if let Some(v) = map.get("#text")
                && let Some(text) = scalar_text(v, "#text")?
            {
                escape_text(out, &text, name)?;
            }
            path.push(name);
            let mut children: Vec<(&String, &Json)> = map
                .iter()
                .filter(|(k, _)| *k != "#text" && !k.starts_with('@'))
                .collect();
            if let Some(names) = order.children(path) {
                // Stable: children the schema does not name keep their order, after the rest.
                let rank = |k: &str| names.iter().position(|n| n == k).unwrap_or(usize::MAX);
                children.sort_by_key(|(k, _)| rank(k));
            }
            for (key, v) in children {
                elements(out, key, v, None, order, path)?;
            }
            path.pop();
            close(out, name);
        }
        scalar => {
            out.push('>');
            if let Some(text) = scalar_text(scalar, name)? {
                escape_text(out, &text, name)?;
            }
            close(out, name);
        }
    }
    Ok(())
}

fn close(out: &mut String, name: &str) {
    out.push_str("</");
    out.push_str(name);
    out.push('>');
}

/// The text of a string, number or boolean; `None` for `null` (nothing is written).
fn scalar_text(v: &Json, key: &str) -> Result<Option<String>, WriteError> {
    match v {
        Json::Null => Ok(None),
        Json::String(s) => Ok(Some(s.clone())),
        Json::Number(n) => Ok(Some(n.to_string())),
        Json::Bool(b) => Ok(Some(b.to_string())),
        Json::Array(_) | Json::Object(_) => Err(WriteError::NotScalar(key.to_owned())),
    }
}

fn attribute(out: &mut String, name: &str, value: &str, key: &str) -> Result<(), WriteError> {
    out.push(' ');
    out.push_str(name);
    out.push_str("=\"");
    escape_checked(out, value, key, true)?;
    out.push('"');
    Ok(())
}

fn escape_text(out: &mut String, text: &str, key: &str) -> Result<(), WriteError> {
    escape_checked(out, text, key, false)
}

/// Escapes element text, or a double-quoted attribute value when `attribute`, refusing what
/// XML cannot hold at all.
fn escape_checked(
    out: &mut String,
    text: &str,
    key: &str,
    attribute: bool,
) -> Result<(), WriteError> {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            // `]]>` may not appear in text; escaping every `>` is the simple way to avoid it.
            '>' => out.push_str("&gt;"),
            // A literal CR is read back as LF (end-of-line normalization).
            '\r' => out.push_str("&#13;"),
            '"' if attribute => out.push_str("&quot;"),
            // Literal tabs and line breaks in an attribute are read back as spaces
            // (attribute-value normalization); character references survive it.
            '\t' if attribute => out.push_str("&#9;"),
            '\n' if attribute => out.push_str("&#10;"),
            c if is_xml_char(c) => out.push(c),
            c => return Err(WriteError::InvalidChar(key.to_owned(), c)),
        }
    }
    Ok(())
}

/// XML 1.0 `Char`: what a document may contain at all, even as a character reference.
pub(crate) fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// An XML `Name` without `:` (an NCName): the names this mapping reads back unchanged.
fn check_name(name: &str) -> Result<(), WriteError> {
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(is_name_start) && chars.all(is_name_char);
    if ok {
        Ok(())
    } else {
        Err(WriteError::InvalidName(name.to_owned()))
    }
}

fn is_name_start(c: char) -> bool {
    matches!(c,
        'A'..='Z' | '_' | 'a'..='z'
        | '\u{C0}'..='\u{D6}' | '\u{D8}'..='\u{F6}' | '\u{F8}'..='\u{2FF}'
        | '\u{370}'..='\u{37D}' | '\u{37F}'..='\u{1FFF}' | '\u{200C}'..='\u{200D}'
        | '\u{2070}'..='\u{218F}' | '\u{2C00}'..='\u{2FEF}' | '\u{3001}'..='\u{D7FF}'
        | '\u{F900}'..='\u{FDCF}' | '\u{FDF0}'..='\u{FFFD}' | '\u{10000}'..='\u{EFFFF}')
}

fn is_name_char(c: char) -> bool {
    is_name_start(c)
        || matches!(c, '-' | '.' | '0'..='9' | '\u{B7}' | '\u{300}'..='\u{36F}' | '\u{203F}'..='\u{2040}')
}

/// Escapes text for an XML element or a double-quoted attribute.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}
