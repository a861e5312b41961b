//! The `graphql` step against a real GraphQL server: graphql-yoga (npm, `tests/graphql`),
//! installed by `scripts/graphql-setup` on first use. Needs node and npm.
//!
//! The server wants `Authorization: Bearer TOKEN`, so every test also exercises a
//! connection's `auth:`; it prints one JSON line per request it receives (idempotency key,
//! accept header, operation name, variables), which the tests read back.

use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{Ferry, Project, Receiver};
use crate::node::{NodeServer, repo};

const TOKEN: &str = "gql-token-5f1c9a";

/// Installs the server once per test binary (the script itself is instant when installed).
fn setup() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let status = Command::new(repo().join("scripts/graphql-setup"))
            .status()
            .expect("scripts/graphql-setup runs (needs bash, node and npm)");
        assert!(status.success(), "scripts/graphql-setup failed: {status}");
    });
}

/// A running graphql-yoga server, stopped on drop.
struct Server(NodeServer);

impl std::ops::Deref for Server {
    type Target = NodeServer;
    fn deref(&self) -> &NodeServer {
        &self.0
    }
}

impl Server {
    fn start() -> Server {
        setup();
        Server(NodeServer::start(
            "graphql",
            &[("TOKEN", TOKEN), ("PORT", "0")],
        ))
    }

