"""The latency phase: live relays side by side, a writer at fixed offered rates (pgbench
-R), per event the time from the PostgreSQL commit to the broker's append and to the
moment a read_committed consumer got it."""

from __future__ import annotations

import time

import relay_metrics
from common import (CpuWindow, between_measurements, loadavg, log, percentile, proc_cpu_s, proc_mem_mb,
                    stop_process)
from kafka_read import LiveConsumer
from relays import EXACTLY_ONCE, is_exactly_once

# A latency step is sustained when the writer reached this share of the offered rate
# (pgbench -R draws Poisson arrivals: a 10 s step at 100 transactions/s varies by a
# few percent), the relay caught up within 30 s after it, and p99 (visible) <= 1 s.
SUSTAIN_WRITER_FRACTION = 0.9


def latency_stats(values: list[float]) -> dict:
    values.sort()
    return {"p50_ms": percentile(values, 50), "p90_ms": percentile(values, 90),
            "p99_ms": percentile(values, 99), "p999_ms": percentile(values, 99.9),
            "max_ms": values[-1] if values else None, "min_ms": values[0] if values else None}


class LatencyPhase:
    """Mixin of Bench: the latency phase."""

    def latency_entries(self) -> list[tuple[str, str, dict, dict | None]]:
        """(name, kind, outboxd environment, sweep setting) per relay; all but the
        sweep's relays climb the ladder."""
        o = self.o
        out = []
        if "outboxd" in o.systems:
            out.append(("outboxd", "outboxd", {}, None))
            if o.exactly_once:
                out.append(("outboxd[exactly-once]", "outboxd", EXACTLY_ONCE, None))
            if o.latency_variants:
                out += [(f"outboxd[{n}]", "outboxd", env, None) for n, env in o.variants]
            # The transaction-size sweep: the fixed steps only.
            out += [(f"outboxd[{name}]", "outboxd", env, setting)
                    for name, env, setting in self.sweep_latency_variants()]
        if "dbz" in o.systems:
            out.append(("dbz", "dbz", {}, None))
        return out

    def latency_phase(self) -> None:
        """The relays run side by side, each on its own database and slot; the writer
        feeds one at a time, alternating step by step, so that all meet the same
        machine (background load included)."""
        o = self.o
        relays: dict[str, dict] = {}
        try:
            for i, (system, kind, env, sweep) in enumerate(self.latency_entries()):
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
                    "db": db, "proc": p, "ladder": sweep is None,
                    "consumer": LiveConsumer(self.kafka.bootstrap, topics, o.partitions),
                    "commit_times": {}, "active": True,
                    "result": {"steps": [], "highest_sustained": None, "kind": kind, "env": env,
                               "exactly_once": is_exactly_once(env), "sweep_setting": sweep}}
            for system, r in relays.items():
                self.wait_attached(system, r["db"], r["db"], r["proc"], 120)
                # Warm-up (JIT, connections, metadata); excluded from the numbers.
                log(f"latency {system}: warm-up")
                r["consumer"].start()
                self.pgbench(r["db"], 10, rate_tps=200, seconds=max(5, o.step_seconds // 3))
                caught_up = r["consumer"].wait_for(self.outbox_rows(r["db"]), 60)
                if caught_up is None:
                    raise RuntimeError(f"{system} did not relay the warm-up events")
            r0 = {s: (proc_cpu_s(r["proc"].pid) or 0.0) for s, r in relays.items()}
            self.run_steps(relays)
            r = relays.get("outboxd")
            if o.profile and r and r["proc"].poll() is None:
                # An extra, unmeasured step under perf (perf's own cost would skew a
                # measured one).
                log("latency outboxd: profiling 10000 events/s (transactions of 10)")
                perf_proc = self.perf_start(r["proc"].pid, "live-10000x10")
                self.pgbench(r["db"], 10, rate_tps=1000, seconds=o.step_seconds)
                self.perf_stop(perf_proc, "live-10000x10")
                r["consumer"].wait_for(self.outbox_rows(r["db"]), 60)
            for system, r in relays.items():
                self.summarise_relay(r["result"])
                r["result"]["relay_cpu_s_steps"] = round((proc_cpu_s(r["proc"].pid) or 0.0) - r0[system], 2)
        except Exception as e:  # keep what we have; report the failure
            log(f"latency: FAILED: {e}")
            for r in relays.values():
                r["result"].setdefault("error", str(e))
        finally:
            for system, r in relays.items():
                r["result"]["relay_peak_rss_mb"] = (proc_mem_mb(r["proc"].pid) or {}).get("VmHWM")
                r["result"]["exit_code"] = stop_process(r["proc"], 60)
                r["consumer"].close()
            self.save_latency(relays)
            for r in relays.values():
                self.drop_db(r["db"])

    def run_steps(self, relays: dict) -> None:
        """Rounds: every relay still active runs its next step, one after the other.
        After the fixed steps a relay climbs the ladder if the top one held, else steps
        down until one holds."""
        o = self.o
        up = []
        rate = o.ladder_start
        while o.ladder_max and rate <= o.ladder_max:
            up.append(rate)
            rate = int(round(rate * o.ladder_factor, -3))
        top_fixed = max((rt for rt, _ in o.latency_steps), default=0)
        down = [rt for rt in (7000, 5000, 3000, 2000) if rt < top_fixed] if o.ladder_max else []
        for r in relays.values():
            r["queue"] = [(rt, k, None) for rt, k in o.latency_steps]
        while any(r["active"] and r["queue"] for r in relays.values()):
            for system, r in relays.items():
                if not (r["active"] and r["queue"]):
                    continue
                if r["proc"].poll() is not None:
                    r["result"]["error"] = f"exited with {r['proc'].returncode}"
                    r["active"] = False
                    continue
                rate, k, ladder = r["queue"].pop(0)
                step = self.latency_step(system, r, rate, k)
                step["ladder"] = ladder
                r["result"]["steps"].append(step)
                self.save_latency(relays)
                if ladder is None and not r["queue"] and r["ladder"]:
                    if step["sustained"]:
                        r["queue"] = [(rt, o.ladder_k, "up") for rt in up]
                    else:
                        r["queue"] = [(rt, o.ladder_k, "down") for rt in down]
                elif ladder == "up" and not step["sustained"]:
                    r["queue"] = []
                elif ladder == "down" and step["sustained"]:
                    r["queue"] = []

    @staticmethod
    def summarise_relay(res: dict) -> None:
        ok = [s for s in res["steps"] if s["sustained"]]
        best = max(ok, key=lambda s: s["offered_events_per_s"], default=None)
        res["highest_sustained"] = best and {
            k: best[k] for k in ("offered_events_per_s", "k", "achieved_events_per_s",
                                 "p50_ms", "p99_ms", "p999_ms", "relay_cpu_s")} | {
            "visible": best["visible"]}
        bad = [s for s in res["steps"] if s.get("ladder") == "up" and not s["sustained"]]
        if bad:
            res["first_unsustained"] = {"offered_events_per_s": bad[0]["offered_events_per_s"],
                                        "why": bad[0]["why"],
                                        "writer_bound": bad[0]["bound"] == "writer"}

    def wait_attached(self, system: str, db: str, slot: str, proc, timeout: float) -> None:
        """Until the relay's walsender holds the slot."""
        deadline = time.monotonic() + timeout
        with self.pg.connect(db) as c:
            while c.execute("SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s",
                            (slot,)).fetchone()[0] is None:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{system} did not attach to its slot")
                time.sleep(0.2)

    def save_latency(self, relays: dict) -> None:
        for system, r in relays.items():
            self.results["latency"][system] = r["result"]
        self.save()

    def latency_step(self, system: str, r: dict, rate: int, k: int) -> dict:
        o = self.o
        db, consumer, proc = r["db"], r["consumer"], r["proc"]
        between_measurements()
        log(f"latency {system}: {rate} events/s in transactions of {k} for {o.step_seconds} s")
        metrics0 = relay_metrics.scrape(proc.metrics_address) if r["result"]["kind"] == "outboxd" else None
        cpu0 = proc_cpu_s(proc.pid) or 0.0
        window = CpuWindow(self.kafka.proc.pid)
        broker_log = self.kafka.log_end()
        w = self.pgbench(db, k, rate_tps=rate / k, seconds=o.step_seconds)
        cpu_window = window.result()
        broker_pauses = self.kafka.pauses(broker_log)
        relay_cpu = round((proc_cpu_s(proc.pid) or 0.0) - cpu0, 2)
        catch_up = consumer.wait_for(self.outbox_rows(db), max(30.0, o.step_seconds))
        kafka_txns = (relay_metrics.window(metrics0, relay_metrics.scrape(proc.metrics_address))
                      if metrics0 is not None else {})
        commit_times = r["commit_times"]
        for id_, ts in self.commit_times_us(db).items():
            commit_times.setdefault(id_, ts)
        appended, visible = [], []
        lo_us, hi_us = int(w["start"] * 1e6), int(w["end"] * 1e6)
        missing = 0
        for id_, (append_ms, seen_ms) in consumer.records.items():
            ts = commit_times.get(id_)
            if ts is None:
                missing += 1
                continue
            if lo_us <= ts <= hi_us:
                appended.append(append_ms - ts / 1000.0)
                visible.append(seen_ms - ts / 1000.0)
        achieved = w["events_per_s"] or 0.0
        vis = latency_stats(visible)
        why = []
        if achieved < SUSTAIN_WRITER_FRACTION * rate:
            why.append(f"writer reached {achieved:.0f} of {rate} events/s")
        if catch_up is None:
            why.append("relay had not caught up 30 s after the step")
        p99 = vis["p99_ms"]
        if p99 is None or p99 > 1000:
            why.append(f"p99 {p99:.0f} ms > 1000 ms" if p99 is not None else "no events")
        step = {"offered_events_per_s": rate, "k": k, "achieved_events_per_s": achieved,
                "writer": w, "events": len(appended), "catch_up_s": catch_up,
                **latency_stats(appended), "visible": vis,
                "sustained": not why, "why": "; ".join(why) or None,
                "bound": "writer" if achieved < SUSTAIN_WRITER_FRACTION * rate else None,
                "unmatched_records": missing, "relay_cpu_s": relay_cpu,
                "loadavg": loadavg(), "broker_pauses": broker_pauses, **cpu_window, **kafka_txns}
        log(f"latency {system}: {rate} events/s: achieved {achieved:.0f}, appended p50 "
            f"{step['p50_ms']} p99 {step['p99_ms']}; visible p50 {vis['p50_ms']} p99 {p99} "
            f"p99.9 {vis['p999_ms']} ms"
            + (f"; {kafka_txns['events_per_transaction']} events per Kafka transaction, commit "
               f"mean {kafka_txns['commit_mean_ms']} ms" if kafka_txns.get("kafka_transactions") else "")
            + (f"; broker stopped {broker_pauses['over_5ms']} times for 5 ms or more (longest "
               f"{broker_pauses['longest_ms']} ms), {broker_pauses['allocation_stalls']} allocation "
               "stalls" if broker_pauses else "")
            + ("; sustained" if step["sustained"] else f"; NOT sustained ({step['why']})"))
        return step
