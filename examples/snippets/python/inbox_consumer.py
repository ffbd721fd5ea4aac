"""An idempotent consumer of outboxd's events: confluent-kafka and psycopg 3.

    python inbox_consumer.py BROKERS TOPIC GROUP POSTGRES_URL COUNT

Consumes COUNT records, applying each in one database transaction with the inbox
rules of docs/consumers.md, and commits each record's offset after that transaction.
"""
import sys

import psycopg
from confluent_kafka import Consumer, KafkaException

# docs:begin
INSERT_EVENT = """INSERT INTO inbox (event_id, topic, partition, "offset", aggregate_id,
                                     lsn, event_index, replayed)
                  VALUES (%s, %s, %s, %s, %s, %s::pg_lsn, %s, %s)
                  ON CONFLICT (event_id) DO NOTHING"""
INSERT_VERSION = """INSERT INTO inbox_versions (topic, aggregate_id, lsn, event_index, event_id)
                    VALUES (%s, %s, %s::pg_lsn, %s, %s) ON CONFLICT DO NOTHING"""
IS_NEWER = """SELECT (%s::pg_lsn, %s::bigint) > (lsn, event_index) FROM inbox_versions
              WHERE topic = %s AND aggregate_id = %s FOR UPDATE"""
UPDATE_VERSION = """UPDATE inbox_versions SET lsn = %s::pg_lsn, event_index = %s, event_id = %s
                    WHERE topic = %s AND aggregate_id = %s"""


def apply(db, msg):
    """Applies one record in one transaction; returns what happened to it."""
    h = {k: v.decode() for k, v in (msg.headers() or []) if v is not None}
    event_id, key = h["id"], msg.key().decode()
    lsn, index = h.get("outboxd.lsn"), h.get("outboxd.index")
    replay = h.get("outboxd.replay") == "true"
    outcome = "applied"
    with db.transaction():
        row = (event_id, msg.topic(), msg.partition(), msg.offset(), key, lsn, index, replay)
        if db.execute(INSERT_EVENT, row).rowcount == 0:
            outcome = "duplicate"  # applied before
            raise psycopg.Rollback()
        if lsn is not None:
            version = (msg.topic(), key, lsn, index, event_id)
            if db.execute(INSERT_VERSION, version).rowcount == 0:
                newer = db.execute(IS_NEWER, (lsn, index, msg.topic(), key)).fetchone()[0]
                if newer:
                    db.execute(UPDATE_VERSION, (lsn, index, event_id, msg.topic(), key))
                elif replay:
                    outcome = "applied late"  # replayed, never applied: apply it
                else:
                    outcome = "stale"  # a newer event of the aggregate was applied
                    raise psycopg.Rollback()
        # Your effects, in the same transaction:
        db.execute("INSERT INTO applied_events (event_id, order_id, payload) VALUES (%s, %s, %s)",
                   (event_id, key, msg.value().decode() if msg.value() else None))
    return outcome


def consume(consumer, db, count):
    done = 0
    while done < count:
        msg = consumer.poll(1.0)
        if msg is None:
            continue
        if msg.error():
            raise KafkaException(msg.error())
        print(apply(db, msg), msg.offset(), flush=True)
        # Only after the database transaction committed:
        consumer.commit(message=msg, asynchronous=False)
        done += 1
# docs:end


def main(brokers, topic, group, dsn, count):
    consumer = Consumer({
        "bootstrap.servers": brokers,
        "group.id": group,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",
    })
    consumer.subscribe([topic])
    with psycopg.connect(dsn, autocommit=True) as db:
        try:
            consume(consumer, db, int(count))
        finally:
            consumer.close()


if __name__ == "__main__":
    main(*sys.argv[1:])
