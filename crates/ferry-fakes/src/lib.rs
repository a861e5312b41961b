//! Stand-ins for the business systems that Ferry's examples connect, on one local port:
//!
//! | path | system | speaks |
//! |---|---|---|
//! | `/crm/contacts`, `/crm/customers` | a CRM | REST + JSON, `Link` pagination |
//! | `/mailer/graphql` | a mailing-list tool | GraphQL over HTTP (`subscribe` mutation) |
//! | `/erp/soap` (`?wsdl`) | an ERP's sales-order service | SOAP 1.1, document/literal |
//! | `/warehouse/import` | a data warehouse | REST + JSON |
//! | `/_received` | — | every request received so far, as JSON |
//! | `/_count` | — | how many requests each system received |
//!
//! They answer like the real thing would for the examples' requests — validation errors,
//! GraphQL `errors`, SOAP faults — but keep everything in memory. Interop with *real*
//! implementations is tested elsewhere (`crates/ferry/tests/it/graphql.rs`, `soap.rs`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Map, Value as Json, json};

/// The ERP's service description; the address in it is rewritten to where the fakes listen.
pub const ERP_WSDL: &str = include_str!("../../../examples/order-to-erp/wsdl/erp.wsdl");
const ERP_ADDRESS: &str = "http://127.0.0.1:4010/erp/soap";
const ERP_NS: &str = "urn:example:erp:sales";
const SOAP_ACTION: &str = "urn:example:erp:sales/CreateSalesOrder";

/// How many customers the CRM holds (the export example pages through them).
pub const CUSTOMERS: usize = 23;

/// One request as a fake received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub system: &'static str,
    pub method: String,
    pub path: String,
    pub headers: HashMap<String, String>,
    pub body: String,
}

impl Received {
    pub fn json(&self) -> Json {
        serde_json::from_str(&self.body).unwrap_or(Json::Null)
    }

    fn to_json(&self) -> Json {
        json!({
            "system": self.system,
            "method": self.method,
            "path": self.path,
            "headers": self.headers,
            "body": serde_json::from_str::<Json>(&self.body).unwrap_or_else(|_| Json::String(self.body.clone())),
        })
    }
}

#[derive(Default)]
struct Inner {
    received: Vec<Received>,
    /// Contacts by Idempotency-Key, so a retried create answers the first contact.
    contacts: HashMap<String, Json>,
    contact_count: usize,
    subscribers: usize,
    orders: usize,
}

#[derive(Clone)]
struct Shared {
    inner: Arc<Mutex<Inner>>,
    base: String,
    quiet: bool,
}

impl Shared {
    fn record(
        &self,
        system: &'static str,
        method: &str,
        uri: &Uri,
        headers: &HeaderMap,
        body: &[u8],
    ) {
        let r = Received {
            system,
            method: method.to_owned(),
            path: uri.to_string(),
            headers: headers
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_owned(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            body: String::from_utf8_lossy(body).into_owned(),
        };
        if !self.quiet {
            let body = r.body.replace('\n', " ");
            let body: String = body.chars().take(300).collect();
            println!("[{system}] {method} {} {body}", r.path);
        }
        self.inner.lock().expect("not poisoned").received.push(r);
    }
}

/// The running fakes; they stop when this is dropped.
pub struct Fakes {
    pub addr: SocketAddr,
    shared: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl Fakes {
    /// Listens on `addr` (port 0 for any free port). `quiet` stops the one-line-per-request
    /// print on stdout.
    pub async fn start(addr: SocketAddr, quiet: bool) -> std::io::Result<Fakes> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shared = Shared {
            inner: Arc::default(),
            base: format!("http://{addr}"),
            quiet,
        };
        let app = router(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Fakes { addr, shared, task })
    }

    pub fn url(&self) -> String {
        self.shared.base.clone()
    }

    /// What one system (`crm`, `mailer`, `erp`, `warehouse`) received, in order.
    pub fn received(&self, system: &str) -> Vec<Received> {
        let inner = self.shared.inner.lock().expect("not poisoned");
        inner
            .received
            .iter()
            .filter(|r| r.system == system)
            .cloned()
            .collect()
    }

