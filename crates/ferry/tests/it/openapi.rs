//! `ferry import openapi` and `operation:` in http steps, as a user runs them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::json;

use crate::harness::{Ferry, Project, Receiver, bin};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../ferry-core/tests/fixtures/openapi")
        .join(name)
}

fn ferry(args: &[&str]) -> Output {
    Command::new(bin()).args(args).output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A project whose `specs/crm.yaml` is the CRM fixture and whose `crm` connection uses it.
fn crm_project(flow: &str, receiver: Option<&Receiver>) -> Project {
    let base = if receiver.is_some() {
        "@RECEIVER@"
    } else {
        "http://127.0.0.1:9"
    };
    let conn = format!("id: crm\nbase_url: '{base}'\nopenapi: specs/crm.yaml\n");
    let project = Project::new(
        &[("connections/crm.yaml", &conn), ("flows/f.yaml", flow)],
        receiver,
    );
    std::fs::create_dir_all(project.path().join("specs")).unwrap();
    std::fs::copy(fixture("crm.yaml"), project.path().join("specs/crm.yaml")).unwrap();
    project
}

#[test]
fn import_writes_a_connection_that_validates_and_lists_the_operations() {
    let project = Project::new(&[], None);
    let dir = project.path().to_str().unwrap();
    let spec = fixture("crm.yaml");
    let out = ferry(&["import", "openapi", spec.to_str().unwrap(), "--out", dir]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].starts_with("OPERATION"), "{stdout}");
    assert!(
        lines
            .iter()
            .any(|l| l.split_whitespace().collect::<Vec<_>>()
                == ["createContact", "POST", "/contacts", "-", "yes"]),
        "{stdout}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.split_whitespace().collect::<Vec<_>>()
                == ["searchContacts", "GET", "/contacts/search", "?q", "no"]),
        "{stdout}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("getContactsByIdNotes ")),
        "{stdout}"
    );

    let conn = std::fs::read_to_string(project.path().join("connections/acme-crm.yaml")).unwrap();
    assert!(conn.contains("id: acme-crm\n"), "{conn}");
    assert!(
        conn.contains("base_url: \"https://eu.crm.example.com/api/v2\"\n"),
        "{conn}"
    );
    assert!(conn.contains("openapi: specs/acme-crm.yaml\n"), "{conn}");
    assert!(
        conn.contains("bearer: { token: { secret: ACME_CRM_TOKEN } }"),
        "{conn}"
    );
    assert_eq!(
        std::fs::read(project.path().join("specs/acme-crm.yaml")).unwrap(),
        std::fs::read(&spec).unwrap()
    );

    // The written connection validates, and so does a flow calling one of its operations.
    let flow = "id: f\ntrigger: manual\nsteps:\n  - id: c\n    http: { connection: acme-crm, operation: createContact, body: { email: a@b.c } }\n";
    std::fs::write(project.path().join("flows/f.yaml"), flow).unwrap();
    let ok = ferry(&["validate", dir]);
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok.stdout));

    // A second import refuses to overwrite and changes nothing; --force replaces.
    std::fs::write(
        project.path().join("connections/acme-crm.yaml"),
        conn.clone() + "# edited\n",
    )
    .unwrap();
    let again = ferry(&["import", "openapi", spec.to_str().unwrap(), "--out", dir]);
    assert_eq!(again.status.code(), Some(2));
    assert!(
        text(&again.stderr).contains("already exists; pass `--force`"),
        "{}",
        text(&again.stderr)
    );
    let kept = std::fs::read_to_string(project.path().join("connections/acme-crm.yaml")).unwrap();
    assert!(kept.ends_with("# edited\n"));
    let forced = ferry(&[
        "import",
        "openapi",
        spec.to_str().unwrap(),
        "--out",
        dir,
        "--force",
    ]);
    assert_eq!(forced.status.code(), Some(0), "{}", text(&forced.stderr));
    let replaced =
        std::fs::read_to_string(project.path().join("connections/acme-crm.yaml")).unwrap();
    assert_eq!(replaced, conn);
}

