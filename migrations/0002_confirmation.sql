-- Confirmation polls import-status per asset, backing off per asset: when to look next and
-- how many times it has looked.
ALTER TABLE keys ADD COLUMN next_check_at INTEGER; -- Unix milliseconds
ALTER TABLE keys ADD COLUMN checks INTEGER NOT NULL DEFAULT 0;
