"""The report's exactly-once sections: next to at-least-once, the targets of issue 11,
the transaction-size sweep and the takeovers."""

from __future__ import annotations

from report_fmt import EOS, best, fmt, ms, ratio, runs_of, visible, yes

# Issue 11: exactly-once against at-least-once in the same run.
DRAIN_RATIO = 0.8
P99_TARGETS = {(1000, 1): 25, (1000, 10): 25, (10000, 10): 60}
TAKEOVER_S = 1.0
EOS_RELAY = "outboxd[exactly-once]"


def rates_cell(runs: list[dict]) -> str:
    rates = sorted((r["events_per_s"] for r in runs if r.get("ok")), reverse=True)
    if not rates:
        return "–"
    return fmt(rates[0]) + (f" ({', '.join(fmt(r) for r in rates[1:])})" if len(rates) > 1 else "")


def commit_cell(r: dict | None) -> str:
    """Commit time mean / p99 (ms), and how many commits took over 64 ms."""
    if not r or not r.get("kafka_transactions"):
        return "–"
    slow = r.get("slow_commits")
    return (f"{ms(r.get('commit_mean_ms'))} / {ms(r.get('commit_p99_ms'))}"
            + (f" ({slow} over 64 ms)" if slow else ""))


def p_cell(step: dict | None) -> str:
    if not step:
        return "– / –"
    mark = "" if step["sustained"] else " (not sustained)"
    return f"{ms(visible(step, 'p50_ms'))} / {ms(visible(step, 'p99_ms'))}{mark}"


def steps_of(results: dict, relay: str) -> dict:
    return {(s["offered_events_per_s"], s["k"]): s
            for s in results.get("latency", {}).get(relay, {}).get("steps", [])}


def comparison(results: dict, sm: dict) -> list[str]:
    """Exactly-once next to at-least-once: drains, latency, cost, takeover."""
    if not any(d.get("eos") for d in sm["drain"].values()) and EOS_RELAY not in results.get("latency", {}):
        return []
    L = ["### Exactly-once next to at-least-once (same run)", "",
         "`kafka.delivery = \"exactly-once\"` with its defaults, against outboxd's default "
         "at-least-once delivery. Latency here is commit → *visible to a `read_committed` "
         "consumer* (an exactly-once record is visible only once its Kafka transaction "
         "committed), p50 / p99 in ms.", "",
         "| | at-least-once | exactly-once | exactly-once ÷ at-least-once |", "| --- | --- | --- | --- |"]
    for e in results.get("drain", []):
        k, d = e["k"], sm["drain"][e["k"]]
        L.append(f"| drain, events/s (transactions of {k}) | {rates_cell(runs_of(e, 'outboxd'))} | "
                 f"{rates_cell(runs_of(e, 'outboxd', EOS))} | {ratio(d['eos'], d['outboxd'])} |")
    for e in results.get("drain", []):
        k, d = e["k"], sm["drain"][e["k"]]
        L.append(f"| peak RSS MB / CPU s of the drain (k={k}) | {fmt(d['outboxd_rss'], 1)} / "
                 f"{fmt(d['outboxd_cpu'], 2)} | {fmt(d['eos_rss'], 1)} / {fmt(d['eos_cpu'], 2)} | "
                 f"{ratio(d['eos_cpu'], d['outboxd_cpu'])} (CPU) |")
    for e in results.get("drain", []):
        b = best(e, "outboxd", EOS)
        if b and b.get("kafka_transactions"):
            L.append(f"| Kafka transactions in the faster drain (k={e['k']}): count, events each, "
                     f"commit ms mean / p99 | – | {fmt(b['kafka_transactions'])}, "
                     f"{fmt(b.get('events_per_transaction'), 0)}, {commit_cell(b)} | |")
    alo, eos = steps_of(results, "outboxd"), steps_of(results, EOS_RELAY)
    for key in sorted(set(alo) | set(eos)):
        a, x = alo.get(key), eos.get(key)
        L.append(f"| p50 / p99 ms at {key[0]:,} events/s (transactions of {key[1]}) | {p_cell(a)} | "
                 f"{p_cell(x)} | {ratio(visible(x, 'p99_ms'), visible(a, 'p99_ms'))} (p99) |")
    for key in sorted(eos):
        x = eos[key]
        if x.get("kafka_transactions"):
            L.append(f"| Kafka transactions at {key[0]:,} events/s (×{key[1]}): count, events each, "
                     f"commit ms mean / p99 | – | {fmt(x['kafka_transactions'])}, "
                     f"{fmt(x.get('events_per_transaction'), 1)}, {commit_cell(x)} | |")
    lat = results.get("latency", {})
    ha, hx = (lat.get(n, {}).get("highest_sustained") for n in ("outboxd", EOS_RELAY))
    if ha or hx:
        L.append(f"| highest sustained rate on the ladder, events/s | {fmt(ha and ha['offered_events_per_s'])} | "
                 f"{fmt(hx and hx['offered_events_per_s'])} | "
                 f"{ratio(hx and hx['offered_events_per_s'], ha and ha['offered_events_per_s'])} |")
    modes = results.get("takeover", {}).get("modes", {})
    if modes:
        cells = [takeover_cell(modes.get(m)) for m in ("at-least-once", "exactly-once")]
        L.append(f"| takeover after SIGKILL: events flowing again, s, median / max | {cells[0]} | {cells[1]} | |")
    return L + [""]


