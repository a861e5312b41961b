//! Inbound XML webhooks: the body is mapped to JSON (docs/xml.md), and hostile or broken XML
//! gets a 400 that names the problem, with nothing stored.

use std::time::Duration;

use axum::http::Method;
use serde_json::{Value, json};

use crate::harness::{Ferry, Project, Receiver};

const FLOW: &str = r#"
id: orders
trigger:
  webhook:
    path: /hooks/orders
steps:
  - id: forward
    http:
      url: '@RECEIVER@/orders'
      method: POST
      body:
        id: '{{ .event.body.order.id }}'
        skus: '{{ [.event.body.order.item[]["@sku"]] }}'
        note: '{{ .event.body.order.note }}'
"#;

async fn setup() -> (Receiver, Project, Ferry) {
    let receiver = Receiver::start().await;
    let project = Project::new(&[("flows/orders.yaml", FLOW)], Some(&receiver));
    let ferry = Ferry::start(&project);
    (receiver, project, ferry)
}

/// Posts `body` as `content_type`, expects a 400 problem, returns its `detail`.
async fn refused(ferry: &Ferry, content_type: &str, body: &str) -> String {
    let resp = ferry
        .post("/hooks/orders", content_type, body.to_owned(), &[])
        .await;
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["type"], "https://ferry.dev/problems/bad-request", "{v}");
    v["detail"].as_str().unwrap().to_owned()
}

async fn assert_nothing_stored(ferry: &Ferry, receiver: &Receiver) {
    let (_, runs) = ferry.api(Method::GET, "/runs", None).await;
    assert_eq!(runs["runs"], json!([]), "{runs:#}");
    assert!(receiver.requests().is_empty());
    assert!(ferry.healthy().await);
}

#[tokio::test]
async fn an_xml_order_webhook_reaches_the_flow_as_json() {
    let (receiver, _p, ferry) = setup().await;
    let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<s:order xmlns:s="urn:shop">
  <s:id>5</s:id>
  <s:item sku="a-1"/>
  <s:item sku="b-2"/>
  <s:note><![CDATA[fragile & <urgent>]]></s:note>
</s:order>"#;
    let resp = ferry
        .post("/hooks/orders", "application/xml", xml, &[])
        .await;
    assert_eq!(resp.status(), 202);
    let v: Value = resp.json().await.unwrap();
    let run = ferry
        .wait_final(v["run_id"].as_str().unwrap(), Duration::from_secs(20))
        .await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    // Without a schema the text stays text: `"5"`, not `5`.
    assert_eq!(
        run["event"]["body"],
        json!({"order": {
            "id": "5",
            "item": [{"@sku": "a-1"}, {"@sku": "b-2"}],
            "note": "fragile & <urgent>"
        }})
    );
    let got = receiver
        .wait_for("/orders", 1, Duration::from_secs(5))
        .await;
    assert_eq!(
        got[0].json(),
        json!({"id": "5", "skus": ["a-1", "b-2"], "note": "fragile & <urgent>"})
    );

    // `text/xml` and `+xml` types are read the same way.
    for ct in ["text/xml; charset=utf-8", "application/soap+xml"] {
        let resp = ferry
            .post("/hooks/orders", ct, "<order><id>6</id></order>", &[])
            .await;
        assert_eq!(resp.status(), 202, "{ct}");
        let v: Value = resp.json().await.unwrap();
        let run = ferry
            .wait_final(v["run_id"].as_str().unwrap(), Duration::from_secs(20))
            .await;
        assert_eq!(run["event"]["body"], json!({"order": {"id": "6"}}), "{ct}");
    }
}

