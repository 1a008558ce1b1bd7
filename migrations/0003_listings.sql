-- A bucket listing in progress or done, so a killed run resumes listing from the last
-- committed page. `closed_at` is set when the run that owns it finishes; the next run then
-- lists again from the start (that is how new objects are found).
CREATE TABLE listings (
    id         INTEGER PRIMARY KEY,
    workspace  TEXT    NOT NULL,
    project    TEXT    NOT NULL,
    bucket     TEXT    NOT NULL,
    prefix     TEXT    NOT NULL,
    marker     TEXT,              -- the last key of the last committed page
    pages      INTEGER NOT NULL DEFAULT 0,
    objects    INTEGER NOT NULL DEFAULT 0,
    started_at TEXT    NOT NULL,
    listed_at  TEXT,              -- the listing reached the end
    closed_at  TEXT               -- the run finished; never resumed again
);

-- An object whose ETag or size changed after it was registered.
ALTER TABLE keys ADD COLUMN changed_at TEXT;
-- The asset a changed object had before it was registered again, so reconciliation never
-- mistakes the old asset for the new one.
ALTER TABLE keys ADD COLUMN previous_asset_id INTEGER;
