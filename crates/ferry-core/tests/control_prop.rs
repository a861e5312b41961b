//! Property: a run of a random nested flow (`switch`, `foreach` and `parallel` over `map`,
//! `http` and `delay` steps) ends the same however it is interrupted. Each generated flow runs
//! once without trouble, then again with interruptions at random calls: the partner answers
//! 503 (the step is retried an hour later), or hangs and the engine "crashes" in the middle of
//! the call (its runtime is shut down, so every task stops at its next await, as with
//! `kill -9`, and nothing of the engine runs after that) and a new engine resumes on the same
//! store. The interrupted run must end with the same status, error and step rows (status and
//! output), and a step whose row was stored done before a crash must not be called again
//! (checked by `Idempotency-Key`); a call is repeated only when it was answered 503 or cut
//! off by a crash.
//!
//! The engine runs on a [`ManualClock`]: retries and delays happen when the driver moves the
//! clock, once nothing is due; nothing here waits for real time.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode, Uri};
use proptest::prelude::*;
use serde_json::{Value as Json, json};
use tokio_util::sync::CancellationToken;

use ferry_core::engine::harness::START_MS;
use ferry_core::engine::{Clock, Engine, EngineConfig, ManualClock};
use ferry_core::store::sqlite::SqliteStore;
use ferry_core::store::{Ingested, RunDetail, RunStatus, Store, StoreError};

// ---------------------------------------------------------------------------------------------
// Flows

#[derive(Clone, Debug)]
enum Step {
    Map,
    /// A call; `bad` ones always get 422 (not retried), and `fail` says whether that fails the
    /// step's block (else `on_error: continue`).
    Http {
        bad: bool,
        fail: bool,
    },
    Delay,
    /// Arms in order: the short form (`if`/`then`/`else`) for one or two arms when `short`,
    /// else cases, the last of several being `default`.
    Switch {
        short: bool,
        arms: Vec<Vec<Step>>,
    },
    Foreach {
        items: usize,
        concurrency: usize,
        keep_going: bool,
        steps: Vec<Step>,
    },
    Parallel {
        settled: bool,
        branches: Vec<Vec<Step>>,
    },
}

fn leaf() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => Just(Step::Map),
        5 => (prop::bool::weighted(0.2), any::<bool>()).prop_map(|(bad, fail)| Step::Http { bad, fail }),
        1 => Just(Step::Delay),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    leaf().prop_recursive(3, 24, 3, |inner| {
        let block = prop::collection::vec(inner, 1..=3);
        prop_oneof![
            (any::<bool>(), prop::collection::vec(block.clone(), 1..=3))
                .prop_map(|(short, arms)| Step::Switch { short, arms }),
            (0..=3usize, 1..=3usize, any::<bool>(), block.clone()).prop_map(
                |(items, concurrency, keep_going, steps)| Step::Foreach {
                    items,
                    concurrency,
                    keep_going,
                    steps
                }
            ),
            (any::<bool>(), prop::collection::vec(block, 1..=3))
                .prop_map(|(settled, branches)| Step::Parallel { settled, branches }),
        ]
    })
}

/// Renders steps as the JSON form of YAML (a flow file may be written so), with ids `s1`,
/// `s2`, … unique in the flow.
struct Render {
    next: usize,
}

impl Render {
    /// `strict`: a failing step may fail its block here without making the outcome depend on
    /// timing. Not so inside a loop that stops at its first failed item with several items in
    /// flight: which items started before the stop depends on which call answered first.
    fn block(&mut self, steps: &[Step], in_loop: bool, strict: bool) -> Json {
        Json::Array(
            steps
                .iter()
                .map(|s| self.step(s, in_loop, strict))
                .collect(),
        )
    }

