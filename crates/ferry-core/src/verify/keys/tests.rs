use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use crate::verify::tests::{NOW, check, compile, compile_err, headers, resolve};
use crate::verify::{Inbound, Rejection, Verified, Verifier};

fn with_query(v: &Verifier, query: &str) -> Result<Verified, Rejection> {
    let h = headers(&[]);
    let req = Inbound {
        headers: &h,
        query: Some(query),
        body: b"",
    };
    v.verify_offline(&req, &resolve, NOW)
}

#[test]
fn api_key_in_the_default_header_with_rotation() {
    let v = compile("scheme: api_key\nsecrets: [old-key, new-key]\n");
    assert_eq!(
        check(&v, &[("x-api-key", "new-key")], b"", NOW)
            .unwrap()
            .secret_index,
        Some(1)
    );
    assert_eq!(
        check(&v, &[("X-Api-Key", "old-key")], b"", NOW)
            .unwrap()
            .secret_index,
        Some(0)
    );
    for wrong in ["new-ke", "new-key2", "NEW-KEY", ""] {
        assert_eq!(
            check(&v, &[("x-api-key", wrong)], b"", NOW),
            Err(Rejection::BadCredentials("API key")),
            "{wrong:?}"
        );
    }
    let e = check(&v, &[("x-api-key", "nope")], b"", NOW).unwrap_err();
    assert_eq!(e.to_string(), "API key does not match");
    assert_eq!(
        check(&v, &[], b"", NOW).unwrap_err().to_string(),
        "missing header `x-api-key`"
    );
    let big = "k".repeat(9000);
    assert!(matches!(
        check(&v, &[("x-api-key", &big)], b"", NOW),
        Err(Rejection::Oversized { len: 9000, .. })
    ));
}

#[test]
fn api_key_in_another_header_with_a_prefix_or_in_the_query() {
    let v = compile("scheme: api_key\nsecret: k1\nheader: Authorization\nprefix: 'Token '\n");
    assert!(check(&v, &[("authorization", "Token k1")], b"", NOW).is_ok());
    assert!(check(&v, &[("authorization", "token k1")], b"", NOW).is_ok());
    assert_eq!(
        check(&v, &[("authorization", "Bearer k1")], b"", NOW)
            .unwrap_err()
            .to_string(),
        "header `authorization` does not start with `Token `"
    );
    let v = compile("scheme: api_key\nsecret: 'a b&c'\nquery: api_key\n");
    assert!(with_query(&v, "x=1&api_key=a+b%26c").is_ok());
    assert_eq!(
        with_query(&v, "api_key=a"),
        Err(Rejection::BadCredentials("API key"))
    );
    assert_eq!(
        with_query(&v, "x=1").unwrap_err().to_string(),
        "missing query parameter `api_key`"
    );
    assert_eq!(
        with_query(&v, "api_key=a+b%26c&api_key=z")
            .unwrap_err()
            .to_string(),
        "query parameter `api_key` appears more than once; expected once"
    );
    assert!(matches!(
        with_query(&v, &"a".repeat(10_000)),
        Err(Rejection::Oversized { .. })
    ));
    assert_eq!(
        compile_err("scheme: api_key\nsecret: k\nheader: x\nquery: q\n"),
        "scheme `api_key` takes `header` or `query`, not both"
    );
    assert_eq!(
        compile_err("scheme: api_key\nsecret: k\nquery: q\nprefix: p\n"),
        "`prefix` applies to a header, not to `query`"
    );
}

fn basic(user_pass: &str) -> String {
    format!("Basic {}", B64.encode(user_pass))
}

#[test]
fn basic_auth_with_username_and_password_gives_the_user_as_subject() {
    let v = compile("scheme: basic\nusername: hooks\npassword: 's3cret:with:colons'\n");
    let ok = check(
        &v,
        &[("authorization", &basic("hooks:s3cret:with:colons"))],
        b"",
        NOW,
    )
    .unwrap();
    assert_eq!(ok.subject.as_deref(), Some("hooks"));
    for wrong in ["hooks:s3cret", "hook:s3cret:with:colons", "hooks", ":"] {
        assert_eq!(
            check(&v, &[("authorization", &basic(wrong))], b"", NOW)
                .unwrap_err()
                .to_string(),
            "user name or password does not match",
            "{wrong:?}"
        );
    }
    assert_eq!(
        check(&v, &[("authorization", "Bearer x")], b"", NOW)
            .unwrap_err()
            .to_string(),
        "header `authorization` is not `Basic …`"
    );
    assert_eq!(
        check(&v, &[("authorization", "Basic %%%")], b"", NOW)
            .unwrap_err()
            .to_string(),
        "`authorization` credentials are not valid base64"
    );
    assert_eq!(
        check(&v, &[], b"", NOW),
        Err(Rejection::MissingHeader("authorization".into()))
    );
    // Fail closed on an unresolvable password.
    let v = compile("scheme: basic\nusername: hooks\npassword: { env: HOOK_PW }\n");
    assert_eq!(
        check(&v, &[("authorization", &basic("hooks:x"))], b"", NOW)
            .unwrap_err()
            .to_string(),
        "secret unavailable: `password` cannot be used: environment variable `HOOK_PW` is not set"
    );
}

#[test]
fn basic_auth_with_user_pass_secrets_rotates() {
    let v = compile("scheme: basic\nsecrets: ['a:1', 'b:2']\n");
    let ok = check(&v, &[("authorization", &basic("b:2"))], b"", NOW).unwrap();
    assert_eq!(
        (ok.subject.as_deref(), ok.secret_index),
        (Some("b"), Some(1))
    );
    assert!(check(&v, &[("authorization", &basic("a:2"))], b"", NOW).is_err());
    assert_eq!(
        compile_err("scheme: basic\nsecrets: ['a:1', nocolon]\n"),
        "secret 2 of 2 cannot be used: expected `user:pass`"
    );
    assert_eq!(
        compile_err("scheme: basic\nusername: u\n"),
        "`username` needs `password`"
    );
    assert_eq!(
        compile_err("scheme: basic\nusername: u\npassword: p\nsecret: 'a:b'\n"),
        "scheme `basic` takes `username` + `password` or `secret`/`secrets` (`user:pass`), not both"
    );
}
