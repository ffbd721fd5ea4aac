#!/usr/bin/env python3
"""outboxd benchmark harness: the slot-read limit, outboxd and Debezium in one run.

Started by bench/run.sh, which prepares the binaries and jars and passes their paths.
Phases (docs/benchmarks.md describes them for readers):

1. setup     own PostgreSQL cluster and own Kafka broker, both fresh;
2. drain     per transaction size k: one database, slots for every reader created
             first, then N events written with the relays stopped; then each reader
             drains the same WAL from its own slot: pg_recvlogical (the limit),
             outboxd at-least-once and exactly-once, Debezium, and again in reverse
             (drain.py);
3. sweep     exactly-once's transaction limits (max ms x max bytes), each draining one
             backlog, at-least-once as the reference (sweep.py);
4. latency   the relays live side by side, a writer at fixed offered rates (pgbench
             -R); per event commit -> broker append and commit -> visible to a
             read_committed consumer (latency.py);
5. takeover  active + standby outboxd on one slot under load, the active one
             SIGKILLed, per delivery mode (takeover.py);
6. report    results JSON, markdown and a chart (report.py).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import fcntl
import gc
import json
import os
import platform
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from common import BENCH, ROOT, WORK, loadavg, log, stop_process
from drain import DrainPhase
from latency import SUSTAIN_WRITER_FRACTION, LatencyPhase
from relays import DEBEZIUM_TUNING, Relays
from services import BROKER_JVMS, Kafka, Postgres
from sweep import SweepPhase
from takeover import TakeoverPhase
from workload import WORKLOAD_SQL, Workload


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
    exactly_once: bool
    sweep: bool
    sweep_ms: list[int]
    sweep_bytes: list[int]
    sweep_events: int
    sweep_k: int
    sweep_passes: int
    sweep_latency_ms: list[int]
    takeover: bool
    takeover_reps: int
    takeover_rate: int
    takeover_k: int


class Bench(Workload, Relays, DrainPhase, SweepPhase, LatencyPhase, TakeoverPhase):
    def __init__(self, args, opts: Options):
        self.args, self.o = args, opts
        self.run_id = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        self.rundir = WORK / "runs" / self.run_id
        self.rundir.mkdir(parents=True)
        self.pg = Postgres(Path(args.pg_bindir), WORK / "pg", args.pg_port)
        self.kafka = Kafka(Path(args.kafka_lib), WORK / "kafka", args.kafka_port, args.kafka_port + 1,
                           BROKER_JVMS[args.broker_gc])
        self.results: dict = {"run_id": self.run_id, "preset": opts.preset, "drain": [],
                              "latency": {}, "options": {k: v for k, v in vars(opts).items()},
                              "debezium_tuning": DEBEZIUM_TUNING,
                              "sustain_writer_fraction": SUSTAIN_WRITER_FRACTION,
                              "command": " ".join(["bench/run.sh"] + ([os.environ["BENCH_ARGS"]]
                                                                        if os.environ.get("BENCH_ARGS") else []))}
        self.workload = self.rundir / "workload.sql"
        self.workload.write_text(WORKLOAD_SQL)
        self.procs: list[subprocess.Popen] = []

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
        # outboxd's exactly-once transaction limits as its source has them (for the report).
        config = "".join(p.read_text() for p in sorted((ROOT / "crates/outboxd/src/config").glob("*.rs")))
        eos = {key: m.group(1) for key in ("transaction_max_ms", "transaction_max_bytes")
               if (m := re.search(rf"^\s*{key}: ([^,]+),$", config, re.M))}
        git = cmd_out(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
        dirty = cmd_out(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"])
        return {
            "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "cpus": os.cpu_count(), "cpu_model": cpu, "mem_gib": round(mem_gib, 1),
            "kernel": platform.release(), "os": cmd_out(["sh", "-c", ". /etc/os-release; echo $PRETTY_NAME"]),
            "postgres": self.pg.version(), "kafka": "4.3.1 (KRaft, single node, same host)",
            "kafka_jvm": " ".join(self.kafka.jvm),
            "connect": "4.3.1 (standalone)", "debezium": self.args.debezium_version,
            "java": cmd_out(["sh", "-c", "java -version 2>&1 | head -n 1"]),
            "outboxd": f"{git}{' (+ uncommitted changes)' if dirty else ''}",
            "rustc": cmd_out(["rustc", "--version"]), "rdkafka_sys": rdkafka,
            "loadavg_start": loadavg(), "eos_defaults": eos if len(eos) == 2 else None,
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
            if self.o.sweep and self.o.exactly_once and "outboxd" in self.o.systems:
                self.sweep_phase()
            if self.o.latency:
                self.latency_phase()
            if self.o.takeover and "outboxd" in self.o.systems:
                self.takeover_phase()
            self.results["environment"]["loadavg_end"] = loadavg()
            self.results["environment"]["broker_pauses"] = self.kafka.pauses()
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


# The full preset also runs outboxd with 4x its default memory caps (what the smaller
# defaults cost in speed, if anything) and on a two-thread runtime, next to its
# defaults (drain and latency). Both presets run exactly-once next to at-least-once;
# the quick one only briefly, so that CI's smoke run covers its code paths.
PRESETS = {
    "full": dict(events=1_000_000, ks="1,10,100", step_seconds=30, ladder_max=200_000,
                 variants=["caps4x:OUTBOXD_KAFKA__MAX_IN_FLIGHT_BYTES=33554432,"
                           "OUTBOXD_POSTGRES__MAX_BUFFERED_BYTES=16777216",
                           "2threads:OUTBOXD_SERVER__WORKER_THREADS=2"],
                 sweep_ms="5,10,20,50", sweep_bytes="1048576,8388608,33554432",
                 sweep_events=300_000, sweep_passes=2, sweep_latency_ms="5,10,20,50",
                 takeover_reps=5),
    "quick": dict(events=50_000, ks="10", step_seconds=6, ladder_max=0, variants=[],
                  sweep_ms="5,50", sweep_bytes="33554432", sweep_events=20_000, sweep_passes=1,
                  sweep_latency_ms="", takeover_reps=1),
}


def parse_steps(text: str) -> list[tuple[int, int]]:
    out = []
    for part in filter(None, text.split(",")):
        rate, _, k = part.partition("x")
        out.append((int(rate), int(k or 1)))
    return out


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x and x != "none"]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="quick preset: 50k events, k=10, 6 s latency steps, no ladder, "
                    "a small sweep, one takeover per mode")
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
                         "linger5:OUTBOXD_KAFKA__PRODUCER__LINGER_MS=5; BENCH_OUTBOXD_BIN=PATH "
                         "runs another outboxd build, to compare two builds in one run")
    ap.add_argument("--no-preset-variants", action="store_true",
                    help="leave out the preset's outboxd variants (full: caps4x, 2threads)")
    ap.add_argument("--latency-variants", action="store_true",
                    help="run the --outboxd-variant settings in the latency phase too")
    ap.add_argument("--no-exactly-once", action="store_true",
                    help="leave out outboxd's exactly-once delivery (drain, sweep, latency, takeover)")
    ap.add_argument("--no-sweep", action="store_true", help="skip the exactly-once transaction-size sweep")
    ap.add_argument("--sweep-ms", help="kafka.transaction_max_ms values of the sweep (full: 5,10,20,50)")
    ap.add_argument("--sweep-bytes", help="kafka.transaction_max_bytes values of the sweep's drains "
                    "(full: 1048576,8388608,33554432)")
    ap.add_argument("--sweep-events", type=int, help="events of the sweep's backlog (full: 300,000)")
    ap.add_argument("--sweep-k", type=int, default=10, help="transaction size of the sweep's backlog")
    ap.add_argument("--sweep-passes", type=int, help="drains per setting, in alternating order (full: 2)")
    ap.add_argument("--sweep-latency-ms", help="kafka.transaction_max_ms values also run in the latency "
                    "phase's fixed steps (full: 5,10,20,50; none: no extra relays)")
    ap.add_argument("--no-takeover", action="store_true", help="skip the takeover phase")
    ap.add_argument("--takeover-reps", type=int, help="SIGKILLs per delivery mode (full: 5)")
    ap.add_argument("--takeover-rate", type=int, default=1000, help="events/s written during the takeovers")
    ap.add_argument("--takeover-k", type=int, default=1, help="events per transaction during the takeovers")
    ap.add_argument("--keep", action="store_true", help="leave PostgreSQL and Kafka running at the end")
    ap.add_argument("--broker-gc", choices=sorted(BROKER_JVMS), default="serial",
                    help="the broker's garbage collector: serial (default; its pauses show in latency "
                         "tails) or zgc (2 GiB heap; no long pauses, but in one full run about twice the "
                         "broker's CPU in drains)")
    ap.add_argument("--strict", action="store_true",
                    help="exit 1 if any relay run failed (CI's smoke run: the harness must work end to end)")
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
    args = ap.parse_args(argv)

    sys.path.insert(0, str(BENCH))
    # Python's cyclic collector walks every tracked object, millions of per-event
    # entries late in a run, and would pause the measuring consumers at random
    # moments. The harness makes few cycles: it collects between measurements.
    gc.disable()
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
        exactly_once=not args.no_exactly_once,
        sweep=not args.no_sweep,
        sweep_ms=ints(args.sweep_ms or p["sweep_ms"]),
        sweep_bytes=ints(args.sweep_bytes or p["sweep_bytes"]),
        sweep_events=args.sweep_events or p["sweep_events"],
        sweep_k=args.sweep_k,
        sweep_passes=args.sweep_passes or p["sweep_passes"],
        sweep_latency_ms=ints(p["sweep_latency_ms"] if args.sweep_latency_ms is None else args.sweep_latency_ms),
        takeover=not args.no_takeover,
        takeover_reps=args.takeover_reps or p["takeover_reps"],
        takeover_rate=args.takeover_rate,
        takeover_k=args.takeover_k,
    )
    for k in opts.ks:
        if opts.events % (k * opts.writers):
            ap.error(f"--events must be a multiple of k x writers ({k} x {opts.writers})")
    if opts.sweep and opts.sweep_events % (opts.sweep_k * opts.writers):
        ap.error(f"--sweep-events must be a multiple of --sweep-k x writers ({opts.sweep_k} x {opts.writers})")
    WORK.mkdir(exist_ok=True)
    lock = open(WORK / "bench.lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise SystemExit("another bench run holds bench/.work/bench.lock")
    bench = Bench(args, opts)
    bench.execute()
    failed = failures(bench.results)
    for f in failed:
        log(f"failed: {f}")
    if failed and args.strict:
        raise SystemExit(1)


def failures(results: dict) -> list[str]:
    """Every relay run of the results that failed, named."""
    out = []
    for e in results.get("drain", []) + ([results["sweep"]] if results.get("sweep") else []):
        for name, r in e.get("runs", {}).items():
            if not r.get("ok"):
                out.append(f"drain {name} (k={e.get('k')}): {r.get('error')}")
    for name, r in results.get("latency", {}).items():
        if r.get("error"):
            out.append(f"latency {name}: {r['error']}")
    for mode, r in results.get("takeover", {}).get("modes", {}).items():
        if r.get("error"):
            out.append(f"takeover {mode}: {r['error']}")
    return out


if __name__ == "__main__":
    main()
