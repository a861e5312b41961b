//! The one mapping between XML and JSON: safe parsing, XML → JSON (inbound webhooks, SOAP
//! responses), and JSON → XML elements (SOAP request bodies). `docs/xml.md` is the user-facing
//! description of the same rules.
//!
//! Owns the parser settings (no DTD, so no entity is ever declared, expanded or fetched; limits
//! on size, depth, attributes and nodes) and the mapping conventions (`@attr`, `#text`,
//! repeated elements as arrays, local names). Does not know HTTP, WSDL or webhooks: typing
//! hints come in through [`Types`], and callers decide what an error means for them.
//!
//! Rules, in short: names are local names (prefixes and namespaces dropped, `xmlns`
//! declarations dropped); `xsi:nil="true"` is `null`; an element with only text is that text
//! (empty element: `""`); an element with attributes or child elements is an object with
//! `@name` keys for attributes, one key per child name (repeated siblings, or a name the
//! schema marks repeated, become an array), and `#text` for the non-blank text pieces, each
//! trimmed and concatenated. Without a schema every value is a string; with one, integers,
//! decimals and booleans are typed, and a value that does not parse stays a string.
//!
//! Object keys come out in the order of `serde_json::Map`, which in this build is sorted (the
//! `preserve_order` feature is off), so the output is deterministic but not in document order.

use roxmltree::{Node, ParsingOptions};
use serde_json::{Map, Number, Value as Json};

pub(crate) mod write;

pub use write::{Order, Unordered, WriteError, escape, write_element, write_element_ordered};

/// The namespace of `xsi:nil`.
pub const XSI: &str = "http://www.w3.org/2001/XMLSchema-instance";

/// What one XML document may cost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of the whole document.
    pub max_bytes: usize,
    /// Element nesting; the root element is level 1.
    pub max_depth: usize,
    /// Attributes on one element (namespace declarations not counted).
    pub max_attributes: usize,
    /// Nodes of the parsed tree: elements, text pieces, comments, processing instructions.
    pub max_nodes: u32,
}

impl Default for Limits {
    /// 10 MiB, 64 levels, 256 attributes per element, 1,000,000 nodes.
    fn default() -> Self {
        Limits {
            max_bytes: 10 * 1024 * 1024,
            max_depth: 64,
            max_attributes: 256,
            max_nodes: 1_000_000,
        }
    }
}

/// Why a document was refused. The texts are shown to senders (a webhook's 400) and
/// operators (a SOAP step's error), so they say what was wrong and where.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum XmlError {
    #[error("XML with a DTD is refused (no entities are expanded)")]
    Dtd,
    #[error("XML larger than the limit of {0} bytes")]
    TooLarge(usize),
    #[error("XML nested deeper than {0} levels")]
    TooDeep(usize),
    #[error("an XML element has more than {0} attributes")]
    TooManyAttributes(usize),
    #[error("XML with more than {0} nodes")]
    TooManyNodes(u32),
    #[error("malformed XML at line {line}, column {col}: {message}")]
    Malformed {
        line: u32,
        col: u32,
        message: String,
    },
}

/// Parses safely: refuses any DTD (so no entity can be declared, expanded, or fetched), enforces
/// the limits.
///
/// A `<!DOCTYPE …>` is refused even when it declares nothing: roxmltree would accept an empty
/// one, and "no DTD at all" is the rule that is easy to state and to test.
pub fn parse<'a>(text: &'a str, limits: &Limits) -> Result<roxmltree::Document<'a>, XmlError> {
    if text.len() > limits.max_bytes {
        return Err(XmlError::TooLarge(limits.max_bytes));
    }
    let options = ParsingOptions {
        allow_dtd: false,
        nodes_limit: limits.max_nodes,
        ..ParsingOptions::default()
    };
    let doc = roxmltree::Document::parse_with_options(text, options)
        .map_err(|e| from_roxmltree(text, e, limits))?;
    bad_char_reference(text)?;
    let root = doc.root_element();
    if has_doctype(&text[..root.range().start]) {
        return Err(XmlError::Dtd);
    }
    // roxmltree parses iteratively; the mapping recurses once per level, so the depth limit is
    // what keeps it off the end of the stack. Checked with an explicit stack for the same reason.
    let mut stack = vec![(root, 1usize)];
    while let Some((node, depth)) = stack.pop() {
        if depth > limits.max_depth {
            return Err(XmlError::TooDeep(limits.max_depth));
        }
        if node.attributes().len() > limits.max_attributes {
            return Err(XmlError::TooManyAttributes(limits.max_attributes));
        }
        stack.extend(
            node.children()
                .filter(Node::is_element)
                .map(|c| (c, depth + 1)),
        );
    }
    Ok(doc)
}