def takeover_cell(mode: dict | None) -> str:
    if not mode or mode.get("error"):
        return "failed" if mode else "–"
    f = mode.get("flowing_s") or {}
    return f"{fmt(f.get('median'), 2)} / {fmt(f.get('max'), 2)}"


def targets(results: dict, sm: dict) -> list[str]:
    """Issue 11's targets for exactly-once with its defaults."""
    rows = []
    for k, d in sorted(sm["drain"].items()):
        if d.get("eos"):
            r = d["eos"] / d["outboxd"] if d["outboxd"] else None
            rows.append(f"| drain ≥ {DRAIN_RATIO} × at-least-once (k={k}) | {fmt(d['eos'])} vs "
                        f"{fmt(d['outboxd'])} events/s = {ratio(d['eos'], d['outboxd'])} | "
                        f"{yes(r is not None and r >= DRAIN_RATIO)} |")
    eos = steps_of(results, EOS_RELAY)
    for (rate, k), want in P99_TARGETS.items():
        s = eos.get((rate, k))
        if s:
            p99 = visible(s, "p99_ms")
            rows.append(f"| p99 ≤ {want} ms at {rate // 1000}k events/s (transactions of {k}), visible "
                        f"to read_committed | {ms(p99)} ms | {yes(p99 is not None and p99 <= want)} |")
    for mode, res in results.get("takeover", {}).get("modes", {}).items():
        f = (res.get("flowing_s") or {}) if not res.get("error") else {}
        worst = f.get("max")
        ok = worst is not None and worst <= TAKEOVER_S and f.get("n") == len(res.get("reps", [])) > 0
        rows.append(f"| takeover ≤ {TAKEOVER_S:g} s after the active relay's SIGKILL ({mode}; events "
                    f"flowing again, worst of {len(res.get('reps', []))}) | "
                    f"{fmt(worst, 2)} s (median {fmt(f.get('median'), 2)}) | {yes(ok)} |")
    if not rows:
        return []
    return (["### Targets (issue 11)", "", "For exactly-once with its defaults, in the same run as "
             "at-least-once:", "", "| target | measured | met? |", "| --- | --- | --- |"] + rows + [""])


