//! The `http` step against a local REST API: pagination in each style, multipart and binary
//! bodies, redirect policies, compressed responses (docs/flows.md, `http`).

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use serde_json::{Value, json};

use crate::harness::{Ferry, Project};

/// One request the API saw.
#[derive(Clone, Debug)]
struct Seen {
    uri: String,
    headers: HeaderMap,
    body: Bytes,
}

#[derive(Clone, Default)]
struct Api {
    seen: Arc<Mutex<Vec<Seen>>>,
}

type Params = Query<std::collections::HashMap<String, String>>;

/// Seven items, `{"id": 1}` … `{"id": 7}`.
fn item_ids(from: usize, to: usize) -> Vec<Value> {
    (from..to.min(7)).map(|i| json!({ "id": i + 1 })).collect()
}

fn param(q: &Params, name: &str) -> Option<usize> {
    q.get(name).and_then(|v| v.parse().ok())
}

impl Api {
    async fn start() -> (Api, SocketAddr) {
        let api = Api::default();
        let app = axum::Router::new()
            // Link: pages of 3, `page` from 1, relative next links.
            .route(
                "/link/items",
                get(|q: Params| async move {
                    let page = param(&q, "page").unwrap_or(1);
                    let items = item_ids((page - 1) * 3, page * 3);
                    let mut headers = vec![("content-type", "application/json".to_owned())];
                    if page * 3 < 7 {
                        headers.push((
                            "link",
                            format!(
                                "</link/items?page=1>; rel=\"first\", </link/items?page={}>; rel=\"next\"",
                                page + 1
                            ),
                        ));
                    }
                    let mut r = Json(items).into_response();
                    for (k, v) in headers {
                        r.headers_mut().insert(k, v.parse().unwrap());
                    }
                    r
                }),
            )
            // A next link to another host: its credentials must not follow.
            .route(
                "/evil/items",
                get(|headers: HeaderMap| async move {
                    let port = headers["host"].to_str().unwrap().rsplit(':').next().unwrap().to_owned();
                    (
                        [("link", format!("<http://localhost:{port}/stolen>; rel=next"))],
                        Json(json!([1])),
                    )
                }),
            )
            // Cursor: `{data, next}`; `after` is the last id seen.
            .route(
                "/cursor/items",
                get(|q: Params| async move {
                    let after = param(&q, "after").unwrap_or(0);
                    let data = item_ids(after, after + 3);
                    let next = (after + 3 < 7).then(|| (after + 3).to_string());
                    Json(json!({ "data": data, "next": next }))
                }),
            )
            // Page numbers from 0; an empty page ends it.
            .route(
                "/page/items",
                get(|q: Params| async move {
                    let page = param(&q, "p").unwrap_or(0);
                    Json(json!(item_ids(page * 3, page * 3 + 3)))
                }),
            )
            // Offset and limit; a short page ends it.
            .route(
                "/offset/items",
                get(|q: Params| async move {
                    let offset = param(&q, "offset").unwrap_or(0);
                    let limit = param(&q, "limit").unwrap_or(100);
                    Json(json!({ "results": item_ids(offset, offset + limit) }))
                }),
            )
            .route(
                "/file.pdf",
                get(|| async {
                    ([("content-type", "application/pdf")], PDF.to_vec()).into_response()
                }),
            )
            .route(
                "/moved",
                get(|| async { (StatusCode::FOUND, [("location", "/landed")]).into_response() }),
            )
            .route("/landed", get(|| async { Json(json!({ "landed": true })) }))
            // Two pages whose `Link`s point at each other: a listing that never ends.
            .route(
                "/loop/{n}",
                get(
                    |axum::extract::Path(n): axum::extract::Path<u32>| async move {
                        let next = format!("</loop/{}>; rel=\"next\"", (n + 1) % 2);
                        ([("link", next)], Json(json!([n]))).into_response()
                    },
                ),
            )
            .route(
                "/gzip",
                get(|| async {
                    let body = json!({ "greeting": "hello", "n": [1, 2, 3] }).to_string();
                    (
                        [
                            ("content-type", "application/json"),
                            ("content-encoding", "gzip"),
                        ],
                        gzip(body.as_bytes()),
                    )
                }),
            )
            .route(
                "/brotli",
                get(|| async {
                    let body = json!({ "greeting": "hallo" }).to_string();
                    let mut out = Vec::new();
                    brotli::BrotliCompress(
                        &mut body.as_bytes(),
                        &mut out,
                        &brotli::enc::BrotliEncoderParams::default(),
                    )
                    .unwrap();
                    (
                        [
                            ("content-type", "application/json"),
                            ("content-encoding", "br"),
                        ],
                        out,
                    )
                }),
            )
            // 2 KiB on the wire, 4 MiB inflated.
            .route(
                "/bomb",
                get(|| async {
                    (
                        [
                            ("content-type", "application/json"),
                            ("content-encoding", "gzip"),
                        ],
                        gzip(&vec![b' '; 4 << 20]),
                    )
                }),
            )
            .fallback(any(
                |State(api): State<Api>, uri: Uri, headers: HeaderMap, body: Bytes| async move {
                    api.seen.lock().unwrap().push(Seen {
                        uri: uri.to_string(),
                        headers,
                        body,
                    });
                    Json(json!({ "ok": true }))
                },
            ))
            .layer(axum::middleware::from_fn_with_state(api.clone(), log))
            .with_state(api.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (api, addr)
    }

    fn seen(&self, path: &str) -> Vec<Seen> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.uri.split('?').next() == Some(path))
            .cloned()
            .collect()
    }
}