    fn step(&mut self, step: &Step, in_loop: bool, strict: bool) -> Json {
        self.next += 1;
        let id = format!("s{}", self.next);
        // Conditions and bodies read the event, and inside a loop the item: the same in
        // every run of the flow.
        let at = if in_loop {
            "(.event.body.n + .index)"
        } else {
            ".event.body.n"
        };
        match step {
            Step::Map => json!({
                "id": id,
                "map": if in_loop {
                    json!({ "n": "{{ .event.body.n }}", "item": "{{ .item }}", "index": "{{ .index }}" })
                } else {
                    json!({ "n": "{{ .event.body.n }}", "k": id })
                },
            }),
            Step::Http { bad, fail } => {
                let path = format!("/{}/{id}", if *bad { "bad" } else { "ok" });
                let body = if in_loop {
                    json!({ "id": id, "n": "{{ .event.body.n }}", "index": "{{ .index }}" })
                } else {
                    json!({ "id": id, "n": "{{ .event.body.n }}" })
                };
                let mut s = json!({
                    "id": id,
                    "http": { "connection": "api", "method": "POST", "path": path, "body": body },
                });
                if !(*fail && strict) {
                    s["on_error"] = json!("continue");
                }
                s
            }
            Step::Delay => json!({ "id": id, "delay": "1m" }),
            Step::Switch { short, arms } => {
                let k = arms.len().max(2);
                let sw = if *short && arms.len() <= 2 {
                    let mut sw = json!({
                        "if": format!("{{{{ {at} % 2 == 0 }}}}"),
                        "then": self.block(&arms[0], in_loop, strict),
                    });
                    if let Some(other) = arms.get(1) {
                        sw["else"] = self.block(other, in_loop, strict);
                    }
                    sw
                } else {
                    let (cases, default) = if arms.len() > 1 {
                        (&arms[..arms.len() - 1], arms.last())
                    } else {
                        (&arms[..], None)
                    };
                    let cases: Vec<Json> = cases
                        .iter()
                        .enumerate()
                        .map(|(i, steps)| {
                            json!({
                                "when": format!("{{{{ {at} % {k} == {i} }}}}"),
                                "steps": self.block(steps, in_loop, strict),
                            })
                        })
                        .collect();
                    let mut sw = json!({ "cases": cases });
                    if let Some(d) = default {
                        sw["default"] = self.block(d, in_loop, strict);
                    }
                    sw
                };
                json!({ "id": id, "switch": sw })
            }
            Step::Foreach {
                items,
                concurrency,
                keep_going,
                steps,
            } => {
                let inner_strict = strict && (*keep_going || *concurrency == 1);
                json!({
                    "id": id,
                    "foreach": {
                        "items": (0..*items).map(|i| format!("{id}-{i}")).collect::<Vec<_>>(),
                        "concurrency": concurrency,
                        "on_item_error": if *keep_going { "continue" } else { "fail" },
                        "steps": self.block(steps, true, inner_strict),
                    },
                })
            }
            Step::Parallel { settled, branches } => {
                let branches: serde_json::Map<String, Json> = branches
                    .iter()
                    .enumerate()
                    .map(|(i, b)| (format!("b{i}"), self.block(b, in_loop, strict)))
                    .collect();
                json!({
                    "id": id,
                    "parallel": { "join": if *settled { "settled" } else { "all" }, "branches": branches },
                })
            }
        }
    }
}

/// A project with the connection `api` (4 attempts an hour apart: enough for the 503s a case
/// injects) and the flow `f`: a first call, then `steps`.
fn project(url: &str, steps: &[Step]) -> tempfile::TempDir {
    let mut r = Render { next: 0 };
    let mut all = vec![r.step(
        &Step::Http {
            bad: false,
            fail: true,
        },
        false,
        true,
    )];
    if let Json::Array(rest) = r.block(steps, false, true) {
        all.extend(rest);
    }
    let flow = json!({ "id": "f", "trigger": "manual", "steps": all });
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("flows")).unwrap();
    std::fs::create_dir_all(dir.path().join("connections")).unwrap();
    std::fs::write(dir.path().join("flows/f.yaml"), flow.to_string()).unwrap();
    std::fs::write(
        dir.path().join("connections/api.yaml"),
        format!(
            "id: api\nbase_url: '{url}'\nretry: {{ attempts: 4, initial: 1h, backoff: fixed }}\n"
        ),
    )
    .unwrap();
    dir
}

