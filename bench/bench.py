#!/usr/bin/env python3
"""outboxd benchmark harness: the slot-read limit, outboxd and Debezium in one run.

Started by bench/run.sh, which prepares the binaries and jars and passes their paths.
Phases (docs/benchmarks.md describes them for readers):

1. setup     own PostgreSQL cluster and own Kafka broker, both fresh;
2. drain     per transaction size k: one database, slots for every reader created
             first, then N events written with the relays stopped; then each reader
             drains the same WAL from its own slot: pg_recvlogical (the limit),
             outboxd, Debezium, pg_recvlogical again;
3. latency   per relay: a live relay, a writer at fixed offered rates (pgbench -R),
             latency = broker LogAppendTime - PostgreSQL commit time, per event;
4. report    results JSON, markdown and a chart.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from confluent_kafka import Consumer, Producer, TopicPartition, OFFSET_BEGINNING
from confluent_kafka.admin import AdminClient, NewTopic

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
WORK = BENCH / ".work"
CLK_TCK = os.sysconf("SC_CLK_TCK")

AGGREGATE_TYPES = ["order", "customer", "payment", "shipment"]
# A latency step is sustained when the writer reached this share of the offered rate
# (pgbench -R draws Poisson arrivals: a 10 s step at 100 transactions/s varies by a
# few percent), the relay caught up within 30 s after it, and p99 <= 1 s.
SUSTAIN_WRITER_FRACTION = 0.9
PUBLICATION = "bench_outbox"

# Debezium tuning stated in the docs: what a careful user changes from the defaults.
DEBEZIUM_TUNING = {
    # Connect commits source offsets (and so Debezium confirms the slot) on this
    # timer; the default 60 s would keep a drained slot unconfirmed for up to a minute.
    "offset.flush.interval.ms": "1000",
    # Debezium waits up to poll.interval.ms for a batch to fill before handing it to
    # Connect (default 500 ms): a latency floor at low rates.
    "poll.interval.ms": "10",
    # Bigger batches and queue for a backlog (defaults 2048 / 8192).
    "max.batch.size": "8192",
    "max.queue.size": "32768",
    # Without heartbeats Debezium confirms a transaction only when a later event
    # arrives: the last transaction of a burst stays unconfirmed (and its WAL kept).
    "heartbeat.interval.ms": "1000",
}

WORKLOAD_SQL = """\
\\set a random(0, 999)
INSERT INTO outbox (id, aggregatetype, aggregateid, type, payload)
SELECT gen_random_uuid(),
       (ARRAY['order','customer','payment','shipment'])[1 + (a % 4)],
       'agg-' || a,
       'Created',
       format('{"aggregate": "agg-%s", "seq": %s, "customerId": "cust-%s", "status": "CREATED", "currency": "EUR", "total": %s, "lines": [{"sku": "SKU-%s", "qty": %s, "price": 19.99}, {"sku": "SKU-%s", "qty": 1, "price": 5.49}], "note": "%s"}',
              a, g, (a * 7) % 100000, (a % 997) + 0.5, g % 10000, 1 + g % 5, a % 777, md5(g::text || a || random()))::jsonb
FROM (SELECT g, (:a + g * 37) % 1000 AS a FROM generate_series(1, :k) g) s;
"""

OUTBOX_DDL = """\
CREATE TABLE outbox (
    id uuid PRIMARY KEY,
    aggregatetype varchar(255) NOT NULL,
    aggregateid varchar(255) NOT NULL,
    type varchar(255) NOT NULL,
    payload jsonb
);
"""


# ----------------------------------------------------------------------------- utils


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def lsn_int(text: str | None) -> int | None:
    if text is None:
        return None
    hi, lo = str(text).split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def lsn_str(value: int) -> str:
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def proc_cpu_s(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return None


def proc_mem_mb(pid: int) -> dict | None:
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmHWM:", "VmRSS:")):
                    out[line.split(":")[0]] = int(line.split()[1]) / 1024
    except OSError:
        return None
    return out or None


def proc_threads_cpu(pid: int) -> dict[str, float]:
    """CPU seconds per thread name (threads of the same name summed)."""
    out: dict[str, float] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                raw = f.read()
            name = raw[raw.index("(") + 1 : raw.rindex(")")]
            fields = raw.rsplit(")", 1)[1].split()
            cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
        except (OSError, ValueError, IndexError):
            continue
        # Normalise numbered thread names (rdk:broker1, pool-3-thread-7, ...).
        key = re.sub(r"\d+", "#", name)
        out[key] = out.get(key, 0.0) + cpu
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def box_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    with open("/proc/stat") as f:
        vals = [int(x) for x in f.readline().split()[1:]]
    idle = vals[3] + vals[4]
    total = sum(vals[:8])
    return total - idle, total


class CpuWindow:
    """Machine-wide CPU use and the broker's CPU seconds over a measured window."""

    def __init__(self, kafka_pid: int | None):
        self.kafka_pid = kafka_pid
        self.box0 = box_cpu()
        self.kafka0 = proc_cpu_s(kafka_pid) if kafka_pid else None

    def result(self) -> dict:
        busy1, total1 = box_cpu()
        busy = busy1 - self.box0[0]
        total = total1 - self.box0[1]
        out = {"box_cpu_util": round(busy / total, 3) if total else None,
               "box_cpu_busy_s": round(busy / CLK_TCK, 2)}
        if self.kafka_pid:
            k1 = proc_cpu_s(self.kafka_pid)
            if k1 is not None and self.kafka0 is not None:
                out["broker_cpu_s"] = round(k1 - self.kafka0, 2)
        return out


def loadavg() -> list[float]:
    with open("/proc/loadavg") as f:
        return [float(x) for x in f.read().split()[:3]]


def run(cmd, **kw) -> subprocess.CompletedProcess:
    kw.setdefault("check", True)
    kw.setdefault("text", True)
    kw.setdefault("capture_output", True)
    try:
        return subprocess.run(cmd, **kw)
    except subprocess.CalledProcessError as e:
        sys.stderr.write(f"command failed: {' '.join(map(str, cmd))}\n{e.stdout}\n{e.stderr}\n")
        raise


def stop_process(p: subprocess.Popen, timeout: float = 30.0) -> int | None:
    """SIGTERM, wait, SIGKILL as a last resort. Only processes we started."""
    if p.poll() is not None:
        return p.returncode
    p.send_signal(signal.SIGTERM)
    try:
        return p.wait(timeout)
    except subprocess.TimeoutExpired:
        log(f"pid {p.pid} ignored SIGTERM for {timeout:.0f} s; SIGKILL")
        p.kill()
        return p.wait()


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of an ascending list (q in 0..100)."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


