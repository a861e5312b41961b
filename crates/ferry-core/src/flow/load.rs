//! Finding and reading flow and connection files.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::compile::{Flow, compile_connection, compile_flow};
use super::node::parse_yaml;
use crate::connection::Connection;
use crate::diag::{Diagnostic, Diagnostics, Pos};

/// Everything a server or `ferry run` needs: compiled flows and connections.
#[derive(Clone, Default)]
pub struct Project {
    pub dir: PathBuf,
    pub flows: Vec<Arc<Flow>>,
    pub connections: HashMap<String, Arc<Connection>>,
}

impl Project {
    pub fn flow(&self, id: &str) -> Option<&Arc<Flow>> {
        self.flows.iter().find(|f| f.id == id)
    }

    /// Names of the secrets that connections and triggers refer to, sorted, once each.
    pub fn secret_refs(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .connections
            .values()
            .flat_map(|c| c.value_sources())
            .chain(self.flows.iter().flat_map(|f| f.value_sources()))
            .filter_map(|v| match v {
                crate::flow::model::ValueSource::Secret { secret } => Some(secret.clone()),
                _ => None,
            })
            .collect();
        names.sort();
        names.dedup();
        names
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, PartialOrd, Ord)]
enum Kind {
    Connection,
    Flow,
}

/// A file to read, under the name errors should show.
#[derive(Debug)]
struct Source {
    shown: String,
    text: String,
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
                && !is_test_file(p)
        })
        .collect();
    out.sort();
    out
}

/// `NAME.test.yaml`: the cases `ferry test` runs for the flow in `NAME.yaml`, not a flow.
pub fn is_test_file(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.ends_with(".test.yaml") || n.ends_with(".test.yml"))
}

fn shown(p: &Path) -> String {
    p.to_string_lossy().trim_start_matches("./").to_owned()
}

/// Loads `DIR/flows/*.yaml` and `DIR/connections/*.yaml`: all valid, or every error.
pub fn load_project(dir: &Path) -> Result<Project, Diagnostics> {
    let mut files = BTreeMap::new();
    let flows_dir = dir.join("flows");
    let conns_dir = dir.join("connections");
    if !flows_dir.is_dir() {
        let d = Diagnostic::new(
            &shown(dir),
            Pos { line: 1, col: 1 },
            format!("no `flows` folder in `{}`", shown(dir)),
        )
        .hint(
            "a project folder holds flows/*.yaml and connections/*.yaml; see examples/quickstart",
        );
        return Err(Diagnostics(vec![d]));
    }
    for p in yaml_files(&flows_dir) {
        files.insert(p, Kind::Flow);
    }
    for p in yaml_files(&conns_dir) {
        files.insert(p, Kind::Connection);
    }
    let mut project = compile_files(files)?;
    project.dir = dir.to_path_buf();
    Ok(project)
}

/// `ferry validate PATH…`: project folders, flow or connection folders, or single files.
/// Connections beside a flow's folder are loaded so references resolve.
pub fn validate_paths(paths: &[PathBuf]) -> Diagnostics {
    let mut files = BTreeMap::new();
    let mut diags = Diagnostics::default();
    for path in paths {
        if path.is_dir() {
            if path.join("flows").is_dir() || path.join("connections").is_dir() {
                for p in yaml_files(&path.join("flows")) {
                    files.insert(p, Kind::Flow);
                }
                for p in yaml_files(&path.join("connections")) {
                    files.insert(p, Kind::Connection);
                }
            } else {
                for p in yaml_files(path) {
                    let kind = kind_of(&p);
                    files.insert(p, kind);
                }
            }
        } else if path.is_file() {
            files.insert(path.clone(), kind_of(path));
        } else {
            diags.push(
                Diagnostic::new(
                    &shown(path),
                    Pos { line: 1, col: 1 },
                    "no such file or folder",
                )
                .hint("check the path"),
            );
        }
    }
    // A flow in X/flows/ may use connections from X/connections/.
    let siblings: Vec<PathBuf> = files
        .iter()
        .filter(|(_, k)| **k == Kind::Flow)
        .filter_map(|(p, _)| p.parent())
        .filter(|d| d.file_name().is_some_and(|n| n == "flows"))
        .filter_map(|d| d.parent().map(|x| x.join("connections")))
        .collect();
    for dir in siblings {
        for p in yaml_files(&dir) {
            files.entry(p).or_insert(Kind::Connection);
        }
    }
    // A flow checked alone may call the flows beside it: they are loaded so the call
    // resolves, and their own errors are not this check's.
    let context = context_flows(&mut files);
    if let Err(mut d) = compile_files(files) {
        d.0.retain(|d| !context.contains(&d.file));
        diags.extend(d);
    }
    diags.sort();
    diags
}

