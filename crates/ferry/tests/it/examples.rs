//! The runnable examples under `examples/`, run as the README tells a newcomer to run them:
//! `ferry-fakes` stands in for the business systems, `ferry serve` runs the example's folder.
//! Only the port changes (the fakes listen on a free port here, 4010 in the README).

use std::time::Duration;

use axum::http::Method;
use ferry_fakes::Fakes;
use serde_json::{Value, json};

use crate::harness::{Ferry, Project};

async fn fakes() -> Fakes {
    Fakes::start("127.0.0.1:0".parse().unwrap(), true)
        .await
        .expect("fakes listen")
}

fn project(example: &str, fakes: &Fakes) -> Project {
    Project::copy_of(
        &format!("examples/{example}"),
        &[("http://127.0.0.1:4010", &fakes.url())],
    )
}

fn step<'a>(run: &'a Value, id: &str) -> &'a Value {
    run["steps"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["id"] == id))
        .unwrap_or_else(|| panic!("no step `{id}` in {run:#}"))
}

#[tokio::test]
async fn customer_registered_reaches_the_crm_over_rest_and_the_mailer_over_graphql() {
    let fakes = fakes().await;
    let project = project("customer-registered", &fakes);
    let ferry = Ferry::start(&project);
    let event: Value = serde_json::from_str(
        &std::fs::read_to_string(project.path().join("events/customer.json")).unwrap(),
    )
    .unwrap();

    let resp = ferry
        .post_json("/hooks/shop/customers", &event, &[("webhook-id", "msg_1")])
        .await;
    assert_eq!(resp.status(), 202);
    let id = resp.json::<Value>().await.unwrap()["run_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let run = ferry.wait_final(&id, Duration::from_secs(20)).await;
    assert_eq!(run["status"], "succeeded", "{run:#}");

    let crm = fakes.received("crm");
    assert_eq!(crm.len(), 1);
    assert_eq!(
        crm[0].json(),
        json!({"email": "ada.lovelace@example.com", "name": "Ada Lovelace", "source": "web-shop"})
    );
    let mailer = fakes.received("mailer");
    assert_eq!(mailer.len(), 1);
    assert_eq!(
        mailer[0].json()["variables"],
        json!({"e": "ada.lovelace@example.com"})
    );
    assert_eq!(step(&run, "contact")["output"]["body"]["id"], "c_1");
    assert_eq!(
        step(&run, "subscribe")["output"]["data"]["subscribe"]["id"],
        "sub_1"
    );

    // The shop resends the same message: answered with the first run, nothing sent again.
    let again = ferry
        .post_json("/hooks/shop/customers", &event, &[("webhook-id", "msg_1")])
        .await;
    assert_eq!(again.status(), 200);
    assert_eq!(again.json::<Value>().await.unwrap()["run_id"], id.as_str());
    assert_eq!(fakes.received("crm").len(), 1);
}

#[tokio::test]
async fn a_paid_order_becomes_a_typed_erp_sales_order_and_a_fault_fails_without_retry() {
    let fakes = fakes().await;
    let project = project("order-to-erp", &fakes);
    let ferry = Ferry::start(&project);
    let order: Value = serde_json::from_str(
        &std::fs::read_to_string(project.path().join("events/order.json")).unwrap(),
    )
    .unwrap();

    let run = ferry.run_event("/hooks/shop/orders", &order).await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    let response = &step(&run, "order")["output"]["body"]["CreateSalesOrderResponse"];
    // Typed by the WSDL's schema: numbers and a boolean, not strings.
    assert_eq!(response["orderNumber"], json!(100001), "{run:#}");
    assert_eq!(response["total"], json!(29.9));
    assert_eq!(response["accepted"], json!(true));
    let erp = fakes.received("erp");
    assert_eq!(erp.len(), 1);
    assert!(erp[0].body.contains("<") && erp[0].body.contains("ord_1042"));
    assert_eq!(erp[0].body.matches("TEA-GREEN-250").count(), 1);

    // Not paid: filtered out, the ERP hears nothing.
    let mut pending = order.clone();
    pending["id"] = "ord_1043".into();
    pending["status"] = "pending".into();
    let run = ferry.run_event("/hooks/shop/orders", &pending).await;
    assert_eq!(run["status"], "succeeded");
    assert_eq!(fakes.received("erp").len(), 1);

    // A line without a quantity: the ERP answers a client fault; the run ends with the
    // fault's text and the call is not repeated.
    let mut bad = order.clone();
    bad["id"] = "ord_1044".into();
    bad["items"][0]["quantity"] = 0.into();
    let run = ferry.run_event("/hooks/shop/orders", &bad).await;
    assert_ne!(run["status"], "succeeded", "{run:#}");
    let text = run.to_string();
    assert!(text.contains("positive quantity"), "{run:#}");
    assert!(text.contains("Client"), "{run:#}");
    assert_eq!(fakes.received("erp").len(), 2);
}

#[tokio::test]
async fn the_customer_export_follows_every_page_and_loads_the_opt_ins() {
    let fakes = fakes().await;
    let project = project("customer-export", &fakes);
    let ferry = Ferry::start(&project);

    let (status, v) = ferry
        .api(Method::POST, "/flows/customer-export/runs", Some(json!({})))
        .await;
    assert!(status.is_success(), "{v}");
    let run = ferry
        .wait_final(v["run_id"].as_str().unwrap(), Duration::from_secs(20))
        .await;
    assert_eq!(run["status"], "succeeded", "{run:#}");

    // 23 customers, 10 per page: three pages, each asked for once.
    let crm = fakes.received("crm");
    assert_eq!(crm.len(), 3, "{crm:?}");
    assert_eq!(step(&run, "customers")["output"]["pages"], 3);
    let all = step(&run, "customers")["output"]["body"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(all, ferry_fakes::CUSTOMERS);

    let load = fakes.received("warehouse");
    assert_eq!(load.len(), 1);
    let rows = load[0].json()["rows"].as_array().unwrap().clone();
    // Every third customer (0, 3, 6, …) did not opt in.
    let opted_in = (0..ferry_fakes::CUSTOMERS)
        .filter(|i| !i.is_multiple_of(3))
        .count();
    assert_eq!(rows.len(), opted_in);
    assert_eq!(
        rows[0],
        json!({"id": "cus_002", "email": "grace.hopper2@example.com", "country": "FR"})
    );
    assert_eq!(load[0].json()["pages"], 3);
}

#[tokio::test]
async fn erp_facade_answers_rest_callers_with_the_soap_erps_result() {
    let fakes = fakes().await;
    let project = project("erp-facade", &fakes);
    let ferry = Ferry::start(&project);
    let order: Value = serde_json::from_str(
        &std::fs::read_to_string(project.path().join("events/order.json")).unwrap(),
    )
    .unwrap();
    let http = reqwest::Client::new();
    let resp = http
        .put(ferry.url("/shop/orders/A-1001"))
        .json(&order)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(resp.headers()["location"], "/shop/orders/A-1001");
    let run_id = resp.headers()["ferry-run-id"].to_str().unwrap().to_owned();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["id"], "A-1001");
    assert_eq!(body["total"].as_f64(), Some(285000.0), "{body}");
    assert!(body["erp_order"].as_u64().unwrap() > 100_000, "{body}");
    // The ERP got the order, with the id from the path.
    let soap = fakes.received("erp");
    assert_eq!(soap.len(), 1);
    assert!(soap[0].body.contains("A-1001"), "{}", soap[0].body);
    let run = ferry.wait_final(&run_id, Duration::from_secs(10)).await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    assert_eq!(step(&run, "created")["output"]["answered"], true);

    // A refused order: 422 with the ERP's reason, from the fallback step.
    let mut bad = order.clone();
    bad["lines"][0]["quantity"] = json!(0);
    let resp = http
        .put(ferry.url("/shop/orders/A-1002"))
        .json(&bad)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 422);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("positive quantity"),
        "{body}"
    );
    // Only PUT is served there; a path outside the pattern is not.
    let resp = http
        .get(ferry.url("/shop/orders/A-1001"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 405);
    let resp = http
        .put(ferry.url("/shop/orders/A-1/extra"))
        .json(&order)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
}
