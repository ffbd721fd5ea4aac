-- The inbox: every event a consumer applied, by event id. A row is written in the
-- same transaction as the event's effects, so "recorded" and "applied" are one fact.
CREATE TABLE IF NOT EXISTS {inbox} (
    event_id     text        PRIMARY KEY,
    topic        text        NOT NULL,
    partition    integer     NOT NULL,
    "offset"     bigint      NOT NULL,
    aggregate_id text,
    lsn          pg_lsn,
    event_index  bigint,
    replayed     boolean     NOT NULL DEFAULT false,
    applied_at   timestamptz NOT NULL DEFAULT now()
);

-- The newest version (commit LSN, index) applied per aggregate (topic + key): an
-- event with an unknown id that is not newer than this is stale and not applied,
-- unless it is a replay.
CREATE TABLE IF NOT EXISTS {inbox_versions} (
    topic        text        NOT NULL,
    aggregate_id text        NOT NULL,
    lsn          pg_lsn      NOT NULL,
    event_index  bigint      NOT NULL,
    event_id     text        NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, aggregate_id)
);
