-- A run's lease: renewed while the run lives; once it lapses, another runner may take the run's
-- claims (as unknown), and a run that finds itself taken stops sending.
ALTER TABLE runs ADD COLUMN lease_until REAL;
ALTER TABLE runs ADD COLUMN taken_at REAL;
ALTER TABLE runs ADD COLUMN taken_by TEXT;  -- the host whose run took it
