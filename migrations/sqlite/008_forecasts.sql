-- What `run` forecast for a campaign, each time it forecast: when the last message goes out, and
-- how many go out each day. `status` and the live view show the latest; the history stays, so
-- what was sent can be set against what was forecast at the start.
CREATE TABLE forecasts (
    campaign  TEXT NOT NULL REFERENCES campaigns(name),
    made_at   REAL NOT NULL,
    finish    REAL,              -- the last send; NULL when it is beyond the forecast's horizon
    result    TEXT NOT NULL,     -- done, horizon (two years were not enough), accounts_stopped
    pending   INTEGER NOT NULL,  -- recipients left to send when it was made
    per_day   TEXT NOT NULL,     -- JSON: local day (YYYY-MM-DD) -> messages
    PRIMARY KEY (campaign, made_at)
);

-- The campaign's own time zone (its schedule's, else its first account's): forecasts and `status`
-- show its times there, as `plan` does.
ALTER TABLE campaigns ADD COLUMN timezone TEXT;
