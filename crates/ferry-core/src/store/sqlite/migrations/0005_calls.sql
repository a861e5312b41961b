-- `call`: a run started by another run's `call` step names its caller, so that its end
-- wakes the caller (a signal `ferry:call` keyed by the child's id, in the transaction that
-- finishes the child); `output` is what a succeeded run returns to its caller (`output:`).
ALTER TABLE runs ADD COLUMN parent_run TEXT;
ALTER TABLE runs ADD COLUMN parent_path TEXT;
ALTER TABLE runs ADD COLUMN output TEXT;