    /// The requests logged so far, once `n` have arrived (the log comes on another thread,
    /// written just before the server answers).
    async fn requests(&self, n: usize) -> Vec<Value> {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let got = self.lines.lock().unwrap().clone();
            if got.len() >= n {
                return got;
            }
            assert!(Instant::now() < until, "expected {n} requests, got {got:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The server, a receiver, and Ferry with connection `shop` (token from the environment) and
/// connection `wrong` (a bad token), running `flow`.
async fn start(flow: &str) -> (Server, Receiver, Project, Ferry) {
    let server = Server::start();
    let receiver = Receiver::start().await;
    let shop = format!(
        "id: shop\nbase_url: '{}'\nauth: {{ bearer: {{ token: {{ env: SHOP_TOKEN }} }} }}\n",
        server.url
    );
    let wrong = format!(
        "id: wrong\nbase_url: '{}/graphql'\nauth: {{ bearer: {{ token: not-the-token }} }}\n",
        server.url
    );
    let project = Project::new(
        &[
            ("connections/shop.yaml", &shop),
            ("connections/wrong.yaml", &wrong),
            ("flows/f.yaml", flow),
        ],
        Some(&receiver),
    );
    let ferry = Ferry::start_env(&project, &[("SHOP_TOKEN", TOKEN)]);
    (server, receiver, project, ferry)
}

#[tokio::test]
async fn a_mutation_result_feeds_the_next_step_and_the_token_stays_masked() {
    let flow = r#"id: signup
trigger: { webhook: { path: /signup } }
steps:
  - id: subscribe
    graphql:
      connection: shop
      path: /graphql
      query: |
        mutation Subscribe($email: String!, $name: String) {
          subscribe(email: $email, name: $name) { id email name }
        }
      operation_name: Subscribe
      variables:
        email: '{{ .event.body.email | ascii_downcase }}'
        name: '{{ .event.body.name }}'
  - id: notify
    http:
      url: '@RECEIVER@/subscribed'
      body: { subscriber: '{{ .steps.subscribe.data.subscribe.id }}' }
"#;
    let (server, receiver, _project, ferry) = start(flow).await;
    let run = ferry
        .run_event(
            "/signup",
            &json!({"email": "Ada@Example.com", "name": "Ada"}),
        )
        .await;
    assert_eq!(run["status"], "succeeded", "{run:#}");

    let got = receiver
        .wait_for("/subscribed", 1, Duration::from_secs(5))
        .await;
    assert_eq!(got[0].json(), json!({"subscriber": "sub-ada@example.com"}));

    let step = &run["steps"][0];
    assert_eq!(
        step["output"],
        json!({
            "data": {"subscribe": {"id": "sub-ada@example.com", "email": "ada@example.com", "name": "Ada"}},
            "errors": null
        })
    );
    let request = &step["request"];
    assert_eq!(request["method"], "POST");
    assert_eq!(request["url"], format!("{}/graphql", server.url));
    assert_eq!(request["headers"]["authorization"], "***");
    assert_eq!(request["body"]["operationName"], "Subscribe");
    assert_eq!(
        request["body"]["variables"],
        json!({"email": "ada@example.com", "name": "Ada"})
    );
    assert!(
        request["body"]["query"]
            .as_str()
            .unwrap()
            .starts_with("mutation Subscribe("),
        "{request:#}"
    );
    assert!(!run.to_string().contains(TOKEN), "{run:#}");

    let seen = &server.requests(1).await[0];
    let run_id = run["id"].as_str().unwrap();
    assert_eq!(seen["idempotency_key"], format!("{run_id}:subscribe"));
    assert!(
        seen["user_agent"].as_str().unwrap().starts_with("ferry/"),
        "{seen}"
    );
    assert!(
        seen["accept"]
            .as_str()
            .unwrap()
            .starts_with("application/graphql-response+json"),
        "{seen}"
    );
}

#[tokio::test]
async fn graphql_errors_fail_the_step_unless_allow_errors_passes_partial_data() {
    let flow = r#"id: inventory
trigger: { webhook: { path: /inventory } }
steps:
  - id: partial
    graphql:
      connection: shop
      path: /graphql
      query: '{ hello broken }'
      allow_errors: true
  - id: strict
    graphql: { connection: shop, path: /graphql, query: '{ hello broken }' }
"#;
    let (server, _receiver, _project, ferry) = start(flow).await;
    let run = ferry.run_event("/inventory", &json!({})).await;
    // Not retried: the errors are the server's answer.
    assert_eq!(run["status"], "failed", "{run:#}");
    let steps = run["steps"].as_array().unwrap();

    assert_eq!(steps[0]["status"], "succeeded");
    let partial = &steps[0]["output"];
    assert_eq!(partial["data"], json!({"hello": "world", "broken": null}));
    assert_eq!(
        partial["errors"][0]["message"],
        "the inventory service is down"
    );
    assert_eq!(partial["errors"][0]["path"], json!(["broken"]));

    let strict = &steps[1];
    assert_eq!(strict["status"], "failed");
    assert_eq!(strict["attempts"], 1);
    assert_eq!(run["error"]["step"], "strict");
    assert_eq!(run["error"]["kind"], "bad_response");
    assert_eq!(
        run["error"]["message"],
        format!(
            "POST {}/graphql answered 200 with graphql errors: the inventory service is down (at broken)",
            server.url
        )
    );
    // The failed step keeps the answer, in the shape of a result.
    assert_eq!(
        strict["response"]["data"],
        json!({"hello": "world", "broken": null})
    );
    assert_eq!(server.requests(2).await.len(), 2);
}

#[tokio::test]
async fn a_rejected_token_fails_with_the_servers_graphql_error_and_no_retry() {
    let flow = r#"id: denied
trigger: { webhook: { path: /denied } }
steps:
  - id: q
    graphql: { connection: wrong, query: '{ hello }' }
"#;
    let (server, _receiver, _project, ferry) = start(flow).await;
    let run = ferry.run_event("/denied", &json!({})).await;
    assert_eq!(run["status"], "failed", "{run:#}");
    assert_eq!(run["error"]["kind"], "http_status");
    assert_eq!(run["error"]["status"], 401);
    assert_eq!(
        run["error"]["message"],
        format!(
            "POST {}/graphql answered 401: missing or wrong bearer token",
            server.url
        )
    );
    assert_eq!(run["steps"][0]["attempts"], 1);
    assert!(!run.to_string().contains("not-the-token"), "{run:#}");
}

#[tokio::test]
async fn relay_pagination_follows_end_cursor_and_stops_at_max_pages() {
    let flow = r#"id: customers
trigger: { webhook: { path: /customers } }
steps:
  - id: all
    graphql:
      connection: shop
      path: /graphql
      query: |
        query Customers($first: Int!, $after: String) {
          customers(first: $first, after: $after) {
            totalCount
            edges { cursor node { id } }
            pageInfo { hasNextPage endCursor }
          }
        }
      variables: { first: '{{ .event.body.page_size }}' }
      paginate: { path: data.customers }
  - id: capped
    graphql:
      connection: shop
      path: /graphql
      query: 'query($n: Int!, $from: String) { customers(first: $n, after: $from) { nodes { id } pageInfo { hasNextPage endCursor } } }'
      variables: { n: '{{ .event.body.page_size }}' }
      paginate: { path: .data.customers, cursor_var: from, max_pages: 2 }
"#;
    let (server, _receiver, _project, ferry) = start(flow).await;
    let run = ferry
        .run_event("/customers", &json!({"page_size": 3}))
        .await;
    assert_eq!(run["status"], "succeeded", "{run:#}");

    let all = &run["steps"][0]["output"];
    assert_eq!(all["pages"], 3);
    assert_eq!(all["errors"], Value::Null);
    let conn = &all["data"]["customers"];
    let ids: Vec<&str> = conn["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["node"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["c1", "c2", "c3", "c4", "c5", "c6", "c7"]);
    assert_eq!(
        conn["pageInfo"],
        json!({"hasNextPage": false, "endCursor": "c7"})
    );
    assert_eq!(conn["totalCount"], 7);

    let capped = &run["steps"][1]["output"];
    assert_eq!(capped["pages"], 2);
    assert_eq!(
        capped["data"]["customers"]["nodes"],
        json!([{"id": "c1"}, {"id": "c2"}, {"id": "c3"}, {"id": "c4"}, {"id": "c5"}, {"id": "c6"}])
    );
    assert_eq!(capped["data"]["customers"]["pageInfo"]["hasNextPage"], true);

    // Each page re-sent the query with the cursor of the page before; the event's page size
    // went in as a number.
    let vars: Vec<Value> = server
        .requests(5)
        .await
        .iter()
        .map(|r| r["variables"].clone())
        .collect();
    assert_eq!(
        vars,
        [
            json!({"first": 3}),
            json!({"first": 3, "after": "c3"}),
            json!({"first": 3, "after": "c6"}),
            json!({"n": 3}),
            json!({"n": 3, "from": "c3"}),
        ]
    );
}

#[tokio::test]
async fn a_server_error_with_graphql_errors_is_retried_with_the_same_idempotency_key() {
    let flow = r#"id: flaky
trigger: { webhook: { path: /flaky } }
steps:
  - id: q
    retry: { attempts: 3, initial: 10ms, max: 10ms }
    graphql:
      connection: shop
      path: /graphql
      query: 'query Flaky { hello }'
"#;
    let (server, _receiver, _project, ferry) = start(flow).await;
    let run = ferry.run_event("/flaky", &json!({})).await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    let step = &run["steps"][0];
    assert_eq!(step["attempts"], 2);
    assert_eq!(step["output"]["data"], json!({"hello": "world"}));
    let seen = server.requests(2).await;
    // `operationName` comes from the query's only operation when the step does not set it.
    assert_eq!(seen[0]["operation_name"], "Flaky");
    let key = format!("{}:q", run["id"].as_str().unwrap());
    assert_eq!(seen[0]["idempotency_key"], key.as_str());
    assert_eq!(seen[1]["idempotency_key"], key.as_str());
}
