//! `Store::erase` on SQLite: deletes the payloads that mention a subject, then makes sure no
//! byte of it is left in the store's files. Owns that second part; which runs match, and
//! what of them goes, is the same as retention (`purge_run`).
//!
//! Deleting the rows is the small part. Where else a subject is, and what removes it:
//!
//! - Old versions of its rows. Each UPDATE of a run (claim, step write, finish, redaction)
//!   writes a new cell and frees the old one; without `secure_delete` the freed bytes stay
//!   in the page. The writer connection has it on from the start (see `SqliteStore::open`),
//!   so they are zeroed when freed; on only during the erase, it came too late.
//! - The WAL. Every committed page is appended whole, so every version of every page the
//!   subject was on is in some frame (572 copies in the issue 12 tryout), and the database
//!   file keeps its old pages until a checkpoint copies the new ones over them (5 more). A
//!   `TRUNCATE` checkpoint copies every frame back and empties the file.
//! - Free space `secure_delete` does not reach. When SQLite rebuilds a page (a split or a
//!   merge) it packs the cells anew and leaves the old bytes between the cell pointers and
//!   the content: copies of cells that now live on another page, or further along this one.
//!   Such a copy outlives the erase of the cell. So is a database written by a ferry that
//!   left freed bytes in place. So after the checkpoint the erase reads the database file
//!   for the subject, and when any is left, a `VACUUM` rewrites every page from the live
//!   rows (the cost of the whole file, paid only then; the read is one pass, off the writer).
//! - Not here: the shared-memory file holds page numbers, not content; the audit log keeps
//!   a hash; disk blocks a shrunk file gave back belong to the file system.
//!
//! A reader on a snapshot older than the erase keeps the WAL from being emptied (its
//! snapshot needs those frames). The erase waits for it, up to `SCRUB_PATIENCE`, in short
//! attempts so that the writer keeps serving writes in between; if it is still there, the
//! erase fails with `Conflict` saying so (the rows are gone; erasing again finishes).

use std::io::Read;
use std::time::{Duration, Instant};

use super::*;

/// How long an erase waits, in all, for readers on old snapshots to let the WAL go.
pub(super) const SCRUB_PATIENCE: Duration = Duration::from_secs(10);
/// How long one checkpoint attempt waits for readers, holding up the writer meanwhile.
const ATTEMPT_WAIT: Duration = Duration::from_millis(100);
/// The pause between attempts, in which the writer runs other batches.
const ATTEMPT_GAP: Duration = Duration::from_millis(20);

impl SqliteStore {
    pub(super) async fn erase_subject(
        &self,
        needles: Vec<String>,
        now_ms: i64,
    ) -> Result<(u64, u64)> {
        let likes: Vec<String> = needles.iter().map(|n| like_pattern(n)).collect();
        let (runs, in_flight) = self
            .send(move |c| erase_rows(c, &likes, now_ms), false)
            .await?;
        self.scrub(needles).await.map_err(|e| match e {
            StoreError::Conflict(why) => {
                StoreError::Conflict(format!("erased the payloads of {runs} run(s), but {why}"))
            }
            e => e,
        })?;
        Ok((runs, in_flight))
    }

    /// Leaves none of `needles` in the database file and the WAL (see the module docs).
    async fn scrub(&self, needles: Vec<String>) -> Result<()> {
        self.empty_wal().await?;
        let path = self.path.clone();
        let found = tokio::task::spawn_blocking(move || file_holds(&path, &needles))
            .await
            .map_err(|e| StoreError::Db(format!("database scan crashed: {e}")))?
            .map_err(|e| StoreError::Db(format!("cannot read the database file: {e}")))?;
        if found {
            tracing::info!(
                "erase: the subject is still in free space of the database file; rewriting it (VACUUM)"
            );
            self.send_alone(|c| Ok(c.execute_batch("VACUUM")?)).await?;
            self.empty_wal().await?;
        }
        Ok(())
    }