/// Records every routed request too (the fallback records its own).
async fn log(
    State(api): State<Api>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let uri = req.uri().to_string();
    let headers = req.headers().clone();
    let routed = !uri.starts_with("/sink") && !uri.starts_with("/upload");
    if routed {
        api.seen.lock().unwrap().push(Seen {
            uri,
            headers,
            body: Bytes::new(),
        });
    }
    next.run(req).await
}

/// Bytes that are not UTF-8, as a PDF's are.
const PDF: &[u8] = b"%PDF-1.4\n\xff\xfe\x00\x01binary\x80\x81 tail\n%%EOF";

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn connection(addr: SocketAddr) -> String {
    format!("id: api\nbase_url: http://{addr}\nheaders: {{ x-api-key: k-secret }}\n")
}

fn flow(id: &str, steps: &str) -> String {
    format!("id: {id}\ntrigger: {{ webhook: {{ path: /{id} }} }}\nsteps:\n{steps}")
}

fn output<'a>(run: &'a Value, step: &str) -> &'a Value {
    let steps = run["steps"].as_array().unwrap();
    &steps.iter().find(|s| s["id"] == step).unwrap()["output"]
}

#[tokio::test]
async fn each_pagination_style_fetches_every_page_and_concatenates_the_items() {
    let (api, addr) = Api::start().await;
    let sink = "  - id: report\n    http: { connection: api, method: POST, path: /sink/STYLE, body: { count: '{{ .steps.list.body | length }}', ids: '{{ [.steps.list.body[].id] }}', pages: '{{ .steps.list.pages }}' } }\n";
    let styles = [
        ("link", "/link/items", "{ link: next }"),
        (
            "cursor",
            "/cursor/items",
            "{ cursor: { param: after, next: .page.body.next }, items: .page.body.data }",
        ),
        ("page", "/page/items", "{ page: { param: p, start: 0 } }"),
        (
            "offset",
            "/offset/items",
            "{ offset: { param: offset, limit_param: limit, limit: 3 }, items: '{{ .page.body.results }}' }",
        ),
    ];
    let mut files = vec![("connections/api.yaml".to_owned(), connection(addr))];
    for (style, path, paginate) in styles {
        let steps = format!(
            "  - id: list\n    http: {{ connection: api, path: {path}, paginate: {paginate} }}\n{}",
            sink.replace("STYLE", style)
        );
        files.push((format!("flows/{style}.yaml"), flow(style, &steps)));
    }
    // Bounds end the listing normally, and say so.
    files.push((
        "flows/bounded.yaml".into(),
        flow(
            "bounded",
            "  - id: list\n    http: { connection: api, path: /link/items, paginate: { link: next, max_pages: 2 } }\n  - id: few\n    http: { connection: api, path: /page/items, paginate: { page: { param: p, start: 0 }, max_items: 4 } }\n",
        ),
    ));
    let files: Vec<(&str, &str)> = files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let project = Project::new(&files, None);
    let ferry = Ferry::start(&project);

    let all: Vec<Value> = (1..=7).map(|i| json!(i)).collect();
    for (style, path, _) in styles {
        let run = ferry.run_event(&format!("/{style}"), &json!({})).await;
        assert_eq!(run["status"], "succeeded", "{style}: {run:#}");
        let list = output(&run, "list");
        assert_eq!(list["status"], 200, "{style}");
        assert_eq!(list["truncated"], false, "{style}");
        let sink = api.seen(&format!("/sink/{style}"));
        assert_eq!(sink.len(), 1, "{style}");
        let got: Value = serde_json::from_slice(&sink[0].body).unwrap();
        assert_eq!(got["count"], 7, "{style}: {got}");
        assert_eq!(got["ids"], json!(all), "{style}: {got}");
        // page: 3 full pages, then an empty one; the others know the third is the last.
        let pages = if style == "page" { 4 } else { 3 };
        assert_eq!(got["pages"], pages, "{style}: {got}");
        let fetched = api.seen(path);
        assert_eq!(fetched.len(), pages, "{style}: {fetched:?}");
        // Every page carries the connection's headers and the step's idempotency key.
        for f in &fetched {
            assert_eq!(f.headers["x-api-key"], "k-secret", "{style}");
            assert_eq!(
                f.headers["idempotency-key"],
                fetched[0].headers["idempotency-key"]
            );
        }
        assert_eq!(
            list["request"]["headers"]["x-api-key"],
            Value::Null,
            "request is not in the output"
        );
    }
    assert_eq!(
        api.seen("/cursor/items")
            .iter()
            .map(|s| s.uri.clone())
            .collect::<Vec<_>>(),
        [
            "/cursor/items",
            "/cursor/items?after=3",
            "/cursor/items?after=6"
        ]
    );
    assert_eq!(
        api.seen("/offset/items")[2].uri,
        "/offset/items?offset=6&limit=3"
    );

    let run = ferry.run_event("/bounded", &json!({})).await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    let list = output(&run, "list");
    assert_eq!(list["pages"], 2);
    assert_eq!(list["truncated"], true);
    assert_eq!(list["body"].as_array().unwrap().len(), 6);
    let few = output(&run, "few");
    assert_eq!(
        few["body"],
        json!([{"id": 1}, {"id": 2}, {"id": 3}, {"id": 4}])
    );
    assert_eq!(few["pages"], 2);
    assert_eq!(few["truncated"], true);
    // The stored request lists every page fetched; the API key is masked.
    let steps = run["steps"].as_array().unwrap();
    assert_eq!(steps[0]["request"]["pages"].as_array().unwrap().len(), 2);
    assert_eq!(steps[0]["request"]["headers"]["x-api-key"], "***");
    assert!(!run.to_string().contains("k-secret"));
}

