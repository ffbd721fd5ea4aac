"""The takeover phase: an active and a standby outboxd on one slot under a steady load;
the active one is SIGKILLed and the standby takes over. Per delivery mode, repeated:
each time a new standby joins and the active one is killed."""

from __future__ import annotations

import os
import signal
import subprocess
import time

from common import between_measurements, log, median, stop_process
from kafka_read import LiveConsumer
from relays import EXACTLY_ONCE, wait_log

MODES = (("at-least-once", {}), ("exactly-once", EXACTLY_ONCE))
# How long the pair runs steadily before each kill.
STEADY_S = 2.0
# What counts as a failed takeover.
GIVE_UP_S = 30.0
# Starts of a standby before the phase gives up on it.
STANDBY_ATTEMPTS = 5
# Standbys started under load to see whether they stand by.
PROBES = 3


def last_line(p: subprocess.Popen) -> str:
    lines = p.log_path.read_text(errors="replace").strip().splitlines()
    return lines[-1][:600] if lines else f"exited with {p.returncode}"


class TakeoverPhase:
    """Mixin of Bench: the takeover phase."""

    def takeover_phase(self) -> None:
        o = self.o
        self.results["takeover"] = {"rate": o.takeover_rate, "k": o.takeover_k,
                                    "reps": o.takeover_reps, "steady_s": STEADY_S, "modes": {}}
        for i, (mode, env) in enumerate(MODES):
            if env and not o.exactly_once:
                continue
            try:
                res = self.takeover_mode(f"takeover{i}", mode, env)
            except Exception as e:  # keep what we have; report the failure
                log(f"takeover {mode}: FAILED: {e}")
                res = {"error": str(e)}
            self.results["takeover"]["modes"][mode] = res
            self.save()

    def takeover_mode(self, db: str, mode: str, env: dict) -> dict:
        o = self.o
        self.create_db(db)
        self.create_slot(db, db)
        topics = self.topics("outboxd", db)
        self.kafka.create_topics(topics, o.partitions)
        consumer = LiveConsumer(self.kafka.bootstrap, topics, o.partitions)
        consumer.start()
        res: dict = {"reps": []}
        writer = None
        relays = []
        try:
            active = self.start_outboxd(db, db, db, f"outboxd-{db}-0.log", env)
            relays.append(active)
            if wait_log(active, active.log_path, "relaying", 60) is None:
                raise RuntimeError(f"the first relay did not start relaying (see {active.log_path})")
            writer = self.start_writer(db)
            time.sleep(STEADY_S)
            res["standby_under_load"] = self.probe_standby(db, mode, env, relays)
            for n in range(1, o.takeover_reps + 1):
                # The standby starts while the writer pauses: an at-least-once standby
                # started under load may refuse to start (see probe_standby).
                self.stop_writer(writer)
                consumer.wait_for(self.outbox_rows(db), 30)
                between_measurements()
                standby, seen, refusals = self.start_standby(db, f"{n}", env, relays)
                writer = self.start_writer(db)
                time.sleep(STEADY_S)
                rep = self.kill_active(db, active, standby, seen[1], consumer)
                rep["standby_refusals"] = refusals
                log(f"takeover {mode} #{n}: slot free after {rep['slot_free_s']} s, standby "
                    f"relaying after {rep['relaying_s']} s, events flowing after {rep['flowing_s']} s")
                res["reps"].append(rep)
                active = standby
            self.stop_writer(writer)
            rows = self.outbox_rows(db)
            res["caught_up_s"] = consumer.wait_for(rows, 60)
            consumer.stop()
            self.takeover_totals(db, res, consumer, rows)
        finally:
            if writer and writer.poll() is None:
                writer.kill()
            for p in relays:
                stop_process(p)
            consumer.close()
            self.drop_db(db)
        return res

    def start_writer(self, db: str) -> subprocess.Popen:
        """pgbench at the takeover rate until stopped (its -T is only a backstop)."""
        o = self.o
        writer = subprocess.Popen(
            self.pgbench_cmd(db, o.takeover_k, rate_tps=o.takeover_rate / o.takeover_k,
                             seconds=600, clients=2),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs.append(writer)
        return writer

    @staticmethod
    def stop_writer(writer: subprocess.Popen) -> None:
        # Not SIGINT: pgbench takes it as "cancel the running query" and goes on.
        writer.terminate()
        try:
            writer.wait(10)
        except subprocess.TimeoutExpired:
            writer.kill()
            writer.wait(10)

    def probe_standby(self, db: str, mode: str, env: dict, relays: list) -> dict:
        """Starts a standby under load a few times (each stopped again once it stands
        by): how many stood by, and what the others said when they exited."""
        stood, refused = 0, []
        for attempt in range(PROBES):
            p = self.start_outboxd(db, db, db, f"outboxd-{db}-probe{attempt}.log", env)
            relays.append(p)
            if wait_log(p, p.log_path, "standing by", 60) is not None:
                stood += 1
            else:
                refused.append(last_line(p))
            stop_process(p)
        log(f"takeover {mode}: a standby started under load stood by {stood} of {PROBES} times"
            + (f"; exited: {refused[0][:300]}" if refused else ""))
        return {"attempts": PROBES, "stood_by": stood, "exits": refused}

    def start_standby(self, db: str, n: str, env: dict, relays: list) -> tuple:
        """A second outboxd on the slot, until one stands by (an orchestrator restarts a
        relay that exits). Returns it, its `standing by` line, and the last log line of
        each exit before it."""
        refusals = []
        for attempt in range(STANDBY_ATTEMPTS):
            standby = self.start_outboxd(db, db, db, f"outboxd-{db}-{n}-{attempt}.log", env)
            relays.append(standby)
            seen = wait_log(standby, standby.log_path, "standing by", 60)
            if seen is not None:
                return standby, seen, refusals
            stop_process(standby)
            refusals.append(last_line(standby))
            log(f"takeover: standby #{n} exited instead of standing by: {refusals[-1][:300]}")
        raise RuntimeError(f"no standby stood by in {STANDBY_ATTEMPTS} attempts: {refusals[-1]}")

    def walsender_of(self, db: str) -> int | None:
        with self.pg.connect(db) as c:
            return c.execute("SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s",
                             (db,)).fetchone()[0]

    def kill_active(self, db: str, active, standby, log_offset: int, consumer: LiveConsumer) -> dict:
        """SIGKILLs the active relay; times the slot's release, the standby's `relaying`
        line and the first event committed after the kill reaching the consumer."""
        old = self.walsender_of(db)
        t_kill = time.time()
        os.kill(active.pid, signal.SIGKILL)
        active.wait()
        slot_free = slot_taken = relaying = flowing = None
        with self.pg.connect(db) as c:
            # Transactions from this one on began after the kill: the only rows the
            # loop needs to look at (a scan of xmin is cheap, commit times are not).
            xid = c.execute("SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint").fetchone()[0]
            while time.time() - t_kill < GIVE_UP_S and flowing is None:
                now = time.time()
                pid = c.execute("SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s",
                                (db,)).fetchone()[0]
                if slot_free is None and pid != old:
                    slot_free = now
                if slot_free is not None and slot_taken is None and pid not in (None, old):
                    slot_taken = now
                if relaying is None:
                    seen = wait_log(standby, standby.log_path, "relaying", 0, after=log_offset)
                    relaying = seen and seen[0]
                if relaying is not None:
                    flowing = self.first_visible_after(c, consumer, t_kill, xid)
                time.sleep(0.005 if relaying is None else 0.05)
        s = lambda t: None if t is None else round(t - t_kill, 3)  # noqa: E731
        return {"t_kill": t_kill, "slot_free_s": s(slot_free), "slot_taken_s": s(slot_taken),
                "relaying_s": s(relaying), "flowing_s": s(flowing),
                "ok": flowing is not None}

    @staticmethod
    def first_visible_after(c, consumer: LiveConsumer, t: float, xid: int) -> float | None:
        """When the consumer first got an event committed after `t` (epoch s), among
        those of transactions from `xid` on."""
        rows = c.execute("SELECT id::text, extract(epoch FROM pg_xact_commit_timestamp(xmin))::float8 "
                         "FROM outbox WHERE xmin::text::bigint >= %s", (xid,)).fetchall()
        seen = [consumer.records[i][1] for i, ts in rows if ts > t and i in consumer.records]
        return min(seen) / 1000.0 if seen else None

    def takeover_totals(self, db: str, res: dict, consumer: LiveConsumer, rows: int) -> None:
        """Per repetition the worst delay of an event committed around the kill; per mode
        duplicates, missing events and the medians and maxima."""
        commits = self.commit_times_us(db)
        kills = [r["t_kill"] for r in res["reps"]] + [float("inf")]
        for rep, next_kill in zip(res["reps"], kills[1:]):
            # Exactly, over every event: the first one committed after this kill (and
            # before the next) that reached the consumer.
            after = [consumer.records[i][1] / 1000.0 for i, us in commits.items()
                     if rep["t_kill"] < us / 1e6 < next_kill and i in consumer.records]
            if after:
                rep["flowing_s"] = round(min(after) - rep["t_kill"], 3)
            end = rep["t_kill"] + (rep["flowing_s"] or GIVE_UP_S) + 1.0
            delays = [consumer.records[i][1] - us / 1000.0 for i, us in commits.items()
                      if rep["t_kill"] - 1.0 <= us / 1e6 <= end and i in consumer.records]
            rep["worst_event_delay_ms"] = round(max(delays), 1) if delays else None
        res["standby_refusals"] = sum(len(r.get("standby_refusals", [])) for r in res["reps"])
        res["standby_refusal_example"] = next((r["standby_refusals"][0] for r in res["reps"]
                                               if r.get("standby_refusals")), None)
        res.update(events=rows, distinct_received=len(consumer.records),
                   duplicates=consumer.received - len(consumer.records),
                   missing=rows - len(consumer.records))
        for key in ("slot_free_s", "relaying_s", "flowing_s", "worst_event_delay_ms"):
            vals = [r[key] for r in res["reps"] if r.get(key) is not None]
            res[key] = {"median": median(vals), "max": max(vals, default=None), "n": len(vals)}
