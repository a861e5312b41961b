//! A YAML document as a tree of nodes that remember where they stand in the file, and a
//! serde `Deserializer` over that tree whose errors carry the position of the offending node.
//!
//! Why not deserialize straight from the YAML text: `deny_unknown_fields` and friends stop at
//! the first error, and `ferry validate` must report all of them. Parsing once into `Node`
//! lets the loader deserialize each part (trigger, every step) on its own and collect every
//! failure, each pointing at the key or value that caused it.

use std::fmt;

use serde::de::{self, DeserializeSeed, IntoDeserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};

use crate::diag::{Pos, did_you_mean};

/// A YAML value with its position.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub pos: Pos,
    pub value: Value,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<(Key, Node)>),
}

/// A mapping key with its position (keys are always text here).
#[derive(Clone, Debug, PartialEq)]
pub struct Key {
    pub name: String,
    pub pos: Pos,
}

impl Node {
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.value {
            Value::Map(entries) => entries.iter().find(|(k, _)| k.name == key).map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn kind_name(&self) -> &'static str {
        match self.value {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }

    /// The node as plain JSON, positions dropped.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match &self.value {
            Value::Null => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => J::from(*i),
            Value::Float(f) => serde_json::Number::from_f64(*f)
                .map(J::Number)
                .unwrap_or(J::Null),
            Value::Str(s) => J::String(s.clone()),
            Value::Seq(items) => J::Array(items.iter().map(Node::to_json).collect()),
            Value::Map(entries) => J::Object(
                entries
                    .iter()
                    .map(|(k, v)| (k.name.clone(), v.to_json()))
                    .collect(),
            ),
        }
    }

    /// Deserializes a typed config from this node; the error is located at the node at fault.
    pub fn parse<T: de::DeserializeOwned>(&self) -> Result<T, NodeError> {
        T::deserialize(NodeDe(self))
    }
}

// ---------------------------------------------------------------------------------------------
// YAML text → Node, through serde-saphyr's own span-aware wrapper.

/// A YAML syntax error or limit breach, located.
#[derive(Debug)]
pub struct YamlError {
    pub pos: Pos,
    pub message: String,
}

/// Parses one YAML document into a `Node` tree. An empty document is `Null`.
pub fn parse_yaml(text: &str) -> Result<Node, YamlError> {
    if text.trim().is_empty() {
        return Ok(Node {
            pos: Pos { line: 1, col: 1 },
            value: Value::Null,
        });
    }
    // YAML 1.2 booleans only: `y`, `no`, `on` stay strings (a country code `NO` is not false).
    let mut options = serde_saphyr::Options::default();
    options.strict_booleans = true;
    options.with_snippet = false;
    let raw: serde_saphyr::Spanned<Raw> = serde_saphyr::from_str_with_options(text, options)
        .map_err(|e| {
            let pos = e
                .location()
                .map(|l| Pos {
                    line: l.line() as u32,
                    col: l.column() as u32,
                })
                .unwrap_or_default();
            let message = e.to_string();
            // serde-saphyr appends its own location; ours is in front already.
            let mut message = message.lines().next().unwrap_or("invalid YAML").trim();
            message = message.strip_prefix("error:").unwrap_or(message).trim();
            // "line 2 column 38: mapping values …" → "mapping values …"
            if message.starts_with("line ")
                && let Some((_, rest)) = message.split_once(": ")
            {
                message = rest;
            }
            // "… at line 2, column 15": the position is in front already.
            if let Some(i) = message.find(" at line ") {
                message = &message[..i];
            }
            // serde-saphyr's limits (nodes, depth, alias expansion) stop YAML bombs; say so plainly.
        let message = match message.strip_prefix("budget breached:") {
            Some(which) => {
                // `Nodes { nodes: 250001 }` → `nodes: 250001`
                let which = which.trim();
                let inner = which
                    .split_once('{')
                    .and_then(|(_, rest)| rest.rsplit_once('}'))
                    .map(|(inside, _)| inside.trim())
                    .unwrap_or(which);
                format!("the document is too large once its anchors and aliases are expanded ({inner})")
            }
            None => message.to_owned(),
        };
            YamlError { pos, message }
        })?;
    Ok(raw_to_node(raw))
}

