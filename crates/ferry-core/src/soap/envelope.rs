//! SOAP envelopes: building a request (1.1 or 1.2, document/literal or rpc/literal, with an
//! optional WS-Security UsernameToken header) and reading a response (the Body's element, or
//! a Fault).

pub use crate::xml::escape;
use base64::Engine as _;
use roxmltree::Node;
use serde_json::{Value as Json, json};
use sha1::Digest as _;

use super::wsdl::{ElementDecl, SoapVersion, Style};
use crate::xml;

pub const NS_ENV11: &str = "http://schemas.xmlsoap.org/soap/envelope/";
pub const NS_ENV12: &str = "http://www.w3.org/2003/05/soap-envelope";
pub const NS_WSSE: &str =
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd";
pub const NS_WSU: &str =
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd";
const PROFILE: &str =
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-username-token-profile-1.0";
const BASE64_BINARY: &str = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-soap-message-security-1.0#Base64Binary";
/// What the stored request shows instead of a password or digest.
pub const MASK: &str = "***";

pub fn env_ns(v: SoapVersion) -> &'static str {
    match v {
        SoapVersion::V11 => NS_ENV11,
        SoapVersion::V12 => NS_ENV12,
    }
}

/// The media type of a request, with the action for 1.2 (1.1 sends it as `SOAPAction`).
pub fn content_type(v: SoapVersion, action: Option<&str>) -> String {
    match (v, action) {
        (SoapVersion::V11, _) => "text/xml; charset=utf-8".into(),
        (SoapVersion::V12, Some(a)) => {
            format!("application/soap+xml; charset=utf-8; action=\"{a}\"")
        }
        (SoapVersion::V12, None) => "application/soap+xml; charset=utf-8".into(),
    }
}

/// A WS-Security UsernameToken, with the nonce and time it is sent with.
pub struct UsernameToken {
    pub username: String,
    pub password: String,
    pub digest: bool,
    pub nonce: [u8; 16],
    /// `Created`, UTC, e.g. `2026-11-25T13:00:00Z`.
    pub created: String,
}

impl UsernameToken {
    pub fn new(username: String, password: String, digest: bool) -> UsernameToken {
        UsernameToken {
            username,
            password,
            digest,
            nonce: rand::random(),
            created: chrono::Utc::now()
                .format("%Y-%m-%dT%H:%M:%S%.3fZ")
                .to_string(),
        }
    }

    /// `Base64(SHA-1(nonce + created + password))` (UsernameToken Profile 1.0, §3.1).
    pub fn digest_value(&self) -> String {
        let mut h = sha1::Sha1::new();
        h.update(self.nonce);
        h.update(self.created.as_bytes());
        h.update(self.password.as_bytes());
        base64::engine::general_purpose::STANDARD.encode(h.finalize())
    }

    /// The password as sent: the digest, or the password itself.
    pub fn sent_secret(&self) -> String {
        match self.digest {
            true => self.digest_value(),
            false => self.password.clone(),
        }
    }

    /// The `wsse:Security` header; `masked` writes `***` for the password or digest.
    fn header(&self, version: SoapVersion, masked: bool) -> String {
        let (kind, secret) = match self.digest {
            true => ("PasswordDigest", self.digest_value()),
            false => ("PasswordText", self.password.clone()),
        };
        let secret = if masked { MASK.to_owned() } else { secret };
        let must = match version {
            SoapVersion::V11 => "1",
            SoapVersion::V12 => "true",
        };
        let mut out = format!(
            "<wsse:Security xmlns:wsse=\"{NS_WSSE}\" xmlns:wsu=\"{NS_WSU}\" soap:mustUnderstand=\"{must}\"><wsse:UsernameToken><wsse:Username>{}</wsse:Username><wsse:Password Type=\"{PROFILE}#{kind}\">{}</wsse:Password>",
            escape(&self.username),
            escape(&secret)
        );
        let nonce = base64::engine::general_purpose::STANDARD.encode(self.nonce);
        out.push_str(&format!(
            "<wsse:Nonce EncodingType=\"{BASE64_BINARY}\">{nonce}</wsse:Nonce><wsu:Created>{}</wsu:Created></wsse:UsernameToken></wsse:Security>",
            escape(&self.created)
        ));
        out
    }
}

