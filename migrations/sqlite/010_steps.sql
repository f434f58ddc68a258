-- Sequences that stop on reply: a recipient goes through its campaign's steps (the first message,
-- then each follow-up), a reply ends it, and every step sent is kept. Recipients are rebuilt for
-- the new status `replied` (a CHECK constraint cannot be altered in place).

CREATE TABLE recipients_new (
    id                INTEGER PRIMARY KEY,
    campaign          TEXT NOT NULL REFERENCES campaigns(name) ON DELETE CASCADE,
    profile_urn       TEXT,
    public_identifier TEXT,
    message           TEXT NOT NULL,     -- the message of its current step
    status            TEXT NOT NULL DEFAULT 'pending'
                      CHECK (status IN ('pending', 'in_flight', 'sent', 'failed', 'unknown', 'skipped', 'suppressed',
                                        'replied')),
    account_id        TEXT,
    attempts          INTEGER NOT NULL DEFAULT 0,
    retries           INTEGER NOT NULL DEFAULT 0,
    not_before        REAL NOT NULL DEFAULT 0,
    http_status       INTEGER,
    error             TEXT,
    run_id            INTEGER,
    sent_at           REAL,              -- its latest step sent
    updated_at        REAL NOT NULL,
    requeued          INTEGER NOT NULL DEFAULT 0,
    removed           INTEGER NOT NULL DEFAULT 0,
    variables         TEXT,
    checked_by        TEXT,
    checked_at        REAL,
    reading_until     REAL NOT NULL DEFAULT 0,
    origin            TEXT NOT NULL DEFAULT 'file' CHECK (origin IN ('file', 'group')),
    step              INTEGER NOT NULL DEFAULT 0,  -- its current step, 0 the first message
    messages          TEXT,              -- JSON: every step's message; NULL for a single message
    variants          TEXT,              -- JSON: the variant drawn for each step; NULL when none is named
    replied_at        REAL,              -- when the person answered (after our first message)
    reply             TEXT,              -- the answer's first 200 characters
    looked_at         REAL,              -- an unknown outcome looked for in the conversation, and not found, then
    UNIQUE (campaign, profile_urn),
    CHECK (profile_urn IS NOT NULL OR public_identifier IS NOT NULL)
);
INSERT INTO recipients_new (id, campaign, profile_urn, public_identifier, message, status, account_id, attempts,
    retries, not_before, http_status, error, run_id, sent_at, updated_at, requeued, removed, variables, checked_by,
    checked_at, reading_until, origin)
    SELECT id, campaign, profile_urn, public_identifier, message, status, account_id, attempts, retries, not_before,
    http_status, error, run_id, sent_at, updated_at, requeued, removed, variables, checked_by, checked_at,
    reading_until, origin FROM recipients;
DROP TABLE recipients;
ALTER TABLE recipients_new RENAME TO recipients;
-- First messages in file order; follow-ups by account and when they are due.
CREATE INDEX recipients_queue ON recipients (campaign, id) WHERE status = 'pending' AND step = 0;
CREATE INDEX recipients_follow_ups ON recipients (campaign, account_id, not_before) WHERE status = 'pending' AND step > 0;
CREATE INDEX recipients_status ON recipients (campaign, status);
CREATE INDEX recipients_in_flight ON recipients (run_id) WHERE status = 'in_flight';
CREATE INDEX recipients_person ON recipients (profile_urn);
CREATE INDEX recipients_slug ON recipients (public_identifier) WHERE public_identifier IS NOT NULL;

-- Every step delivered (or confirmed delivered from the conversation), with its variant.
CREATE TABLE step_sends (
    recipient_id INTEGER NOT NULL REFERENCES recipients(id) ON DELETE CASCADE,
    step         INTEGER NOT NULL,
    variant      TEXT NOT NULL DEFAULT '',
    account_id   TEXT NOT NULL,
    sent_at      REAL NOT NULL,
    confirmed    INTEGER NOT NULL DEFAULT 0,   -- an unknown outcome found in the conversation
    PRIMARY KEY (recipient_id, step)
);
INSERT INTO step_sends (recipient_id, step, account_id, sent_at)
    SELECT id, 0, coalesce(account_id, ''), sent_at FROM recipients WHERE status = 'sent' AND sent_at IS NOT NULL;

-- Every reply seen, by polling or by webhook: each message once, whichever way and however often it came.
CREATE TABLE replies (
    message_urn TEXT PRIMARY KEY,
    account_id  TEXT NOT NULL,       -- as the API or the event named it
    sender_urn  TEXT NOT NULL,
    body        TEXT,
    sent_at     REAL NOT NULL,
    seen_at     REAL NOT NULL,
    via         TEXT NOT NULL CHECK (via IN ('poll', 'webhook'))
);
CREATE INDEX replies_sender ON replies (sender_urn);

-- The campaign's steps and what replies do (settings.Steps as JSON; NULL: one message, the defaults).
ALTER TABLE campaigns ADD COLUMN steps TEXT;
-- An account's conversations were last read in full from this moment (the start of that poll).
ALTER TABLE accounts ADD COLUMN replies_polled_at REAL;
CREATE INDEX step_sends_account ON step_sends (account_id, sent_at);
