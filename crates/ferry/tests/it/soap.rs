//! The `soap` step and `ferry import wsdl` against a real SOAP server: spyne (PyPI),
//! `tests/soap/server.py`, serving the WSDL it generates. Needs python3; the first run
//! installs the server into tests/soap/.venv with `scripts/soap-setup`.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::json;

use crate::harness::{Fault, Ferry, Project, Receiver, bin};

const USER: &str = "ops";
const PASSWORD: &str = "s3cret-pass-for-soap";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn setup() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let status = Command::new(repo().join("scripts/soap-setup"))
            .status()
            .expect("scripts/soap-setup runs (needs bash and python3 with venv)");
        assert!(status.success(), "scripts/soap-setup failed: {status}");
    });
}

/// The spyne server on a free port, stopped on drop.
struct SoapServer {
    child: Child,
    port: u16,
}

impl SoapServer {
    fn start() -> SoapServer {
        setup();
        let dir = repo().join("tests/soap");
        let mut child = Command::new(dir.join(".venv/bin/python"))
            .arg("server.py")
            .current_dir(&dir)
            .env("SOAP_USER", USER)
            .env("SOAP_PASSWORD", PASSWORD)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the SOAP server starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line.trim().parse().unwrap_or_else(|_| {
            let _ = child.kill();
            panic!("the SOAP server printed {line:?}, not its port")
        });
        SoapServer { child, port }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// SOAP requests the server has received.
    async fn calls(&self) -> u64 {
        reqwest::get(self.url("/calls"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
            .parse()
            .unwrap()
    }
}

impl Drop for SoapServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A project whose flow calls `soap_step` and posts its `.body` to the receiver.
async fn start(soap_step: &str, conn: &str) -> (Receiver, Project, Ferry) {
    let receiver = Receiver::start().await;
    let flow = format!(
        "id: f\ntrigger: {{ webhook: {{ path: /in }} }}\nsteps:\n  - id: stock\n    soap:\n{soap_step}  - id: out\n    http: {{ url: '@RECEIVER@/out', method: POST, body: '{{{{ .steps.stock.body }}}}' }}\n"
    );
    let mut files = vec![("flows/f.yaml", flow.as_str())];
    if !conn.is_empty() {
        files.push(("connections/stock.yaml", conn));
    }
    let project = Project::new(&files, Some(&receiver));
    let ferry = Ferry::start_env(&project, &[("SOAP_PW", PASSWORD), ("WRONG_PW", "nope")]);
    (receiver, project, ferry)
}

#[tokio::test]
async fn an_operation_result_is_typed_by_the_wsdl_and_used_by_the_next_step() {
    let server = SoapServer::start();
    let step = format!(
        "      wsdl: {}\n      operation: GetStock\n      body: {{ sku: '{{{{ .event.body.sku }}}}' }}\n",
        server.url("/soap11?wsdl")
    );
    let (receiver, _p, ferry) = start(&step, "").await;
    let run = ferry.run_event("/in", &json!({"sku": "A1"})).await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    let got = receiver.wait_for("/out", 1, Duration::from_secs(10)).await;
    // quantity is xs:integer, price xs:decimal, available xs:boolean: JSON numbers and a
    // boolean, not strings; bins is a list even with one item (maxOccurs="unbounded").
    assert_eq!(
        got[0].json(),
        json!({"GetStockResponse": {"GetStockResult": {
            "sku": "A1",
            "quantity": 7,
            "price": 19.9,
            "available": true,
            "bins": {"string": ["A1"]}
        }}})
    );
    let stock = &run["steps"][0];
    let request = &stock["request"];
    assert_eq!(request["method"], "POST");
    assert_eq!(request["url"], server.url("/soap11"));
    assert_eq!(request["headers"]["soapaction"], "\"GetStock\"");
    assert_eq!(
        request["headers"]["content-type"],
        "text/xml; charset=utf-8"
    );
    let body = request["body"].as_str().unwrap();
    assert!(
        body.contains("<GetStock xmlns=\"urn:ferry:stock\"><sku>A1</sku></GetStock>"),
        "{body}"
    );
    assert_eq!(server.calls().await, 1);
}

#[tokio::test]
async fn a_client_fault_fails_the_run_at_once_with_the_fault_recorded() {
    let server = SoapServer::start();
    let conn = format!(
        "id: stock\nbase_url: {}\nretry: {{ attempts: 3, initial: 10ms, max: 50ms }}\n",
        server.url("/soap11")
    );
    let step = format!(
        "      connection: stock\n      wsdl: {}\n      operation: GetStock\n      body: {{ sku: '{{{{ .event.body.sku }}}}' }}\n",
        server.url("/soap11?wsdl")
    );
    let (receiver, _p, ferry) = start(&step, &conn).await;
    let run = ferry.run_event("/in", &json!({"sku": "missing"})).await;
    assert_eq!(run["status"], "failed", "{run:#}");
    assert_eq!(run["error"]["kind"], "fault");
    assert_eq!(
        run["error"]["message"],
        "SOAP fault soap11env:Client.UnknownSku: no such sku: missing"
    );
    let step = &run["steps"][0];
    assert_eq!(step["attempts"], 1);
    assert_eq!(
        step["response"]["body"],
        json!({"faultcode": "soap11env:Client.UnknownSku", "faultstring": "no such sku: missing", "detail": {"sku": "missing"}})
    );
    assert_eq!(step["response"]["status"], 500);
    assert_eq!(server.calls().await, 1, "a Client fault is not retried");
    assert!(receiver.requests_to("/out").is_empty());

    // A Server fault is retried under the connection's policy.
    let run = ferry.run_event("/in", &json!({"sku": "boom"})).await;
    assert_ne!(run["status"], "succeeded", "{run:#}");
    assert_eq!(run["steps"][0]["attempts"], 3, "{run:#}");
    assert_eq!(server.calls().await, 4);
}

#[tokio::test]
async fn username_tokens_are_accepted_masked_and_checked() {
    let server = SoapServer::start();
    // Digest over SOAP 1.1, through the WSDL's own endpoint.
    let step = format!(
        "      wsdl: {}\n      operation: GetPrice\n      body: {{ sku: '{{{{ .event.body.sku }}}}' }}\n      ws_security: {{ username: {USER}, password: {{ env: SOAP_PW }}, digest: true }}\n",
        server.url("/soap11?wsdl")
    );
    let (receiver, _p, ferry) = start(&step, "").await;
    let run = ferry.run_event("/in", &json!({"sku": "B2"})).await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    let got = receiver.wait_for("/out", 1, Duration::from_secs(10)).await;
    assert_eq!(
        got[0].json()["GetPriceResponse"]["GetPriceResult"]["quantity"],
        7
    );
    let body = run["steps"][0]["request"]["body"].as_str().unwrap();
    assert!(
        body.contains("#PasswordDigest\">***</wsse:Password>"),
        "{body}"
    );
    assert!(
        body.contains("<wsse:Username>ops</wsse:Username>"),
        "{body}"
    );
    assert!(!run.to_string().contains(PASSWORD));
    assert!(!ferry.log.lock().unwrap().contains(PASSWORD));
    drop(ferry);

    // PasswordText over SOAP 1.2, and a wrong password.
    for (password, sku) in [("SOAP_PW", "C3"), ("WRONG_PW", "D4")] {
        let step = format!(
            "      wsdl: {}\n      soap_version: 1.2\n      operation: GetPrice\n      body: {{ sku: {sku} }}\n      ws_security: {{ username: {USER}, password: {{ env: {password} }} }}\n",
            server.url("/soap12?wsdl")
        );
        let (_receiver, _p, ferry) = start(&step, "").await;
        let run = ferry.run_event("/in", &json!({})).await;
        let request = &run["steps"][0]["request"];
        assert!(
            request["headers"]["content-type"]
                .as_str()
                .unwrap()
                .starts_with("application/soap+xml; charset=utf-8; action=\"GetPrice\""),
            "{run:#}"
        );
        assert!(
            request["body"]
                .as_str()
                .unwrap()
                .contains("#PasswordText\">***<")
        );
        if password == "SOAP_PW" {
            assert_eq!(run["status"], "succeeded", "{run:#}");
            assert!(!run.to_string().contains(PASSWORD));
        } else {
            assert_eq!(run["status"], "failed", "{run:#}");
            assert_eq!(run["error"]["kind"], "fault");
            assert_eq!(
                run["error"]["message"],
                "SOAP fault soap12env:Sender / Authentication: wrong password"
            );
            assert_eq!(run["steps"][0]["attempts"], 1);
        }
    }
}

#[tokio::test]
async fn import_wsdl_writes_a_connection_that_validates() {
    let server = SoapServer::start();
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(bin())
        .args(["import", "wsdl", &server.url("/soap11?wsdl"), "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("GetStock  (SOAP 1.1, document, action GetStock)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("GetPrice  (SOAP 1.1, document, action GetPrice)"),
        "{stdout}"
    );
    assert!(stdout.contains("        quantity?: integer"), "{stdout}");
    let conn = std::fs::read_to_string(dir.path().join("connections/stock.yaml")).unwrap();
    assert!(
        conn.contains(&format!("base_url: {}\n", server.url("/soap11"))),
        "{conn}"
    );
    assert!(dir.path().join("wsdl/stock.wsdl").is_file());

    // The connection and the copied WSDL are what a flow uses; validate checks the operation.
    std::fs::create_dir_all(dir.path().join("flows")).unwrap();
    let flow = |op: &str| {
        format!(
            "id: f\ntrigger: manual\nsteps:\n  - id: s\n    soap: {{ connection: stock, wsdl: wsdl/stock.wsdl, operation: {op}, body: {{ sku: A1 }} }}\n"
        )
    };
    std::fs::write(dir.path().join("flows/f.yaml"), flow("GetStock")).unwrap();
    let ok = Command::new(bin())
        .arg("validate")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );
    std::fs::write(dir.path().join("flows/f.yaml"), flow("GetStok")).unwrap();
    let bad = Command::new(bin())
        .arg("validate")
        .arg(dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&bad.stdout);
    assert_eq!(bad.status.code(), Some(1));
    assert!(text.contains("unknown operation `GetStok`"), "{text}");
    assert!(text.contains("did you mean `GetStock`?"), "{text}");

    // A second import does not overwrite without --force.
    let again = Command::new(bin())
        .args(["import", "wsdl", &server.url("/soap11?wsdl"), "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("pass --force"));
}

#[tokio::test]
async fn a_written_envelope_escapes_event_data_and_takes_a_username_token() {
    let server = SoapServer::start();
    let step = format!(
        r#"      wsdl: {}
      operation: GetPrice
      ws_security: {{ username: {USER}, password: {{ env: SOAP_PW }}, digest: true }}
      envelope: |
        <soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/">
          <soap:Body>
            <GetPrice xmlns="urn:ferry:stock"><sku>{{{{ .event.body.sku }}}}</sku></GetPrice>
          </soap:Body>
        </soap:Envelope>
"#,
        server.url("/soap11?wsdl")
    );
    let (receiver, _p, ferry) = start(&step, "").await;
    // Markup in the data stays data: the server sees (and echoes) the text as sent.
    let sku = "A<b>&</sku>1";
    let run = ferry.run_event("/in", &json!({ "sku": sku })).await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    let got = receiver.wait_for("/out", 1, Duration::from_secs(10)).await;
    assert_eq!(
        got[0].json()["GetPriceResponse"]["GetPriceResult"]["sku"],
        sku
    );
    let body = run["steps"][0]["request"]["body"].as_str().unwrap();
    assert!(
        body.contains("<sku>A&lt;b&gt;&amp;&lt;/sku&gt;1</sku>"),
        "{body}"
    );
    assert!(body.contains("<soap:Header><wsse:Security"), "{body}");
    assert!(body.contains("#PasswordDigest\">***<"), "{body}");
}

#[tokio::test]
async fn answers_that_are_not_soap_fail_by_their_status_and_leak_no_password() {
    let receiver = Receiver::start().await;
    let project = warehouse_project(
        &receiver,
        &secured_flow(),
        "id: wh\nbase_url: '@RECEIVER@/soap'\nretry: { attempts: 2, initial: 10ms, max: 20ms }\n",
    );
    let ferry = Ferry::start_env(&project, &[("SOAP_PW", PASSWORD)]);

    // A 503 error page that echoes the request (password included) is retried as a 503, and
    // the password is masked wherever it was echoed.
    receiver.fail_next([Fault::Echo(503), Fault::Echo(503)]);
    let run = ferry.run_event("/in", &json!({})).await;
    assert_ne!(run["status"], "succeeded", "{run:#}");
    assert_eq!(run["error"]["kind"], "http_status", "{run:#}");
    assert_eq!(run["error"]["status"], 503);
    assert_eq!(run["steps"][0]["attempts"], 2);
    let got = receiver.requests_to("/soap");
    assert!(String::from_utf8_lossy(&got[0].body).contains(PASSWORD));
    assert_eq!(
        got[0].header("soapaction"),
        "\"urn:example:warehouse/GetStock\""
    );
    assert!(!run.to_string().contains(PASSWORD), "{run:#}");

    // 200 with JSON: not SOAP, and not worth retrying.
    let run = ferry.run_event("/in", &json!({})).await;
    assert_eq!(run["status"], "failed", "{run:#}");
    assert_eq!(run["error"]["kind"], "bad_response");
    assert_eq!(run["steps"][0]["attempts"], 1);
    assert!(
        run["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("the SOAP response is not readable"),
        "{run:#}"
    );
}

#[tokio::test]
async fn a_password_with_xml_special_characters_is_masked_in_its_escaped_form_too() {
    const SPECIAL: &str = "p&ss<word>X9-secret";
    const ESCAPED: &str = "p&amp;ss&lt;word&gt;X9-secret";
    let receiver = Receiver::start().await;
    let project = warehouse_project(
        &receiver,
        &secured_flow(),
        "id: wh\nbase_url: '@RECEIVER@/soap'\nretry: { attempts: 1 }\n",
    );
    let ferry = Ferry::start_env(&project, &[("SOAP_PW", SPECIAL)]);

    // An error page that echoes the envelope: the password arrives XML-escaped.
    receiver.fail_next([Fault::Echo(500)]);
    let run = ferry.run_event("/in", &json!({})).await;
    assert_ne!(run["status"], "succeeded", "{run:#}");
    let got = receiver.requests_to("/soap");
    assert!(String::from_utf8_lossy(&got[0].body).contains(ESCAPED));
    let stored = run.to_string();
    assert!(!stored.contains(ESCAPED), "{run:#}");
    assert!(!stored.contains(SPECIAL), "{run:#}");
}

#[tokio::test]
async fn a_one_way_answer_without_an_envelope_succeeds_with_a_null_body() {
    let receiver = Receiver::start().await;
    let flow = "id: f\ntrigger: { webhook: { path: /in } }\nsteps:\n  - id: ping\n    soap:\n      connection: wh\n      wsdl: wsdl/w.wsdl\n      operation: GetStock\n      body: { sku: A1 }\n";
    let project = warehouse_project(
        &receiver,
        flow,
        "id: wh\nbase_url: '@RECEIVER@/soap'\nretry: { attempts: 1 }\n",
    );
    let ferry = Ferry::start(&project);
    receiver.fail_next([Fault::Empty(202)]);
    let run = ferry.run_event("/in", &json!({})).await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    assert_eq!(run["steps"][0]["output"]["status"], 202);
    assert_eq!(run["steps"][0]["output"]["body"], serde_json::Value::Null);
    // An empty 500 is still a failure, by its status.
    receiver.fail_next([Fault::Empty(500)]);
    let run = ferry.run_event("/in", &json!({})).await;
    assert_ne!(run["status"], "succeeded", "{run:#}");
    assert_eq!(run["error"]["status"], 500, "{run:#}");
}

#[test]
fn import_wsdl_without_an_address_takes_the_endpoint_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let full = std::fs::read_to_string(repo().join("examples/order-to-erp/wsdl/erp.wsdl")).unwrap();
    let start = full.find("  <service").unwrap();
    let end = full.find("</service>").unwrap() + "</service>\n".len();
    let wsdl = format!("{}{}", &full[..start], &full[end..]);
    let file = dir.path().join("no-address.wsdl");
    std::fs::write(&file, wsdl).unwrap();
    let project = dir.path().join("p");
    let out = Command::new(bin())
        .args(["import", "wsdl"])
        .arg(&file)
        .args(["--id", "legacy-erp", "--out"])
        .arg(&project)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let conn = std::fs::read_to_string(project.join("connections/legacy-erp.yaml")).unwrap();
    assert!(
        conn.contains("base_url: { env: LEGACY_ERP_BASE_URL }"),
        "{conn}"
    );
    let check = Command::new(bin())
        .arg("validate")
        .arg(&project)
        .output()
        .unwrap();
    assert_eq!(
        check.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
}

/// A project with the warehouse fixture WSDL at `wsdl/w.wsdl`, `flow` as `flows/f.yaml`, and
/// `connection` (with `@RECEIVER@`) as `connections/wh.yaml`.
fn warehouse_project(receiver: &Receiver, flow: &str, connection: &str) -> Project {
    let wsdl = std::fs::read_to_string(
        repo().join("crates/ferry-core/tests/fixtures/wsdl/warehouse.wsdl"),
    )
    .unwrap();
    let project = Project::new(
        &[("flows/f.yaml", flow), ("connections/wh.yaml", connection)],
        Some(receiver),
    );
    std::fs::create_dir_all(project.path().join("wsdl")).unwrap();
    std::fs::write(project.path().join("wsdl/w.wsdl"), wsdl).unwrap();
    project
}

/// `GetStock` through connection `wh`, with a UsernameToken whose password is `$SOAP_PW`.
fn secured_flow() -> String {
    format!(
        "id: f\ntrigger: {{ webhook: {{ path: /in }} }}\nsteps:\n  - id: stock\n    soap:\n      connection: wh\n      wsdl: wsdl/w.wsdl\n      operation: GetStock\n      body: {{ sku: A1 }}\n      ws_security: {{ username: {USER}, password: {{ env: SOAP_PW }} }}\n"
    )
}