/// What goes in the Body.
pub struct Request<'a> {
    pub version: SoapVersion,
    pub style: Style,
    /// The element carrying the message (document: the part's element; rpc: the wrapper,
    /// named after the operation).
    pub element: &'a ElementDecl,
    /// rpc: the wrapper's namespace (`soap:body namespace=`).
    pub rpc_namespace: Option<&'a str>,
    /// Whether the element's children are namespace-qualified (`elementFormDefault`).
    pub qualified_children: bool,
    /// The element's content as JSON (`{child: value}`), mapped like responses are.
    pub content: &'a Json,
    /// The schema's order of children (`xsd:sequence`), from the request element down.
    pub order: &'a dyn xml::Order,
}

/// A built envelope: what is sent, and what the run record shows (credentials masked).
pub struct Built {
    pub text: String,
    pub record: String,
}

/// Builds the request envelope.
pub fn build(req: &Request, security: Option<&UsernameToken>) -> Result<Built, String> {
    let body = body_element(req)?;
    let ns = env_ns(req.version);
    let wrap = |header: Option<String>| {
        let mut s = format!(
            "<?xml version=\"1.0\" encoding=\"utf-8\"?><soap:Envelope xmlns:soap=\"{ns}\">"
        );
        if let Some(h) = header {
            s.push_str("<soap:Header>");
            s.push_str(&h);
            s.push_str("</soap:Header>");
        }
        s.push_str("<soap:Body>");
        s.push_str(&body);
        s.push_str("</soap:Body></soap:Envelope>");
        s
    };
    Ok(Built {
        text: wrap(security.map(|t| t.header(req.version, false))),
        record: wrap(security.map(|t| t.header(req.version, true))),
    })
}

/// Adds a UsernameToken to an envelope written by the flow (the `envelope` setting): into
/// its `Header`, or a new `Header` before its `Body`.
pub fn add_security(
    envelope: &str,
    version: SoapVersion,
    token: &UsernameToken,
) -> Result<Built, String> {
    let doc = xml::parse(envelope, &xml::Limits::default()).map_err(|e| e.to_string())?;
    let root = doc.root_element();
    let env = root.tag_name().namespace().unwrap_or("");
    if root.tag_name().name() != "Envelope" || (env != NS_ENV11 && env != NS_ENV12) {
        return Err("`envelope` must render to a soap:Envelope".into());
    }
    let prefix = root
        .lookup_prefix(env)
        .map(|p| format!("{p}:"))
        .unwrap_or_default();
    let header = root
        .children()
        .find(|c| c.is_element() && c.tag_name().name() == "Header");
    let body = root
        .children()
        .find(|c| c.is_element() && c.tag_name().name() == "Body")
        .ok_or("the envelope has no Body")?;
    let splice = |masked: bool| {
        // `soap:` in the header's mustUnderstand must name the envelope's namespace.
        let h = token.header(version, masked).replacen(
            "soap:mustUnderstand",
            &format!("xmlns:soap=\"{env}\" soap:mustUnderstand"),
            1,
        );
        match header {
            Some(hd) => {
                // Insert before the closing tag of the existing Header.
                let end = hd.range().end;
                let close = envelope[..end].rfind("</").unwrap_or(end);
                if envelope[hd.range()].ends_with("/>") {
                    let r = hd.range();
                    format!(
                        "{}<{prefix}Header>{h}</{prefix}Header>{}",
                        &envelope[..r.start],
                        &envelope[r.end..]
                    )
                } else {
                    format!("{}{h}{}", &envelope[..close], &envelope[close..])
                }
            }
            None => {
                let at = body.range().start;
                format!(
                    "{}<{prefix}Header>{h}</{prefix}Header>{}",
                    &envelope[..at],
                    &envelope[at..]
                )
            }
        }
    };
    Ok(Built {
        text: splice(false),
        record: splice(true),
    })
}