    /// Waits until the handle is dropped or the server stops (for the binary).
    pub async fn wait(self) {
        let _ = (&mut { self }.task).await;
    }
}

impl Drop for Fakes {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn router(shared: Shared) -> Router {
    Router::new()
        .route("/crm/contacts", post(crm_create_contact))
        .route("/crm/customers", get(crm_customers))
        .route("/mailer/graphql", post(mailer_graphql))
        .route("/erp/soap", get(erp_wsdl).post(erp_soap))
        .route("/warehouse/import", post(warehouse_import))
        .route("/_received", get(received))
        .route("/_count", get(count))
        .with_state(shared)
}

async fn received(State(s): State<Shared>) -> Json2 {
    let inner = s.inner.lock().expect("not poisoned");
    Json2(Json::Array(
        inner.received.iter().map(Received::to_json).collect(),
    ))
}

/// How many requests each system received (cheap to poll, for the benchmark).
async fn count(State(s): State<Shared>) -> Json2 {
    let inner = s.inner.lock().expect("not poisoned");
    let mut counts = Map::new();
    for r in &inner.received {
        let n = counts.entry(r.system).or_insert(Json::from(0));
        *n = Json::from(n.as_u64().unwrap_or(0) + 1);
    }
    Json2(Json::Object(counts))
}

/// `axum::Json` is not enabled for responses of arbitrary status here; a tiny wrapper is.
struct Json2(Json);

impl IntoResponse for Json2 {
    fn into_response(self) -> Response {
        (
            [(header::CONTENT_TYPE, "application/json")],
            self.0.to_string(),
        )
            .into_response()
    }
}

fn json_status(status: StatusCode, v: Json) -> Response {
    (status, Json2(v)).into_response()
}

async fn crm_create_contact(
    State(s): State<Shared>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    s.record("crm", "POST", &uri, &headers, &body);
    let Ok(Json::Object(contact)) = serde_json::from_slice::<Json>(&body) else {
        return json_status(
            StatusCode::BAD_REQUEST,
            json!({"error": "the body must be a JSON object"}),
        );
    };
    let email = contact.get("email").and_then(Json::as_str).unwrap_or("");
    if !email.contains('@') {
        return json_status(
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({"error": "`email` must be an e-mail address", "field": "email"}),
        );
    }
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let mut inner = s.inner.lock().expect("not poisoned");
    if !key.is_empty()
        && let Some(existing) = inner.contacts.get(&key)
    {
        return json_status(StatusCode::OK, existing.clone());
    }
    inner.contact_count += 1;
    let mut created = contact.clone();
    created.insert("id".into(), format!("c_{}", inner.contact_count).into());
    let created = Json::Object(created);
    if !key.is_empty() {
        inner.contacts.insert(key, created.clone());
    }
    json_status(StatusCode::CREATED, created)
}

/// `GET /crm/customers?cursor=N&limit=M`: a page of customers, the next page in a `Link`
/// header (RFC 8288) and as `next_cursor` in the body.
async fn crm_customers(
    State(s): State<Shared>,
    uri: Uri,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    s.record("crm", "GET", &uri, &headers, b"");
    let start: usize = q.get("cursor").and_then(|c| c.parse().ok()).unwrap_or(0);
    let limit: usize = q
        .get("limit")
        .and_then(|c| c.parse().ok())
        .unwrap_or(10)
        .clamp(1, 100);
    let end = (start + limit).min(CUSTOMERS);
    let customers: Vec<Json> = (start..end).map(customer).collect();
    let next = (end < CUSTOMERS).then_some(end);
    let mut resp = json_status(
        StatusCode::OK,
        json!({ "customers": customers, "next_cursor": next.map(|n| n.to_string()) }),
    );
    if let Some(n) = next {
        let link = format!(
            "<{}/crm/customers?cursor={n}&limit={limit}>; rel=\"next\"",
            s.base
        );
        resp.headers_mut()
            .insert(header::LINK, link.parse().expect("a valid header"));
    }
    resp
}

fn customer(i: usize) -> Json {
    const FIRST: &[&str] = &["Ada", "Grace", "Alan", "Edsger", "Barbara", "Ken", "Radia"];
    const COUNTRIES: &[&str] = &["DE", "FR", "NL", "US"];
    const LAST: &[&str] = &[
        "Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Thompson",
    ];
    let first = FIRST[i % FIRST.len()];
    let last = LAST[i % LAST.len()];
    json!({
        "id": format!("cus_{:03}", i + 1),
        "name": format!("{first} {last}"),
        "email": format!("{}.{}{}@example.com", first.to_lowercase(), last.to_lowercase(), i + 1),
        "country": COUNTRIES[i % COUNTRIES.len()],
        "marketing_opt_in": !i.is_multiple_of(3),
    })
}

/// GraphQL over HTTP, just enough for `subscribe(email: …, list: …)`: the mutation's
/// arguments come from literals or `$variables`; anything else is answered with a GraphQL
/// error, as a real server answers a field its schema lacks.
async fn mailer_graphql(
    State(s): State<Shared>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    s.record("mailer", "POST", &uri, &headers, &body);
    let Ok(req) = serde_json::from_slice::<Json>(&body) else {
        return json_status(
            StatusCode::BAD_REQUEST,
            json!({"errors": [{"message": "the body must be JSON: {query, variables}"}]}),
        );
    };
    let query = req["query"].as_str().unwrap_or("");
    let variables = req["variables"].as_object().cloned().unwrap_or_default();
    if !query.contains("subscribe") {
        return json_status(
            StatusCode::OK,
            json!({"errors": [{"message": "the mailer only knows the `subscribe` mutation"}]}),
        );
    }
    let email = argument(query, "email", &variables).unwrap_or_default();
    let list = argument(query, "list", &variables).unwrap_or_else(|| "default".into());
    if !email.contains('@') {
        return json_status(
            StatusCode::OK,
            json!({
                "data": { "subscribe": null },
                "errors": [{ "message": format!("`{email}` is not an e-mail address"), "path": ["subscribe"] }],
            }),
        );
    }
    let id = {
        let mut inner = s.inner.lock().expect("not poisoned");
        inner.subscribers += 1;
        format!("sub_{}", inner.subscribers)
    };
    json_status(
        StatusCode::OK,
        json!({ "data": { "subscribe": { "id": id, "email": email, "list": list } } }),
    )
}

/// The value of argument `name` in a GraphQL call: a `"literal"` or a `$variable`.
fn argument(query: &str, name: &str, variables: &Map<String, Json>) -> Option<String> {
    let at = query.find(&format!("{name}:"))? + name.len() + 1;
    let rest = query[at..].trim_start();
    if let Some(var) = rest.strip_prefix('$') {
        let var: String = var
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        return variables
            .get(&var)
            .and_then(Json::as_str)
            .map(str::to_owned);
    }
    let lit = rest.strip_prefix('"')?;
    Some(lit[..lit.find('"')?].to_owned())
}

async fn erp_wsdl(State(s): State<Shared>, uri: Uri) -> Response {
    if uri.query() != Some("wsdl") {
        return (
            StatusCode::METHOD_NOT_ALLOWED,
            "POST a SOAP envelope, or GET ?wsdl",
        )
            .into_response();
    }
    let wsdl = ERP_WSDL.replace(ERP_ADDRESS, &format!("{}/erp/soap", s.base));
    ([(header::CONTENT_TYPE, "text/xml; charset=utf-8")], wsdl).into_response()
}

/// `CreateSalesOrder`: checks the envelope as a strict SOAP 1.1 server would (SOAPAction,
/// namespace, required elements) and answers a typed response or a Fault.
async fn erp_soap(State(s): State<Shared>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    s.record("erp", "POST", &uri, &headers, &body);
    let action = headers
        .get("soapaction")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .trim_matches('"');
    if action != SOAP_ACTION {
        return fault("soap:Client", &format!("unknown SOAPAction `{action}`"));
    }
    let Ok(text) = std::str::from_utf8(&body) else {
        return fault("soap:Client", "the envelope is not UTF-8");
    };
    let doc = match roxmltree::Document::parse(text) {
        Ok(d) => d,
        Err(e) => return fault("soap:Client", &format!("malformed XML: {e}")),
    };
    let Some(order) = doc
        .descendants()
        .find(|n| n.has_tag_name((ERP_NS, "CreateSalesOrder")))
    else {
        return fault(
            "soap:Client",
            "the Body holds no {urn:example:erp:sales}CreateSalesOrder",
        );
    };
    // Like a validating server (JAX-WS, WCF), children must come in the schema's sequence.
    if let Err(e) = in_sequence(order, &["externalId", "customerEmail", "currency", "line"]) {
        return fault("soap:Client", &e);
    }
    for line in order
        .children()
        .filter(|c| c.has_tag_name((ERP_NS, "line")))
    {
        if let Err(e) = in_sequence(line, &["sku", "quantity", "unitPrice"]) {
            return fault("soap:Client", &e);
        }
    }
    let child = |n: roxmltree::Node, name: &str| {
        n.children()
            .find(|c| c.has_tag_name((ERP_NS, name)))
            .and_then(|c| c.text())
            .map(str::trim)
            .map(str::to_owned)
    };
    let Some(external_id) = child(order, "externalId") else {
        return fault("soap:Client", "externalId is required");
    };
    let mut total = 0.0_f64;
    let mut lines = 0;
    for line in order
        .children()
        .filter(|c| c.has_tag_name((ERP_NS, "line")))
    {
        let qty: i64 = child(line, "quantity")
            .and_then(|q| q.parse().ok())
            .unwrap_or(0);
        let price: f64 = child(line, "unitPrice")
            .and_then(|p| p.parse().ok())
            .unwrap_or(-1.0);
        if qty <= 0 || price < 0.0 {
            return fault(
                "soap:Client",
                &format!("order {external_id}: every line needs a positive quantity and a price"),
            );
        }
        total += qty as f64 * price;
        lines += 1;
    }
    if lines == 0 {
        return fault("soap:Client", &format!("order {external_id} has no lines"));
    }
    let number = {
        let mut inner = s.inner.lock().expect("not poisoned");
        inner.orders += 1;
        100_000 + inner.orders
    };
    let xml = format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body><s:CreateSalesOrderResponse xmlns:s="{ERP_NS}"><s:orderNumber>{number}</s:orderNumber><s:total>{total:.2}</s:total><s:accepted>true</s:accepted></s:CreateSalesOrderResponse></soap:Body></soap:Envelope>"#
    );
    ([(header::CONTENT_TYPE, "text/xml; charset=utf-8")], xml).into_response()
}

/// Whether the element children of `node` follow `sequence` (each name's position in it never
/// goes back).
fn in_sequence(node: roxmltree::Node, sequence: &[&str]) -> Result<(), String> {
    let mut at = 0;
    for child in node.children().filter(|c| c.is_element()) {
        let name = child.tag_name().name();
        match sequence.iter().position(|s| *s == name) {
            Some(i) if i >= at => at = i,
            Some(_) => {
                return Err(format!(
                    "element `{name}` is out of order in `{}`; the schema's sequence is {}",
                    node.tag_name().name(),
                    sequence.join(", ")
                ));
            }
            None => {
                return Err(format!(
                    "unexpected element `{name}` in `{}`",
                    node.tag_name().name()
                ));
            }
        }
    }
    Ok(())
}

fn fault(code: &str, message: &str) -> Response {
    let message = message
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    let xml = format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body><soap:Fault><faultcode>{code}</faultcode><faultstring>{message}</faultstring></soap:Fault></soap:Body></soap:Envelope>"#
    );
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        [(header::CONTENT_TYPE, "text/xml; charset=utf-8")],
        xml,
    )
        .into_response()
}

