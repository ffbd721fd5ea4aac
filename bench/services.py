"""The benchmark's own services: a fresh PostgreSQL cluster and a fresh Kafka broker."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import psycopg
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from common import ROOT, port_open, run, stop_process

CHECKPOINT_TOPIC = "outboxd.checkpoints"

class Postgres:
    """Our own cluster: fresh per run, as the postgres OS user, like scripts/pg.sh."""

    def __init__(self, bindir: Path, root: Path, port: int):
        self.bindir, self.root, self.port = bindir, root, port
        self.data = root / "data"
        self.logfile = root / "postgres.log"

    def _as_pg(self, *cmd) -> subprocess.CompletedProcess:
        return run(["runuser", "-u", "postgres", "--", *map(str, cmd)])

    def start(self) -> None:
        if port_open(self.port):
            raise SystemExit(f"port {self.port} is in use: another bench run? (--pg-port)")
        if self.root.exists():
            if (self.data / "postmaster.pid").exists():
                subprocess.run(["runuser", "-u", "postgres", "--", str(self.bindir / "pg_ctl"),
                                "-D", str(self.data), "-m", "immediate", "stop"],
                               capture_output=True)
            shutil.rmtree(self.root)
        self.root.mkdir(parents=True)
        (self.root / "run").mkdir()
        shutil.chown(self.root, "postgres", "postgres")
        shutil.chown(self.root / "run", "postgres", "postgres")
        self._as_pg(self.bindir / "initdb", "-D", self.data, "-A", "trust", "-U", "postgres",
                    "--no-sync", "-E", "UTF8", "--locale=C.UTF-8")
        settings = f"""\
