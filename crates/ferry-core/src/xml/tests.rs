use proptest::prelude::*;
use serde_json::{Value as Json, json};

use super::*;

fn map(xml: &str) -> Json {
    to_json(xml.as_bytes(), &Limits::default(), &Untyped).unwrap()
}

fn refused(xml: &str, limits: &Limits) -> XmlError {
    to_json(xml.as_bytes(), limits, &Untyped).unwrap_err()
}

/// Hints keyed by the path joined with `/`.
struct Hints(&'static [(&'static str, Scalar)], &'static [&'static str]);

impl Types for Hints {
    fn scalar(&self, path: &[&str]) -> Option<Scalar> {
        let p = path.join("/");
        self.0.iter().find(|(k, _)| *k == p).map(|(_, s)| *s)
    }
    fn repeated(&self, path: &[&str]) -> bool {
        self.1.contains(&path.join("/").as_str())
    }
}

#[test]
fn elements_map_by_local_name_and_text_stays_text() {
    assert_eq!(
        map("<GetStockResponse><quantity>7</quantity></GetStockResponse>"),
        json!({"GetStockResponse": {"quantity": "7"}})
    );
    assert_eq!(
        map(r#"<?xml version="1.0" encoding="UTF-8"?>
<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" xmlns:m="urn:stock">
  <s:Body>
    <m:GetStockResponse><m:quantity>7</m:quantity></m:GetStockResponse>
  </s:Body>
</s:Envelope>"#),
        json!({"Envelope": {"Body": {"GetStockResponse": {"quantity": "7"}}}})
    );
    // Namespace declarations are not attributes; a default namespace changes nothing.
    assert_eq!(
        map(r#"<order xmlns="urn:shop" xmlns:x="urn:x"><id>5</id></order>"#),
        json!({"order": {"id": "5"}})
    );
    // A text-only element keeps its text exactly, blanks included.
    assert_eq!(map("<a> x </a>"), json!({"a": " x "}));
}

#[test]
fn attributes_become_at_keys_and_text_beside_them_hash_text() {
    assert_eq!(
        map(r#"<price currency="EUR" x:rate="1" xmlns:x="urn:x"> 7.50 </price>"#),
        json!({"price": {"@currency": "EUR", "@rate": "1", "#text": "7.50"}})
    );
    assert_eq!(map(r#"<item sku="a1"/>"#), json!({"item": {"@sku": "a1"}}));
    // Entity and character references are decoded.
    assert_eq!(
        map(r#"<a b="&lt;&amp;&#9;&quot;">&#x41;&amp;&gt;</a>"#),
        json!({"a": {"@b": "<&\t\"", "#text": "A&>"}})
    );
    // Two prefixes, one local name: the first attribute wins.
    assert_eq!(
        map(r#"<a x:id="1" y:id="2" xmlns:x="urn:x" xmlns:y="urn:y"/>"#),
        json!({"a": {"@id": "1"}})
    );
}

#[test]
fn repeated_siblings_become_arrays_and_single_ones_do_not() {
    assert_eq!(
        map("<order><item>a</item><note>n</note><item>b</item><item>c</item></order>"),
        json!({"order": {"item": ["a", "b", "c"], "note": "n"}})
    );
    assert_eq!(
        map("<order><item>a</item></order>"),
        json!({"order": {"item": "a"}})
    );
    // Different prefixes, same local name: one array.
    assert_eq!(
        map(r#"<r xmlns:a="urn:a" xmlns:b="urn:b"><a:x>1</a:x><b:x>2</b:x></r>"#),
        json!({"r": {"x": ["1", "2"]}})
    );
}

#[test]
fn mixed_content_concatenates_trimmed_text_and_ignores_blank_text() {
    assert_eq!(
        map("<p>\n  Dear <b>Ada</b>, welcome\n</p>"),
        json!({"p": {"b": "Ada", "#text": "Dear, welcome"}})
    );
    // Indentation between elements is not text.
    assert_eq!(
        map("<a>\n  <b>1</b>\n  <c>2</c>\n</a>"),
        json!({"a": {"b": "1", "c": "2"}})
    );
}

#[test]
fn cdata_is_text_and_comments_and_instructions_are_not() {
    assert_eq!(
        map("<a><![CDATA[<b>&x</b>]]></a>"),
        json!({"a": "<b>&x</b>"})
    );
    assert_eq!(map("<a>x<!-- c -->y<?pi z?></a>"), json!({"a": "xy"}));
    assert_eq!(
        map("<a><b/><!-- c --><![CDATA[ t ]]></a>"),
        json!({"a": {"b": "", "#text": "t"}})
    );
}

#[test]
fn empty_elements_are_empty_strings_and_xsi_nil_is_null() {
    assert_eq!(map("<a><b/><c></c></a>"), json!({"a": {"b": "", "c": ""}}));
    let nil = format!(
        r#"<a xmlns:i="{XSI}"><b i:nil="true"/><c i:nil="1" x="y"/><d i:nil="false">v</d></a>"#
    );
    assert_eq!(map(&nil), json!({"a": {"b": null, "c": null, "d": "v"}}));
    // `nil` in another namespace is an ordinary attribute.
    assert_eq!(map(r#"<a nil="true"/>"#), json!({"a": {"@nil": "true"}}));
}

#[test]
fn a_schema_types_scalars_and_marks_repetition() {
    let hints = Hints(
        &[
            ("r/n", Scalar::Integer),
            ("r/big", Scalar::Integer),
            ("r/d", Scalar::Decimal),
            ("r/di", Scalar::Decimal),
            ("r/b", Scalar::Boolean),
            ("r/b1", Scalar::Boolean),
            ("r/bad", Scalar::Integer),
            ("r/inf", Scalar::Decimal),
            ("r/s", Scalar::String),
            ("r/p/@id", Scalar::Integer),
            ("r/p", Scalar::Decimal),
        ],
        &["r/list", "r/p"],
    );
    let xml = r#"<r><n> 42 </n><big>18446744073709551615</big><d>-1.5</d><di>+7</di>
        <b>true</b><b1>0</b1><bad>N/A</bad><inf>INF</inf><s>007</s>
        <list>only</list><p id="3">2.5</p></r>"#;
    assert_eq!(
        to_json(xml.as_bytes(), &Limits::default(), &hints).unwrap(),
        json!({"r": {
            "n": 42, "big": 18446744073709551615u64, "d": -1.5, "di": 7,
            "b": true, "b1": false, "bad": "N/A", "inf": "INF", "s": "007",
            "list": ["only"], "p": [{"@id": 3, "#text": 2.5}]
        }})
    );
    // The same document without a schema: all text.
    assert_eq!(map(xml)["r"]["n"], " 42 ");
    assert_eq!(map(xml)["r"]["list"], "only");
}

#[test]
fn element_value_sees_paths_from_the_element_it_is_given() {
    let doc = parse(
        "<Envelope><Body><Resp><q>7</q></Resp></Body></Envelope>",
        &Limits::default(),
    )
    .unwrap();
    let resp = doc
        .descendants()
        .find(|n| n.tag_name().name() == "Resp")
        .unwrap();
    let hints = Hints(&[("Resp/q", Scalar::Integer)], &[]);
    let mut path = Vec::new();
    assert_eq!(element_value(resp, &hints, &mut path), json!({"q": 7}));
    assert!(path.is_empty(), "the path is restored");
}

#[test]
fn any_dtd_is_refused_so_no_entity_is_expanded_or_fetched() {
    let lol = r#"<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
]>
<lolz>&lol3;</lolz>"#;
    let l = Limits::default();
    assert_eq!(refused(lol, &l), XmlError::Dtd);
    assert_eq!(
        refused(
            r#"<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><x>&e;</x>"#,
            &l
        ),
        XmlError::Dtd
    );
    // Even an empty one, and one behind a comment; but not one quoted in a comment.
    assert_eq!(refused("<!DOCTYPE x><x/>", &l), XmlError::Dtd);
    assert_eq!(
        refused("<?xml version=\"1.0\"?><!-- hi --> <!DOCTYPE x><x/>", &l),
        XmlError::Dtd
    );
    assert_eq!(map("<!-- <!DOCTYPE x> --><x/>"), json!({"x": ""}));
    // Undeclared entities are errors, not empty text.
    assert!(matches!(
        refused("<x>&e;</x>", &l),
        XmlError::Malformed {
            line: 1,
            col: 4,
            ..
        }
    ));
    assert_eq!(
        XmlError::Dtd.to_string(),
        "XML with a DTD is refused (no entities are expanded)"
    );
}

#[test]
fn every_limit_is_enforced_and_named() {
    let small = Limits {
        max_bytes: 64,
        max_depth: 3,
        max_attributes: 2,
        max_nodes: 10,
    };
    assert_eq!(
        refused(&format!("<a>{}</a>", "x".repeat(64)), &small),
        XmlError::TooLarge(64)
    );
    assert!(to_json(b"<a><b><c/></b></a>", &small, &Untyped).is_ok());
    assert_eq!(
        refused("<a><b><c><d/></c></b></a>", &small),
        XmlError::TooDeep(3)
    );
    assert!(to_json(br#"<a x="1" y="2"/>"#, &small, &Untyped).is_ok());
    assert_eq!(
        refused(r#"<a><b x="1" y="2" z="3"/></a>"#, &small),
        XmlError::TooManyAttributes(2)
    );
    assert_eq!(
        refused("<a><b/><b/><b/><b/><b/><b/><b/><b/><b/><b/></a>", &small),
        XmlError::TooManyNodes(10)
    );
    assert_eq!(
        XmlError::TooDeep(3).to_string(),
        "XML nested deeper than 3 levels"
    );
    // Deep nesting far beyond the stack's reach is refused, not a crash.
    let deep = format!("{}{}", "<a>".repeat(200_000), "</a>".repeat(200_000));
    assert_eq!(
        to_json(deep.as_bytes(), &Limits::default(), &Untyped).unwrap_err(),
        XmlError::TooDeep(64)
    );
}

#[test]
fn malformed_xml_says_where() {
    let l = Limits::default();
    let e = refused("<order>\n  <id>5</id>\n  <x></y>\n</order>", &l);
    assert_eq!(
        e.to_string(),
        "malformed XML at line 3, column 6: expected 'x' tag, not 'y'"
    );
    assert_eq!(
        refused("<a>\n<b>", &l).to_string(),
        "malformed XML at line 2, column 4: the root element is never closed"
    );
    assert!(matches!(refused("", &l), XmlError::Malformed { .. }));
    assert!(matches!(
        refused("just text", &l),
        XmlError::Malformed { .. }
    ));
    assert_eq!(
        to_json(b"<a>\n\xff</a>", &l, &Untyped).unwrap_err(),
        XmlError::Malformed {
            line: 2,
            col: 1,
            message: "not valid UTF-8 (only UTF-8 XML is accepted)".into()
        }
    );
    // A byte-order mark is fine.
    assert_eq!(map("\u{feff}<a>1</a>"), json!({"a": "1"}));
}

fn written(name: &str, v: &Json, ns: Option<&str>) -> String {
    let mut out = String::new();
    write_element(&mut out, name, v, ns).unwrap();
    out
}

#[test]
fn json_writes_back_as_elements_by_the_same_conventions() {
    assert_eq!(
        written(
            "GetStock",
            &json!({"@id": 3, "item": ["a", "b"], "qty": 2, "ok": true, "gone": null}),
            Some("urn:stock")
        ),
        format!(
            r#"<GetStock xmlns="urn:stock" id="3"><gone xsi:nil="true" xmlns:xsi="{XSI}"/><item>a</item><item>b</item><ok>true</ok><qty>2</qty></GetStock>"#
        )
    );
    assert_eq!(
        written(
            "a",
            &json!({"@q": "\"<&>\t\n\r", "#text": "x<&]]>\r"}),
            None
        ),
        r#"<a q="&quot;&lt;&amp;&gt;&#9;&#10;&#13;">x&lt;&amp;]]&gt;&#13;</a>"#
    );
    assert_eq!(written("a", &json!({}), None), "<a/>");
    assert_eq!(written("a", &json!(""), None), "<a></a>");
    assert_eq!(written("a", &json!([1, 2]), None), "<a>1</a><a>2</a>");
    // Attributes with a null value are left out.
    assert_eq!(written("a", &json!({"@x": null}), None), "<a/>");
}

#[test]
fn bad_names_and_values_are_refused_and_nothing_is_written() {
    let mut out = String::from("<keep/>");
    let cases = [
        ("1a", json!("x"), WriteError::InvalidName("1a".into())),
        ("a:b", json!("x"), WriteError::InvalidName("a:b".into())),
        (
            "a",
            json!({"b c": 1}),
            WriteError::InvalidName("b c".into()),
        ),
        (
            "a",
            json!({"#other": 1}),
            WriteError::InvalidName("#other".into()),
        ),
        (
            "a",
            json!({"@xmlns": "u"}),
            WriteError::InvalidName("@xmlns".into()),
        ),
        (
            "a",
            json!({"ok": 1, "b": "\u{1}"}),
            WriteError::InvalidChar("b".into(), '\u{1}'),
        ),
        (
            "a",
            json!({"@x": "\u{0}"}),
            WriteError::InvalidChar("@x".into(), '\u{0}'),
        ),
        ("a", json!([[1]]), WriteError::NestedArray("a".into())),
        ("a", json!({"@x": [1]}), WriteError::NotScalar("@x".into())),
        (
            "a",
            json!({"#text": {}}),
            WriteError::NotScalar("#text".into()),
        ),
    ];
    for (name, v, want) in cases {
        assert_eq!(
            write_element(&mut out, name, &v, None).unwrap_err(),
            want,
            "{name} {v}"
        );
    }
    assert_eq!(out, "<keep/>");
    assert_eq!(
        WriteError::InvalidName("1a".into()).to_string(),
        "`1a` is not a valid XML name (a letter or `_`, then letters, digits, `-`, `_` or `.`; no `:`)"
    );
}

fn name() -> impl Strategy<Value = String> {
    "[a-zA-Z_\u{e9}\u{4e00}][a-zA-Z0-9_.\u{e9}-]{0,5}".prop_filter("xml names are reserved", |n| {
        !n.to_ascii_lowercase().starts_with("xml")
    })
}

/// Text as the mapping reads it back unchanged from an element with only text: anything XML
/// can carry, blanks and line breaks included.
fn leaf_text() -> impl Strategy<Value = String> {
    "[ \t\r\n]{0,2}[^\u{0}-\u{8}\u{b}\u{c}\u{e}-\u{1f}\u{fffe}\u{ffff}]{0,8}[ \t\r\n]{0,2}"
}

/// `#text` as the mapping produces it: not empty, no blanks at either end.
fn mixed_text() -> impl Strategy<Value = String> {
    "\\PC{1,8}".prop_filter("trimmed", |s| !s.is_empty() && trim_xml(s) == s)
}

/// JSON trees in the mapping's canonical shape: what `to_json` can produce without a schema.
fn canonical() -> impl Strategy<Value = Json> {
    let leaf = prop_oneof![leaf_text().prop_map(Json::String), Just(Json::Null)];
    leaf.prop_recursive(4, 40, 5, |inner| {
        let child = prop_oneof![
            3 => inner.clone(),
            1 => proptest::collection::vec(inner.clone(), 2..4).prop_map(Json::Array),
        ];
        (
            proptest::collection::btree_map(name(), leaf_text(), 0..3),
            proptest::collection::btree_map(name(), child, 0..4),
            proptest::option::of(mixed_text()),
        )
            .prop_filter("an object has attributes or children", |(a, c, _)| {
                !a.is_empty() || !c.is_empty()
            })
            .prop_map(|(attrs, children, text)| {
                let mut m = Map::new();
                for (k, v) in attrs {
                    m.insert(format!("@{k}"), Json::String(v));
                }
                for (k, v) in children {
                    m.insert(k, v);
                }
                if let Some(t) = text {
                    m.insert("#text".into(), Json::String(t));
                }
                Json::Object(m)
            })
    })
}

proptest! {
    #[test]
    fn canonical_trees_survive_write_then_read(root in name(), v in canonical(), ns in proptest::option::of("urn:[a-z&<\"]{1,6}")) {
        let mut out = String::new();
        write_element(&mut out, &root, &v, ns.as_deref()).unwrap();
        let back = to_json(out.as_bytes(), &Limits::default(), &Untyped);
        prop_assert_eq!(back, Ok(json!({ root: v })), "{}", out);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let limits = Limits { max_bytes: 200, max_depth: 4, max_attributes: 3, max_nodes: 50 };
        let _ = to_json(&bytes, &limits, &Untyped);
    }

    #[test]
    fn generated_documents_map_the_same_after_write_and_read(text in document()) {
        let hints = Hints(&[("a/b", Scalar::Integer), ("a", Scalar::Boolean)], &["a/c"]);
        let _ = to_json(text.as_bytes(), &Limits::default(), &hints);
        let first = to_json(text.as_bytes(), &Limits::default(), &Untyped);
        prop_assert!(first.is_ok(), "{}: {:?}", text, first);
        let Ok(Json::Object(m)) = first else { unreachable!() };
        let (root, v) = m.iter().next().unwrap();
        let mut out = String::new();
        write_element(&mut out, root, v, None).unwrap();
        prop_assert_eq!(to_json(out.as_bytes(), &Limits::default(), &Untyped).unwrap(), Json::Object(m.clone()), "{} → {}", text, out);
    }

    #[test]
    fn mangled_documents_never_panic(text in document(), cut in any::<prop::sample::Index>(), junk in "[<>&;!\\[\\]\"'/=-]{0,3}") {
        let at = cut.index(text.len() + 1);
        let at = (0..=at).rev().find(|i| text.is_char_boundary(*i)).unwrap_or(0);
        let mangled = format!("{}{}{}", &text[..at], junk, &text[at..]);
        let _ = to_json(mangled.as_bytes(), &Limits::default(), &Untyped);
    }
}

/// Well-formed documents from the parts the mapping treats differently: prefixes and
/// namespaces, attributes (`xsi:nil` too), repeated names, text with references, CDATA,
/// comments, processing instructions and blanks.
fn document() -> impl Strategy<Value = String> {
    let text = prop_oneof![
        Just(String::new()),
        Just("  \n ".to_owned()),
        "[a-z0-9 ]{1,4}",
        Just("&amp;&lt;&#x3e;&#13;".to_owned()),
        Just("<![CDATA[ <x> ]]>".to_owned()),
        Just("<!-- c -->".to_owned()),
        Just("<?pi d?>".to_owned()),
    ];
    let attrs = (
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        prop_oneof![Just(""), Just(" i:nil=\"true\""), Just(" i:nil=\"false\"")],
    )
        .prop_map(|(id, pid, q, nil)| {
            let mut a = String::new();
            if id {
                a.push_str(" id=\"1\"");
            }
            if pid {
                a.push_str(" p:id=\"2\"");
            }
            if q {
                a.push_str(" q=\"&quot;\t\"");
            }
            a + nil
        });
    let tag = prop_oneof![Just("a"), Just("b"), Just("c"), Just("p:b")];
    let leaf = (tag.clone(), attrs.clone(), text.clone())
        .prop_map(|(t, a, x)| format!("<{t}{a}>{x}</{t}>"));
    let element = leaf.prop_recursive(4, 30, 4, move |inner| {
        (
            tag.clone(),
            attrs.clone(),
            proptest::collection::vec((text.clone(), inner), 0..4),
            text.clone(),
        )
            .prop_map(|(t, a, kids, tail)| {
                let body: String = kids.into_iter().map(|(x, k)| x + &k).collect();
                format!("<{t}{a}>{body}{tail}</{t}>")
            })
    });
    element.prop_map(|e| {
        format!("<?xml version=\"1.0\"?>\n<r xmlns:p=\"urn:p\" xmlns:i=\"{XSI}\">{e}</r>")
    })
}

#[test]
fn a_schema_order_puts_children_in_sequence_and_the_rest_after() {
    struct Sequence;
    impl Order for Sequence {
        fn children(&self, path: &[&str]) -> Option<Vec<String>> {
            match path {
                ["order"] => Some(vec!["id".into(), "email".into(), "line".into()]),
                ["order", "line"] => Some(vec!["sku".into(), "qty".into()]),
                _ => None,
            }
        }
    }
    let value = serde_json::json!({
        "line": [{"qty": 2, "sku": "A"}, {"sku": "B", "qty": 1}],
        "email": "a@b.c",
        "note": "x",
        "id": 7,
        "#text": "",
        "@v": "1",
    });
    let mut out = String::new();
    write_element_ordered(&mut out, "order", &value, None, &Sequence).unwrap();
    assert_eq!(
        out,
        r#"<order v="1"><id>7</id><email>a@b.c</email><line><sku>A</sku><qty>2</qty></line><line><sku>B</sku><qty>1</qty></line><note>x</note></order>"#
    );
    // Without a schema: the object's own order.
    let mut plain = String::new();
    write_element(&mut plain, "order", &value, None).unwrap();
    assert!(plain.starts_with("<order v=\"1\"><email>"), "{plain}");
}

#[test]
fn character_references_to_what_xml_cannot_carry_are_refused_where_they_are() {
    for bad in ["&#xD800;", "&#x110000;", "&#55296;"] {
        let doc = format!("<a>\n  <b>{bad}</b>\n</a>");
        match to_json(doc.as_bytes(), &Limits::default(), &Untyped) {
            Err(XmlError::Malformed { line, col, message }) => {
                assert_eq!((line, col), (2, 6), "{bad}: {message}");
            }
            other => panic!("{bad}: {other:?}"),
        }
    }
    // Fine: real characters, and `&#` where it is not a reference.
    let ok = "<a x=\"&#x41;\">&#233;<![CDATA[&#xD800;]]><!-- &#xD800; --></a>";
    let v = to_json(ok.as_bytes(), &Limits::default(), &Untyped).unwrap();
    assert_eq!(v["a"]["@x"], "A");
}
