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
scripts/deps.sh
scripts/pg.sh start
scripts/kafka.sh start
eval "$(scripts/pg.sh env)"
eval "$(scripts/kafka.sh env)"
# Quiet: no NOTICEs (DROP … IF EXISTS) and no result tables unless asked for.
export PGOPTIONS="-c client_min_messages=warning"
PSQL=("$OUTBOXD_TEST_PG_BINDIR/psql" -X -q -v ON_ERROR_STOP=1)
ADMIN_URL="$OUTBOXD_TEST_PG_URL"
DEMO_URL="${ADMIN_URL%/*}/outboxd_demo?sslmode=disable"

step "Building outboxd and the example consumer (examples/order-service)"
cargo build -q -p outboxd -p outboxd-example-order-service
OUTBOXD="$ROOT/target/debug/outboxd"
ORDER_SERVICE="$ROOT/target/debug/order-service"

step "Creating database outboxd_demo with an orders table and an outbox table"
"${PSQL[@]}" "$ADMIN_URL" -c "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = 'outboxd_demo'" >/dev/null
"${PSQL[@]}" "$ADMIN_URL" -c "DROP DATABASE IF EXISTS outboxd_demo WITH (FORCE)" -c "CREATE DATABASE outboxd_demo" \
    -c "DROP DATABASE IF EXISTS order_service_demo WITH (FORCE)" -c "CREATE DATABASE order_service_demo"
# The demo's topics and its checkpoint topic go with its slot: a new slot starts from no
# checkpoint (an old one behind the new slot would make outboxd refuse, rightly).
scripts/kafka.sh tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$OUTBOXD_TEST_KAFKA_BROKERS" \
    --delete --if-exists --topic 'demo\.(outbox\.event\..*|outboxd\.checkpoints)' >/dev/null 2>&1 || true
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
SQL

mkdir -p .local
cat >.local/demo-outboxd.toml <<TOML
# The demo's configuration; docs/configuration.md has every key.
[postgres]
url = "$DEMO_URL"
slot = "outboxd_demo"
publication = "outboxd_demo"
tables = ["public.outbox"]

[kafka]
brokers = "$OUTBOXD_TEST_KAFKA_BROKERS"
checkpoint_topic = "demo.outboxd.checkpoints"

[routing]
topic = "demo.outbox.event.\${routedByValue}"
additional_headers = [{ column = "type", header = "eventType" }]

[server]
metrics_address = "127.0.0.1:19187"
TOML

step "outboxd init --apply: the publication and the slot (the table exists already)"
"$OUTBOXD" init --apply --config .local/demo-outboxd.toml

step "Preflight: outboxd check"
"$OUTBOXD" check --config .local/demo-outboxd.toml

step "Starting the relay: outboxd run --config .local/demo-outboxd.toml (log: .local/demo-outboxd.log)"
"$OUTBOXD" run --config .local/demo-outboxd.toml 2>.local/demo-outboxd.log &
RELAY_PID=$!
trap 'kill -TERM $RELAY_PID 2>/dev/null || true' EXIT
for _ in $(seq 1 50); do
    curl -sf http://127.0.0.1:19187/readyz >/dev/null 2>&1 && break
    sleep 0.2
done
echo "relay ready: $(curl -s http://127.0.0.1:19187/readyz)"

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
UPDATE orders SET total = total WHERE id = 'order-1';
DO $$ BEGIN
    PERFORM pg_logical_emit_message(true, 'outbox', '{"aggregatetype":"order","aggregateid":"order-1","type":"OrderShipped","payload":{}}');
END $$;
COMMIT;
SQL

step "Reading the events back from Kafka with an independent consumer, topic by topic"
# The console consumer prints no topic names: one topic at a time. Its notices
# (KIP-848, deprecations) are not part of the demo.
for topic in demo.outbox.event.order demo.outbox.event.customer; do
    echo "topic $topic (partition, headers, key, value):"
    scripts/kafka.sh tool org.apache.kafka.tools.consumer.ConsoleConsumer \
        --bootstrap-server "$OUTBOXD_TEST_KAFKA_BROKERS" --topic "$topic" \
        --from-beginning --timeout-ms 10000 \
        --formatter-property print.key=true --formatter-property print.headers=true \
        --formatter-property print.partition=true 2>&1 \
        | grep -v -e 'KIP-848' -e 'deprecated' -e 'TimeoutException' -e 'Error processing message' \
        | sed 's/^/    /'
