-- When a run's payloads were deleted (retention or erase); its row stays for counts.
ALTER TABLE runs ADD COLUMN purged_at INTEGER;
CREATE INDEX runs_by_flow_updated ON runs (flow, updated_at);