# Written by bench/bench.py. Same durability trade-offs as scripts/pg.sh (fsync off,
# commits synchronous so that walsenders see them at once), plus what the benchmark
# needs: commit timestamps for latency, room for WAL kept by several slots, no
# autovacuum noise in an insert-only workload.
listen_addresses = '127.0.0.1'
port = {self.port}
unix_socket_directories = '{self.root / "run"}'
max_connections = 100
wal_level = logical
max_replication_slots = 64
max_wal_senders = 32
track_commit_timestamp = on
fsync = off
full_page_writes = off
synchronous_commit = on
shared_buffers = 512MB
max_wal_size = 16GB
min_wal_size = 1GB
checkpoint_timeout = 30min
wal_sender_timeout = 60s
logical_decoding_work_mem = 64MB
autovacuum = off
log_min_messages = warning
log_checkpoints = off
"""
        (self.data / "bench.conf").write_text(settings)
        with open(self.data / "postgresql.conf", "a") as f:
            f.write("\ninclude = 'bench.conf'\n")
        shutil.chown(self.data / "bench.conf", "postgres", "postgres")
        self._as_pg(self.bindir / "pg_ctl", "-D", self.data, "-l", self.logfile, "-w", "-t", "60",
                    "start")

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            subprocess.run(["runuser", "-u", "postgres", "--", str(self.bindir / "pg_ctl"), "-D",
                            str(self.data), "-m", "fast", "-w", "stop"], capture_output=True)

    def connect(self, db: str = "postgres") -> psycopg.Connection:
        return psycopg.connect(host="127.0.0.1", port=self.port, user="postgres", dbname=db,
                               autocommit=True)

    def url(self, db: str) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{db}?sslmode=disable"

    def version(self) -> str:
        with self.connect() as c:
            return c.execute("SHOW server_version").fetchone()[0]


# The broker's JVM, by collector (bench.py --broker-gc; docs/benchmarks.md, "The
# bench broker's pauses, and what a Kafka commit waits for"):
# - serial (the default): scripts/kafka.sh's. Its young collections stop the broker
#   for 24-30 ms about every 2.7 s at the latency phase's rates, which shows in the
#   latency tails.
# - zgc (2 GiB, committed at start): stops under a millisecond, but in one full run
#   about twice the broker's CPU during drains, which on a 2-core machine slowed the
#   relays' drains (exactly-once most).
BROKER_JVMS = {
    "serial": ["-Xmx512m", "-Xms256m", "-XX:+UseSerialGC"],
    "zgc": ["-Xmx2g", "-Xms2g", "-XX:+UseZGC"],
}

# Lines of the JVM's log: a safepoint stops every Java thread (a collector's pause
# among them); an allocation stall stops one thread until ZGC frees memory.
SAFEPOINT = re.compile(r'Safepoint "[^"]+".* Total: (\d+) ns')
ALLOCATION_STALL = re.compile(r"Allocation Stall \([^)]*\) ([\d.]+)ms")


class Kafka:
    """Our own single-node KRaft broker from the cached jars (scripts/kafka.sh's setup),
    fresh per run, every topic with message.timestamp.type=LogAppendTime."""

    def __init__(self, lib: Path, root: Path, port: int, controller_port: int, jvm: list[str]):
        self.lib, self.root, self.port, self.cport = lib, root, port, controller_port
        self.jvm = jvm
        self.bootstrap = f"127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None
        self.jvm_log = root / "jvm.log"

    def log_end(self) -> int:
        """Where the JVM's log ends now (for pauses(since=...))."""
        try:
            return self.jvm_log.stat().st_size
        except OSError:
            return 0

    def pauses(self, since: int = 0) -> dict | None:
        """The broker's stops logged after byte `since`: how many safepoints, the
        longest, the total, how many lasted 5 ms or more; allocation stalls."""
        try:
            with open(self.jvm_log, "rb") as f:
                f.seek(since)
                text = f.read().decode(errors="replace")
        except OSError:
            return None
        ms = [int(m.group(1)) / 1e6 for m in SAFEPOINT.finditer(text)]
        stalls = [float(m.group(1)) for m in ALLOCATION_STALL.finditer(text)]
        return {"count": len(ms), "longest_ms": round(max(ms, default=0.0), 1),
                "total_ms": round(sum(ms), 1), "over_5ms": sum(1 for x in ms if x >= 5),
                "allocation_stalls": len(stalls),
                "longest_stall_ms": round(max(stalls, default=0.0), 1)}

    def start(self) -> None:
        for p in (self.port, self.cport):
            if port_open(p):
                raise SystemExit(f"port {p} is in use: another bench run? (--kafka-port)")
        if self.root.exists():
            shutil.rmtree(self.root)
        data = self.root / "data"
        data.mkdir(parents=True)
        template = (ROOT / "scripts/kafka/server.properties.in").read_text()
        props = (template.replace("{{HOST}}", "127.0.0.1").replace("{{PORT}}", str(self.port))
                 .replace("{{CONTROLLER_PORT}}", str(self.cport))
                 .replace("{{DATA_DIR}}", str(data)))
        props += """
# bench/bench.py overrides (later keys win): latency is measured against the time the
# broker appended the record.
log.message.timestamp.type=LogAppendTime
log.retention.hours=24
log.segment.bytes=268435456
"""
        config = self.root / "server.properties"
        config.write_text(props)
        cluster_id = uuid.uuid4().bytes
        cid = base64.urlsafe_b64encode(cluster_id).decode().rstrip("=")
        if cid.startswith("-"):
            cid = "A" + cid[1:]
        run(["java", "-Xmx256m", "-XX:+UseSerialGC",
             f"-Dlog4j2.configurationFile={ROOT}/scripts/kafka/tools-log4j2.properties",
             "-cp", f"{self.lib}/*", "kafka.tools.StorageTool", "format", "--ignore-formatted",
             "-t", cid, "-c", str(config)])
        out = open(self.root / "console.log", "w")
        self.proc = subprocess.Popen(
            ["java", *self.jvm, "-XX:+ExitOnOutOfMemoryError", "-Djava.awt.headless=true",
             f"-Xlog:safepoint,gc:file={self.jvm_log}:uptime",
             f"-Dlog4j2.configurationFile={ROOT}/scripts/kafka/log4j2.properties",
             f"-Dkafka.logs.dir={self.root}", "-cp", f"{self.lib}/*", "kafka.Kafka", str(config)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.root,
            start_new_session=True)
        deadline = time.monotonic() + 90
        while not port_open(self.port):
            if self.proc.poll() is not None:
                raise SystemExit(f"Kafka exited during start-up; see {self.root}/console.log")
            if time.monotonic() > deadline:
                raise SystemExit("Kafka not listening after 90 s")
            time.sleep(0.2)
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        while True:
            try:
                admin.list_topics(timeout=2)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise SystemExit("Kafka not ready after 90 s")
                time.sleep(0.5)
        # Warm the broker up before anything is measured: the first idempotent producer
        # of a fresh cluster waits for the transaction coordinator to load, and a cold
        # JVM (interpreter, C1) spends several times more CPU per request until its JIT
        # has compiled the produce path. Half a million records through 12 partitions.
        self.create_topics(["bench.warmup"], 12)
        prod = Producer({"bootstrap.servers": self.bootstrap, "enable.idempotence": True,
                         "linger.ms": 1, "log_level": 3})
        value = b"x" * 400
        for i in range(500_000):
            while True:
                try:
                    prod.produce("bench.warmup", value=value, key=str(i % 1000).encode())
                    break
                except BufferError:
                    prod.poll(0.05)
            if i % 1000 == 0:
                prod.poll(0)
        if prod.flush(120) != 0:
            raise SystemExit("Kafka warm-up produce did not complete")
        # And its transaction coordinator (the exactly-once relays' first
        # InitProducerId, EndTxn and marker writes): 300 transactions of 100 records.
        txn = Producer({"bootstrap.servers": self.bootstrap, "transactional.id": "bench-warmup",
                        "linger.ms": 1, "log_level": 3})
        txn.init_transactions(60)
        for t in range(300):
            txn.begin_transaction()
            for i in range(100):
                txn.produce("bench.warmup", value=value, key=str(i).encode())
            txn.commit_transaction(60)
        # outboxd's checkpoint topic (its default name), as `outboxd init --apply` makes
        # it: a relay refuses a slot that exists when the topic does not.
        self.create_topics(
            [CHECKPOINT_TOPIC],
            1,
            {"cleanup.policy": "compact", "segment.ms": "600000", "delete.retention.ms": "300000"},
        )

    def stop(self) -> None:
        if self.proc:
            stop_process(self.proc, 60)

    def create_topics(self, names: list[str], partitions: int, config: dict | None = None) -> None:
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        futures = admin.create_topics(
            [NewTopic(n, num_partitions=partitions, replication_factor=1,
                      config={"message.timestamp.type": "LogAppendTime", **(config or {})})
             for n in names])
        for f in futures.values():
            f.result(30)
        # Wait until every partition has a leader, so the first produce does not wait.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            md = admin.list_topics(timeout=5)
            if all(n in md.topics and len(md.topics[n].partitions) == partitions and
                   all(p.leader >= 0 for p in md.topics[n].partitions.values()) for n in names):
                return
            time.sleep(0.2)
        raise RuntimeError("topics not ready")
