"""Starting the relays (outboxd, Debezium on Kafka Connect) and profiling outboxd."""

from __future__ import annotations

import datetime as dt
import os
import re
import signal
import subprocess
import time
from pathlib import Path

from common import WORK, free_port
from workload import PUBLICATION

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

# outboxd's exactly-once delivery (docs/configuration.md, `kafka.delivery`).
EXACTLY_ONCE = {"OUTBOXD_KAFKA__DELIVERY": "exactly-once"}
# A tracing line's timestamp (text format: RFC 3339, UTC, µs).
LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+)Z")


def is_exactly_once(env: dict | None) -> bool:
    return (env or {}).get("OUTBOXD_KAFKA__DELIVERY") == "exactly-once"


def wait_log(p: subprocess.Popen, path: Path, needle: str, timeout: float,
             after: int = 0) -> tuple[float, int] | None:
    """Waits for a line containing `needle` in a relay's log, from byte `after` on:
    (its timestamp, seconds since the epoch; the byte offset after it), or None when the
    process exits or the time is up."""
    deadline = time.monotonic() + timeout
    while True:
        with open(path, "rb") as f:
            f.seek(after)
            data = f.read()
        end = data.rfind(b"\n")
        for line in data[:end + 1].decode(errors="replace").splitlines():
            if needle in line:
                m = LOG_TIME.match(line)
                stamp = (dt.datetime.fromisoformat(m.group(1)).replace(tzinfo=dt.timezone.utc).timestamp()
                         if m else time.time())
                return stamp, after + end + 1
        if p.poll() is not None or time.monotonic() > deadline:
            return None
        time.sleep(0.005)


class Relays:
    """Mixin of Bench: starts relays (needs self.pg, self.kafka, self.o, self.args,
    self.rundir, self.procs)."""

    def start_outboxd(self, db: str, slot: str, tag: str, logname: str,
                      extra_env: dict | None = None) -> subprocess.Popen:
        """outboxd on `slot`; the process carries its metrics address and log path."""
        metrics = f"127.0.0.1:{free_port()}"
        env = dict(os.environ)
        env.update({
            "OUTBOXD_POSTGRES__URL": self.pg.url(db),
            "OUTBOXD_POSTGRES__SLOT": slot,
            "OUTBOXD_POSTGRES__PUBLICATION": PUBLICATION,
            "OUTBOXD_POSTGRES__TABLES": "public.outbox",
            "OUTBOXD_POSTGRES__CREATE_SLOT": "false",
            "OUTBOXD_KAFKA__BROKERS": self.kafka.bootstrap,
            "OUTBOXD_ROUTING__TOPIC": self.topic_template("outboxd", tag),
            "OUTBOXD_SERVER__METRICS_ADDRESS": metrics,
            "RUST_LOG": env.get("RUST_LOG", "info"),
        })
        env.update(self.o.outboxd_env)
        env.update(extra_env or {})
        # A variant may run another build, to compare two builds in one run.
        binary = env.pop("BENCH_OUTBOXD_BIN", self.args.outboxd_bin)
        log_path = self.rundir / logname
        out = open(log_path, "w")
        p = subprocess.Popen([binary, "run"], env=env, stdout=out,
                             stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        p.metrics_address = metrics
        p.log_path = log_path
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

