-- One row per (workspace, project, bucket, key): the ledger is the truth about every key.
CREATE TABLE keys (
    id            INTEGER PRIMARY KEY,
    workspace     TEXT    NOT NULL,
    project       TEXT    NOT NULL,
    bucket        TEXT    NOT NULL,
    key           TEXT    NOT NULL,
    state         TEXT    NOT NULL CHECK (state IN ('pending', 'in_flight', 'uncertain',
                      'registered', 'completed', 'import_failed', 'failed', 'skipped')),
    size          INTEGER,
    etag          TEXT,
    last_modified TEXT,
    asset_id      INTEGER,
    upload_status TEXT,
    upload_result TEXT,
    attempts      INTEGER NOT NULL DEFAULT 0,
    http_status   INTEGER,
    error_code    TEXT,
    message       TEXT,
    trace_id      TEXT,
    first_seen_at TEXT    NOT NULL,
    updated_at    TEXT    NOT NULL,
    registered_at TEXT,
    UNIQUE (workspace, project, bucket, key)
);

-- Claiming walks pending rows in arrival order; counting groups by state.
CREATE INDEX keys_by_state ON keys (workspace, project, state, id);

-- One row per invocation that changes the ledger, for `status` and for the lock's message.
CREATE TABLE runs (
    id          INTEGER PRIMARY KEY,
    command     TEXT    NOT NULL,
    workspace   TEXT,
    project     TEXT,
    pid         INTEGER NOT NULL,
    host        TEXT    NOT NULL,
    started_at  TEXT    NOT NULL,
    finished_at TEXT,
    exit_code   INTEGER,
    summary     TEXT
);