# ------------------------------------------------------------------------ services


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
max_replication_slots = 32
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


class Kafka:
    """Our own single-node KRaft broker from the cached jars (scripts/kafka.sh's setup),
    fresh per run, every topic with message.timestamp.type=LogAppendTime."""

    def __init__(self, lib: Path, root: Path, port: int, controller_port: int):
        self.lib, self.root, self.port, self.cport = lib, root, port, controller_port
        self.bootstrap = f"127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None

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
        import base64
        cid = base64.urlsafe_b64encode(cluster_id).decode().rstrip("=")
        if cid.startswith("-"):
            cid = "A" + cid[1:]
        run(["java", "-Xmx256m", "-XX:+UseSerialGC",
             f"-Dlog4j2.configurationFile={ROOT}/scripts/kafka/tools-log4j2.properties",
             "-cp", f"{self.lib}/*", "kafka.tools.StorageTool", "format", "--ignore-formatted",
             "-t", cid, "-c", str(config)])
        out = open(self.root / "console.log", "w")
        # The same JVM settings as scripts/kafka.sh: a small heap and SerialGC.
        self.proc = subprocess.Popen(
            ["java", "-Xmx512m", "-Xms256m", "-XX:+UseSerialGC", "-XX:+ExitOnOutOfMemoryError",
             "-Djava.awt.headless=true",
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

    def stop(self) -> None:
        if self.proc:
            stop_process(self.proc, 60)

    def create_topics(self, names: list[str], partitions: int) -> None:
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        futures = admin.create_topics(
            [NewTopic(n, num_partitions=partitions, replication_factor=1,
                      config={"message.timestamp.type": "LogAppendTime"}) for n in names])
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


class TopicCounter:
    """Sum of the high watermarks of a set of topics (records appended)."""

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


# ------------------------------------------------------------------------- sampling


@dataclass
class Sample:
    t: float
    confirmed: int | None
    sent: int | None
    walsender_pid: int | None
    walsender_cpu: float | None
    relay_cpu: float | None
    relay_rss: float | None
    kafka: int | None


class Sampler(threading.Thread):
    """Polls the slot (confirmed_flush_lsn, the walsender's sent_lsn and CPU), the
    relay process (CPU, RSS) and, optionally, the records in Kafka."""

    def __init__(self, pg: Postgres, db: str, slot: str, t0: float, relay_pid=None,
                 counter: TopicCounter | None = None, interval: float = 0.05):
        super().__init__(daemon=True)
        self.pg, self.db, self.slot, self.t0 = pg, db, slot, t0
        self.relay_pid, self.counter, self.interval = relay_pid, counter, interval
        self.samples: list[Sample] = []
        self.stop_event = threading.Event()
        self.ws_cpu_last: dict[int, float] = {}
        self.relay_hwm = 0.0

    def run(self) -> None:
        with self.pg.connect(self.db) as conn:
            n = 0
            while not self.stop_event.is_set():
                row = conn.execute(
                    "SELECT s.confirmed_flush_lsn::text, s.active_pid, r.sent_lsn::text "
                    "FROM pg_replication_slots s LEFT JOIN pg_stat_replication r "
                    "ON r.pid = s.active_pid WHERE s.slot_name = %s", (self.slot,)).fetchone()
                confirmed, pid, sent = (lsn_int(row[0]), row[1], lsn_int(row[2])) if row else (None, None, None)
                ws_cpu = proc_cpu_s(pid) if pid else None
                if pid and ws_cpu is not None:
                    self.ws_cpu_last[pid] = ws_cpu
                rcpu = rss = None
                if self.relay_pid:
                    rcpu = proc_cpu_s(self.relay_pid)
                    mem = proc_mem_mb(self.relay_pid)
                    if mem:
                        rss = mem.get("VmRSS")
                        self.relay_hwm = max(self.relay_hwm, mem.get("VmHWM", 0.0))
                kafka = None
                if self.counter and n % 5 == 0:
                    with contextlib.suppress(Exception):
                        kafka = self.counter.total()
                self.samples.append(Sample(time.monotonic() - self.t0, confirmed, sent, pid, ws_cpu,
                                           rcpu, rss, kafka))
                n += 1
                self.stop_event.wait(self.interval)

    def walsender_cpu(self) -> float:
        return sum(self.ws_cpu_last.values())

    def stop(self) -> None:
        self.stop_event.set()
        self.join(10)


# ------------------------------------------------------------------------- the bench


@dataclass
class Options:
    preset: str
    events: int
    ks: list[int]
    writers: int
    partitions: int
    latency_steps: list[tuple[int, int]]
    ladder_k: int
    ladder_start: int
    ladder_factor: float
    ladder_max: int
    step_seconds: int
    systems: list[str]
    latency: bool
    publish: bool
    profile: bool
    outboxd_env: dict[str, str]
    variants: list[tuple[str, dict[str, str]]]
    latency_variants: bool


class Bench:
    def __init__(self, args, opts: Options):
        self.args, self.o = args, opts
        self.run_id = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        self.rundir = WORK / "runs" / self.run_id
        self.rundir.mkdir(parents=True)
        self.pg = Postgres(Path(args.pg_bindir), WORK / "pg", args.pg_port)
        self.kafka = Kafka(Path(args.kafka_lib), WORK / "kafka", args.kafka_port, args.kafka_port + 1)
        self.results: dict = {"run_id": self.run_id, "preset": opts.preset, "drain": [],
                              "latency": {}, "options": {k: v for k, v in vars(opts).items()},
                              "debezium_tuning": DEBEZIUM_TUNING,
                              "sustain_writer_fraction": SUSTAIN_WRITER_FRACTION,
                              "command": " ".join(["bench/run.sh"] + ([os.environ["BENCH_ARGS"]]
                                                                        if os.environ.get("BENCH_ARGS") else []))}
        self.workload = self.rundir / "workload.sql"
        self.workload.write_text(WORKLOAD_SQL)
        self.procs: list[subprocess.Popen] = []

    # ---------------------------------------------------------------- helpers

    def topics(self, system: str, tag: str) -> list[str]:
        return [f"bench.{system}.{tag}.outbox.event.{t}" for t in AGGREGATE_TYPES]

    def topic_template(self, system: str, tag: str) -> str:
        return f"bench.{system}.{tag}.outbox.event.${{routedByValue}}"

    def create_db(self, db: str) -> None:
        with self.pg.connect() as c:
            c.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
            c.execute(f'CREATE DATABASE "{db}"')
        with self.pg.connect(db) as c:
            c.execute(OUTBOX_DDL)
            c.execute(f"CREATE PUBLICATION {PUBLICATION} FOR TABLE outbox WITH (publish = 'insert')")

    def create_slot(self, db: str, slot: str) -> None:
        with self.pg.connect(db) as c:
            c.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))

    def drop_db(self, db: str) -> None:
        with self.pg.connect() as c:
            for (slot,) in c.execute("SELECT slot_name FROM pg_replication_slots WHERE database = %s",
                                     (db,)).fetchall():
                with contextlib.suppress(Exception):
                    c.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
            c.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
            c.execute("CHECKPOINT")

    def pgbench(self, db: str, k: int, *, transactions: int | None = None,
                rate_tps: float | None = None, seconds: int | None = None,
                clients: int | None = None) -> dict:
        clients = clients or self.o.writers
        cmd = [str(Path(self.args.pg_bindir) / "pgbench"), "-h", "127.0.0.1", "-p",
               str(self.pg.port), "-U", "postgres", "-n", "-f", str(self.workload), "-D", f"k={k}",
               "-c", str(clients), "-j", str(min(clients, 2))]
        if transactions is not None:
            cmd += ["-t", str(transactions // clients)]
        if rate_tps is not None:
            cmd += ["-R", f"{rate_tps:.3f}"]
        if seconds is not None:
            cmd += ["-T", str(seconds)]
        cmd.append(db)
        t0 = time.time()
        cp = run(cmd)
        t1 = time.time()
        out = cp.stdout + cp.stderr
        m = re.search(r"number of transactions actually processed: (\d+)", out)
        tps = re.search(r"tps = ([\d.]+) \(without initial connection time\)", out)
        lag = re.search(r"rate limit schedule lag: avg ([\d.]+) \(max ([\d.]+)\) ms", out)
        return {"start": t0, "end": t1, "transactions": int(m.group(1)) if m else None,
                "tps": float(tps.group(1)) if tps else None,
                "events_per_s": float(tps.group(1)) * k if tps else None,
                "schedule_lag_avg_ms": float(lag.group(1)) if lag else None,
                "schedule_lag_max_ms": float(lag.group(2)) if lag else None,
                "cmd": " ".join(cmd)}

    def wal_positions(self, db: str, start: int) -> tuple[int, int, int]:
        """(WAL end after the workload, LSN of the last commit record, commit count in
        the range scanned), the last two found with pg_waldump."""
        time.sleep(0.5)
        with self.pg.connect(db) as c:
            end = lsn_int(c.execute("SELECT pg_current_wal_flush_lsn()::text").fetchone()[0])
        scan_from = max(start, end - (4 << 20))
        cp = run([str(Path(self.args.pg_bindir) / "pg_waldump"), "-p", str(self.pg.data / "pg_wal"),
                  "-s", lsn_str(scan_from), "-e", lsn_str(end), "-r", "Transaction"], check=False)
        commits = re.findall(r"lsn: ([0-9A-F]+/[0-9A-F]+), prev [0-9A-F/]+, desc: COMMIT", cp.stdout)
        if not commits:
            raise RuntimeError(f"pg_waldump found no commit before {lsn_str(end)}: {cp.stderr[-500:]}")
        return end, lsn_int(commits[-1]), len(commits)

    # ---------------------------------------------------------------- relays

    def start_outboxd(self, db: str, slot: str, tag: str, logname: str,
                      extra_env: dict | None = None) -> subprocess.Popen:
        env = dict(os.environ)
        env.update({
            "OUTBOXD_POSTGRES__URL": self.pg.url(db),
            "OUTBOXD_POSTGRES__SLOT": slot,
            "OUTBOXD_POSTGRES__PUBLICATION": PUBLICATION,
            "OUTBOXD_POSTGRES__TABLES": "public.outbox",
            "OUTBOXD_POSTGRES__CREATE_SLOT": "false",
            "OUTBOXD_KAFKA__BROKERS": self.kafka.bootstrap,
            "OUTBOXD_ROUTING__TOPIC": self.topic_template("outboxd", tag),
            # Each instance its own port: several run side by side in the latency phase.
            "OUTBOXD_SERVER__METRICS_ADDRESS": f"127.0.0.1:{self.args.metrics_port + len(self.procs) % 50}",
            "RUST_LOG": env.get("RUST_LOG", "info"),
        })
        env.update(self.o.outboxd_env)
        env.update(extra_env or {})
        out = open(self.rundir / logname, "w")
        p = subprocess.Popen([self.args.outboxd_bin, "run"], env=env, stdout=out,
                             stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.procs.append(p)
        return p

    def start_debezium(self, db: str, slot: str, tag: str, name: str) -> subprocess.Popen:
        d = self.rundir / name
        d.mkdir()
        connect = Path(self.args.connect_dir)
        # The heartbeat topic exists up front, as the relays' topics do, so that the
        # first heartbeat does not wait for auto-creation.
        self.kafka.create_topics([f"__debezium-heartbeat.bench_dbz_{tag}"], 1)
        (d / "worker.properties").write_text(f"""\
bootstrap.servers={self.kafka.bootstrap}
key.converter=org.apache.kafka.connect.storage.StringConverter
value.converter=org.apache.kafka.connect.storage.StringConverter
offset.storage.file.filename={d}/offsets.dat
offset.flush.interval.ms={DEBEZIUM_TUNING['offset.flush.interval.ms']}
plugin.path={connect}/plugins
listeners=http://127.0.0.1:{self.args.connect_port}
""")
        (d / "connector.properties").write_text(f"""\
name={name}
connector.class=io.debezium.connector.postgresql.PostgresConnector
tasks.max=1
database.hostname=127.0.0.1
database.port={self.pg.port}
database.user=postgres
database.password=unused
database.dbname={db}
topic.prefix=bench_dbz_{tag}
plugin.name=pgoutput
slot.name={slot}
publication.name={PUBLICATION}
publication.autocreate.mode=disabled
snapshot.mode=no_data
table.include.list=public.outbox
tombstones.on.delete=false
max.batch.size={DEBEZIUM_TUNING['max.batch.size']}
max.queue.size={DEBEZIUM_TUNING['max.queue.size']}
poll.interval.ms={DEBEZIUM_TUNING['poll.interval.ms']}
heartbeat.interval.ms={DEBEZIUM_TUNING['heartbeat.interval.ms']}
transforms=outbox
transforms.outbox.type=io.debezium.transforms.outbox.EventRouter
transforms.outbox.route.by.field=aggregatetype
transforms.outbox.route.topic.replacement={self.topic_template('dbz', tag)}
transforms.outbox.table.field.event.key=aggregateid
""")
        (d / "log4j2.properties").write_text(f"""\
status = warn
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = {d}/connect.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
""")
        # As bin/connect-standalone.sh starts it: its default heap, kafka-run-class.sh's
        # default JVM performance options.
        cmd = ["java", "-Xms256M", "-Xmx2G", "-server", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
               "-XX:InitiatingHeapOccupancyPercent=35", "-XX:+ExplicitGCInvokesConcurrent",
               "-Djava.awt.headless=true", f"-Dlog4j2.configurationFile={d}/log4j2.properties",
               "-cp", f"{connect}/lib/*", "org.apache.kafka.connect.cli.ConnectStandalone",
               str(d / "worker.properties"), str(d / "connector.properties")]
        out = open(d / "console.log", "w")
        p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             cwd=d)
        self.procs.append(p)
        return p

    # ---------------------------------------------------------------- drain

    def drain_readers(self) -> list[dict]:
        """Who drains the WAL, in order. The limit and outboxd run twice (first and last,
        around Debezium) so that background load on the machine shows up as a spread."""
        o = self.o
        rs = [{"name": "limit_a", "kind": "limit"}]
        if "outboxd" in o.systems:
            rs.append({"name": "outboxd_a", "kind": "outboxd"})
        for name, env in o.variants:
            rs.append({"name": f"outboxd[{name}]", "kind": "outboxd", "env": env, "variant": name})
        if "dbz" in o.systems:
            rs.append({"name": "dbz", "kind": "dbz"})
        if "outboxd" in o.systems:
            rs.append({"name": "outboxd_b", "kind": "outboxd"})
        rs.append({"name": "limit_b", "kind": "limit"})
        if o.profile:
            rs.append({"name": "outboxd[perf]", "kind": "outboxd", "perf": True, "variant": "perf"})
        return rs

    def drain_phase(self, k: int) -> None:
        o = self.o
        db = f"drain_k{k}"
        log(f"drain k={k}: preparing database {db}, slots and topics")
        self.create_db(db)
        readers = self.drain_readers()
        for i, r in enumerate(readers):
            r["slot"] = f"r{i}_{r['kind']}_k{k}"
            r["tag"] = f"d{k}r{i}"
            self.create_slot(db, r["slot"])
            if r["kind"] != "limit":
                self.kafka.create_topics(self.topics(r["kind"], r["tag"]), o.partitions)
        with self.pg.connect(db) as c:
            start = lsn_int(c.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()[0])
        log(f"drain k={k}: writing {o.events} events in transactions of {k} ({o.writers} writers)")
        w = self.pgbench(db, k, transactions=o.events // k)
        with self.pg.connect(db) as c:
            count = c.execute("SELECT count(*) FROM outbox").fetchone()[0]
        end, last_commit, _ = self.wal_positions(db, start)
        wal_bytes = end - start
        log(f"drain k={k}: wrote {count} events at {w['events_per_s']:.0f} events/s; "
            f"WAL {lsn_str(start)}..{lsn_str(end)} ({wal_bytes / 2**20:.0f} MiB), "
            f"last commit at {lsn_str(last_commit)}")
        entry = {"k": k, "events": count, "writer": w, "wal_start": lsn_str(start),
                 "wal_end": lsn_str(end), "last_commit": lsn_str(last_commit),
                 "wal_bytes": wal_bytes, "runs": {}, "loadavg_before": loadavg()}
        timeout = max(300.0, count / 1000.0)
        for r in readers:
            if r["kind"] == "limit":
                res = self.drain_limit(db, r["slot"], end, last_commit, timeout)
            elif r["kind"] == "outboxd":
                res = self.drain_outboxd(db, r["slot"], r["tag"], last_commit, count, timeout,
                                         env=r.get("env"), perf=r.get("perf", False))
            else:
                res = self.drain_debezium(db, r["slot"], r["tag"], last_commit, count, timeout)
            res["kind"] = r["kind"]
            res["variant"] = r.get("variant")
            res["loadavg"] = loadavg()
            res["events_per_s"] = count / res["seconds"] if res.get("ok") else None
            entry["runs"][r["name"]] = res
            rate = f"{res['events_per_s']:.0f} events/s" if res.get("ok") else f"FAILED: {res.get('error')}"
            extra = ""
            if r["kind"] != "limit":
                extra = (f", CPU {res.get('cpu_s')} s, peak RSS {res.get('peak_rss_mb', 0):.0f} MB, "
                         f"broker CPU {res.get('broker_cpu_s')} s")
            log(f"drain k={k}: {r['name']}: {res['seconds']:.2f} s, {rate}{extra}")
            self.save()
        entry["loadavg_after"] = loadavg()
        self.results["drain"].append(entry)
        self.save()
        self.drop_db(db)

    def curve(self, sampler: Sampler, start_lsn_field: str, lo: int, hi: int) -> list:
        pts = []
        for s in sampler.samples:
            v = getattr(s, start_lsn_field)
            if v is not None:
                pts.append((round(s.t, 3), round(min(1.0, max(0.0, (v - lo) / max(1, hi - lo))), 4)))
        # Thin out to at most ~400 points.
        step = max(1, len(pts) // 400)
        return pts[::step] + ([pts[-1]] if pts and (len(pts) - 1) % step else [])

    def drain_limit(self, db: str, slot: str, end: int, last_commit: int, timeout: float) -> dict:
        with self.pg.connect(db) as c:
            lo = lsn_int(c.execute("SELECT confirmed_flush_lsn::text FROM pg_replication_slots "
                                   "WHERE slot_name = %s", (slot,)).fetchone()[0])
        cmd = [str(Path(self.args.pg_bindir) / "pg_recvlogical"), "-h", "127.0.0.1", "-p",
               str(self.pg.port), "-U", "postgres", "-d", db, "--slot", slot, "--start",
               "--no-loop", "--endpos", lsn_str(end), "-o", "proto_version=1", "-o",
               f"publication_names={PUBLICATION}", "-f", "/dev/null"]
        t0 = time.monotonic()
        window = CpuWindow(self.kafka.proc.pid)
        sampler = Sampler(self.pg, db, slot, t0)
        sampler.start()
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.procs.append(p)
        try:
            _, status, ru = os.wait4(p.pid, 0)
        finally:
            pass
        t1 = time.monotonic()
        cpu_window = window.result()
        p.returncode = os.waitstatus_to_exitcode(status)
        err = p.stderr.read() if p.stderr else ""
        time.sleep(0.1)
        sampler.stop()
        sent_max = max((s.sent for s in sampler.samples if s.sent is not None), default=None)
        # pg_recvlogical confirms what it wrote when it stops at --endpos.
        confirmed = self.slot_confirmed(db, slot)
        ok = p.returncode == 0 and confirmed >= last_commit
        error = None if ok else (f"pg_recvlogical exited {p.returncode}, slot at {lsn_str(confirmed)}: "
                                 f"{err.strip()[-300:]}")
        return {"ok": ok, "error": error, "seconds": t1 - t0, "cmd": " ".join(cmd),
                "client_cpu_s": ru.ru_utime + ru.ru_stime,
                "walsender_cpu_s": sampler.walsender_cpu(),
                "walsender_sent_max": lsn_str(sent_max) if sent_max else None,
                "slot_confirmed_after": lsn_str(confirmed), **cpu_window,
                "curve": self.curve(sampler, "sent", lo, last_commit) + ([(round(t1 - t0, 3), 1.0)] if ok else [])}

    def wait_confirmed(self, p: subprocess.Popen, sampler: Sampler, target: int,
                       timeout: float) -> tuple[bool, str | None, float]:
        t_start = sampler.t0
        while True:
            now = time.monotonic()
            last = sampler.samples[-1] if sampler.samples else None
            if last and last.confirmed is not None and last.confirmed >= target:
                return True, None, now - t_start
            if p.poll() is not None:
                return False, f"exited with {p.returncode} before the slot reached the end", now - t_start
            if now - t_start > timeout:
                return False, f"timeout after {timeout:.0f} s", now - t_start
            time.sleep(0.01)

    def relay_result(self, p, sampler, ok, error, seconds, count, counter, lo, last_commit,
                     window: CpuWindow) -> dict:
        cpu_window = window.result()
        cpu = proc_cpu_s(p.pid)
        mem = proc_mem_mb(p.pid) or {}
        threads = proc_threads_cpu(p.pid)
        sampler.stop()
        kafka_total = counter.total()
        # When did the last record reach Kafka (first sample with the full count)?
        kafka_done = next((s.t for s in sampler.samples if s.kafka is not None and s.kafka >= count),
                          None)
        first_move = next((s.t for s in sampler.samples
                           if s.confirmed is not None and s.confirmed > lo), None)
        if ok and kafka_total != count:
            ok, error = False, f"{kafka_total} records in Kafka, {count} expected"
        return {"ok": ok, "error": error,
                "seconds": seconds, "cpu_s": cpu,
                "peak_rss_mb": max(mem.get("VmHWM", 0.0), sampler.relay_hwm),
                "walsender_cpu_s": sampler.walsender_cpu(), "threads_cpu_s": threads,
                "kafka_records": kafka_total, "kafka_complete_s": kafka_done,
                "first_confirm_s": first_move, **cpu_window,
                "curve": self.curve(sampler, "confirmed", lo, last_commit)}

    def slot_confirmed(self, db: str, slot: str) -> int:
        with self.pg.connect(db) as c:
            return lsn_int(c.execute("SELECT confirmed_flush_lsn::text FROM pg_replication_slots "
                                     "WHERE slot_name = %s", (slot,)).fetchone()[0])

    def drain_outboxd(self, db, slot, tag, last_commit, count, timeout, env=None,
                      perf=False) -> dict:
        lo = self.slot_confirmed(db, slot)
        counter = TopicCounter(self.kafka.bootstrap, self.topics("outboxd", tag), self.o.partitions)
        t0 = time.monotonic()
        window = CpuWindow(self.kafka.proc.pid)
        p = self.start_outboxd(db, slot, tag, f"outboxd-{tag}.log", env)
        perf_tag = "drain-k" + tag[1:].split("r")[0]  # d10r6 -> drain-k10
        perf_proc = self.perf_start(p.pid, perf_tag) if perf else None
        sampler = Sampler(self.pg, db, slot, t0, relay_pid=p.pid, counter=counter)
        sampler.start()
        ok, error, seconds = self.wait_confirmed(p, sampler, last_commit, timeout)
        res = self.relay_result(p, sampler, ok, error, seconds, count, counter, lo, last_commit,
                                window)
        if perf_proc:
            self.perf_stop(perf_proc, perf_tag)
        res["exit_code"] = stop_process(p)
        counter.close()
        return res

    def perf_start(self, pid: int, tag: str) -> subprocess.Popen:
        return subprocess.Popen(["perf", "record", "-F", "499", "-g", "--call-graph", "dwarf,16384",
                                 "-p", str(pid), "-o", str(self.rundir / f"perf-{tag}.data")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def perf_stop(self, perf_proc: subprocess.Popen, tag: str) -> None:
        perf_proc.send_signal(signal.SIGINT)
        perf_proc.wait(60)
        self.perf_report(tag)

    def perf_report(self, tag: str) -> None:
        """Top symbols (text) and, when inferno is installed, a flame graph (SVG)."""
        data = self.rundir / f"perf-{tag}.data"
        with open(self.rundir / f"perf-{tag}.txt", "w") as f:
            subprocess.run(["perf", "report", "-i", str(data), "--stdio", "--no-children",
                            "--sort", "comm,dso,symbol", "-F", "overhead,comm,dso,sym",
                            "--percent-limit", "0.5", "-g", "none"],
                           stdout=f, stderr=subprocess.DEVNULL)
        tools = WORK / "tools" / "bin"
        collapse, flame = tools / "inferno-collapse-perf", tools / "inferno-flamegraph"
        if not (collapse.exists() and flame.exists()):
            return
        script = subprocess.run(["perf", "script", "-i", str(data)], capture_output=True)
        folded = subprocess.run([str(collapse)], input=script.stdout, capture_output=True)
        (self.rundir / f"perf-{tag}.folded").write_bytes(folded.stdout)
        svg = subprocess.run([str(flame), "--title", f"outboxd, {tag}", "--width", "1600"],
                             input=folded.stdout, capture_output=True)
        if svg.returncode == 0:
            out = self.rundir / f"flamegraph-{tag}.svg"
            out.write_bytes(svg.stdout)
            self.results.setdefault("flamegraphs", []).append(out.name)
        data.unlink(missing_ok=True)  # hundreds of MB; the report and the SVG stay

    def drain_debezium(self, db, slot, tag, last_commit, count, timeout) -> dict:
        lo = self.slot_confirmed(db, slot)
        counter = TopicCounter(self.kafka.bootstrap, self.topics("dbz", tag), self.o.partitions)
        t0 = time.monotonic()
        window = CpuWindow(self.kafka.proc.pid)
        p = self.start_debezium(db, slot, tag, f"dbz-{tag}")
        sampler = Sampler(self.pg, db, slot, t0, relay_pid=p.pid, counter=counter)
        sampler.start()
        ok, error, seconds = self.wait_confirmed(p, sampler, last_commit, timeout)
        res = self.relay_result(p, sampler, ok, error, seconds, count, counter, lo, last_commit,
                                window)
        res["exit_code"] = stop_process(p, 60)
        counter.close()
        return res

    # ---------------------------------------------------------------- latency

    def latency_phase(self) -> None:
        """Both relays run side by side, each on its own database and slot; the writer
        feeds one at a time, alternating step by step, so that both meet the same
        machine (background load included)."""
        o = self.o
        relays: dict[str, dict] = {}
        try:
            entries = [(s_, s_, {}) for s_ in o.systems if s_ == "outboxd"]
            if o.latency_variants:
                entries += [(f"outboxd[{n}]", "outboxd", env) for n, env in o.variants]
            entries += [(s_, s_, {}) for s_ in o.systems if s_ == "dbz"]
            for i, (system, kind, env) in enumerate(entries):
                db = f"lat{i}_{kind}"
                tag = f"lat{i}"
                log(f"latency {system}: preparing")
                self.create_db(db)
                self.create_slot(db, db)
                topics = self.topics(kind, tag)
                self.kafka.create_topics(topics, o.partitions)
                p = (self.start_outboxd(db, db, tag, f"outboxd-{tag}.log", env) if kind == "outboxd"
                     else self.start_debezium(db, db, tag, f"dbz-{tag}"))
                relays[system] = {
                    "db": db, "proc": p, "counter": TopicCounter(self.kafka.bootstrap, topics, o.partitions),
                    "consumer": LatencyConsumer(self.kafka.bootstrap, topics, o.partitions),
                    "commit_times": {}, "active": True,
                    "result": {"steps": [], "highest_sustained": None, "kind": kind, "env": env}}
            for system, r in relays.items():
                # Attached = the relay's walsender holds the slot.
                deadline = time.monotonic() + 120
                with self.pg.connect(r["db"]) as c:
                    while c.execute("SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s",
                                    (r["db"],)).fetchone()[0] is None:
                        if r["proc"].poll() is not None or time.monotonic() > deadline:
                            raise RuntimeError(f"{system} did not attach to its slot")
                        time.sleep(0.2)
                # Warm-up (JIT, connections, metadata); excluded from the numbers.
                log(f"latency {system}: warm-up")
                self.pgbench(r["db"], 10, rate_tps=200, seconds=max(5, o.step_seconds // 3))
                if self.wait_caught_up(r["db"], r["counter"], 60) is None:
                    raise RuntimeError(f"{system} did not relay the warm-up events")
            r0 = {s: (proc_cpu_s(r["proc"].pid) or 0.0) for s, r in relays.items()}
            up = []
            rate = o.ladder_start
            while o.ladder_max and rate <= o.ladder_max:
                up.append(rate)
                rate = int(round(rate * o.ladder_factor, -3))
            top_fixed = max((rt for rt, _ in o.latency_steps), default=0)
            down = [rt for rt in (7000, 5000, 3000, 2000) if rt < top_fixed] if o.ladder_max else []
            for r in relays.values():
                r["queue"] = [(rt, k, None) for rt, k in o.latency_steps]
            # Rounds: every relay still active runs its next step, one after the other.
            while any(r["active"] and r["queue"] for r in relays.values()):
                for system, r in relays.items():
                    if not (r["active"] and r["queue"]):
                        continue
                    if r["proc"].poll() is not None:
                        r["result"]["error"] = f"exited with {r['proc'].returncode}"
                        r["active"] = False
                        continue
                    rate, k, ladder = r["queue"].pop(0)
                    step = self.latency_step(r["db"], system, r["counter"], r["consumer"],
                                             r["commit_times"], rate, k, r["proc"].pid)
                    step["ladder"] = ladder
                    r["result"]["steps"].append(step)
                    self.save_latency(relays)
                    if ladder is None and not r["queue"]:
                        # Fixed steps done: climb if the top one held, else step down.
                        if step["sustained"]:
                            r["queue"] = [(rt, o.ladder_k, "up") for rt in up]
                        else:
                            r["queue"] = [(rt, o.ladder_k, "down") for rt in down]
                    elif ladder == "up" and not step["sustained"]:
                        r["queue"] = []
                    elif ladder == "down" and step["sustained"]:
                        r["queue"] = []
            r = relays.get("outboxd")
            if o.profile and r and r["proc"].poll() is None:
                # An extra, unmeasured step under perf (perf's own cost would skew a
                # measured one).
                log("latency outboxd: profiling 10000 events/s (transactions of 10)")
                perf_proc = self.perf_start(r["proc"].pid, "live-10000x10")
                self.pgbench(r["db"], 10, rate_tps=1000, seconds=o.step_seconds)
                self.perf_stop(perf_proc, "live-10000x10")
                self.wait_caught_up(r["db"], r["counter"], 60)
            for system, r in relays.items():
                res = r["result"]
                ok = [s for s in res["steps"] if s["sustained"]]
                best = max(ok, key=lambda s: s["offered_events_per_s"], default=None)
                res["highest_sustained"] = best and {
                    k: best[k] for k in ("offered_events_per_s", "k", "achieved_events_per_s",
                                         "p50_ms", "p99_ms", "p999_ms", "relay_cpu_s")}
                bad = [s for s in res["steps"] if s.get("ladder") == "up" and not s["sustained"]]
                if bad:
                    res["first_unsustained"] = {"offered_events_per_s": bad[0]["offered_events_per_s"],
                                                "why": bad[0]["why"],
                                                "writer_bound": bad[0]["bound"] == "writer"}
                res["relay_cpu_s_steps"] = round((proc_cpu_s(r["proc"].pid) or 0.0) - r0[system], 2)
        except Exception as e:  # keep what we have; report the failure
            log(f"latency: FAILED: {e}")
            for r in relays.values():
                r["result"].setdefault("error", str(e))
        finally:
            for system, r in relays.items():
                r["result"]["relay_peak_rss_mb"] = (proc_mem_mb(r["proc"].pid) or {}).get("VmHWM")
                r["result"]["exit_code"] = stop_process(r["proc"], 60)
                r["consumer"].close()
                r["counter"].close()
            self.save_latency(relays)
            for r in relays.values():
                self.drop_db(r["db"])

    def save_latency(self, relays: dict) -> None:
        for system, r in relays.items():
            self.results["latency"][system] = r["result"]
        self.save()

    def wait_caught_up(self, db: str, counter: TopicCounter, timeout: float) -> float | None:
        """Seconds until every row of the outbox is in Kafka, None on timeout."""
        with self.pg.connect(db) as c:
            want = c.execute("SELECT count(*) FROM outbox").fetchone()[0]
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if counter.total() >= want:
                return time.monotonic() - t0
            time.sleep(0.1)
        return None

    def latency_step(self, db, system, counter, consumer, commit_times, rate, k, pid) -> dict:
        o = self.o
        log(f"latency {system}: {rate} events/s in transactions of {k} for {o.step_seconds} s")
        cpu0 = proc_cpu_s(pid) or 0.0
        window = CpuWindow(self.kafka.proc.pid)
        w = self.pgbench(db, k, rate_tps=rate / k, seconds=o.step_seconds)
        cpu_window = window.result()
        relay_cpu = round((proc_cpu_s(pid) or 0.0) - cpu0, 2)
        catch_up = self.wait_caught_up(db, counter, max(30.0, o.step_seconds))
        with self.pg.connect(db) as c:
            for id_, ts in c.execute(
                    "SELECT id::text, (extract(epoch FROM pg_xact_commit_timestamp(xmin)) * 1e6)::bigint "
                    "FROM outbox"):
                commit_times.setdefault(id_, ts)
        consumer.drain()
        lat = []
        lo_us, hi_us = int(w["start"] * 1e6), int(w["end"] * 1e6)
        missing = 0
        for id_, append_ms in consumer.records.items():
            ts = commit_times.get(id_)
            if ts is None:
                missing += 1
                continue
            if lo_us <= ts <= hi_us:
                lat.append(append_ms - ts / 1000.0)
        lat.sort()
        achieved = w["events_per_s"] or 0.0
        p99 = percentile(lat, 99)
        why = []
        if achieved < SUSTAIN_WRITER_FRACTION * rate:
            why.append(f"writer reached {achieved:.0f} of {rate} events/s")
        if catch_up is None:
            why.append("relay had not caught up 30 s after the step")
        if p99 is None or p99 > 1000:
            why.append(f"p99 {p99:.0f} ms > 1000 ms" if p99 is not None else "no events")
        step = {"offered_events_per_s": rate, "k": k, "achieved_events_per_s": achieved,
                "writer": w, "events": len(lat), "catch_up_s": catch_up,
                "p50_ms": percentile(lat, 50), "p90_ms": percentile(lat, 90), "p99_ms": p99,
                "p999_ms": percentile(lat, 99.9), "max_ms": lat[-1] if lat else None,
                "min_ms": lat[0] if lat else None,
                "sustained": not why, "why": "; ".join(why) or None,
                "bound": "writer" if achieved < SUSTAIN_WRITER_FRACTION * rate else None,
                "unmatched_records": missing, "relay_cpu_s": relay_cpu,
                "loadavg": loadavg(), **cpu_window}
        log(f"latency {system}: {rate} events/s: achieved {achieved:.0f}, p50 "
            f"{step['p50_ms']} p99 {p99} p99.9 {step['p999_ms']} ms; "
            + ("sustained" if step["sustained"] else f"NOT sustained ({step['why']})"))
        return step

    # ---------------------------------------------------------------- run

    def save(self) -> None:
        (self.rundir / "results.json").write_text(json.dumps(self.results, indent=1, default=str))

    def environment(self) -> dict:
        def cmd_out(cmd):
            try:
                return subprocess.run(cmd, capture_output=True, text=True).stdout.strip() or \
                    subprocess.run(cmd, capture_output=True, text=True).stderr.strip()
            except OSError:
                return None
        cpu = "unknown"
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
        mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        rdkafka = None
        lock = (ROOT / "Cargo.lock").read_text()
        m = re.search(r'name = "rdkafka-sys"\nversion = "([^"]+)"', lock)
        if m:
            rdkafka = m.group(1)
        git = cmd_out(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
        dirty = cmd_out(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"])
        return {
            "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "cpus": os.cpu_count(), "cpu_model": cpu, "mem_gib": round(mem_gib, 1),
            "kernel": platform.release(), "os": cmd_out(["sh", "-c", ". /etc/os-release; echo $PRETTY_NAME"]),
            "postgres": self.pg.version(), "kafka": "4.3.1 (KRaft, single node, same host)",
            "connect": "4.3.1 (standalone)", "debezium": self.args.debezium_version,
            "java": cmd_out(["sh", "-c", "java -version 2>&1 | head -n 1"]),
            "outboxd": f"{git}{' (+ uncommitted changes)' if dirty else ''}",
            "rustc": cmd_out(["rustc", "--version"]), "rdkafka_sys": rdkafka,
            "loadavg_start": loadavg(),
        }

    def execute(self) -> None:
        log(f"run {self.run_id} ({self.o.preset}); files in {self.rundir}")
        self.pg.start()
        try:
            self.kafka.start()
            log(f"PostgreSQL {self.pg.version()} on :{self.pg.port}, Kafka on {self.kafka.bootstrap}")
            self.results["environment"] = self.environment()
            for k in self.o.ks:
                self.drain_phase(k)
            if self.o.latency:
                self.latency_phase()
            self.results["environment"]["loadavg_end"] = loadavg()
            self.save()
        finally:
            for p in self.procs:
                with contextlib.suppress(Exception):
                    stop_process(p, 20)
            if not self.args.keep:
                self.kafka.stop()
                self.pg.stop()
        import report
        report.write(self.results, self.rundir, publish=self.o.publish)


class LatencyConsumer:
    """Reads every record of the latency topics: event id header → LogAppendTime (ms)."""

    def __init__(self, bootstrap: str, topics: list[str], partitions: int):
        self.c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-{uuid.uuid4()}",
                           "enable.auto.commit": False, "enable.partition.eof": True,
                           "fetch.max.bytes": 52428800})
        self.parts = [TopicPartition(t, p, OFFSET_BEGINNING) for t in topics for p in range(partitions)]
        self.c.assign(self.parts)
        self.records: dict[str, float] = {}
        self.non_append_time = 0

    def drain(self, idle: float = 1.0) -> None:
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < idle:
            msgs = self.c.consume(num_messages=10000, timeout=0.2)
            got = False
            for m in msgs:
                if m.error():
                    continue
                got = True
                ts_type, ts = m.timestamp()
                if ts_type != 2:  # TIMESTAMP_LOG_APPEND_TIME
                    self.non_append_time += 1
                for name, value in m.headers() or []:
                    if name == "id":
                        self.records.setdefault(value.decode(), float(ts))
                        break
            if got:
                quiet_since = time.monotonic()

    def close(self) -> None:
        self.c.close()


# ----------------------------------------------------------------------------- cli


# The full preset also runs outboxd with 4x its default memory caps (what the smaller
# defaults cost in speed, if anything) and on a two-thread runtime, next to its
# defaults (drain and latency).
PRESETS = {
    "full": dict(events=1_000_000, ks="1,10,100", step_seconds=30, ladder_max=200_000,
                 variants=["caps4x:OUTBOXD_KAFKA__MAX_IN_FLIGHT_BYTES=33554432,"
                           "OUTBOXD_POSTGRES__MAX_BUFFERED_BYTES=16777216",
                           "2threads:OUTBOXD_SERVER__WORKER_THREADS=2"]),
    "quick": dict(events=50_000, ks="10", step_seconds=10, ladder_max=0, variants=[]),
}


def parse_steps(text: str) -> list[tuple[int, int]]:
    out = []
    for part in filter(None, text.split(",")):
        rate, _, k = part.partition("x")
        out.append((int(rate), int(k or 1)))
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="quick preset: 50k events, k=10, short latency steps, no ladder")
    ap.add_argument("--events", type=int, help="events per transaction size (full: 1,000,000)")
    ap.add_argument("--ks", help="transaction sizes, comma-separated (full: 1,10,100; none: skip the drain)")
    ap.add_argument("--writers", type=int, default=4, help="concurrent writer connections (pgbench -c)")
    ap.add_argument("--partitions", type=int, default=3, help="partitions per topic")
    ap.add_argument("--latency-steps", default="1000x1,1000x10,10000x10",
                    help="fixed offered rates, RATExK (events/s x events per transaction)")
    ap.add_argument("--ladder-k", type=int, default=10, help="transaction size of the ladder steps")
    ap.add_argument("--ladder-start", type=int, default=20000, help="first ladder rate (events/s)")
    ap.add_argument("--ladder-factor", type=float, default=1.5, help="ladder growth factor")
    ap.add_argument("--ladder-max", type=int, help="last ladder rate tried (0: no ladder)")
    ap.add_argument("--step-seconds", type=int, help="duration of each latency step")
    ap.add_argument("--systems", default="outboxd,dbz", help="relays: outboxd, dbz")
    ap.add_argument("--no-latency", action="store_true", help="skip the latency phase")
    ap.add_argument("--publish", action="store_true",
                    help="write docs/benchmarks.md and docs/benchmarks.png (default for the full preset)")
    ap.add_argument("--no-publish", action="store_true", help="do not write docs/")
    ap.add_argument("--profile", action="store_true",
                    help="also drain once more with outboxd under perf record (report in the run dir)")
    ap.add_argument("--outboxd-env", action="append", default=[], metavar="KEY=VALUE",
                    help="extra environment for outboxd (e.g. OUTBOXD_KAFKA__PRODUCER__LINGER_MS=5)")
    ap.add_argument("--outboxd-variant", action="append", default=[], metavar="NAME:KEY=VALUE[,KEY=VALUE]",
                    help="also drain with outboxd under extra settings, e.g. "
                         "linger5:OUTBOXD_KAFKA__PRODUCER__LINGER_MS=5")
    ap.add_argument("--no-preset-variants", action="store_true",
                    help="leave out the preset's outboxd variants (full: caps4x, 2threads)")
    ap.add_argument("--latency-variants", action="store_true",
                    help="run the --outboxd-variant settings in the latency phase too")
    ap.add_argument("--keep", action="store_true", help="leave PostgreSQL and Kafka running at the end")
    ap.add_argument("--report-only", metavar="RESULTS_JSON", help="only render a report from a results file")
    # Wiring from run.sh.
    ap.add_argument("--outboxd-bin", required=False)
    ap.add_argument("--pg-bindir", required=False)
    ap.add_argument("--kafka-lib", required=False)
    ap.add_argument("--connect-dir", required=False)
    ap.add_argument("--debezium-version", default="?")
    ap.add_argument("--pg-port", type=int, default=54400)
    ap.add_argument("--kafka-port", type=int, default=19192)
    ap.add_argument("--connect-port", type=int, default=18083)
    ap.add_argument("--metrics-port", type=int, default=19300)
    args = ap.parse_args(argv)

    sys.path.insert(0, str(BENCH))
    if args.report_only:
        import report
        path = Path(args.report_only)
        report.write(json.loads(path.read_text()), path.parent, publish=args.publish)
        return
    for need in ("outboxd_bin", "pg_bindir", "kafka_lib", "connect_dir"):
        if not getattr(args, need):
            ap.error(f"--{need.replace('_', '-')} is required (start the bench with bench/run.sh)")
    preset = "quick" if args.quick else "full"
    p = PRESETS[preset]
    opts = Options(
        preset=preset,
        events=args.events or p["events"],
        ks=[int(x) for x in (args.ks or p["ks"]).split(",") if x and x != "none"],
        writers=args.writers,
        partitions=args.partitions,
        latency_steps=parse_steps(args.latency_steps),
        ladder_k=args.ladder_k,
        ladder_start=args.ladder_start,
        ladder_factor=args.ladder_factor,
        ladder_max=p["ladder_max"] if args.ladder_max is None else args.ladder_max,
        step_seconds=args.step_seconds or p["step_seconds"],
        systems=[s for s in args.systems.split(",") if s],
        latency=not args.no_latency,
        publish=(args.publish or preset == "full") and not args.no_publish,
        profile=args.profile,
        outboxd_env=dict(kv.split("=", 1) for kv in args.outboxd_env),
        variants=[(v.split(":", 1)[0], dict(kv.split("=", 1) for kv in v.split(":", 1)[1].split(",")))
                  for v in ([] if args.no_preset_variants else p["variants"]) + args.outboxd_variant],
        latency_variants=args.latency_variants or (preset == "full" and not args.no_preset_variants),
    )
    for k in opts.ks:
        if opts.events % (k * opts.writers):
            ap.error(f"--events must be a multiple of k x writers ({k} x {opts.writers})")
    WORK.mkdir(exist_ok=True)
    lock = open(WORK / "bench.lock", "w")
    import fcntl
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise SystemExit("another bench run holds bench/.work/bench.lock")
    Bench(args, opts).execute()


if __name__ == "__main__":
    main()
