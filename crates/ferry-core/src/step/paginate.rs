//! `paginate:` of the `http` step: the settings, and the pure logic of one paginated listing —
//! where the next page is, where a page's items are, and when to stop.
//!
//! Owns no I/O: the `http` step sends each page through `call::send` and asks
//! [`Paginate::next`] what to fetch after it. Four ways of finding the next page, exactly one
//! per step:
//!
//! - `link: next`: the RFC 8288 `Link` header's `rel="next"` URL (GitHub, GitLab, Shopify).
//! - `cursor: { param, next }`: a cursor or next-token read from each page with a jq
//!   expression, sent back as a query parameter (Stripe, Slack, most GraphQL-ish REST).
//! - `page: { param, start }`: a page number, from `start` (default 1) up.
//! - `offset: { param, limit_param, limit }`: an offset advanced by the items received.
//!
//! A `Link` URL must stay on the host the listing started on (for a connection: its
//! `base_url`'s host), so a page cannot send the connection's credentials elsewhere.

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value as Json;

use super::CompileCx;
use crate::expr::Expr;
use crate::flow::node::{Node, Spanned};

/// Pages fetched at most when `max_pages` is not set.
pub(super) const DEFAULT_MAX_PAGES: u64 = 100;
/// The largest `max_pages` accepted: one attempt of a step is one run's work, and every page
/// is kept in memory and stored with the run (a bigger export belongs in several runs).
pub(super) const MAX_MAX_PAGES: u64 = 10_000;

