//! The webhook contract of SPEC §12 and the http step's outbound headers.

use std::time::Duration;

use axum::http::Method;
use serde_json::{Value, json};

use crate::harness::{Ferry, Project, Receiver};

const CONN: &str = "id: crm\nbase_url: '@RECEIVER@/api'\nheaders:\n  X-Tenant: acme\ntimeout: 5s\n";

const FLOW: &str = r#"
id: signup
trigger:
  webhook:
    path: /hooks/signup
    dedupe: '{{ .event.headers["webhook-id"] }}'
steps:
  - id: customer
    map:
      email: '{{ .event.body.email | ascii_downcase }}'
      name: '{{ .event.body.first + " " + .event.body.last }}'
  - id: vip-only
    filter: '{{ .event.body.vip != false }}'
  - id: contact
    http:
      connection: crm
      method: POST
      path: /contacts
      query: { source: web }
      headers: { Authorization: 'Bearer not-stored' }
      body: { email: '{{ .steps.customer.email }}', name: '{{ .steps.customer.name }}' }
  - id: note
    log: 'created {{ .steps.contact.body.ok }}'
"#;

async fn setup() -> (Receiver, Project, Ferry) {
    setup_with(&[]).await
}

async fn setup_with(args: &[&str]) -> (Receiver, Project, Ferry) {
    let receiver = Receiver::start().await;
    let project = Project::new(
        &[("connections/crm.yaml", CONN), ("flows/signup.yaml", FLOW)],
        Some(&receiver),
    );
    let ferry = Ferry::start_with(&project, args);
    (receiver, project, ferry)
}