fn body_element(req: &Request) -> Result<String, String> {
    let e = req.element;
    let ns = match req.style {
        Style::Rpc => req.rpc_namespace.filter(|n| !n.is_empty()),
        Style::Document => e.ns.as_deref().filter(|n| !n.is_empty()),
    };
    let qualified = req.style == Style::Document && req.qualified_children;
    let content = match req.content {
        Json::Null => Json::Object(Default::default()),
        Json::Array(_) => {
            return Err(
                "`body` must be an object (the request element's children), not a list".into(),
            );
        }
        other => other.clone(),
    };
    let mut out = String::new();
    match (ns, qualified) {
        // Children inherit the default namespace: qualified.
        (Some(ns), true) => {
            xml::write_element_ordered(&mut out, &e.name, &content, Some(ns), req.order)
                .map_err(|e| e.to_string())?
        }
        // A prefix for the element only: its children stay unqualified.
        (Some(ns), false) => {
            let mut plain = String::new();
            xml::write_element_ordered(&mut plain, &e.name, &content, None, req.order)
                .map_err(|e| e.to_string())?;
            let open = format!("<{}", e.name);
            let rest = plain.strip_prefix(&open).ok_or("unexpected element text")?;
            out = format!("<m:{} xmlns:m=\"{}\"{rest}", e.name, escape(ns));
            let close = format!("</{}>", e.name);
            if out.ends_with(&close) {
                out.truncate(out.len() - close.len());
                out.push_str(&format!("</m:{}>", e.name));
            }
        }
        (None, _) => xml::write_element_ordered(&mut out, &e.name, &content, None, req.order)
            .map_err(|e| e.to_string())?,
    }
    Ok(out)
}

/// A SOAP Fault, 1.1 or 1.2, as a step error shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    /// The code as written (`soap:Client`, `soap:Sender`); 1.2 subcodes follow after ` / `.
    pub code: String,
    pub string: String,
    pub actor: Option<String>,
    pub detail: Json,
}

impl Fault {
    /// True when the server says the fault is its own (`Server`, `Receiver`): trying again
    /// later may succeed. `Client`/`Sender`, `VersionMismatch` and `MustUnderstand` mean
    /// the request is wrong and will stay wrong.
    pub fn is_server(&self) -> bool {
        let first = self.code.split(" / ").next().unwrap_or("");
        let local = first.rsplit(':').next().unwrap_or(first);
        let class = local.split('.').next().unwrap_or(local);
        matches!(class, "Server" | "Receiver")
    }

    pub fn to_json(&self) -> Json {
        let mut o = json!({
            "faultcode": self.code,
            "faultstring": self.string,
            "detail": self.detail,
        });
        if let Some(a) = &self.actor {
            o["faultactor"] = Json::String(a.clone());
        }
        o
    }
}

/// What a response envelope holds.
#[derive(Debug)]
pub enum Answer<'a, 'i> {
    /// The Body's first element.
    Element(Node<'a, 'i>),
    Fault(Fault),
    /// An empty Body (one-way operations).
    Empty,
}

/// Finds the Body of a parsed envelope and what it holds.
pub fn read<'a, 'i>(doc: &'a roxmltree::Document<'i>) -> Result<Answer<'a, 'i>, String> {
    let root = doc.root_element();
    let ns = root.tag_name().namespace().unwrap_or("");
    if root.tag_name().name() != "Envelope" || (ns != NS_ENV11 && ns != NS_ENV12) {
        return Err(format!(
            "the response is not a SOAP envelope (root element `{}`)",
            root.tag_name().name()
        ));
    }
    let body = root
        .children()
        .find(|c| {
            c.is_element() && c.tag_name().namespace() == Some(ns) && c.tag_name().name() == "Body"
        })
        .ok_or("the SOAP envelope has no Body")?;
    let Some(first) = body.children().find(Node::is_element) else {
        return Ok(Answer::Empty);
    };
    if first.tag_name().namespace() == Some(ns) && first.tag_name().name() == "Fault" {
        return Ok(Answer::Fault(fault(first, ns == NS_ENV12)));
    }
    Ok(Answer::Element(first))
}

fn child<'a, 'i>(n: Node<'a, 'i>, name: &str) -> Option<Node<'a, 'i>> {
    n.children()
        .find(|c| c.is_element() && c.tag_name().name() == name)
}