done
cat <<'EOF2'
    The event sent with pg_logical_emit_message has no row and so no id of its own:
    outboxd gives it <commit LSN>:<index in the transaction> (e.g. 5/1D3C73E8:0),
    the same on every delivery. Its payload {} is the message's "payload" field.

EOF2

step "Stopping the relay (SIGTERM: finish in-flight deliveries, confirm, exit 0)"
kill -TERM $RELAY_PID
wait $RELAY_PID && echo "outboxd exited cleanly"
trap - EXIT
grep -E "relaying|stopped cleanly" .local/demo-outboxd.log | sed 's/\x1b\[[0-9;]*m//g'

step "Slot position after confirming"
"${PSQL[@]}" "$ADMIN_URL" -c "SELECT slot_name, confirmed_flush_lsn, pg_current_wal_lsn() - confirmed_flush_lsn AS lag_bytes FROM pg_replication_slots WHERE slot_name = 'outboxd_demo'"

# A slot nobody reads retains WAL: drop the demo's (a real deployment keeps its slot).
"${PSQL[@]}" "$ADMIN_URL" -c "SELECT pg_drop_replication_slot('outboxd_demo')" >/dev/null

step "The consumer's side: examples/order-service applies each event exactly once (docs/consumers.md)"
# A group of its own per run: the service's database is new, so it must read from the start.
ORDER_DB_URL="${ADMIN_URL%/*}/order_service_demo?sslmode=disable"
ORDER_ENV=(ORDER_SERVICE_DATABASE_URL="$ORDER_DB_URL"
    ORDER_SERVICE_KAFKA_BROKERS="$OUTBOXD_TEST_KAFKA_BROKERS" ORDER_SERVICE_TOPICS=demo.outbox.event.order
    ORDER_SERVICE_METRICS_ADDRESS=127.0.0.1:19188 RUST_LOG=warn)
# Runs order-service in group $1 until its metrics show $2 events done, then stops it with SIGTERM.
consume() {
    env "${ORDER_ENV[@]}" ORDER_SERVICE_GROUP="$1" "$ORDER_SERVICE" 2>>.local/demo-order-service.log &
    local pid=$! metrics=""
    for _ in $(seq 1 100); do
        metrics=$(curl -s http://127.0.0.1:19188/metrics || true)
        local done
        done=$(awk '/^inbox_events_(applied|duplicate|stale)_total /{n+=$2} END{print n+0}' <<<"$metrics")
        [[ $done -ge $2 ]] && break
        sleep 0.2
    done
    kill -TERM $pid && wait $pid
    grep -E '^inbox_events_(applied|duplicate|stale)_total ' <<<"$metrics" | sed 's/^/    /'
}
RUN_ID=$(date +%s)
echo "order-service, first run (consumer group order-service-demo-$RUN_ID):"
consume "order-service-demo-$RUN_ID" 3
"${PSQL[@]}" "$ORDER_DB_URL" -P pager=off \
    -c "SELECT order_id, events, status, total FROM order_summary" \
    -c "SELECT order_id, position, event_type, version FROM order_timeline ORDER BY position" \
    -c "SELECT aggregateid, type, payload->>'caused_by' AS caused_by FROM outbox ORDER BY payload->>'events'"
echo "order-service again from the first offset (a new group: every event is delivered again):"
consume "order-service-demo-$RUN_ID-again" 3

cat <<EOF2

Done. What happened:
  - PostgreSQL $("$OUTBOXD_TEST_PG_BINDIR/postgres" --version | awk '{print $3}') runs at $OUTBOXD_TEST_PG_URL (wal_level=logical),
    Apache Kafka at $OUTBOXD_TEST_KAFKA_BROKERS (KRaft, single node).
  - outboxd init created publication and slot 'outboxd_demo'; outboxd check passed.
  - Three business transactions committed events (one through pg_logical_emit_message);
    a fourth was rolled back and never reached Kafka.
  - outboxd relayed the four committed events to demo.outbox.event.order and
    demo.outbox.event.customer: key = aggregate id, value = payload, header id, eventType
    and the outboxd.lsn / outboxd.index idempotency key; then it stopped cleanly and the
    slot's confirmed position caught up (lag ≈ 0). The demo slot was then dropped
    so that it retains no WAL; the database and topics stay for you to look at.
  - examples/order-service read the order events and, for each, in one transaction of
    database order_service_demo: recorded its id in the inbox table, updated the
    order_summary and order_timeline read model, and wrote an OrderSummaryUpdated event
    to its own outbox; only then did it commit the Kafka offset. Run again from the
    first offset, it applied nothing: all three events were duplicates.
Stop the services with: scripts/pg.sh stop && scripts/kafka.sh stop
EOF2
