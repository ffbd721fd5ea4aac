"""Sizing exactly-once's Kafka transactions: outboxd drains one backlog with each pair of
`kafka.transaction_max_ms` and `kafka.transaction_max_bytes` (and at-least-once as the
reference), in passes of alternating order; the latency phase runs each max_ms at the
fixed rates (latency.py)."""

from __future__ import annotations

from common import loadavg, log
from relays import EXACTLY_ONCE


def eos_env(max_ms: int, max_bytes: int) -> dict[str, str]:
    return {**EXACTLY_ONCE, "OUTBOXD_KAFKA__TRANSACTION_MAX_MS": str(max_ms),
            "OUTBOXD_KAFKA__TRANSACTION_MAX_BYTES": str(max_bytes)}


def setting_name(max_ms: int, max_bytes: int) -> str:
    return f"eos {max_ms}ms/{max_bytes // 1024}KiB"


# The byte limit the latency steps run with: at their rates (≤ 10k events/s of ~0.5 kB)
# a transaction holds ≤ 250 kB after 50 ms, so the byte limit does not bind there.
LATENCY_MAX_BYTES = 1 << 20


class SweepPhase:
    """Mixin of Bench: the drains of the transaction-size sweep."""

    def sweep_latency_variants(self) -> list[tuple[str, dict, dict]]:
        """(name, outboxd environment, setting) of the sweep's relays in the latency phase."""
        o = self.o
        if not (o.sweep and o.exactly_once):
            return []
        return [(setting_name(ms, LATENCY_MAX_BYTES), eos_env(ms, LATENCY_MAX_BYTES),
                 {"max_ms": ms, "max_bytes": LATENCY_MAX_BYTES}) for ms in o.sweep_latency_ms]

    def sweep_readers(self) -> list[dict]:
        """Per pass: at-least-once, then every setting; every other pass reversed."""
        o = self.o
        settings = [(ms, b) for ms in o.sweep_ms for b in o.sweep_bytes]
        one = [{"kind": "outboxd", "variant": None, "setting": None}] + [
            {"kind": "outboxd", "variant": setting_name(ms, b), "env": eos_env(ms, b),
             "setting": {"max_ms": ms, "max_bytes": b}} for ms, b in settings]
        out = []
        for n in range(o.sweep_passes):
            for r in (one if n % 2 == 0 else one[::-1]):
                out.append({**r, "name": f"{r['variant'] or 'at-least-once'}#{n + 1}", "pass": n + 1})
        return out

    def sweep_phase(self) -> None:
        o = self.o
        db = "sweep"
        log(f"sweep: {len(o.sweep_ms) * len(o.sweep_bytes)} exactly-once settings, "
            f"{o.sweep_passes} pass(es), {o.sweep_events} events in transactions of {o.sweep_k}")
        entry = self.prepare_backlog(db, "s", o.sweep_k, o.sweep_events, self.sweep_readers())
        readers, count, last_commit = entry.pop("readers"), entry["events"], entry.pop("_last")
        entry.pop("_end")
        timeout = max(300.0, count / 1000.0)
        self.results["sweep"] = entry
        for r in readers:
            res = self.drain_outboxd(db, r["slot"], r["tag"], last_commit, count, timeout,
                                     env=r.get("env"))
            res.update(kind="outboxd", variant=r["variant"], setting=r["setting"], **{"pass": r["pass"]})
            res["events_per_s"] = count / res["seconds"] if res.get("ok") else None
            entry["runs"][r["name"]] = res
            self.log_drain(f"sweep: {r['name']}", res)
            self.save()
        entry["loadavg_after"] = loadavg()
        self.save()
        self.drop_db(db)