#[tokio::test]
async fn billion_laughs_gets_a_400_and_no_run() {
    let (receiver, _p, ferry) = setup().await;
    let mut lol =
        String::from("<?xml version=\"1.0\"?>\n<!DOCTYPE lolz [\n <!ENTITY lol \"lol\">\n");
    for i in 1..10 {
        let prev = if i == 1 {
            "lol".to_owned()
        } else {
            format!("lol{}", i - 1)
        };
        lol.push_str(&format!(
            " <!ENTITY lol{i} \"{}\">\n",
            format!("&{prev};").repeat(10)
        ));
    }
    lol.push_str("]>\n<lolz>&lol9;</lolz>");
    let detail = refused(&ferry, "application/xml", &lol).await;
    assert_eq!(
        detail,
        "XML with a DTD is refused (no entities are expanded)"
    );
    assert_nothing_stored(&ferry, &receiver).await;
}

#[tokio::test]
async fn an_external_entity_is_never_read() {
    let (receiver, project, ferry) = setup().await;
    let secret = project.path().join("secret.txt");
    std::fs::write(&secret, "TOP-SECRET-0451").unwrap();
    let xxe = format!(
        "<?xml version=\"1.0\"?>\n<!DOCTYPE order [<!ENTITY e SYSTEM \"file://{}\">]>\n<order><id>&e;</id></order>",
        secret.display()
    );
    for ct in ["application/xml", "text/xml"] {
        let resp = ferry.post("/hooks/orders", ct, xxe.clone(), &[]).await;
        assert_eq!(resp.status(), 400);
        let text = resp.text().await.unwrap();
        assert!(
            text.contains("XML with a DTD is refused (no entities are expanded)"),
            "{text}"
        );
        assert!(!text.contains("TOP-SECRET"), "{text}");
    }
    assert_nothing_stored(&ferry, &receiver).await;
    assert!(!ferry.log.lock().unwrap().contains("TOP-SECRET"));
    assert!(!std::fs::read_dir(&ferry.data).unwrap().any(|e| {
        std::fs::read(e.unwrap().path()).is_ok_and(|b| b.windows(10).any(|w| w == b"TOP-SECRET"))
    }));
}

#[tokio::test]
async fn too_deep_and_malformed_xml_get_a_400_that_says_why() {
    let (receiver, _p, ferry) = setup().await;
    let deep = format!("{}{}", "<a>".repeat(65), "</a>".repeat(65));
    let detail = refused(&ferry, "application/xml", &deep).await;
    assert_eq!(detail, "XML nested deeper than 64 levels");

    // Within the element depth, but its JSON would nest deeper than the limit.
    let arrays = format!("{}{}", "<a><a/>".repeat(40), "</a>".repeat(40));
    let detail = refused(&ferry, "application/xml", &arrays).await;
    assert_eq!(
        detail,
        "XML nested deeper than 64 levels once mapped to JSON"
    );

    let broken = "<order>\n  <id>5</id>\n  <id>6</order>";
    let detail = refused(&ferry, "text/xml", broken).await;
    assert_eq!(
        detail,
        "malformed XML at line 3, column 8: expected 'id' tag, not 'order'"
    );
    let detail = refused(&ferry, "application/xml", "<order><id>5</id>").await;
    assert_eq!(
        detail,
        "malformed XML at line 1, column 18: the root element is never closed"
    );
    let detail = refused(&ferry, "application/xml", "{\"order\": 5}").await;
    assert!(
        detail.starts_with("malformed XML at line 1, column 1"),
        "{detail}"
    );
    assert_nothing_stored(&ferry, &receiver).await;

    // The deepest document the limit allows is stored and read back whole.
    let ok = format!("{}x{}", "<a>".repeat(64), "</a>".repeat(64));
    let resp = ferry
        .post("/hooks/orders", "application/xml", ok, &[])
        .await;
    assert_eq!(resp.status(), 202);
    let v: Value = resp.json().await.unwrap();
    let run = ferry
        .wait_final(v["run_id"].as_str().unwrap(), Duration::from_secs(20))
        .await;
    let mut body = &run["event"]["body"];
    for _ in 0..64 {
        body = &body["a"];
    }
    assert_eq!(body, "x", "{run:#}");
}
