//! The functions every webhook event goes through, one by one: what a change to the ingest or
//! run path costs, without a server, a disk or a load generator. `cargo bench -p ferry-core`.

use criterion::{Criterion, criterion_group, criterion_main};
use ferry_core::expr::Reads;
use std::hint::black_box;

use ferry_core::expr::{RunContext, Template};

/// The ~1 KB customer the load benchmark (`bench/post.lua`) posts.
const BODY: &[u8] = br#"{"email":"Ada.Lovelace@Example.com","first_name":"Ada","last_name":"Lovelace","phone":"+44 20 7946 0958","company":"Analytical Engines Ltd","address":{"line1":"12 St James's Square","line2":"","city":"London","postcode":"SW1Y 4JH","country":"GB"},"marketing_opt_in":true,"source":"web-shop","tags":["newsletter","vip","early-adopter","b2b"],"order":{"id":"ord_7Qp2Lx9Kz","currency":"EUR","total":"1249.90","items":[{"sku":"ENG-001","name":"Difference Engine No. 2","qty":1,"price":"999.90"},{"sku":"CARD-100","name":"Punched cards (box of 100)","qty":5,"price":"50.00"}]},"consent":{"terms":"2026-11-25T08:00:00Z","privacy":"2026-11-25T08:00:00Z","ip":"203.0.113.7"},"notes":"Please deliver to the reception desk; the building closes at 18:00 on weekdays and is closed at weekends."}"#;

fn event_text() -> String {
    let body =
        ferry_core::trigger::webhook::parse_body(Some("application/json"), BODY, 64).unwrap();
    ferry_core::trigger::event(
        body,
        headers(),
        Default::default(),
        "POST",
        "/bench/e2e",
        1_795_000_000_000,
    )
    .to_string()
}

fn headers() -> serde_json::Map<String, serde_json::Value> {
    let mut headers = serde_json::Map::new();
    for (k, v) in [
        ("host", "127.0.0.1:8080"),
        ("content-type", "application/json"),
        ("content-length", "1043"),
    ] {
        headers.insert(k.into(), v.into());
    }
    headers
}

/// What a webhook builds: the stored text and the jq value (of what `reads` names), without
/// a serde_json tree.
fn event_fast(reads: &Reads) -> ferry_core::trigger::Event {
    let body_reads = reads.get("body").unwrap_or(Reads::nothing());
    let body = ferry_core::trigger::webhook::parse_body_fast(
        Some("application/json"),
        BODY,
        64,
        body_reads,
    )
    .unwrap();
    ferry_core::trigger::event_parts(
        body,
        &headers(),
        &Default::default(),
        "POST",
        "/bench/e2e",
        1_795_000_000_000,
        reads,
    )
}

fn hot(c: &mut Criterion) {
    c.bench_function("ingest: body to event text and jq value", |b| {
        b.iter(|| event_fast(&Reads::All))
    });
    // The bench flows read `.event.body.email`, `.first_name` and `.last_name`.
    let mut reads = Reads::default();
    for src in [
        ".event.body.email | ascii_downcase",
        r#".event.body.first_name + " " + .event.body.last_name"#,
    ] {
        reads.add(ferry_core::expr::Expr::compile(src).unwrap().reads());
    }
    let reads = reads.get("event").unwrap().clone();
    c.bench_function(
        "ingest: body to event text and the jq values a flow reads",
        |b| b.iter(|| event_fast(&reads)),
    );
    c.bench_function("ingest: parse the body", |b| {
        b.iter(|| {
            ferry_core::trigger::webhook::parse_body(Some("application/json"), black_box(BODY), 64)
                .unwrap()
        })
    });
    c.bench_function("ingest (serde_json tree): body to event text", |b| {
        b.iter(event_text)
    });
    let text = event_text();
    let run = serde_json::json!({"id": "0193-run", "flow": "e2e", "attempt": 1});
    c.bench_function("run: event text to context (and drop)", |b| {
        b.iter(|| RunContext::from_text(black_box(&text), &run))
    });
    let ctx = RunContext::from_text(&text, &run);
    let t = Template::Object(vec![
        (
            "email".into(),
            Template::compile_str("{{ .event.body.email | ascii_downcase }}").unwrap(),
        ),
        (
            "name".into(),
            Template::compile_str("{{ .event.body.first_name + \" \" + .event.body.last_name }}")
                .unwrap(),
        ),
        ("source".into(), Template::compile_str("web-shop").unwrap()),
    ]);
    c.bench_function("run: render the e2e map step", |b| {
        b.iter(|| t.render(black_box(&ctx.val())).unwrap())
    });
    let mut ctx = ctx;
    ctx.set_step("contact", &t.render(&ctx.val()).unwrap());
    let body = Template::compile_str("{{ .steps.contact }}").unwrap();
    let full = ctx.val();
    c.bench_function("run: render a plain path (`{{ .steps.contact }}`)", |b| {
        b.iter(|| body.render(black_box(&full)).unwrap())
    });
}

criterion_group!(benches, hot);
criterion_main!(benches);
