-- Per-agent enforcement-mode override and the invalidation event log.
ALTER TABLE agents ADD COLUMN mode text NOT NULL DEFAULT '';

CREATE TABLE invalidations (
    seq            bigint PRIMARY KEY,
    type           text   NOT NULL,
    org            text   NOT NULL,
    team           text   NOT NULL,
    agent          text   NOT NULL,
    policy_version text   NOT NULL,
    approval_id    text   NOT NULL,
    reason         text   NOT NULL,
    time_ns        bigint NOT NULL,
    key            text   UNIQUE
);
CREATE INDEX invalidations_time ON invalidations (time_ns);
