-- How long after its last commit a request of the run may still leave (its heartbeat floor),
-- kept with the run as its request timeout is: a later run dates the run's unknown moments by
-- what the run itself kept. NULL for runs recorded before: they kept 5 s.
ALTER TABLE runs ADD COLUMN heartbeat_ms INTEGER;
