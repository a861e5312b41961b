//! The GraphQL query of a `graphql` step, checked when the flow loads: any bytes that are UTF-8
//! go to `step::graphql::check_document` (the lexer and bracket check), and, written into a
//! flow file as a `|-` block, a single-quoted and a double-quoted string, through the whole
//! loader (`flow::load::check_source`), as `ferry validate` runs it.
//!
//! Must hold: a document or an error, never a panic or hang. An error's offset is a character
//! boundary of the query; an operation's offset is where its `query`/`mutation`/`subscription`
//! or `{` is. Whitespace and comments mean nothing: a leading space moves every offset by one
//! and a trailing comment changes nothing. In a flow file, the error points at the line and
//! column of that offset in the file, however the query is written (the promise of
//! docs/flows.md: "errors point inside the query string, also in a `|` block").

#![no_main]

use libfuzzer_sys::fuzz_target;

use ferry_core::diag::{Diagnostics, Pos};
use ferry_core::flow::load::check_source;
use ferry_core::step::graphql::{Document, SyntaxError, check_document};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let checked = check_document(text);
    match &checked {
        Err(e) => {
            assert!(e.offset <= text.len() && text.is_char_boundary(e.offset), "{e:?}");
            assert!(!e.message.is_empty());
        }
        Ok(doc) => check_operations(text, doc),
    }
    // Ignored tokens are ignored.
    let spaced = check_document(&format!(" {text}"));
    assert_eq!(summary(&spaced, 1), summary(&checked, 0), "after a leading space");
    let commented = check_document(&format!("{text}\n# trailing comment"));
    assert_eq!(summary(&commented, 0), summary(&checked, 0), "after a trailing comment");

    // `{{ }}` in a query is refused before the syntax check; its position is not this one.
    if text.find("{{").is_some_and(|i| text[i..].contains("}}")) {
        return;
    }
    for style in [Style::Block, Style::Single, Style::Double] {
        let Some((flow, start)) = embed(text, style) else {
            continue;
        };
        let diags = check_source("fuzz.yaml", &flow);
        let _ = diags.to_string();
        if diags.0.iter().any(|d| d.message.starts_with("invalid YAML")) {
            panic!("{style:?} embedding is not YAML:\n{flow}\n{diags}");
        }
        match &checked {
            Err(e) => {
                let want = position(text, e.offset, style, start);
                let found = find(&diags, &e.message)
                    .unwrap_or_else(|| panic!("no `{}` in\n{diags}\nfor\n{flow}", e.message));
                assert_eq!(found, want, "{style:?} error at offset {}:\n{flow}\n{diags}", e.offset);
            }
            Ok(doc) => {
                for d in &diags.0 {
                    let known = d.message == "unknown connection `api`"
                        || (d.message.starts_with("the query holds ") && doc.operations.len() > 1)
                        || d.message == "subscriptions are not supported by the graphql step";
                    assert!(known, "a checked query gave `{}`:\n{flow}", d.message);
                }
                if let [op] = doc.operations.as_slice()
                    && op.kind == "subscription"
                {
                    let want = position(text, op.offset, style, start);
                    let found = find(&diags, "subscriptions are not supported by the graphql step");
                    assert_eq!(found, Some(want), "{style:?} subscription:\n{flow}\n{diags}");
                }
            }
        }
    }
});

fn check_operations(text: &str, doc: &Document) {
    for op in &doc.operations {
        assert!(op.offset < text.len() && text.is_char_boundary(op.offset), "{op:?}");
        let at = &text[op.offset..];
        match op.kind {
            "query" if at.starts_with('{') => assert_eq!(op.name, None),
            "query" | "mutation" | "subscription" => assert!(at.starts_with(op.kind), "{op:?}"),
            other => panic!("operation kind `{other}`"),
        }
        for name in op.name.iter().chain(&op.variables) {
            assert!(is_name(name) && text.contains(name.as_str()), "{op:?}");
        }
    }
}