    /// Copies every WAL frame into the database file and truncates the WAL to nothing.
    async fn empty_wal(&self) -> Result<()> {
        let wal = self.path.with_extension("db-wal");
        let until = Instant::now() + self.scrub_patience;
        loop {
            let file = wal.clone();
            if self.send_alone(move |c| truncate_wal(c, &file)).await? {
                return Ok(());
            }
            if Instant::now() >= until {
                return Err(StoreError::Conflict(format!(
                    "their old pages are still in `{}`: another connection has been reading an older snapshot of the database for {}s (a backup tool, the sqlite3 shell?); erase again once it ends",
                    wal.display(),
                    self.scrub_patience.as_secs()
                )));
            }
            tokio::time::sleep(ATTEMPT_GAP).await;
        }
    }
}

/// `%needle%` for `LIKE … ESCAPE '\'`.
fn like_pattern(needle: &str) -> String {
    format!(
        "%{}%",
        needle
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_")
    )
}

/// The erase transaction: the payloads of every run that mentions a pattern, its error when
/// that does, and matching dedupe keys (their index entries go with them). Returns (runs,
/// of which queued or running).
fn erase_rows(c: &Connection, likes: &[String], now_ms: i64) -> Result<(u64, u64)> {
    let mut hits = std::collections::BTreeMap::new();
    {
        let mut st = c.prepare(
            "SELECT id, status FROM runs WHERE event LIKE ?1 ESCAPE '\\'
                 OR error LIKE ?1 ESCAPE '\\'
                 OR id IN (SELECT run_id FROM steps WHERE output LIKE ?1 ESCAPE '\\'
                     OR request LIKE ?1 ESCAPE '\\' OR response LIKE ?1 ESCAPE '\\'
                     OR error LIKE ?1 ESCAPE '\\')",
        )?;
        for like in likes {
            for row in st.query_map([like], |r| Ok((r.get::<_, String>(0)?, r.get(1)?)))? {
                let (id, status): (String, String) = row?;
                hits.insert(id, status);
            }
        }
    }
    let mut in_flight = 0;
    for (id, status) in &hits {
        if status == "queued" || status == "running" {
            in_flight += 1;
        }
        purge_run(c, id, now_ms)?;
        for like in likes {
            c.execute(
                "UPDATE runs SET error = NULL WHERE id = ?1 AND error LIKE ?2 ESCAPE '\\'",
                params![id, like],
            )?;
        }
    }
    for like in likes {
        c.execute("DELETE FROM dedupe WHERE key LIKE ?1 ESCAPE '\\'", [like])?;
        // Signals carry callers' data (an IPN's payer); their keys may be the subject too.
        c.execute(
            "DELETE FROM signals WHERE data LIKE ?1 ESCAPE '\\' OR key LIKE ?1 ESCAPE '\\'",
            [like],
        )?;
    }
    Ok((hits.len() as u64, in_flight))
}

/// One `TRUNCATE` checkpoint, waiting `ATTEMPT_WAIT` at most; true when the WAL is empty.
/// Busy when the background checkpointer is in a pass, or a reader is on a snapshot that
/// needs frames (it copies what it can either way).
fn truncate_wal(c: &Connection, wal: &Path) -> Result<bool> {
    c.busy_timeout(ATTEMPT_WAIT)?;
    let r = c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
        Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
    });
    c.busy_timeout(WRITER_BUSY_TIMEOUT)?;
    let (busy, frames) = r?;
    let len = std::fs::metadata(wal).map(|m| m.len()).unwrap_or(0);
    Ok(busy == 0 && frames == 0 && len == 0)
}

