//! RFC 8288 `Link` headers, as `paginate: { link: next }` reads them from an API's answer: any
//! bytes that are UTF-8 go to `step::paginate::link_next` against two page URLs.
//!
//! Must hold: no panic or hang. A next page that is followed is an http(s) URL that one of the
//! header's `<…>` targets resolves to, from a header that says `next`; no `<` means no next
//! page. A `rel="next"` link first in the header wins whatever follows it, and one after
//! anything without `<`, `>` or `"` is found.

#![no_main]

use libfuzzer_sys::fuzz_target;
use url::Url;

use ferry_core::step::paginate::link_next;

const BASES: &[&str] = &[
    "https://api.example/v1/items?page=1",
    "http://127.0.0.1:8080/a/b/",
];
const FIRST: &str = "https://api.example/v1/items?page=2";
const NEXT: &str = "</v1/items?page=3&per_page=100>; rel=\"next\"";

fuzz_target!(|data: &[u8]| {
    let Ok(header) = std::str::from_utf8(data) else {
        return;
    };
    for base in BASES {
        let base = Url::parse(base).unwrap();
        match link_next(header, &base) {
            None => {}
            Some(Err(e)) => assert!(!e.is_empty()),
            Some(Ok(u)) => {
                assert!(matches!(u.scheme(), "http" | "https"), "{u}");
                assert!(header.to_ascii_lowercase().contains("next"), "{u} from {header:?}");
                assert!(
                    targets(header).any(|t| base.join(t).ok().as_ref() == Some(&u)),
                    "{u} is no `<…>` target of {header:?}"
                );
            }
        }
        if !header.contains('<') {
            assert!(link_next(header, &base).is_none(), "a next page without `<`: {header:?}");
        }

        let first = format!("<{FIRST}>; rel=\"next\", {header}");
        assert_eq!(
            link_next(&first, &base).and_then(Result::ok).as_ref().map(Url::as_str),
            Some(FIRST),
            "{first:?}"
        );
        if !header.contains(['<', '>', '"']) {
            let after = format!("{header}, {NEXT}");
            let want = base.join("/v1/items?page=3&per_page=100").unwrap();
            assert_eq!(link_next(&after, &base), Some(Ok(want)), "{after:?}");
        }
    }
});

/// Every `<…>` of the header: from a `<` to the next `>`.
fn targets(header: &str) -> impl Iterator<Item = &str> {
    header.match_indices('<').filter_map(|(i, _)| {
        let rest = &header[i + 1..];
        rest.find('>').map(|end| &rest[..end])
    })
}
