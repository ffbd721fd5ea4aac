#!/usr/bin/env python3
"""Checks deploy/grafana/outboxd-dashboard.json against the relay and the rules.

- The JSON is a dashboard: uid, title, panels with unique ids, a grid position
  inside 24 columns, and queries with unique refIds on the ${datasource} variable.
- Every outboxd_* metric a query or a rule names is one outboxd exports: the names
  registered in crates/outboxd/src (counters with their _total suffix), or those of
  a live /metrics page given with --metrics FILE.
- Every outboxd:* recording rule a query uses is defined in the rules file.
- Every $variable is a template variable of the dashboard or a Grafana built-in.

With --promql-out FILE it writes every query, variables replaced, as a rules file,
so that `promtool check rules FILE` parses each query (deploy/check.sh does).
"""

import argparse
import json
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy/grafana/outboxd-dashboard.json"
RULES = ROOT / "deploy/prometheus/outboxd-alerts.yml"
SOURCES = ROOT / "crates/outboxd/src"
BUILTINS = {"__rate_interval", "__interval", "__range"}
# What a variable stands for when promtool parses a query.
SUBSTITUTES = {"__rate_interval": "5m", "__interval": "1m", "__range": "1h"}

METRIC = re.compile(r"(?<![\w:])outboxd_[a-z0-9_]+")
RECORDED = re.compile(r"(?<![\w:])outboxd:[a-z0-9_:]+")
VARIABLE = re.compile(r"\$\{?(\w+)\}?")


def exported_from_source():
    """Names in the exposition: registered names, counters with _total, histograms
    with _bucket, _sum and _count. Field types come from `struct Metrics`."""
    text = "\n".join(p.read_text() for p in sorted(SOURCES.rglob("*.rs")))
    struct = re.search(r"pub struct Metrics \{(.*?)\n\}", text, re.S)
    fields = dict(re.findall(r"pub (\w+):\s*([^\n]*?),?\n", struct.group(1) + "\n")) if struct else {}
    names = set()
    for name, metric in re.findall(
        r'register\(\s*"(outboxd_\w+)",\s*"[^"]*",\s*([\w.]+?)\.clone\(\)', text
    ):
        kind = fields.get(metric.rsplit(".", 1)[-1], "")
        if "Counter" in kind:
            names.add(name + "_total")
        elif "Histogram" in kind:
            names.update(name + suffix for suffix in ("_bucket", "_sum", "_count"))
        elif "Gauge" in kind:
            names.add(name)
        else:  # type not found: accept either form rather than guess
            names.update({name, name + "_total"})
    if not names:
        sys.exit(f"no registered outboxd_* metrics found under {SOURCES}")
    return names


def exported_from_page(path):
    names = set()
    for line in pathlib.Path(path).read_text().splitlines():
        if line and not line.startswith("#"):
            names.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return names


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--metrics", help="a /metrics page to take the exported names from")
    parser.add_argument("--promql-out", help="write the dashboard's queries as a rules file")
    args = parser.parse_args()

    problems = []
    dash = json.loads(DASHBOARD.read_text())
    rules = RULES.read_text()
    exported = exported_from_page(args.metrics) if args.metrics else exported_from_source()
    recorded = set(re.findall(r"^\s*- record:\s*(\S+)", rules, re.M))
    variables = {v["name"] for v in dash.get("templating", {}).get("list", [])}

    for key in ("uid", "title", "panels", "schemaVersion"):
        if key not in dash:
            problems.append(f"dashboard: no '{key}'")

    queries = []  # (where, expr)
    ids = set()
    for panel in dash.get("panels", []):
        where = f"panel {panel.get('id')} '{panel.get('title')}'"
        if panel.get("id") in ids:
            problems.append(f"{where}: duplicate id")
        ids.add(panel.get("id"))
        grid = panel.get("gridPos", {})
        if not all(isinstance(grid.get(k), int) for k in ("x", "y", "w", "h")):
            problems.append(f"{where}: gridPos needs integer x, y, w, h")
        elif grid["x"] + grid["w"] > 24:
            problems.append(f"{where}: wider than the 24-column grid")
        if panel.get("type") == "row":
            continue
        if panel.get("datasource", {}).get("uid") != "${datasource}":
            problems.append(f"{where}: data source is not the ${{datasource}} variable")
        targets = panel.get("targets", [])
        if not targets:
            problems.append(f"{where}: no queries")
        ref_ids = [t.get("refId") for t in targets]
        if len(set(ref_ids)) != len(ref_ids):
            problems.append(f"{where}: duplicate refId")
        queries += [(where, t.get("expr", "")) for t in targets]
    for var in dash.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            queries.append((f"variable '{var['name']}'", var["query"]["query"]))

    for where, expr in queries:
        if not expr.strip():
            problems.append(f"{where}: empty query")
        for name in METRIC.findall(expr):
            if name not in exported:
                problems.append(f"{where}: {name} is not a metric outboxd exports")
        for name in RECORDED.findall(expr):
            if name not in recorded:
                problems.append(f"{where}: {name} is not recorded in {RULES.name}")
        for name in VARIABLE.findall(expr):
            if name not in variables and name not in BUILTINS:
                problems.append(f"{where}: ${name} is not a dashboard variable")
    for name in METRIC.findall(rules):
        if name not in exported:
            problems.append(f"{RULES.name}: {name} is not a metric outboxd exports")

    if args.promql_out:
        lines = ["groups:", "  - name: dashboard-queries", "    rules:"]
        for i, (_, expr) in enumerate(queries):
            expr = VARIABLE.sub(lambda m: SUBSTITUTES.get(m.group(1), ".*"), expr)
            expr = re.sub(r"label_values\((.*), *\w+\)$", r"\1", expr)
            lines += [f"      - record: dashboard:query_{i}", f"        expr: {json.dumps(expr)}"]
        pathlib.Path(args.promql_out).write_text("\n".join(lines) + "\n")

    for p in problems:
        print(f"check_dashboard: {p}", file=sys.stderr)
    if problems:
        sys.exit(1)
    print(f"check_dashboard: {len(queries)} queries in {len(ids)} panels and the rules use "
          f"only exported metrics ({len(exported)} known) and defined recording rules")


if __name__ == "__main__":
    main()