// ---------------------------------------------------------------------------------------------
// The partner

#[derive(Clone, Copy, Debug, PartialEq)]
enum Act {
    /// Answer 503: the step is retried.
    Unavailable,
    /// Never answer: the engine is crashed while it waits.
    Hang,
}

#[derive(Default)]
struct Script {
    /// Every call, in order: its Idempotency-Key.
    calls: Vec<String>,
    /// What to do at the call with this number (from 0).
    acts: HashMap<usize, Act>,
    /// Keys answered 503.
    unavailable: HashSet<String>,
    hung: Option<mpsc::Sender<()>>,
}

/// One loopback server for every case (cases run one at a time), on a runtime of its own so
/// that it outlives the engines' runtimes.
struct Partner {
    url: String,
    script: Arc<Mutex<Script>>,
}

fn partner() -> &'static Partner {
    static PARTNER: OnceLock<Partner> = OnceLock::new();
    PARTNER.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let script = Arc::new(Mutex::new(Script::default()));
        let state = script.clone();
        let app =
            axum::Router::new().fallback(move |uri: Uri, headers: HeaderMap, body: String| {
                let state = state.clone();
                async move {
                    let key = headers
                        .get("idempotency-key")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    let act = {
                        let mut s = state.lock().unwrap();
                        let n = s.calls.len();
                        s.calls.push(key.clone());
                        let act = s.acts.remove(&n);
                        match act {
                            Some(Act::Unavailable) => {
                                s.unavailable.insert(key);
                            }
                            Some(Act::Hang) => {
                                if let Some(tx) = &s.hung {
                                    let _ = tx.send(());
                                }
                            }
                            None => {}
                        }
                        act
                    };
                    let (status, answer) = match act {
                        Some(Act::Unavailable) => (503, "{\"error\":\"unavailable\"}".to_owned()),
                        Some(Act::Hang) => {
                            // Cut off by the crash; whatever is answered later goes nowhere.
                            tokio::time::sleep(Duration::from_secs(60)).await;
                            (200, body)
                        }
                        None if uri.path().starts_with("/bad/") => {
                            (422, "{\"error\":\"refused\"}".to_owned())
                        }
                        None => (200, body),
                    };
                    (
                        StatusCode::from_u16(status).unwrap(),
                        [("content-type", "application/json")],
                        answer,
                    )
                }
            });
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        rt.spawn(async move { axum::serve(listener, app).await.unwrap() });
        // The runtime lives as long as the test process.
        std::mem::forget(rt);
        Partner { url, script }
    })
}

impl Partner {
    fn reset(&self, acts: HashMap<usize, Act>, hung: Option<mpsc::Sender<()>>) {
        *self.script.lock().unwrap() = Script {
            acts,
            hung,
            ..Script::default()
        };
    }

    fn calls(&self) -> Vec<String> {
        self.script.lock().unwrap().calls.clone()
    }

    fn unavailable(&self) -> HashSet<String> {
        self.script.lock().unwrap().unavailable.clone()
    }
}

fn count(calls: &[String]) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for k in calls {
        *m.entry(k.clone()).or_default() += 1;
    }
    m
}

// ---------------------------------------------------------------------------------------------
// An engine that can crash

/// An engine on a runtime of its own, on the store in `data`.
struct Node {
    rt: tokio::runtime::Runtime,
    engine: Arc<Engine>,
}

fn open_store(data: &Path) -> SqliteStore {
    // The crashed engine's store is dropped with its last task; until then the data folder
    // is still locked.
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        match SqliteStore::open(data) {
            Ok(s) => return s,
            Err(StoreError::Conflict(_)) if Instant::now() < until => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => panic!("cannot open the store: {e}"),
        }
    }
}

