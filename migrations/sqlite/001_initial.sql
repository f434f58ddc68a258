-- The first schema. Times are UTC epoch seconds (REAL).
-- Each migration file holds no BEGIN/COMMIT: the runner applies it and records its version in one transaction.

CREATE TABLE campaigns (
    name             TEXT PRIMARY KEY,
    group_id         TEXT NOT NULL,
    endpoint         TEXT NOT NULL,
    message_template TEXT NOT NULL,
    limit_cap        INTEGER NOT NULL,
    limit_window     REAL NOT NULL,
    burst            INTEGER NOT NULL DEFAULT 1,
    max_attempts     INTEGER NOT NULL DEFAULT 3,
    backoff          REAL NOT NULL DEFAULT 2.0,
    source           TEXT,
    created_at       REAL NOT NULL,
    updated_at       REAL NOT NULL
);

-- Which accounts send for a campaign, each with the limit the campaign sets for it.
-- account_id '' is the API key's default account (no accountId is sent).
CREATE TABLE campaign_accounts (
    campaign     TEXT NOT NULL REFERENCES campaigns(name) ON DELETE CASCADE,
    account_id   TEXT NOT NULL,
    limit_cap    INTEGER NOT NULL,
    limit_window REAL NOT NULL,
    PRIMARY KEY (campaign, account_id)
);

CREATE TABLE recipients (
    id           INTEGER PRIMARY KEY,
    campaign     TEXT NOT NULL REFERENCES campaigns(name) ON DELETE CASCADE,
    profile_urn  TEXT NOT NULL,
    message      TEXT NOT NULL,
    status       TEXT NOT NULL DEFAULT 'pending'
                 CHECK (status IN ('pending', 'in_flight', 'sent', 'failed', 'unknown', 'skipped')),
    account_id   TEXT,              -- account of the latest attempt
    attempts     INTEGER NOT NULL DEFAULT 0,   -- HTTP requests made for this recipient
    retries      INTEGER NOT NULL DEFAULT 0,   -- consecutive retryable failures (500, no connection)
    not_before   REAL NOT NULL DEFAULT 0,      -- backoff: not claimed before this moment
    http_status  INTEGER,
    error        TEXT,
    run_id       INTEGER,           -- the run holding it while in_flight
    sent_at      REAL,
    updated_at   REAL NOT NULL,
    UNIQUE (campaign, profile_urn)
);
CREATE INDEX recipients_queue ON recipients (campaign, id) WHERE status = 'pending';
CREATE INDEX recipients_status ON recipients (campaign, status);
CREATE INDEX recipients_in_flight ON recipients (run_id) WHERE status = 'in_flight';

-- Every HTTP exchange, and the window log of the limiter: slot_at is 1e18 while the request is
-- in flight, then the moment its outcome was known (the latest the server can have received it).
CREATE TABLE attempts (
    id             INTEGER PRIMARY KEY,
    recipient_id   INTEGER NOT NULL REFERENCES recipients(id) ON DELETE CASCADE,
    run_id         INTEGER NOT NULL,
    account_id     TEXT NOT NULL,
    endpoint       TEXT NOT NULL,
    started_at     REAL NOT NULL,
    finished_at    REAL,
    slot_at        REAL NOT NULL,
    outcome        TEXT,            -- client.Kind: sent, rejected, rate_limited, unauthorized, misrouted, server_error, not_sent, unknown
    http_status    INTEGER,
    error          TEXT,
    response_body  TEXT,
    latency        REAL,
    rl_action      TEXT,
    rl_limit       TEXT,
    rl_used        TEXT,
    rl_remaining   TEXT,
    rl_reset       TEXT
);
CREATE INDEX attempts_window ON attempts (account_id, slot_at);
CREATE INDEX attempts_recipient ON attempts (recipient_id);

-- Durable limiter state per account, shared by every campaign and process using the database.
CREATE TABLE accounts (
    id            TEXT PRIMARY KEY,
    tat           REAL NOT NULL DEFAULT 0,   -- token bucket: earliest next token
    hold_until    REAL NOT NULL DEFAULT 0,   -- paused by the server until then
    hold_reason   TEXT
);

-- One row per process that sent, so a later run can tell a dead run's in_flight rows from a live one's.
CREATE TABLE runs (
    id          INTEGER PRIMARY KEY,
    pid         INTEGER NOT NULL,
    pid_start   TEXT,               -- when that process started, to tell it from a later one with its pid
    host        TEXT NOT NULL,
    command     TEXT NOT NULL,
    stale_after REAL NOT NULL,      -- seconds after which a claim of this run cannot still be in flight
    started_at  REAL NOT NULL,
    ended_at    REAL
);