/// A character reference to something XML cannot carry (`&#xD800;`, a surrogate; `&#x110000;`,
/// beyond Unicode) is not well-formed; roxmltree refuses some and turns others into U+FFFD.
/// Refuse them all, where they are.
fn bad_char_reference(text: &str) -> Result<(), XmlError> {
    if !text.contains("&#") {
        return Ok(());
    }
    let mut i = 0;
    while i < text.len() {
        let rest = &text[i..];
        // Literal text: a `&#` inside these is not a reference.
        let literal = [("<![CDATA[", "]]>"), ("<!--", "-->"), ("<?", "?>")]
            .into_iter()
            .find(|(open, _)| rest.starts_with(open));
        if let Some((open, close)) = literal {
            i += rest[open.len()..]
                .find(close)
                .map_or(rest.len(), |e| open.len() + e + close.len());
            continue;
        }
        if rest.starts_with("&#") {
            if let Some(end) = rest.find(';') {
                let body = &rest[2..end];
                let n = match body.strip_prefix('x') {
                    Some(hex) => u32::from_str_radix(hex, 16).ok(),
                    None => body.parse::<u32>().ok(),
                };
                if !n.and_then(char::from_u32).is_some_and(write::is_xml_char) {
                    let (line, col) = line_col(text, i);
                    return Err(XmlError::Malformed {
                        line,
                        col,
                        message: format!("`&#{body};` is not a character XML can carry"),
                    });
                }
            }
            i += 2;
            continue;
        }
        i += rest.chars().next().map_or(1, char::len_utf8);
    }
    Ok(())
}

fn from_roxmltree(text: &str, e: roxmltree::Error, limits: &Limits) -> XmlError {
    use roxmltree::Error as E;
    match e {
        E::DtdDetected => XmlError::Dtd,
        E::NodesLimitReached => XmlError::TooManyNodes(limits.max_nodes),
        E::UnexpectedEndOfStream | E::UnclosedRootNode | E::NoRootNode => {
            let (line, col) = line_col(text, text.len());
            let message = match e {
                E::NoRootNode => "the document has no root element".to_owned(),
                E::UnclosedRootNode => "the root element is never closed".to_owned(),
                _ => "unexpected end of the document".to_owned(),
            };
            XmlError::Malformed { line, col, message }
        }
        other => {
            let pos = other.pos();
            // roxmltree puts " at ROW:COL" inside its message; the position is ours to print.
            let message = other.to_string().replacen(&format!(" at {pos}"), "", 1);
            XmlError::Malformed {
                line: pos.row,
                col: pos.col,
                message,
            }
        }
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(text: &str, offset: usize) -> (u32, u32) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (
        u32::try_from(line).unwrap_or(u32::MAX),
        u32::try_from(col).unwrap_or(u32::MAX),
    )
}

/// Whether a (well-formed) prolog holds a document type declaration: skips the XML
/// declaration, processing instructions, comments and blanks, so `<!DOCTYPE` quoted inside a
/// comment does not count.
fn has_doctype(prolog: &str) -> bool {
    let mut rest = prolog.trim_start_matches('\u{feff}');
    loop {
        rest = rest.trim_start_matches(is_xml_space);
        if let Some(r) = rest.strip_prefix("<?") {
            match r.find("?>") {
                Some(i) => rest = &r[i + 2..],
                None => return false,
            }
        } else if let Some(r) = rest.strip_prefix("<!--") {
            match r.find("-->") {
                Some(i) => rest = &r[i + 3..],
                None => return false,
            }
        } else {
            return rest.starts_with("<!DOCTYPE");
        }
    }
}

/// XML's white space: space, tab, line feed, carriage return (not Unicode's wider set).
pub(crate) fn is_xml_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r')
}

fn trim_xml(s: &str) -> &str {
    s.trim_matches(is_xml_space)
}

/// Scalar typing hints, e.g. from a WSDL's XSD.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scalar {
    String,
    Integer,
    Decimal,
    Boolean,
}

/// Typing hints for the mapping. `path` is the local names from the mapped root element down
/// to the element in question, both included (`["GetStockResponse", "quantity"]`); an
/// attribute's path ends with `@name` (`["order", "@id"]`).
pub trait Types {
    /// The type of an element's text (or `#text`), or of an attribute's value.
    fn scalar(&self, path: &[&str]) -> Option<Scalar>;
    /// Whether the element may repeat (`maxOccurs` > 1): then it is always an array, even
    /// when it occurs once.
    fn repeated(&self, path: &[&str]) -> bool;
}

/// No schema: every value a string, an array only where an element actually repeats.
pub struct Untyped;

impl Types for Untyped {
    fn scalar(&self, _path: &[&str]) -> Option<Scalar> {
        None
    }
    fn repeated(&self, _path: &[&str]) -> bool {
        false
    }
}

/// The JSON value of one element (not keyed by its name): text-only element → string (or typed
/// scalar), empty element without attributes → `""`, `xsi:nil="true"` → `null`, element with
/// child elements or attributes → object.
///
/// `path` holds the names above `node` (empty for the mapped root); this pushes `node`'s own
/// name for the [`Types`] lookups and pops it again before returning.
///
/// Recurses once per level: call it on documents from [`parse`], whose depth is limited.
pub fn element_value<'a, 'input: 'a>(
    node: Node<'a, 'input>,
    types: &dyn Types,
    path: &mut Vec<&'a str>,
) -> Json {
    path.push(node.tag_name().name());
    let value = value_here(node, types, path);
    path.pop();
    value
}