async fn warehouse_import(
    State(s): State<Shared>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    s.record("warehouse", "POST", &uri, &headers, &body);
    match serde_json::from_slice::<Json>(&body) {
        Ok(Json::Array(rows)) => json_status(StatusCode::OK, json!({ "imported": rows.len() })),
        Ok(Json::Object(o)) if o.get("rows").is_some_and(Json::is_array) => json_status(
            StatusCode::OK,
            json!({ "imported": o["rows"].as_array().map(Vec::len) }),
        ),
        _ => json_status(
            StatusCode::BAD_REQUEST,
            json!({"error": "expected a JSON array of rows, or {\"rows\": [...]}"}),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn graphql_arguments_come_from_literals_and_variables() {
        let vars: Map<String, Json> = serde_json::from_str(r#"{"e": "a@b.c"}"#).unwrap();
        let q = r#"mutation($e: String!) { subscribe(email: $e, list: "welcome") { id } }"#;
        assert_eq!(argument(q, "email", &vars).as_deref(), Some("a@b.c"));
        assert_eq!(argument(q, "list", &vars).as_deref(), Some("welcome"));
        assert_eq!(argument(q, "nope", &vars), None);
    }

    #[test]
    fn the_wsdl_is_well_formed_and_names_the_default_address() {
        let doc = roxmltree::Document::parse(ERP_WSDL).unwrap();
        assert!(ERP_WSDL.contains(ERP_ADDRESS));
        assert_eq!(doc.root_element().tag_name().name(), "definitions");
        assert!(ERP_WSDL.contains(SOAP_ACTION));
    }
}
