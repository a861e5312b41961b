//! What part of its input an expression can read.
//!
//! A webhook flow that reads `.event.body.email` and nothing else of the event has no use for
//! the rest of a 1 KB body as jq values: building them (and dropping them) was the largest
//! share of ingest's CPU after the store. So each expression's source is analysed once, when
//! it compiles, into the object keys it can reach from its input; a flow adds up its
//! expressions, and ingest builds only the parts of the event some expression can read (the
//! stored event is still the text as received).
//!
//! The analysis is conservative: anything it does not follow (a function applied to the
//! input, `..`, a computed key, an assignment) reads the whole value at that point. A key
//! path it records keeps the whole value found there; only objects on the way are pruned, and
//! on a pruned object jq can do nothing but look up a listed key (anything else would have
//! made the analysis keep it whole), so every expression answers as it would on the full
//! value, errors included.

use std::collections::BTreeMap;

use jaq_core::load::lex::StrPart;
use jaq_core::load::parse::{BinaryOp, Pattern, Term};
use jaq_core::path::Part;

/// The parts of a value that may be read: all of it, or only some keys of an object (and of
/// each, what its entry says). `Keys` with no key reads nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reads {
    All,
    Keys(BTreeMap<String, Reads>),
}

impl Default for Reads {
    fn default() -> Self {
        Reads::Keys(BTreeMap::new())
    }
}

impl Reads {
    /// Reads nothing.
    pub fn nothing() -> &'static Reads {
        static NOTHING: Reads = Reads::Keys(BTreeMap::new());
        &NOTHING
    }

    /// What may be read under `key` (of an object read in part), or everything.
    pub fn get(&self, key: &str) -> Option<&Reads> {
        match self {
            Reads::All => Some(&Reads::All),
            Reads::Keys(keys) => keys.get(key),
        }
    }

    /// True when every part may be read.
    pub fn is_all(&self) -> bool {
        matches!(self, Reads::All)
    }

    /// Adds what `other` reads.
    pub fn add(&mut self, other: &Reads) {
        match (&mut *self, other) {
            (Reads::All, _) => {}
            (_, Reads::All) => *self = Reads::All,
            (Reads::Keys(mine), Reads::Keys(theirs)) => {
                for (k, r) in theirs {
                    mine.entry(k.clone()).or_default().add(r);
                }
            }
        }
    }

    /// Adds the whole value at `path` (object keys from this value down).
    fn add_path(&mut self, path: &[&str]) {
        let mut at = self;
        for key in path {
            match at {
                Reads::All => return,
                Reads::Keys(keys) => at = keys.entry((*key).to_owned()).or_default(),
            }
        }
        *at = Reads::All;
    }
}

/// What `src` (a jq expression that compiles) reads of its input. Whatever cannot be
/// analysed reads everything.
pub(super) fn reads(src: &str) -> Reads {
    let Some(term) = jaq_core::load::parse(src, |p| p.term()) else {
        return Reads::All;
    };
    let mut out = Reads::default();
    visit(&term, true, &mut out);
    out
}

/// Records in `out` what `t` reads of the expression's input; `input` tells whether `t`'s own
/// input (`.`) is that input, or a value computed from it (which can only hold what an
/// earlier part read: `.a | length` reads `.a`, and `length` only sees that).
fn visit(t: &Term<&str>, input: bool, out: &mut Reads) {
    let all = |out: &mut Reads| {
        if input {
            *out = Reads::All;
        }
    };
    match t {
        Term::Id | Term::Recurse => all(out),
        Term::Num(_) | Term::Var(_) | Term::Break(_) => {}
        Term::Str(format, parts) => {
            for part in parts {
                if let StrPart::Term(t) = part {
                    visit(t, input, out);
                }
            }
            // `@base64 "…"` formats the interpolated values only; a bare format is a call.
            let _ = format;
        }
        Term::Arr(inner) => {
            if let Some(t) = inner {
                visit(t, input, out);
            }
        }
        Term::Obj(entries) => {
            for (key, value) in entries {
                match (key, value) {
                    // `{$x}`: a variable.
                    (Term::Var(_), None) => {}
                    // `{email}` is `{email: .email}`.
                    (k, None) => match literal(k) {
                        Some(name) if input => out.add_path(&[name]),
                        Some(_) => {}
                        None => all(out),
                    },
                    (k, Some(v)) => {
                        visit(k, input, out);
                        visit(v, input, out);
                    }
                }
            }
        }
        Term::Neg(t) | Term::Label(_, t) => visit(t, input, out),
        Term::BinOp(l, op, r) => match op {
            // `l | r`: `r` sees `l`'s outputs.
            BinaryOp::Pipe(None) => {
                visit(l, input, out);
                visit(r, false, out);
            }
            // `l as $x | r`: both see the input.
            BinaryOp::Pipe(Some(pattern)) => {
                visit(l, input, out);
                visit_pattern(pattern, input, out);
                visit(r, input, out);
            }
            BinaryOp::Comma
            | BinaryOp::Alt
            | BinaryOp::Or
            | BinaryOp::And
            | BinaryOp::Math(_)
            | BinaryOp::Cmp(_) => {
                visit(l, input, out);
                visit(r, input, out);
            }
            // Assignments answer with the whole (updated) input.
            _ => {
                all(out);
                visit(l, input, out);
                visit(r, input, out);
            }
        },
        Term::Fold(_, xs, pattern, args) => {
            visit(xs, input, out);
            visit_pattern(pattern, input, out);
            // The first argument (the start value) sees the input; the others see the
            // accumulator.
            for (i, arg) in args.iter().enumerate() {
                visit(arg, input && i == 0, out);
            }
        }
        Term::TryCatch(body, catch) => {
            visit(body, input, out);
            if let Some(c) = catch {
                visit(c, false, out);
            }
        }
        Term::IfThenElse(branches, otherwise) => {
            for (cond, then) in branches {
                visit(cond, input, out);
                visit(then, input, out);
            }
            match otherwise {
                Some(e) => visit(e, input, out),
                // `if c then x end` answers `.` when `c` is false.
                None => all(out),
            }
        }
        Term::Def(defs, body) => {
            // A definition's body sees what its callers give it; a call on the input reads
            // it all (below), so only the body here matters.
            for d in defs {
                visit(&d.body, false, out);
            }
            visit(body, input, out);
        }
        Term::Call(name, args) => {
            if !ignores_input(name, args.len()) {
                all(out);
            }
            for arg in args {
                visit(arg, input, out);
            }
        }
        Term::Path(head, path) => {
            let mut keys = Vec::new();
            if matches!(**head, Term::Id) {
                for (part, _) in &path.0 {
                    match part {
                        Part::Index(k) => match literal(k) {
                            Some(name) => keys.push(name),
                            None => break,
                        },
                        Part::Range(..) => break,
                    }
                }
                if input {
                    out.add_path(&keys);
                }
            } else {
                visit(head, input, out);
            }
            // Computed indices (`.[.i]`, `.[1:.n]`) see the path's input.
            for (part, _) in &path.0 {
                match part {
                    Part::Index(k) => visit(k, input, out),
                    Part::Range(a, b) => {
                        for t in [a, b].into_iter().flatten() {
                            visit(t, input, out);
                        }
                    }
                }
            }
        }
    }
}

