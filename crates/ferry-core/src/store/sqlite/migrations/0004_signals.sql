-- Waits for a signal (the `wait` step) and signals kept for a wait that registers later.
-- A wait is one row per (run, path): registering it twice is a no-op, and a delivered
-- signal is recorded on it (`signal_id`) before the run is woken.
CREATE TABLE waits (
    run_id     TEXT NOT NULL,
    path       TEXT NOT NULL,
    signal     TEXT NOT NULL,
    key        TEXT NOT NULL,
    until      INTEGER NOT NULL,
    signal_id  INTEGER,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (run_id, path)
) WITHOUT ROWID;
CREATE INDEX waits_by_key ON waits (signal, key);

-- Every signal received: consumed by the waits it resumed (`delivered` > 0), or kept until
-- `expires_at` for a wait that registers within its lookback.
CREATE TABLE signals (
    id          INTEGER PRIMARY KEY,
    signal      TEXT NOT NULL,
    key         TEXT NOT NULL,
    data        TEXT NOT NULL,
    received_at INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    delivered   INTEGER NOT NULL DEFAULT 0,
    origin      TEXT UNIQUE
);
CREATE INDEX signals_by_key ON signals (signal, key, received_at);
