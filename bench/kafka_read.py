"""Reading the relays' topics back: record counts, a live read_committed consumer that
timestamps every event, and a full read that checks for duplicates."""

from __future__ import annotations

import os
import threading
import time
import uuid

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition


class TopicCounter:
    """Sum of the high watermarks of a set of topics (records appended). Only for
    topics without transactions: commit markers take offsets too."""

    def __init__(self, bootstrap: str, topics: list[str], partitions: int):
        self.c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-{uuid.uuid4()}",
                           "enable.auto.commit": False})
        self.parts = [TopicPartition(t, p) for t in topics for p in range(partitions)]

    def total(self) -> int:
        s = 0
        for tp in self.parts:
            _, high = self.c.get_watermark_offsets(tp, timeout=5, cached=False)
            s += max(high, 0)
        return s

    def close(self) -> None:
        self.c.close()


# The measuring consumer runs at a higher priority than the relays, the broker and
# PostgreSQL, so that on a saturated machine its own scheduling delay stays out of the
# visible time; it needs little CPU (a few percent of a core at 10k events/s).
CONSUMER_NICE = -10


def raise_priority() -> None:
    """The calling thread only (Linux: nice values are per thread)."""
    os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), CONSUMER_NICE)


def in_priority_thread(make):
    """make() in a thread of raised priority, so that threads it starts inherit it."""
    out = []

    def body():
        raise_priority()
        out.append(make())
    t = threading.Thread(target=body)
    t.start()
    t.join()
    return out[0]


def event_id(msg) -> str | None:
    for name, value in msg.headers() or []:
        if name == "id":
            return value.decode()
    return None


class LiveConsumer:
    """Reads a relay's topics as its consumers would (`isolation.level=read_committed`,
    librdkafka's default too), from start() to close(), and records per event id the
    broker's LogAppendTime and the wall-clock time the record reached this consumer
    (visible)."""

    def __init__(self, bootstrap: str, topics: list[str], partitions: int):
        config = {"bootstrap.servers": bootstrap, "group.id": f"bench-{uuid.uuid4()}",
                  "enable.auto.commit": False, "isolation.level": "read_committed",
                  # The broker answers a waiting fetch as soon as records become
                  # visible (high watermark or, read_committed, last stable offset
                  # moves); this bounds only an idle consumer's requests. (Pausing
                  # idle consumers instead delayed the first ~0.7 s of the next step.)
                  "fetch.wait.max.ms": 500, "fetch.max.bytes": 52428800}
        # librdkafka's threads inherit the nice value of the thread that creates them.
        self.c = in_priority_thread(lambda: Consumer(config))
        self.parts = [TopicPartition(t, p, OFFSET_BEGINNING) for t in topics for p in range(partitions)]
        self.c.assign(self.parts)
        # event id -> (LogAppendTime ms, visible ms since the epoch); the first copy.
        self.records: dict[str, tuple[float, float]] = {}
        self.received = 0  # every record, duplicates included
        self.non_append_time = 0
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread:
            return
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if not self._thread:
            return
        self._halt.set()
        self._thread.join(10)
        self._thread = None

    def _loop(self) -> None:
        raise_priority()
        while not self._halt.is_set():
            # poll() returns as soon as one record is there (consume() would wait for a
            # whole batch); what else is queued is taken at once and shares its time.
            first = self.c.poll(0.05)
            if first is None:
                continue
            now_ms = time.time() * 1000.0
            for m in [first] + self.c.consume(num_messages=10000, timeout=0):
                if m.error():
                    continue
                self.received += 1
                ts_type, ts = m.timestamp()
                if ts_type != 2:  # TIMESTAMP_LOG_APPEND_TIME
                    self.non_append_time += 1
                eid = event_id(m)
                if eid is not None and eid not in self.records:
                    self.records[eid] = (float(ts), now_ms)

    def wait_for(self, count: int, timeout: float) -> float | None:
        """Seconds until `count` distinct events were seen, None on timeout."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if len(self.records) >= count:
                return time.monotonic() - t0
            time.sleep(0.05)
        return None

    def close(self) -> None:
        self.stop()
        self.c.close()


def committed_tally(bootstrap: str, topics: list[str], partitions: int,
                    timeout: float = 300.0) -> dict:
    """Reads every committed record of the topics once (read_committed, to the last
    stable offset): how many there are and how many distinct event ids."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-{uuid.uuid4()}",
                  "enable.auto.commit": False, "isolation.level": "read_committed",
                  "enable.partition.eof": True, "fetch.max.bytes": 52428800})
    parts = [TopicPartition(t, p, OFFSET_BEGINNING) for t in topics for p in range(partitions)]
    c.assign(parts)
    ids: set[str] = set()
    records = 0
    at_end: set[tuple[str, int]] = set()
    deadline = time.monotonic() + timeout
    try:
        while len(at_end) < len(parts):
            if time.monotonic() > deadline:
                raise RuntimeError(f"reading {topics[0]}…: not at the end after {timeout:.0f} s")
            for m in c.consume(num_messages=10000, timeout=0.5):
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        at_end.add((m.topic(), m.partition()))
                    continue
                records += 1
                eid = event_id(m)
                if eid is not None:
                    ids.add(eid)
    finally:
        c.close()
    return {"records": records, "distinct_ids": len(ids)}