fn kind_of(p: &Path) -> Kind {
    if p.parent()
        .and_then(|d| d.file_name())
        .is_some_and(|n| n == "connections")
    {
        return Kind::Connection;
    }
    match std::fs::read_to_string(p) {
        Ok(text) if text.lines().any(|l| l.starts_with("base_url:")) => Kind::Connection,
        _ => Kind::Flow,
    }
}

fn compile_files(files: BTreeMap<PathBuf, Kind>) -> Result<Project, Diagnostics> {
    let mut diags = Diagnostics::default();
    let mut sources: Vec<(Kind, Source)> = Vec::new();
    for (path, kind) in files {
        match std::fs::read_to_string(&path) {
            Ok(text) => sources.push((
                kind,
                Source {
                    shown: shown(&path),
                    text,
                },
            )),
            Err(e) => diags.push(Diagnostic::new(
                &shown(&path),
                Pos { line: 1, col: 1 },
                format!("cannot read file: {e}"),
            )),
        }
    }
    sources.sort_by_key(|(k, _)| *k);

    let mut project = Project::default();
    let mut conn_files: HashMap<String, String> = HashMap::new();
    // Ids of connection files that have errors: a flow naming one is not told it is unknown.
    let mut broken_connections: Vec<String> = Vec::new();
    let mut flow_files: HashMap<String, String> = HashMap::new();
    let mut webhook_paths: HashMap<String, String> = HashMap::new();
    // Ids of flow files that have errors: a `call` naming one is not told it is unknown.
    let mut broken_flows: Vec<String> = Vec::new();
    for (kind, src) in &sources {
        let node = match parse_yaml(&src.text) {
            Ok(n) => n,
            Err(e) => {
                diags.push(
                    Diagnostic::new(&src.shown, e.pos, format!("invalid YAML: {}", e.message))
                        .hint("check indentation and quoting near here"),
                );
                continue;
            }
        };
        match kind {
            Kind::Connection => {
                if let Some((conn, pos)) = compile_connection(&src.shown, &node, &mut diags) {
                    if let Some(first) = conn_files.insert(conn.id.clone(), src.shown.clone()) {
                        diags.push(
                            Diagnostic::new(
                                &src.shown,
                                pos,
                                format!("connection id `{}` is already used", conn.id),
                            )
                            .hint(format!("first defined in {first}; ids must be unique")),
                        );
                        continue;
                    }
                    project.connections.insert(conn.id.clone(), Arc::new(conn));
                } else if let Some(id) = node.get("id").and_then(|n| n.as_str()) {
                    broken_connections.push(id.to_owned());
                }
            }
            Kind::Flow => {
                if let Some((flow, pos)) = compile_flow(
                    &src.shown,
                    &src.text,
                    &node,
                    &project.connections,
                    &broken_connections,
                    &mut diags,
                ) {
                    if let Some(first) = flow_files.insert(flow.id.clone(), src.shown.clone()) {
                        diags.push(
                            Diagnostic::new(
                                &src.shown,
                                pos,
                                format!("flow id `{}` is already used", flow.id),
                            )
                            .hint(format!("first defined in {first}; ids must be unique")),
                        );
                        continue;
                    }
                    if let Some(wh) = flow.webhook() {
                        // `/stock/{sku}` and `/stock/{id}` are the same route.
                        let route: Vec<&str> = wh
                            .path
                            .split('/')
                            .map(|s| if s.starts_with('{') { "{}" } else { s })
                            .collect();
                        let key = format!("{} {}", wh.method, route.join("/"));
                        if let Some(first) = webhook_paths.insert(key.clone(), src.shown.clone()) {
                            diags.push(
                                Diagnostic::new(
                                    &src.shown,
                                    wh.pos,
                                    format!("webhook `{key}` is already taken"),
                                )
                                .hint(format!(
                                    "by the flow in {first}; give each webhook its own path"
                                )),
                            );
                            continue;
                        }
                    }
                    project.flows.push(Arc::new(flow));
                } else if let Some(id) = node.get("id").and_then(|n| n.as_str()) {
                    broken_flows.push(id.to_owned());
                }
            }
        }
    }
    check_calls(&project, &broken_flows, &mut diags);
    if diags.is_empty() {
        Ok(project)
    } else {
        diags.sort();
        Err(diags)
    }
}

