"""The records every snippet is checked with, and the outcomes they must give.

    python fixture.py produce BROKERS TOPIC    creates TOPIC (1 partition), writes the records
    python fixture.py delete BROKERS TOPIC     deletes TOPIC
    python fixture.py outcomes                 prints the expected outcomes, one a line
"""
import sys

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic


def event(id, lsn, index, replay=False):
    h = [("id", id), ("outboxd.lsn", lsn), ("outboxd.index", index)]
    return h + [("outboxd.replay", "true")] if replay else h


# (key, headers, value, expected outcome), in topic order.
RECORDS = [
    ("order-1", event("e1", "0/10", "0"), '{"total": 42}', "applied"),
    ("order-1", event("e2", "0/20", "0"), '{"total": 40}', "applied"),
    ("order-1", event("e1", "0/10", "0"), '{"total": 42}', "duplicate"),
    ("order-1", event("e3", "0/15", "0"), '{"total": 41}', "stale"),
    ("order-1", event("e4", "0/12", "0", replay=True), '{"note": "lost"}', "applied late"),
    ("order-2", event("e5", "0/30", "1"), '{"total": 7}', "applied"),
]


def main(command, brokers=None, topic=None):
    if command == "outcomes":
        for r in RECORDS:
            print(r[3])
        return
    admin = AdminClient({"bootstrap.servers": brokers, "log_level": 3})
    if command == "delete":
        admin.delete_topics([topic])[topic].result()
        return
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result()
    producer = Producer({"bootstrap.servers": brokers, "enable.idempotence": True})
    for key, headers, value, _ in RECORDS:
        producer.produce(topic, key=key, value=value, headers=headers)
    if producer.flush(30) != 0:
        raise SystemExit("records not delivered within 30 s")


if __name__ == "__main__":
    main(*sys.argv[1:])