#[tokio::test]
async fn a_next_link_to_another_host_fails_without_sending_the_credentials_there() {
    let (api, addr) = Api::start().await;
    let project = Project::new(
        &[
            ("connections/api.yaml", connection(addr).as_str()),
            (
                "flows/f.yaml",
                &flow(
                    "f",
                    "  - id: list\n    http: { connection: api, path: /evil/items, paginate: { link: next } }\n",
                ),
            ),
            (
                "flows/object.yaml",
                &flow(
                    "object",
                    "  - id: list\n    http: { connection: api, path: /cursor/items, paginate: { page: { param: p } } }\n",
                ),
            ),
        ],
        None,
    );
    let ferry = Ferry::start(&project);
    let run = ferry.run_event("/f", &json!({})).await;
    assert_eq!(run["status"], "failed", "{run:#}");
    assert_eq!(run["error"]["kind"], "bad_response", "{run:#}");
    let msg = run["error"]["message"].as_str().unwrap();
    assert!(msg.contains("another host"), "{msg}");
    assert_eq!(api.seen("/evil/items").len(), 1, "not retried");
    assert!(api.seen("/stolen").is_empty());

    // A page whose items cannot be found fails with what to fix.
    let run = ferry.run_event("/object", &json!({})).await;
    assert_eq!(run["status"], "failed", "{run:#}");
    assert_eq!(run["error"]["kind"], "bad_response", "{run:#}");
    assert_eq!(
        run["error"]["message"],
        "page 1: a page's body is an object, not a list; set `paginate.items` to where the items are, e.g. `.page.body.data`"
    );
    assert!(
        run["steps"][0]["request"]["url"]
            .as_str()
            .unwrap()
            .ends_with("/cursor/items?p=1"),
        "{run:#}"
    );
}

