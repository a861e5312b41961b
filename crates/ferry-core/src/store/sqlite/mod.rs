//! The embedded store: one SQLite file in WAL mode, `synchronous=FULL`.
//!
//! One writer thread owns the only write connection and drains its queue into one
//! transaction per batch ("group commit"): concurrent webhooks share one fsync, which is what
//! makes durable ingest fast (per-event fsync caps out at a few thousand per second). Every
//! caller waits for the COMMIT of its batch before it is answered, so a 202 always follows a
//! durable write. Reads use a small pool of read-only connections, which WAL lets run beside
//! the writer.
//!
//! The data folder is locked (an OS file lock) so two processes never share one SQLite file:
//! that makes "every lease in this file is ours" true at start, and crash recovery is then
//! simply "requeue what was running".
//!
//! Erasure, and getting erased bytes off the disk (the WAL, free space in pages), is in
//! [`erase`].

mod erase;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::FutureExt;
use futures::future::BoxFuture;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use serde_json::Value as Json;
use tokio::sync::{mpsc, oneshot};

use super::*;

/// Most commands committed in one transaction.
const MAX_BATCH: usize = 512;
/// Commands waiting for the writer before ingest sheds load.
const QUEUE_DEPTH: usize = 16_384;
/// How long the writer waits for a lock (a checkpoint in progress, a reader).
const WRITER_BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

const MIGRATIONS: &[&str] = &[
    include_str!("migrations/0001_init.sql"),
    include_str!("migrations/0002_trust.sql"),
    include_str!("migrations/0003_purged.sql"),
    include_str!("migrations/0004_signals.sql"),
    include_str!("migrations/0005_calls.sql"),
];

pub struct SqliteStore {
    tx: mpsc::Sender<Box<dyn Job>>,
    path: PathBuf,
    readers: Arc<Mutex<Vec<Connection>>>,
    /// How long an erase waits for readers on an old snapshot (see [`erase`]).
    scrub_patience: std::time::Duration,
    /// Dropped with the store: the checkpointer thread then stops.
    _checkpointer: std::sync::mpsc::Sender<()>,
    _lock: File,
}

/// How often the checkpointer copies the WAL back into the database file.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// Checkpoints on a connection of its own, so the writer never stops for the bulk of one:
/// SQLite's automatic checkpoint runs inside a committing write, which stalls every caller
/// waiting for that commit. PASSIVE never blocks the writer (or readers).
///
/// Under steady load that alone never lets the WAL start over: the writer appends frames
/// while each checkpoint runs, so the checkpoint never catches up with the end of the WAL,
/// and the file grows by every write (480 MB in four seconds at 22,000 events/s), each
/// write extending it. So each finished pass is counted, and the writer, between two
/// batches, checkpoints the few frames written since (see `writer_loop`): the WAL is then
/// wholly copied back, and the next transaction writes it from the start again. The next
/// pass waits for that catch-up (at most four periods, for an idle writer), since a pass in
/// progress would make the writer's checkpoint fail as busy.
fn checkpointer(path: PathBuf, stop: std::sync::mpsc::Receiver<()>, shared: Arc<Checkpoints>) {
    let conn = match Connection::open(&path) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "checkpointer cannot open the database; the WAL will grow");
            return;
        }
    };
    let _ = conn.busy_timeout(std::time::Duration::from_secs(1));
    let mut waited = 0;
    while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(CHECKPOINT_EVERY)
    {
        let passes = shared.passes.load(Ordering::Acquire);
        if shared.caught_up.load(Ordering::Acquire) != passes && waited < 4 {
            waited += 1;
            continue;
        }
        waited = 0;
        match checkpoint(&conn) {
            Ok(Checkpointed::Busy) => {}
            Ok(_) => {
                shared.passes.fetch_add(1, Ordering::Release);
            }
            Err(e) => tracing::warn!(error = %e, "checkpoint failed"),
        }
    }
    let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
}

/// What a `PASSIVE` checkpoint achieved.
#[derive(PartialEq)]
enum Checkpointed {
    /// Another checkpoint was running.
    Busy,
    /// Some frames stay (a reader on an old snapshot holds them back).
    Part,
    /// Every frame of the WAL is in the database file: the next write starts the WAL over.
    All,
}

fn checkpoint(conn: &Connection) -> rusqlite::Result<Checkpointed> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
        let (busy, frames, copied): (i64, i64, i64) = (r.get(0)?, r.get(1)?, r.get(2)?);
        Ok(match busy {
            0 if frames == copied => Checkpointed::All,
            0 => Checkpointed::Part,
            _ => Checkpointed::Busy,
        })
    })
}

/// The hand-off between the checkpointer and the writer (see [`checkpointer`]).
#[derive(Default)]
struct Checkpoints {
    /// Background passes finished.
    passes: AtomicU64,
    /// The pass after which the writer last caught up.
    caught_up: AtomicU64,
}

type Reply<T> = oneshot::Sender<Result<T>>;

/// One write command for the writer thread. It may run twice: when another command of its
/// batch fails with a database error, the batch is rolled back and each command is retried
/// in a transaction of its own, so one bad command never fails its neighbours.
trait Job: Send {
    /// Runs inside the batch's transaction; true when it failed in a way that may have left
    /// partial changes (the batch must then be rolled back).
    fn run(&mut self, c: &Connection) -> bool;
    /// Runs by itself, outside any transaction, between two batches: a checkpoint or a
    /// VACUUM, which SQLite refuses inside one.
    fn alone(&self) -> bool;
    /// Answers the caller once the outcome of COMMIT is known.
    fn finish(self: Box<Self>, commit: Option<&StoreError>);
}

struct Op<T, F> {
    f: F,
    result: Option<Result<T>>,
    reply: Reply<T>,
    alone: bool,
}

impl<T: Send, F: FnMut(&Connection) -> Result<T> + Send> Job for Op<T, F> {
    fn run(&mut self, c: &Connection) -> bool {
        let r = (self.f)(c);
        let partial = matches!(r, Err(StoreError::Db(_)));
        self.result = Some(r);
        partial
    }
    fn alone(&self) -> bool {
        self.alone
    }
    fn finish(self: Box<Self>, commit: Option<&StoreError>) {
        let r = match (commit, self.result) {
            (Some(e), Some(Ok(_))) => Err(StoreError::Db(e.to_string())),
            (_, Some(r)) => r,
            (_, None) => Err(StoreError::Db("not run".into())),
        };
        let _ = self.reply.send(r);
    }
}