impl Node {
    fn start(dir: &Path, data: &Path, clock: &Arc<ManualClock>) -> Node {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let engine = {
            let _in = rt.enter();
            let project = ferry_core::flow::load_project(dir).unwrap_or_else(|d| panic!("{d}"));
            let store: Arc<dyn Store> = Arc::new(open_store(data));
            let config = EngineConfig {
                allow_networks: vec!["127.0.0.0/8".parse().unwrap()],
                ..EngineConfig::default()
            };
            Arc::new(Engine::new(store, Arc::new(project), config).with_clock(clock.clone()))
        };
        // Never cancelled: the node ends by crashing.
        rt.spawn(engine.clone().run(CancellationToken::new(), Duration::ZERO));
        Node { rt, engine }
    }

    fn start_run(&self, body: Json) -> String {
        let engine = self.engine.clone();
        self.rt.block_on(async move {
            let flow = engine.project.flow("f").cloned().expect("flow f");
            let now = engine.clock.now_ms();
            let event = ferry_core::trigger::event(
                body,
                Default::default(),
                Default::default(),
                "POST",
                "/api/v1/flows/f/runs",
                now,
            );
            let event = ferry_core::trigger::Event::from_json(&event);
            match engine.ingest(&flow, event, now, None).await.unwrap() {
                Ingested::Created(id) | Ingested::Duplicate(id) => id,
            }
        })
    }

    /// As `kill -9` does: every task of the engine stops where it is and never runs again.
    fn crash(self) {
        let Node { rt, engine } = self;
        drop(engine);
        rt.shutdown_timeout(Duration::from_secs(10));
    }
}

enum End {
    Finished(Box<RunDetail>),
    Crashed,
}

