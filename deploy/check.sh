#!/usr/bin/env bash
# Checks the files under deploy/:
#   promtool check rules   deploy/prometheus/outboxd-alerts.yml
#   promtool test rules    deploy/prometheus/outboxd-alerts.test.yml (unit tests)
#   check_dashboard.py     the Grafana dashboard's structure, metric names, variables,
#                          and every query parsed by promtool
#   check_kubernetes.sh    the manifests under deploy/kubernetes/: kubeconform against
#                          the Kubernetes schemas, and outboxd loading their configuration
#
#   deploy/check.sh [--metrics FILE]   FILE: a /metrics page to check names against
#
# promtool comes from the Go module proxy at a pinned version (needs Go), built once
# into .cache/promtool/VERSION (about 3 minutes cold, seconds with Go's caches warm).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PROMETHEUS_MODULE_VERSION=v0.316.0 # Prometheus 3.16.0
PROMTOOL_DIR=$ROOT/.cache/promtool/$PROMETHEUS_MODULE_VERSION
PROMTOOL=$PROMTOOL_DIR/promtool

log() { printf '[deploy/check] %s\n' "$*" >&2; }

if [[ ! -x $PROMTOOL ]]; then
    command -v go >/dev/null 2>&1 || { log "error: go not found; install Go to build promtool"; exit 1; }
    log "building promtool $PROMETHEUS_MODULE_VERSION (once, into ${PROMTOOL_DIR#"$ROOT"/})"
    mkdir -p "$PROMTOOL_DIR"
    # remove_all_sd leaves out service discovery (Kubernetes, cloud APIs), which
    # rule checks do not use: a third of the download and build.
    GOBIN=$PROMTOOL_DIR go install -tags remove_all_sd \
        "github.com/prometheus/prometheus/cmd/promtool@$PROMETHEUS_MODULE_VERSION"
fi

cd "$ROOT/deploy/prometheus"
"$PROMTOOL" check rules outboxd-alerts.yml
"$PROMTOOL" test rules outboxd-alerts.test.yml

queries=$(mktemp --suffix=.yml)
trap 'rm -f "$queries"' EXIT
python3 "$ROOT/deploy/check_dashboard.py" --promql-out "$queries" "$@"
"$PROMTOOL" check rules "$queries" >/dev/null || {
    "$PROMTOOL" check rules "$queries" >&2 || true
    log "error: a dashboard query does not parse (above)"
    exit 1
}
log "all dashboard queries parse"

"$ROOT/deploy/check_kubernetes.sh"
