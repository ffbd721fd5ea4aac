"""Number formatting and the summary the report's tables share."""

from __future__ import annotations


class _Names(dict):
    def __missing__(self, key):
        return key


NAMES = _Names({"limit": "limit (pg_recvlogical)", "outboxd": "outboxd", "dbz": "Debezium",
                "outboxd[exactly-once]": "outboxd exactly-once"})
EOS = "exactly-once"
VARIANT_COLORS = ["#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]


# --------------------------------------------------------------------------- numbers


def fmt(v, nd=0, unit=""):
    if v is None:
        return "–"
    if isinstance(v, float) and nd == 0:
        return f"{v:,.0f}{unit}"
    return f"{v:,.{nd}f}{unit}"


def ms(v):
    if v is None:
        return "–"
    return f"{v:.1f}" if v < 100 else f"{v:,.0f}"


def ratio(a, b):
    if not (a and b):
        return "–"
    r = a / b
    return f"{r:.2f}×" if r >= 0.095 else f"{r:.3f}×"


def best(entry: dict, kind: str, variant=None) -> dict | None:
    """The fastest successful run of a kind (the limit and outboxd run twice)."""
    runs = [r for r in entry["runs"].values()
            if r.get("kind") == kind and r.get("variant") == variant and r.get("ok")]
    return max(runs, key=lambda r: r["events_per_s"], default=None)


def runs_of(entry: dict, kind: str, variant=None) -> list[dict]:
    return [r for r in entry["runs"].values() if r.get("kind") == kind and r.get("variant") == variant]


def step_label(s: dict) -> str:
    r = s["offered_events_per_s"]
    return f"{r / 1000:g}k/s ×{s['k']}"


def summary(results: dict) -> dict:
    """The numbers the targets talk about. Drain rates per kind, ascending; "eos" is
    outboxd with exactly-once delivery."""
    out: dict = {"drain": {}, "latency": {}}
    for e in results.get("drain", []):
        kinds = {"limit": ("limit", None), "outboxd": ("outboxd", None), "dbz": ("dbz", None),
                 "eos": ("outboxd", EOS)}
        d: dict = {"rates": {}}
        for key, (kind, variant) in kinds.items():
            runs = runs_of(e, kind, variant)
            b = best(e, kind, variant)
            d["rates"][key] = sorted(r["events_per_s"] for r in runs if r.get("ok"))
            d[key] = b and b["events_per_s"]
            d[key + "_rss"] = max((r.get("peak_rss_mb") or 0 for r in runs), default=None)
            d[key + "_cpu"] = max((r.get("cpu_s") or 0 for r in runs), default=None)
        out["drain"][e["k"]] = d
    for system, lat in main_relays(results.get("latency", {})).items():
        for s in lat.get("steps", []):
            out["latency"].setdefault((s["offered_events_per_s"], s["k"]), {})[system] = s
    return out


def cell(d: dict, kind: str) -> str:
    rates = d["rates"].get(kind) or []
    if not rates:
        return "–"
    if len(rates) == 1:
        return fmt(rates[0])
    return f"{fmt(rates[-1])} ({', '.join(fmt(r) for r in rates[:-1])})"


def yes(ok: bool) -> str:
    return "yes" if ok else "**no**"


def main_relays(latency: dict) -> dict:
    """The latency results without the sweep's relays (they have their own section)."""
    return {n: r for n, r in latency.items() if not r.get("sweep_setting")}


def visible(step: dict | None, key: str):
    return step and (step.get("visible") or {}).get(key)
