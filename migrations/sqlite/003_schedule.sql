-- Human pacing: each account's schedule per campaign, warm-up, the API key's own limits, the
-- random gap between sends, and what the server last said of an account's remaining budget.
ALTER TABLE campaign_accounts ADD COLUMN schedule TEXT;          -- JSON (schedule.Schedule); NULL: any time
ALTER TABLE campaigns ADD COLUMN warmup_start INTEGER;           -- NULL: no warm-up
ALTER TABLE campaigns ADD COLUMN warmup_increase INTEGER;
ALTER TABLE campaigns ADD COLUMN api_limits TEXT NOT NULL DEFAULT '60/minute,100/10s';
ALTER TABLE accounts ADD COLUMN gap_until REAL NOT NULL DEFAULT 0;  -- the random gap after the last send
ALTER TABLE accounts ADD COLUMN first_at REAL;                      -- its first request: day 1 of warm-up
ALTER TABLE accounts ADD COLUMN server_remaining INTEGER;           -- X-RateLimit-Remaining as last seen,
ALTER TABLE accounts ADD COLUMN server_reset REAL;                  -- its X-RateLimit-Reset (local clock),
ALTER TABLE accounts ADD COLUMN server_seen_at REAL;                -- and when that answer came
CREATE INDEX attempts_slot ON attempts (slot_at);                   -- the key-wide window, over all accounts