fn raw_to_node(raw: serde_saphyr::Spanned<Raw>) -> Node {
    let pos = Pos {
        line: raw.referenced.line() as u32,
        col: raw.referenced.column() as u32,
    };
    let value = match raw.value {
        Raw::Null => Value::Null,
        Raw::Bool(b) => Value::Bool(b),
        Raw::Int(i) => Value::Int(i),
        Raw::Float(f) => Value::Float(f),
        Raw::Str(s) => Value::Str(s),
        Raw::Seq(items) => Value::Seq(items.into_iter().map(raw_to_node).collect()),
        Raw::Map(entries) => Value::Map(
            entries
                .into_iter()
                .map(|(k, v)| {
                    let kpos = Pos {
                        line: k.referenced.line() as u32,
                        col: k.referenced.column() as u32,
                    };
                    (
                        Key {
                            name: k.value.0,
                            pos: kpos,
                        },
                        raw_to_node(v),
                    )
                })
                .collect(),
        ),
    };
    Node { pos, value }
}

enum Raw {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<serde_saphyr::Spanned<Raw>>),
    Map(Vec<(serde_saphyr::Spanned<KeyText>, serde_saphyr::Spanned<Raw>)>),
}

struct KeyText(String);

impl<'de> Deserialize<'de> for KeyText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = KeyText;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a scalar key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<KeyText, E> {
                Ok(KeyText(v.to_owned()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_unit<E: de::Error>(self) -> Result<KeyText, E> {
                Ok(KeyText("null".into()))
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for Raw {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Raw;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any YAML value")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Raw, E> {
                Ok(Raw::Null)
            }
            fn visit_none<E: de::Error>(self) -> Result<Raw, E> {
                Ok(Raw::Null)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Raw, D::Error> {
                Raw::deserialize(d)
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Raw, E> {
                Ok(Raw::Bool(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Raw, E> {
                Ok(Raw::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Raw, E> {
                Ok(i64::try_from(v)
                    .map(Raw::Int)
                    .unwrap_or(Raw::Float(v as f64)))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Raw, E> {
                Ok(Raw::Float(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Raw, E> {
                Ok(Raw::Str(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Raw, E> {
                Ok(Raw::Str(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Raw, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(Raw::Seq(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Raw, A::Error> {
                let mut entries: Vec<(serde_saphyr::Spanned<KeyText>, serde_saphyr::Spanned<Raw>)> =
                    Vec::new();
                while let Some(key) = map.next_key::<serde_saphyr::Spanned<KeyText>>()? {
                    if entries.iter().any(|(k, _)| k.value.0 == key.value.0) {
                        return Err(de::Error::custom(format_args!(
                            "duplicate key `{}`",
                            key.value.0
                        )));
                    }
                    let value = map.next_value()?;
                    entries.push((key, value));
                }
                Ok(Raw::Map(entries))
            }
        }
        d.deserialize_any(V)
    }
}

// ---------------------------------------------------------------------------------------------
// Node → typed config.

/// A deserialization error located at the node that caused it.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeError {
    pub pos: Option<Pos>,
    pub message: String,
    pub hint: Option<String>,
}

impl NodeError {
    fn at(mut self, pos: Pos) -> Self {
        self.pos.get_or_insert(pos);
        self
    }
}

impl fmt::Display for NodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for NodeError {}

impl de::Error for NodeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        NodeError {
            pos: None,
            message: msg.to_string(),
            hint: None,
        }
    }

    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        let hint = match did_you_mean(field, expected.iter().copied()) {
            Some(m) => format!("did you mean `{m}`? allowed: {}", expected.join(", ")),
            None => format!("allowed: {}", expected.join(", ")),
        };
        NodeError {
            pos: None,
            message: format!("unknown key `{field}`"),
            hint: Some(hint),
        }
    }

    fn unknown_variant(variant: &str, expected: &'static [&'static str]) -> Self {
        let hint = match did_you_mean(variant, expected.iter().copied()) {
            Some(m) => format!(
                "did you mean `{m}`? expected one of: {}",
                expected.join(", ")
            ),
            None => format!("expected one of: {}", expected.join(", ")),
        };
        NodeError {
            pos: None,
            message: format!("unknown value `{variant}`"),
            hint: Some(hint),
        }
    }

    fn missing_field(field: &'static str) -> Self {
        NodeError {
            pos: None,
            message: format!("missing key `{field}`"),
            hint: Some(format!("add `{field}:`")),
        }
    }

    fn invalid_type(unexp: de::Unexpected, exp: &dyn de::Expected) -> Self {
        NodeError {
            pos: None,
            message: format!("expected {exp}, found {unexp}"),
            hint: None,
        }
    }
}

/// The name by which `Spanned<T>` asks a `NodeDe` for its position.
const SPANNED: &str = "$ferry::Spanned";

/// A value with the position it was written at (for errors found after deserializing).
#[derive(Clone, Debug, PartialEq)]
pub struct Spanned<T> {
    pub pos: Pos,
    pub value: T,
}

impl<T> std::ops::Deref for Spanned<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Spanned<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Spanned<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a value")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Spanned<T>, A::Error> {
                let line: u32 = seq.next_element()?.unwrap_or(0);
                let col: u32 = seq.next_element()?.unwrap_or(0);
                let value = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::custom("missing value"))?;
                Ok(Spanned {
                    pos: Pos { line, col },
                    value,
                })
            }
            fn visit_newtype_struct<D: Deserializer<'de>>(
                self,
                d: D,
            ) -> Result<Spanned<T>, D::Error> {
                Ok(Spanned {
                    pos: Pos::default(),
                    value: T::deserialize(d)?,
                })
            }
        }
        d.deserialize_newtype_struct(SPANNED, V(std::marker::PhantomData))
    }
}

impl<T: schemars::JsonSchema> schemars::JsonSchema for Spanned<T> {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        T::schema_name()
    }
    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        T::json_schema(generator)
    }
    fn inline_schema() -> bool {
        T::inline_schema()
    }
}

impl<'de> Deserialize<'de> for Node {
    /// A node inside a typed config (a template body, say) keeps its positions.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = Spanned::<NodeValue>::deserialize(d)?;
        Ok(Node {
            pos: raw.pos,
            value: raw.value.0,
        })
    }
}

impl schemars::JsonSchema for Node {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "AnyValue".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!(true)
    }
}

struct NodeValue(Value);

impl<'de> Deserialize<'de> for NodeValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = NodeValue;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any value")
            }
            fn visit_unit<E: de::Error>(self) -> Result<NodeValue, E> {
                Ok(NodeValue(Value::Null))
            }
            fn visit_none<E: de::Error>(self) -> Result<NodeValue, E> {
                Ok(NodeValue(Value::Null))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<NodeValue, E> {
                Ok(NodeValue(Value::Bool(v)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<NodeValue, E> {
                Ok(NodeValue(Value::Int(v)))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<NodeValue, E> {
                Ok(NodeValue(
                    i64::try_from(v)
                        .map(Value::Int)
                        .unwrap_or(Value::Float(v as f64)),
                ))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<NodeValue, E> {
                Ok(NodeValue(Value::Float(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<NodeValue, E> {
                Ok(NodeValue(Value::Str(v.to_owned())))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<NodeValue, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<Node>()? {
                    items.push(item);
                }
                Ok(NodeValue(Value::Seq(items)))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<NodeValue, A::Error> {
                let mut entries = Vec::new();
                while let Some(key) = map.next_key::<Spanned<String>>()? {
                    let value = map.next_value::<Node>()?;
                    entries.push((
                        Key {
                            name: key.value,
                            pos: key.pos,
                        },
                        value,
                    ));
                }
                Ok(NodeValue(Value::Map(entries)))
            }
        }
        d.deserialize_any(V)
    }
}

/// The serde `Deserializer` over a borrowed node.
pub struct NodeDe<'a>(pub &'a Node);

impl<'de> Deserializer<'de> for NodeDe<'_> {
    type Error = NodeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, NodeError> {
        let node = self.0;
        let result = match &node.value {
            Value::Null => visitor.visit_unit(),
            Value::Bool(b) => visitor.visit_bool(*b),
            Value::Int(i) => visitor.visit_i64(*i),
            Value::Float(f) => visitor.visit_f64(*f),
            Value::Str(s) => visitor.visit_str(s),
            Value::Seq(items) => visitor.visit_seq(Seq {
                items: items.iter(),
            }),
            Value::Map(entries) => visitor.visit_map(Map {
                entries: entries.iter(),
                value: None,
            }),
        };
        result.map_err(|e| e.at(node.pos))
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, NodeError> {
        match self.0.value {
            Value::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, NodeError> {
        if name == SPANNED {
            let node = self.0;
            return visitor
                .visit_seq(SpannedSeq { node, stage: 0 })
                .map_err(|e| e.at(node.pos));
        }
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, NodeError> {
        let node = self.0;
        match &node.value {
            // `trigger: manual` is `manual` with default settings.
            Value::Str(s) => {
                let key = Key {
                    name: s.clone(),
                    pos: node.pos,
                };
                let value = Node {
                    pos: node.pos,
                    value: Value::Null,
                };
                visitor
                    .visit_enum(Enum {
                        key: &key,
                        value: &value,
                    })
                    .map_err(|e| e.at(node.pos))
            }
            Value::Map(entries) if entries.len() == 1 => {
                let (key, value) = &entries[0];
                visitor
                    .visit_enum(Enum { key, value })
                    .map_err(|e| e.at(node.pos))
            }
            Value::Map(entries) if entries.is_empty() => Err(NodeError {
                pos: Some(node.pos),
                message: "expected exactly one key here, found none".into(),
                hint: Some(format!("write one of: {}", _variants.join(", "))),
            }),
            Value::Map(entries) => Err(NodeError {
                pos: Some(entries[1].0.pos),
                message: format!(
                    "expected exactly one key here, found {}: {}",
                    entries.len(),
                    entries
                        .iter()
                        .map(|(k, _)| format!("`{}`", k.name))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                hint: Some("keep one of them".into()),
            }),
            _ => Err(NodeError {
                pos: Some(node.pos),
                message: format!(
                    "expected one of {}, found {}",
                    _variants.join(", "),
                    node.kind_name()
                ),
                hint: None,
            }),
        }
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple
        tuple_struct map struct identifier ignored_any
    }
}

struct SpannedSeq<'a> {
    node: &'a Node,
    stage: u8,
}

impl<'de> SeqAccess<'de> for SpannedSeq<'_> {
    type Error = NodeError;
    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, NodeError> {
        self.stage += 1;
        match self.stage {
            1 => seed
                .deserialize(self.node.pos.line.into_deserializer())
                .map(Some),
            2 => seed
                .deserialize(self.node.pos.col.into_deserializer())
                .map(Some),
            3 => seed.deserialize(NodeDe(self.node)).map(Some),
            _ => Ok(None),
        }
    }
}

struct Seq<'a> {
    items: std::slice::Iter<'a, Node>,
}

impl<'de> SeqAccess<'de> for Seq<'_> {
    type Error = NodeError;
    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, NodeError> {
        match self.items.next() {
            Some(item) => seed
                .deserialize(NodeDe(item))
                .map(Some)
                .map_err(|e| e.at(item.pos)),
            None => Ok(None),
        }
    }
}

struct Map<'a> {
    entries: std::slice::Iter<'a, (Key, Node)>,
    value: Option<&'a Node>,
}

impl<'de> MapAccess<'de> for Map<'_> {
    type Error = NodeError;
    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, NodeError> {
        match self.entries.next() {
            Some((key, value)) => {
                self.value = Some(value);
                seed.deserialize(KeyDe(key))
                    .map(Some)
                    .map_err(|e| e.at(key.pos))
            }
            None => Ok(None),
        }
    }
    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, NodeError> {
        let node = self
            .value
            .take()
            .ok_or_else(|| de::Error::custom("value without key"))?;
        seed.deserialize(NodeDe(node)).map_err(|e| e.at(node.pos))
    }
}

/// A mapping key: text, but with its own position for `Spanned<String>` keys.
struct KeyDe<'a>(&'a Key);

impl<'de> Deserializer<'de> for KeyDe<'_> {
    type Error = NodeError;
    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, NodeError> {
        visitor.visit_str(&self.0.name)
    }
    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, NodeError> {
        if name == SPANNED {
            let node = Node {
                pos: self.0.pos,
                value: Value::Str(self.0.name.clone()),
            };
            return visitor.visit_seq(SpannedSeq {
                node: &node,
                stage: 0,
            });
        }
        visitor.visit_newtype_struct(self)
    }
    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct seq tuple enum
        tuple_struct map struct identifier ignored_any
    }
}

struct Enum<'a> {
    key: &'a Key,
    value: &'a Node,
}

impl<'de, 'a> de::EnumAccess<'de> for Enum<'a> {
    type Error = NodeError;
    type Variant = NodeDe<'a>;
    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, NodeDe<'a>), NodeError> {
        let v = seed
            .deserialize(KeyDe(self.key))
            .map_err(|e| e.at(self.key.pos))?;
        Ok((v, NodeDe(self.value)))
    }
}

impl<'de> de::VariantAccess<'de> for NodeDe<'_> {
    type Error = NodeError;
    fn unit_variant(self) -> Result<(), NodeError> {
        match self.0.value {
            Value::Null => Ok(()),
            Value::Map(ref m) if m.is_empty() => Ok(()),
            _ => Err(NodeError {
                pos: Some(self.0.pos),
                message: "this takes no settings".into(),
                hint: Some("write `{}` or nothing".into()),
            }),
        }
    }
    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, NodeError> {
        let pos = self.0.pos;
        // `manual:` with nothing after it means "all defaults".
        if matches!(self.0.value, Value::Null) {
            let empty = Node {
                pos,
                value: Value::Map(Vec::new()),
            };
            return seed.deserialize(NodeDe(&empty)).map_err(|e| e.at(pos));
        }
        seed.deserialize(self).map_err(|e| e.at(pos))
    }
    fn tuple_variant<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, NodeError> {
        self.deserialize_any(visitor)
    }
    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, NodeError> {
        // `webhook:` with nothing after it means "all defaults".
        if matches!(self.0.value, Value::Null) {
            let empty = Node {
                pos: self.0.pos,
                value: Value::Map(Vec::new()),
            };
            return NodeDe(&empty).deserialize_any(visitor);
        }
        self.deserialize_any(visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Conf {
        name: Spanned<String>,
        count: u32,
        #[serde(default)]
        tags: Vec<String>,
    }

    #[test]
    fn nodes_carry_positions_of_keys_and_values() {
        let node = parse_yaml("a: 1\nb:\n  c: [x, y]\n").unwrap();
        let b = node.get("b").unwrap();
        assert_eq!(b.pos.line, 3);
        let c = b.get("c").unwrap();
        match &c.value {
            Value::Seq(items) => {
                assert_eq!(items[1].pos, Pos { line: 3, col: 10 });
                assert_eq!(items[1].value, Value::Str("y".into()));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn typed_errors_point_at_the_offending_node() {
        let node = parse_yaml("name: x\ncount: many\n").unwrap();
        let err = node.parse::<Conf>().unwrap_err();
        assert_eq!(err.pos, Some(Pos { line: 2, col: 8 }));
        assert!(err.message.contains("u32"), "{}", err.message);

        let node = parse_yaml("name: x\ncount: 1\ntgas: []\n").unwrap();
        let err = node.parse::<Conf>().unwrap_err();
        assert_eq!(err.pos, Some(Pos { line: 3, col: 1 }));
        assert_eq!(err.message, "unknown key `tgas`");
        assert!(err.hint.unwrap().starts_with("did you mean `tags`?"));

        let node = parse_yaml("name: x\n").unwrap();
        let err = node.parse::<Conf>().unwrap_err();
        assert_eq!(err.message, "missing key `count`");
        assert_eq!(err.pos, Some(Pos { line: 1, col: 1 }));
    }

    #[test]
    fn spanned_values_know_where_they_were_written() {
        let node = parse_yaml("count: 2\nname: 'hello'\n").unwrap();
        let conf: Conf = node.parse().unwrap();
        assert_eq!(conf.name.value, "hello");
        assert_eq!(conf.name.pos, Pos { line: 2, col: 7 });
    }

    #[test]
    fn yaml_bombs_are_refused_with_a_plain_message() {
        let mut doc = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        let mut prev = "a".to_owned();
        for i in 0..8 {
            let name = format!("b{i}");
            doc.push_str(&format!(
                "{name}: &{name} [{}]\n",
                vec![format!("*{prev}"); 10].join(", ")
            ));
            prev = name;
        }
        let err = parse_yaml(&doc).unwrap_err();
        assert!(
            err.message.starts_with(
                "the document is too large once its anchors and aliases are expanded ("
            ),
            "{}",
            err.message
        );
        assert!(!err.message.contains('{'), "{}", err.message);
    }

    #[test]
    fn syntax_errors_and_duplicate_keys_are_located() {
        let err = parse_yaml("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(err.pos.line >= 1, "{err:?}");
        let err = parse_yaml("a: 1\na: 2\n").unwrap_err();
        assert!(err.message.contains("duplicate"), "{}", err.message);
    }
}
