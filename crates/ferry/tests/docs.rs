//! Keeps the documentation's examples honest: every complete flow or connection written in
//! README.md or docs/**/*.md must pass `ferry validate`.
//!
//! A fenced block is tested when its info string is exactly `yaml` and it has a top-level
//! `id:` line. A block with a top-level `base_url:` line is a connection; one with a top-level
//! `trigger:` line is a flow. All tested blocks of one Markdown file form one project (so a
//! flow may use a connection shown earlier in the same file), validated with one run of the
//! real binary. Blocks meant to be wrong or incomplete use `yaml-invalid` or `yaml-partial`;
//! a block that elides part of itself with a `# …` comment line is partial too.
//!
//! A block whose info string is `LANG file=PATH` (for example a WSDL, ```` ```xml
//! file=wsdl/warehouse.wsdl ````) is written to PATH in that project, for the flows that read it.

use std::path::{Path, PathBuf};
use std::process::Command;

/// One tested block: where it was written and what it holds.
struct Block {
    line: usize,
    text: String,
    connection: bool,
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the repository root exists")
}

fn markdown_files(root: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "md") {
                out.push(path);
            }
        }
    }
    let mut out = vec![root.join("README.md")];
    let mut docs = Vec::new();
    walk(&root.join("docs"), &mut docs);
    docs.sort();
    out.extend(docs);
    out
}

/// Blocks fenced as ```` ```LANG file=PATH ````: `(PATH, text)`.
fn project_files(markdown: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut open: Option<(String, String)> = None;
    for line in markdown.lines() {
        match &mut open {
            None => {
                if let Some(info) = line.trim_start().strip_prefix("```")
                    && let Some((_, path)) = info.split_once(" file=")
                {
                    open = Some((path.trim().to_owned(), String::new()));
                }
            }
            Some((path, text)) => {
                if line.trim_start().starts_with("```") {
                    out.push((std::mem::take(path), std::mem::take(text)));
                    open = None;
                } else {
                    text.push_str(line);
                    text.push('\n');
                }
            }
        }
    }
    out
}

fn top_level(text: &str, key: &str) -> bool {
    text.lines().any(|l| {
        l.strip_prefix(key)
            .is_some_and(|rest| rest.starts_with(':'))
    })
}

/// A fence being read: where it opened, its backticks, indent and info string, its text.
struct Open {
    line: usize,
    fence: String,
    indent: usize,
    info: String,
    text: String,
}

/// The tested blocks of one Markdown text, with the line of their opening fence.
fn blocks(markdown: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut open: Option<Open> = None;
    for (i, line) in markdown.lines().enumerate() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        match &mut open {
            None => {
                let ticks = trimmed.chars().take_while(|&c| c == '`').count();
                if ticks >= 3 {
                    open = Some(Open {
                        line: i + 1,
                        fence: "`".repeat(ticks),
                        indent,
                        info: trimmed[ticks..].trim().to_owned(),
                        text: String::new(),
                    });
                }
            }
            Some(o) if trimmed.trim_end() == o.fence => {
                // An elided block (`# …`) is partial by its own word.
                let partial = o.text.lines().any(|l| l.trim_start().starts_with("# …"));
                if o.info == "yaml" && top_level(&o.text, "id") && !partial {
                    out.push(Block {
                        line: o.line,
                        connection: top_level(&o.text, "base_url"),
                        text: std::mem::take(&mut o.text),
                    });
                }
                open = None;
            }
            Some(o) => {
                // A fence inside a list item is indented, and so is its text.
                o.text.push_str(&line[indent.min(o.indent)..]);
                o.text.push('\n');
            }
        }
    }
    out
}

