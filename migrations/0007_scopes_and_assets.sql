-- What exactly-once needs at the edges: a scope names the MI endpoint as well as the
-- workspace and project (asset IDs are not known to be unique across projects or endpoints,
-- so what one scope owns rules nothing out in another); key rows are never numbered again
-- once removed (AUTOINCREMENT), so no new row inherits an old one's analyses or history; an
-- analysis belongs to the asset it was requested for; and a key remembers whether a run was
-- asked to analyse it.

-- Scopes: the endpoint joins the name. Rows from before it was kept have none; the first run
-- through an endpoint adopts them (ledger::Scope::open).
CREATE TABLE scopes_v7 (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    endpoint  TEXT,
    workspace TEXT    NOT NULL,
    project   TEXT    NOT NULL,
    UNIQUE (endpoint, workspace, project)
);
INSERT INTO scopes_v7 (id, endpoint, workspace, project)
    SELECT id, NULL, workspace, project FROM scopes;

CREATE TABLE keys_v7 (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    scope         INTEGER NOT NULL REFERENCES scopes_v7 (id),
    bucket        INTEGER NOT NULL REFERENCES buckets (id),
    key           TEXT    NOT NULL,
    state         INTEGER NOT NULL CHECK (state BETWEEN 0 AND 7),
    size          INTEGER,
    etag          TEXT,
    modified      INTEGER,
    asset_id      INTEGER,
    found_by      TEXT,
    attempts      INTEGER NOT NULL DEFAULT 0,
    http_status   INTEGER,
    error_code    TEXT,
    message       TEXT,
    trace_id      TEXT,
    first_seen_at INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL,
    registered_at INTEGER,
    sent_at       INTEGER,
    unsure_at     INTEGER,
    candidates    TEXT,
    upload_status TEXT,
    upload_result TEXT,
    next_check_at INTEGER,
    checks        INTEGER NOT NULL DEFAULT 0,
    changed_at    INTEGER,
    run           INTEGER,
    analyze       INTEGER NOT NULL DEFAULT 0, -- a run with --analyze sent or completed it
    UNIQUE (scope, bucket, key)
);
INSERT INTO keys_v7 (id, scope, bucket, key, state, size, etag, modified, asset_id, found_by,
                     attempts, http_status, error_code, message, trace_id, first_seen_at,
                     updated_at, registered_at, sent_at, unsure_at, candidates, upload_status,
                     upload_result, next_check_at, checks, changed_at, run, analyze)
    SELECT id, scope, bucket, key, state, size, etag, modified, asset_id, found_by,
           attempts, http_status, error_code, message, trace_id, first_seen_at,
           updated_at, registered_at, sent_at, unsure_at, candidates, upload_status,
           upload_result, next_check_at, checks, changed_at, run,
           -- A key analysed before kept that wish.
           EXISTS (SELECT 1 FROM analyses a WHERE a.key_id = keys.id)
    FROM keys;

-- Analyses: one row per (key, asset). A key registered again under a new asset is analysed
-- again when asked; the old asset's row stays as history and is no longer shown or followed.
-- A request made again (--reanalyze-failed) keeps what MI said before, so a lost answer is
-- not mistaken for MI's word on the new request.
CREATE TABLE analyses_v7 (
    key_id          INTEGER NOT NULL,
    asset_id        INTEGER NOT NULL,
    status          TEXT    NOT NULL,
    index_id        TEXT,
    message         TEXT,
    attempts        INTEGER NOT NULL DEFAULT 0,
    http_status     INTEGER,
    sent_at         INTEGER,
    unsure_at       INTEGER,
    next_check_at   INTEGER,
    checks          INTEGER NOT NULL DEFAULT 0,
    run             INTEGER,
    updated_at      INTEGER NOT NULL,
    previous_status TEXT,
    previous_index  TEXT,
    PRIMARY KEY (key_id, asset_id)
);
-- Rows of keys that are gone (a project forgotten before forgetting removed them) go too.
INSERT INTO analyses_v7 (key_id, asset_id, status, index_id, message, attempts, http_status,
                         sent_at, unsure_at, next_check_at, checks, run, updated_at)
    SELECT key_id, asset_id, status, index_id, message, attempts, http_status, sent_at,
           unsure_at, next_check_at, checks, run, updated_at
    FROM analyses WHERE key_id IN (SELECT id FROM keys);
-- Every asset a key had before its current one, per key: the same number may be another
-- project's asset.
CREATE TABLE asset_history_v7 (
    asset_id      INTEGER NOT NULL,
    key_id        INTEGER NOT NULL,
    at            INTEGER NOT NULL,
    why           TEXT    NOT NULL,
    sent_at       INTEGER,
    registered_at INTEGER,
    PRIMARY KEY (key_id, asset_id)
);
INSERT INTO asset_history_v7 SELECT asset_id, key_id, at, why, sent_at, registered_at
    FROM asset_history WHERE key_id IN (SELECT id FROM keys);
DROP TABLE asset_history;
ALTER TABLE asset_history_v7 RENAME TO asset_history;

DROP INDEX keys_by_state;
DROP INDEX keys_due;
DROP INDEX analyses_due;
DROP TABLE keys;
DROP TABLE analyses;
DROP TABLE scopes;
ALTER TABLE scopes_v7 RENAME TO scopes;
ALTER TABLE keys_v7 RENAME TO keys;
ALTER TABLE analyses_v7 RENAME TO analyses;

-- Numbers already used by a row, even one removed since, are never given again.
UPDATE sqlite_sequence SET seq = MAX(seq, COALESCE((SELECT MAX(key_id) FROM events), 0))
    WHERE name = 'keys';
INSERT INTO sqlite_sequence (name, seq)
    SELECT 'keys', COALESCE((SELECT MAX(key_id) FROM events), 0)
    WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'keys');

CREATE INDEX keys_by_state ON keys (scope, state, id);
CREATE INDEX keys_due ON keys (scope, next_check_at) WHERE state = 3;
CREATE INDEX analyses_due ON analyses (next_check_at) WHERE next_check_at IS NOT NULL;