def sweep_section(results: dict) -> list[str]:
    sw = results.get("sweep")
    lat = {n: r for n, r in results.get("latency", {}).items() if r.get("sweep_setting")}
    if not sw and not lat:
        return []
    L = ["### Exactly-once: sizing its Kafka transactions", ""]
    alo_rate = None
    if sw:
        alo = best(sw, "outboxd", None)
        alo_rate = alo and alo["events_per_s"]
        passes = max((r.get("pass", 1) for r in sw["runs"].values()), default=1)
        L += [f"Drains of one backlog ({sw['events']:,} events in transactions of {sw['k']}, "
              f"{sw['wal_bytes'] / 2**20:,.0f} MiB of WAL) by outboxd with each pair of "
              "`kafka.transaction_max_ms` and `kafka.transaction_max_bytes`, and at-least-once as "
              f"the reference; {passes} pass(es), every other one in reverse order; the faster run "
              "first, the other in brackets. Kafka transactions, events per transaction and commit "
              "times (`outboxd_kafka_transactions_total`, `outboxd_events_published_total`, "
              "`outboxd_kafka_commit_seconds`; p99 estimated from the histogram's buckets) are "
              "of the faster run.", "",
              "| max ms | max bytes | events/s | ÷ at-least-once | Kafka transactions | events per transaction | "
              "commit ms, mean / p99 | CPU s | peak RSS MB |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
              f"| at-least-once | | {rates_cell(runs_of(sw, 'outboxd'))} | 1.00× | – | – | – | "
              f"{fmt(alo and alo.get('cpu_s'), 2)} | {fmt(alo and alo.get('peak_rss_mb'), 1)} |"]
        variants = []
        for r in sw["runs"].values():
            if r.get("setting") and r["variant"] not in variants:
                variants.append(r["variant"])
        for v in variants:
            b = best(sw, "outboxd", v)
            st = next(r["setting"] for r in sw["runs"].values() if r.get("variant") == v)
            L.append(f"| {st['max_ms']} | {st['max_bytes'] // 1024:,} KiB | {rates_cell(runs_of(sw, 'outboxd', v))} | "
                     f"{ratio(b and b['events_per_s'], alo_rate)} | {fmt(b and b.get('kafka_transactions'))} | "
                     f"{fmt(b and b.get('events_per_transaction'), 0)} | {commit_cell(b)} | "
                     f"{fmt(b and b.get('cpu_s'), 2)} | {fmt(b and b.get('peak_rss_mb'), 1)} |")
        L.append("")
    if lat:
        keys = sorted({(s["offered_events_per_s"], s["k"]) for r in lat.values() for s in r.get("steps", [])})
        L += ["Latency with each `kafka.transaction_max_ms` (`transaction_max_bytes` 1 MiB; at these "
              "rates a transaction reaches at most ~250 kB before its time is up), in the latency "
              "phase next to the other relays: commit → visible to a `read_committed` consumer, "
              "p50 / p99 ms; the Kafka transactions of the last step.", "",
              "| max ms | " + " | ".join(f"{r:,} events/s ×{k}" for r, k in keys)
              + " | at the last step: events per transaction, commit ms mean / p99 | targets met (p99) |",
              "| --- | " + " | ".join("---" for _ in keys) + " | --- | --- |"]
        for name, res in sorted(lat.items(), key=lambda kv: kv[1]["sweep_setting"]["max_ms"]):
            by = {(s["offered_events_per_s"], s["k"]): s for s in res.get("steps", [])}
            last = by.get(keys[-1]) if keys else None
            met = all((visible(by.get(key), "p99_ms") or 1e9) <= want
                      for key, want in P99_TARGETS.items() if key in keys)
            L.append(f"| {res['sweep_setting']['max_ms']} | " + " | ".join(p_cell(by.get(key)) for key in keys)
                     + f" | {fmt(last and last.get('events_per_transaction'), 1)}, {commit_cell(last)} | "
                     f"{yes(met)} |")
        L.append("")
    return L


def takeover_section(results: dict) -> list[str]:
    to = results.get("takeover")
    if not to or not to.get("modes"):
        return []
    L = ["### Takeover after SIGKILL", "",
         f"Per delivery mode, outboxd on one slot under a steady load ({to['rate']:,} events/s in "
         f"transactions of {to['k']}); {to['reps']} times: the writer pauses, a second outboxd "
         "starts and logs that it stands by, the writer resumes and "
         f"{to['steady_s']:g} s later the active one is SIGKILLed. Seconds after the "
         "kill until the slot's walsender is gone (PostgreSQL frees the slot), until the standby "
         "logs `relaying` (its own timestamp), and until the first event committed after the kill "
         "is visible to a `read_committed` consumer; the worst delay (commit → visible) of any "
         "event committed from 1 s before the kill to 1 s after the flow resumed.", "",
         "| mode | # | slot free, s | `relaying`, s | events flowing, s | worst event delay, ms |",
         "| --- | --- | --- | --- | --- | --- |"]
    notes = []
    for mode, res in to["modes"].items():
        if res.get("error") and not res.get("reps"):
            notes.append(f"- {mode}: failed: {res['error']}")
            continue
        for i, r in enumerate(res.get("reps", []), 1):
            L.append(f"| {mode} | {i} | {fmt(r.get('slot_free_s'), 3)} | {fmt(r.get('relaying_s'), 3)} | "
                     f"{fmt(r.get('flowing_s'), 3)} | {fmt(r.get('worst_event_delay_ms'), 0)} |")
        agg = " ".join(f"{label} {fmt((res.get(key) or {}).get('median'), 2)} / "
                       f"{fmt((res.get(key) or {}).get('max'), 2)} s;"
                       for key, label in (("slot_free_s", "slot free"), ("relaying_s", "relaying"),
                                          ("flowing_s", "events flowing")))
        probe = res.get("standby_under_load")
        if probe:
            notes.append(f"- {mode}: a standby started under load (before the repetitions) stood by "
                         f"{probe['stood_by']} of {probe['attempts']} times"
                         + (f"; the others exited: `{probe['exits'][0]}`" if probe["exits"] else "") + ".")
        refused = res.get("standby_refusals")
        notes.append(f"- {mode}: median / max: {agg} {fmt(res.get('events'))} events written, "
                     f"{fmt(res.get('duplicates'))} delivered twice, {fmt(res.get('missing'))} missing"
                     + (f"; {refused} standby start(s) exited instead of standing by (started again), "
                        f"e.g. `{res.get('standby_refusal_example')}`" if refused else "")
                     + (f"; error: {res['error']}" if res.get("error") else "") + ".")
    return L + [""] + notes + [""]