/// What a check found, with offsets moved back by `shift`; hints quote offsets, so they are
/// left out.
fn summary(r: &Result<Document, SyntaxError>, shift: usize) -> Result<Vec<String>, (usize, String)> {
    match r {
        Ok(doc) => Ok(doc
            .operations
            .iter()
            .map(|o| format!("{} {:?} {:?} {}", o.kind, o.name, o.variables, o.offset - shift))
            .collect()),
        Err(e) => Err((e.offset.saturating_sub(shift), e.message.clone())),
    }
}

fn is_name(s: &str) -> bool {
    let mut c = s.chars();
    c.next().is_some_and(|c| c == '_' || c.is_ascii_alphabetic())
        && c.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

#[derive(Debug, Clone, Copy)]
enum Style {
    /// `query: |-` and the query's lines indented by 8.
    Block,
    /// `query: '…'`, `'` doubled.
    Single,
    /// `query: "…"`, `"` and `\` escaped, tabs as `\t`.
    Double,
}

const HEAD: &str = "id: f\ntrigger: manual\nsteps:\n  - id: g\n    graphql:\n      connection: api\n      query: ";
/// The line the query's value starts on (1-based), and the column of `query: ` + 1.
const VALUE_LINE: u32 = 7;
const VALUE_COL: u32 = 14;

/// The query written into a flow, and the position of its first character; `None` when the
/// style cannot carry it exactly (YAML would read back another string).
fn embed(text: &str, style: Style) -> Option<(String, Pos)> {
    // What YAML reads as a line break or refuses, or may strip (a BOM).
    let yaml_safe = |c: char| {
        matches!(c, '\t' | '\n' | ' '..='\u{7E}' | '\u{A0}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
            && !matches!(c, '\u{2028}' | '\u{2029}' | '\u{FEFF}')
    };
    if !text.chars().all(yaml_safe) {
        return None;
    }
    match style {
        Style::Block => {
            let first = text.split('\n').next().unwrap_or("");
            let last = text.rsplit('\n').next().unwrap_or("");
            // The first line sets the block's indentation; `|-` strips trailing blank lines.
            if first.is_empty() || first.starts_with([' ', '\t']) || last.trim().is_empty() {
                return None;
            }
            let mut flow = format!("{HEAD}|-\n");
            for line in text.split('\n') {
                if !line.is_empty() {
                    flow.push_str("        ");
                    flow.push_str(line);
                }
                flow.push('\n');
            }
            Some((flow, Pos { line: VALUE_LINE + 1, col: 9 }))
        }
        // One-line strings only: a quoted string's line breaks fold.
        _ if text.contains(['\n', '\t']) => None,
        Style::Single => Some((
            format!("{HEAD}'{}'\n", text.replace('\'', "''")),
            Pos { line: VALUE_LINE, col: VALUE_COL + 1 },
        )),
        Style::Double => Some((
            format!("{HEAD}\"{}\"\n", text.replace('\\', "\\\\").replace('"', "\\\"")),
            Pos { line: VALUE_LINE, col: VALUE_COL + 1 },
        )),
    }
}

/// Where byte `offset` of the query is in the file: lines and columns counted in the source
/// as written (escapes and doubled quotes take their room).
fn position(text: &str, offset: usize, style: Style, start: Pos) -> Pos {
    let before = &text[..offset];
    let row = before.matches('\n').count() as u32;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let cols: u32 = before[line_start..]
        .chars()
        .map(|c| match (style, c) {
            (Style::Single, '\'') | (Style::Double, '"' | '\\') => 2,
            _ => 1,
        })
        .sum();
    Pos {
        line: start.line + row,
        col: start.col + cols,
    }
}

fn find(diags: &Diagnostics, message: &str) -> Option<Pos> {
    diags.0.iter().find(|d| d.message == message).map(|d| d.pos)
}
