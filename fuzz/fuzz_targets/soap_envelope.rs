//! SOAP response envelopes, as the `soap` step reads them: any bytes that are UTF-8 are parsed
//! under the default XML limits and given to `soap::envelope::read`, which finds the Body and
//! tells an answer element, a Fault (1.1 or 1.2) and an empty Body apart.
//!
//! Must hold: no panic, stack overflow or hang. What `read` answers agrees with the envelope:
//! an answer is the first element of a Body in the envelope's namespace, an empty Body has no
//! element, an error means the root is not a SOAP Envelope or it has no Body. A fault's fields
//! are trimmed, and a fault written back as an envelope of the same version reads as the same
//! fault (code, string, actor and detail), so what a step error shows is what the server sent.

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;

use ferry_core::soap::envelope::{Answer, Fault, NS_ENV11, NS_ENV12, read};
use ferry_core::xml::{self, Limits, Scalar, Types, Untyped};

/// Hints that type some names, so the typed mapping of an answer runs too.
struct Hints;

impl Types for Hints {
    fn scalar(&self, path: &[&str]) -> Option<Scalar> {
        match path.last().map(|n| n.len() % 4) {
            Some(1) => Some(Scalar::Integer),
            Some(2) => Some(Scalar::Decimal),
            Some(3) => Some(Scalar::Boolean),
            _ => None,
        }
    }
    fn repeated(&self, path: &[&str]) -> bool {
        path.len() % 2 == 1
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(doc) = xml::parse(text, &Limits::default()) else {
        return;
    };
    let root = doc.root_element();
    let env = root
        .tag_name()
        .namespace()
        .filter(|ns| root.tag_name().name() == "Envelope" && (*ns == NS_ENV11 || *ns == NS_ENV12));
    let body = env.and_then(|ns| {
        root.children().find(|c| {
            c.is_element() && c.tag_name().namespace() == Some(ns) && c.tag_name().name() == "Body"
        })
    });
    let first = body.and_then(|b| b.children().find(|c| c.is_element()));
    match read(&doc) {
        Err(message) => {
            assert!(body.is_none(), "refused an envelope with a Body: {message}");
            assert!(!message.is_empty());
        }
        Ok(Answer::Empty) => assert!(body.is_some() && first.is_none()),
        Ok(Answer::Element(node)) => {
            assert_eq!(Some(node), first, "the answer is the Body's first element");
            assert!(
                !(node.tag_name().name() == "Fault" && node.tag_name().namespace() == env),
                "a Fault read as an answer"
            );
            let mut path = Vec::new();
            let _ = xml::element_value(node, &Untyped, &mut path);
            let _ = xml::element_value(node, &Hints, &mut path);
            assert!(path.is_empty());
        }
        Ok(Answer::Fault(fault)) => {
            let f = first.expect("a fault is the Body's first element");
            assert_eq!(f.tag_name().name(), "Fault");
            assert_eq!(f.tag_name().namespace(), env);
            for field in [&fault.code, &fault.string] {
                assert_eq!(field.trim(), field.as_str(), "an untrimmed fault field");
            }
            if let Some(a) = &fault.actor {
                assert!(!a.is_empty() && a.trim() == a, "actor {a:?}");
            }
            let json = fault.to_json();
            assert_eq!(json["faultcode"], Value::String(fault.code.clone()));
            assert_eq!(json["faultstring"], Value::String(fault.string.clone()));
            let v12 = env == Some(NS_ENV12);
            let again = write_fault(&fault, v12);
            let doc = xml::parse(&again, &Limits::default())
                .unwrap_or_else(|e| panic!("a written fault is not XML: {e}\n{again}"));
            match read(&doc) {
                Ok(Answer::Fault(f2)) => assert_eq!(f2, fault, "written back as {again}"),
                other => panic!("a written fault reads as {other:?}: {again}"),
            }
        }
    }
});

/// A fault as a server would send it, every field written with the XML writer.
fn write_fault(f: &Fault, v12: bool) -> String {
    let mut out = String::new();
    let mut field = |name: &str, value: &Value| {
        xml::write_element(&mut out, name, value, None).expect("a fault field writes");
    };
    let code = Value::String(f.code.clone());
    let string = Value::String(f.string.clone());
    let actor = f.actor.clone().map(Value::String);
    if v12 {
        // One `Value` holding the whole code (`a / b` included) reads as the same code.
        field("Code", &serde_json::json!({ "Value": code }));
        field("Reason", &serde_json::json!({ "Text": string }));
        if let Some(a) = &actor {
            field("Role", a);
        }
        if !f.detail.is_null() {
            field("Detail", &f.detail);
        }
    } else {
        field("faultcode", &code);
        field("faultstring", &string);
        if let Some(a) = &actor {
            field("faultactor", a);
        }
        if !f.detail.is_null() {
            field("detail", &f.detail);
        }
    }
    let ns = if v12 { NS_ENV12 } else { NS_ENV11 };
    format!("<e:Envelope xmlns:e=\"{ns}\"><e:Body><e:Fault>{out}</e:Fault></e:Body></e:Envelope>")
}
