"""The report's chart: drain throughput and progress, latency, cost."""

from __future__ import annotations

from pathlib import Path

from report_fmt import NAMES, VARIANT_COLORS, main_relays, step_label, summary


def chart(results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"limit": "#9e9e9e", "outboxd": "#1f77b4", "eos": "#17becf",
              "outboxd[exactly-once]": "#17becf", "dbz": "#d62728"}
    kind_names = {**NAMES, "eos": "outboxd exactly-once"}
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    sm = summary(results)

    ax = axes[0][0]
    ks = sorted(sm["drain"])
    kinds = [kd for kd in ("limit", "outboxd", "eos", "dbz") if any(sm["drain"][k][kd] for k in ks)]
    width = 0.8 / max(1, len(kinds))
    for i, kind in enumerate(kinds):
        vals = [sm["drain"][k][kind] or 0 for k in ks]
        bars = ax.bar([x + (i - (len(kinds) - 1) / 2) * width for x in range(len(ks))], vals, width,
                      label=kind_names[kind], color=colors[kind])
        for b, v in zip(bars, vals):
            ax.annotate(f"{v / 1000:.1f}k", (b.get_x() + b.get_width() / 2, v), ha="center",
                        va="bottom", fontsize=8)
    ax.set_xticks(range(len(ks)), [f"transactions of {k}" for k in ks])
    ax.set_ylabel("events/s")
    ax.set_title("Drain throughput (backlog, time until the slot is confirmed)")
    if ks:
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
    lat = main_relays(results.get("latency", {}))
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
            # Commit -> visible to a read_committed consumer (what exactly-once is
            # judged by; older results have only the broker's append time).
            vis = {lb: by[lb].get("visible") or by[lb] for lb in by}
            p50 = [vis[lb]["p50_ms"] if lb in vis and vis[lb]["p50_ms"] else 0 for lb in labels]
            p99 = [vis[lb]["p99_ms"] if lb in vis and vis[lb]["p99_ms"] else 0 for lb in labels]
            p999 = [vis[lb]["p999_ms"] if lb in vis and vis[lb]["p999_ms"] else 0 for lb in labels]
            ax.bar(xs, p999, width, color=colors[system], alpha=0.25,
                   label=f"{NAMES[system]} p99.9")
            ax.bar(xs, p99, width, color=colors[system], alpha=0.55, label=f"{NAMES[system]} p99")
            ax.bar(xs, p50, width, color=colors[system], alpha=1.0, label=f"{NAMES[system]} p50")
        ax.set_yscale("log")
        ax.set_xticks(range(len(labels)), labels, fontsize=8)
        ax.set_ylabel("ms (log)")
        ax.set_title("Latency: commit → visible to a read_committed consumer\n"
                     "(offered rate × events per transaction)")
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


