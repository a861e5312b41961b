//! WSDL 1.1: the operations a service offers, how each is bound to SOAP (1.1 or 1.2,
//! document or rpc, literal), where it lives, and the XML Schema of its messages.
//!
//! Read once when a flow loads (or by `ferry import wsdl`), into an owned model that steps
//! share. Parsed with roxmltree with DTDs refused and a node limit, so a hostile WSDL cannot
//! expand entities or exhaust memory. Only what a client needs is kept: `use="encoded"` is
//! refused at the operation that asks for it, everything unknown is ignored.

use std::collections::HashMap;

use roxmltree::{Document, Node, ParsingOptions};

pub(crate) const NS_WSDL: &str = "http://schemas.xmlsoap.org/wsdl/";
pub(crate) const NS_SOAP11_BIND: &str = "http://schemas.xmlsoap.org/wsdl/soap/";
pub(crate) const NS_SOAP12_BIND: &str = "http://schemas.xmlsoap.org/wsdl/soap12/";
pub(crate) const NS_XSD: &str = "http://www.w3.org/2001/XMLSchema";

/// Largest WSDL read, in bytes, and most nodes parsed.
pub const MAX_WSDL_BYTES: usize = 8 * 1024 * 1024;
const MAX_NODES: u32 = 1_000_000;
/// How deep type references are followed (recursive schemas stop here).
const MAX_TYPE_DEPTH: usize = 32;
/// How deep and how long a printed shape gets (recursive types are cut there).
const MAX_SHAPE_DEPTH: usize = 12;
const MAX_SHAPE_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SoapVersion {
    V11,
    V12,
}

impl SoapVersion {
    pub fn name(self) -> &'static str {
        match self {
            SoapVersion::V11 => "1.1",
            SoapVersion::V12 => "1.2",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    Document,
    Rpc,
}

/// A namespace-qualified name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct QName {
    pub ns: String,
    pub local: String,
}

/// The simple types the mapping distinguishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    String,
    Integer,
    Decimal,
    Boolean,
}

/// One element in a schema: a global one or a child in a complex type.
#[derive(Debug, Clone)]
pub struct ElementDecl {
    pub name: String,
    /// The namespace its instances are in (`None`: unqualified).
    pub ns: Option<String>,
    pub ty: TypeRef,
    /// `maxOccurs` above 1 or `unbounded`: a list in JSON.
    pub many: bool,
    pub optional: bool,
    /// `ref="tns:x"`: the global element it stands for.
    pub reference: Option<QName>,
}

#[derive(Debug, Clone)]
pub enum TypeRef {
    Named(QName),
    Inline(Box<TypeDef>),
    /// No type: anything (`xs:anyType`).
    Any,
}

#[derive(Debug, Clone, Default)]
pub struct ComplexType {
    pub elements: Vec<ElementDecl>,
    pub attributes: Vec<(String, TypeRef)>,
    /// `simpleContent`: the type of the text beside the attributes.
    pub text: Option<TypeRef>,
    /// `complexContent/extension`: elements of the base come first.
    pub base: Option<QName>,
}

#[derive(Debug, Clone)]
pub enum TypeDef {
    Simple(Kind),
    Complex(ComplexType),
}

/// One message part: an element (document style) or a typed value (rpc style).
#[derive(Debug, Clone)]
pub struct Part {
    pub name: String,
    pub element: Option<QName>,
    pub ty: Option<QName>,
}

/// How one operation is bound to SOAP.
#[derive(Debug, Clone)]
pub struct Binding {
    pub version: SoapVersion,
    pub style: Style,
    pub action: Option<String>,
    /// The endpoint of the service port using this binding.
    pub address: Option<String>,
    /// rpc: the namespace of the wrapper elements (`soap:body namespace=`).
    pub namespace: Option<String>,
    /// `use="encoded"` somewhere in the operation: refused when called.
    pub encoded: bool,
}

#[derive(Debug, Clone)]
pub struct Operation {
    pub name: String,
    pub input: Vec<Part>,
    pub output: Vec<Part>,
    pub bindings: Vec<Binding>,
    pub documentation: Option<String>,
}

impl Operation {
    /// The binding to call with: the requested SOAP version, else 1.1, else the first.
    pub fn binding(&self, version: Option<SoapVersion>) -> Option<&Binding> {
        match version {
            Some(v) => self.bindings.iter().find(|b| b.version == v),
            None => self
                .bindings
                .iter()
                .find(|b| b.version == SoapVersion::V11)
                .or_else(|| self.bindings.first()),
        }
    }
}