fn fault(f: Node, v12: bool) -> Fault {
    let text = |n: Option<Node>| {
        n.map(|n| {
            n.descendants()
                .filter(Node::is_text)
                .filter_map(|t| t.text())
                .collect::<String>()
                .trim()
                .to_owned()
        })
        .unwrap_or_default()
    };
    // The detail's content, mapped like any response element.
    let detail_of = |d: Option<Node>| match d {
        None => Json::Null,
        Some(d) => {
            let mut path = Vec::new();
            xml::element_value(d, &xml::Untyped, &mut path)
        }
    };
    if v12 {
        let code = child(f, "Code");
        let mut codes = Vec::new();
        let mut cur = code;
        while let Some(c) = cur {
            let v = text(child(c, "Value"));
            if v.is_empty() {
                break;
            }
            codes.push(v);
            cur = child(c, "Subcode");
        }
        let reason = child(f, "Reason").and_then(|r| child(r, "Text"));
        Fault {
            code: codes.join(" / "),
            string: text(reason),
            actor: child(f, "Role")
                .map(|r| text(Some(r)))
                .filter(|a| !a.is_empty()),
            detail: detail_of(child(f, "Detail")),
        }
    } else {
        Fault {
            code: text(child(f, "faultcode")),
            string: text(child(f, "faultstring")),
            actor: child(f, "faultactor")
                .map(|a| text(Some(a)))
                .filter(|a| !a.is_empty()),
            detail: detail_of(child(f, "detail")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::wsdl::Wsdl;
    use super::*;
    use proptest::prelude::*;

    proptest! {
        // Any response text is read as an element, a fault, empty, or an error: no panic.
        #[test]
        fn any_response_is_read_without_panic(body in "\\PC{0,200}", v12 in any::<bool>()) {
            let ns = if v12 { NS_ENV12 } else { NS_ENV11 };
            for text in [
                body.clone(),
                format!("<e:Envelope xmlns:e=\"{ns}\"><e:Body>{body}</e:Body></e:Envelope>"),
                format!("<e:Envelope xmlns:e=\"{ns}\"><e:Body><e:Fault>{body}</e:Fault></e:Body></e:Envelope>"),
            ] {
                if let Ok(doc) = xml::parse(&text, &xml::Limits::default()) {
                    let _ = read(&doc);
                }
            }
        }

        // Whatever the body holds, the envelope built from it is well-formed XML, or the
        // build says why not.
        #[test]
        fn built_envelopes_are_well_formed(key in "[a-z@#][a-z0-9]{0,6}", value in "\\PC{0,30}") {
            let el = super::super::wsdl::ElementDecl {
                name: "Op".into(),
                ns: Some("urn:x".into()),
                ty: super::super::wsdl::TypeRef::Any,
                many: false,
                optional: false,
                reference: None,
            };
            let content = json!({ key: value });
            if let Ok(b) = build(&Request { version: SoapVersion::V11, style: Style::Document, element: &el, rpc_namespace: None, qualified_children: true, content: &content, order: &xml::Unordered }, None) {
                prop_assert!(xml::parse(&b.text, &xml::Limits::default()).is_ok(), "{}", b.text);
            }
        }
    }

    fn warehouse() -> Wsdl {
        let path = format!(
            "{}/tests/fixtures/wsdl/warehouse.wsdl",
            env!("CARGO_MANIFEST_DIR")
        );
        Wsdl::parse(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    fn token(digest: bool) -> UsernameToken {
        UsernameToken {
            username: "ops".into(),
            password: "IloveDogs".into(),
            digest,
            nonce: [
                89, 39, 42, 106, 120, 194, 16, 0, 184, 153, 10, 1, 19, 78, 236, 1,
            ],
            created: "2003-07-16T01:24:32Z".into(),
        }
    }

    #[test]
    fn password_digest_matches_an_independent_computation() {
        // base64(sha1(b64decode("WScqanjCEAC4mQoBE07sAQ==") + created + password)), computed
        // with Python's hashlib.
        let t = token(true);
        assert_eq!(t.digest_value(), "cywFYG+KaPMK3PCWR+m+DWtqzac=");
        assert_eq!(t.sent_secret(), "cywFYG+KaPMK3PCWR+m+DWtqzac=");
        assert_eq!(token(false).sent_secret(), "IloveDogs");
        let fresh = UsernameToken::new("u".into(), "p".into(), true);
        assert_ne!(
            fresh.nonce,
            UsernameToken::new("u".into(), "p".into(), true).nonce
        );
        assert!(fresh.created.ends_with('Z'));
    }

    #[test]
    fn document_envelopes_qualify_children_and_mask_the_password() {
        let w = warehouse();
        let op = w.operation("GetStock").unwrap();
        let el = w.body_element(&op.input, Style::Document, "GetStock");
        let body = json!({"sku": "AB-1 & <2>", "warehouse": null});
        let t = token(true);
        let built = build(
            &Request {
                version: SoapVersion::V11,
                style: Style::Document,
                element: &el,
                rpc_namespace: None,
                qualified_children: true,
                content: &body,
                order: &xml::Unordered,
            },
            Some(&t),
        )
        .unwrap();
        assert!(
            built
                .text
                .contains(&format!("<soap:Envelope xmlns:soap=\"{NS_ENV11}\">"))
        );
        assert!(built.text.contains(
            "<soap:Body><GetStock xmlns=\"urn:example:warehouse\"><sku>AB-1 &amp; &lt;2&gt;</sku>"
        ));
        assert!(
            built
                .text
                .contains("#PasswordDigest\">cywFYG+KaPMK3PCWR+m+DWtqzac=</wsse:Password>")
        );
        assert!(built.text.contains("<wsse:Nonce EncodingType="));
        assert!(built.text.contains("soap:mustUnderstand=\"1\""));
        assert!(!built.record.contains("cywFYG"));
        assert!(
            built
                .record
                .contains("#PasswordDigest\">***</wsse:Password>")
        );
        // The envelope is well-formed and the body reads back through the same mapping.
        let doc = xml::parse(&built.text, &xml::Limits::default()).unwrap();
        let Answer::Element(n) = read(&doc).unwrap() else {
            panic!("no element")
        };
        assert_eq!(n.tag_name().namespace(), Some("urn:example:warehouse"));
        let sku = n.children().find(|c| c.is_element()).unwrap();
        assert_eq!(sku.tag_name().namespace(), Some("urn:example:warehouse"));
        assert_eq!(sku.text(), Some("AB-1 & <2>"));
    }

    #[test]
    fn soap12_and_rpc_envelopes() {
        let w = warehouse();
        let op = w.operation("GetStock").unwrap();
        let el = w.body_element(&op.input, Style::Document, "GetStock");
        let built = build(
            &Request {
                version: SoapVersion::V12,
                style: Style::Document,
                element: &el,
                rpc_namespace: None,
                qualified_children: false,
                content: &json!({"sku": "A"}),
                order: &xml::Unordered,
            },
            Some(&token(false)),
        )
        .unwrap();
        assert!(built.text.contains(NS_ENV12));
        assert!(built.text.contains("soap:mustUnderstand=\"true\""));
        assert!(built.text.contains("#PasswordText\">IloveDogs<"));
        assert!(built.record.contains("#PasswordText\">***<"));
        // Unqualified children: a prefix on the element only.
        assert!(
            built.text.contains(
                "<m:GetStock xmlns:m=\"urn:example:warehouse\"><sku>A</sku></m:GetStock>"
            )
        );
        assert_eq!(
            content_type(SoapVersion::V12, Some("urn:a")),
            "application/soap+xml; charset=utf-8; action=\"urn:a\""
        );
        assert_eq!(
            content_type(SoapVersion::V11, Some("urn:a")),
            "text/xml; charset=utf-8"
        );

        let rpc = Wsdl::parse(
            &std::fs::read_to_string(format!(
                "{}/tests/fixtures/wsdl/calculator-rpc.wsdl",
                env!("CARGO_MANIFEST_DIR")
            ))
            .unwrap(),
        )
        .unwrap();
        let add = rpc.operation("Add").unwrap();
        let el = rpc.body_element(&add.input, Style::Rpc, "Add");
        let built = build(
            &Request {
                version: SoapVersion::V11,
                style: Style::Rpc,
                element: &el,
                rpc_namespace: Some("urn:calculator"),
                qualified_children: true,
                content: &json!({"a": 2, "b": 3}),
                order: &xml::Unordered,
            },
            None,
        )
        .unwrap();
        assert!(!built.text.contains("Header"));
        assert!(built.text.contains(
            "<soap:Body><m:Add xmlns:m=\"urn:calculator\"><a>2</a><b>3</b></m:Add></soap:Body>"
        ));
        assert_eq!(built.text, built.record);
        let list = build(
            &Request {
                version: SoapVersion::V11,
                style: Style::Rpc,
                element: &el,
                rpc_namespace: None,
                qualified_children: false,
                content: &json!([1]),
                order: &xml::Unordered,
            },
            None,
        );
        assert!(list.is_err());
        // Names and characters are checked by the XML writer (found by the property below).
        for bad in [json!({"@": ""}), json!({"a b": 1}), json!({"x": "\u{1}"})] {
            let r = build(
                &Request {
                    version: SoapVersion::V11,
                    style: Style::Document,
                    element: &el,
                    rpc_namespace: None,
                    qualified_children: false,
                    content: &bad,
                    order: &xml::Unordered,
                },
                None,
            );
            assert!(r.is_err(), "{bad}");
        }
    }

    #[test]
    fn a_security_header_goes_into_a_written_envelope() {
        let env = format!("<s:Envelope xmlns:s=\"{NS_ENV11}\"><s:Body><x/></s:Body></s:Envelope>");
        let b = add_security(&env, SoapVersion::V11, &token(false)).unwrap();
        assert!(b.text.contains("<s:Header><wsse:Security"), "{}", b.text);
        assert!(
            xml::parse(&b.text, &xml::Limits::default()).is_ok(),
            "{}",
            b.text
        );
        assert!(b.record.contains(">***<") && !b.record.contains("IloveDogs"));
        let with_header = format!(
            "<s:Envelope xmlns:s=\"{NS_ENV11}\"><s:Header><a/></s:Header><s:Body/></s:Envelope>"
        );
        let b = add_security(&with_header, SoapVersion::V11, &token(false)).unwrap();
        assert!(b.text.contains("<a/><wsse:Security"), "{}", b.text);
        assert!(xml::parse(&b.text, &xml::Limits::default()).is_ok());
        assert!(add_security("<a/>", SoapVersion::V11, &token(false)).is_err());
    }

    #[test]
    fn faults_are_read_in_both_versions() {
        let f11 = format!(
            r#"<e:Envelope xmlns:e="{NS_ENV11}"><e:Body><e:Fault><faultcode>e:Client.UnknownSku</faultcode><faultstring>no such sku: X</faultstring><faultactor></faultactor><detail><sku>X</sku><sku>Y</sku></detail></e:Fault></e:Body></e:Envelope>"#
        );
        let doc = xml::parse(&f11, &xml::Limits::default()).unwrap();
        let Answer::Fault(f) = read(&doc).unwrap() else {
            panic!("not a fault")
        };
        assert_eq!(f.code, "e:Client.UnknownSku");
        assert_eq!(f.string, "no such sku: X");
        assert_eq!(f.actor, None);
        assert!(!f.is_server());
        assert_eq!(
            f.to_json(),
            json!({"faultcode": "e:Client.UnknownSku", "faultstring": "no such sku: X", "detail": {"sku": ["X", "Y"]}})
        );

        let f12 = format!(
            r#"<env:Envelope xmlns:env="{NS_ENV12}"><env:Body><env:Fault><env:Code><env:Value>env:Receiver</env:Value><env:Subcode><env:Value>m:Busy</env:Value></env:Subcode></env:Code><env:Reason><env:Text xml:lang="en">try later</env:Text></env:Reason><env:Detail><m:wait xmlns:m="urn:m">5</m:wait></env:Detail></env:Fault></env:Body></env:Envelope>"#
        );
        let doc = xml::parse(&f12, &xml::Limits::default()).unwrap();
        let Answer::Fault(f) = read(&doc).unwrap() else {
            panic!("not a fault")
        };
        assert_eq!(f.code, "env:Receiver / m:Busy");
        assert_eq!(f.string, "try later");
        assert!(f.is_server());
        assert_eq!(f.detail, json!({"wait": "5"}));

        let sender = f12.replace("env:Receiver", "env:Sender");
        let doc = xml::parse(&sender, &xml::Limits::default()).unwrap();
        let Answer::Fault(f) = read(&doc).unwrap() else {
            panic!("not a fault")
        };
        assert!(!f.is_server());

        let empty = format!(r#"<e:Envelope xmlns:e="{NS_ENV11}"><e:Body/></e:Envelope>"#);
        let doc = xml::parse(&empty, &xml::Limits::default()).unwrap();
        assert!(matches!(read(&doc).unwrap(), Answer::Empty));
        let doc = xml::parse("<html><body/></html>", &xml::Limits::default()).unwrap();
        assert_eq!(
            read(&doc).unwrap_err(),
            "the response is not a SOAP envelope (root element `html`)"
        );
    }
}