fn visit_pattern(p: &Pattern<&str>, input: bool, out: &mut Reads) {
    match p {
        Pattern::Var(_) => {}
        Pattern::Arr(items) => items.iter().for_each(|p| visit_pattern(p, input, out)),
        Pattern::Obj(entries) => {
            for (key, p) in entries {
                visit(key, input, out);
                visit_pattern(p, input, out);
            }
        }
    }
}

/// The text of a plain string literal (`"email"`, or `email` in `.email` and `{email}`).
fn literal<'a>(t: &Term<&'a str>) -> Option<&'a str> {
    match t {
        Term::Str(None, parts) => match parts.as_slice() {
            [StrPart::Str(s)] => Some(s),
            _ => None,
        },
        _ => None,
    }
}

/// Builtins that produce a value without looking at their input (their arguments are
/// visited on their own).
fn ignores_input(name: &str, arity: usize) -> bool {
    matches!(
        (name, arity),
        (
            "empty" | "null" | "true" | "false" | "now" | "nan" | "infinite",
            0
        ) | ("error", 1)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(paths: &[&[&str]]) -> Reads {
        let mut r = Reads::default();
        for p in paths {
            r.add_path(p);
        }
        r
    }

    #[test]
    fn paths_read_only_their_keys() {
        for (src, want) in [
            (".event.body.email", keys(&[&["event", "body", "email"]])),
            (
                ".event.body.email | ascii_downcase",
                keys(&[&["event", "body", "email"]]),
            ),
            (
                r#".event.body.first_name + " " + .event.body.last_name"#,
                keys(&[
                    &["event", "body", "first_name"],
                    &["event", "body", "last_name"],
                ]),
            ),
            (".steps.contact", keys(&[&["steps", "contact"]])),
            (
                r#".event["body"]."x y"?"#,
                keys(&[&["event", "body", "x y"]]),
            ),
            (
                ".event.body.items[0].sku",
                keys(&[&["event", "body", "items"]]),
            ),
            (".event.body[.event.key]", {
                keys(&[&["event", "body"], &["event", "key"]])
            }),
            ("{sku, qty: .event.n}", keys(&[&["sku"], &["event", "n"]])),
            (
                r#""\(.event.a)-\(.event.b)""#,
                keys(&[&["event", "a"], &["event", "b"]]),
            ),
            (
                ".event.body as $b | $b.x + .steps.s",
                keys(&[&["event", "body"], &["steps", "s"]]),
            ),
            (
                "reduce .event.body.items[] as $i (0; . + $i.qty)",
                keys(&[&["event", "body", "items"]]),
            ),
            (
                "if .event.x then .event.y else 1 end",
                keys(&[&["event", "x"], &["event", "y"]]),
            ),
            ("now | todate", keys(&[])),
            ("1 + 2", keys(&[])),
        ] {
            assert_eq!(reads(src), want, "{src}");
        }
    }

    #[test]
    fn what_is_not_followed_reads_everything() {
        for src in [
            ".",
            "..",
            "tojson",
            "keys",
            "keys, .x",
            "length",
            "@base64",
            ". as $all | $all.event",
            "if .event.x then 1 end",
            ".event.x = 1",
            "def f: .event; f",
            "{(.event.k)}",
            "getpath([\"event\"])",
            "map(.x)",
            "select(.event.x)",
            ".[]",
            "not a jq expression (",
        ] {
            assert_eq!(reads(src), Reads::All, "{src}");
        }
    }

    #[test]
    fn adding_keeps_the_wider_read() {
        let mut r = keys(&[&["event", "body", "email"]]);
        r.add(&keys(&[&["event", "body"]]));
        assert_eq!(r, keys(&[&["event", "body"]]));
        r.add(&keys(&[&["steps", "a"]]));
        assert_eq!(
            r.get("event").and_then(|e| e.get("body")),
            Some(&Reads::All)
        );
        assert_eq!(r.get("run"), None);
        r.add(&Reads::All);
        assert!(r.is_all());
    }
}