/// A parsed WSDL.
#[derive(Debug, Clone, Default)]
pub struct Wsdl {
    pub target_ns: String,
    pub name: Option<String>,
    pub operations: Vec<Operation>,
    /// Service endpoints, in document order.
    pub addresses: Vec<String>,
    pub schema: Schema,
}

/// The XML Schema definitions of the `types` section.
#[derive(Debug, Clone, Default)]
pub struct Schema {
    pub elements: HashMap<QName, ElementDecl>,
    pub types: HashMap<QName, TypeDef>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum WsdlError {
    #[error("the WSDL is larger than {0} bytes")]
    TooLarge(usize),
    #[error("the WSDL is not readable XML: {0}")]
    Xml(String),
    #[error("not a WSDL 1.1 document (the root is `{0}`, expected `wsdl:definitions`)")]
    NotWsdl(String),
    #[error("the WSDL has no SOAP binding (soap or soap12)")]
    NoSoapBinding,
}

impl Wsdl {
    pub fn parse(text: &str) -> Result<Wsdl, WsdlError> {
        if text.len() > MAX_WSDL_BYTES {
            return Err(WsdlError::TooLarge(MAX_WSDL_BYTES));
        }
        let doc = Document::parse_with_options(
            text,
            ParsingOptions {
                allow_dtd: false,
                nodes_limit: MAX_NODES,
                ..ParsingOptions::default()
            },
        )
        .map_err(|e| WsdlError::Xml(e.to_string()))?;
        let root = doc.root_element();
        if root.tag_name().namespace() != Some(NS_WSDL) || root.tag_name().name() != "definitions" {
            return Err(WsdlError::NotWsdl(root.tag_name().name().to_owned()));
        }
        let target_ns = root.attribute("targetNamespace").unwrap_or("").to_owned();
        let mut w = Wsdl {
            target_ns: target_ns.clone(),
            name: root.attribute("name").map(str::to_owned),
            ..Wsdl::default()
        };
        let tq = |n: &str| QName {
            ns: target_ns.clone(),
            local: n.to_owned(),
        };

        for types in wsdl_children(root, "types") {
            for schema in types.children().filter(|c| is(c, NS_XSD, "schema")) {
                w.schema.read_schema(schema);
            }
        }

        let mut messages: HashMap<QName, Vec<Part>> = HashMap::new();
        for m in wsdl_children(root, "message") {
            let parts = wsdl_children(m, "part")
                .map(|p| Part {
                    name: p.attribute("name").unwrap_or("").to_owned(),
                    element: p.attribute("element").and_then(|v| qname(p, v)),
                    ty: p.attribute("type").and_then(|v| qname(p, v)),
                })
                .collect();
            messages.insert(tq(m.attribute("name").unwrap_or("")), parts);
        }

        // portType operations: messages and documentation.
        struct Abstract {
            input: Vec<Part>,
            output: Vec<Part>,
            documentation: Option<String>,
        }
        let mut port_types: HashMap<QName, HashMap<String, Abstract>> = HashMap::new();
        for pt in wsdl_children(root, "portType") {
            let mut ops = HashMap::new();
            for op in wsdl_children(pt, "operation") {
                let msg = |dir: &'static str| {
                    wsdl_children(op, dir)
                        .next()
                        .and_then(|n| n.attribute("message").and_then(|v| qname(n, v)))
                        .and_then(|q| messages.get(&q).cloned())
                        .unwrap_or_default()
                };
                ops.insert(
                    op.attribute("name").unwrap_or("").to_owned(),
                    Abstract {
                        input: msg("input"),
                        output: msg("output"),
                        documentation: wsdl_children(op, "documentation")
                            .next()
                            .and_then(|d| d.text())
                            .map(|t| t.trim().to_owned())
                            .filter(|t| !t.is_empty()),
                    },
                );
            }
            port_types.insert(tq(pt.attribute("name").unwrap_or("")), ops);
        }

        // Endpoints by binding.
        let mut addresses: HashMap<QName, String> = HashMap::new();
        for svc in wsdl_children(root, "service") {
            for port in wsdl_children(svc, "port") {
                let addr = port.children().find(|c| {
                    c.tag_name().name() == "address"
                        && matches!(
                            c.tag_name().namespace(),
                            Some(NS_SOAP11_BIND | NS_SOAP12_BIND)
                        )
                });
                if let (Some(b), Some(a)) = (
                    port.attribute("binding").and_then(|v| qname(port, v)),
                    addr.and_then(|a| a.attribute("location")),
                ) {
                    if !w.addresses.iter().any(|x| x == a) {
                        w.addresses.push(a.to_owned());
                    }
                    addresses.entry(b).or_insert_with(|| a.to_owned());
                }
            }
        }

