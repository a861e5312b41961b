//! Reading real-world OpenAPI documents: the collection in npm `@readme/oas-examples`
//! (`tests/openapi`: petstore, circular schemas, every parameter style, security schemes,
//! server variables; 3.0 and 3.1, JSON and YAML). The first run installs it with
//! `scripts/openapi-setup`. Nothing here talks to a live API.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use ferry_core::openapi::{OpenApiError, SecurityScheme, Spec};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn examples() -> PathBuf {
    static SETUP: OnceLock<()> = OnceLock::new();
    SETUP.get_or_init(|| {
        let status = Command::new(repo().join("scripts/openapi-setup"))
            .status()
            .expect("scripts/openapi-setup runs (needs bash and npm)");
        assert!(status.success(), "scripts/openapi-setup failed: {status}");
    });
    repo().join("tests/openapi/node_modules/@readme/oas-examples")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    out.sort();
    out
}

#[test]
fn every_3_0_and_3_1_example_is_read_and_its_body_schemas_resolve() {
    let root = examples();
    let mut read = 0;
    let mut failures = Vec::new();
    for dir in ["3.0/json", "3.0/yaml", "3.1/json", "3.1/yaml"] {
        for path in files(&root.join(dir)) {
            match Spec::load(&path) {
                Ok(spec) => {
                    read += 1;
                    for op in &spec.operations {
                        if let Some(s) = op.body.as_ref().and_then(|b| b.json_schema.as_ref())
                            && let Err(e) = spec.deref(s)
                        {
                            failures.push(format!("{}: {}: {e}", path.display(), op.id));
                        }
                    }
                    let mut ids: Vec<&str> =
                        spec.operations.iter().map(|o| o.id.as_str()).collect();
                    let n = ids.len();
                    ids.sort();
                    ids.dedup();
                    if ids.len() != n {
                        failures.push(format!("{}: operation names repeat", path.display()));
                    }
                }
                Err(e) => failures.push(format!("{}: {e}", path.display())),
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(read > 80, "only {read} documents read");
}

#[test]
fn swagger_2_documents_are_refused_with_a_clear_error() {
    let root = examples();
    for path in files(&root.join("2.0/json")) {
        match Spec::load(&path) {
            Err(OpenApiError::Swagger2(_)) => {}
            other => panic!("{}: {other:?}", path.display()),
        }
    }
}

/// JSON is YAML 1.2: the same document read through the YAML path gives the same model.
/// (The package's own YAML editions are not compared: a few differ from their JSON twins.)
#[test]
fn the_yaml_and_json_readers_agree_on_every_document() {
    let root = examples();
    for version in ["3.0", "3.1"] {
        for json in files(&root.join(version).join("json")) {
            let text = std::fs::read_to_string(&json).unwrap();
            let a = Spec::parse(&text, "a.json").unwrap();
            // A leading comment sends the text down the YAML path.
            let b = Spec::parse(&format!("# as YAML\n{text}"), "a.yaml").unwrap();
            let ops = |s: &Spec| -> Vec<(String, String, String, usize, bool)> {
                s.operations
                    .iter()
                    .map(|o| {
                        (
                            o.id.clone(),
                            o.method.clone(),
                            o.path.clone(),
                            o.params.len(),
                            o.body.is_some(),
                        )
                    })
                    .collect()
            };
            assert_eq!(ops(&a), ops(&b), "{}", json.display());
            assert_eq!(a.security_schemes, b.security_schemes, "{}", json.display());
            assert_eq!(a.doc, b.doc, "{}", json.display());
        }
    }
}

#[test]
fn petstore_reads_as_its_authors_describe_it() {
    let spec = Spec::load(&examples().join("3.0/json/petstore.json")).unwrap();
    let add = spec.operation("addPet").unwrap();
    assert_eq!((add.method.as_str(), add.path.as_str()), ("POST", "/pet"));
    let body = add.body.as_ref().unwrap();
    assert!(body.media_types.contains(&"application/json".to_owned()));
    let pet = spec.deref(body.json_schema.as_ref().unwrap()).unwrap();
    assert_eq!(pet["required"], serde_json::json!(["name", "photoUrls"]));
    let get = spec.operation("getPetById").unwrap();
    assert_eq!(get.path_names(), vec!["petId"]);
    assert!(spec.security_schemes.iter().any(|(n, s)| n == "api_key"
        && *s
            == SecurityScheme::ApiKey {
                name: "api_key".into(),
                location: "header".into()
            }));
    assert_eq!(
        spec.base_url(None).as_deref(),
        Some("http://petstore.swagger.io/v2")
    );
}

#[test]
fn a_flow_is_checked_against_petstore_and_circular_schemas() {
    let root = examples();
    let dir = tempfile::tempdir().unwrap();
    for sub in ["flows", "connections", "specs"] {
        std::fs::create_dir_all(dir.path().join(sub)).unwrap();
    }
    std::fs::copy(
        root.join("3.0/json/petstore.json"),
        dir.path().join("specs/petstore.json"),
    )
    .unwrap();
    std::fs::copy(
        root.join("3.0/yaml/schema-circular.yaml"),
        dir.path().join("specs/circular.yaml"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("connections/petstore.yaml"),
        "id: petstore\nbase_url: http://petstore.example\nopenapi: specs/petstore.json\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("connections/circular.yaml"),
        "id: circular\nbase_url: http://circular.example\nopenapi: specs/circular.yaml\n",
    )
    .unwrap();
    let circular = Spec::load(&dir.path().join("specs/circular.yaml")).unwrap();
    let op = circular
        .operations
        .iter()
        .find(|o| o.body.is_some())
        .map(|o| o.id.clone());
    let mut flow = String::from(
        "id: f\ntrigger: manual\nsteps:\n  - id: add\n    http: { connection: petstore, operation: addPet, body: { name: 7, status: sold } }\n  - id: get\n    http: { connection: petstore, operation: getPetById, params: { petId: 1 } }\n",
    );
    assert!(op.is_some(), "schema-circular has an operation with a body");
    if let Some(op) = &op {
        // A body against a self-referencing schema: checked as deep as it is written.
        flow.push_str(&format!(
            "  - id: c\n    http: {{ connection: circular, operation: {op}, body: {{ a: {{ b: {{ c: 1 }} }} }} }}\n"
        ));
    }
    std::fs::write(dir.path().join("flows/f.yaml"), &flow).unwrap();
    let diags = ferry_core::flow::validate_paths(&[dir.path().to_path_buf()]);
    let text = diags.to_string();
    let errors: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with("  hint"))
        .map(|l| l.split_once("flows/f.yaml:").map(|(_, r)| r).unwrap_or(l))
        .collect();
    assert_eq!(
        errors,
        [
            "5:60: error: `body` is missing the required property `photoUrls`",
            "5:68: error: `body.name` must be a string, found an integer",
        ],
        "{text}"
    );
}
