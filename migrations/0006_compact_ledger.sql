-- The ledger rebuilt compact (a key costs about half the bytes it did), with what exactly-once
-- needs to remember: when each key's request could have left and when its outcome became
-- unknown, every asset a key ever had, what was learned about how MI lists assets, and the
-- candidates of keys that only the user can settle. Times are Unix milliseconds (UTC).

-- (workspace, project) pairs and bucket names, stored once instead of in every row.
CREATE TABLE scopes (
    id        INTEGER PRIMARY KEY,
    workspace TEXT    NOT NULL,
    project   TEXT    NOT NULL,
    UNIQUE (workspace, project)
);
CREATE TABLE buckets (
    id   INTEGER PRIMARY KEY,
    name TEXT    NOT NULL UNIQUE
);
INSERT INTO scopes (workspace, project)
    SELECT workspace, project FROM keys
    UNION SELECT workspace, project FROM listings;
INSERT INTO buckets (name) SELECT bucket FROM keys UNION SELECT bucket FROM listings;

-- state: 0 pending, 1 in_flight, 2 uncertain, 3 registered, 4 completed, 5 import_failed,
-- 6 failed, 7 skipped (ledger::State).
CREATE TABLE keys_v6 (
    id            INTEGER PRIMARY KEY,
    scope         INTEGER NOT NULL REFERENCES scopes (id),
    bucket        INTEGER NOT NULL REFERENCES buckets (id),
    key           TEXT    NOT NULL,
    state         INTEGER NOT NULL CHECK (state BETWEEN 0 AND 7),
    size          INTEGER,
    etag          TEXT,
    modified      INTEGER,
    asset_id      INTEGER,
    found_by      TEXT,              -- how asset_id was learned, when not from MI's answer
    attempts      INTEGER NOT NULL DEFAULT 0,
    http_status   INTEGER,
    error_code    TEXT,
    message       TEXT,
    trace_id      TEXT,
    first_seen_at INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL,
    registered_at INTEGER,           -- when the asset ID was learned
    sent_at       INTEGER,           -- when the key last went in flight: no request before
    unsure_at     INTEGER,           -- when its outcome became unknown: no request after
    candidates    TEXT,              -- uncertain: assets that may be this key's, for `resolve`
    upload_status TEXT,
    upload_result TEXT,
    next_check_at INTEGER,
    checks        INTEGER NOT NULL DEFAULT 0,
    changed_at    INTEGER,
    run           INTEGER,           -- the run that last settled this key
    UNIQUE (scope, bucket, key)
);

INSERT INTO keys_v6 (id, scope, bucket, key, state, size, etag, modified, asset_id, attempts,
                     http_status, error_code, message, trace_id, first_seen_at, updated_at,
                     registered_at, sent_at, unsure_at, upload_status, upload_result,
                     next_check_at, checks, changed_at)
SELECT k.id, s.id, b.id, k.key,
       CASE k.state WHEN 'pending' THEN 0 WHEN 'in_flight' THEN 1 WHEN 'uncertain' THEN 2
                    WHEN 'registered' THEN 3 WHEN 'completed' THEN 4 WHEN 'import_failed' THEN 5
                    WHEN 'failed' THEN 6 ELSE 7 END,
       k.size, k.etag,
       CAST((julianday(k.last_modified) - 2440587.5) * 86400000 AS INTEGER),
       k.asset_id, k.attempts, k.http_status, k.error_code, k.message, k.trace_id,
       CAST((julianday(k.first_seen_at) - 2440587.5) * 86400000 AS INTEGER),
       CAST((julianday(k.updated_at) - 2440587.5) * 86400000 AS INTEGER),
       CAST((julianday(k.registered_at) - 2440587.5) * 86400000 AS INTEGER),
       CASE WHEN k.state IN ('in_flight', 'uncertain')
            THEN CAST((julianday(k.updated_at) - 2440587.5) * 86400000 AS INTEGER) END,
       CASE WHEN k.state = 'uncertain'
            THEN CAST((julianday(k.updated_at) - 2440587.5) * 86400000 AS INTEGER) END,
       k.upload_status, k.upload_result,
       CASE WHEN k.state = 'registered' THEN COALESCE(k.next_check_at, 0) END,
       k.checks,
       CAST((julianday(k.changed_at) - 2440587.5) * 86400000 AS INTEGER)
FROM keys k
JOIN scopes s ON s.workspace = k.workspace AND s.project = k.project
JOIN buckets b ON b.name = k.bucket;