        let mut any_soap = false;
        for b in wsdl_children(root, "binding") {
            let Some(sb) = b.children().find(|c| {
                c.tag_name().name() == "binding"
                    && matches!(
                        c.tag_name().namespace(),
                        Some(NS_SOAP11_BIND | NS_SOAP12_BIND)
                    )
            }) else {
                continue; // an HTTP or other binding
            };
            any_soap = true;
            let version = match sb.tag_name().namespace() {
                Some(NS_SOAP12_BIND) => SoapVersion::V12,
                _ => SoapVersion::V11,
            };
            let ns_bind = sb.tag_name().namespace().unwrap_or(NS_SOAP11_BIND);
            let default_style = match sb.attribute("style") {
                Some("rpc") => Style::Rpc,
                _ => Style::Document,
            };
            let name = tq(b.attribute("name").unwrap_or(""));
            let Some(pt) = b
                .attribute("type")
                .and_then(|v| qname(b, v))
                .and_then(|q| port_types.get(&q))
            else {
                continue;
            };
            for op in wsdl_children(b, "operation") {
                let op_name = op.attribute("name").unwrap_or("").to_owned();
                let Some(abs) = pt.get(&op_name) else {
                    continue;
                };
                let soap_op = op.children().find(|c| is(c, ns_bind, "operation"));
                let style = match soap_op.and_then(|o| o.attribute("style")) {
                    Some("rpc") => Style::Rpc,
                    Some("document") => Style::Document,
                    _ => default_style,
                };
                let bodies: Vec<Node> = ["input", "output"]
                    .iter()
                    .flat_map(|d| wsdl_children(op, d))
                    .flat_map(|io| io.children().filter(|c| is(c, ns_bind, "body")))
                    .collect();
                let binding = Binding {
                    version,
                    style,
                    action: soap_op
                        .and_then(|o| o.attribute("soapAction"))
                        .filter(|a| !a.is_empty())
                        .map(str::to_owned),
                    address: addresses.get(&name).cloned(),
                    namespace: bodies
                        .iter()
                        .find_map(|b| b.attribute("namespace"))
                        .map(str::to_owned),
                    encoded: bodies.iter().any(|b| b.attribute("use") == Some("encoded")),
                };
                match w.operations.iter_mut().find(|o| o.name == op_name) {
                    Some(o) => {
                        if !o.bindings.iter().any(|x| x.version == version) {
                            o.bindings.push(binding);
                        }
                    }
                    None => w.operations.push(Operation {
                        name: op_name,
                        input: abs.input.clone(),
                        output: abs.output.clone(),
                        bindings: vec![binding],
                        documentation: abs.documentation.clone(),
                    }),
                }
            }
        }
        if !any_soap {
            return Err(WsdlError::NoSoapBinding);
        }
        Ok(w)
    }

    pub fn operation(&self, name: &str) -> Option<&Operation> {
        self.operations.iter().find(|o| o.name == name)
    }

    pub fn operation_names(&self) -> impl Iterator<Item = &str> {
        self.operations.iter().map(|o| o.name.as_str())
    }

    /// The declaration of the element that carries a message in the SOAP Body: the part's
    /// element (document), or a wrapper named `name` whose children are the parts (rpc).
    pub fn body_element(&self, parts: &[Part], style: Style, wrapper: &str) -> ElementDecl {
        match style {
            Style::Document => {
                if let Some(q) = parts.iter().find_map(|p| p.element.as_ref())
                    && let Some(e) = self.schema.elements.get(q)
                {
                    return e.clone();
                }
                ElementDecl::any(wrapper)
            }
            Style::Rpc => ElementDecl {
                name: wrapper.to_owned(),
                ns: None,
                ty: TypeRef::Inline(Box::new(TypeDef::Complex(ComplexType {
                    elements: parts
                        .iter()
                        .map(|p| match (&p.element, &p.ty) {
                            (Some(q), _) => self
                                .schema
                                .elements
                                .get(q)
                                .cloned()
                                .unwrap_or_else(|| ElementDecl::any(&p.name)),
                            (None, Some(t)) => ElementDecl {
                                ty: TypeRef::Named(t.clone()),
                                ..ElementDecl::any(&p.name)
                            },
                            (None, None) => ElementDecl::any(&p.name),
                        })
                        .collect(),
                    ..ComplexType::default()
                }))),
                many: false,
                optional: false,
                reference: None,
            },
        }
    }