/// Whether the file holds one of `needles`, ignoring ASCII case as `LIKE` does.
fn file_holds(path: &Path, needles: &[String]) -> std::io::Result<bool> {
    let needles: Vec<Vec<u8>> = needles
        .iter()
        .filter(|n| !n.is_empty())
        .map(|n| n.to_ascii_lowercase().into_bytes())
        .collect();
    let finders: Vec<_> = needles.iter().map(memchr::memmem::Finder::new).collect();
    // A match may straddle two reads: the last `keep` bytes are searched again.
    let keep = needles.iter().map(Vec::len).max().unwrap_or(1) - 1;
    let mut buf = vec![0; (1 << 20).max(2 * keep + 1)];
    let mut file = File::open(path)?;
    let mut kept = 0;
    loop {
        let n = file.read(&mut buf[kept..])?;
        if n == 0 {
            return Ok(false);
        }
        let end = kept + n;
        buf[kept..end].make_ascii_lowercase();
        if finders.iter().any(|f| f.find(&buf[..end]).is_some()) {
            return Ok(true);
        }
        let tail = keep.min(end);
        buf.copy_within(end - tail..end, 0);
        kept = tail;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUBJECT: &str = "Grace.Hopper@Example.com";

    fn run(id: &str, email: &str) -> NewRun {
        NewRun {
            id: id.into(),
            flow: "f".into(),
            flow_version: "v1".into(),
            event: format!(
                r#"{{"body":{{"email":"{email}","pad":"{}"}}}}"#,
                "p".repeat(300)
            ),
            dedupe: Some(Dedupe {
                key: format!("{id}:{email}"),
                expires_at_ms: i64::MAX,
            }),
            now_ms: 1,
            lease: None,
            steps: Vec::new(),
            update: RunUpdate::Continue,
        }
    }

    /// How often `needle` (any ASCII case) is in each of the store's files.
    fn copies(dir: &Path, needle: &str) -> Vec<(String, usize)> {
        let needle = needle.to_ascii_lowercase();
        ["ferry.db", "ferry.db-wal", "ferry.db-shm"]
            .into_iter()
            .map(|f| {
                let bytes = std::fs::read(dir.join(f)).unwrap_or_default();
                let bytes = bytes.to_ascii_lowercase();
                let n = memchr::memmem::find_iter(&bytes, needle.as_bytes()).count();
                (f.to_owned(), n)
            })
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    /// Runs through every state (claimed, retried, finished, redacted), so that their rows
    /// are rewritten many times and pages split, as under real traffic.
    async fn busy_store(store: &SqliteStore) {
        for i in 0..300 {
            let email = if i % 10 == 0 {
                SUBJECT.to_owned()
            } else {
                format!("someone{i}@example.com")
            };
            let id = format!("r{i:04}");
            store.ingest(run(&id, &email)).await.unwrap();
            let claimed = store.claim("w", 1, 1_000, 2).await.unwrap();
            assert_eq!(claimed.len(), 1);
            let row = |status| StepRow {
                path: "contact".into(),
                seq: 0,
                status,
                attempts: 1,
                started_at_ms: 2,
                finished_at_ms: 3,
                output: Some(serde_json::json!({ "body": { "to": email } })),
                error: None,
                request: Some(serde_json::json!({ "url": format!("http://crm/c?to={email}") })),
                response: None,
            };
            let write = |status, update| StepWrite {
                run_id: id.clone(),
                owner: "w".into(),
                rows: vec![row(status)],
                update,
                now_ms: 3,
                end_waits: Vec::new(),
                output: None,
            };
            store
                .write_step(write(
                    StepStatus::Retrying,
                    RunUpdate::Retry { next_at_ms: 0 },
                ))
                .await
                .unwrap();
            store.claim("w", 1, 1_000, 4).await.unwrap();
            let done = RunUpdate::Finish {
                status: RunStatus::Succeeded,
                error: None,
            };
            store
                .write_step(write(StepStatus::Succeeded, done))
                .await
                .unwrap();
            if i % 2 == 0 {
                let masked = r#"{"body":{"email":"***"}}"#.to_owned();
                store.replace_event(id.clone(), masked).await.unwrap();
            }
        }
    }

    #[tokio::test]
    async fn after_erase_the_subject_is_on_no_page_of_the_database_or_its_wal() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        busy_store(&store).await;
        assert!(!copies(dir.path(), SUBJECT).is_empty());
        let (runs, in_flight) = store.erase(vec![SUBJECT.to_owned()], 10).await.unwrap();
        assert_eq!((runs, in_flight), (30, 0));
        assert_eq!(copies(dir.path(), SUBJECT), []);
        assert_eq!(
            std::fs::metadata(dir.path().join("ferry.db-wal"))
                .unwrap()
                .len(),
            0
        );
        // Only the subject's runs went.
        assert!(!copies(dir.path(), "someone1@example.com").is_empty());
        let kept = store.get_run("r0001").await.unwrap().unwrap();
        assert_eq!(
            kept.steps[0].output.as_ref().unwrap()["body"]["to"],
            "someone1@example.com"
        );
        let erased = store.get_run("r0010").await.unwrap().unwrap();
        assert_eq!(erased.event, serde_json::json!({}));
        assert_eq!(erased.steps[0].output, None);
        // The store still takes writes.
        store.ingest(run("after", "x@example.com")).await.unwrap();
    }

    /// A database whose freed bytes were left in place (written before `secure_delete` was
    /// on) is rewritten by the erase that finds the subject in it.
    #[tokio::test]
    async fn erase_rewrites_a_database_that_kept_freed_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        for i in 0..50 {
            let email = if i == 7 {
                SUBJECT.to_owned()
            } else {
                format!("s{i}@example.com")
            };
            store
                .ingest(run(&format!("r{i:02}"), &email))
                .await
                .unwrap();
        }
        drop(store);
        {
            let c = Connection::open(dir.path().join("ferry.db")).unwrap();
            c.pragma_update(None, "secure_delete", "OFF").unwrap();
            // Shorter rows: the old cells stay in the pages, as freed space.
            c.execute("UPDATE runs SET event = '{}'", []).unwrap();
            c.execute("DELETE FROM dedupe", []).unwrap();
            c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
                .unwrap();
        }
        assert!(!copies(dir.path(), SUBJECT).is_empty());
        let store = SqliteStore::open(dir.path()).unwrap();
        // No row mentions it any more; its bytes are still in the file.
        assert_eq!(
            store.erase(vec![SUBJECT.to_owned()], 10).await.unwrap(),
            (0, 0)
        );
        assert_eq!(copies(dir.path(), SUBJECT), []);
        assert_eq!(
            store
                .list_runs(RunFilter {
                    limit: 100,
                    ..Default::default()
                })
                .await
                .unwrap()
                .len(),
            50
        );
    }

    /// A reader on a snapshot from before the erase holds old pages in the WAL: the erase
    /// says so instead of claiming they are gone, and an erase after the reader ended
    /// finishes the job.
    #[tokio::test]
    async fn a_reader_on_an_old_snapshot_makes_erase_fail_until_it_ends() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = SqliteStore::open(dir.path()).unwrap();
        store.scrub_patience = Duration::from_millis(300);
        busy_store(&store).await;
        let reader = Connection::open(dir.path().join("ferry.db")).unwrap();
        reader.execute_batch("BEGIN").unwrap();
        let n: i64 = reader
            .query_row("SELECT COUNT(*) FROM runs", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 300);
        let err = store.erase(vec![SUBJECT.to_owned()], 10).await.unwrap_err();
        let StoreError::Conflict(msg) = &err else {
            panic!("{err}")
        };
        assert!(
            msg.starts_with("erased the payloads of 30 run(s), but their old pages are still in `"),
            "{msg}"
        );
        assert!(msg.contains("erase again once it ends"), "{msg}");
        // The rows went all the same.
        let erased = store.get_run("r0010").await.unwrap().unwrap();
        assert_eq!(erased.event, serde_json::json!({}));
        reader.execute_batch("COMMIT").unwrap();
        assert_eq!(
            store.erase(vec![SUBJECT.to_owned()], 11).await.unwrap(),
            (0, 0)
        );
        assert_eq!(copies(dir.path(), SUBJECT), []);
    }

    #[test]
    fn a_file_scan_finds_a_needle_across_reads_in_any_ascii_case() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut bytes = vec![b'x'; (1 << 20) - 3];
        bytes.extend_from_slice(b"GRACE@example");
        std::fs::write(&path, &bytes).unwrap();
        assert!(file_holds(&path, &["nope".into(), "grace@EXAMPLE".into()]).unwrap());
        assert!(!file_holds(&path, &["grace@example.com".into()]).unwrap());
    }
}
