-- Manifests read in full into a project, by fingerprint (their bytes and the settings that
-- shaped their rows): the ledger never forgets a key, so an unchanged manifest can add
-- nothing and is not read again.
CREATE TABLE manifests (
    workspace   TEXT    NOT NULL,
    project     TEXT    NOT NULL,
    fingerprint TEXT    NOT NULL,
    rows        INTEGER NOT NULL,
    read_at     TEXT    NOT NULL,
    PRIMARY KEY (workspace, project, fingerprint)
);