    /// The message's shape as indented lines (`name: type`, `[]` for lists), for
    /// `ferry import wsdl`.
    pub fn shape(&self, decl: &ElementDecl) -> String {
        let mut out = String::new();
        self.shape_into(decl, 0, &mut out);
        out
    }

    fn shape_into(&self, decl: &ElementDecl, depth: usize, out: &mut String) {
        if out.len() > MAX_SHAPE_BYTES {
            return;
        }
        let decl = self.schema.deref(decl);
        let indent = "  ".repeat(depth + 1);
        let list = if decl.many { "[]" } else { "" };
        let opt = if decl.optional { "?" } else { "" };
        match self.schema.resolve(&decl.ty) {
            Some(TypeDef::Complex(ct)) if depth < MAX_SHAPE_DEPTH => {
                out.push_str(&format!("{indent}{}{opt}{list}:\n", decl.name));
                for (a, t) in &ct.attributes {
                    out.push_str(&format!(
                        "{indent}  @{a}: {}\n",
                        kind_name(self.schema.kind_of(t))
                    ));
                }
                if let Some(t) = &ct.text {
                    out.push_str(&format!(
                        "{indent}  #text: {}\n",
                        kind_name(self.schema.kind_of(t))
                    ));
                }
                for e in self.schema.elements_of(ct) {
                    self.shape_into(&e, depth + 1, out);
                }
            }
            _ => out.push_str(&format!(
                "{indent}{}{opt}{list}: {}\n",
                decl.name,
                kind_name(self.schema.kind_of(&decl.ty))
            )),
        }
    }
}

fn kind_name(k: Option<Kind>) -> &'static str {
    match k {
        Some(Kind::String) => "string",
        Some(Kind::Integer) => "integer",
        Some(Kind::Decimal) => "decimal",
        Some(Kind::Boolean) => "boolean",
        None => "any",
    }
}

impl ElementDecl {
    fn any(name: &str) -> ElementDecl {
        ElementDecl {
            name: name.to_owned(),
            ns: None,
            ty: TypeRef::Any,
            many: false,
            optional: false,
            reference: None,
        }
    }
}

impl Schema {
    fn read_schema(&mut self, schema: Node) {
        let tns = schema.attribute("targetNamespace").unwrap_or("").to_owned();
        let qualified = schema.attribute("elementFormDefault") == Some("qualified");
        for item in schema.children().filter(Node::is_element) {
            if item.tag_name().namespace() != Some(NS_XSD) {
                continue;
            }
            let name = item.attribute("name").unwrap_or("").to_owned();
            let q = QName {
                ns: tns.clone(),
                local: name.clone(),
            };
            match item.tag_name().name() {
                // Global elements are always qualified.
                "element" => {
                    let mut e = element(item, &tns, qualified);
                    e.ns = Some(tns.clone()).filter(|n| !n.is_empty());
                    self.elements.insert(q, e);
                }
                "complexType" => {
                    self.types
                        .insert(q, TypeDef::Complex(complex(item, &tns, qualified)));
                }
                "simpleType" => {
                    self.types.insert(q, TypeDef::Simple(simple(item)));
                }
                _ => {} // import, include, annotation, group…: not followed
            }
        }
    }

    /// The global element a `ref=` points at, else the declaration itself.
    pub fn deref<'a>(&'a self, e: &'a ElementDecl) -> std::borrow::Cow<'a, ElementDecl> {
        match e.reference.as_ref().and_then(|q| self.elements.get(q)) {
            Some(g) => std::borrow::Cow::Owned(ElementDecl {
                many: e.many,
                optional: e.optional,
                ..g.clone()
            }),
            None => std::borrow::Cow::Borrowed(e),
        }
    }

    pub fn resolve<'a>(&'a self, t: &'a TypeRef) -> Option<&'a TypeDef> {
        match t {
            TypeRef::Inline(d) => Some(d),
            TypeRef::Named(q) if q.ns == NS_XSD => None,
            TypeRef::Named(q) => self.types.get(q),
            TypeRef::Any => None,
        }
    }