#[tokio::test]
async fn webhook_event_is_acknowledged_then_mapped_and_posted() {
    let (receiver, _p, ferry) = setup().await;
    let resp = ferry
        .post_json(
            "/hooks/signup",
            &json!({"email": "Ada@Example.COM", "first": "Ada", "last": "Lovelace"}),
            &[("webhook-id", "w1")],
        )
        .await;
    assert_eq!(resp.status(), 202);
    let body: Value = resp.json().await.unwrap();
    let run_id = body["run_id"].as_str().expect("run_id").to_owned();

    let run = ferry.wait_final(&run_id, Duration::from_secs(10)).await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    assert_eq!(run["flow"], "signup");
    assert_eq!(run["attempt"], 1);
    let steps = run["steps"].as_array().unwrap();
    assert_eq!(
        steps
            .iter()
            .map(|s| s["id"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["customer", "vip-only", "contact", "note"]
    );
    assert_eq!(
        steps[0]["output"],
        json!({"email": "ada@example.com", "name": "Ada Lovelace"})
    );
    assert_eq!(steps[2]["output"]["status"], 200);
    assert_eq!(steps[2]["output"]["body"], json!({"ok": true}));
    assert_eq!(steps[3]["output"], "created true");
    for s in steps {
        assert_eq!(s["status"], "succeeded");
        assert_eq!(s["attempts"], 1);
        assert!(s["started_at"].as_str().unwrap().ends_with('Z'));
    }
    // The stored request masks the Authorization header.
    assert_eq!(steps[2]["request"]["headers"]["authorization"], "***");
    assert!(!run.to_string().contains("not-stored"));

    let got = receiver
        .wait_for("/api/contacts", 1, Duration::from_secs(5))
        .await;
    let r = &got[0];
    assert_eq!(r.method, "POST");
    assert_eq!(
        r.json(),
        json!({"email": "ada@example.com", "name": "Ada Lovelace"})
    );
    assert_eq!(r.header("content-type"), "application/json");
    assert_eq!(r.header("x-tenant"), "acme");
    assert_eq!(r.header("authorization"), "Bearer not-stored");
    assert_eq!(r.header("idempotency-key"), format!("{run_id}:contact"));
    assert_eq!(
        r.header("user-agent"),
        concat!("ferry/", env!("CARGO_PKG_VERSION"))
    );
}

#[tokio::test]
async fn duplicate_delivery_returns_first_run_id() {
    let (receiver, _p, ferry) = setup().await;
    let body = json!({"email": "a@b.c", "first": "A", "last": "B"});
    let first: Value = ferry
        .post_json("/hooks/signup", &body, &[("webhook-id", "same")])
        .await
        .json()
        .await
        .unwrap();
    let resp = ferry
        .post_json("/hooks/signup", &body, &[("webhook-id", "same")])
        .await;
    assert_eq!(resp.status(), 200);
    let second: Value = resp.json().await.unwrap();
    assert_eq!(first["run_id"], second["run_id"]);
    let other = ferry
        .post_json("/hooks/signup", &body, &[("webhook-id", "different")])
        .await;
    assert_eq!(other.status(), 202);
    let other: Value = other.json().await.unwrap();
    ferry
        .wait_final(other["run_id"].as_str().unwrap(), Duration::from_secs(10))
        .await;
    ferry
        .wait_final(first["run_id"].as_str().unwrap(), Duration::from_secs(10))
        .await;
    assert_eq!(receiver.requests_to("/api/contacts").len(), 2);
}

#[tokio::test]
async fn filter_that_fails_ends_the_run_as_succeeded_without_calling_out() {
    let (receiver, _p, ferry) = setup().await;
    let v: Value = ferry
        .post_json(
            "/hooks/signup",
            &json!({"email": "x@y.z", "first": "X", "last": "Y", "vip": false}),
            &[],
        )
        .await
        .json()
        .await
        .unwrap();
    let run = ferry
        .wait_final(v["run_id"].as_str().unwrap(), Duration::from_secs(10))
        .await;
    assert_eq!(run["status"], "succeeded");
    let steps = run["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 2, "{run:#}");
    assert_eq!(steps[1]["output"], json!({"passed": false}));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(receiver.requests().is_empty());
}

/// POSTs a body and checks the answer is the given problem; returns the problem.
async fn post_problem(
    ferry: &Ferry,
    path: &str,
    content_type: &str,
    body: impl Into<reqwest::Body>,
    status: u16,
) -> Value {
    problem(ferry.post(path, content_type, body, &[]).await, status).await
}

async fn problem(resp: reqwest::Response, status: u16) -> Value {
    assert_eq!(resp.status(), status);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["status"], status);
    assert!(
        v["title"].is_string() && v["detail"].is_string() && v["type"].is_string(),
        "{v}"
    );
    v
}

#[tokio::test]
async fn bad_input_gets_a_precise_problem_and_stores_nothing() {
    let (receiver, _p, ferry) = setup_with(&["--max-body", "65536", "--max-depth", "32"]).await;
    let v = post_problem(
        &ferry,
        "/hooks/signup",
        "application/json",
        "{\"email\": ",
        400,
    )
    .await;
    assert!(
        v["detail"].as_str().unwrap().starts_with("malformed JSON"),
        "{v}"
    );

    let v = post_problem(&ferry, "/hooks/signup", "application/pdf", "%PDF", 415).await;
    assert!(v["detail"].as_str().unwrap().contains("application/pdf"));

    let deep = format!("{}1{}", "[".repeat(33), "]".repeat(33));
    let v = post_problem(&ferry, "/hooks/signup", "application/json", deep, 400).await;
    assert!(
        v["detail"].as_str().unwrap().contains("nested deeper"),
        "{v}"
    );

    let big = format!("{{\"x\": \"{}\"}}", "a".repeat(100 * 1024));
    // A client of its own: the server may close the connection after a 413 without reading
    // the body, and a pooled connection must not be reused after that.
    let resp = reqwest::Client::new()
        .post(ferry.url("/hooks/signup"))
        .header("content-type", "application/json")
        .header("connection", "close")
        .body(big)
        .send()
        .await
        .unwrap();
    problem(resp, 413).await;

    let v = post_problem(&ferry, "/hooks/nope", "application/json", "{}", 404).await;
    assert!(v["detail"].as_str().unwrap().contains("/hooks/nope"));

    let resp = ferry
        .http
        .get(ferry.url("/hooks/signup"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["allow"], "POST");
    problem(resp, 405).await;
    // A management API route names its own methods too.
    let resp = ferry
        .http
        .delete(ferry.url("/api/v1/runs"))
        .bearer_auth(crate::harness::ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["allow"], "GET,HEAD");
    let v = problem(resp, 405).await;
    assert!(v["detail"].as_str().unwrap().contains("`DELETE`"), "{v}");

    // Nothing of the above became a run.
    let (_, runs) = ferry.api(Method::GET, "/runs", None).await;
    assert_eq!(runs["runs"], json!([]));
    assert!(receiver.requests().is_empty());
    // And the server is still healthy.
    assert!(ferry.healthy().await);
    assert_eq!(
        ferry
            .http
            .get(ferry.url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn form_and_text_bodies_become_event_bodies() {
    let receiver = Receiver::start().await;
    let flow = "id: f\ntrigger: { webhook: { path: /in } }\nsteps:\n  - id: echo\n    http: { url: '@RECEIVER@/echo', body: '{{ .event.body }}' }\n";
    let project = Project::new(&[("flows/f.yaml", flow)], Some(&receiver));
    let ferry = Ferry::start(&project);
    let r: Value = ferry
        .post(
            "/in",
            "application/x-www-form-urlencoded",
            "a=1&b=two+words",
            &[],
        )
        .await
        .json()
        .await
        .unwrap();
    ferry
        .wait_final(r["run_id"].as_str().unwrap(), Duration::from_secs(10))
        .await;
    let r: Value = ferry
        .post("/in", "text/plain", "hello", &[])
        .await
        .json()
        .await
        .unwrap();
    ferry
        .wait_final(r["run_id"].as_str().unwrap(), Duration::from_secs(10))
        .await;
    let got = receiver.requests_to("/echo");
    let bodies: Vec<Value> = got.iter().map(|r| r.json()).collect();
    assert!(
        bodies.contains(&json!({"a": "1", "b": "two words"})),
        "{bodies:?}"
    );
    assert!(bodies.contains(&json!("hello")), "{bodies:?}");
}

#[tokio::test]
async fn management_api_requires_the_admin_key_and_lists_flows() {
    let (_r, _p, ferry) = setup().await;
    let resp = ferry
        .http
        .get(ferry.url("/api/v1/runs"))
        .send()
        .await
        .unwrap();
    problem(resp, 401).await;
    let resp = ferry
        .http
        .get(ferry.url("/api/v1/runs"))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    problem(resp, 401).await;
    let (status, flows) = ferry.api(Method::GET, "/flows", None).await;
    assert_eq!(status, 200);
    assert_eq!(flows["flows"][0]["id"], "signup");
    assert_eq!(
        flows["flows"][0]["trigger"],
        json!({"kind": "webhook", "path": "/hooks/signup", "method": "POST", "verify": null, "rejected_requests": 0})
    );
    let (status, v) = ferry.api(Method::GET, "/runs/does-not-exist", None).await;
    assert_eq!(status, 404, "{v}");
    let (status, v) = ferry.api(Method::GET, "/runs?status=bogus", None).await;
    assert_eq!(status, 400, "{v}");

    // Manual start of a flow through the API.
    let (status, v) = ferry
        .api(
            Method::POST,
            "/flows/signup/runs",
            Some(json!({"email": "m@n.o", "first": "M", "last": "N"})),
        )
        .await;
    assert_eq!(status, 202, "{v}");
    let run = ferry
        .wait_final(v["run_id"].as_str().unwrap(), Duration::from_secs(10))
        .await;
    assert_eq!(run["status"], "succeeded");
    let (status, _) = ferry
        .api(Method::POST, "/flows/nope/runs", Some(json!({})))
        .await;
    assert_eq!(status, 404);

    // The bearer scheme is case-insensitive; wrong methods and unselective bulk replays are
    // problems, not silent actions.
    let key = crate::harness::ADMIN_KEY;
    let resp = ferry
        .http
        .get(ferry.url("/api/v1/flows"))
        .header("authorization", format!("bearer {key}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = ferry
        .http
        .delete(ferry.url("/api/v1/flows"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    problem(resp, 405).await;
    let (status, v) = ferry
        .api(Method::POST, "/dlq/replay", Some(json!({})))
        .await;
    assert_eq!(status, 400, "{v}");
    let (status, v) = ferry.api(Method::GET, "/dlq?status=succeeded", None).await;
    assert_eq!(status, 400, "{v}");
}

#[tokio::test]
async fn a_rendered_path_never_sends_connection_credentials_to_another_host() {
    let receiver = Receiver::start().await;
    let elsewhere = Receiver::start().await;
    let conn =
        "id: crm\nbase_url: '@RECEIVER@/api'\nheaders:\n  X-Api-Key: { env: FERRY_IT_CRM_KEY }\n";
    let flow = "id: f\ntrigger: { webhook: { path: /in } }\nsteps:\n  - id: call\n    http: { connection: crm, path: '{{ .event.body.p }}' }\n    retry: { attempts: 1 }\n";
    let project = Project::new(
        &[("connections/crm.yaml", conn), ("flows/f.yaml", flow)],
        Some(&receiver),
    );
    let ferry = Ferry::start_env(&project, &[("FERRY_IT_CRM_KEY", "sk_live_topsecret")]);
    for p in [
        format!("{}/steal", elsewhere.url()),
        format!("//{}/steal", elsewhere.addr),
    ] {
        let v: Value = ferry
            .post_json("/in", &json!({ "p": p }), &[])
            .await
            .json()
            .await
            .unwrap();
        let run = ferry
            .wait_final(v["run_id"].as_str().unwrap(), Duration::from_secs(10))
            .await;
        assert!(!run.to_string().contains("sk_live_topsecret"), "{run:#}");
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        elsewhere.requests().is_empty(),
        "credentials went to another host"
    );
    let got = receiver.requests();
    assert_eq!(got.len(), 2);
    for r in got {
        assert!(r.path.starts_with("/api/"), "{}", r.path);
        assert_eq!(r.header("x-api-key"), "sk_live_topsecret");
    }
}

#[tokio::test]
async fn run_listings_page_with_a_cursor_that_ends_on_the_last_page() {
    let (_receiver, _p, ferry) = setup().await;
    let mut ids = Vec::new();
    for n in 0..3 {
        let run = ferry
            .run_event(
                "/hooks/signup",
                &json!({"email": format!("p{n}@x.y"), "first": "P", "last": "Q"}),
            )
            .await;
        ids.push(run["id"].as_str().unwrap().to_owned());
    }
    let (_, first) = ferry.api(Method::GET, "/runs?limit=2", None).await;
    let got: Vec<&str> = first["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(got, [ids[2].as_str(), ids[1].as_str()], "newest first");
    let next = first["next"].as_str().expect("a second page exists");
    let (_, second) = ferry
        .api(Method::GET, &format!("/runs?limit=2&before={next}"), None)
        .await;
    let got: Vec<&str> = second["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(got, [ids[0].as_str()]);
    assert_eq!(
        second["next"],
        Value::Null,
        "no empty page after the last one"
    );
    let (_, exact) = ferry.api(Method::GET, "/runs?limit=3", None).await;
    assert_eq!(exact["next"], Value::Null);
}

/// A flow whose steps only compute is done by the time its 202 arrives: the event and every
/// step result are stored in one write. Failures there are ordinary run failures (the event
/// is kept, as a dead letter), and an unbounded expression still runs under its time limit
/// on a worker, after the 202.
#[tokio::test]
async fn a_flow_that_only_computes_is_done_when_its_event_is_acknowledged() {
    const COMPUTE: &str = r#"
id: compute
trigger: { webhook: { path: /hooks/compute } }
steps:
  - id: known
    filter: '{{ .event.body.email != null }}'
  - id: shape
    map: { email: '{{ .event.body.email | ascii_downcase }}', run: '{{ .run.id }}' }
  - id: total
    map: '{{ .event.body.n + 1 }}'
"#;
    const LOOPING: &str = r#"
id: looping
trigger: { webhook: { path: /hooks/looping } }
steps:
  - id: count
    map: '{{ [range(.event.body.n)] | length }}'
"#;
    let project = Project::new(
        &[
            ("flows/compute.yaml", COMPUTE),
            ("flows/looping.yaml", LOOPING),
        ],
        None,
    );
    let ferry = Ferry::start_with(&project, &[]);
    let accept = |resp: reqwest::Response| async move {
        assert_eq!(resp.status(), 202);
        let v: Value = resp.json().await.unwrap();
        v["run_id"].as_str().unwrap().to_owned()
    };

    // Read right after the 202, without waiting.
    let id = accept(
        ferry
            .post_json(
                "/hooks/compute",
                &json!({"email": "Ada@X.ORG", "n": 41}),
                &[],
            )
            .await,
    )
    .await;
    let run = ferry.run(&id).await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    let steps = run["steps"].as_array().unwrap();
    assert_eq!(steps[0]["output"], json!({"passed": true}));
    assert_eq!(steps[1]["output"], json!({"email": "ada@x.org", "run": id}));
    assert_eq!(steps[2]["output"], 42);

    // A filter that stops: succeeded, the rest skipped.
    let id = accept(
        ferry
            .post_json("/hooks/compute", &json!({"n": 1}), &[])
            .await,
    )
    .await;
    let run = ferry.run(&id).await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    assert_eq!(run["steps"].as_array().unwrap().len(), 1);

    // A jq error: the run is failed (not retried) with the error, and the event is kept.
    let id = accept(
        ferry
            .post_json("/hooks/compute", &json!({"email": "a@b.c", "n": "x"}), &[])
            .await,
    )
    .await;
    let run = ferry.run(&id).await;
    assert_eq!(run["status"], "failed", "{run:#}");
    assert_eq!(run["error"]["step"], "total");
    assert_eq!(run["error"]["kind"], "expression", "{run:#}");
    assert_eq!(run["event"]["body"]["n"], "x");

    // `range` may run away: it goes to a worker, after the 202, and still finishes.
    let id = accept(
        ferry
            .post_json("/hooks/looping", &json!({"n": 3}), &[])
            .await,
    )
    .await;
    let run = ferry.wait_final(&id, Duration::from_secs(10)).await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    assert_eq!(run["steps"][0]["output"], 3);
}

/// A verified webhook stores the body it received: an integer beyond i64 (an id as a u64)
/// keeps its digits, as on an unverified webhook, instead of becoming a float on the way
/// through jq values.
#[tokio::test]
async fn a_verified_webhook_keeps_a_large_integer_exact() {
    let project = Project::new(
        &[(
            "flows/ops.yaml",
            "id: ops\ntrigger:\n  webhook:\n    path: /hooks/ops\n    verify: { scheme: basic, username: ops, password: { env: OPS_PW } }\nsteps:\n  - id: note\n    log: hi\n",
        )],
        None,
    );
    let server = Ferry::start_env(&project, &[("OPS_PW", "pw12345678")]);
    let resp = server
        .post(
            "/hooks/ops",
            "application/json",
            r#"{"id": 18446744073709551615, "f": 1.5}"#,
            &[("authorization", "Basic b3BzOnB3MTIzNDU2Nzg=")],
        )
        .await;
    assert_eq!(resp.status(), 202);
    let v: Value = resp.json().await.unwrap();
    let run = server
        .wait_final(v["run_id"].as_str().unwrap(), Duration::from_secs(20))
        .await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    assert_eq!(
        run["event"]["body"],
        json!({"id": 18446744073709551615u64, "f": 1.5}),
        "{run:#}"
    );
}
