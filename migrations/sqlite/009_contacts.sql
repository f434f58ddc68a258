-- One memory of people across campaigns, a do-not-contact list, and the reads that find and check
-- them. The migration runner turns foreign keys off around this file (as SQLite's procedure for
-- changing a table asks), so rebuilding `recipients` keeps every attempt that refers to it.

-- One row per person, shared by every campaign of the database: known by URN, by public
-- identifier (the slug of a profile URL), or both once a lookup joined them.
CREATE TABLE contacts (
    id                INTEGER PRIMARY KEY,
    profile_urn       TEXT UNIQUE,
    public_identifier TEXT UNIQUE,
    first_name        TEXT,
    last_name         TEXT,
    headline          TEXT,
    source            TEXT NOT NULL,     -- where we first learned of them: a campaign, a group, block
    not_found         TEXT,              -- the API said there is no such profile (its words)
    resolved_at       REAL,              -- when a lookup gave the URN of a public identifier
    blocked_at        REAL,              -- on the do-not-contact list since then
    blocked_reason    TEXT,
    created_at        REAL NOT NULL,
    updated_at        REAL NOT NULL,
    CHECK (profile_urn IS NOT NULL OR public_identifier IS NOT NULL)
);
CREATE INDEX contacts_blocked ON contacts (blocked_at) WHERE blocked_at IS NOT NULL;
INSERT INTO contacts (profile_urn, source, created_at, updated_at)
    SELECT profile_urn, 'campaign ' || min(campaign), min(updated_at), max(updated_at) FROM recipients
    GROUP BY profile_urn;

-- Recipients again, so that: a recipient given by its public identifier has no URN until it is
-- looked up; `suppressed` (on the do-not-contact list) is a status; a conversation pre-check is
-- remembered with the account that made it.
CREATE TABLE recipients_new (
    id                INTEGER PRIMARY KEY,
    campaign          TEXT NOT NULL REFERENCES campaigns(name) ON DELETE CASCADE,
    profile_urn       TEXT,              -- NULL until its public_identifier is looked up
    public_identifier TEXT,
    message           TEXT NOT NULL,
    status            TEXT NOT NULL DEFAULT 'pending'
                      CHECK (status IN ('pending', 'in_flight', 'sent', 'failed', 'unknown', 'skipped', 'suppressed')),
    account_id        TEXT,
    attempts          INTEGER NOT NULL DEFAULT 0,
    retries           INTEGER NOT NULL DEFAULT 0,
    not_before        REAL NOT NULL DEFAULT 0,
    http_status       INTEGER,
    error             TEXT,
    run_id            INTEGER,
    sent_at           REAL,
    updated_at        REAL NOT NULL,
    requeued          INTEGER NOT NULL DEFAULT 0,
    removed           INTEGER NOT NULL DEFAULT 0,
    variables         TEXT,
    checked_by        TEXT,              -- the account whose pre-check found no conversation...
    checked_at        REAL,              -- ...and when
    reading_until     REAL NOT NULL DEFAULT 0,  -- a lookup or pre-check of it is on the wire until then
    origin            TEXT NOT NULL DEFAULT 'file' CHECK (origin IN ('file', 'group')),  -- the file, or the group's members
    UNIQUE (campaign, profile_urn),
    CHECK (profile_urn IS NOT NULL OR public_identifier IS NOT NULL)
);
INSERT INTO recipients_new (id, campaign, profile_urn, message, status, account_id, attempts, retries, not_before,
    http_status, error, run_id, sent_at, updated_at, requeued, removed, variables)
    SELECT id, campaign, profile_urn, message, status, account_id, attempts, retries, not_before, http_status,
    error, run_id, sent_at, updated_at, requeued, removed, variables FROM recipients;
DROP TABLE recipients;
ALTER TABLE recipients_new RENAME TO recipients;
CREATE INDEX recipients_queue ON recipients (campaign, id) WHERE status = 'pending';
CREATE INDEX recipients_status ON recipients (campaign, status);
CREATE INDEX recipients_in_flight ON recipients (run_id) WHERE status = 'in_flight';
CREATE INDEX recipients_person ON recipients (profile_urn);
CREATE INDEX recipients_slug ON recipients (public_identifier) WHERE public_identifier IS NOT NULL;

-- Per campaign: whether a person another campaign contacted may be messaged (NULL: never;
-- 0: always; else after that many seconds), the conversation pre-check (conversation, none), the
-- group's members as audience (JSON: statuses, max; NULL: none), and the daily read budgets.
ALTER TABLE campaigns ADD COLUMN recontact_after REAL;
ALTER TABLE campaigns ADD COLUMN precheck TEXT NOT NULL DEFAULT 'conversation';
ALTER TABLE campaigns ADD COLUMN audience TEXT;
ALTER TABLE campaigns ADD COLUMN members_budget TEXT NOT NULL DEFAULT '1000/day';
ALTER TABLE campaigns ADD COLUMN profiles_budget TEXT NOT NULL DEFAULT '120/day';

-- Every read request (a profile lookup, a page of members, a pre-check, an account's health).
-- Each counts against the API key's limit with the sends, and against its account's budgets.
CREATE TABLE reads (
    id          INTEGER PRIMARY KEY,
    account_id  TEXT NOT NULL,
    action      TEXT NOT NULL,      -- profile, members, precheck, status
    units       INTEGER NOT NULL,   -- what it spends of the action's daily budget (members asked for)
    subject     TEXT,               -- the public identifier or group it was about
    started_at  REAL NOT NULL,
    slot_at     REAL NOT NULL,      -- when it was answered; until then the latest it can be
    http_status INTEGER,
    error       TEXT,
    hold_until  REAL                -- a 429: no more of this action on this account until then
);
CREATE INDEX reads_slot ON reads (slot_at);
CREATE INDEX reads_budget ON reads (account_id, action, slot_at);
CREATE INDEX reads_subject ON reads (subject, action);

-- Fetching a group's members, page by page: where the next page starts, so a killed fetch
-- continues there. `key` names the group, statuses, query and the campaign it feeds ('' for none).
CREATE TABLE member_fetches (
    id          INTEGER PRIMARY KEY,
    key         TEXT NOT NULL UNIQUE,
    campaign    TEXT REFERENCES campaigns(name) ON DELETE CASCADE,
    group_ref   TEXT NOT NULL,      -- the group id, or the group URL it was given as
    statuses    TEXT NOT NULL,      -- JSON list: MEMBER, MANAGER, OWNER
    query       TEXT,
    max_members INTEGER,
    next_start  INTEGER NOT NULL DEFAULT 0,
    total       INTEGER,
    done        INTEGER NOT NULL DEFAULT 0,
    updated_at  REAL NOT NULL
);
CREATE TABLE group_members (
    fetch_id          INTEGER NOT NULL REFERENCES member_fetches(id) ON DELETE CASCADE,
    contact_id        INTEGER NOT NULL REFERENCES contacts(id) ON DELETE CASCADE,
    position          INTEGER NOT NULL,
    membership_status TEXT,
    PRIMARY KEY (fetch_id, contact_id)
);

-- Each account's health as the API last told it (GET /account/status), as JSON, and when.
ALTER TABLE accounts ADD COLUMN health TEXT;
ALTER TABLE accounts ADD COLUMN health_at REAL;