    /// The simple kind of a type reference, when it is simple.
    pub fn kind_of(&self, t: &TypeRef) -> Option<Kind> {
        match t {
            TypeRef::Named(q) if q.ns == NS_XSD => Some(builtin(&q.local)),
            _ => match self.resolve(t)? {
                TypeDef::Simple(k) => Some(*k),
                TypeDef::Complex(_) => None,
            },
        }
    }

    /// A complex type's elements, its base's first.
    pub fn elements_of(&self, ct: &ComplexType) -> Vec<ElementDecl> {
        let mut out = Vec::new();
        let mut chain = vec![ct];
        let mut seen: Vec<&QName> = Vec::new();
        let mut cur = ct;
        while let Some(b) = &cur.base {
            if seen.contains(&b) {
                break; // a type extending itself
            }
            seen.push(b);
            match self.types.get(b) {
                Some(TypeDef::Complex(base)) if chain.len() < MAX_TYPE_DEPTH => {
                    chain.push(base);
                    cur = base;
                }
                _ => break,
            }
        }
        for t in chain.iter().rev() {
            out.extend(t.elements.iter().map(|e| self.deref(e).into_owned()));
        }
        out
    }

    /// The complex type of an element, following its base's simple content too.
    pub fn complex_of(&self, e: &ElementDecl) -> Option<ComplexType> {
        match self.resolve(&self.deref(e).ty)? {
            TypeDef::Complex(ct) => {
                let mut ct = ct.clone();
                if ct.text.is_none() && ct.base.is_some() {
                    // simpleContent extension of a named simple type: `base` is its text type
                    if let Some(b) = &ct.base
                        && (b.ns == NS_XSD || matches!(self.types.get(b), Some(TypeDef::Simple(_))))
                    {
                        ct.text = Some(TypeRef::Named(b.clone()));
                    }
                }
                Some(ct)
            }
            TypeDef::Simple(_) => None,
        }
    }
}

/// An `xs:element` (global or local); a local one is qualified per `form` or
/// `elementFormDefault`, a global one always (its caller sets that).
fn element(n: Node, tns: &str, qualified: bool) -> ElementDecl {
    let reference = n.attribute("ref").and_then(|v| qname(n, v));
    let name = match &reference {
        Some(q) => q.local.clone(),
        None => n.attribute("name").unwrap_or("").to_owned(),
    };
    let ty = match n.attribute("type").and_then(|v| qname(n, v)) {
        Some(q) => TypeRef::Named(q),
        None => match xsd_children(n)
            .find(|c| matches!(c.tag_name().name(), "complexType" | "simpleType"))
        {
            Some(c) if c.tag_name().name() == "complexType" => {
                TypeRef::Inline(Box::new(TypeDef::Complex(complex(c, tns, qualified))))
            }
            Some(c) => TypeRef::Inline(Box::new(TypeDef::Simple(simple(c)))),
            None => TypeRef::Any,
        },
    };
    let many = match n.attribute("maxOccurs") {
        Some("unbounded") => true,
        Some(v) => v.parse::<u64>().is_ok_and(|m| m > 1),
        None => false,
    };
    ElementDecl {
        name,
        ns: match (&reference, n.attribute("form")) {
            (Some(q), _) => Some(q.ns.clone()),
            (None, Some("qualified")) => Some(tns.to_owned()),
            (None, Some(_)) => None,
            (None, None) if qualified => Some(tns.to_owned()),
            (None, None) => None,
        }
        .filter(|n| !n.is_empty()),
        ty,
        many,
        optional: n.attribute("minOccurs") == Some("0"),
        reference,
    }
}

fn complex(n: Node, tns: &str, qualified: bool) -> ComplexType {
    let mut ct = ComplexType::default();
    collect_particles(n, tns, qualified, &mut ct, false, 0);
    ct
}