impl SqliteStore {
    /// Opens (creating if needed) `DIR/ferry.db`, migrates it, and requeues runs that a
    /// previous process left running.
    pub fn open(dir: &Path) -> Result<SqliteStore> {
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::Db(format!(
                "cannot create data folder `{}`: {e}",
                dir.display()
            ))
        })?;
        let lock = File::create(dir.join("ferry.lock"))
            .map_err(|e| StoreError::Db(format!("cannot create lock file: {e}")))?;
        lock.try_lock().map_err(|_| {
            StoreError::Conflict(format!(
                "data folder `{}` is in use by another ferry process",
                dir.display()
            ))
        })?;
        let path = dir.join("ferry.db");
        let mut conn = Connection::open(&path)?;
        // Every byte this connection frees is overwritten with zeros: the cell of an updated
        // or deleted row, a freed page, a page emptied when a root splits. Turned on only
        // for an erase, it came too late: the old versions of a run's row (one per status
        // change, one per step write) were already left in free space, where `ferry erase`
        // could not reach them (issue 12: 5 copies in `ferry.db` after an erase). This is
        // the only connection that writes (the data folder lock keeps other processes out;
        // readers and the checkpointer free nothing), and it costs nothing measurable:
        // 50,000 runs of 800 B or 6 KB took as long with it as without.
        conn.pragma_update(None, "secure_delete", "ON")?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "OFF")?;
        conn.busy_timeout(WRITER_BUSY_TIMEOUT)?;
        migrate(&mut conn)?;
        let requeued = conn.execute(
            "UPDATE runs SET status = 'queued', lease_owner = NULL, lease_until = NULL WHERE status = 'running'",
            [],
        )?;
        if requeued > 0 {
            tracing::info!(
                runs = requeued,
                "requeued runs left running by the previous process"
            );
        }
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        // After a spike, the WAL file goes back to this size at the next restart.
        conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)?;
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let shared = Arc::new(Checkpoints::default());
        let writer_side = shared.clone();
        std::thread::Builder::new()
            .name("ferry-sqlite-writer".into())
            .spawn(move || writer_loop(conn, rx, writer_side))
            .map_err(|e| StoreError::Db(format!("cannot start writer thread: {e}")))?;
        let (stop, stopped) = std::sync::mpsc::channel();
        let db = path.clone();
        std::thread::Builder::new()
            .name("ferry-sqlite-checkpoint".into())
            .spawn(move || checkpointer(db, stopped, shared))
            .map_err(|e| StoreError::Db(format!("cannot start checkpoint thread: {e}")))?;
        Ok(SqliteStore {
            tx,
            path,
            readers: Arc::new(Mutex::new(Vec::new())),
            scrub_patience: erase::SCRUB_PATIENCE,
            _checkpointer: stop,
            _lock: lock,
        })
    }

    fn send<T: Send + 'static>(
        &self,
        f: impl FnMut(&Connection) -> Result<T> + Send + 'static,
        shed: bool,
    ) -> BoxFuture<'_, Result<T>> {
        self.send_job(f, shed, false)
    }

    /// Runs `f` on the writer between two batches, outside any transaction.
    fn send_alone<T: Send + 'static>(
        &self,
        f: impl FnMut(&Connection) -> Result<T> + Send + 'static,
    ) -> BoxFuture<'_, Result<T>> {
        self.send_job(f, false, true)
    }

    fn send_job<T: Send + 'static>(
        &self,
        f: impl FnMut(&Connection) -> Result<T> + Send + 'static,
        shed: bool,
        alone: bool,
    ) -> BoxFuture<'_, Result<T>> {
        let (reply, rx) = oneshot::channel();
        let job: Box<dyn Job> = Box::new(Op {
            f,
            result: None,
            reply,
            alone,
        });
        async move {
            if shed {
                self.tx.try_send(job).map_err(|e| match e {
                    mpsc::error::TrySendError::Full(_) => StoreError::Overloaded,
                    mpsc::error::TrySendError::Closed(_) => StoreError::Closed,
                })?;
            } else {
                self.tx.send(job).await.map_err(|_| StoreError::Closed)?;
            }
            rx.await.map_err(|_| StoreError::Closed)?
        }
        .boxed()
    }

    fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T> + Send + 'static,
    ) -> BoxFuture<'_, Result<T>> {
        let readers = self.readers.clone();
        let path = self.path.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                let conn = readers.lock().expect("reader pool").pop();
                let conn = match conn {
                    Some(c) => c,
                    None => {
                        let c = Connection::open_with_flags(
                            &path,
                            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                        )?;
                        c.busy_timeout(std::time::Duration::from_secs(5))?;
                        c
                    }
                };
                let out = f(&conn);
                let mut pool = readers.lock().expect("reader pool");
                if pool.len() < 8 {
                    pool.push(conn);
                }
                out
            })
            .await
            .map_err(|e| StoreError::Db(format!("reader crashed: {e}")))?
        }
        .boxed()
    }
}

fn migrate(conn: &mut Connection) -> Result<()> {
    conn.execute_batch("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")?;
    let current: i64 = conn.query_row(
        "SELECT COALESCE(MAX(version), 0) FROM schema_version",
        [],
        |r| r.get(0),
    )?;
    if current as usize > MIGRATIONS.len() {
        return Err(StoreError::Db(format!(
            "the data folder was written by a newer ferry (schema {current}, this build knows {})",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.execute(
            "INSERT INTO schema_version (version) VALUES (?1)",
            [i as i64 + 1],
        )?;
        tx.commit()?;
    }
    Ok(())
}

fn writer_loop(
    conn: Connection,
    mut rx: mpsc::Receiver<Box<dyn Job>>,
    checkpoints: Arc<Checkpoints>,
) {
    let mut batch: Vec<Box<dyn Job>> = Vec::with_capacity(MAX_BATCH);
    let mut seen = 0;
    while let Some(first) = rx.blocking_recv() {
        // A job that runs alone ends the batch; it runs after the batch's COMMIT.
        let mut alone = None;
        if first.alone() {
            alone = Some(first);
        } else {
            batch.push(first);
        }
        while alone.is_none() && batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) if job.alone() => alone = Some(job),
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        if !batch.is_empty() {
            run_batch(&conn, &mut batch);
        }
        if let Some(mut job) = alone {
            job.run(&conn);
            job.finish(None);
        }
        // The checkpointer finished a pass: copy what was written meanwhile (a few
        // milliseconds' worth), after this batch was answered, so the WAL starts over.
        let done = checkpoints.passes.load(Ordering::Acquire);
        if done != seen {
            seen = done;
            match checkpoint(&conn) {
                Ok(Checkpointed::All) => checkpoints.caught_up.store(done, Ordering::Release),
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "catch-up checkpoint failed"),
            }
        }
    }
}

/// BEGIN/COMMIT/ROLLBACK through cached statements: parsing them per batch showed up in
/// profiles when batches are small.
fn exec_cached(c: &Connection, sql: &str) -> Result<()> {
    c.prepare_cached(sql)?.execute([])?;
    Ok(())
}

/// Applies a batch in one transaction and answers every caller after COMMIT (group commit:
/// one fsync for the whole batch).
fn run_batch(conn: &Connection, batch: &mut Vec<Box<dyn Job>>) {
    if let Err(e) = exec_cached(conn, "BEGIN IMMEDIATE") {
        for job in batch.drain(..) {
            job.finish(Some(&e));
        }
        return;
    }
    let poisoned = batch.iter_mut().any(|job| job.run(conn));
    if !poisoned {
        let commit = exec_cached(conn, "COMMIT").err();
        if let Some(e) = &commit {
            tracing::error!(error = %e, "commit failed; the batch is answered with an error");
            let _ = exec_cached(conn, "ROLLBACK");
        }
        for job in batch.drain(..) {
            job.finish(commit.as_ref());
        }
        return;
    }
    // One command failed after it may have written: undo the batch, then give each command
    // a transaction of its own.
    let _ = exec_cached(conn, "ROLLBACK");
    for mut job in batch.drain(..) {
        let outcome = exec_cached(conn, "BEGIN IMMEDIATE").and_then(|_| {
            if job.run(conn) {
                exec_cached(conn, "ROLLBACK")?;
                Ok(())
            } else {
                exec_cached(conn, "COMMIT")
            }
        });
        job.finish(outcome.err().as_ref());
    }
}

fn api_key_row(r: &rusqlite::Row) -> rusqlite::Result<ApiKeyRow> {
    Ok(ApiKeyRow {
        id: r.get(0)?,
        name: r.get(1)?,
        role: r.get(2)?,
        hash: r.get(3)?,
        created_at_ms: r.get(4)?,
        revoked_at_ms: r.get(5)?,
    })
}

/// The smallest UUIDv7 text of millisecond `ms`: ids below it were made before `ms`.
fn uuid_bound(ms: i64) -> String {
    let ms = ms.clamp(0, (1 << 48) - 1) as u64;
    let hex = format!("{ms:012x}");
    format!("{}-{}-7000-0000-000000000000", &hex[..8], &hex[8..])
}

/// Drops a run's payloads; keeps its row (status, times) for counts.
fn purge_run(c: &Connection, id: &str, now_ms: i64) -> Result<()> {
    c.execute(
        "UPDATE runs SET event = '{}', purged_at = ?2 WHERE id = ?1",
        params![id, now_ms],
    )?;
    c.execute(
        "UPDATE steps SET output = NULL, request = NULL, response = NULL, error = NULL WHERE run_id = ?1",
        [id],
    )?;
    Ok(())
}

fn put_meta(c: &Connection, key: &str, value: &[u8], now_ms: i64) -> Result<()> {
    c.execute(
        "INSERT INTO meta (key, value, updated_at) VALUES (?1, ?2, ?3)
         ON CONFLICT (key) DO UPDATE SET value = ?2, updated_at = ?3",
        rusqlite::params![key, value, now_ms],
    )?;
    Ok(())
}

fn ingest(c: &Connection, new: &NewRunText) -> Result<Ingested> {
    let run = &new.run;
    if let Some(d) = &run.dedupe {
        let existing: Option<String> = c
            .prepare_cached(
                "SELECT run_id FROM dedupe WHERE flow = ?1 AND key = ?2 AND expires_at > ?3",
            )?
            .query_row(params![run.flow, d.key, run.now_ms], |r| r.get(0))
            .optional()?;
        if let Some(id) = existing {
            return Ok(Ingested::Duplicate(id));
        }
        c.prepare_cached(
            "INSERT OR REPLACE INTO dedupe (flow, key, run_id, expires_at) VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![run.flow, d.key, run.id, d.expires_at_ms])?;
    }
    let (status, next_at, lease) = match &run.update {
        RunUpdate::Continue => match &run.lease {
            Some(l) => ("running", run.now_ms, Some(l)),
            None => ("queued", run.now_ms, None),
        },
        RunUpdate::Retry { next_at_ms } => ("queued", *next_at_ms, None),
        RunUpdate::Finish { status, .. } => (status.as_str(), run.now_ms, None),
    };
    c.prepare_cached(
        "INSERT INTO runs (id, flow, flow_version, status, attempt, event, created_at, updated_at, next_at,
                           lease_owner, lease_until, error)
         VALUES (?1, ?2, ?3, ?4, 1, ?5, ?6, ?6, ?7, ?8, ?9, ?10)",
    )?
    .execute(params![
        run.id,
        run.flow,
        run.flow_version,
        status,
        run.event,
        run.now_ms,
        next_at,
        lease.map(|l| l.owner.as_str()),
        lease.map(|l| l.until_ms),
        new.error,
    ])?;
    put_steps(c, &run.id, &new.rows)?;
    Ok(Ingested::Created(run.id.clone()))
}

fn claim(
    c: &Connection,
    owner: &str,
    limit: usize,
    lease_until: i64,
    now: i64,
) -> Result<Vec<ClaimedRun>> {
    // Literal LIMITs: a bound LIMIT makes SQLite re-prepare the statement on every call.
    let mut ids: Vec<String> = Vec::new();
    for sql in [
        "SELECT id FROM runs WHERE status = 'queued' AND next_at <= ?1 ORDER BY next_at LIMIT 128",
        "SELECT id FROM runs WHERE status = 'running' AND lease_until < ?1 LIMIT 128",
    ] {
        if ids.len() >= limit {
            break;
        }
        let mut stmt = c.prepare_cached(sql)?;
        let rows = stmt.query_map([now], |r| r.get::<_, String>(0))?;
        for id in rows {
            ids.push(id?);
            if ids.len() >= limit {
                break;
            }
        }
    }
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let (flow, attempt, event) = c
            .prepare_cached(
                "UPDATE runs SET status = 'running', lease_owner = ?2, lease_until = ?3, updated_at = ?4
                 WHERE id = ?1 RETURNING flow, attempt, event",
            )?
            .query_row(params![id, owner, lease_until, now], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, u32>(1)?, r.get::<_, String>(2)?))
            })?;
        let steps = load_steps(c, &id)?;
        out.push(ClaimedRun {
            id,
            flow,
            attempt,
            event,
            steps,
        });
    }
    Ok(out)
}

