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

from report_chart import chart
from report_eos import comparison, sweep_section, takeover_section
from report_eos import targets as eos_targets
from report_fmt import NAMES, best, cell, fmt, main_relays, ms, ratio, runs_of, summary, visible, yes
from report_method import method

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"
CHART = ROOT / "docs" / "benchmarks.png"
BEGIN = "<!-- BEGIN bench/run.sh output: generated, edit bench/report.py instead -->"
END = "<!-- END bench/run.sh output -->"


# ---------------------------------------------------------------------------- markdown

RUN_LABELS = {"limit_a": "limit, 1st", "limit_b": "limit, 2nd", "outboxd_a": "outboxd, 1st",
              "outboxd_b": "outboxd, 2nd", "outboxd[exactly-once]_a": "outboxd exactly-once, 1st",
              "outboxd[exactly-once]_b": "outboxd exactly-once, 2nd", "dbz": "Debezium",
              "outboxd[perf]": "outboxd under perf (not compared)"}


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
    envs = dict(results.get("options", {}).get("variants") or [])
    names = [v for v in envs if any(runs_of(e, "outboxd", v) for e in results.get("drain", []))
             or f"outboxd[{v}]" in results.get("latency", {})]
    if not names:
        return []
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

    L += comparison(results, sm)
    L += variant_table(results, sm)
    L += ["### Targets (issue 5)", "", "For outboxd as shipped (its defaults):", ""] + targets_table(results, sm) + [""]
    L += eos_targets(results, sm)

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
            label = RUN_LABELS.get(name, name)
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

    L += latency_section(results)
    L += sweep_section(results)
    L += takeover_section(results)

    # Method and settings.
    if results.get("flamegraphs"):
        L += ["Flame graphs of outboxd from this run (`--profile`: perf at 499 Hz with DWARF call "
              "graphs, taken in an extra drain after the measured ones and in an extra, unmeasured "
              "10k events/s step after the latency ladder): " + ", ".join(
                  f"[{n}](../bench/results/{results.get('preset')}-{n})" for n in results["flamegraphs"]) + ".", ""]
    L += method(results)
    L += [END]
    return "\n".join(L) + "\n"


def latency_section(results: dict) -> list[str]:
    lat = main_relays(results.get("latency", {}))
    if not lat:
        return []
    L = ["### Latency", "",
         "Per event, from its PostgreSQL commit (`pg_xact_commit_timestamp`) to the broker's "
         "`LogAppendTime` (*appended*; millisecond resolution, so a value can be up to 1 ms low) "
         "and to the moment a `read_committed` consumer, fetching all along, got it (*visible*; "
         "an exactly-once record becomes visible when its Kafka transaction commits), in ms. "
         "The relays run side by side on their own databases; the writer feeds one at a time, "
         "alternating step by step. A step counts as *sustained* when the writer achieved ≥ "
         f"{results.get('sustain_writer_fraction', 0.95) * 100:.0f}% of the offered rate, the "
         "consumer had every event within 30 s after the step and the visible p99 ≤ 1 s.", "",
         "| relay | offered events/s | transactions of | achieved | events | appended p50 | p99 | p99.9 | "
         "visible p50 | p99 | p99.9 | max | relay CPU s | broker CPU s | machine busy | sustained |",
         "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for system, res in lat.items():
        for s in res.get("steps", []):
            L.append(f"| {NAMES[system]} | {s['offered_events_per_s']:,} | {s['k']} | "
                     f"{fmt(s['achieved_events_per_s'])} | {s['events']:,} | {ms(s['p50_ms'])} | "
                     f"{ms(s['p99_ms'])} | {ms(s['p999_ms'])} | {ms(visible(s, 'p50_ms'))} | "
                     f"{ms(visible(s, 'p99_ms'))} | {ms(visible(s, 'p999_ms'))} | {ms(visible(s, 'max_ms'))} | "
                     f"{fmt(s.get('relay_cpu_s'), 2)} | {fmt(s.get('broker_cpu_s'), 2)} | "
                     f"{fmt((s.get('box_cpu_util') or 0) * 100, 0)}% | "
                     f"{'yes' if s['sustained'] else 'no: ' + (s['why'] or '')} |")
    L.append("")
    for system, res in lat.items():
        hs = res.get("highest_sustained")
        bad = res.get("first_unsustained")
        txt = (f"{NAMES[system]}: highest sustained rate {hs['offered_events_per_s']:,} events/s "
               f"(visible p50 {ms(visible(hs, 'p50_ms'))}, p99 {ms(visible(hs, 'p99_ms'))}, "
               f"p99.9 {ms(visible(hs, 'p999_ms'))} ms)"
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
    return L + [""]


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
    if results.get("flamegraphs"):
        # Only a --profile run replaces the flame graphs (docs may cite older ones).
        for old in out.glob(f"{results.get('preset')}-flamegraph-*.svg"):
            old.unlink()
        for name in results["flamegraphs"]:
            shutil.copy(rundir / name, out / f"{results.get('preset')}-{name}")
    (out / f"{results.get('preset')}.json").write_text(json.dumps(results, indent=1, default=str))
    print(f"published: {DOC}, {CHART}, {out / (results.get('preset') + '.json')}")
