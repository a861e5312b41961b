-- Runs are the queue: a queued run with next_at <= now is due; a running run whose
-- lease_until has passed belongs to a dead worker and is due again.
CREATE TABLE runs (
    id           TEXT PRIMARY KEY,
    flow         TEXT NOT NULL,
    flow_version TEXT NOT NULL,
    status       TEXT NOT NULL,
    attempt      INTEGER NOT NULL DEFAULT 1,
    event        TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL,
    next_at      INTEGER NOT NULL,
    lease_owner  TEXT,
    lease_until  INTEGER,
    error        TEXT
);
-- No partial indexes: checking whether a query's WHERE implies an index's WHERE makes SQLite
-- look at bound parameters, and it then re-prepares the statement every time they change
-- (a seventh of the CPU under load). Running runs are few (at most the workers of the live
-- nodes), so expired leases are found through runs_by_status.
CREATE INDEX runs_due ON runs (status, next_at);
CREATE INDEX runs_by_flow ON runs (flow, id);
CREATE INDEX runs_by_status ON runs (status, id);

-- One row per step path (a position in the flow, e.g. `contact`), updated per attempt.
CREATE TABLE steps (
    run_id      TEXT NOT NULL,
    path        TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    status      TEXT NOT NULL,
    attempts    INTEGER NOT NULL,
    started_at  INTEGER NOT NULL,
    finished_at INTEGER NOT NULL,
    output      TEXT,
    error       TEXT,
    request     TEXT,
    response    TEXT,
    PRIMARY KEY (run_id, path)
) WITHOUT ROWID;

CREATE TABLE dedupe (
    flow       TEXT NOT NULL,
    key        TEXT NOT NULL,
    run_id     TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (flow, key)
) WITHOUT ROWID;
CREATE INDEX dedupe_expiry ON dedupe (expires_at);