fn load_steps(c: &Connection, run_id: &str) -> Result<Vec<StepRow>> {
    let mut stmt = c.prepare_cached(
        "SELECT path, status, attempts, started_at, finished_at, output, error, request, response, seq
         FROM steps WHERE run_id = ?1 ORDER BY seq",
    )?;
    let rows = stmt.query_map([run_id], |r| {
        let json = |i: usize| -> rusqlite::Result<Option<Json>> {
            Ok(r.get::<_, Option<String>>(i)?
                .and_then(|s| serde_json::from_str(&s).ok()))
        };
        Ok(StepRow {
            path: r.get(0)?,
            seq: r.get(9)?,
            status: StepStatus::parse(&r.get::<_, String>(1)?),
            attempts: r.get(2)?,
            started_at_ms: r.get(3)?,
            finished_at_ms: r.get(4)?,
            output: json(5)?,
            error: json(6)?,
            request: json(7)?,
            response: json(8)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// A step write with its JSON already serialized, so the single writer thread spends its
/// time on SQLite only.
struct StepWriteText {
    run_id: String,
    owner: String,
    now_ms: i64,
    rows: Vec<RowText>,
    update: RunUpdate,
    error: Option<String>,
    end_waits: Vec<String>,
    output: Option<String>,
}

struct RowText {
    path: String,
    seq: u32,
    status: StepStatus,
    attempts: u32,
    started_at_ms: i64,
    finished_at_ms: i64,
    output: Option<String>,
    error: Option<String>,
    request: Option<String>,
    response: Option<String>,
}

impl RowText {
    fn new(r: StepRow) -> RowText {
        let text = |v: Option<Json>| v.map(|j| j.to_string());
        RowText {
            path: r.path,
            seq: r.seq,
            status: r.status,
            attempts: r.attempts,
            started_at_ms: r.started_at_ms,
            finished_at_ms: r.finished_at_ms,
            output: text(r.output),
            error: text(r.error),
            request: text(r.request),
            response: text(r.response),
        }
    }
}

/// The run's error, as stored.
fn update_error(update: &RunUpdate) -> Option<String> {
    match update {
        RunUpdate::Finish { error, .. } => error.as_ref().map(Json::to_string),
        _ => None,
    }
}

impl StepWriteText {
    fn new(w: StepWrite) -> StepWriteText {
        StepWriteText {
            error: update_error(&w.update),
            rows: w.rows.into_iter().map(RowText::new).collect(),
            run_id: w.run_id,
            owner: w.owner,
            now_ms: w.now_ms,
            update: w.update,
            end_waits: w.end_waits,
            output: w.output.as_ref().map(Json::to_string),
        }
    }
}

/// An ingest with its step records already serialized (see [`StepWriteText`]).
struct NewRunText {
    run: NewRun,
    rows: Vec<RowText>,
    error: Option<String>,
}

impl NewRunText {
    fn new(mut run: NewRun) -> NewRunText {
        NewRunText {
            rows: std::mem::take(&mut run.steps)
                .into_iter()
                .map(RowText::new)
                .collect(),
            error: update_error(&run.update),
            run,
        }
    }
}

/// Inserts (or, on a later attempt, replaces) a run's step records.
fn put_steps(c: &Connection, run_id: &str, rows: &[RowText]) -> Result<()> {
    for row in rows {
        c.prepare_cached(
            "INSERT INTO steps (run_id, path, seq, status, attempts, started_at, finished_at, output, error, request, response)
             VALUES (?1, ?2, ?11, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
             ON CONFLICT (run_id, path) DO UPDATE SET status = excluded.status, attempts = excluded.attempts,
               started_at = excluded.started_at, finished_at = excluded.finished_at, output = excluded.output,
               error = excluded.error, request = excluded.request, response = excluded.response",
        )?
        .execute(params![
            run_id,
            row.path,
            row.status.as_str(),
            row.attempts,
            row.started_at_ms,
            row.finished_at_ms,
            row.output,
            row.error,
            row.request,
            row.response,
            row.seq
        ])?;
    }
    Ok(())
}

fn delivered(c: &Connection, run_id: &str, path: &str) -> Result<Option<Json>> {
    let data: Option<String> = c
        .prepare_cached(
            "SELECT s.data FROM waits w JOIN signals s ON s.id = w.signal_id WHERE w.run_id = ?1 AND w.path = ?2",
        )?
        .query_row(params![run_id, path], |r| r.get(0))
        .optional()?;
    Ok(data.map(|d| serde_json::from_str(&d).unwrap_or(Json::Null)))
}

fn register_wait(c: &Connection, w: &NewWait) -> Result<Option<Json>> {
    let exists: bool = c
        .prepare_cached("SELECT 1 FROM waits WHERE run_id = ?1 AND path = ?2")?
        .exists(params![w.run_id, w.path])?;
    if exists {
        return delivered(c, &w.run_id, &w.path);
    }
    // The oldest signal in the lookback that nobody took.
    let early: Option<(i64, String)> = c
        .prepare_cached(
            "SELECT id, data FROM signals WHERE signal = ?1 AND key = ?2 AND received_at >= ?3
               AND delivered = 0 AND expires_at > ?4 ORDER BY id LIMIT 1",
        )?
        .query_row(params![w.signal, w.key, w.since_ms, w.now_ms], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?;
    c.prepare_cached(
        "INSERT INTO waits (run_id, path, signal, key, until, signal_id, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        w.run_id,
        w.path,
        w.signal,
        w.key,
        w.until_ms,
        early.as_ref().map(|e| e.0),
        w.now_ms
    ])?;
    Ok(match early {
        Some((id, data)) => {
            c.prepare_cached("UPDATE signals SET delivered = delivered + 1 WHERE id = ?1")?
                .execute([id])?;
            Some(serde_json::from_str(&data).unwrap_or(Json::Null))
        }
        None => None,
    })
}

fn send_signal(c: &Connection, s: &NewSignal) -> Result<u64> {
    if let Some(origin) = &s.origin {
        let first: Option<i64> = c
            .prepare_cached("SELECT delivered FROM signals WHERE origin = ?1")?
            .query_row([origin], |r| r.get(0))
            .optional()?;
        if let Some(n) = first {
            return Ok(n as u64);
        }
    }
    c.prepare_cached(
        "INSERT INTO signals (signal, key, data, received_at, expires_at, origin) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![s.signal, s.key, s.data, s.now_ms, s.keep_until_ms, s.origin])?;
    let id = c.last_insert_rowid();
    let taken = c
        .prepare_cached(
            "UPDATE waits SET signal_id = ?1 WHERE signal = ?2 AND key = ?3 AND signal_id IS NULL",
        )?
        .execute(params![id, s.signal, s.key])? as u64;
    if taken > 0 {
        c.prepare_cached("UPDATE signals SET delivered = ?2 WHERE id = ?1")?
            .execute(params![id, taken as i64])?;
        // Their runs sleep in the queue until the wait's timeout: due now instead.
        c.prepare_cached(
            "UPDATE runs SET next_at = ?2 WHERE status = 'queued'
               AND id IN (SELECT run_id FROM waits WHERE signal_id = ?1)",
        )?
        .execute(params![id, s.now_ms])?;
    }
    Ok(taken)
}

fn write_step(c: &Connection, w: &StepWriteText) -> Result<()> {
    // A write from a worker that lost its lease (it ran past expiry and another node took
    // the run) must not land: the new owner's results win.
    let owned: Option<String> = c
        .prepare_cached("SELECT lease_owner FROM runs WHERE id = ?1 AND status = 'running'")?
        .query_row([&w.run_id], |r| r.get(0))
        .optional()?
        .flatten();
    if owned.as_deref() != Some(w.owner.as_str()) {
        return Err(StoreError::Conflict(format!(
            "run `{}` is no longer leased by this worker",
            w.run_id
        )));
    }
    put_steps(c, &w.run_id, &w.rows)?;
    for path in &w.end_waits {
        c.prepare_cached("DELETE FROM waits WHERE run_id = ?1 AND path = ?2")?
            .execute(params![w.run_id, path])?;
    }
    match &w.update {
        RunUpdate::Continue => {}
        RunUpdate::Retry { next_at_ms } => {
            // A signal delivered to one of the run's waits while it ran makes it due now
            // (the signal found it running, so could not wake it).
            c.prepare_cached(
                "UPDATE runs SET status = 'queued', updated_at = ?3, lease_owner = NULL, lease_until = NULL,
                   next_at = CASE WHEN EXISTS (SELECT 1 FROM waits WHERE run_id = ?1 AND signal_id IS NOT NULL)
                                  THEN ?3 ELSE ?2 END
                 WHERE id = ?1",
            )?
            .execute(params![w.run_id, next_at_ms, w.now_ms])?;
        }
        RunUpdate::Finish { status, .. } => {
            c.prepare_cached(
                "UPDATE runs SET status = ?2, error = ?3, updated_at = ?4, lease_owner = NULL, lease_until = NULL,
                   output = ?5 WHERE id = ?1",
            )?
            .execute(params![w.run_id, status.as_str(), w.error, w.now_ms, w.output])?;
            // A called run's end wakes its caller, in this transaction: a crash cannot end
            // the child and leave the caller asleep.
            let parent: Option<String> = c
                .prepare_cached("SELECT parent_run FROM runs WHERE id = ?1")?
                .query_row([&w.run_id], |r| r.get(0))?;
            if parent.is_some() {
                let (data, attempt) = child_end(c, &w.run_id)?;
                send_signal(
                    c,
                    &NewSignal {
                        signal: CALL_SIGNAL.into(),
                        key: w.run_id.clone(),
                        data: data.to_string(),
                        now_ms: w.now_ms,
                        keep_until_ms: w.now_ms
                            + crate::flow::control::SIGNAL_KEEP.as_millis() as i64,
                        origin: Some(format!("call:{}:{attempt}", w.run_id)),
                    },
                )?;
            }
        }
    }
    Ok(())
}

/// How a called run ended, as its caller gets it, and its attempt.
fn child_end(c: &Connection, id: &str) -> Result<(Json, i64)> {
    let (status, output, error, attempt): (String, Option<String>, Option<String>, i64) = c
        .prepare_cached("SELECT status, output, error, attempt FROM runs WHERE id = ?1")?
        .query_row([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
    let parse = |t: Option<String>| {
        t.map(|t| serde_json::from_str(&t).unwrap_or(Json::Null))
            .unwrap_or(Json::Null)
    };
    Ok((
        serde_json::json!({ "run": id, "status": status, "output": parse(output), "error": parse(error) }),
        attempt,
    ))
}

fn start_child(c: &Connection, child: &NewChild) -> Result<ChildState> {
    let status: Option<String> = c
        .prepare_cached("SELECT status FROM runs WHERE id = ?1")?
        .query_row([&child.id], |r| r.get(0))
        .optional()?;
    match status.as_deref().and_then(RunStatus::parse) {
        None => {
            let (parent_run, parent_path) = match child.wait_until_ms {
                Some(_) => (Some(&child.parent_run), Some(&child.parent_path)),
                None => (None, None),
            };
            c.prepare_cached(
                "INSERT INTO runs (id, flow, flow_version, status, attempt, event, created_at, updated_at, next_at,
                                   parent_run, parent_path)
                 VALUES (?1, ?2, ?3, 'queued', 1, ?4, ?5, ?5, ?5, ?6, ?7)",
            )?
            .execute(params![
                child.id,
                child.flow,
                child.flow_version,
                child.event,
                child.now_ms,
                parent_run,
                parent_path
            ])?;
        }
        Some(RunStatus::Succeeded) => return Ok(ChildState::Ended(child_end(c, &child.id)?.0)),
        Some(RunStatus::Failed | RunStatus::Dead) if child.wait_until_ms.is_some() => {
            // The caller reached the call again (it was replayed): so is the child, from
            // its failed step, instead of failing the caller again with the old error.
            match replay(
                c,
                &ReplaySelect::One(child.id.clone()),
                ReplayFrom::Failed,
                child.now_ms,
            ) {
                Ok(_) => {}
                // Its payload is gone (retention, erase): it stays as it ended.
                Err(StoreError::Conflict(_)) => {
                    return Ok(ChildState::Ended(child_end(c, &child.id)?.0));
                }
                Err(e) => return Err(e),
            }
        }
        Some(status) if status.is_final() => {
            return Ok(ChildState::Ended(child_end(c, &child.id)?.0));
        }
        Some(_) => {}
    }
    if let Some(until_ms) = child.wait_until_ms {
        c.prepare_cached("UPDATE runs SET parent_run = ?2, parent_path = ?3 WHERE id = ?1")?
            .execute(params![child.id, child.parent_run, child.parent_path])?;
        // A fresh wait: an earlier one (before a replay) was taken or ended.
        c.prepare_cached("DELETE FROM waits WHERE run_id = ?1 AND path = ?2")?
            .execute(params![child.parent_run, child.parent_path])?;
        c.prepare_cached(
            "INSERT INTO waits (run_id, path, signal, key, until, signal_id, created_at) VALUES (?1, ?2, ?3, ?4, ?5, NULL, ?6)",
        )?
        .execute(params![
            child.parent_run,
            child.parent_path,
            CALL_SIGNAL,
            child.id,
            until_ms,
            child.now_ms
        ])?;
    }
    Ok(ChildState::Running)
}

fn filter_sql(f: &RunFilter, dead_only: bool) -> (String, Vec<rusqlite::types::Value>) {
    use rusqlite::types::Value as V;
    let mut clauses: Vec<String> = Vec::new();
    let mut args: Vec<V> = Vec::new();
    if let Some(flow) = &f.flow {
        args.push(V::Text(flow.clone()));
        clauses.push(format!("flow = ?{}", args.len()));
    }
    let statuses: Vec<RunStatus> = if dead_only {
        vec![RunStatus::Failed, RunStatus::Dead]
            .into_iter()
            .filter(|s| f.statuses.is_empty() || f.statuses.contains(s))
            .collect()
    } else {
        f.statuses.clone()
    };
    if !statuses.is_empty() || dead_only {
        let list = statuses
            .iter()
            .map(|s| format!("'{}'", s.as_str()))
            .collect::<Vec<_>>()
            .join(",");
        clauses.push(format!(
            "status IN ({})",
            if list.is_empty() { "''".into() } else { list }
        ));
    }
    if let Some(s) = f.since_ms {
        args.push(V::Integer(s));
        clauses.push(format!("created_at >= ?{}", args.len()));
    }
    if let Some(u) = f.until_ms {
        args.push(V::Integer(u));
        clauses.push(format!("created_at < ?{}", args.len()));
    }
    if let Some(b) = &f.before {
        args.push(V::Text(b.clone()));
        clauses.push(format!("id < ?{}", args.len()));
    }
    let wh = if clauses.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", clauses.join(" AND "))
    };
    (wh, args)
}

fn replay(
    c: &Connection,
    select: &ReplaySelect,
    from: ReplayFrom,
    now: i64,
) -> Result<Vec<String>> {
    let ids: Vec<String> = match select {
        ReplaySelect::One(id) => {
            let row: Option<(String, Option<i64>)> = c
                .query_row(
                    "SELECT status, purged_at FROM runs WHERE id = ?1",
                    [id],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            if row.as_ref().is_some_and(|(_, purged)| purged.is_some()) {
                return Err(StoreError::Conflict(format!(
                    "run `{id}` cannot be replayed: its payload was deleted (retention or erase)"
                )));
            }
            let status = row.map(|(s, _)| s);
            match status.as_deref() {
                None => return Err(StoreError::Conflict(format!("no run `{id}`"))),
                Some("failed" | "dead") => vec![id.clone()],
                Some(other) => {
                    return Err(StoreError::Conflict(format!(
                        "run `{id}` is {other}; only failed or dead runs can be replayed"
                    )));
                }
            }
        }
        ReplaySelect::Matching(f) => {
            let (wh, args) = filter_sql(f, true);
            let limit = if f.limit == 0 { 10_000 } else { f.limit };
            // `dead_only` makes `wh` a WHERE clause; runs whose payload is gone are skipped.
            let sql =
                format!("SELECT id FROM runs {wh} AND purged_at IS NULL ORDER BY id LIMIT {limit}");
            let mut stmt = c.prepare(&sql)?;
            let rows =
                stmt.query_map(rusqlite::params_from_iter(args), |r| r.get::<_, String>(0))?;
            rows.collect::<rusqlite::Result<Vec<_>>>()?
        }
    };
    for id in &ids {
        match from {
            ReplayFrom::Failed => {
                c.execute(
                    "DELETE FROM steps WHERE run_id = ?1 AND status IN ('failed', 'retrying')",
                    [id],
                )?;
            }
            ReplayFrom::Start => {
                c.execute("DELETE FROM steps WHERE run_id = ?1", [id])?;
            }
        }
        c.execute(
            "UPDATE runs SET status = 'queued', attempt = attempt + 1, error = NULL, next_at = ?2, updated_at = ?2,
             lease_owner = NULL, lease_until = NULL WHERE id = ?1",
            params![id, now],
        )?;
    }
    Ok(ids)
}

fn summary(r: &rusqlite::Row) -> rusqlite::Result<RunSummary> {
    Ok(RunSummary {
        id: r.get(0)?,
        flow: r.get(1)?,
        flow_version: r.get(2)?,
        status: RunStatus::parse(&r.get::<_, String>(3)?).unwrap_or(RunStatus::Failed),
        attempt: r.get(4)?,
        created_at_ms: r.get(5)?,
        updated_at_ms: r.get(6)?,
        error: r
            .get::<_, Option<String>>(7)?
            .and_then(|s| serde_json::from_str(&s).ok()),
    })
}

const SUMMARY_COLS: &str = "id, flow, flow_version, status, attempt, created_at, updated_at, error";

impl Store for SqliteStore {
    fn ingest(&self, run: NewRun) -> BoxFuture<'_, Result<Ingested>> {
        let run = NewRunText::new(run);
        self.send(move |c| ingest(c, &run), true)
    }

    fn claim(
        &self,
        owner: &str,
        limit: usize,
        lease_ms: i64,
        now_ms: i64,
    ) -> BoxFuture<'_, Result<Vec<ClaimedRun>>> {
        let owner = owner.to_owned();
        self.send(
            move |c| claim(c, &owner, limit, now_ms + lease_ms, now_ms),
            false,
        )
    }

    fn write_step(&self, write: StepWrite) -> BoxFuture<'_, Result<()>> {
        let write = StepWriteText::new(write);
        self.send(move |c| write_step(c, &write), false)
    }

    fn renew_leases(&self, owner: &str, until_ms: i64) -> BoxFuture<'_, Result<()>> {
        let owner = owner.to_owned();
        self.send(
            move |c| {
                c.prepare_cached("UPDATE runs SET lease_until = ?2 WHERE lease_owner = ?1 AND status = 'running'")?
                    .execute(params![owner, until_ms])?;
                Ok(())
            },
            false,
        )
    }

    fn release(&self, owner: &str, now_ms: i64) -> BoxFuture<'_, Result<u64>> {
        let owner = owner.to_owned();
        self.send(
            move |c| {
                let n = c.execute(
                    "UPDATE runs SET status = 'queued', lease_owner = NULL, lease_until = NULL, next_at = ?2, updated_at = ?2
                     WHERE lease_owner = ?1 AND status = 'running'",
                    params![owner, now_ms],
                )?;
                Ok(n as u64)
            },
            false,
        )
    }

    fn next_due(&self) -> BoxFuture<'_, Result<Option<i64>>> {
        self.read(|c| {
            Ok(c.query_row(
                "SELECT MIN(next_at) FROM runs WHERE status = 'queued'",
                [],
                |r| r.get(0),
            )?)
        })
    }

    fn get_run(&self, id: &str) -> BoxFuture<'_, Result<Option<RunDetail>>> {
        let id = id.to_owned();
        self.read(move |c| {
            let row = c
                .query_row(
                    &format!("SELECT {SUMMARY_COLS}, event FROM runs WHERE id = ?1"),
                    [&id],
                    |r| Ok((summary(r)?, r.get::<_, String>(8)?)),
                )
                .optional()?;
            let Some((summary, event)) = row else {
                return Ok(None);
            };
            let steps = load_steps(c, &id)?;
            Ok(Some(RunDetail {
                summary,
                event: serde_json::from_str(&event).unwrap_or(Json::Null),
                steps,
            }))
        })
    }

    fn list_runs(&self, filter: RunFilter) -> BoxFuture<'_, Result<Vec<RunSummary>>> {
        self.read(move |c| {
            let (wh, args) = filter_sql(&filter, false);
            let limit = filter.limit.clamp(1, 10_000);
            let sql =
                format!("SELECT {SUMMARY_COLS} FROM runs {wh} ORDER BY id DESC LIMIT {limit}");
            let mut stmt = c.prepare(&sql)?;
            let rows = stmt.query_map(rusqlite::params_from_iter(args), summary)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    fn replay(
        &self,
        select: ReplaySelect,
        from: ReplayFrom,
        now_ms: i64,
    ) -> BoxFuture<'_, Result<Vec<String>>> {
        self.send(move |c| replay(c, &select, from, now_ms), false)
    }

    fn register_wait(&self, wait: NewWait) -> BoxFuture<'_, Result<Option<Json>>> {
        self.send(move |c| register_wait(c, &wait), false)
    }

    fn send_signal(&self, signal: NewSignal) -> BoxFuture<'_, Result<u64>> {
        self.send(move |c| send_signal(c, &signal), false)
    }

    fn start_child(&self, child: NewChild) -> BoxFuture<'_, Result<ChildState>> {
        self.send(move |c| start_child(c, &child), false)
    }

    fn wait_signal(&self, run_id: String, path: String) -> BoxFuture<'_, Result<Option<Json>>> {
        self.read(move |c| delivered(c, &run_id, &path))
    }

    fn kept_signals(&self, now_ms: i64, limit: u32) -> BoxFuture<'_, Result<Vec<KeptSignal>>> {
        self.read(move |c| {
            let limit = limit.clamp(1, 1000);
            let mut st = c.prepare(&format!(
                "SELECT signal, key, data, received_at, expires_at FROM signals
                 WHERE delivered = 0 AND expires_at > ?1 ORDER BY id DESC LIMIT {limit}"
            ))?;
            let rows = st.query_map([now_ms], |r| {
                Ok(KeptSignal {
                    signal: r.get(0)?,
                    key: r.get(1)?,
                    data: serde_json::from_str(&r.get::<_, String>(2)?).unwrap_or(Json::Null),
                    received_at_ms: r.get(3)?,
                    expires_at_ms: r.get(4)?,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    fn purge_signals(&self, now_ms: i64) -> BoxFuture<'_, Result<u64>> {
        self.send(
            move |c| {
                let kept = c.execute(
                    "DELETE FROM signals WHERE delivered = 0 AND expires_at <= ?1",
                    [now_ms],
                )?;
                let used = c.execute(
                    "DELETE FROM signals WHERE delivered > 0
                       AND NOT EXISTS (SELECT 1 FROM waits WHERE waits.signal_id = signals.id)",
                    [],
                )?;
                // Waits of runs that ended (cancelled in a parallel, or finished by replay).
                let stale = c.execute(
                    "DELETE FROM waits WHERE run_id IN (SELECT id FROM runs WHERE status IN ('succeeded', 'failed', 'dead'))",
                    [],
                )?;
                Ok((kept + used + stale) as u64)
            },
            false,
        )
    }

    fn purge_dedupe(&self, now_ms: i64) -> BoxFuture<'_, Result<u64>> {
        self.send(
            move |c| Ok(c.execute("DELETE FROM dedupe WHERE expires_at <= ?1", [now_ms])? as u64),
            false,
        )
    }

    fn secrets(&self) -> BoxFuture<'_, Result<Vec<SealedSecret>>> {
        self.read(|c| {
            let mut st = c.prepare(
                "SELECT name, version, sealed, created_at, updated_at FROM secrets ORDER BY name",
            )?;
            let rows = st.query_map([], |r| {
                Ok(SealedSecret {
                    name: r.get(0)?,
                    version: r.get(1)?,
                    sealed: r.get(2)?,
                    created_at_ms: r.get(3)?,
                    updated_at_ms: r.get(4)?,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    fn put_secret(
        &self,
        name: String,
        sealed: Vec<u8>,
        now_ms: i64,
    ) -> BoxFuture<'_, Result<SealedSecret>> {
        self.send(
            move |c| {
                c.execute(
                    "INSERT INTO secrets (name, version, sealed, created_at, updated_at) VALUES (?1, 1, ?2, ?3, ?3)
                     ON CONFLICT (name) DO UPDATE SET version = version + 1, sealed = ?2, updated_at = ?3",
                    rusqlite::params![name, sealed, now_ms],
                )?;
                Ok(c.query_row(
                    "SELECT version, created_at FROM secrets WHERE name = ?1",
                    [&name],
                    |r| {
                        Ok(SealedSecret {
                            name: name.clone(),
                            version: r.get(0)?,
                            sealed: Vec::new(),
                            created_at_ms: r.get(1)?,
                            updated_at_ms: now_ms,
                        })
                    },
                )?)
            },
            false,
        )
    }

    fn delete_secret(&self, name: String) -> BoxFuture<'_, Result<bool>> {
        self.send(
            move |c| Ok(c.execute("DELETE FROM secrets WHERE name = ?1", [&name])? > 0),
            false,
        )
    }

    fn reseal_secrets(
        &self,
        rows: Vec<(String, Vec<u8>)>,
        key_check: Vec<u8>,
        now_ms: i64,
    ) -> BoxFuture<'_, Result<()>> {
        self.send(
            move |c| {
                let n: i64 = c.query_row("SELECT COUNT(*) FROM secrets", [], |r| r.get(0))?;
                if n as usize != rows.len() {
                    return Err(StoreError::Conflict(
                        "secrets changed during the key rotation; run it again".into(),
                    ));
                }
                for (name, sealed) in &rows {
                    c.execute(
                        "UPDATE secrets SET sealed = ?2 WHERE name = ?1",
                        rusqlite::params![name, sealed],
                    )?;
                }
                put_meta(c, "master_key_check", &key_check, now_ms)
            },
            false,
        )
    }

    fn get_meta(&self, key: String) -> BoxFuture<'_, Result<Option<Vec<u8>>>> {
        self.read(move |c| {
            Ok(
                c.query_row("SELECT value FROM meta WHERE key = ?1", [&key], |r| {
                    r.get(0)
                })
                .optional()?,
            )
        })
    }

    fn put_meta(&self, key: String, value: Vec<u8>, now_ms: i64) -> BoxFuture<'_, Result<()>> {
        self.send(move |c| put_meta(c, &key, &value, now_ms), false)
    }

    fn create_api_key(&self, key: ApiKeyRow) -> BoxFuture<'_, Result<()>> {
        self.send(
            move |c| {
                c.execute(
                    "INSERT INTO api_keys (id, name, role, hash, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![key.id, key.name, key.role, key.hash, key.created_at_ms],
                )?;
                Ok(())
            },
            false,
        )
    }

    fn list_api_keys(&self) -> BoxFuture<'_, Result<Vec<ApiKeyRow>>> {
        self.read(|c| {
            let mut st = c.prepare(
                "SELECT id, name, role, hash, created_at, revoked_at FROM api_keys ORDER BY created_at, id",
            )?;
            let rows = st.query_map([], api_key_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    fn find_api_key(&self, hash: Vec<u8>) -> BoxFuture<'_, Result<Option<ApiKeyRow>>> {
        self.read(move |c| {
            Ok(c.query_row(
                "SELECT id, name, role, hash, created_at, revoked_at FROM api_keys WHERE hash = ?1",
                [&hash],
                api_key_row,
            )
            .optional()?)
        })
    }

    fn revoke_api_key(&self, id: String, now_ms: i64) -> BoxFuture<'_, Result<bool>> {
        self.send(
            move |c| {
                Ok(c.execute(
                    "UPDATE api_keys SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
                    params![id, now_ms],
                )? > 0)
            },
            false,
        )
    }

    fn replace_event(&self, run_id: String, event: String) -> BoxFuture<'_, Result<()>> {
        self.send(
            move |c| {
                c.execute(
                    "UPDATE runs SET event = ?2 WHERE id = ?1",
                    params![run_id, event],
                )?;
                Ok(())
            },
            false,
        )
    }

    fn purge_payloads(
        &self,
        flow: String,
        before_ms: i64,
        now_ms: i64,
    ) -> BoxFuture<'_, Result<u64>> {
        self.send(
            move |c| {
                // Run ids are UUIDv7, ordered by creation time: a run that finished before
                // `before_ms` was created before it, so the (flow, id) index bounds the scan.
                // (No index on updated_at: every step write would have to maintain it.)
                let bound = uuid_bound(before_ms);
                let ids: Vec<String> = {
                    let mut st = c.prepare_cached(
                        "SELECT id FROM runs WHERE flow = ?1 AND id < ?3
                         AND status IN ('succeeded', 'failed', 'dead')
                         AND updated_at < ?2 AND purged_at IS NULL LIMIT 1000",
                    )?;
                    st.query_map(params![flow, before_ms, bound], |r| r.get(0))?
                        .collect::<rusqlite::Result<_>>()?
                };
                for id in &ids {
                    purge_run(c, id, now_ms)?;
                }
                Ok(ids.len() as u64)
            },
            false,
        )
    }

    fn erase(&self, needles: Vec<String>, now_ms: i64) -> BoxFuture<'_, Result<(u64, u64)>> {
        self.erase_subject(needles, now_ms).boxed()
    }

    fn append_audit(&self, e: AuditEntry) -> BoxFuture<'_, Result<()>> {
        self.send(
            move |c| {
                c.execute(
                    "INSERT INTO audit (at, actor, action, target, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![
                        e.at_ms,
                        e.actor,
                        e.action,
                        e.target,
                        e.detail.as_ref().map(|d| d.to_string())
                    ],
                )?;
                Ok(())
            },
            false,
        )
    }

    fn list_audit(
        &self,
        limit: u32,
        before: Option<i64>,
    ) -> BoxFuture<'_, Result<Vec<AuditEntry>>> {
        self.read(move |c| {
            let mut st = c.prepare(
                "SELECT seq, at, actor, action, target, detail FROM audit
                 WHERE seq < ?1 ORDER BY seq DESC LIMIT ?2",
            )?;
            let rows = st.query_map(params![before.unwrap_or(i64::MAX), limit], |r| {
                let detail: Option<String> = r.get(5)?;
                Ok(AuditEntry {
                    seq: r.get(0)?,
                    at_ms: r.get(1)?,
                    actor: r.get(2)?,
                    action: r.get(3)?,
                    target: r.get(4)?,
                    detail: detail.and_then(|d| serde_json::from_str(&d).ok()),
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    fn ping(&self) -> BoxFuture<'_, Result<()>> {
        self.read(|c| {
            c.query_row("SELECT 1", [], |_| Ok(()))?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_run(id: &str, now: i64, dedupe: Option<(&str, i64)>) -> NewRun {
        NewRun {
            id: id.into(),
            flow: "f".into(),
            flow_version: "v1".into(),
            event: r#"{"body":{"n":1}}"#.into(),
            dedupe: dedupe.map(|(key, expires_at_ms)| Dedupe {
                key: key.into(),
                expires_at_ms,
            }),
            now_ms: now,
            lease: None,
            steps: Vec::new(),
            update: RunUpdate::Continue,
        }
    }

    fn step(path: &str, seq: u32, status: StepStatus) -> StepRow {
        StepRow {
            path: path.into(),
            seq,
            status,
            attempts: 1,
            started_at_ms: 1,
            finished_at_ms: 2,
            output: Some(serde_json::json!({"v": path})),
            error: None,
            request: None,
            response: None,
        }
    }

    fn wait(run: &str, key: &str, since: i64, now: i64) -> NewWait {
        NewWait {
            run_id: run.into(),
            path: "w".into(),
            signal: "pay".into(),
            key: key.into(),
            since_ms: since,
            until_ms: now + 10_000,
            now_ms: now,
        }
    }

    fn signal(key: &str, data: &str, now: i64, origin: Option<&str>) -> NewSignal {
        NewSignal {
            signal: "pay".into(),
            key: key.into(),
            data: data.into(),
            now_ms: now,
            keep_until_ms: now + 600,
            origin: origin.map(str::to_owned),
        }
    }

    #[tokio::test]
    async fn a_child_starts_once_and_its_end_wakes_the_caller_in_the_same_write() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        store.ingest(new_run("parent", 0, None)).await.unwrap();
        let child = |now| NewChild {
            id: "child".into(),
            flow: "g".into(),
            flow_version: "v1".into(),
            event: r#"{"body":1}"#.into(),
            now_ms: now,
            parent_run: "parent".into(),
            parent_path: "c".into(),
            wait_until_ms: Some(1_000_000),
        };
        assert_eq!(
            store.start_child(child(1)).await.unwrap(),
            ChildState::Running
        );
        // Again (a retry or a replay of the caller): the same run, not a second one.
        assert_eq!(
            store.start_child(child(2)).await.unwrap(),
            ChildState::Running
        );
        let all = store
            .list_runs(RunFilter {
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(all.len(), 2);
        // The parent sleeps until its wait's end; the child runs and succeeds.
        let claimed = store.claim("w", 10, 1_000, 3).await.unwrap();
        let ids: Vec<&str> = claimed.iter().map(|r| r.id.as_str()).collect();
        assert!(ids.contains(&"child"), "{ids:?}");
        store
            .write_step(StepWrite {
                run_id: "child".into(),
                owner: "w".into(),
                rows: vec![step("a", 0, StepStatus::Succeeded)],
                update: RunUpdate::Finish {
                    status: RunStatus::Succeeded,
                    error: None,
                },
                now_ms: 5,
                end_waits: Vec::new(),
                output: Some(serde_json::json!({"tier": "gold"})),
            })
            .await
            .unwrap();
        let got = store
            .wait_signal("parent".into(), "c".into())
            .await
            .unwrap();
        assert_eq!(
            got,
            Some(
                serde_json::json!({"run": "child", "status": "succeeded", "output": {"tier": "gold"}, "error": null})
            )
        );
        // Reached again after the end: the end at once.
        match store.start_child(child(6)).await.unwrap() {
            ChildState::Ended(end) => assert_eq!(end["output"]["tier"], "gold"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn signals_meet_waits_in_either_order_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        for id in ["r1", "r2", "r3"] {
            store.ingest(new_run(id, 100, None)).await.unwrap();
        }
        // Wait first, then the signal: delivered, and registering again says so.
        assert_eq!(
            store.register_wait(wait("r1", "k1", 0, 100)).await.unwrap(),
            None
        );
        assert_eq!(
            store
                .send_signal(signal("k1", "1", 200, None))
                .await
                .unwrap(),
            1
        );
        assert_eq!(
            store.wait_signal("r1".into(), "w".into()).await.unwrap(),
            Some(serde_json::json!(1))
        );
        assert_eq!(
            store.register_wait(wait("r1", "k1", 0, 300)).await.unwrap(),
            Some(serde_json::json!(1))
        );
        // Signal first: kept, then taken by the first wait in its lookback, and only by it.
        assert_eq!(
            store
                .send_signal(signal("k2", "2", 400, None))
                .await
                .unwrap(),
            0
        );
        assert_eq!(store.kept_signals(450, 10).await.unwrap().len(), 1);
        assert_eq!(
            store
                .register_wait(wait("r2", "k2", 390, 450))
                .await
                .unwrap(),
            Some(serde_json::json!(2))
        );
        assert_eq!(
            store
                .register_wait(wait("r3", "k2", 390, 460))
                .await
                .unwrap(),
            None
        );
        assert!(store.kept_signals(470, 10).await.unwrap().is_empty());
        // A resend from the same origin counts once; a signal older than the lookback is
        // not taken.
        assert_eq!(
            store
                .send_signal(signal("k2", "3", 500, Some("run:tell")))
                .await
                .unwrap(),
            1
        );
        assert_eq!(
            store
                .send_signal(signal("k2", "3", 510, Some("run:tell")))
                .await
                .unwrap(),
            1
        );
        assert_eq!(
            store
                .send_signal(signal("k9", "9", 500, None))
                .await
                .unwrap(),
            0
        );
        let mut late = wait("r1", "k9", 505, 520);
        late.path = "w2".into();
        assert_eq!(store.register_wait(late).await.unwrap(), None);
        // Expired kept signals are purged.
        assert!(store.purge_signals(2_000).await.unwrap() >= 1);
        assert!(store.kept_signals(2_000, 10).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn duplicates_within_the_window_return_the_first_run_and_expire_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        assert_eq!(
            store
                .ingest(new_run("a", 100, Some(("k", 200))))
                .await
                .unwrap(),
            Ingested::Created("a".into())
        );
        assert_eq!(
            store
                .ingest(new_run("b", 150, Some(("k", 250))))
                .await
                .unwrap(),
            Ingested::Duplicate("a".into())
        );
        // After the window the key is free again, even before the purge ran.
        assert_eq!(
            store
                .ingest(new_run("c", 200, Some(("k", 300))))
                .await
                .unwrap(),
            Ingested::Created("c".into())
        );
        assert_eq!(store.purge_dedupe(1_000).await.unwrap(), 1);
        let runs = store
            .list_runs(RunFilter {
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(
            runs.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            ["c", "a"]
        );
    }

    #[tokio::test]
    async fn concurrent_claims_never_hand_out_one_run_twice() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(dir.path()).unwrap());
        for i in 0..200 {
            store
                .ingest(new_run(&format!("r{i:03}"), 10, None))
                .await
                .unwrap();
        }
        let mut claims = Vec::new();
        for w in 0..8 {
            let store = store.clone();
            claims.push(tokio::spawn(async move {
                let mut got = Vec::new();
                loop {
                    let runs = store.claim(&format!("w{w}"), 7, 30_000, 20).await.unwrap();
                    if runs.is_empty() {
                        return got;
                    }
                    got.extend(runs.into_iter().map(|r| r.id));
                }
            }));
        }
        let mut all = Vec::new();
        for c in claims {
            all.extend(c.await.unwrap());
        }
        let total = all.len();
        all.sort();
        all.dedup();
        assert_eq!(total, 200, "every run claimed once");
        assert_eq!(all.len(), 200, "no run claimed twice");
    }

    #[tokio::test]
    async fn an_expired_lease_is_claimed_again_and_the_old_owner_cannot_write() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        store.ingest(new_run("r", 0, None)).await.unwrap();
        let first = store.claim("old", 10, 1_000, 10).await.unwrap();
        assert_eq!(first.len(), 1);
        // Within the lease nobody else gets it.
        assert!(store.claim("new", 10, 1_000, 500).await.unwrap().is_empty());
        // After it, the run is due again, with the steps stored so far.
        let write = |owner: &str, path: &str, seq: u32, update: RunUpdate| StepWrite {
            run_id: "r".into(),
            owner: owner.into(),
            rows: vec![step(path, seq, StepStatus::Succeeded)],
            update,
            now_ms: 600,
            end_waits: Vec::new(),
            output: None,
        };
        store
            .write_step(write("old", "a", 0, RunUpdate::Continue))
            .await
            .unwrap();
        let again = store.claim("new", 10, 1_000, 2_000).await.unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].steps.len(), 1);
        assert_eq!(again[0].steps[0].path, "a");
        // The old owner's late write is refused; the new owner's lands.
        let err = store
            .write_step(write("old", "b", 1, RunUpdate::Continue))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Conflict(_)), "{err}");
        let done = RunUpdate::Finish {
            status: RunStatus::Succeeded,
            error: None,
        };
        store.write_step(write("new", "b", 1, done)).await.unwrap();
        let run = store.get_run("r").await.unwrap().unwrap();
        assert_eq!(run.summary.status, RunStatus::Succeeded);
        assert_eq!(
            run.steps
                .iter()
                .map(|s| s.path.as_str())
                .collect::<Vec<_>>(),
            ["a", "b"]
        );
    }

    #[tokio::test]
    async fn replay_from_the_failed_step_keeps_completed_steps() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        store.ingest(new_run("r", 0, None)).await.unwrap();
        store.claim("w", 1, 1_000, 1).await.unwrap();
        let error = Some(serde_json::json!({"kind": "http_status", "status": 500}));
        let w = StepWrite {
            run_id: "r".into(),
            owner: "w".into(),
            rows: vec![
                step("a", 0, StepStatus::Succeeded),
                StepRow {
                    error: error.clone(),
                    ..step("b", 1, StepStatus::Failed)
                },
            ],
            update: RunUpdate::Finish {
                status: RunStatus::Dead,
                error,
            },
            now_ms: 5,
            end_waits: Vec::new(),
            output: None,
        };
        store.write_step(w).await.unwrap();
        let ids = store
            .replay(ReplaySelect::One("r".into()), ReplayFrom::Failed, 10)
            .await
            .unwrap();
        assert_eq!(ids, ["r"]);
        let claimed = store.claim("w2", 1, 1_000, 11).await.unwrap();
        assert_eq!(claimed[0].attempt, 2);
        assert_eq!(
            claimed[0]
                .steps
                .iter()
                .map(|s| s.path.as_str())
                .collect::<Vec<_>>(),
            ["a"]
        );
        // Only failed or dead runs replay.
        let err = store
            .replay(ReplaySelect::One("r".into()), ReplayFrom::Start, 12)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("is running"), "{err}");
    }

    #[test]
    fn uuid_bounds_order_like_the_ids_they_bound() {
        let id = uuid::Uuid::now_v7().to_string();
        let now = crate::util::now_ms();
        assert!(uuid_bound(now - 1000) < id, "{id}");
        assert!(uuid_bound(now + 1000) > id, "{id}");
    }

    #[tokio::test]
    async fn a_second_process_cannot_open_the_same_data_folder() {
        let dir = tempfile::tempdir().unwrap();
        let _first = SqliteStore::open(dir.path()).unwrap();
        let err = SqliteStore::open(dir.path()).err().expect("locked");
        assert!(
            err.to_string().contains("in use by another ferry process"),
            "{err}"
        );
    }

    /// Under a steady stream of writes the WAL file holds less than was written to it: it
    /// is copied back and started over, not grown by every write until the load stops
    /// (which filled disks: 480 MB in four seconds at full speed).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_wal_starts_over_under_steady_load() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(dir.path()).unwrap());
        let event = format!(r#"{{"body":"{}"}}"#, "x".repeat(8 * 1024));
        let until = std::time::Instant::now() + std::time::Duration::from_secs(3);
        let mut tasks = Vec::new();
        for t in 0..16 {
            let (store, event) = (store.clone(), event.clone());
            tasks.push(tokio::spawn(async move {
                let mut n = 0u64;
                while std::time::Instant::now() < until {
                    let mut run = new_run(&format!("r{t}-{n}"), 10, None);
                    run.event = event.clone();
                    store.ingest(run).await.unwrap();
                    n += 1;
                }
                n
            }));
        }
        let mut written = 0;
        for t in tasks {
            written += t.await.unwrap() * event.len() as u64;
        }
        // A WAL that never starts over holds every byte written, and more (each commit
        // writes whole pages): about three times the events here.
        let wal = std::fs::metadata(dir.path().join("ferry.db-wal"))
            .unwrap()
            .len();
        assert!(
            wal < written,
            "the WAL holds {wal} bytes after {written} bytes of events were written"
        );
    }
}
