-- Why an account was last stopped for a run (requests kept failing, a 403 streak, blocked by the
-- API), and when: `status` shows it until the account sends again.
ALTER TABLE accounts ADD COLUMN stopped_reason TEXT;
ALTER TABLE accounts ADD COLUMN stopped_at REAL;
