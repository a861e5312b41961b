//! Secrets, webhook verification, API keys and the audit log through the real binary
//! (docs/security.md).

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use axum::http::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{ADMIN_KEY, Fault, Ferry, Project, Receiver, bin};

/// `ferry ARGS` with `stdin` piped in; returns (exit code, stdout, stderr).
fn ferry(args: &[&str], stdin: &str, env: &[(&str, &str)]) -> (i32, String, String) {
    let mut child = Command::new(bin())
        .args(args)
        .env_remove("FERRY_SERVER")
        .env_remove("FERRY_ADMIN_KEY")
        .env_remove("FERRY_MASTER_KEY")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ferry runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn set_secret(data: &Path, name: &str, value: &str) {
    let (code, _, err) = ferry(
        &["secrets", "set", name, "--data", data.to_str().unwrap()],
        &format!("{value}\n"),
        &[],
    );
    assert_eq!(code, 0, "{err}");
}

/// Every file in the data folder, as bytes (database, WAL, keys, everything).
fn data_bytes(dir: &Path) -> Vec<(String, Vec<u8>)> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_file())
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[tokio::test]
async fn secret_values_appear_nowhere_but_on_the_wire() {
    const TOKEN: &str = "crm-token-7f3c9a1e55d2";
    const BEARER: &str = "bearer-secret-0a9b8c7d6e";
    const ROTATED: &str = "bearer-rotated-11aa22bb33";
    let receiver = Receiver::start().await;
    let project = Project::new(
        &[
            (
                "connections/crm.yaml",
                "id: crm\nbase_url: '@RECEIVER@'\nheaders: { x-crm-token: { secret: crm_token } }\nauth: { bearer: { token: { secret: crm_bearer } } }\n",
            ),
            (
                "flows/push.yaml",
                "id: push\ntrigger: { webhook: { path: /in } }\nsteps:\n  - id: contact\n    http: { connection: crm, method: POST, path: /contacts, body: { email: '{{ .event.body.email }}' } }\n",
            ),
        ],
        Some(&receiver),
    );
    let data = project.path().join(".ferry");
    set_secret(&data, "crm_token", TOKEN);
    set_secret(&data, "crm_bearer", BEARER);
    let (_, listed, _) = ferry(
        &["secrets", "list", "--data", data.to_str().unwrap()],
        "",
        &[],
    );
    assert!(
        listed.contains("crm_token") && listed.contains("crm_bearer"),
        "{listed}"
    );

    let mut server = Ferry::start(&project);
    // A run that succeeds, and one whose upstream answers 401 echoing the whole request.
    let ok = server.run_event("/in", &json!({"email": "a@x.io"})).await;
    assert_eq!(ok["status"], "succeeded", "{ok:#}");
    receiver.fail_next([Fault::Echo(401)]);
    let failed = server.run_event("/in", &json!({"email": "b@x.io"})).await;
    assert_eq!(failed["status"], "failed", "{failed:#}");
    // Rotating a secret through the API takes effect at once, and the old value stays masked.
    let (status, v) = server
        .api(
            Method::PUT,
            "/secrets/crm_bearer",
            Some(json!({ "value": ROTATED })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["version"], 2);
    receiver.fail_next([Fault::Echo(401)]);
    let failed2 = server.run_event("/in", &json!({"email": "c@x.io"})).await;
    assert_eq!(failed2["status"], "failed");

    // The values did reach the API: the test would pass vacuously otherwise.
    let sent = receiver.requests_to("/contacts");
    assert_eq!(sent.len(), 3);
    assert_eq!(sent[0].header("x-crm-token"), TOKEN);
    assert_eq!(sent[0].header("authorization"), format!("Bearer {BEARER}"));
    assert_eq!(sent[2].header("authorization"), format!("Bearer {ROTATED}"));
    // …and the echo made it into the stored response, masked.
    let echoed = failed["steps"][0].to_string();
    assert!(echoed.contains("you_sent"), "{echoed}");

    // Everything a user can see: API answers, CLI output, the log, the files.
    let mut seen = Vec::new();
    for id in [&ok["id"], &failed["id"], &failed2["id"]] {
        let (_, run) = server
            .api(
                Method::GET,
                &format!("/runs/{}", id.as_str().unwrap()),
                None,
            )
            .await;
        seen.push(("api run".to_owned(), run.to_string().into_bytes()));
    }
    for path in ["/runs", "/dlq", "/secrets", "/audit", "/flows"] {
        let (_, v) = server.api(Method::GET, path, None).await;
        seen.push((format!("api {path}"), v.to_string().into_bytes()));
    }
    let server_url = server.url("");
    for args in [
        vec!["runs", "show", failed["id"].as_str().unwrap()],
        vec!["dlq", "list"],
        vec!["secrets", "list"],
        vec!["audit"],
    ] {
        let mut a = args.clone();
        a.extend(["--server", &server_url]);
        let (code, out, err) = ferry(&a, "", &[("FERRY_ADMIN_KEY", ADMIN_KEY)]);
        assert_eq!(code, 0, "{args:?}: {err}");
        seen.push((format!("cli {args:?}"), format!("{out}{err}").into_bytes()));
    }
    server.terminate();
    seen.push((
        "log".into(),
        server.log.lock().unwrap().clone().into_bytes(),
    ));
    seen.extend(data_bytes(&data));
    for (place, bytes) in &seen {
        for secret in [TOKEN, BEARER, ROTATED] {
            assert!(!contains(bytes, secret), "`{secret}` leaked into {place}");
        }
    }
}

/// The Standard Webhooks reference vector (SPEC §12), sent through the server.
const SW_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const SW_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
const SW_TS: &str = "1614265330";
const SW_BODY: &str = r#"{"test": 2432232314}"#;
const SW_SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

#[tokio::test]
async fn signed_webhooks_are_verified_before_anything_is_stored() {
    let project = Project::new(
        &[
            (
                "flows/shop.yaml",
                // The vector is from 2021: a tolerance of years lets it through the clock check.
                "id: shop\ntrigger:\n  webhook:\n    path: /hooks/shop\n    verify: { scheme: standard-webhooks, secret: { secret: shop_signing_key }, tolerance: 36500d }\nsteps:\n  - id: log\n    log: '{{ .event.body.test }}'\n",
            ),
            (
                "flows/ops.yaml",
                "id: ops\ntrigger:\n  webhook:\n    path: /hooks/ops\n    verify: { scheme: basic, username: ops, password: { secret: shop_signing_key } }\nsteps:\n  - id: who\n    map: '{{ .event.verified.subject }}'\n",
            ),
            (
                "flows/unset.yaml",
                "id: unset\ntrigger:\n  webhook:\n    path: /hooks/unset\n    verify: { scheme: github, secret: { secret: never_set } }\nsteps:\n  - id: log\n    log: hi\n",
            ),
        ],
        None,
    );
    set_secret(
        &project.path().join(".ferry"),
        "shop_signing_key",
        SW_SECRET,
    );
    let server = Ferry::start(&project);
    let send = |body: &'static str, headers: Vec<(&'static str, &'static str)>| {
        let server = &server;
        async move {
            let resp = server
                .post("/hooks/shop", "application/json", body, &headers)
                .await;
            let status = resp.status().as_u16();
            let ct = resp
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_owned());
            (
                status,
                ct,
                resp.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let good = vec![
        ("webhook-id", SW_ID),
        ("webhook-timestamp", SW_TS),
        ("webhook-signature", SW_SIG),
    ];

    // Rejections first: none of them may leave a run behind.
    let (s, ct, p) = send(r#"{"test": 2432232315}"#, good.clone()).await;
    assert_eq!(
        (s, ct.as_deref()),
        (401, Some("application/problem+json")),
        "{p}"
    );
    assert!(
        p["detail"]
            .as_str()
            .unwrap()
            .contains("signature does not match"),
        "{p}"
    );
    assert!(
        !p.to_string().contains("MfKQ9r8"),
        "the secret is never echoed: {p}"
    );
    let (s, _, p) = send(SW_BODY, good[..2].to_vec()).await;
    assert_eq!(s, 401);
    assert!(
        p["detail"].as_str().unwrap().contains("webhook-signature"),
        "{p}"
    );
    let (s, _, _) = send(
        SW_BODY,
        vec![
            ("webhook-id", SW_ID),
            ("webhook-timestamp", SW_TS),
            ("webhook-signature", "v1,not-base64!!"),
        ],
    )
    .await;
    assert_eq!(s, 401);
    let (_, runs) = server.api(Method::GET, "/runs?flow=shop", None).await;
    assert_eq!(runs["runs"].as_array().unwrap().len(), 0, "{runs}");

    // The genuine message runs once; the same message replayed starts nothing.
    let (s, _, first) = send(SW_BODY, good.clone()).await;
    assert_eq!(s, 202, "{first}");
    let (s, _, again) = send(SW_BODY, good.clone()).await;
    assert_eq!(s, 200, "{again}");
    assert_eq!(first["run_id"], again["run_id"]);
    let run = server
        .wait_final(first["run_id"].as_str().unwrap(), Duration::from_secs(20))
        .await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    assert_eq!(
        run["event"]["verified"]["scheme"], "standard-webhooks",
        "{run:#}"
    );

    // The verified sender is on the event; the credential is not.
    let basic = format!("Basic {}", {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(format!("ops:{SW_SECRET}"))
    });
    let resp = server
        .post(
            "/hooks/ops",
            "application/json",
            "{}",
            &[("authorization", basic.as_str())],
        )
        .await;
    assert_eq!(resp.status(), 202);
    let id = resp.json::<Value>().await.unwrap()["run_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let run = server.wait_final(&id, Duration::from_secs(20)).await;
    assert_eq!(run["steps"][0]["output"], "ops", "{run:#}");
    assert_eq!(run["event"]["headers"]["authorization"], "***");

    // Fail closed: a verifier whose secret is missing refuses everything, and says so.
    let resp = server
        .post(
            "/hooks/unset",
            "application/json",
            "{}",
            &[("x-hub-signature-256", "sha256=00")],
        )
        .await;
    assert_eq!(resp.status(), 503);
    let detail = resp.json::<Value>().await.unwrap().to_string();
    assert!(!detail.contains("never_set"), "{detail}");
    assert!(server.log.lock().unwrap().contains("never_set"));

    let (_, flows) = server.api(Method::GET, "/flows", None).await;
    let shop = flows["flows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["id"] == "shop")
        .unwrap();
    assert_eq!(shop["trigger"]["verify"], "standard-webhooks");
    assert_eq!(shop["trigger"]["rejected_requests"], 3, "{shop}");
}

#[tokio::test]
async fn api_keys_have_roles_and_every_change_is_audited() {
    let project = Project::new(
        &[(
            "flows/m.yaml",
            "id: m\ntrigger: manual\nsteps:\n  - id: a\n    map: 1\n",
        )],
        None,
    );
    let server = Ferry::start(&project);
    let call = |key: &str, method: Method, path: &str, body: Option<Value>| {
        let req = server
            .http
            .request(method, server.url(&format!("/api/v1{path}")))
            .bearer_auth(key);
        let req = match body {
            Some(b) => req.json(&b),
            None => req,
        };
        async move {
            let r = req.send().await.unwrap();
            (
                r.status().as_u16(),
                r.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let (s, viewer) = call(
        ADMIN_KEY,
        Method::POST,
        "/keys",
        Some(json!({"name": "dashboards", "role": "viewer"})),
    )
    .await;
    assert_eq!(s, 201, "{viewer}");
    let vkey = viewer["key"].as_str().unwrap().to_owned();
    let (_, operator) = call(
        ADMIN_KEY,
        Method::POST,
        "/keys",
        Some(json!({"name": "on-call", "role": "operator"})),
    )
    .await;
    let okey = operator["key"].as_str().unwrap().to_owned();

    assert_eq!(call(&vkey, Method::GET, "/runs", None).await.0, 200);
    let (s, p) = call(&vkey, Method::POST, "/flows/m/runs", Some(json!({}))).await;
    assert_eq!(s, 403, "{p}");
    assert!(p["detail"].as_str().unwrap().contains("operator"), "{p}");
    assert_eq!(
        call(&okey, Method::POST, "/flows/m/runs", Some(json!({})))
            .await
            .0,
        202
    );
    assert_eq!(call(&okey, Method::GET, "/secrets", None).await.0, 403);
    assert_eq!(
        call(
            &okey,
            Method::PUT,
            "/secrets/x",
            Some(json!({"value": "v"}))
        )
        .await
        .0,
        403
    );
    assert_eq!(call("fk_wrong", Method::GET, "/runs", None).await.0, 401);
    let (s, p) = call(
        ADMIN_KEY,
        Method::POST,
        "/keys",
        Some(json!({"name": "x", "role": "root"})),
    )
    .await;
    assert_eq!(s, 400, "{p}");

    // Listed without the key; revoked keys stop working at once.
    let (_, keys) = call(ADMIN_KEY, Method::GET, "/keys", None).await;
    assert!(!keys.to_string().contains(&vkey));
    assert_eq!(keys["keys"].as_array().unwrap().len(), 2);
    let vid = viewer["id"].as_str().unwrap();
    assert_eq!(
        call(ADMIN_KEY, Method::DELETE, &format!("/keys/{vid}"), None)
            .await
            .0,
        204
    );
    assert_eq!(call(&vkey, Method::GET, "/runs", None).await.0, 401);

    assert_eq!(
        call(
            ADMIN_KEY,
            Method::PUT,
            "/secrets/api_token",
            Some(json!({"value": "tok-abcdef-123"}))
        )
        .await
        .0,
        201
    );
    let (s, audit) = call(ADMIN_KEY, Method::GET, "/audit", None).await;
    assert_eq!(s, 200);
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "secret.set",
            "key.revoke",
            "flow.trigger",
            "key.create",
            "key.create"
        ]
    );
    assert!(!audit.to_string().contains("tok-abcdef-123"));
    assert!(!audit.to_string().contains(&okey));
    let trigger = &audit["entries"][2];
    assert!(
        trigger["actor"].as_str().unwrap().contains("on-call"),
        "{trigger}"
    );
    assert_eq!(call(&okey, Method::GET, "/audit", None).await.0, 403);
}

// Multi-threaded: `ferry run` is waited for synchronously while the receiver answers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_master_key_rotates_and_a_wrong_key_is_refused() {
    let receiver = Receiver::start().await;
    let project = Project::new(
        &[
            (
                "connections/crm.yaml",
                "id: crm\nbase_url: '@RECEIVER@'\nheaders: { x-key: { secret: k } }\n",
            ),
            (
                "flows/f.yaml",
                "id: f\ntrigger: { webhook: { path: /in } }\nsteps:\n  - id: a\n    http: { connection: crm, path: /x }\n",
            ),
        ],
        Some(&receiver),
    );
    let data = project.path().join(".ferry");
    let d = data.to_str().unwrap();
    set_secret(&data, "k", "value-one-1234");
    let before = std::fs::read(data.join("master.key")).unwrap();
    let (code, _, err) = ferry(&["secrets", "rotate-master", "--data", d], "", &[]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("re-encrypted 1 secret"), "{err}");
    assert_ne!(std::fs::read(data.join("master.key")).unwrap(), before);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(data.join("master.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    let server = Ferry::start(&project);
    let run = server.run_event("/in", &json!({})).await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    assert_eq!(
        receiver.requests_to("/x")[0].header("x-key"),
        "value-one-1234"
    );
    drop(server);
    // `ferry run` resolves secrets from a data folder it is given.
    let flow = project.path().join("flows/f.yaml");
    let (code, out, err) = ferry(&["run", flow.to_str().unwrap(), "--data", d], "", &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        receiver.requests_to("/x")[1].header("x-key"),
        "value-one-1234"
    );
    assert!(!out.contains("value-one-1234") && !err.contains("value-one-1234"));

    let wrong = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    let (code, _, err) = ferry(
        &["secrets", "list", "--data", d],
        "",
        &[("FERRY_MASTER_KEY", wrong)],
    );
    assert_ne!(code, 0);
    assert!(
        err.contains("not the key this data folder's secrets were sealed with"),
        "{err}"
    );
    let (code, _, err) = ferry(&["secrets", "set", "bad name", "--data", d], "v\n", &[]);
    assert_ne!(code, 0);
    assert!(err.contains("invalid secret name"), "{err}");
    let (code, _, err) = ferry(&["secrets", "set", "empty", "--data", d], "\n", &[]);
    assert_ne!(code, 0);
    assert!(err.contains("is empty"), "{err}");
}

#[tokio::test]
async fn urls_built_from_data_cannot_reach_internal_addresses_unless_allowed() {
    let receiver = Receiver::start().await;
    let port = receiver.url().rsplit(':').next().unwrap().to_owned();
    let project = Project::new(
        &[
            (
                "flows/callback.yaml",
                "id: callback\ntrigger: { webhook: { path: /cb } }\nsteps:\n  - id: notify\n    http: { url: '{{ .event.body.callback }}', method: POST, body: { ok: true } }\n",
            ),
            (
                "flows/fixed.yaml",
                "id: fixed\ntrigger: { webhook: { path: /fixed } }\nsteps:\n  - id: notify\n    http: { url: '@RECEIVER@/fixed', method: POST, body: { ok: true } }\n",
            ),
        ],
        Some(&receiver),
    );
    let mut server = Ferry::start(&project);
    for target in [
        format!("http://127.0.0.1:{port}/internal"),
        format!("http://localhost:{port}/internal"),
        format!("http://[::ffff:127.0.0.1]:{port}/internal"),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
    ] {
        let run = server
            .run_event("/cb", &json!({ "callback": target }))
            .await;
        assert_eq!(run["status"], "failed", "{target}: {run:#}");
        let step = &run["steps"][0];
        assert_eq!(step["attempts"], 1, "refusals are not retried: {step}");
        let msg = step["error"]["message"].as_str().unwrap();
        assert!(msg.contains("refused to connect"), "{target}: {msg}");
    }
    assert!(receiver.requests_to("/internal").is_empty());
    // What the operator wrote goes where it says…
    let run = server.run_event("/fixed", &json!({})).await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    // …but cannot be redirected to an internal address on another host.
    receiver.fail_next([Fault::Redirect("http://10.1.2.3/admin".into())]);
    let run = server.run_event("/fixed", &json!({})).await;
    assert_eq!(run["status"], "failed", "{run:#}");
    let msg = run["steps"][0]["error"]["message"].as_str().unwrap();
    assert!(msg.contains("10.1.2.3") && msg.contains("private"), "{msg}");

    server.terminate();
    let mut allowed = Ferry::start_with(&project, &["--allow-network", "127.0.0.0/8"]);
    let run = allowed
        .run_event(
            "/cb",
            &json!({ "callback": format!("http://localhost:{port}/internal") }),
        )
        .await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    assert_eq!(receiver.requests_to("/internal").len(), 1);
    // An allowed host cannot bounce the request to an address that is not allowed.
    receiver.fail_next([Fault::Redirect(
        "http://169.254.169.254/latest/meta-data/".into(),
    )]);
    let run = allowed
        .run_event(
            "/cb",
            &json!({ "callback": format!("http://127.0.0.1:{port}/bounce") }),
        )
        .await;
    assert_eq!(run["status"], "failed", "{run:#}");
    let msg = run["steps"][0]["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("169.254.169.254") && msg.contains("cloud-metadata"),
        "{msg}"
    );
    assert_eq!(run["steps"][0]["attempts"], 1);
    allowed.terminate();
}

#[tokio::test]
async fn redaction_retention_and_erase_remove_personal_data() {
    let receiver = Receiver::start().await;
    let project = Project::new(
        &[
            (
                "connections/crm.yaml",
                "id: crm\nbase_url: '@RECEIVER@'\nredact: ['.plan']\n",
            ),
            (
                "flows/signup.yaml",
                "id: signup\ntrigger: { webhook: { path: /signup } }\nredact: ['.event.body.email', '.steps.contact.body.ok']\nsteps:\n  - id: contact\n    http: { connection: crm, method: POST, path: /contacts, body: { email: '{{ .event.body.email }}', plan: '{{ .event.body.plan }}' } }\n",
            ),
            (
                "flows/local.yaml",
                "id: local\ntrigger: { webhook: { path: /local } }\nredact: ['.event.body.email']\nsteps:\n  - id: m\n    map: { hello: 'Dear {{ .event.body.email }}', plan: '{{ .event.body.plan }}' }\n",
            ),
            (
                "flows/short.yaml",
                "id: short\ntrigger: { webhook: { path: /short } }\nretention: 1s\nsteps:\n  - id: m\n    map: { who: '{{ .event.body.who }}' }\n",
            ),
        ],
        Some(&receiver),
    );
    let server = Ferry::start_env(&project, &[("FERRY_MAINTENANCE_INTERVAL", "200ms")]);

    // Redaction: the CRM gets the address; the stored run does not keep it anywhere.
    let run = server
        .run_event(
            "/signup",
            &json!({"email": "ada@example.com", "plan": "gold"}),
        )
        .await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    assert_eq!(
        receiver.requests_to("/contacts")[0].json()["email"],
        "ada@example.com"
    );
    assert_eq!(run["event"]["body"]["email"], "***", "{run:#}");
    assert_eq!(run["event"]["body"]["plan"], "gold");
    let step = &run["steps"][0];
    assert_eq!(step["output"]["body"]["ok"], "***", "{step}");
    // The connection's rule masks the request body it sent.
    assert_eq!(step["request"]["body"]["plan"], "***", "{step}");
    assert_eq!(receiver.requests_to("/contacts")[0].json()["plan"], "gold");
    assert!(!run.to_string().contains("ada@example.com"), "{run:#}");

    // A flow that only computes is done, and stored, while its event is ingested: the same
    // rules apply to that one write.
    let run = server
        .run_event(
            "/local",
            &json!({"email": "ada@example.com", "plan": "gold"}),
        )
        .await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    assert_eq!(run["event"]["body"]["email"], "***", "{run:#}");
    assert_eq!(run["event"]["body"]["plan"], "gold");
    assert_eq!(run["steps"][0]["output"]["plan"], "gold");
    assert!(!run.to_string().contains("ada@example.com"), "{run:#}");

    // Erase: every payload that mentions the subject goes; other runs stay.
    let grace = server
        .run_event(
            "/signup",
            &json!({"email": "grace@example.com", "plan": "grace@example.com"}),
        )
        .await;
    let other = server
        .run_event(
            "/signup",
            &json!({"email": "alan@example.com", "plan": "basic"}),
        )
        .await;
    let (code, _, err) = ferry(
        &[
            "erase",
            "--subject",
            "grace@example.com",
            "--server",
            &server.url(""),
        ],
        "",
        &[("FERRY_ADMIN_KEY", ADMIN_KEY)],
    );
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("1 run(s)"), "{err}");
    let erased = server.run(grace["id"].as_str().unwrap()).await;
    assert_eq!(erased["event"], json!({}), "{erased:#}");
    assert!(!erased.to_string().contains("grace@"), "{erased:#}");
    let kept = server.run(other["id"].as_str().unwrap()).await;
    assert_eq!(kept["event"]["body"]["plan"], "basic");
    let (_, audit) = server.api(Method::GET, "/audit", None).await;
    assert_eq!(audit["entries"][0]["action"], "erase");
    assert!(!audit.to_string().contains("grace@"), "{audit}");
    let (s, _) = server
        .api(Method::POST, "/erase", Some(json!({"subject": "a"})))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);

    // Retention: a finished run's payload goes after the flow's retention; the run stays.
    let short = server.run_event("/short", &json!({"who": "someone"})).await;
    let id = short["id"].as_str().unwrap().to_owned();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let r = server.run(&id).await;
        if r["event"] == json!({}) {
            assert_eq!(r["status"], "succeeded");
            assert_eq!(r["steps"][0]["output"], Value::Null, "{r:#}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not purged: {r:#}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The 30-day default keeps the signup runs.
    let kept = server.run(other["id"].as_str().unwrap()).await;
    assert_eq!(kept["event"]["body"]["plan"], "basic");
}

/// How often each form `subject` may be stored in (as sent, JSON-escaped, percent-encoded
/// in a URL, any ASCII case) occurs in each file of the data folder.
fn subject_copies(dir: &Path, subject: &str) -> Vec<String> {
    let json = serde_json::to_string(subject).unwrap();
    let forms = [
        subject.to_owned(),
        json[1..json.len() - 1].to_owned(),
        // `\u0040` for `@`, as some JSON encoders write it.
        subject.replace('@', "\\u0040"),
        // In a query string (`application/x-www-form-urlencoded`).
        subject
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                    char::from(b).to_string()
                }
                b' ' => "+".into(),
                _ => format!("%{b:02X}"),
            })
            .collect::<String>(),
        subject.replace('@', "%40"),
    ];
    let mut found = Vec::new();
    for (file, bytes) in data_bytes(dir) {
        let hay = bytes.to_ascii_lowercase();
        let mut seen = std::collections::BTreeSet::new();
        for form in &forms {
            let form = form.to_ascii_lowercase();
            if !seen.insert(form.clone()) {
                continue;
            }
            let n = hay
                .windows(form.len())
                .filter(|w| *w == form.as_bytes())
                .count();
            if n > 0 {
                found.push(format!("{file}: {n} × `{form}`"));
            }
        }
    }
    found
}

/// Issue 12: after `ferry erase` through the running server the address was still in
/// `ferry.db-wal` 572 times and in `ferry.db` 5 times (old pages in the WAL, and in the
/// database file until a checkpoint copied the new ones over them). Once erase answers, no
/// byte of the subject may be left in any file of the data folder, in any form it was
/// stored in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_erase_the_subject_is_in_no_file_of_the_data_folder() {
    const SUBJECT: &str = "Grace.Hopper+ferry@example.com";
    let receiver = Receiver::start().await;
    let project = Project::new(
        &[
            ("connections/crm.yaml", "id: crm\nbase_url: '@RECEIVER@'\n"),
            (
                "flows/signup.yaml",
                "id: signup\ntrigger: { webhook: { path: /signup, dedupe: '[.event.body.n, .event.body.email]' } }\nsteps:\n  - id: contact\n    http: { connection: crm, method: POST, path: /contacts, query: { email: '{{ .event.body.email }}' }, body: { email: '{{ .event.body.email }}', n: '{{ .event.body.n }}' } }\n  - id: card\n    map: { hello: 'Dear {{ .event.body.email }}' }\n",
            ),
            (
                "flows/masked.yaml",
                "id: masked\ntrigger: { webhook: { path: /masked } }\nredact: ['.event.body.email', '.event.body.note']\nsteps:\n  - id: look_up\n    http: { connection: crm, method: GET, path: /people, query: { email: '{{ .event.body.email }}' } }\n",
            ),
        ],
        Some(&receiver),
    );
    let server = Ferry::start(&project);
    // Some upstream answers echo the request (URL, headers, body) as escaped JSON text.
    receiver.fail_next((0..8).map(|_| Fault::Echo(200)));
    let mut bodies = Vec::new();
    for n in 0..40 {
        let email = if n % 4 == 0 {
            SUBJECT.to_owned()
        } else {
            format!("someone{n}@example.com")
        };
        let path = if n % 3 == 0 { "/masked" } else { "/signup" };
        bodies.push((
            path,
            json!({ "n": n, "email": email, "note": format!("from {email}") }),
        ));
    }
    let posts = bodies
        .iter()
        .map(|(path, body)| server.post_json(path, body, &[]));
    let mut ids = Vec::new();
    for resp in futures::future::join_all(posts).await {
        assert_eq!(resp.status(), 202);
        let v: Value = resp.json().await.unwrap();
        ids.push(v["run_id"].as_str().unwrap().to_owned());
    }
    for id in &ids {
        let run = server.wait_final(id, Duration::from_secs(20)).await;
        assert_eq!(run["status"], "succeeded", "{run:#}");
    }
    assert!(
        !subject_copies(&server.data, SUBJECT).is_empty(),
        "the test looks for the subject where it is stored"
    );

    // Other webhooks arrive, and the API is read, while the erase runs: it must not wait
    // for quiet, and what they write holds no copy.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = tokio::spawn({
        let (stop, http, url) = (stop.clone(), server.http.clone(), server.url(""));
        async move {
            let mut n = 100;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let body = json!({ "n": n, "email": format!("later{n}@example.com") });
                let posted = http.post(format!("{url}/signup")).json(&body).send();
                let read = http
                    .get(format!("{url}/api/v1/runs?limit=50"))
                    .bearer_auth(ADMIN_KEY)
                    .send();
                let (posted, read) = tokio::join!(posted, read);
                assert_eq!(posted.unwrap().status(), 202);
                assert_eq!(read.unwrap().status(), 200);
                n += 1;
            }
            n - 100
        }
    });
    let url = server.url("");
    let (code, _, err) = tokio::task::spawn_blocking(move || {
        ferry(
            &["erase", "--subject", SUBJECT, "--server", &url],
            "",
            &[("FERRY_ADMIN_KEY", ADMIN_KEY)],
        )
    })
    .await
    .unwrap();
    let left = subject_copies(&server.data, SUBJECT);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(traffic.await.unwrap() > 0, "no traffic during the erase");
    assert_eq!(code, 0, "{err}");
    // Runs whose event was redacted keep the address only URL-encoded, in the recorded URL
    // of their request (`?email=grace.hopper%2Bferry%40…`): they are found too.
    assert!(err.contains("10 run(s)"), "{err}");
    assert!(left.is_empty(), "after erase: {left:#?}");
    // The other runs keep theirs.
    assert!(!subject_copies(&server.data, "someone1@example.com").is_empty());
}
