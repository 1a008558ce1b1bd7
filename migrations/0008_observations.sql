-- What the ledger saw of MI's asset list, and when: an asset a pass showed before a key's
-- request left cannot be that key's registration, whatever the list carries. Kept compact:
-- per scope, every asset ID ever seen with the pass that first saw it, in one blob
-- (ledger::observed), and the passes themselves.
CREATE TABLE list_passes (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    scope       INTEGER NOT NULL,
    started_at  INTEGER NOT NULL,
    ended_at    INTEGER NOT NULL,
    -- The walk read the whole list as it held still, and it showed the ledger's own recent
    -- assets: everything made before `current_as_of` is in it (NULL: not known).
    current_as_of INTEGER,
    assets      INTEGER NOT NULL
);
CREATE INDEX list_passes_by_scope ON list_passes (scope, ended_at);

CREATE TABLE seen_assets (
    scope INTEGER PRIMARY KEY,
    -- Sorted asset IDs, each with the pass that first saw it, delta-encoded varints.
    data  BLOB    NOT NULL
);

-- What an uncertain key's candidates are known to be, for the report and `resolve`: a JSON
-- list of {asset_id, name, size, created, first_seen, why}.
ALTER TABLE keys ADD COLUMN evidence TEXT;