/// How to fetch every page of a listing (`http` step). Give exactly one of `link`, `cursor`,
/// `page`, `offset`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct PaginateConfig {
    /// `next`: follow the `Link` header's `rel="next"` URL (RFC 8288) until there is none.
    #[serde(default)]
    link: Option<Spanned<String>>,
    /// A cursor taken from each page and sent back as a query parameter, until it is
    /// null or empty.
    #[serde(default)]
    cursor: Option<CursorConfig>,
    /// A page number query parameter, counting up until a page has no items.
    #[serde(default)]
    page: Option<PageConfig>,
    /// An offset query parameter advanced by the items received, until a page has fewer
    /// than `limit` items.
    #[serde(default)]
    offset: Option<OffsetConfig>,
    /// jq expression for a page's items, seeing the step context plus
    /// `.page = {status, headers, body}`, e.g. `.page.body.data`. Default: the body itself,
    /// which must then be a list. `null` counts as no items.
    #[serde(default)]
    items: Option<Spanned<String>>,
    /// Pages fetched at most (default 100). Reaching it ends the listing normally, with
    /// `.truncated: true` when there was a next page.
    #[serde(default)]
    max_pages: Option<Spanned<i64>>,
    /// Items kept at most (default: no limit besides `max_pages`). Reaching it ends the
    /// listing normally, with `.truncated: true`.
    #[serde(default)]
    max_items: Option<Spanned<i64>>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct CursorConfig {
    /// The query parameter that carries the cursor, e.g. `starting_after`.
    param: Spanned<String>,
    /// jq expression for the next cursor, seeing `.page = {status, headers, body}`, e.g.
    /// `.page.body.next_cursor`; null, `false` or `""` ends the listing.
    next: Spanned<String>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct PageConfig {
    /// The query parameter that carries the page number, e.g. `page`.
    param: Spanned<String>,
    /// The first page's number (default 1).
    #[serde(default)]
    start: Option<i64>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct OffsetConfig {
    /// The query parameter that carries the offset, e.g. `offset`.
    param: Spanned<String>,
    /// The query parameter that carries the page size, e.g. `limit`.
    limit_param: Spanned<String>,
    /// The page size asked for; a page with fewer items is the last.
    limit: Spanned<i64>,
}

/// Where the next page is.
#[derive(Debug)]
pub(super) enum Style {
    Link,
    Cursor {
        param: String,
        next: Expr,
    },
    Page {
        param: String,
        start: u64,
    },
    Offset {
        param: String,
        limit_param: String,
        limit: u64,
    },
}

/// A compiled `paginate:`.
#[derive(Debug)]
pub(super) struct Paginate {
    pub(super) style: Style,
    pub(super) items: Option<Expr>,
    pub(super) max_pages: u64,
    pub(super) max_items: Option<u64>,
}

/// What one page said, as far as pagination cares.
pub(super) struct PageSeen<'a> {
    /// The URL this page was fetched from.
    pub(super) url: &'a reqwest::Url,
    /// The `Link` header, if any.
    pub(super) link: Option<&'a str>,
    /// How many items the page held.
    pub(super) items: usize,
    /// The `cursor.next` value (cursor style only).
    pub(super) cursor: Option<&'a Json>,
}

/// What to do after a page.
#[derive(Debug, PartialEq)]
pub(super) enum Next {
    Fetch(reqwest::Url),
    /// The listing is complete.
    Done,
    /// A bound ended the listing while the API had more.
    Truncated,
}

pub(super) fn compile(node: &Node, cx: &mut CompileCx) -> Option<Paginate> {
    let c: PaginateConfig = cx.parse(node)?;
    let mut ok = true;
    let given: Vec<&str> = [
        ("link", c.link.is_some()),
        ("cursor", c.cursor.is_some()),
        ("page", c.page.is_some()),
        ("offset", c.offset.is_some()),
    ]
    .into_iter()
    .filter_map(|(k, set)| set.then_some(k))
    .collect();
    if given.len() != 1 {
        let message = match given.as_slice() {
            [] => "`paginate` needs one of `link`, `cursor`, `page`, `offset`".to_owned(),
            _ => format!(
                "`paginate` takes one way of finding the next page, got {}",
                given
                    .iter()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(" and ")
            ),
        };
        cx.error(
            node.pos,
            message,
            Some("e.g. `paginate: { link: next }` or `paginate: { cursor: { param: after, next: .page.body.next } }`".into()),
        );
        return None;
    }
    let positive = |v: &Spanned<i64>, name: &str, cx: &mut CompileCx| -> Option<u64> {
        if v.value < 1 {
            cx.error(
                v.pos,
                format!("`{name}` must be at least 1, got {}", v.value),
                Some("give a number of 1 or more".into()),
            );
            return None;
        }
        Some(v.value as u64)
    };
    let max_pages = match &c.max_pages {
        Some(v) if v.value > MAX_MAX_PAGES as i64 => {
            cx.error(
                v.pos,
                format!("`max_pages` is at most {MAX_MAX_PAGES}, got {}", v.value),
                Some("every page is held in memory and stored with the run; split a bigger export into several runs".into()),
            );
            None
        }
        Some(v) => positive(v, "max_pages", cx),
        None => Some(DEFAULT_MAX_PAGES),
    };
    let max_items = match &c.max_items {
        Some(v) => positive(v, "max_items", cx).map(Some),
        None => Some(None),
    };
    ok &= max_pages.is_some() && max_items.is_some();
    let style = if let Some(l) = &c.link {
        if l.value != "next" {
            cx.error(
                l.pos,
                format!("unknown link relation `{}`", l.value),
                Some("`link: next` follows the `Link` header's rel=\"next\"".into()),
            );
            ok = false;
        }
        Some(Style::Link)
    } else if let Some(cur) = &c.cursor {
        let next = cx.expr(&cur.next);
        ok &= next.is_some() && param_ok(&cur.param, cx);
        next.map(|next| Style::Cursor {
            param: cur.param.value.clone(),
            next,
        })
    } else if let Some(p) = &c.page {
        ok &= param_ok(&p.param, cx);
        if let Some(s) = p.start
            && s < 0
        {
            cx.error(
                p.param.pos,
                format!("`page.start` must not be negative, got {s}"),
                None,
            );
            ok = false;
        }
        Some(Style::Page {
            param: p.param.value.clone(),
            start: p.start.unwrap_or(1).max(0) as u64,
        })
    } else if let Some(o) = &c.offset {
        ok &= param_ok(&o.param, cx) && param_ok(&o.limit_param, cx);
        let limit = positive(&o.limit, "offset.limit", cx);
        ok &= limit.is_some();
        Some(Style::Offset {
            param: o.param.value.clone(),
            limit_param: o.limit_param.value.clone(),
            limit: limit.unwrap_or(1),
        })
    } else {
        None
    };
    let items = match &c.items {
        Some(s) => {
            let e = cx.expr(s);
            ok &= e.is_some();
            e
        }
        None => None,
    };
    if !ok {
        return None;
    }
    Some(Paginate {
        style: style?,
        items,
        max_pages: max_pages?,
        max_items: max_items?,
    })
}

fn param_ok(p: &Spanned<String>, cx: &mut CompileCx) -> bool {
    if p.value.trim().is_empty() {
        cx.error(
            p.pos,
            "a query parameter name must not be empty",
            Some("e.g. `param: page`".into()),
        );
        return false;
    }
    true
}

impl Paginate {
    /// True when the expressions run in time proportional to their input.
    pub(super) fn is_bounded(&self) -> bool {
        self.items.as_ref().is_none_or(Expr::is_bounded)
            && match &self.style {
                Style::Cursor { next, .. } => next.is_bounded(),
                _ => true,
            }
    }

    /// The first page's URL: the step's URL with the page or offset parameters set.
    pub(super) fn first(&self, url: &reqwest::Url) -> reqwest::Url {
        let mut url = url.clone();
        match &self.style {
            Style::Link | Style::Cursor { .. } => {}
            Style::Page { param, start } => set_param(&mut url, param, &start.to_string()),
            Style::Offset {
                param,
                limit_param,
                limit,
            } => {
                set_param(&mut url, param, "0");
                set_param(&mut url, limit_param, &limit.to_string());
            }
        }
        url
    }

    /// What to fetch after `page`, the `pages`-th page fetched, with `kept` items kept so far
    /// (after `max_items`). `pin` is the URL whose scheme, host and port a `Link` URL must
    /// keep.
    pub(super) fn next(
        &self,
        page: &PageSeen<'_>,
        pages: u64,
        kept: u64,
        pin: &reqwest::Url,
    ) -> Result<Next, String> {
        let next = match &self.style {
            Style::Link => match page.link.and_then(|h| link_next(h, page.url)) {
                None => return Ok(Next::Done),
                Some(Err(e)) => return Err(e),
                Some(Ok(url)) => {
                    if !same_origin(&url, pin) {
                        return Err(format!(
                            "the `Link` next page `{}` is on another host than `{}`; Ferry only follows links on the listing's own host",
                            super::call::redact_url(&url),
                            origin(pin)
                        ));
                    }
                    url
                }
            },
            Style::Cursor { param, .. } => match page.cursor {
                None | Some(Json::Null | Json::Bool(false)) => return Ok(Next::Done),
                Some(Json::String(s)) if s.is_empty() => return Ok(Next::Done),
                Some(v) => {
                    let cursor = super::call::scalar_text(v);
                    // An API that hands back the cursor it was given would be fetched
                    // `max_pages` times for the same page: say so instead.
                    if current_param(page.url, param).as_deref() == Some(cursor.as_str()) {
                        return Err(format!(
                            "the API answered `{param}={cursor}` with the same cursor again; check `cursor.next`"
                        ));
                    }
                    let mut url = page.url.clone();
                    set_param(&mut url, param, &cursor);
                    url
                }
            },
            Style::Page { param, start } => {
                if page.items == 0 {
                    return Ok(Next::Done);
                }
                let mut url = page.url.clone();
                set_param(&mut url, param, &(start + pages).to_string());
                url
            }
            Style::Offset {
                param,
                limit_param,
                limit,
            } => {
                if (page.items as u64) < *limit {
                    return Ok(Next::Done);
                }
                let offset = current_param(page.url, param)
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
                    + page.items as u64;
                let mut url = page.url.clone();
                set_param(&mut url, param, &offset.to_string());
                set_param(&mut url, limit_param, &limit.to_string());
                url
            }
        };
        if pages >= self.max_pages || self.max_items.is_some_and(|m| kept >= m) {
            return Ok(Next::Truncated);
        }
        Ok(Next::Fetch(next))
    }
}

/// The `rel="next"` target of a `Link` header, resolved against the page's URL; `None` when
/// there is none, an error when it is not a usable http(s) URL. Public for the `link_header`
/// fuzz target.
pub fn link_next(header: &str, base: &reqwest::Url) -> Option<Result<reqwest::Url, String>> {
    for link in split_links(header) {
        let link = link.trim();
        let Some(rest) = link.strip_prefix('<') else {
            continue;
        };
        let Some(end) = rest.find('>') else { continue };
        let target = &rest[..end];
        let is_next = rest[end + 1..].split(';').any(|param| {
            let Some((k, v)) = param.split_once('=') else {
                return false;
            };
            k.trim().eq_ignore_ascii_case("rel")
                && v.trim()
                    .trim_matches('"')
                    .split_ascii_whitespace()
                    .any(|r| r.eq_ignore_ascii_case("next"))
        });
        if !is_next {
            continue;
        }
        return Some(match base.join(target) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => Ok(u),
            Ok(u) => Err(format!(
                "the `Link` next page has scheme `{}`; expected http or https",
                u.scheme()
            )),
            Err(e) => Err(format!("the `Link` next page `{target}` is not a URL: {e}")),
        });
    }
    None
}

