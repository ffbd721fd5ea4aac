"""Renders a bench run (results.json) as markdown and a chart.

Always writes report.md and chart.png into the run directory. With publish=True it
also replaces the generated part of docs/benchmarks.md (between the BEGIN/END markers,
appended when missing; everything else in the file is kept), draws
docs/benchmarks.png and keeps a copy of the raw results in bench/results/.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"
CHART = ROOT / "docs" / "benchmarks.png"
BEGIN = "<!-- BEGIN bench/run.sh output: generated, edit bench/report.py instead -->"
END = "<!-- END bench/run.sh output -->"

class _Names(dict):
    def __missing__(self, key):
        return key


NAMES = _Names({"limit": "limit (pg_recvlogical)", "outboxd": "outboxd", "dbz": "Debezium"})
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
    """The numbers the targets talk about."""
    out: dict = {"drain": {}, "latency": {}, "cost": {}}
    for e in results.get("drain", []):
        lim, obx, dbz = best(e, "limit"), best(e, "outboxd"), best(e, "dbz")
        rates = {kind: sorted(r["events_per_s"] for r in runs_of(e, kind) if r.get("ok"))
                 for kind in ("limit", "outboxd", "dbz")}
        out["drain"][e["k"]] = {"rates": rates,
            "limit": lim and lim["events_per_s"], "outboxd": obx and obx["events_per_s"],
            "dbz": dbz and dbz["events_per_s"],
            "outboxd_rss": max((r.get("peak_rss_mb") or 0 for r in runs_of(e, "outboxd")), default=None),
            "dbz_rss": max((r.get("peak_rss_mb") or 0 for r in runs_of(e, "dbz")), default=None),
            "outboxd_cpu": max((r.get("cpu_s") or 0 for r in runs_of(e, "outboxd")), default=None),
            "dbz_cpu": max((r.get("cpu_s") or 0 for r in runs_of(e, "dbz")), default=None),
        }
    for system, lat in results.get("latency", {}).items():
        for s in lat.get("steps", []):
            out["latency"].setdefault((s["offered_events_per_s"], s["k"]), {})[system] = s
    return out


# ---------------------------------------------------------------------------- markdown


def targets_table(results: dict, sm: dict) -> list[str]:
    lines = ["| target | measured | met? |", "| --- | --- | --- |"]
    for k, d in sorted(sm["drain"].items()):
        r_lim = d["outboxd"] / d["limit"] if d["outboxd"] and d["limit"] else None
        r_dbz = d["outboxd"] / d["dbz"] if d["outboxd"] and d["dbz"] else None
        lines.append(f"| drain ≥ 0.8 × limit (k={k}) | {fmt(d['outboxd'])} vs {fmt(d['limit'])} events/s = "
                     f"{ratio(d['outboxd'], d['limit'])} | {yes(r_lim is not None and r_lim >= 0.8)} |")
        lines.append(f"| drain ≥ 5 × Debezium (k={k}) | {fmt(d['outboxd'])} vs {fmt(d['dbz'])} events/s = "
                     f"{ratio(d['outboxd'], d['dbz'])} | {yes(r_dbz is not None and r_dbz >= 5)} |")
    for (rate, k), want in (((1000, 1), 20), ((1000, 10), 20), ((10000, 10), 50)):
        s = sm["latency"].get((rate, k), {}).get("outboxd")
        if s:
            lines.append(f"| p99 ≤ {want} ms at {rate // 1000}k events/s (transactions of {k}) | "
                         f"{ms(s['p99_ms'])} ms | {yes(s['p99_ms'] is not None and s['p99_ms'] <= want)} |")
    for k, d in sorted(sm["drain"].items()):
        events = next(e["events"] for e in results["drain"] if e["k"] == k)
        if d["outboxd_rss"]:
            lines.append(f"| peak RSS ≤ 64 MB ({events:,}-event drain, k={k}) | {fmt(d['outboxd_rss'], 1)} MB | "
                         f"{yes(d['outboxd_rss'] <= 64)} |")
        if d["outboxd_rss"] and d["dbz_rss"]:
            lines.append(f"| peak RSS ≥ 10 × less than Debezium (k={k}) | {fmt(d['dbz_rss'], 0)} ÷ "
                         f"{fmt(d['outboxd_rss'], 1)} MB = {d['dbz_rss'] / d['outboxd_rss']:.1f}× | "
                         f"{yes(d['dbz_rss'] / d['outboxd_rss'] >= 10)} |")
    return lines


def variant_table(results: dict, sm: dict) -> list[str]:
    """outboxd under other settings, in the same run, next to its defaults."""
    names = []
    for e in results.get("drain", []):
        for r in e["runs"].values():
            v = r.get("variant")
            if r.get("kind") == "outboxd" and v and v != "perf" and v not in names:
                names.append(v)
    for key in results.get("latency", {}):
        if key.startswith("outboxd[") and key[8:-1] not in names:
            names.append(key[8:-1])
    if not names:
        return []
    envs = dict(results.get("options", {}).get("variants") or [])
    L = ["### outboxd with other settings (same run)", ""]
    for v in names:
        env = envs.get(v, {})
        L += [f"**{v}** (" + ", ".join(f"`{k}={val}`" for k, val in env.items()) + "), next to the defaults:", "",
              "| | outboxd defaults | " + v + " | " + v + " ÷ limit | " + v + " ÷ Debezium |",
              "| --- | --- | --- | --- | --- |"]
        for e in results.get("drain", []):
            k = e["k"]
            d = sm["drain"].get(k, {})
            vr = best(e, "outboxd", v)
            vrate = vr and vr["events_per_s"]
            L.append(f"| drain, events/s (transactions of {k}) | {fmt(d.get('outboxd'))} | {fmt(vrate)} | "
                     f"{ratio(vrate, d.get('limit'))} | {ratio(vrate, d.get('dbz'))} |")
        for e in results.get("drain", []):
            vr = [r for r in runs_of(e, "outboxd", v)]
            if vr:
                d = sm["drain"][e["k"]]
                L.append(f"| peak RSS MB / CPU s of the drain (k={e['k']}) | {fmt(d['outboxd_rss'], 1)} / "
                         f"{fmt(d['outboxd_cpu'], 2)} | {fmt(max(r.get('peak_rss_mb') or 0 for r in vr), 1)} / "
                         f"{fmt(max(r.get('cpu_s') or 0 for r in vr), 2)} | | |")
        lat = results.get("latency", {})
        base = {(s["offered_events_per_s"], s["k"]): s for s in lat.get("outboxd", {}).get("steps", [])}
        var = {(s["offered_events_per_s"], s["k"]): s for s in lat.get(f"outboxd[{v}]", {}).get("steps", [])}
        dbz = {(s["offered_events_per_s"], s["k"]): s for s in lat.get("dbz", {}).get("steps", [])}
        for key in sorted(set(base) | set(var)):
            b, x, z = base.get(key), var.get(key), dbz.get(key)
            L.append(f"| p50 / p99 ms at {key[0]:,} events/s (transactions of {key[1]}) | "
                     f"{ms(b and b['p50_ms'])} / {ms(b and b['p99_ms'])} | {ms(x and x['p50_ms'])} / "
                     f"{ms(x and x['p99_ms'])}{'' if not x or x['sustained'] else ' (not sustained)'} | | "
                     f"{ratio(x and x['p99_ms'], z and z['p99_ms'])} (p99) |")
        hs = lat.get(f"outboxd[{v}]", {}).get("highest_sustained")
        hb = lat.get("outboxd", {}).get("highest_sustained")
        hz = lat.get("dbz", {}).get("highest_sustained")
        if hs or hb:
            L.append(f"| highest sustained rate on the ladder, events/s | {fmt(hb and hb['offered_events_per_s'])} | "
                     f"{fmt(hs and hs['offered_events_per_s'])} | | "
                     f"{ratio(hs and hs['offered_events_per_s'], hz and hz['offered_events_per_s'])} |")
        L.append("")
    return L


def cell(d: dict, kind: str) -> str:
    rates = d["rates"].get(kind) or []
    if not rates:
        return "–"
    if len(rates) == 1:
        return fmt(rates[0])
    return f"{fmt(rates[-1])} ({', '.join(fmt(r) for r in rates[:-1])})"


def yes(ok: bool) -> str:
    return "yes" if ok else "**no**"


def render(results: dict, chart_name: str) -> str:
    env = results.get("environment", {})
    opts = results.get("options", {})
    sm = summary(results)
    L: list[str] = []
    L += [BEGIN, "", "## Relays side by side: the slot-read limit, outboxd and Debezium", ""]
    command = results.get("command") or ("bench/run.sh" + (" --quick" if results.get("preset") == "quick" else ""))
    L += [f"Generated by `{command}` "
          f"(preset **{results.get('preset')}**, run `{results.get('run_id')}`, {env.get('date')}). "
          + ("Raw numbers: `results.json` next to this report. " if chart_name == "chart.png" else
             f"Raw numbers: `bench/results/{results.get('preset')}.json`. ")
          + "How to re-run and what each "
          "phase measures: see *Method* below.", ""]
    L += [f"![drain throughput, latency and cost]({chart_name})", ""]

    # Headline table.
    L += ["### Summary", ""]
    L += ["| | limit (pg_recvlogical) | outboxd | Debezium | outboxd ÷ limit | outboxd ÷ Debezium |",
          "| --- | --- | --- | --- | --- | --- |"]
    for k, d in sorted(sm["drain"].items()):
        L.append(f"| drain, events/s (transactions of {k}) | {cell(d, 'limit')} | {cell(d, 'outboxd')} | "
                 f"{cell(d, 'dbz')} | {ratio(d['outboxd'], d['limit'])} | {ratio(d['outboxd'], d['dbz'])} |")
    for (rate, k), per in sorted(sm["latency"].items()):
        o, z = per.get("outboxd"), per.get("dbz")
        L.append(f"| p99 latency, ms, at {rate:,} events/s (transactions of {k}) | – | "
                 f"{ms(o and o['p99_ms'])} | {ms(z and z['p99_ms'])} | – | "
                 f"{ratio(o and o['p99_ms'], z and z['p99_ms'])} |")
    hs_o = results.get("latency", {}).get("outboxd", {}).get("highest_sustained")
    hs_d = results.get("latency", {}).get("dbz", {}).get("highest_sustained")
    if hs_o or hs_d:
        L.append(f"| highest sustained rate on the ladder, events/s | – | {fmt(hs_o and hs_o['offered_events_per_s'])} | "
                 f"{fmt(hs_d and hs_d['offered_events_per_s'])} | – | "
                 f"{ratio(hs_o and hs_o['offered_events_per_s'], hs_d and hs_d['offered_events_per_s'])} |")
    for k, d in sorted(sm["drain"].items()):
        L.append(f"| peak RSS during the drain, MB (k={k}) | – | {fmt(d['outboxd_rss'], 1)} | "
                 f"{fmt(d['dbz_rss'], 0)} | – | {ratio(d['outboxd_rss'], d['dbz_rss'])} |")
        L.append(f"| CPU seconds for the drain (k={k}) | – | {fmt(d['outboxd_cpu'], 2)} | "
                 f"{fmt(d['dbz_cpu'], 2)} | – | {ratio(d['outboxd_cpu'], d['dbz_cpu'])} |")
    L += ["", "Drain rates: the better of two runs for the limit and outboxd (each runs first "
          "and last; the other run in brackets), Debezium's single run; peak RSS and CPU seconds: the higher of outboxd's two runs. Every ratio is outboxd's value divided by the "
          "other's: above 1 is better for throughput, below 1 is better for latency, memory and CPU.", ""]

    L += variant_table(results, sm)
    L += ["### Targets (issue 5)", "", "For outboxd as shipped (its defaults):", ""] + targets_table(results, sm) + [""]

    # Drain details.
    L += ["### Drain", ""]
    for e in results.get("drain", []):
        w = e["writer"]
        L += [f"**Transactions of {e['k']}**: {e['events']:,} events, {e['wal_bytes'] / 2**20:,.0f} MiB of WAL "
              f"({e['wal_start']} → {e['wal_end']}, last commit at {e['last_commit']}), written at "
              f"{fmt(w['events_per_s'])} events/s by {opts.get('writers')} writers with the relays stopped. "
              f"Load average before/after: {e['loadavg_before'][0]:.1f} / {e['loadavg_after'][0]:.1f}.", ""]
        L += ["| reader | seconds | events/s | first confirm, s | all in Kafka, s | reader CPU s | "
              "reader µs/event | walsender CPU s | broker CPU s | machine busy | peak RSS MB |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for name, r in e["runs"].items():
            cpu = r.get("cpu_s") if r["kind"] != "limit" else r.get("client_cpu_s")
            # (pg_recvlogical's getrusage peak would include the forked harness, so none.)
            rss = r.get("peak_rss_mb") if r["kind"] != "limit" else None
            per = cpu / e["events"] * 1e6 if cpu else None
            label = {"limit_a": "limit, 1st", "limit_b": "limit, 2nd", "outboxd_a": "outboxd, 1st",
                     "outboxd_b": "outboxd, 2nd", "dbz": "Debezium",
                     "outboxd[perf]": "outboxd under perf (not compared)"}.get(name, name)
            status = fmt(r.get("events_per_s")) if r.get("ok") else f"failed: {r.get('error')}"
            L.append(f"| {label} | {r['seconds']:.2f} | {status} | {fmt(r.get('first_confirm_s'), 2)} | "
                     f"{fmt(r.get('kafka_complete_s'), 2)} | {fmt(cpu, 2)} | {fmt(per, 1)} | "
                     f"{fmt(r.get('walsender_cpu_s'), 2)} | {fmt(r.get('broker_cpu_s'), 2)} | "
                     f"{fmt((r.get('box_cpu_util') or 0) * 100, 0)}% | {fmt(rss, 1)} |")
        L.append("")
        threads = {n: r.get("threads_cpu_s") for n, r in e["runs"].items() if r.get("threads_cpu_s")}
        if threads:
            L.append("CPU seconds by thread (top 6): " + "; ".join(
                f"{n}: " + ", ".join(f"`{t}` {c:.2f}" for t, c in list(tc.items())[:6])
                for n, tc in threads.items()) + ".")
            L.append("")

    # Latency.
    lat = results.get("latency", {})
    if lat:
        L += ["### Latency", "",
              "Broker `LogAppendTime` − PostgreSQL commit time (`pg_xact_commit_timestamp`) per event, "
              "in ms (LogAppendTime has millisecond resolution, so a value can be up to 1 ms low). "
              "Both relays run side by side on their own databases; the writer feeds one at a time, "
              "alternating step by step. A step counts as *sustained* when the writer achieved ≥ "
              f"{results.get('sustain_writer_fraction', 0.95) * 100:.0f}% of the offered rate, the relay had every event in Kafka within 30 s after the step "
              "and p99 ≤ 1 s.", "",
              "| relay | offered events/s | transactions of | achieved | events | p50 | p90 | p99 | p99.9 | max | "
              "relay CPU s | broker CPU s | machine busy | sustained |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for system, res in lat.items():
            for s in res.get("steps", []):
                L.append(f"| {NAMES[system]} | {s['offered_events_per_s']:,} | {s['k']} | "
                         f"{fmt(s['achieved_events_per_s'])} | {s['events']:,} | {ms(s['p50_ms'])} | "
                         f"{ms(s['p90_ms'])} | {ms(s['p99_ms'])} | {ms(s['p999_ms'])} | {ms(s['max_ms'])} | "
                         f"{fmt(s.get('relay_cpu_s'), 2)} | {fmt(s.get('broker_cpu_s'), 2)} | "
                         f"{fmt((s.get('box_cpu_util') or 0) * 100, 0)}% | "
                         f"{'yes' if s['sustained'] else 'no: ' + (s['why'] or '')} |")
        L.append("")
        for system, res in lat.items():
            hs = res.get("highest_sustained")
            bad = res.get("first_unsustained")
            txt = (f"{NAMES[system]}: highest sustained rate {hs['offered_events_per_s']:,} events/s "
                   f"(p50 {ms(hs['p50_ms'])}, p99 {ms(hs['p99_ms'])}, p99.9 {ms(hs['p999_ms'])} ms)"
                   if hs else f"{NAMES[system]}: no step sustained")
            if bad:
                txt += (f"; at {bad['offered_events_per_s']:,} events/s: {bad['why']}"
                        + (" (the writer, not the relay, was the bound)" if bad.get("writer_bound") else ""))
            elif res.get("steps"):
                txt += "; every rate tried was sustained (the ladder ended)"
            if res.get("error"):
                txt += f"; error: {res['error']}"
            txt += (f". Peak RSS over the whole latency phase {fmt(res.get('relay_peak_rss_mb'), 1)} MB, "
                    f"CPU {fmt(res.get('relay_cpu_s_steps'), 1)} s over its steps.")
            L += [f"- {txt}"]
        L.append("")

    # Method and settings.
    if results.get("flamegraphs"):
        L += ["Flame graphs of outboxd from this run (`--profile`: perf at 499 Hz with DWARF call "
              "graphs, taken in an extra drain after the measured ones and in an extra, unmeasured "
              "10k events/s step after the latency ladder): " + ", ".join(
                  f"[{n}](../bench/results/{results.get('preset')}-{n})" for n in results["flamegraphs"]) + ".", ""]
    L += ["### Method", "",
          "```sh", "bench/run.sh            # full preset: writes this section, docs/benchmarks.png, bench/results/full.json",
          "bench/run.sh --quick    # 50k events, k = 10, 10 s latency steps, no ladder (bench/.work/runs/ only)",
          "bench/run.sh --help     # all options", "```", "",
          "`bench/run.sh` installs or resolves what is missing (Debian's PostgreSQL, a JDK, Maven; "
          "the Python packages of `bench/requirements.txt`; Kafka's jars as `scripts/kafka.sh` does; "
          f"Kafka Connect {env.get('connect', '4.3.1')} and the Debezium Postgres connector plugin archive "
          f"{env.get('debezium')} from Maven Central), builds outboxd in release mode and runs "
          "`bench/bench.py`, which:", "",
          f"1. starts its own PostgreSQL ({env.get('postgres', '?')}, 127.0.0.1:54400: `wal_level=logical`, "
          "`track_commit_timestamp=on`, `fsync=off`, `synchronous_commit=on`, `autovacuum=off`, "
          "`shared_buffers=512MB`) and its own single-node Kafka broker (127.0.0.1:19192, "
          "`scripts/kafka.sh`'s broker settings and JVM options, `log.message.timestamp.type=LogAppendTime`), "
          "both fresh, and warms the broker up with an idempotent producer (500,000 records);",
          f"2. **drain**, per transaction size k: creates a database with a Debezium-style outbox table "
          f"(`id uuid`, `aggregatetype`, `aggregateid`, `type`, `payload jsonb`), a publication, one "
          f"pgoutput slot per reader and {opts.get('partitions')} partitions for each of the 4 topics "
          f"`bench.<relay>.<run>.outbox.event.<aggregatetype>`, all *before* writing, so that every slot "
          f"sees the same WAL; then writes N events (~257-byte JSON payloads, 1,000 aggregates over 4 "
          f"aggregate types) with `pgbench` ({opts.get('writers')} connections, one `INSERT … SELECT "
          f"generate_series(1, k)` per transaction); then each reader drains its slot in turn: "
          "`pg_recvlogical --start --endpos=<WAL end> -o proto_version=1 -o publication_names=… -f /dev/null` "
          "(timed until it exits; it confirms the slot as it stops), outboxd, outboxd with each "
          "variant setting (full preset: `caps4x`, 32 MiB in flight and a 16 MiB read buffer; `2threads`, `server.worker_threads=2`), Debezium, outboxd again, pg_recvlogical again "
          "(with `--profile`, one more outboxd drain under perf). A relay's time runs from process start until the slot's "
          "`confirmed_flush_lsn` reaches the last commit of the workload (polled every 50 ms), which "
          "happens only after Kafka acknowledged every record; the topics are then checked to hold "
          "exactly N records. CPU seconds and peak RSS (`VmHWM`) come from `/proc` at that moment, "
          "the walsender's CPU from its process, the broker's CPU and the machine's busy share "
          "over the same window;",
          "3. **latency**: both relays attached to fresh slots, a warm-up, then per step `pgbench -R` "
          "(Poisson arrivals) at a fixed offered rate for the step's duration; every record of the "
          "step is read back (header `id`) and matched to its row's commit timestamp;",
          "4. writes `results.json`, this markdown and the chart (`bench/report.py`).", "",
          "Settings:", "",
          "- outboxd: defaults (`linger.ms=5`, `acks=all`, idempotence, 100,000 records / 8 MiB in "
          "flight (payload + per-record overhead), 4 MiB read buffer); the harness sets only the URL, slot, publication, table, brokers, "
          f"topic template and metrics address{extra_env(opts)}.",
          "- Debezium: `connector.class=io.debezium.connector.postgresql.PostgresConnector`, "
          "`plugin.name=pgoutput`, the pre-created slot and publication "
          "(`publication.autocreate.mode=disabled`), `snapshot.mode=no_data`, "
          "`table.include.list=public.outbox`, `tombstones.on.delete=false`; the Outbox Event Router "
          "(`transforms.outbox.type=io.debezium.transforms.outbox.EventRouter`, "
          "`route.topic.replacement=bench.dbz.<run>.outbox.event.${routedByValue}`); StringConverter for "
          "keys and values (so the same key and value bytes as outboxd's `key_format=string`). Tuned as a "
          "careful user would: " + ", ".join(f"`{k}={v}`" for k, v in results.get("debezium_tuning", {}).items())
          + ". Kafka Connect standalone with its default producer settings, started like "
          "`bin/connect-standalone.sh` (`-Xms256M -Xmx2G`, G1).", "",
          "Machine and versions:", "",
          f"- {env.get('cpus')} CPUs ({env.get('cpu_model')}), {env.get('mem_gib')} GiB RAM, "
          f"kernel {env.get('kernel')}, {env.get('os')}; shared with other work: load average "
          f"{fmt_load(env.get('loadavg_start'))} at the start, {fmt_load(env.get('loadavg_end'))} at the end.",
          f"- PostgreSQL {env.get('postgres')}; Kafka {env.get('kafka')}; Kafka Connect {env.get('connect')}; "
          f"Debezium {env.get('debezium')}; {env.get('java')}.",
          f"- outboxd {env.get('outboxd')}, {env.get('rustc')}, rdkafka-sys {env.get('rdkafka_sys')} "
          "(librdkafka, built from source).", ""]
    L += [END]
    return "\n".join(L) + "\n"


def fmt_load(v):
    return "/".join(f"{x:.1f}" for x in v) if v else "–"


def extra_env(opts: dict) -> str:
    env = opts.get("outboxd_env") or {}
    return (" plus " + ", ".join(f"`{k}={v}`" for k, v in env.items())) if env else ""


# ------------------------------------------------------------------------------- chart


def chart(results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"limit": "#9e9e9e", "outboxd": "#1f77b4", "dbz": "#d62728"}
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    sm = summary(results)

    ax = axes[0][0]
    ks = sorted(sm["drain"])
    width = 0.27
    for i, kind in enumerate(("limit", "outboxd", "dbz")):
        vals = [sm["drain"][k][kind] or 0 for k in ks]
        bars = ax.bar([x + (i - 1) * width for x in range(len(ks))], vals, width, label=NAMES[kind],
                      color=colors[kind])
        for b, v in zip(bars, vals):
            ax.annotate(f"{v / 1000:.1f}k", (b.get_x() + b.get_width() / 2, v), ha="center",
                        va="bottom", fontsize=8)
    ax.set_xticks(range(len(ks)), [f"transactions of {k}" for k in ks])
    ax.set_ylabel("events/s")
    ax.set_title("Drain throughput (backlog, time until the slot is confirmed)")
    ax.legend(fontsize=8)

    ax = axes[0][1]
    pick = next((e for e in results.get("drain", []) if e["k"] == 10), None) or \
        (results.get("drain") or [None])[0]
    if pick:
        for name, r in pick["runs"].items():
            if r.get("variant") or not r.get("curve") or name in ("limit_b", "outboxd_b"):
                continue
            t = [p[0] for p in r["curve"]]
            f = [p[1] * 100 for p in r["curve"]]
            ax.plot(t, f, label=NAMES[r["kind"]], color=colors[r["kind"]])
        ax.set_xlabel("seconds since start")
        ax.set_ylabel("% of the workload's WAL")
        ax.set_title(f"Drain progress, transactions of {pick['k']} "
                     "(limit: sent; relays: confirmed)")
        ax.legend(fontsize=8)

    ax = axes[1][0]
    lat = results.get("latency", {})
    labels = []
    for res in lat.values():
        for s in res.get("steps", []):
            lab = step_label(s)
            if lab not in labels:
                labels.append(lab)
    if labels:
        systems = list(lat)
        for i, name in enumerate(n for n in systems if n not in colors):
            colors[name] = VARIANT_COLORS[i % len(VARIANT_COLORS)]
        width = 0.8 / max(1, len(systems))
        for i, system in enumerate(systems):
            by = {step_label(s): s for s in lat[system].get("steps", [])}
            xs = [x + (i - (len(systems) - 1) / 2) * width for x in range(len(labels))]
            p50 = [by[l]["p50_ms"] if l in by and by[l]["p50_ms"] else 0 for l in labels]
            p99 = [by[l]["p99_ms"] if l in by and by[l]["p99_ms"] else 0 for l in labels]
            p999 = [by[l]["p999_ms"] if l in by and by[l]["p999_ms"] else 0 for l in labels]
            ax.bar(xs, p999, width, color=colors[system], alpha=0.25,
                   label=f"{NAMES[system]} p99.9")
            ax.bar(xs, p99, width, color=colors[system], alpha=0.55, label=f"{NAMES[system]} p99")
            ax.bar(xs, p50, width, color=colors[system], alpha=1.0, label=f"{NAMES[system]} p50")
        ax.set_yscale("log")
        ax.set_xticks(range(len(labels)), labels, fontsize=8)
        ax.set_ylabel("ms (log)")
        ax.set_title("Latency: broker append − commit (offered rate × events per transaction)")
        ax.legend(fontsize=7, ncol=2)

    ax = axes[1][1]
    if ks:
        k = 10 if 10 in sm["drain"] else ks[0]
        d = sm["drain"][k]
        groups = [("peak RSS, MB", d["outboxd_rss"], d["dbz_rss"], "{:.0f} MB"),
                  ("CPU seconds", d["outboxd_cpu"], d["dbz_cpu"], "{:.1f} s")]
        for i, (label, o, z, f) in enumerate(groups):
            for j, (v, kind) in enumerate(((o, "outboxd"), (z, "dbz"))):
                if not v:
                    continue
                b = ax.bar(i + (j - 0.5) * 0.38, v, 0.38, color=colors[kind],
                           label=NAMES[kind] if i == 0 else None)
                ax.annotate(f.format(v), (b[0].get_x() + b[0].get_width() / 2, v), ha="center",
                            va="bottom", fontsize=8)
        ax.set_yscale("log")
        ax.set_xticks(range(len(groups)), [g[0] for g in groups])
        ax.set_title(f"Cost of the drain, transactions of {k} (log scale)")
        ax.legend(fontsize=8)

    env = results.get("environment", {})
    fig.suptitle(f"outboxd vs the slot-read limit and Debezium — {results.get('preset')} preset, "
                 f"{env.get('cpus')} CPUs, {env.get('date')}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------ output


def write(results: dict, rundir: Path, publish: bool = False) -> None:
    rundir = Path(rundir)
    chart(results, rundir / "chart.png")
    (rundir / "report.md").write_text(render(results, "chart.png"))
    print(f"report: {rundir / 'report.md'}, {rundir / 'chart.png'}")
    if not publish:
        return
    shutil.copy(rundir / "chart.png", CHART)
    section = render(results, "benchmarks.png")
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        text = head + section.rstrip("\n") + tail
    else:
        text = text.rstrip("\n") + "\n\n" + section
    DOC.write_text(text)
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    for old in out.glob(f"{results.get('preset')}-flamegraph-*.svg"):
        old.unlink()
    for name in results.get("flamegraphs", []):
        shutil.copy(rundir / name, out / f"{results.get('preset')}-{name}")
    (out / f"{results.get('preset')}.json").write_text(json.dumps(results, indent=1, default=str))
    print(f"published: {DOC}, {CHART}, {out / (results.get('preset') + '.json')}")
