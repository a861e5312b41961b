-- When a run's payloads were deleted (retention or erase); its row stays for counts.
ALTER TABLE runs ADD COLUMN purged_at INTEGER;