/// Splits a `Link` header at the commas between links (not those inside `<…>` or quotes).
fn split_links(header: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut in_url, mut in_quote) = (0, false, false);
    for (i, c) in header.char_indices() {
        match c {
            '<' if !in_quote => in_url = true,
            '>' if !in_quote => in_url = false,
            '"' if !in_url => in_quote = !in_quote,
            ',' if !in_url && !in_quote => {
                out.push(&header[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&header[start..]);
    out
}

fn same_origin(a: &reqwest::Url, b: &reqwest::Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
}

fn origin(u: &reqwest::Url) -> String {
    u.origin().ascii_serialization()
}

/// Sets query parameter `name` to `value`: in place when the URL has it (once), else at the
/// end; the other parameters keep their order.
pub(super) fn set_param(url: &mut reqwest::Url, name: &str, value: &str) {
    let mut set = false;
    let pairs: Vec<(String, String)> = url
        .query_pairs()
        .filter_map(|(k, v)| match (k == name, set) {
            (true, true) => None,
            (true, false) => {
                set = true;
                Some((k.into_owned(), value.to_owned()))
            }
            (false, _) => Some((k.into_owned(), v.into_owned())),
        })
        .collect();
    let mut q = url.query_pairs_mut();
    q.clear();
    for (k, v) in &pairs {
        q.append_pair(k, v);
    }
    if !set {
        q.append_pair(name, value);
    }
}

fn current_param(url: &reqwest::Url, name: &str) -> Option<String> {
    url.query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// A page's items: the `items` expression's value, else the body when it is a list.
pub(super) fn items_of(value: Json, from_expr: bool) -> Result<Vec<Json>, String> {
    match value {
        Json::Array(items) => Ok(items),
        Json::Null if from_expr => Ok(Vec::new()),
        other if from_expr => Err(format!(
            "`paginate.items` must yield a list, got {}",
            super::call::type_name(&other)
        )),
        other => Err(format!(
            "a page's body is {}, not a list; set `paginate.items` to where the items are, e.g. `.page.body.data`",
            super::call::type_name(&other)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn url(s: &str) -> reqwest::Url {
        reqwest::Url::parse(s).unwrap()
    }

    fn paginate(style: Style) -> Paginate {
        Paginate {
            style,
            items: None,
            max_pages: 10,
            max_items: None,
        }
    }

    fn seen<'a>(
        u: &'a reqwest::Url,
        link: Option<&'a str>,
        items: usize,
        cursor: Option<&'a Json>,
    ) -> PageSeen<'a> {
        PageSeen {
            url: u,
            link,
            items,
            cursor,
        }
    }

    #[test]
    fn link_next_resolves_relative_targets_and_ignores_other_relations() {
        let base = url("https://api.example/v1/items?page=1");
        let h = r#"<https://api.example/v1/items?page=1>; rel="first", </v1/items?page=2>; rel="next", <?page=9>; rel=last"#;
        assert_eq!(
            link_next(h, &base).unwrap().unwrap().as_str(),
            "https://api.example/v1/items?page=2"
        );
        // Several relations in one rel, unquoted rel, a comma inside the URL.
        let h = "<https://api.example/a?ids=1,2>; rel=\"prev next\"";
        assert_eq!(
            link_next(h, &base).unwrap().unwrap().as_str(),
            "https://api.example/a?ids=1,2"
        );
        assert_eq!(
            link_next("<b?c=3>; REL=next", &base)
                .unwrap()
                .unwrap()
                .as_str(),
            "https://api.example/v1/b?c=3"
        );
        assert!(link_next(r#"<x>; rel="prev""#, &base).is_none());
        assert!(link_next("garbage", &base).is_none());
        assert!(
            link_next("<ftp://api.example/x>; rel=next", &base)
                .unwrap()
                .is_err()
        );
    }

    #[test]
    fn link_pagination_stays_on_the_listing_host() {
        let p = paginate(Style::Link);
        let pin = url("https://api.example/v1");
        let here = url("https://api.example/v1/items");
        let next = p
            .next(
                &seen(&here, Some("</v1/items?p=2>; rel=next"), 3, None),
                1,
                3,
                &pin,
            )
            .unwrap();
        assert_eq!(next, Next::Fetch(url("https://api.example/v1/items?p=2")));
        for evil in [
            "<https://evil.example/steal>; rel=next",
            "<//evil.example/steal>; rel=next",
            "<http://api.example/v1/items?p=2>; rel=next",
            "<https://api.example:8443/v1/items?p=2>; rel=next",
        ] {
            let err = p
                .next(&seen(&here, Some(evil), 3, None), 1, 3, &pin)
                .unwrap_err();
            assert!(err.contains("another host"), "{evil}: {err}");
        }
        assert_eq!(
            p.next(&seen(&here, None, 3, None), 1, 3, &pin).unwrap(),
            Next::Done
        );
    }

    #[test]
    fn cursor_stops_on_null_false_or_empty() {
        let p = paginate(Style::Cursor {
            param: "after".into(),
            next: Expr::compile(".page.body.next").unwrap(),
        });
        let here = url("https://api.example/items?limit=2&after=a1");
        let c = json!("c 2");
        assert_eq!(
            p.next(&seen(&here, None, 2, Some(&c)), 2, 4, &here)
                .unwrap(),
            Next::Fetch(url("https://api.example/items?limit=2&after=c+2"))
        );
        for stop in [json!(null), json!(false), json!("")] {
            assert_eq!(
                p.next(&seen(&here, None, 2, Some(&stop)), 2, 4, &here)
                    .unwrap(),
                Next::Done,
                "{stop}"
            );
        }
        // The cursor just sent, again: a loop, not a next page.
        let same = json!("a1");
        let e = p
            .next(&seen(&here, None, 2, Some(&same)), 2, 4, &here)
            .unwrap_err();
        assert!(e.contains("same cursor again"), "{e}");
        // A numeric cursor is sent as its text.
        let n = json!(40);
        assert_eq!(
            p.next(&seen(&here, None, 2, Some(&n)), 2, 4, &here)
                .unwrap(),
            Next::Fetch(url("https://api.example/items?limit=2&after=40"))
        );
    }

    #[test]
    fn page_numbers_count_up_from_start_until_an_empty_page() {
        let p = paginate(Style::Page {
            param: "page".into(),
            start: 0,
        });
        let first = p.first(&url("https://api.example/items?page=7&q=x&page=8"));
        assert_eq!(first.as_str(), "https://api.example/items?page=0&q=x");
        assert_eq!(
            p.next(&seen(&first, None, 5, None), 1, 5, &first).unwrap(),
            Next::Fetch(url("https://api.example/items?page=1&q=x"))
        );
        assert_eq!(
            p.next(&seen(&first, None, 0, None), 3, 10, &first).unwrap(),
            Next::Done
        );
    }

    #[test]
    fn offset_advances_by_items_and_stops_on_a_short_page() {
        let p = paginate(Style::Offset {
            param: "offset".into(),
            limit_param: "limit".into(),
            limit: 3,
        });
        let first = p.first(&url("https://api.example/items"));
        assert_eq!(first.as_str(), "https://api.example/items?offset=0&limit=3");
        let second = match p.next(&seen(&first, None, 3, None), 1, 3, &first).unwrap() {
            Next::Fetch(u) => u,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            second.as_str(),
            "https://api.example/items?offset=3&limit=3"
        );
        assert_eq!(
            p.next(&seen(&second, None, 3, None), 2, 6, &first).unwrap(),
            Next::Fetch(url("https://api.example/items?offset=6&limit=3"))
        );
        assert_eq!(
            p.next(&seen(&second, None, 2, None), 2, 5, &first).unwrap(),
            Next::Done
        );
    }

    #[test]
    fn bounds_end_the_listing_as_truncated_only_when_there_was_more() {
        let mut p = paginate(Style::Page {
            param: "page".into(),
            start: 1,
        });
        p.max_pages = 2;
        let u = url("https://api.example/items?page=2");
        assert_eq!(
            p.next(&seen(&u, None, 5, None), 2, 10, &u).unwrap(),
            Next::Truncated
        );
        // The last page was empty: the listing is complete, not truncated.
        assert_eq!(
            p.next(&seen(&u, None, 0, None), 2, 10, &u).unwrap(),
            Next::Done
        );
        p.max_pages = 100;
        p.max_items = Some(10);
        assert_eq!(
            p.next(&seen(&u, None, 5, None), 2, 10, &u).unwrap(),
            Next::Truncated
        );
        assert!(matches!(
            p.next(&seen(&u, None, 5, None), 2, 9, &u).unwrap(),
            Next::Fetch(_)
        ));
    }

    #[test]
    fn items_come_from_a_list_and_null_means_none() {
        assert_eq!(
            items_of(json!([1, 2]), false).unwrap(),
            vec![json!(1), json!(2)]
        );
        assert_eq!(items_of(json!(null), true).unwrap(), Vec::<Json>::new());
        let e = items_of(json!({"data": []}), false).unwrap_err();
        assert!(
            e.contains("an object, not a list") && e.contains("paginate.items"),
            "{e}"
        );
        assert!(items_of(json!("x"), true).unwrap_err().contains("a string"));
    }
}

#[cfg(test)]
mod props {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// `Link` headers come from the API: any text is read without a panic, and what is
        /// followed is an http(s) URL.
        #[test]
        fn any_link_header_is_read_without_panicking(h in "\\PC{0,200}", tail in "[<>;,=\" a-z/?.:]{0,80}") {
            let base = reqwest::Url::parse("https://api.example/v1/items").unwrap();
            for header in [h.clone(), format!("<{h}>; rel=next"), format!("{tail}{h}")] {
                if let Some(Ok(u)) = link_next(&header, &base) {
                    prop_assert!(matches!(u.scheme(), "http" | "https"));
                }
            }
        }
    }
}