/// Every `call` names a loaded flow with a `flow` trigger, and no flow calls itself, directly
/// or through others (a cycle seen here would only end at the run-time depth limit).
fn check_calls(project: &Project, broken_flows: &[String], diags: &mut Diagnostics) {
    use super::compile::Trigger;
    for flow in &project.flows {
        for call in flow.calls() {
            match project.flow(&call.flow) {
                Some(callee) if matches!(callee.trigger, Trigger::Flow(_)) => {}
                Some(callee) => diags.push(
                    Diagnostic::new(
                        &flow.file,
                        call.pos,
                        format!("flow `{}` cannot be called: its trigger is not `flow`", call.flow),
                    )
                    .hint(format!(
                        "give {} `trigger: {{ flow: {{}} }}` (its input is `.event.body`, its `output:` the result)",
                        callee.file
                    )),
                ),
                None if broken_flows.contains(&call.flow) => {}
                None => {
                    let known: Vec<&str> = project.flows.iter().map(|f| f.id.as_str()).collect();
                    let mut d = Diagnostic::new(
                        &flow.file,
                        call.pos,
                        format!("no flow `{}` to call", call.flow),
                    );
                    d = match crate::diag::did_you_mean(&call.flow, known.iter().copied()) {
                        Some(s) => d.hint(format!("did you mean `{s}`?")),
                        None => d.hint("the id of a flow in the project with `trigger: { flow: {} }`"),
                    };
                    diags.push(d);
                }
            }
        }
    }
    // Cycles: a depth-first walk from every flow; a call back to a flow on the walk's path
    // is reported at that call, with the path.
    fn visit<'a>(
        project: &'a Project,
        id: &'a str,
        path: &mut Vec<&'a str>,
        done: &mut std::collections::HashSet<&'a str>,
        diags: &mut Diagnostics,
    ) {
        if done.contains(id) {
            return;
        }
        let Some(flow) = project.flow(id) else {
            return;
        };
        path.push(id);
        for call in flow.calls() {
            if let Some(at) = path.iter().position(|p| *p == call.flow) {
                let cycle: Vec<&str> = path[at..]
                    .iter()
                    .copied()
                    .chain([call.flow.as_str()])
                    .collect();
                diags.push(
                    Diagnostic::new(
                        &flow.file,
                        call.pos,
                        format!("flows call each other in a cycle: {}", cycle.join(" → ")),
                    )
                    .hint("a called flow must not call back into its callers; move the shared steps into a flow of their own"),
                );
            } else {
                visit(project, &call.flow, path, done, diags);
            }
        }
        path.pop();
        done.insert(id);
    }
    let mut done = std::collections::HashSet::new();
    for flow in &project.flows {
        visit(project, &flow.id, &mut Vec::new(), &mut done, diags);
    }
}

/// One flow file plus the connections in `conns_dir` (for `ferry run`).
pub fn load_files(flow: &Path, conns_dir: &Path) -> Result<Project, Diagnostics> {
    let mut files = BTreeMap::new();
    files.insert(flow.to_path_buf(), Kind::Flow);
    for p in yaml_files(conns_dir) {
        files.insert(p, Kind::Connection);
    }
    let context = context_flows(&mut files);
    compile_files(files).map_err(|mut d| {
        d.0.retain(|d| !context.contains(&d.file));
        d
    })
}

/// Adds the flow files beside each single flow file in `files` (the flows it may `call`),
/// returning their shown names. Test files (`NAME.test.yaml`) are not flows.
fn context_flows(files: &mut BTreeMap<PathBuf, Kind>) -> std::collections::HashSet<String> {
    let dirs: std::collections::BTreeSet<PathBuf> = files
        .iter()
        .filter(|(_, k)| **k == Kind::Flow)
        .filter(|(p, _)| std::fs::read_to_string(p).is_ok_and(|t| t.contains("call:")))
        .filter_map(|(p, _)| p.parent().map(Path::to_path_buf))
        .collect();
    let mut added = std::collections::HashSet::new();
    for dir in dirs {
        for p in yaml_files(&dir) {
            if !files.contains_key(&p) && kind_of(&p) == Kind::Flow {
                added.insert(shown(&p));
                files.insert(p, Kind::Flow);
            }
        }
    }
    added
}