-- Every asset a key had before its current one (an object registered again after it
-- changed). None of them may ever be taken for a new registration.
CREATE TABLE asset_history (
    asset_id      INTEGER PRIMARY KEY,
    key_id        INTEGER NOT NULL,
    at            INTEGER NOT NULL,
    why           TEXT    NOT NULL,
    -- When its request left and its answer came (an asset known from MI's answer): it
    -- still witnesses how MI names, times and numbers assets.
    sent_at       INTEGER,
    registered_at INTEGER
);
INSERT INTO asset_history (asset_id, key_id, at, why)
    SELECT previous_asset_id, id,
           COALESCE(CAST((julianday(changed_at) - 2440587.5) * 86400000 AS INTEGER), 0),
           'the object changed and was registered again'
    FROM keys WHERE previous_asset_id IS NOT NULL;

DROP INDEX keys_by_state;
DROP INDEX keys_due;
DROP TABLE keys;
ALTER TABLE keys_v6 RENAME TO keys;

-- Claiming walks pending rows in arrival order; counting groups by state.
CREATE INDEX keys_by_state ON keys (scope, state, id);
-- Confirmation picks the registered assets due soonest; only registered rows are indexed.
CREATE INDEX keys_due ON keys (scope, next_check_at) WHERE state = 3;

-- What was learned about how MI behaves for a project (how its asset list names assets,
-- what its entries carry), so reconciliation uses evidence, not a guess.
CREATE TABLE facts (
    scope INTEGER NOT NULL,
    name  TEXT    NOT NULL,
    value TEXT    NOT NULL,
    at    INTEGER NOT NULL,
    PRIMARY KEY (scope, name)
);

-- Changes made by hand (`resolve`, `forget`), with their time, for the record.
CREATE TABLE events (
    id     INTEGER PRIMARY KEY,
    at     INTEGER NOT NULL,
    scope  INTEGER,
    key_id INTEGER,
    action TEXT    NOT NULL,
    detail TEXT
);

-- Listings: one row per (bucket, prefix) pass, and its parts, each listed on its own and
-- each with its own saved position, so a listing fans out over the key space and resumes
-- part by part.
CREATE TABLE listings_v6 (
    id         INTEGER PRIMARY KEY,
    scope      INTEGER NOT NULL,
    bucket     INTEGER NOT NULL,
    prefix     TEXT    NOT NULL,
    pages      INTEGER NOT NULL DEFAULT 0,
    objects    INTEGER NOT NULL DEFAULT 0,
    started_at INTEGER NOT NULL,
    listed_at  INTEGER,           -- every part reached its end
    closed_at  INTEGER            -- the run finished; never resumed again
);
-- A part lists `prefix` (with a delimiter, its subfolders becoming parts of their own; or,
-- `flat`, everything below it) after `marker`.
CREATE TABLE listing_parts (
    id      INTEGER PRIMARY KEY,
    listing INTEGER NOT NULL,
    prefix  TEXT    NOT NULL,
    flat    INTEGER NOT NULL DEFAULT 0,
    marker  TEXT,
    done    INTEGER NOT NULL DEFAULT 0,
    UNIQUE (listing, prefix)
);
INSERT INTO listings_v6 (id, scope, bucket, prefix, pages, objects, started_at, listed_at, closed_at)
    SELECT l.id, s.id, b.id, l.prefix, l.pages, l.objects,
           CAST((julianday(l.started_at) - 2440587.5) * 86400000 AS INTEGER),
           CAST((julianday(l.listed_at) - 2440587.5) * 86400000 AS INTEGER),
           CAST((julianday(l.closed_at) - 2440587.5) * 86400000 AS INTEGER)
    FROM listings l
    JOIN scopes s ON s.workspace = l.workspace AND s.project = l.project
    JOIN buckets b ON b.name = l.bucket;
-- A listing left open by an older run goes on flat from where it stood.
INSERT INTO listing_parts (listing, prefix, flat, marker, done)
    SELECT id, prefix, 1, marker, listed_at IS NOT NULL FROM listings WHERE closed_at IS NULL;
DROP TABLE listings;
ALTER TABLE listings_v6 RENAME TO listings;

-- Manifests read into a project: by path and settings, how many leading bytes were read
-- (ending at a record's end), a hash of exactly those bytes, and the lines they held. A
-- manifest whose leading bytes are unchanged is read only from there on.
DROP TABLE manifests;
CREATE TABLE manifests (
    scope    INTEGER NOT NULL,
    path     TEXT    NOT NULL,
    settings TEXT    NOT NULL,
    bytes    INTEGER NOT NULL,
    hash     TEXT    NOT NULL,
    lines    INTEGER NOT NULL,
    rows     INTEGER NOT NULL,
    read_at  INTEGER NOT NULL,
    -- 16-byte digests of the read's chunks of rows, concatenated (source/chunks.rs)
    chunks   BLOB    NOT NULL DEFAULT x'',
    PRIMARY KEY (scope, path, settings)
);

-- A run's heartbeat (its last commit) and its request timeout: the keys a killed run left in
-- flight could have reached MI no later than the one plus the other.
ALTER TABLE runs ADD COLUMN alive_at INTEGER;
ALTER TABLE runs ADD COLUMN timeout_ms INTEGER;
-- Listing picks the parts still to list, oldest first.
CREATE INDEX listing_parts_open ON listing_parts (listing, done, id);

-- Analysis (`--analyze`): one row per key whose completed asset was sent for analysis. The
-- request is journaled here (status REQUESTING) before it leaves, as a key is before it is
-- registered; a lost answer leaves UNSURE until MI's index status settles it. `status` is
-- otherwise MI's own word (WAIT_ANALYZE, ANALYZING, ANALYZE_COMPLETED, ANALYZE_FAIL, ...).
CREATE TABLE analyses (
    key_id        INTEGER PRIMARY KEY,
    asset_id      INTEGER NOT NULL,
    status        TEXT    NOT NULL,
    index_id      TEXT,
    message       TEXT,
    attempts      INTEGER NOT NULL DEFAULT 0,
    http_status   INTEGER,
    sent_at       INTEGER,
    unsure_at     INTEGER,
    next_check_at INTEGER,
    checks        INTEGER NOT NULL DEFAULT 0,
    run           INTEGER,
    updated_at    INTEGER NOT NULL
);
CREATE INDEX analyses_due ON analyses (next_check_at) WHERE next_check_at IS NOT NULL;
