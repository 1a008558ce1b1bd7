-- What MI's asset details said each asset was made from (`result.key`, and the bucket where
-- they name it), per scope: an asset's key never changes, so each is asked once. Only what
-- answered is kept; an asset whose details could not be read (gone, or an error) is not.
CREATE TABLE asset_details (
    scope    INTEGER NOT NULL,
    asset_id INTEGER NOT NULL,
    key      TEXT,
    bucket   TEXT,
    at       INTEGER NOT NULL,
    PRIMARY KEY (scope, asset_id)
) WITHOUT ROWID;