/// Checks one file's text as a flow (or, when it has a top-level `base_url:`, a
/// connection), with no other files: the entry point for fuzzing the loader.
pub fn check_source(file: &str, text: &str) -> Diagnostics {
    let mut diags = Diagnostics::default();
    let node = match parse_yaml(text) {
        Ok(n) => n,
        Err(e) => {
            diags.push(Diagnostic::new(
                file,
                e.pos,
                format!("invalid YAML: {}", e.message),
            ));
            return diags;
        }
    };
    if text.lines().any(|l| l.starts_with("base_url:")) {
        let _ = compile_connection(file, &node, &mut diags);
    } else {
        let _ = compile_flow(file, text, &node, &HashMap::new(), &[], &mut diags);
    }
    diags
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const FLOW: &str = "id: f\ntrigger: { webhook: { path: /h, dedupe: '{{ .event.headers.id }}' } }\nsteps:\n  - id: m\n    map: { a: '{{ .event.body.x | ascii_downcase }}' }\n  - id: g\n    filter: '.steps.m.a != null'\n";

    proptest! {
        // Whatever the file holds, checking it ends with a result, never a panic.
        #[test]
        fn any_text_is_checked_without_panic(text in "\\PC{0,300}") {
            let _ = check_source("f.yaml", &text);
        }

        // A valid flow with one character changed anywhere: still no panic, and every
        // diagnostic points inside the file.
        #[test]
        fn mutated_flows_get_located_diagnostics(at in 0usize..FLOW.len(), ch in proptest::char::any()) {
            let mut text = FLOW.to_owned();
            if text.is_char_boundary(at) {
                text.insert(at, ch);
            }
            let lines = text.lines().count() as u32 + 1;
            for d in check_source("f.yaml", &text).0 {
                prop_assert!(d.pos.line <= lines, "{d} beyond line {lines}");
            }
        }

        #[test]
        fn any_template_compiles_or_is_refused_without_panic(text in "\\PC{0,120}") {
            if let Ok(t) = crate::expr::Template::compile_str(&text)
                && t.is_bounded()
            {
                let ctx = crate::expr::json_to_val(&serde_json::json!({"event": {"body": {"x": "A"}}}));
                let _ = t.render(&ctx);
            }
        }
    }

    /// Ingest builds only what a flow's expressions read of the event: every expression
    /// counts, the trigger's `dedupe:`, `if:` and steps after the first call included.
    #[test]
    fn a_flow_reads_what_any_of_its_expressions_reads() {
        let text = "id: f\ntrigger: { webhook: { path: /h, dedupe: '{{ .event.headers.id }}' } }\nsteps:\n  - id: m\n    map: { a: '{{ .event.body.x | ascii_downcase }}' }\n  - id: l\n    if: '.event.query.go'\n    log: 'later {{ .event.body.y.z }}'\n";
        let node = parse_yaml(text).unwrap();
        let mut diags = Diagnostics::default();
        let (flow, _) =
            compile_flow("f.yaml", text, &node, &HashMap::new(), &[], &mut diags).unwrap();
        let mut want = crate::expr::Reads::default();
        for src in [".headers.id", ".body.x", ".query.go", ".body.y.z"] {
            want.add(crate::expr::Expr::compile(src).unwrap().reads());
        }
        assert_eq!(flow.event_reads, want);
        // One expression that reads the whole event makes the flow read all of it.
        let text = text.replace(".event.body.y.z", ".event | tojson");
        let node = parse_yaml(&text).unwrap();
        let (flow, _) =
            compile_flow("f.yaml", &text, &node, &HashMap::new(), &[], &mut diags).unwrap();
        assert!(flow.event_reads.is_all());
    }

    #[test]
    fn the_unchanged_flow_is_valid() {
        assert!(
            check_source("f.yaml", FLOW).is_empty(),
            "{}",
            check_source("f.yaml", FLOW)
        );
    }
}
