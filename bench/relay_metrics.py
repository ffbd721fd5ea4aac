"""outboxd's /metrics, scraped: Kafka transactions and their commit times (exactly-once),
events published. Two scrapes give the numbers of the window between them."""

from __future__ import annotations

import math
import re
import urllib.request

SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")
LE = re.compile(r'le="([^"]+)"')

TRANSACTIONS = "outboxd_kafka_transactions_total"
COMMIT = "outboxd_kafka_commit_seconds"
EVENTS = "outboxd_events_published_total"
SLOW_S = 0.064


def scrape(address: str, timeout: float = 2.0) -> dict[str, float] | None:
    """Every sample of http://address/metrics by name and labels; None when the relay
    does not answer (not started yet, or gone)."""
    try:
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=timeout) as r:
            text = r.read().decode()
    except OSError:
        return None
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = SAMPLE.match(line)
        if m and not line.startswith("#"):
            out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return out


def _buckets(sample: dict[str, float]) -> list[tuple[float, float]]:
    """(upper bound, cumulative count) of the commit histogram, ascending."""
    out = []
    for key, value in sample.items():
        if key.startswith(COMMIT + "_bucket"):
            le = LE.search(key).group(1)
            out.append((math.inf if le == "+Inf" else float(le), value))
    return sorted(out)


def _quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """Prometheus' histogram_quantile: linear within the bucket that holds rank q."""
    total = buckets[-1][1] if buckets else 0
    if not total:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for upper, cum in buckets:
        if cum >= rank:
            if math.isinf(upper):
                return lower
            return lower + (upper - lower) * ((rank - below) / max(cum - below, 1e-9))
        lower, below = upper, cum
    return lower


def window(before: dict[str, float] | None, after: dict[str, float] | None) -> dict:
    """What happened between two scrapes: Kafka transactions committed, events per
    transaction, and commit time (mean, p50, p99 in ms; the quantiles estimated from
    the histogram's buckets, powers of two from 0.5 ms)."""
    if after is None:
        return {}
    before = before or {}

    def delta(key: str) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    txns = delta(TRANSACTIONS)
    events = delta(EVENTS)
    commits = delta(COMMIT + "_count")
    b0 = dict(_buckets(before))
    buckets = [(le, cum - b0.get(le, 0.0)) for le, cum in _buckets(after)]
    ms = lambda s: None if s is None else round(s * 1000, 2)  # noqa: E731
    return {
        "kafka_transactions": int(txns),
        "events_published": int(events),
        "events_per_transaction": round(events / txns, 1) if txns else None,
        "commit_mean_ms": ms(delta(COMMIT + "_sum") / commits) if commits else None,
        "commit_p50_ms": ms(_quantile(buckets, 0.5)),
        "commit_p99_ms": ms(_quantile(buckets, 0.99)),
        "commit_p999_ms": ms(_quantile(buckets, 0.999)),
        # Commits that took longer than 64 ms (a bucket bound): the pipeline waits for
        # each commit, so these show up in the latency tail.
        "slow_commits": int(commits - next((cum for le, cum in buckets if le >= SLOW_S), commits)),
    }