fn value_here<'a, 'input: 'a>(
    node: Node<'a, 'input>,
    types: &dyn Types,
    path: &mut Vec<&'a str>,
) -> Json {
    if is_nil(node) {
        return Json::Null;
    }
    let attributes: Vec<_> = node.attributes().filter(|a| !is_nil_attr(a)).collect();
    let has_children = node.children().any(|c| c.is_element());
    if attributes.is_empty() && !has_children {
        // Text only (CDATA is text; comments and processing instructions are not): the text
        // exactly as written, blanks included.
        let text: String = node
            .children()
            .filter(Node::is_text)
            .filter_map(|c| c.text())
            .collect();
        return typed(text, types.scalar(path));
    }
    let mut map = Map::new();
    for a in attributes {
        let key = format!("@{}", a.name());
        if map.contains_key(&key) {
            // `a:id` and `b:id` share a local name; the first one wins.
            continue;
        }
        let mut attr_path = path.clone();
        attr_path.push(&key);
        let v = typed(a.value().to_owned(), types.scalar(&attr_path));
        map.insert(key, v);
    }
    let mut text = String::new();
    for child in node.children() {
        if child.is_text() {
            text.push_str(trim_xml(child.text().unwrap_or("")));
        } else if child.is_element() {
            let name = child.tag_name().name();
            let v = element_value(child, types, path);
            match map.get_mut(name) {
                // An element's own value is never an array, so an array here is a repetition.
                Some(Json::Array(items)) => items.push(v),
                Some(prev) => {
                    let first = prev.take();
                    *prev = Json::Array(vec![first, v]);
                }
                None => {
                    path.push(name);
                    let repeated = types.repeated(path);
                    path.pop();
                    map.insert(
                        name.to_owned(),
                        if repeated { Json::Array(vec![v]) } else { v },
                    );
                }
            }
        }
    }
    if !text.is_empty() {
        map.insert("#text".into(), typed(text, types.scalar(path)));
    }
    Json::Object(map)
}

fn is_nil_attr(a: &roxmltree::Attribute) -> bool {
    a.namespace() == Some(XSI) && a.name() == "nil"
}

fn is_nil(node: Node) -> bool {
    node.attributes()
        .any(|a| is_nil_attr(&a) && matches!(trim_xml(a.value()), "true" | "1"))
}

/// A text as its schema type; text that does not parse as that type stays a string, so a
/// server that sends `N/A` for a number does not fail the whole document.
fn typed(text: String, scalar: Option<Scalar>) -> Json {
    let t = trim_xml(&text);
    let parsed = match scalar {
        None | Some(Scalar::String) => None,
        Some(Scalar::Integer) => integer(t),
        Some(Scalar::Decimal) => integer(t).or_else(|| decimal(t)),
        Some(Scalar::Boolean) => match t {
            "true" | "1" => Some(Json::Bool(true)),
            "false" | "0" => Some(Json::Bool(false)),
            _ => None,
        },
    };
    parsed.unwrap_or(Json::String(text))
}

fn integer(t: &str) -> Option<Json> {
    if let Ok(i) = t.parse::<i64>() {
        return Some(Json::Number(i.into()));
    }
    t.parse::<u64>().ok().map(|u| Json::Number(u.into()))
}

/// Decimal and floating-point text (`-1.5`, `.5`, `1E3`); not Rust's `inf` or `NaN`, which XSD
/// does not spell that way and JSON cannot hold.
fn decimal(t: &str) -> Option<Json> {
    let digits = t.bytes().any(|b| b.is_ascii_digit());
    let allowed = t
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'+' | b'-' | b'.' | b'e' | b'E'));
    if !digits || !allowed {
        return None;
    }
    let f = t.parse::<f64>().ok()?;
    Number::from_f64(f).map(Json::Number)
}

/// A whole document as `{root_local_name: element_value(root)}`.
pub fn to_json(bytes: &[u8], limits: &Limits, types: &dyn Types) -> Result<Json, XmlError> {
    if bytes.len() > limits.max_bytes {
        return Err(XmlError::TooLarge(limits.max_bytes));
    }
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let valid = &bytes[..e.valid_up_to()];
        // The prefix is valid UTF-8 by construction.
        let (line, col) = line_col(std::str::from_utf8(valid).unwrap_or(""), valid.len());
        XmlError::Malformed {
            line,
            col,
            message: "not valid UTF-8 (only UTF-8 XML is accepted)".into(),
        }
    })?;
    let doc = parse(text, limits)?;
    let root = doc.root_element();
    let value = element_value(root, types, &mut Vec::new());
    let mut map = Map::new();
    map.insert(root.tag_name().name().to_owned(), value);
    Ok(Json::Object(map))
}

#[cfg(test)]
mod tests;
