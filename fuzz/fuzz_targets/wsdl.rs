//! WSDL 1.1 documents (a `soap` step's `wsdl:`, `ferry import wsdl`): any bytes that are UTF-8
//! go through `soap::wsdl::Wsdl::parse`, and every operation of a model is used the way the
//! step and the importer use it: its message shapes are printed, and a request envelope is
//! built for it and read back.
//!
//! Must hold: a model or an error, never a panic, stack overflow or hang (recursive and
//! self-extending types included). In a model, every operation has a binding per SOAP version
//! at most, and the endpoints they name are the service's. A printed shape stays within its
//! cap. A request envelope that builds is XML that `envelope::read` finds the request element
//! in, under its name and namespace, with the children that were written.

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};

use ferry_core::soap::envelope::{self, Answer, Request};
use ferry_core::soap::wsdl::{ElementDecl, SoapVersion, Style, Wsdl};
use ferry_core::xml::{self, Limits, Order, Untyped};

/// `wsdl::MAX_SHAPE_BYTES`: a shape stops growing past it (the last line may cross it).
const MAX_SHAPE_BYTES: usize = 64 * 1024;
/// Operations and children looked at per document: enough to reach every code path.
const MAX_OPERATIONS: usize = 16;
const MAX_CHILDREN: usize = 8;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(w) = Wsdl::parse(text) else {
        return;
    };
    for (i, a) in w.addresses.iter().enumerate() {
        assert!(!w.addresses[..i].contains(a), "address `{a}` listed twice");
    }
    for (i, op) in w.operations.iter().enumerate().take(MAX_OPERATIONS) {
        assert!(
            w.operations[..i].iter().all(|o| o.name != op.name),
            "operation `{}` listed twice",
            op.name
        );
        assert!(!op.bindings.is_empty(), "operation `{}` has no binding", op.name);
        for (j, b) in op.bindings.iter().enumerate() {
            assert!(
                op.bindings[..j].iter().all(|x| x.version != b.version),
                "two SOAP {} bindings for `{}`",
                b.version.name(),
                op.name
            );
            if let Some(a) = &b.address {
                assert!(w.addresses.contains(a), "binding address `{a}` is not a service's");
            }
            assert_eq!(op.binding(Some(b.version)).map(|x| x.version), Some(b.version));
        }
        let default = op.binding(None).expect("an operation with bindings has a default");
        if op.bindings.iter().any(|b| b.version == SoapVersion::V11) {
            assert_eq!(default.version, SoapVersion::V11);
        }
        for b in &op.bindings {
            let input = w.body_element(&op.input, b.style, &op.name);
            let output = w.body_element(&op.output, b.style, &format!("{}Response", op.name));
            for decl in [&input, &output] {
                let shape = w.shape(decl);
                let longest_line = text.len() + 64;
                assert!(
                    shape.len() <= MAX_SHAPE_BYTES + longest_line,
                    "a shape of {} bytes",
                    shape.len()
                );
            }
            round_trip(&w, &input, b.version, b.style, b.namespace.as_deref());
        }
    }
});

/// Builds the request envelope for `input` as the `soap` step does (children in schema
/// order), and reads it back as a response.
fn round_trip(
    w: &Wsdl,
    input: &ElementDecl,
    version: SoapVersion,
    style: Style,
    rpc_namespace: Option<&str>,
) {
    let children = match w.schema.complex_of(input) {
        Some(ct) => w.schema.elements_of(&ct),
        None => Vec::new(),
    };
    // `@a` and `#text` are attributes and text to the writer, never element names.
    let content: Map<String, Value> = children
        .iter()
        .filter(|c| !c.name.starts_with(['@', '#']))
        .take(MAX_CHILDREN)
        .map(|c| (c.name.clone(), Value::String("1".into())))
        .collect();
    let content = Value::Object(content);
    let qualified_children = children.first().is_some_and(|e| e.ns.is_some());
    let order = SchemaOrder {
        names: children.iter().map(|c| c.name.clone()).collect(),
    };
    let req = Request {
        version,
        style,
        element: input,
        rpc_namespace,
        qualified_children,
        content: &content,
        order: &order,
    };
    // Refusing is allowed (a name XML cannot carry); writing something unreadable is not.
    let Ok(built) = envelope::build(&req, None) else {
        return;
    };
    assert_eq!(built.text, built.record, "nothing to mask without a token");
    let doc = xml::parse(&built.text, &Limits::default())
        .unwrap_or_else(|e| panic!("the built envelope is not XML: {e}\n{}", built.text));
    let node = match envelope::read(&doc) {
        Ok(Answer::Element(n)) => n,
        other => panic!("the built envelope reads as {other:?}\n{}", built.text),
    };
    assert_eq!(node.tag_name().name(), input.name, "{}", built.text);
    let ns = match style {
        Style::Rpc => rpc_namespace,
        Style::Document => input.ns.as_deref(),
    }
    .filter(|n| !n.is_empty());
    assert_eq!(node.tag_name().namespace(), ns, "{}", built.text);
    let mut path = Vec::new();
    let value = xml::element_value(node, &Untyped, &mut path);
    let Value::Object(written) = &content else {
        unreachable!()
    };
    if written.is_empty() {
        assert_eq!(value, Value::String(String::new()), "{}", built.text);
    } else {
        assert_eq!(&value, &content, "{}", built.text);
    }
}

/// The request element's children in schema order; deeper levels unordered.
struct SchemaOrder {
    names: Vec<String>,
}

impl Order for SchemaOrder {
    fn children(&self, path: &[&str]) -> Option<Vec<String>> {
        (path.len() == 1).then(|| self.names.clone())
    }
}
