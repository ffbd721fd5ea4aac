-- The order service's own tables: a read model of orders and its outbox.

-- The latest state of each order.
CREATE TABLE IF NOT EXISTS order_summary (
    order_id      text        PRIMARY KEY,
    events        integer     NOT NULL,
    status        text        NOT NULL,
    total         numeric,
    last_event_id text        NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- Each order's history as applied: position 1, 2, 3, … per order.
CREATE TABLE IF NOT EXISTS order_timeline (
    order_id   text        NOT NULL,
    position   integer     NOT NULL,
    event_id   text        NOT NULL,
    event_type text        NOT NULL,
    payload    jsonb,
    version    text,
    late       boolean     NOT NULL DEFAULT false,
    applied_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (order_id, position)
);

-- What this service tells others, relayed by an outboxd of its own.
CREATE TABLE IF NOT EXISTS outbox (
    id            uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    aggregatetype text        NOT NULL,
    aggregateid   text        NOT NULL,
    type          text        NOT NULL,
    payload       jsonb,
    timestamp     timestamptz NOT NULL DEFAULT now()
);
