-- Per campaign: when an account's own answers mean the account is in trouble, not its recipients.
ALTER TABLE campaigns ADD COLUMN breaker_failures INTEGER NOT NULL DEFAULT 3;
ALTER TABLE campaigns ADD COLUMN breaker_cooldown REAL NOT NULL DEFAULT 30.0;
ALTER TABLE campaigns ADD COLUMN breaker_pauses INTEGER NOT NULL DEFAULT 3;
ALTER TABLE campaigns ADD COLUMN breaker_forbidden INTEGER NOT NULL DEFAULT 5;

-- How many times a recipient was put back to pending after a streak of 403s showed its account
-- blocked. Put back once, a recipient refused with 403 again is failed for good.
ALTER TABLE recipients ADD COLUMN requeued INTEGER NOT NULL DEFAULT 0;
