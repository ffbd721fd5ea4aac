#!/usr/bin/env bash
# The demo: throwaway local PostgreSQL and Kafka, an outbox table, a few business
# transactions, and outboxd reading them back from a logical replication slot.
#
#   scripts/demo.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

step() { printf '\n==> %s\n' "$*"; }

step "Starting PostgreSQL and Kafka (installs what is missing on first run)"
scripts/pg.sh start
scripts/kafka.sh start
eval "$(scripts/pg.sh env)"
eval "$(scripts/kafka.sh env)"
PSQL=("$OUTBOXD_TEST_PG_BINDIR/psql" -X -q -v ON_ERROR_STOP=1)
ADMIN_URL="$OUTBOXD_TEST_PG_URL"
DEMO_URL="${ADMIN_URL%/*}/outboxd_demo?sslmode=disable"

step "Building outboxd"
cargo build -q -p outboxd
OUTBOXD="$ROOT/target/debug/outboxd"

step "Creating database outboxd_demo with an outbox table and a publication"
"${PSQL[@]}" "$ADMIN_URL" -c "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = 'outboxd_demo'" >/dev/null
"${PSQL[@]}" "$ADMIN_URL" -c "DROP DATABASE IF EXISTS outboxd_demo WITH (FORCE)" -c "CREATE DATABASE outboxd_demo"
"${PSQL[@]}" "$DEMO_URL" <<'SQL'
CREATE TABLE orders (id text PRIMARY KEY, total numeric NOT NULL);
CREATE TABLE outbox (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    aggregatetype varchar(255) NOT NULL,
    aggregateid   varchar(255) NOT NULL,
    type          varchar(255) NOT NULL,
    payload       jsonb,
    timestamp     timestamptz NOT NULL DEFAULT now()
);
CREATE PUBLICATION outboxd_demo FOR TABLE outbox WITH (publish = 'insert');
SQL

step "Preflight: outboxd check"
"$OUTBOXD" check --postgres-url "$DEMO_URL" --slot outboxd_demo --publication outboxd_demo

step "Creating the slot (outboxd tail --create-slot, nothing to read yet)"
"$OUTBOXD" tail --postgres-url "$DEMO_URL" --slot outboxd_demo --publication outboxd_demo \
    --create-slot --idle-exit-secs 1 2>/dev/null

step "Writing business rows and outbox events in the same transactions"
"${PSQL[@]}" "$DEMO_URL" <<'SQL'
BEGIN;
INSERT INTO orders VALUES ('order-1', 42.00);
INSERT INTO outbox (aggregatetype, aggregateid, type, payload)
VALUES ('order', 'order-1', 'OrderCreated', '{"id": "order-1", "total": 42.00}');
COMMIT;

BEGIN;
UPDATE orders SET total = 40.00 WHERE id = 'order-1';
INSERT INTO outbox (aggregatetype, aggregateid, type, payload)
VALUES ('order', 'order-1', 'OrderDiscounted', '{"id": "order-1", "total": 40.00}'),
       ('customer', 'cust-7', 'LoyaltyPointsAdded', '{"points": 40}');
COMMIT;

-- Rolled back: never published.
BEGIN;
INSERT INTO outbox (aggregatetype, aggregateid, type, payload)
VALUES ('order', 'order-2', 'OrderCreated', '{"id": "order-2"}');
ROLLBACK;

-- An outbox event without a table: a transactional logical message.
BEGIN;
SELECT pg_logical_emit_message(true, 'outbox', '{"aggregatetype":"order","aggregateid":"order-1","type":"OrderShipped","payload":{}}');
COMMIT;
SQL

step "outboxd tail: the committed transactions, in commit order, decoded from the slot"
"$OUTBOXD" tail --postgres-url "$DEMO_URL" --slot outboxd_demo --publication outboxd_demo \
    --confirm --idle-exit-secs 2

step "Slot position after confirming"
"${PSQL[@]}" "$ADMIN_URL" -c "SELECT slot_name, confirmed_flush_lsn, pg_current_wal_lsn() - confirmed_flush_lsn AS lag_bytes FROM pg_replication_slots WHERE slot_name = 'outboxd_demo'"

cat <<EOF2

Done. What happened:
  - PostgreSQL $("$OUTBOXD_TEST_PG_BINDIR/postgres" --version | awk '{print $3}') runs at $OUTBOXD_TEST_PG_URL (wal_level=logical),
    Apache Kafka at $OUTBOXD_TEST_KAFKA_BROKERS (KRaft, single node).
  - Database outboxd_demo has an outbox table, publication and slot 'outboxd_demo'.
  - outboxd read the three committed transactions from the slot (the rolled-back
    one never appears) and confirmed them, so the slot's lag is back near zero.
  - Relaying the events to Kafka ('outboxd run') is the next milestone (issue
    "The relay"); Kafka is already up for it.
Stop the services with: scripts/pg.sh stop && scripts/kafka.sh stop
EOF2
