#!/usr/bin/env bash
# Checks the Kubernetes manifests under deploy/kubernetes/ (deploy/check.sh runs it):
#   kubeconform          every object against the Kubernetes API's JSON schemas of
#                        each version in KUBERNETES_VERSIONS, strictly (an unknown or
#                        duplicated field fails), the PodMonitor against the Prometheus
#                        Operator's CRD; and a misspelt field must fail
#   check_manifests.py   what a schema cannot see: the ConfigMap's outboxd.toml and
#                        the containers' OUTBOXD_* variables loaded by the real outboxd
#                        binary, librdkafka property names, mounted paths, probe
#                        ports, selectors, Secret keys, the grace period
#
#   deploy/check_kubernetes.sh      OUTBOXD_BIN=FILE: use that binary instead of
#                                   `cargo build -p outboxd` (debug)
#
# Everything comes from package registries at pinned versions, once, into
# .cache/kubernetes/: kubeconform from the Go module proxy (built with Go), the
# Kubernetes schemas from the kubernetes-validate wheel on PyPI (sha256-pinned; laid
# out for kubeconform by deploy/kubernetes_schemas.py), the PodMonitor CRD from the
# prometheus-operator Go module, converted by kubeconform's own openapi2jsonschema.py.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
KUBECONFORM_VERSION=v0.8.0
KUBERNETES_VALIDATE_VERSION=1.37.0
KUBERNETES_VALIDATE_SHA256=85136d018a27b50ec7fc049d902bfa5193f5976807e6c0f408e3ab6fe078cad9
PROMETHEUS_OPERATOR_VERSION=v0.85.0
PYYAML_VERSION=6.0.3
# The oldest minor still in cloud providers' extended support, and the newest the
# schema package has.
KUBERNETES_VERSIONS=(1.31.0 1.37.0)

CACHE=$ROOT/.cache/kubernetes
KUBECONFORM=$CACHE/kubeconform-$KUBECONFORM_VERSION/kubeconform
K8S_SCHEMAS=$CACHE/schemas/kubernetes-validate-$KUBERNETES_VALIDATE_VERSION
CRD_SCHEMAS=$CACHE/schemas/prometheus-operator-$PROMETHEUS_OPERATOR_VERSION
MANIFESTS=$ROOT/deploy/kubernetes

log() { printf '[deploy/check_kubernetes] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The directory of a Go module at VERSION, downloaded into Go's module cache (from
# outside any module, so that no go.mod is touched).
go_module_dir() {
    (cd "$work" && go mod download -json "$1@$2") |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])'
}

# PyYAML for the Python steps: the interpreter's own, else a pinned copy in .cache.
if ! python3 -c 'import yaml' 2>/dev/null; then
    export PYTHONPATH=$CACHE/python-pyyaml-$PYYAML_VERSION${PYTHONPATH:+:$PYTHONPATH}
    if ! python3 -c 'import yaml' 2>/dev/null; then
        log "installing PyYAML $PYYAML_VERSION into ${PYTHONPATH%%:*}"
        python3 -m pip install --quiet --disable-pip-version-check --target "${PYTHONPATH%%:*}" \
            "PyYAML==$PYYAML_VERSION"
    fi
fi

if [[ ! -x $KUBECONFORM ]]; then
    command -v go >/dev/null 2>&1 || die "go not found; install Go to build kubeconform"
    log "building kubeconform $KUBECONFORM_VERSION (once, into ${KUBECONFORM%/*})"
    GOBIN=$work/bin go install "github.com/yannh/kubeconform/cmd/kubeconform@$KUBECONFORM_VERSION"
    mkdir -p "${KUBECONFORM%/*}"
    mv "$work/bin/kubeconform" "$KUBECONFORM"
fi

for version in "${KUBERNETES_VERSIONS[@]}"; do
    [[ -d $K8S_SCHEMAS/v$version-strict ]] && continue
    if [[ ! -f $work/wheel/kubernetes_validate-$KUBERNETES_VALIDATE_VERSION-py3-none-any.whl ]]; then
        log "downloading kubernetes-validate $KUBERNETES_VALIDATE_VERSION (the schemas, 23 MB)"
        printf 'kubernetes-validate==%s --hash=sha256:%s\n' \
            "$KUBERNETES_VALIDATE_VERSION" "$KUBERNETES_VALIDATE_SHA256" >"$work/requirements.txt"
        python3 -m pip download --quiet --disable-pip-version-check --no-deps \
            --require-hashes -r "$work/requirements.txt" -d "$work/wheel"
    fi
    python3 "$ROOT/deploy/kubernetes_schemas.py" \
        "$work/wheel/kubernetes_validate-$KUBERNETES_VALIDATE_VERSION-py3-none-any.whl" \
        "$work/schemas" "$version"
    mkdir -p "$K8S_SCHEMAS"
    mv "$work/schemas/v$version-strict" "$K8S_SCHEMAS/"
done

if [[ ! -f $CRD_SCHEMAS/podmonitor-monitoring-v1.json ]]; then
    command -v go >/dev/null 2>&1 || die "go not found; install Go to fetch the PodMonitor CRD"
    log "converting the PodMonitor CRD of prometheus-operator $PROMETHEUS_OPERATOR_VERSION"
    operator=$(go_module_dir github.com/prometheus-operator/prometheus-operator "$PROMETHEUS_OPERATOR_VERSION")
    converter=$(go_module_dir github.com/yannh/kubeconform "$KUBECONFORM_VERSION")/scripts/openapi2jsonschema.py
    mkdir -p "$work/crd"
    (cd "$work/crd" && FILENAME_FORMAT='{kind}-{group}-{version}' python3 "$converter" \
        "$operator/example/prometheus-operator-crd/monitoring.coreos.com_podmonitors.yaml" >/dev/null)
    mkdir -p "$CRD_SCHEMAS"
    mv "$work/crd/podmonitor-monitoring-v1.json" "$CRD_SCHEMAS/"
fi

kubeconform() {
    local version=$1
    shift
    "$KUBECONFORM" -strict -kubernetes-version "$version" \
        -schema-location "$K8S_SCHEMAS/{{.NormalizedKubernetesVersion}}{{.StrictSuffix}}/{{.ResourceKind}}{{.KindSuffix}}.json" \
        -schema-location "$CRD_SCHEMAS/{{.ResourceKind}}{{.KindSuffix}}.json" "$@"
}

for version in "${KUBERNETES_VERSIONS[@]}"; do
    log "kubeconform against Kubernetes $version"
    kubeconform "$version" -summary "$MANIFESTS"
done

# The schemas are strict and really loaded: a misspelt probe field must fail.
sed 's/periodSeconds: 5$/periodSecond: 5/' "$MANIFESTS/deployment.yaml" >"$work/misspelt.yaml"
if out=$(kubeconform "${KUBERNETES_VERSIONS[-1]}" "$work/misspelt.yaml" 2>&1) \
    || [[ $out != *"'periodSecond' not allowed"* ]]; then
    die "kubeconform did not reject a misspelt field (periodSecond): ${out:-no output}"
fi
log "a misspelt field is rejected"

if [[ -z ${OUTBOXD_BIN:-} ]]; then
    command -v cargo >/dev/null 2>&1 || die "cargo not found: install Rust or set OUTBOXD_BIN"
    (cd "$ROOT" && cargo build --locked -q -p outboxd)
    OUTBOXD_BIN=${CARGO_TARGET_DIR:-$ROOT/target}/debug/outboxd
fi
python3 "$ROOT/deploy/check_manifests.py" --outboxd "$OUTBOXD_BIN"
