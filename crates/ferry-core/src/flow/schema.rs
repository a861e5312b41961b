//! JSON Schemas for flow and connection files, generated from the config types (their doc
//! comments become descriptions), for editors' completion and checking. The files under
//! `docs/schema/` are these, and a test keeps them in step with the code.

use schemars::SchemaGenerator;
use serde_json::{Value, json};

use super::model::{ConnectionConfig, FlowConfig, StepCommon, TriggerConfig};
use crate::step::STEPS;

/// The schema of a flow file.
pub fn flow_schema() -> Value {
    let mut generator = SchemaGenerator::default();
    let trigger = generator.subschema_for::<TriggerConfig>().to_value();
    let common = generator.root_schema_for::<StepCommon>().to_value();
    let mut properties = common["properties"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    let mut kinds = Vec::new();
    for def in STEPS {
        let mut schema = (def.schema)(&mut generator).to_value();
        if let Some(o) = schema.as_object_mut() {
            o.entry("description")
                .or_insert_with(|| Value::String(def.summary.to_owned()));
        }
        properties.insert(def.kind.to_owned(), schema);
        kinds.push(json!({ "required": [def.kind] }));
    }
    // Control kinds hold steps: they refer to the step schema, kept under `$defs`.
    let step_ref = json!({ "$ref": "#/$defs/Step" });
    for def in crate::flow::control::CONTROLS {
        let mut schema = (def.schema)(&step_ref);
        if let Some(o) = schema.as_object_mut() {
            o.entry("description")
                .or_insert_with(|| Value::String(def.summary.to_owned()));
        }
        properties.insert(def.kind.to_owned(), schema);
        kinds.push(json!({ "required": [def.kind] }));
    }
    let step = json!({
        "type": "object",
        "description": "A step: `id`, the common keys, and exactly one kind key.",
        "properties": properties,
        "required": ["id"],
        "additionalProperties": false,
        "oneOf": kinds,
    });
    let mut root = generator.root_schema_for::<FlowConfig>().to_value();
    root["$id"] = json!("https://ferry.dev/schema/flow.schema.json");
    root["title"] = json!("Ferry flow");
    // `trigger: manual` is the short form of `trigger: { manual: {} }`.
    root["properties"]["trigger"] = json!({ "anyOf": [trigger, { "const": "manual" }] });
    root["$defs"]["Step"] = step;
    root["properties"]["steps"] = json!({ "type": "array", "minItems": 1, "items": step_ref, "description": root["properties"]["steps"]["description"] });
    root
}

/// The schema of a connection file.
pub fn connection_schema() -> Value {
    let mut root = SchemaGenerator::default()
        .into_root_schema_for::<ConnectionConfig>()
        .to_value();
    root["$id"] = json!("https://ferry.dev/schema/connection.schema.json");
    root["title"] = json!("Ferry connection");
    root
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(path: &str, schema: &Value) {
        let full = format!("{}/../../{path}", env!("CARGO_MANIFEST_DIR"));
        let text = serde_json::to_string_pretty(schema).unwrap() + "\n";
        if std::env::var_os("FERRY_UPDATE_SCHEMA").is_some() {
            std::fs::write(&full, &text).unwrap();
        }
        let on_disk = std::fs::read_to_string(&full).unwrap_or_default();
        assert!(
            on_disk == text,
            "{path} is out of date; run `FERRY_UPDATE_SCHEMA=1 cargo test -p ferry-core schema` and commit it"
        );
    }

    #[test]
    fn shipped_schemas_match_the_config_types() {
        check("docs/schema/flow.schema.json", &flow_schema());
        check("docs/schema/connection.schema.json", &connection_schema());
    }

    fn yaml_files(dir: &str) -> Vec<(String, Value)> {
        let dir = format!("{}/../../{dir}", env!("CARGO_MANIFEST_DIR"));
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            let node = crate::flow::node::parse_yaml(&text).unwrap();
            out.push((path.display().to_string(), node.to_json()));
        }
        out
    }

    #[test]
    fn the_examples_satisfy_the_schemas_and_typos_do_not() {
        let flow = jsonschema::validator_for(&flow_schema()).unwrap();
        let conn = jsonschema::validator_for(&connection_schema()).unwrap();
        for (path, doc) in yaml_files("examples/quickstart/flows") {
            let errors: Vec<String> = flow.iter_errors(&doc).map(|e| e.to_string()).collect();
            assert!(errors.is_empty(), "{path}: {errors:?}");
        }
        for (path, doc) in yaml_files("examples/quickstart/connections") {
            let errors: Vec<String> = conn.iter_errors(&doc).map(|e| e.to_string()).collect();
            assert!(errors.is_empty(), "{path}: {errors:?}");
        }
        let typo = json!({"id": "x", "trigger": {"webhook": {"path": "/x"}}, "steps": [{"id": "a", "htpp": {}}]});
        assert!(!flow.is_valid(&typo));
        let two_kinds = json!({"id": "x", "trigger": {"manual": {}}, "steps": [{"id": "a", "map": 1, "filter": "true"}]});
        assert!(!flow.is_valid(&two_kinds));
        let short = json!({"id": "x", "trigger": "manual", "steps": [{"id": "a", "map": 1}]});
        assert!(flow.is_valid(&short));
        let bad_duration = json!({"id": "x", "trigger": {"manual": {}}, "steps": [{"id": "a", "map": 1, "timeout": "soon"}]});
        assert!(!flow.is_valid(&bad_duration));
        // Nested steps are checked as steps.
        let nested = |inner: Value| json!({"id": "x", "trigger": "manual", "steps": [{"id": "s", "switch": {"cases": [{"when": "{{ true }}", "steps": [inner]}]}}]});
        assert!(flow.is_valid(&nested(json!({"id": "a", "delay": "30s"}))));
        assert!(!flow.is_valid(&nested(json!({"id": "a", "htpp": {}}))));
    }
}