/// Elements and attributes under a complexType, through sequence/all/choice and
/// complexContent/simpleContent extensions.
fn collect_particles(
    n: Node,
    tns: &str,
    qualified: bool,
    ct: &mut ComplexType,
    many: bool,
    depth: usize,
) {
    if depth > MAX_TYPE_DEPTH {
        return;
    }
    for c in xsd_children(n) {
        match c.tag_name().name() {
            "element" => {
                let mut e = element(c, tns, qualified);
                e.many |= many;
                ct.elements.push(e);
            }
            "sequence" | "all" | "choice" => {
                let rep = matches!(c.attribute("maxOccurs"), Some(v) if v == "unbounded" || v.parse::<u64>().is_ok_and(|m| m > 1));
                collect_particles(c, tns, qualified, ct, many || rep, depth + 1);
            }
            "attribute" => {
                let ty = match c.attribute("type").and_then(|v| qname(c, v)) {
                    Some(q) => TypeRef::Named(q),
                    None => match xsd_children(c).find(|x| x.tag_name().name() == "simpleType") {
                        Some(s) => TypeRef::Inline(Box::new(TypeDef::Simple(simple(s)))),
                        None => TypeRef::Any,
                    },
                };
                if let Some(name) = c.attribute("name") {
                    ct.attributes.push((name.to_owned(), ty));
                }
            }
            "complexContent" | "simpleContent" => {
                for d in xsd_children(c) {
                    if matches!(d.tag_name().name(), "extension" | "restriction") {
                        let base = d.attribute("base").and_then(|v| qname(d, v));
                        if c.tag_name().name() == "simpleContent" {
                            if let Some(b) = base {
                                ct.text = Some(TypeRef::Named(b));
                            }
                        } else if d.tag_name().name() == "extension" {
                            ct.base = base;
                        }
                        collect_particles(d, tns, qualified, ct, many, depth + 1);
                    }
                }
            }
            _ => {}
        }
    }
}

/// A simpleType: the kind of its restriction's base (lists and unions are strings).
fn simple(n: Node) -> Kind {
    xsd_children(n)
        .find(|c| c.tag_name().name() == "restriction")
        .and_then(|r| r.attribute("base").and_then(|v| qname(r, v)))
        .filter(|q| q.ns == NS_XSD)
        .map(|q| builtin(&q.local))
        .unwrap_or(Kind::String)
}

/// The kind of a built-in XML Schema type.
pub fn builtin(local: &str) -> Kind {
    match local {
        "int" | "integer" | "long" | "short" | "byte" | "nonNegativeInteger"
        | "positiveInteger" | "nonPositiveInteger" | "negativeInteger" | "unsignedLong"
        | "unsignedInt" | "unsignedShort" | "unsignedByte" => Kind::Integer,
        "decimal" | "float" | "double" => Kind::Decimal,
        "boolean" => Kind::Boolean,
        _ => Kind::String,
    }
}

fn is(n: &Node, ns: &str, name: &str) -> bool {
    n.is_element() && n.tag_name().namespace() == Some(ns) && n.tag_name().name() == name
}

fn wsdl_children<'a, 'i>(
    n: Node<'a, 'i>,
    name: &'static str,
) -> impl Iterator<Item = Node<'a, 'i>> {
    n.children().filter(move |c| is(c, NS_WSDL, name))
}

fn xsd_children<'a, 'i>(n: Node<'a, 'i>) -> impl Iterator<Item = Node<'a, 'i>> {
    n.children()
        .filter(|c| c.is_element() && c.tag_name().namespace() == Some(NS_XSD))
}