/// The parts of a `multipart/form-data` body: (headers text, content).
fn parts(content_type: &str, body: &[u8]) -> Vec<(String, Vec<u8>)> {
    let boundary = content_type.split("boundary=").nth(1).unwrap();
    let delim = format!("--{boundary}");
    let mut out = Vec::new();
    let mut rest = body;
    loop {
        let at = find(rest, delim.as_bytes()).unwrap();
        rest = &rest[at + delim.len()..];
        if rest.starts_with(b"--") {
            return out;
        }
        rest = &rest[2..]; // CRLF
        let head_end = find(rest, b"\r\n\r\n").unwrap();
        let head = String::from_utf8(rest[..head_end].to_vec()).unwrap();
        rest = &rest[head_end + 4..];
        let end = find(rest, format!("\r\n{delim}").as_bytes()).unwrap();
        out.push((head, rest[..end].to_vec()));
        rest = &rest[end + 2..];
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[tokio::test]
async fn multipart_and_binary_bodies_arrive_intact() {
    use base64::Engine as _;
    let (api, addr) = Api::start().await;
    let steps = "  - id: pdf\n    http: { connection: api, path: /file.pdf }\n  - id: form\n    http:\n      connection: api\n      path: /upload/multipart\n      multipart:\n        title: '{{ .event.body.title }}'\n        count: 3\n        note: { text: 'héllo \"there\"', content_type: text/plain }\n        doc: { filename: report.pdf, content_type: application/pdf, base64: '{{ .steps.pdf.body.base64 }}' }\n  - id: raw\n    http: { connection: api, method: PUT, path: /upload/raw, binary: '{{ .steps.pdf.body }}' }\n  - id: urlencoded\n    http: { connection: api, path: /upload/form, form: { a: 'x y', b: '{{ .event.body.title }}' } }\n";
    let project = Project::new(
        &[
            ("connections/api.yaml", connection(addr).as_str()),
            ("flows/f.yaml", flow("f", steps).as_str()),
        ],
        None,
    );
    let ferry = Ferry::start(&project);
    let run = ferry
        .run_event("/f", &json!({ "title": "Q3 & more" }))
        .await;
    assert_eq!(run["status"], "succeeded", "{run:#}");

    // A binary response is passed on as base64, not lossy text.
    let pdf = output(&run, "pdf");
    assert_eq!(pdf["body"]["content_type"], "application/pdf");
    assert_eq!(pdf["body"]["size"], PDF.len());
    let b64 = base64::engine::general_purpose::STANDARD.encode(PDF);
    assert_eq!(pdf["body"]["base64"], b64);

    let m = &api.seen("/upload/multipart")[0];
    let ct = m.headers["content-type"].to_str().unwrap();
    assert!(ct.starts_with("multipart/form-data; boundary="), "{ct}");
    let got = parts(ct, &m.body);
    assert_eq!(got.len(), 4, "{got:?}");
    assert_eq!(got[0].0, "Content-Disposition: form-data; name=\"title\"");
    assert_eq!(got[0].1, b"Q3 & more");
    assert_eq!(got[1].1, b"3");
    assert_eq!(
        got[2].0,
        "Content-Disposition: form-data; name=\"note\"\r\nContent-Type: text/plain"
    );
    assert_eq!(got[2].1, "héllo \"there\"".as_bytes());
    assert_eq!(
        got[3].0,
        "Content-Disposition: form-data; name=\"doc\"; filename=\"report.pdf\"\r\nContent-Type: application/pdf"
    );
    assert_eq!(got[3].1, PDF, "file bytes intact");

    let raw = &api.seen("/upload/raw")[0];
    assert_eq!(raw.headers["content-type"], "application/pdf");
    assert_eq!(&raw.body[..], PDF);

    let form = &api.seen("/upload/form")[0];
    assert_eq!(
        form.headers["content-type"],
        "application/x-www-form-urlencoded"
    );
    assert_eq!(&form.body[..], b"a=x+y&b=Q3+%26+more");

    // The stored run records what each part was, and the file's size rather than its bytes.
    let steps = run["steps"].as_array().unwrap();
    let rec = &steps[1]["request"]["body"]["multipart"];
    assert_eq!(rec[0], json!({"name": "title", "value": "Q3 & more"}));
    assert_eq!(
        rec[3],
        json!({"name": "doc", "filename": "report.pdf", "content_type": "application/pdf", "value": {"size": PDF.len()}})
    );
    assert_eq!(
        steps[2]["request"]["body"],
        json!({"binary": {"content_type": "application/pdf", "size": PDF.len()}})
    );
}

#[tokio::test]
async fn redirects_none_returns_the_redirect_and_follow_lands() {
    let (api, addr) = Api::start().await;
    let conn = format!("id: api\nbase_url: http://{addr}\nredirects: none\n");
    let steps = "  - id: none\n    http: { connection: api, path: /moved }\n  - id: follow\n    http: { connection: api, path: /moved, redirects: follow }\n  - id: zero\n    http: { url: 'http://ADDR/moved', redirects: 0 }\n";
    let steps = steps.replace("ADDR", &addr.to_string());
    let project = Project::new(
        &[
            ("connections/api.yaml", conn.as_str()),
            ("flows/f.yaml", flow("f", &steps).as_str()),
        ],
        None,
    );
    let ferry = Ferry::start(&project);
    let run = ferry.run_event("/f", &json!({})).await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    let none = output(&run, "none");
    assert_eq!(none["status"], 302);
    assert_eq!(none["headers"]["location"], "/landed");
    let follow = output(&run, "follow");
    assert_eq!(follow["status"], 200);
    assert_eq!(follow["body"], json!({"landed": true}));
    assert_eq!(output(&run, "zero")["status"], 302);
    assert_eq!(api.seen("/moved").len(), 3);
    assert_eq!(api.seen("/landed").len(), 1);
}

#[tokio::test]
async fn compressed_responses_are_decoded_and_the_limit_applies_to_the_decoded_size() {
    let (api, addr) = Api::start().await;
    let conn = format!("id: api\nbase_url: http://{addr}\nmax_response_bytes: 1048576\n");
    let project = Project::new(
        &[
            ("connections/api.yaml", conn.as_str()),
            (
                "flows/ok.yaml",
                &flow(
                    "ok",
                    "  - id: get\n    http: { connection: api, path: /gzip }\n",
                ),
            ),
            (
                "flows/br.yaml",
                &flow(
                    "br",
                    "  - id: get\n    http: { connection: api, path: /brotli }\n",
                ),
            ),
            (
                "flows/bomb.yaml",
                &flow(
                    "bomb",
                    "  - id: get\n    http: { connection: api, path: /bomb }\n",
                ),
            ),
        ],
        None,
    );
    let ferry = Ferry::start(&project);
    let run = ferry.run_event("/ok", &json!({})).await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    assert_eq!(
        output(&run, "get")["body"],
        json!({ "greeting": "hello", "n": [1, 2, 3] })
    );
    let accept = api.seen("/gzip")[0].headers["accept-encoding"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(accept.contains("gzip") && accept.contains("br"), "{accept}");

    let run = ferry.run_event("/br", &json!({})).await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    assert_eq!(output(&run, "get")["body"], json!({ "greeting": "hallo" }));

    let run = ferry.run_event("/bomb", &json!({})).await;
    assert_eq!(run["status"], "failed", "{run:#}");
    assert_eq!(run["error"]["kind"], "bad_response", "{run:#}");
    assert!(
        run["error"]["message"]
            .as_str()
            .unwrap()
            .contains("exceeds the limit of 1048576"),
        "{run:#}"
    );
}

#[tokio::test]
async fn bad_pagination_settings_are_located_validate_errors() {
    let flow = "id: f\ntrigger: { webhook: { path: /f } }\nsteps:\n  - id: a\n    http:\n      url: https://api.example/items\n      paginate: { link: next, page: { param: p } }\n  - id: b\n    http:\n      url: https://api.example/items\n      paginate: { lnk: next }\n  - id: c\n    http:\n      url: https://api.example/items\n      paginate: { link: next, max_pages: 0 }\n  - id: d\n    http:\n      url: https://api.example/items\n      multipart: { f: { filename: a.txt, txt: hi } }\n";
    let project = Project::new(&[("flows/f.yaml", flow)], None);
    let out = std::process::Command::new(crate::harness::bin())
        .arg("validate")
        .arg(project.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    for expected in [
        "f.yaml:7:17: error: `paginate` takes one way of finding the next page, got `link` and `page`",
        "f.yaml:11:19: error: unknown key `lnk`",
        "hint: did you mean `link`?",
        "f.yaml:15:42: error: `max_pages` must be at least 1, got 0",
        "f.yaml:19:42: error: unknown multipart part key `txt`",
        "hint: did you mean `text`?",
    ] {
        assert!(
            stdout.contains(expected),
            "missing `{expected}` in:\n{stdout}"
        );
    }
}

#[tokio::test]
async fn a_redirect_limit_keeps_the_ssrf_checks_on_every_hop() {
    use crate::harness::{Fault, Receiver};
    let receiver = Receiver::start().await;
    let port = receiver.addr.port();
    let project = Project::new(
        &[
            (
                "flows/fixed.yaml",
                flow(
                    "fixed",
                    "  - id: notify\n    http: { url: '@RECEIVER@/fixed', redirects: 3 }\n",
                )
                .as_str(),
            ),
            (
                "flows/cb.yaml",
                flow(
                    "cb",
                    "  - id: notify\n    http: { url: '{{ .event.body.callback }}', redirects: 2 }\n",
                )
                .as_str(),
            ),
        ],
        Some(&receiver),
    );
    let ferry = Ferry::start_with(&project, &["--allow-network", "127.0.0.0/8"]);
    // An operator-written URL: followed, but not to an internal address on another host.
    receiver.fail_next([Fault::Redirect("/fixed-2".into())]);
    let run = ferry.run_event("/fixed", &json!({})).await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    assert_eq!(receiver.requests_to("/fixed-2").len(), 1);
    receiver.fail_next([Fault::Redirect("http://10.1.2.3/admin".into())]);
    let run = ferry.run_event("/fixed", &json!({})).await;
    assert_eq!(run["status"], "failed", "{run:#}");
    let msg = run["steps"][0]["error"]["message"].as_str().unwrap();
    assert!(msg.contains("10.1.2.3") && msg.contains("private"), "{msg}");
    // A URL from data: an allowed host cannot bounce it to the metadata address.
    receiver.fail_next([Fault::Redirect(
        "http://169.254.169.254/latest/meta-data/".into(),
    )]);
    let run = ferry
        .run_event(
            "/cb",
            &json!({ "callback": format!("http://127.0.0.1:{port}/bounce") }),
        )
        .await;
    assert_eq!(run["status"], "failed", "{run:#}");
    let msg = run["steps"][0]["error"]["message"].as_str().unwrap();
    assert!(msg.contains("cloud-metadata"), "{msg}");
    assert_eq!(run["steps"][0]["attempts"], 1);
    // More redirects than allowed fail the attempt.
    receiver.fail_next([
        Fault::Redirect("/a".into()),
        Fault::Redirect("/b".into()),
        Fault::Redirect("/c".into()),
    ]);
    let run = ferry
        .run_event(
            "/cb",
            &json!({ "callback": format!("http://127.0.0.1:{port}/start") }),
        )
        .await;
    // The first attempt stopped at the third redirect; the retry found no redirect left.
    assert_eq!(run["steps"][0]["attempts"], 2, "{run:#}");
    let paths: Vec<String> = receiver.requests().iter().map(|r| r.path.clone()).collect();
    assert_eq!(paths[paths.len() - 4..], ["/start", "/a", "/b", "/start"]);
    assert!(
        receiver.requests_to("/c").is_empty(),
        "the third redirect is not followed"
    );
}

#[tokio::test]
async fn a_redirect_to_another_host_carries_no_referer_with_query_credentials() {
    use crate::harness::Fault;
    let (receiver, _project, ferry) = keyed_connection("id: keyed\nbase_url: '@RECEIVER@'\nauth: { api_key: { query: api_key, value: { env: QUERY_KEY } } }\nretry: { attempts: 1 }\n", ("QUERY_KEY", "query-Secret-31337")).await;
    let port = receiver.addr.port();
    // `localhost` is another host than the connection's `127.0.0.1`.
    receiver.fail_next([Fault::Redirect(format!("http://localhost:{port}/landed"))]);
    let run = ferry.run_event("/k", &json!({})).await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    let landed = receiver.requests_to("/landed");
    assert_eq!(landed.len(), 1);
    let seen = format!("{:?}", landed[0]);
    assert!(!seen.contains("query-Secret-31337"), "{seen}");
    assert_eq!(landed[0].header("referer"), "", "{seen}");
}

#[tokio::test]
async fn a_listing_whose_next_page_was_fetched_already_fails_instead_of_looping() {
    let (api, addr) = Api::start().await;
    let steps =
        "  - id: all\n    http: { connection: api, path: /loop/0, paginate: { link: next } }\n";
    let project = Project::new(
        &[
            ("connections/api.yaml", connection(addr).as_str()),
            ("flows/f.yaml", flow("f", steps).as_str()),
        ],
        None,
    );
    let ferry = Ferry::start(&project);
    let run = ferry.run_event("/f", &json!({})).await;
    assert_eq!(run["status"], "failed", "{run:#}");
    let msg = run["steps"][0]["error"]["message"].as_str().unwrap();
    assert!(msg.contains("fetched already"), "{msg}");
    // /loop/0, /loop/1, and not /loop/0 again (nor 100 pages).
    assert_eq!(api.seen("/loop/0").len() + api.seen("/loop/1").len(), 2);

    // And `max_pages` has a ceiling, said at validate time.
    let steps = "  - id: all\n    http: { connection: api, path: /loop/0, paginate: { link: next, max_pages: 9223372036854775807 } }\n";
    let project = Project::new(
        &[
            ("connections/api.yaml", connection(addr).as_str()),
            ("flows/f.yaml", flow("f", steps).as_str()),
        ],
        None,
    );
    let out = std::process::Command::new(crate::harness::bin())
        .arg("validate")
        .arg(project.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("`max_pages` is at most 10000"), "{stdout}");
}

#[tokio::test]
async fn a_secret_header_is_not_carried_to_another_host_by_a_redirect() {
    use crate::harness::Fault;
    let (receiver, _project, ferry) = keyed_connection("id: keyed\nbase_url: '@RECEIVER@'\nheaders: { X-Api-Key: { env: HEADER_KEY } }\nretry: { attempts: 3, initial: 10ms, max: 20ms }\n", ("HEADER_KEY", "header-Secret-4242")).await;
    let port = receiver.addr.port();
    // To another host (`localhost`, not `127.0.0.1`): refused, once, with the reason.
    receiver.fail_next([Fault::Redirect(format!("http://localhost:{port}/landed"))]);
    let run = ferry.run_event("/k", &json!({})).await;
    assert_eq!(run["status"], "failed", "{run:#}");
    let msg = run["steps"][0]["error"]["message"].as_str().unwrap();
    assert!(msg.contains("not sent to another host"), "{msg}");
    assert_eq!(run["steps"][0]["attempts"], 1, "{run:#}");
    assert!(receiver.requests_to("/landed").is_empty());
    // On the same host a redirect is followed, key and all.
    receiver.fail_next([Fault::Redirect("/same-host".into())]);
    let run = ferry.run_event("/k", &json!({})).await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    let landed = receiver.requests_to("/same-host");
    assert_eq!(landed[0].header("x-api-key"), "header-Secret-4242");
}

/// A receiver, and Ferry (allowed to reach loopback) with connection `keyed` (`conn`, with
/// `@RECEIVER@`) and a flow `/k` that GETs its `/start`; `env` is set for the server.
async fn keyed_connection(
    conn: &str,
    env: (&str, &str),
) -> (crate::harness::Receiver, Project, Ferry) {
    let receiver = crate::harness::Receiver::start().await;
    let project = Project::new(
        &[
            ("connections/keyed.yaml", conn),
            (
                "flows/k.yaml",
                flow(
                    "k",
                    "  - id: get\n    http: { connection: keyed, path: /start }\n",
                )
                .as_str(),
            ),
        ],
        Some(&receiver),
    );
    let ferry = Ferry::start_env_args(&project, &[env], &["--allow-network", "127.0.0.0/8"]);
    (receiver, project, ferry)
}