/// Lets the run go on, moving the clock to the next due time whenever nothing is due now,
/// until it ends, or the partner hangs (then the caller crashes the node).
fn drive(node: &Node, clock: &ManualClock, run_id: &str, hung: Option<&mpsc::Receiver<()>>) -> End {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut idle = 0;
    loop {
        if hung.is_some_and(|h| h.try_recv().is_ok()) {
            return End::Crashed;
        }
        let store = node.engine.store.clone();
        let id = run_id.to_owned();
        let (run, due) = node.rt.block_on(async move {
            (
                store.get_run(&id).await.unwrap().expect("the run"),
                store.next_due().await.unwrap(),
            )
        });
        match run.summary.status {
            RunStatus::Succeeded | RunStatus::Failed | RunStatus::Dead => {
                return End::Finished(Box::new(run));
            }
            RunStatus::Queued if due.is_some_and(|at| at > clock.now_ms()) => {
                // Seen idle three times in a row: the run's task has ended.
                idle += 1;
                if idle == 3 {
                    let by = due.unwrap() - clock.now_ms();
                    clock.advance(Duration::from_millis(by as u64));
                    idle = 0;
                }
            }
            _ => idle = 0,
        }
        node.engine.wake();
        assert!(Instant::now() < deadline, "the run did not end: {run:#?}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// What a run shows once ended: its status and error, and per step path its status and
/// output, without what differs from run to run (response headers, when a delay ended).
type Shown = (
    String,
    Option<Json>,
    BTreeMap<String, (String, Option<Json>)>,
);

fn shown(run: &RunDetail) -> Shown {
    fn clean(v: &Json) -> Json {
        match v {
            Json::Object(m) => Json::Object(
                m.iter()
                    .filter(|(k, _)| !matches!(k.as_str(), "headers" | "until" | "until_ms"))
                    .map(|(k, v)| (k.clone(), clean(v)))
                    .collect(),
            ),
            Json::Array(a) => Json::Array(a.iter().map(clean).collect()),
            other => other.clone(),
        }
    }
    (
        format!("{:?}", run.summary.status),
        run.summary.error.as_ref().map(clean),
        run.steps
            .iter()
            .map(|s| {
                (
                    s.path.clone(),
                    (format!("{:?}", s.status), s.output.as_ref().map(clean)),
                )
            })
            .collect(),
    )
}

/// The run's keys (`RUN_ID:PATH`) as paths, to compare two runs.
fn paths(run_id: &str, keys: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut v: Vec<String> = keys
        .into_iter()
        .map(|k| {
            k.strip_prefix(&format!("{run_id}:"))
                .unwrap_or(&k)
                .to_owned()
        })
        .collect();
    v.sort();
    v
}

fn check(steps: Vec<Step>, n: u8, interruptions: Vec<(bool, prop::sample::Index)>) {
    let p = partner();
    let dir = project(&p.url, &steps);
    let body = json!({ "n": n });

    // Once without trouble.
    p.reset(HashMap::new(), None);
    let clock = Arc::new(ManualClock::new(START_MS));
    let data = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), data.path(), &clock);
    let id = node.start_run(body.clone());
    let End::Finished(want) = drive(&node, &clock, &id, None) else {
        unreachable!()
    };
    node.crash();
    let want_calls = p.calls();
    assert!(
        count(&want_calls).values().all(|n| *n == 1),
        "an untroubled run called a step twice: {want_calls:?}"
    );

    // Again, answered 503 or hung at random calls.
    let acts: HashMap<usize, Act> = interruptions
        .iter()
        .map(|(hang, at)| {
            (
                at.index(want_calls.len()),
                if *hang { Act::Hang } else { Act::Unavailable },
            )
        })
        .collect();
    let (tx, hung) = mpsc::channel();
    p.reset(acts.clone(), Some(tx));
    let clock = Arc::new(ManualClock::new(START_MS));
    let data = tempfile::tempdir().unwrap();
    let mut node = Node::start(dir.path(), data.path(), &clock);
    let run_id = node.start_run(body);
    // Per crash: the rows stored done, and the calls made, at that moment.
    let mut crashes: Vec<(HashSet<String>, HashMap<String, usize>)> = Vec::new();
    let got = loop {
        match drive(&node, &clock, &run_id, Some(&hung)) {
            End::Finished(run) => break run,
            End::Crashed => {
                node.crash();
                let store = open_store(data.path());
                let run = tokio::runtime::Builder::new_current_thread()
                    .build()
                    .unwrap()
                    .block_on(store.get_run(&run_id))
                    .unwrap()
                    .unwrap();
                drop(store);
                let done: HashSet<String> = run
                    .steps
                    .iter()
                    .filter(|s| {
                        matches!(
                            s.status,
                            ferry_core::store::StepStatus::Succeeded
                                | ferry_core::store::StepStatus::Failed
                        )
                    })
                    .map(|s| format!("{run_id}:{}", s.path))
                    .collect();
                crashes.push((done, count(&p.calls())));
                node = Node::start(dir.path(), data.path(), &clock);
            }
        }
    };
    node.crash();

    assert_eq!(
        shown(&got),
        shown(&want),
        "the interrupted run ({acts:?}) ended otherwise"
    );
    let calls = count(&p.calls());
    assert_eq!(
        paths(&run_id, calls.keys().cloned()),
        paths(&id, count(&want_calls).into_keys()),
        "the interrupted run called other steps"
    );
    let mut may_repeat = p.unavailable();
    for (done, before) in &crashes {
        for key in done {
            assert_eq!(
                calls.get(key),
                before.get(key),
                "`{key}` was stored done before a crash, and called again"
            );
        }
        may_repeat.extend(before.keys().filter(|k| !done.contains(*k)).cloned());
    }
    for (key, n) in &calls {
        assert!(
            *n == 1 || may_repeat.contains(key),
            "`{key}` called {n} times, though never answered 503 nor cut off by a crash"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 24,
        max_shrink_iters: 64,
        ..ProptestConfig::default()
    })]

    #[test]
    fn an_interrupted_run_ends_as_an_untroubled_one_and_calls_no_stored_step_again(
        steps in prop::collection::vec(step(), 1..=4),
        n in 0u8..6,
        interruptions in prop::collection::vec((any::<bool>(), any::<prop::sample::Index>()), 1..=3),
    ) {
        check(steps, n, interruptions);
    }
}