#[test]
fn every_yaml_example_in_the_docs_validates() {
    let root = repo_root();
    let ferry = env!("CARGO_BIN_EXE_ferry");
    let mut failures = Vec::new();
    let mut tested = 0;
    for file in markdown_files(&root) {
        let shown = file
            .strip_prefix(&root)
            .unwrap_or(&file)
            .display()
            .to_string();
        let markdown =
            std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("cannot read {shown}: {e}"));
        let blocks = blocks(&markdown);
        if blocks.is_empty() {
            continue;
        }
        let project = tempfile::tempdir().expect("a temporary folder");
        for (path, text) in project_files(&markdown) {
            let full = project.path().join(&path);
            std::fs::create_dir_all(full.parent().expect("a file in a folder"))
                .expect("create the project folder");
            std::fs::write(full, text).expect("write the file");
        }
        let mut map = Vec::new();
        for (n, block) in blocks.iter().enumerate() {
            let folder = if block.connection {
                "connections"
            } else {
                "flows"
            };
            let dir = project.path().join(folder);
            std::fs::create_dir_all(&dir).expect("create the project folder");
            let name = format!("{folder}/{:02}-line{}.yaml", n + 1, block.line);
            std::fs::write(project.path().join(&name), &block.text).expect("write the example");
            map.push(format!("  {name} = {shown}:{}", block.line));
        }
        tested += blocks.len();
        let out = Command::new(ferry)
            .arg("validate")
            .arg(project.path())
            .output()
            .expect("run ferry validate");
        if out.status.code() != Some(0) {
            failures.push(format!(
                "{shown}: `ferry validate` exited {:?}\n{}{}files:\n{}",
                out.status.code(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                map.join("\n"),
            ));
        }
    }
    assert!(
        tested >= 10,
        "only {tested} examples found; is the extractor still finding the docs' blocks?"
    );
    assert!(
        failures.is_empty(),
        "examples that do not validate (mark deliberate ones `yaml-invalid` or `yaml-partial`):\n\n{}",
        failures.join("\n\n")
    );
}

#[test]
fn the_extractor_keeps_complete_yaml_blocks_only() {
    let md = "\
```yaml
id: c
base_url: https://x.example
```
```yaml-partial
id: p
trigger: { manual: {} }
```
```yaml
- id: step-only
  log: hi
```
```yaml
id: f
trigger: { manual: {} }
steps:
  - id: s
    log: hi
  # … more steps
```
```json
{\"id\": 1}
```
````yaml
id: g
trigger: { manual: {} }
steps: [{ id: s, log: '```' }]
````
";
    let found = blocks(md);
    let ids: Vec<(usize, bool)> = found.iter().map(|b| (b.line, b.connection)).collect();
    assert_eq!(ids, vec![(1, true), (24, false)]);
    assert!(found[1].text.contains("log: '```'"));
}

/// The step kinds `docs/flows.md` lists: the rows of the table under `## Step kinds`, and the
/// links of its table of contents.
fn documented_kinds(flows_md: &str) -> (Vec<String>, Vec<String>) {
    let kind_of = |cell: &str| {
        cell.trim()
            .strip_prefix("[`")
            .and_then(|r| r.split_once('`'))
            .map(|(k, _)| k.to_owned())
    };
    let mut table = Vec::new();
    let mut lines = flows_md.lines().skip_while(|l| *l != "## Step kinds");
    lines.next();
    for line in lines.skip_while(|l| !l.starts_with('|')) {
        let Some(row) = line.strip_prefix('|') else {
            break;
        };
        if let Some(k) = row.split('|').next().and_then(kind_of) {
            table.push(k);
        }
    }
    let toc = flows_md
        .lines()
        .find_map(|l| l.strip_prefix("- [Step kinds](#step-kinds): "))
        .expect("a table-of-contents line for the step kinds")
        .split(", ")
        .filter_map(kind_of)
        .collect();
    (table, toc)
}

#[test]
fn docs_list_every_step_kind_and_no_other() {
    let text = std::fs::read_to_string(repo_root().join("docs/flows.md")).unwrap();
    let mut registry: Vec<String> = ferry_core::step::kinds().map(str::to_owned).collect();
    registry.sort();
    let (mut table, mut toc) = documented_kinds(&text);
    table.sort();
    toc.sort();
    assert_eq!(
        table, registry,
        "the table under `## Step kinds` in docs/flows.md"
    );
    assert_eq!(
        toc, registry,
        "the step kinds in the contents of docs/flows.md"
    );
}

#[test]
fn docs_name_every_reserved_path() {
    let text = std::fs::read_to_string(repo_root().join("docs/flows.md")).unwrap();
    let rule = text
        .lines()
        .skip_while(|l| !l.contains("are served by Ferry itself"))
        .take_while(|l| !l.is_empty() && !l.starts_with("- Two flows"))
        .collect::<Vec<_>>()
        .join(" ");
    for p in ferry_core::server::reserved_prefixes() {
        assert!(
            rule.contains(&format!("`{p}`")),
            "docs/flows.md does not name the reserved path `{p}`: {rule}"
        );
    }
    for p in ferry_core::server::SERVED_PREFIXES {
        let served = rule.split("are served").next().unwrap_or("");
        assert!(
            served.contains(&format!("`{p}`")),
            "`{p}` is served: {rule}"
        );
    }
}
