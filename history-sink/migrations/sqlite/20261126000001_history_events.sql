-- History events (one row per event, idempotent by event_id). Times are ms since the Unix epoch, UTC.
CREATE TABLE IF NOT EXISTS history_events (
    event_id       TEXT    NOT NULL PRIMARY KEY,  -- UUIDv7, lowercase hyphenated (sorts by time)
    schema_version INTEGER NOT NULL,
    kind           TEXT    NOT NULL CHECK (kind IN ('inpaint', 'finetune', 'upload')),
    user_id        TEXT    NOT NULL,
    occurred_at    INTEGER NOT NULL,
    original_uri   TEXT,
    mask_uri       TEXT,
    result_uri     TEXT,
    width          INTEGER,
    height         INTEGER,
    hole_ratio     REAL,
    model_id       TEXT,
    model_version  TEXT,
    strategy       TEXT,
    device         TEXT,
    latency_ms     INTEGER,
    status         TEXT    NOT NULL CHECK (status IN ('ok', 'error')),
    error_message  TEXT,
    raw_json       TEXT    NOT NULL,
    recorded_at    INTEGER NOT NULL DEFAULT (CAST(strftime('%s', 'now') AS INTEGER) * 1000)
);

CREATE INDEX IF NOT EXISTS history_events_user_time ON history_events (user_id, occurred_at, event_id);
CREATE INDEX IF NOT EXISTS history_events_kind_time ON history_events (kind, occurred_at, event_id);
CREATE INDEX IF NOT EXISTS history_events_time      ON history_events (occurred_at, event_id);
