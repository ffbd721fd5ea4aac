"""The drain phase: the same backlog of WAL read by every reader from its own slot,
timed until the slot is confirmed past the last commit."""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import relay_metrics
from common import (CpuWindow, between_measurements, loadavg, log, lsn_int, lsn_str, proc_cpu_s, proc_mem_mb,
                    proc_threads_cpu, stop_process)
from kafka_read import TopicCounter, committed_tally
from relays import EXACTLY_ONCE, is_exactly_once
from services import Postgres
from workload import PUBLICATION


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


class DrainPhase:
    """Mixin of Bench: the drain phase."""

    def drain_readers(self, warm_up: bool) -> list[dict]:
        """Who drains the WAL, in order. The limit, outboxd and outboxd exactly-once run
        twice (first and last, around Debezium) so that background load on the machine
        shows up as a spread. With `warm_up`, outboxd drains once in each mode first,
        unmeasured: a fresh broker's first drains ran up to 30% slower."""
        o = self.o
        rs = []
        eos = {"kind": "outboxd", "env": EXACTLY_ONCE, "variant": "exactly-once"}
        if warm_up and "outboxd" in o.systems:
            rs.append({"name": "warm-up", "kind": "outboxd", "warm_up": True})
            if o.exactly_once:
                rs.append({"name": "warm-up[exactly-once]", **eos, "warm_up": True})
        rs.append({"name": "limit_a", "kind": "limit"})
        if "outboxd" in o.systems:
            rs.append({"name": "outboxd_a", "kind": "outboxd"})
            if o.exactly_once:
                rs.append({"name": "outboxd[exactly-once]_a", **eos})
        for name, env in o.variants:
            rs.append({"name": f"outboxd[{name}]", "kind": "outboxd", "env": env, "variant": name})
        if "dbz" in o.systems:
            rs.append({"name": "dbz", "kind": "dbz"})
        if "outboxd" in o.systems:
            if o.exactly_once:
                rs.append({"name": "outboxd[exactly-once]_b", **eos})
            rs.append({"name": "outboxd_b", "kind": "outboxd"})
        rs.append({"name": "limit_b", "kind": "limit"})
        if o.profile:
            rs.append({"name": "outboxd[perf]", "kind": "outboxd", "perf": True, "variant": "perf"})
        return rs

    def drain_phase(self, k: int) -> None:
        o = self.o
        db = f"drain_k{k}"
        log(f"drain k={k}: preparing database {db}, slots and topics")
        warm_up = k == o.ks[0]
        entry = self.prepare_backlog(db, f"d{k}", k, o.events, self.drain_readers(warm_up))
        readers, count, end, last_commit = entry.pop("readers"), entry["events"], entry.pop("_end"), entry.pop("_last")
        timeout = max(300.0, count / 1000.0)
        for r in readers:
            if r["kind"] == "limit":
                res = self.drain_limit(db, r["slot"], end, last_commit, timeout)
            elif r["kind"] == "outboxd":
                res = self.drain_outboxd(db, r["slot"], r["tag"], last_commit, count, timeout,
                                         env=r.get("env"),
                                         perf_tag=f"drain-k{k}" if r.get("perf") else None)
            else:
                res = self.drain_debezium(db, r["slot"], r["tag"], last_commit, count, timeout)
            res["kind"] = r["kind"]
            res["variant"] = r.get("variant")
            res["events_per_s"] = count / res["seconds"] if res.get("ok") else None
            if r.get("warm_up"):
                self.log_drain(f"drain k={k}: {r['name']} (not measured)", res)
                continue
            entry["runs"][r["name"]] = res
            self.log_drain(f"drain k={k}: {r['name']}", res)
            self.save()
        entry["loadavg_after"] = loadavg()
        self.results["drain"].append(entry)
        self.save()
        self.drop_db(db)

    def prepare_backlog(self, db: str, prefix: str, k: int, events: int,
                        readers: list[dict]) -> dict:
        """A database with a slot (and topics) per reader, then `events` written in
        transactions of k with every reader stopped. The entry of the results, with
        the readers (slot and tag filled in) and the end positions."""
        self.create_db(db)
        for i, r in enumerate(readers):
            r["slot"] = f"r{i}_{r['kind']}_{db}"
            r["tag"] = f"{prefix}r{i}"
            self.create_slot(db, r["slot"])
            if r["kind"] != "limit":
                self.kafka.create_topics(self.topics(r["kind"], r["tag"]), self.o.partitions)
        with self.pg.connect(db) as c:
            start = lsn_int(c.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()[0])
        log(f"{db}: writing {events} events in transactions of {k} ({self.o.writers} writers)")
        w = self.pgbench(db, k, transactions=events // k)
        count = self.outbox_rows(db)
        end, last_commit, _ = self.wal_positions(db, start)
        wal_bytes = end - start
        log(f"{db}: wrote {count} events at {w['events_per_s']:.0f} events/s; "
            f"WAL {lsn_str(start)}..{lsn_str(end)} ({wal_bytes / 2**20:.0f} MiB), "
            f"last commit at {lsn_str(last_commit)}")
        return {"k": k, "events": count, "writer": w, "wal_start": lsn_str(start),
                "wal_end": lsn_str(end), "last_commit": lsn_str(last_commit),
                "wal_bytes": wal_bytes, "runs": {}, "loadavg_before": loadavg(),
                "readers": readers, "_end": end, "_last": last_commit}

    def log_drain(self, what: str, res: dict) -> None:
        between_measurements()
        res["loadavg"] = loadavg()
        rate = f"{res['events_per_s']:.0f} events/s" if res.get("ok") else f"FAILED: {res.get('error')}"
        extra = ""
        if res["kind"] != "limit":
            extra = (f", CPU {res.get('cpu_s')} s, peak RSS {res.get('peak_rss_mb', 0):.0f} MB, "
                     f"broker CPU {res.get('broker_cpu_s')} s")
        if res.get("kafka_transactions"):
            extra += (f", {res['kafka_transactions']} Kafka transactions "
                      f"({res.get('events_per_transaction')} events each, commit mean "
                      f"{res.get('commit_mean_ms')} ms)")
        log(f"{what}: {res['seconds']:.2f} s, {rate}{extra}")

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
        lo = self.slot_confirmed(db, slot)
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
        _, status, ru = os.wait4(p.pid, 0)
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

    def relay_result(self, p, sampler, ok, error, seconds, lo, last_commit,
                     window: CpuWindow) -> dict:
        """What the relay cost up to the confirmation (read from /proc before it stops)."""
        cpu_window = window.result()
        cpu = proc_cpu_s(p.pid)
        mem = proc_mem_mb(p.pid) or {}
        threads = proc_threads_cpu(p.pid)
        sampler.stop()
        first_move = next((s.t for s in sampler.samples
                           if s.confirmed is not None and s.confirmed > lo), None)
        return {"ok": ok, "error": error,
                "seconds": seconds, "cpu_s": cpu,
                "peak_rss_mb": max(mem.get("VmHWM", 0.0), sampler.relay_hwm),
                "walsender_cpu_s": sampler.walsender_cpu(), "threads_cpu_s": threads,
                "first_confirm_s": first_move, **cpu_window,
                "curve": self.curve(sampler, "confirmed", lo, last_commit)}

    def check_records(self, res: dict, sampler: Sampler, counter: TopicCounter | None,
                      topics: list[str], count: int) -> None:
        """Exactly `count` records in Kafka. Transactional topics are read back whole
        (read_committed; commit markers take offsets, so watermarks do not count them),
        which also finds duplicates; the others are counted by their watermarks."""
        if counter is not None:
            total = counter.total()
            res["kafka_records"] = total
            # When did the last record reach Kafka (first sample with the full count)?
            res["kafka_complete_s"] = next((s.t for s in sampler.samples
                                            if s.kafka is not None and s.kafka >= count), None)
        else:
            tally = committed_tally(self.kafka.bootstrap, topics, self.o.partitions)
            total = res["kafka_records"] = tally["records"]
            res["duplicates"] = tally["records"] - tally["distinct_ids"]
            if res["ok"] and tally["distinct_ids"] != count:
                res["ok"], res["error"] = False, f"{tally['distinct_ids']} distinct events, {count} expected"
        if res["ok"] and total != count:
            res["ok"], res["error"] = False, f"{total} records in Kafka, {count} expected"

    def drain_outboxd(self, db, slot, tag, last_commit, count, timeout, env=None,
                      perf_tag: str | None = None) -> dict:
        lo = self.slot_confirmed(db, slot)
        topics = self.topics("outboxd", tag)
        eos = is_exactly_once(env)
        counter = None if eos else TopicCounter(self.kafka.bootstrap, topics, self.o.partitions)
        t0 = time.monotonic()
        window = CpuWindow(self.kafka.proc.pid)
        p = self.start_outboxd(db, slot, tag, f"outboxd-{tag}.log", env)
        perf_proc = self.perf_start(p.pid, perf_tag) if perf_tag else None
        sampler = Sampler(self.pg, db, slot, t0, relay_pid=p.pid, counter=counter)
        sampler.start()
        ok, error, seconds = self.wait_confirmed(p, sampler, last_commit, timeout)
        res = self.relay_result(p, sampler, ok, error, seconds, lo, last_commit, window)
        res.update(relay_metrics.window(None, relay_metrics.scrape(p.metrics_address)))
        if perf_proc:
            self.perf_stop(perf_proc, perf_tag)
        res["exit_code"] = stop_process(p)
        self.check_records(res, sampler, counter, topics, count)
        if counter:
            counter.close()
        return res

    def drain_debezium(self, db, slot, tag, last_commit, count, timeout) -> dict:
        lo = self.slot_confirmed(db, slot)
        topics = self.topics("dbz", tag)
        counter = TopicCounter(self.kafka.bootstrap, topics, self.o.partitions)
        t0 = time.monotonic()
        window = CpuWindow(self.kafka.proc.pid)
        p = self.start_debezium(db, slot, tag, f"dbz-{tag}")
        sampler = Sampler(self.pg, db, slot, t0, relay_pid=p.pid, counter=counter)
        sampler.start()
        ok, error, seconds = self.wait_confirmed(p, sampler, last_commit, timeout)
        res = self.relay_result(p, sampler, ok, error, seconds, lo, last_commit, window)
        res["exit_code"] = stop_process(p, 60)
        self.check_records(res, sampler, counter, topics, count)
        counter.close()
        return res