/// `prefix:local` resolved against the namespaces in scope at `n`.
fn qname(n: Node, v: &str) -> Option<QName> {
    let (prefix, local) = match v.split_once(':') {
        Some((p, l)) => (Some(p), l),
        None => (None, v),
    };
    let ns = n.lookup_namespace_uri(prefix).unwrap_or("");
    Some(QName {
        ns: ns.to_owned(),
        local: local.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const WAREHOUSE: &str = include_str!("../../tests/fixtures/wsdl/warehouse.wsdl");

    proptest! {
        // Whatever a WSDL holds, parsing ends with a model or an error, and every operation
        // of the model can be shaped without a panic.
        #[test]
        fn any_text_parses_or_is_refused_without_panic(text in "\\PC{0,400}") {
            if let Ok(w) = Wsdl::parse(&text) {
                for op in &w.operations {
                    let _ = w.shape(&w.body_element(&op.output, Style::Document, "x"));
                }
            }
        }

        // The realistic WSDL with one character changed or one byte range cut anywhere.
        #[test]
        fn mutated_wsdls_never_panic(at in 0usize..WAREHOUSE.len(), len in 0usize..40, ch in proptest::char::any()) {
            let mut text = WAREHOUSE.to_owned();
            if text.is_char_boundary(at) {
                text.insert(at, ch);
            }
            let end = (at + len).min(text.len());
            if text.is_char_boundary(at) && text.is_char_boundary(end) {
                text.replace_range(at..end, "");
            }
            if let Ok(w) = Wsdl::parse(&text) {
                for op in &w.operations {
                    for style in [Style::Document, Style::Rpc] {
                        let _ = w.shape(&w.body_element(&op.input, style, "in"));
                        let _ = w.shape(&w.body_element(&op.output, style, "out"));
                    }
                }
            }
        }
    }

    fn fixture(name: &str) -> Wsdl {
        let path = format!("{}/tests/fixtures/wsdl/{name}", env!("CARGO_MANIFEST_DIR"));
        Wsdl::parse(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    #[test]
    fn a_document_literal_wsdl_gives_operations_bindings_and_types() {
        let w = fixture("warehouse.wsdl");
        assert_eq!(w.target_ns, "urn:example:warehouse");
        assert_eq!(
            w.operation_names().collect::<Vec<_>>(),
            ["GetStock", "Reserve"]
        );
        assert_eq!(
            w.addresses,
            [
                "https://warehouse.example.com/soap",
                "https://warehouse.example.com/soap12"
            ]
        );
        let op = w.operation("GetStock").unwrap();
        assert_eq!(op.documentation.as_deref(), Some("Stock level of one SKU."));
        let b11 = op.binding(None).unwrap();
        assert_eq!(b11.version, SoapVersion::V11);
        assert_eq!(b11.style, Style::Document);
        assert_eq!(
            b11.action.as_deref(),
            Some("urn:example:warehouse/GetStock")
        );
        assert_eq!(
            b11.address.as_deref(),
            Some("https://warehouse.example.com/soap")
        );
        let b12 = op.binding(Some(SoapVersion::V12)).unwrap();
        assert_eq!(
            b12.address.as_deref(),
            Some("https://warehouse.example.com/soap12")
        );
        assert!(!b12.encoded);

        let input = w.body_element(&op.input, Style::Document, "GetStock");
        assert_eq!(input.name, "GetStock");
        assert_eq!(input.ns.as_deref(), Some("urn:example:warehouse"));
        let ct = w.schema.complex_of(&input).unwrap();
        let children = w.schema.elements_of(&ct);
        assert_eq!(children[0].name, "sku");
        // elementFormDefault="qualified": local elements are in the target namespace.
        assert_eq!(children[0].ns.as_deref(), Some("urn:example:warehouse"));
        assert_eq!(w.schema.kind_of(&children[0].ty), Some(Kind::String));
        assert!(children[1].optional);

        // Shapes follow the base type, references, lists, attributes and simple content.
        let output = w.body_element(&op.output, Style::Document, "GetStockResponse");
        insta::assert_snapshot!(w.shape(&output), @r"
          GetStockResponse:
            item:
              @revision: integer
              sku: string
              quantity: integer
              price: decimal
              available: boolean
              bin?[]: string
              weight?:
                @unit: string
                #text: decimal
        ");
        let reserve = w.operation("Reserve").unwrap();
        let input = w.body_element(&reserve.input, Style::Document, "Reserve");
        insta::assert_snapshot!(w.shape(&input), @r"
          Reserve:
            @orderId: string
            line[]:
              sku: string
              quantity: integer
        ");
    }

    #[test]
    fn an_rpc_wsdl_wraps_typed_parts_and_flags_encoded_operations() {
        let w = fixture("calculator-rpc.wsdl");
        let add = w.operation("Add").unwrap();
        let b = add.binding(None).unwrap();
        assert_eq!(b.style, Style::Rpc);
        assert_eq!(b.namespace.as_deref(), Some("urn:calculator"));
        assert_eq!(b.action.as_deref(), Some("http://example.com/Add"));
        assert!(!b.encoded);
        let out = w.body_element(&add.output, Style::Rpc, "AddResponse");
        insta::assert_snapshot!(w.shape(&out), @r"
          AddResponse:
            sum: integer
            exact: boolean
        ");
        assert!(w.operation("Legacy").unwrap().bindings[0].encoded);
        assert!(add.binding(Some(SoapVersion::V12)).is_none());
    }

    #[test]
    fn hostile_or_foreign_documents_are_refused() {
        let dtd = r#"<?xml version="1.0"?><!DOCTYPE d [<!ENTITY x "xx">]><definitions xmlns="http://schemas.xmlsoap.org/wsdl/">&x;</definitions>"#;
        assert!(matches!(Wsdl::parse(dtd), Err(WsdlError::Xml(_))));
        assert_eq!(
            Wsdl::parse("<html/>").unwrap_err(),
            WsdlError::NotWsdl("html".into())
        );
        assert_eq!(
            Wsdl::parse(r#"<definitions xmlns="http://schemas.xmlsoap.org/wsdl/"/>"#).unwrap_err(),
            WsdlError::NoSoapBinding
        );
        assert!(matches!(Wsdl::parse("<a"), Err(WsdlError::Xml(_))));
    }

    #[test]
    fn schemas_in_one_document_refer_to_each_other() {
        let text = r#"<definitions xmlns="http://schemas.xmlsoap.org/wsdl/" xmlns:soap12="http://schemas.xmlsoap.org/wsdl/soap12/" xmlns:xs="http://www.w3.org/2001/XMLSchema" xmlns:t="urn:t" xmlns:c="urn:common" targetNamespace="urn:t">
  <types>
    <xs:schema targetNamespace="urn:common" elementFormDefault="qualified">
      <xs:complexType name="Money"><xs:sequence><xs:element name="amount" type="xs:decimal"/><xs:element name="currency" type="xs:string"/></xs:sequence></xs:complexType>
    </xs:schema>
    <xs:schema targetNamespace="urn:t" xmlns:c2="urn:common">
      <xs:import namespace="urn:common"/>
      <xs:element name="Quote"><xs:complexType><xs:sequence><xs:element name="total" type="c2:Money"/><xs:element name="lines" type="xs:long" form="qualified"/></xs:sequence></xs:complexType></xs:element>
    </xs:schema>
  </types>
  <message name="m"><part name="p" element="t:Quote"/></message>
  <portType name="pt"><operation name="GetQuote"><input message="t:m"/><output message="t:m"/></operation></portType>
  <binding name="b" type="t:pt"><soap12:binding style="document"/><operation name="GetQuote"><soap12:operation soapAction="urn:t/GetQuote"/><input><soap12:body use="literal"/></input><output><soap12:body use="literal"/></output></operation></binding>
  <service name="s"><port name="p" binding="t:b"><soap12:address location="https://q.example/soap"/></port></service>
</definitions>"#;
        let w = Wsdl::parse(text).unwrap();
        let op = w.operation("GetQuote").unwrap();
        // Only a 1.2 binding: it is the default.
        let b = op.binding(None).unwrap();
        assert_eq!(b.version, SoapVersion::V12);
        assert_eq!(b.address.as_deref(), Some("https://q.example/soap"));
        let out = w.body_element(&op.output, Style::Document, "x");
        insta::assert_snapshot!(w.shape(&out), @r"
          Quote:
            total:
              amount: decimal
              currency: string
            lines: integer
        ");
        let ct = w.schema.complex_of(&out).unwrap();
        let children = w.schema.elements_of(&ct);
        // elementFormDefault unqualified, but `form="qualified"` on one element.
        assert_eq!(children[0].ns, None);
        assert_eq!(children[1].ns.as_deref(), Some("urn:t"));
    }

    #[test]
    fn recursive_types_do_not_loop() {
        let text = r#"<definitions xmlns="http://schemas.xmlsoap.org/wsdl/" xmlns:soap="http://schemas.xmlsoap.org/wsdl/soap/" xmlns:xs="http://www.w3.org/2001/XMLSchema" xmlns:t="urn:t" targetNamespace="urn:t">
  <types><xs:schema targetNamespace="urn:t">
    <xs:complexType name="Node"><xs:complexContent><xs:extension base="t:Node"><xs:sequence><xs:element name="child" type="t:Node"/></xs:sequence></xs:extension></xs:complexContent></xs:complexType>
    <xs:element name="Tree" type="t:Node"/>
  </xs:schema></types>
  <message name="m"><part name="p" element="t:Tree"/></message>
  <portType name="pt"><operation name="Op"><input message="t:m"/><output message="t:m"/></operation></portType>
  <binding name="b" type="t:pt"><soap:binding style="document"/><operation name="Op"><input><soap:body use="literal"/></input><output><soap:body use="literal"/></output></operation></binding>
</definitions>"#;
        let w = Wsdl::parse(text).unwrap();
        let op = w.operation("Op").unwrap();
        // No address in the WSDL: the step needs a connection.
        assert_eq!(op.binding(None).unwrap().address, None);
        let shape = w.shape(&w.body_element(&op.output, Style::Document, "x"));
        assert!(shape.lines().count() > 10, "{shape}");
        // Unqualified schema (no elementFormDefault): local elements have no namespace.
        let ct = w
            .schema
            .complex_of(&w.body_element(&op.input, Style::Document, "x"))
            .unwrap();
        assert_eq!(w.schema.elements_of(&ct).last().unwrap().ns, None);
    }
}