#[test]
fn a_3_0_json_spec_with_external_refs_is_imported_bundled_with_oauth2() {
    let project = Project::new(&[], None);
    let dir = project.path().to_str().unwrap();
    let out = ferry(&[
        "import",
        "openapi",
        fixture("billing.json").to_str().unwrap(),
        "--out",
        dir,
        "--id",
        "billing",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let conn = std::fs::read_to_string(project.path().join("connections/billing.yaml")).unwrap();
    assert!(
        conn.contains("token_url: \"https://auth.billing.example.com/oauth/token\""),
        "{conn}"
    );
    assert!(
        conn.contains("client_secret: { secret: BILLING_CLIENT_SECRET }"),
        "{conn}"
    );
    assert!(
        conn.contains("base_url: \"https://sandbox.billing.example.com/v1\""),
        "{conn}"
    );
    // The copy stands alone: the external schema is inside it, and it is still checked.
    let flow = "id: f\ntrigger: manual\nsteps:\n  - id: i\n    http: { connection: billing, operation: createInvoice, body: { customer: { id: c1 }, amount: 10, vat: 2 } }\n";
    std::fs::write(project.path().join("flows/f.yaml"), flow).unwrap();
    let bad = ferry(&["validate", dir]);
    assert_eq!(bad.status.code(), Some(1));
    let stdout = text(&bad.stdout);
    assert!(
        stdout.contains("flows/f.yaml:5:102: error: property `vat` is not allowed in `body`"),
        "{stdout}"
    );
}

#[tokio::test]
async fn import_fetches_a_spec_from_a_url_and_resolves_a_relative_server() {
    let spec = std::fs::read_to_string(fixture("crm.yaml"))
        .unwrap()
        .replace(
            "  - url: https://{region}.crm.example.com/api/v2",
            "  - url: /api/v2",
        );
    let app = axum::Router::new().route(
        "/openapi.yaml",
        axum::routing::get(move || async move { spec }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let project = Project::new(&[], None);
    let dir = project.path().to_str().unwrap().to_owned();
    let url = format!("http://{addr}/openapi.yaml");
    let out = tokio::task::spawn_blocking(move || {
        ferry(&["import", "openapi", &url, "--out", &dir, "--id", "crm"])
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("createContact"));
    let conn = std::fs::read_to_string(project.path().join("connections/crm.yaml")).unwrap();
    assert!(
        conn.contains(&format!("base_url: \"http://{addr}/api/v2\"")),
        "{conn}"
    );
    let ok = ferry(&["validate", project.path().to_str().unwrap()]);
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok.stdout));

    // A URL that answers an error is refused, and nothing is written.
    let project = Project::new(&[], None);
    let dir = project.path().to_str().unwrap().to_owned();
    let missing = format!("http://{addr}/nope.yaml");
    let out = tokio::task::spawn_blocking(move || {
        ferry(&["import", "openapi", &missing, "--out", &dir, "--id", "crm"])
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("HTTP 404"),
        "{}",
        text(&out.stderr)
    );
    assert!(!project.path().join("connections/crm.yaml").exists());
}

#[test]
fn validate_reports_each_operation_mismatch_at_its_position() {
    let flow = "\
id: f
trigger: manual
steps:
  - id: a
    http: { connection: crm, operation: createContat, body: { email: x } }
  - id: b
    http:
      connection: crm
      operation: getContact
      path: /contacts/1
      params: { contact: 1 }
      query: { expnad: true }
  - id: c
    http: { connection: crm, operation: searchContacts }
  - id: d
    http: { connection: crm, operation: deleteContact, params: { id: 1 }, body: { x: 1 } }
  - id: e
    http:
      connection: crm
      operation: createContact
      body: { email: 42, nickname: x, tags: '{{ .event.body.tags }}' }
";
    let project = crm_project(flow, None);
    let out = ferry(&["validate", project.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    let errors: Vec<&str> = stdout
        .lines()
        .filter(|l| !l.starts_with("  hint:"))
        .map(|l| l.split_once("flows/f.yaml:").map(|(_, r)| r).unwrap_or(l))
        .collect();
    assert_eq!(
        errors,
        [
            "5:41: error: unknown operation `createContat` in connection `crm`'s spec",
            "10:13: error: `path` and `operation` exclude each other",
            "11:15: error: missing path parameter `id` for operation `getContact` (`GET /contacts/{id}`)",
            "11:17: error: unknown path parameter `contact` for operation `getContact` (`GET /contacts/{id}`)",
            "12:16: error: unknown query parameter `expnad` for operation `getContact` (`GET /contacts/{id}`)",
            "14:41: error: missing required query parameter `q` for operation `searchContacts` (`GET /contacts/search`)",
            "16:81: error: operation `deleteContact` (`DELETE /contacts/{id}`) takes no request body",
            "21:22: error: `body.email` must be a string, found an integer",
            "21:26: error: property `nickname` is not allowed in `body`",
        ],
        "{stdout}"
    );
    assert!(
        stdout.contains("  hint: did you mean `createContact`?"),
        "{stdout}"
    );
    assert!(
        stdout.contains("  hint: did you mean `expand`? query parameters: expand"),
        "{stdout}"
    );
}

#[test]
fn a_missing_or_broken_spec_is_a_located_connection_error() {
    let project = crm_project(
        "id: f\ntrigger: manual\nsteps:\n  - id: a\n    log: hi\n",
        None,
    );
    std::fs::write(project.path().join("specs/crm.yaml"), "swagger: '2.0'\n").unwrap();
    let out = ferry(&["validate", project.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("connections/crm.yaml:3:10: error: invalid `openapi:`: `")
            && stdout.contains("is Swagger 2.0; only OpenAPI 3.0 and 3.1 are supported"),
        "{stdout}"
    );
    std::fs::remove_file(project.path().join("specs/crm.yaml")).unwrap();
    let out = ferry(&["validate", project.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stdout)
            .contains("connections/crm.yaml:3:10: error: invalid `openapi:`: cannot read"),
        "{}",
        text(&out.stdout)
    );
}

#[tokio::test]
async fn an_operation_step_calls_the_operation_path_with_its_method() {
    let receiver = Receiver::start().await;
    let flow = "\
id: f
trigger: { webhook: { path: /in } }
steps:
  - id: create
    http:
      connection: crm
      operation: createContact
      body: { email: '{{ .event.body.email }}', source: web-shop }
  - id: fetch
    http:
      connection: crm
      operation: getContact
      params: { id: '{{ .event.body.id }}' }
      query: { expand: true }
";
    let project = crm_project(flow, Some(&receiver));
    let ferry = Ferry::start(&project);
    let run = ferry
        .run_event("/in", &json!({"email": "ada@example.com", "id": "c/42 x"}))
        .await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    let got = receiver.requests();
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(
        (got[0].method.as_str(), got[0].path.as_str()),
        ("POST", "/contacts")
    );
    assert_eq!(
        got[0].json(),
        json!({"email": "ada@example.com", "source": "web-shop"})
    );
    // The id is one path segment: its `/` and space are encoded, not a new path.
    assert_eq!(
        (got[1].method.as_str(), got[1].path.as_str()),
        ("GET", "/contacts/c%2F42%20x")
    );
    assert_eq!(
        got[1].header("idempotency-key"),
        format!("{}:fetch", run["id"].as_str().unwrap())
    );
}
