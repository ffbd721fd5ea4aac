#!/usr/bin/env bash
# End-to-end test of the container recipe: the Dockerfile's image and
# docker-compose.yml's stack, with events written and read back.
#
#   scripts/containers/test.sh [--keep]
#
# 1. An engine: the one DOCKER_HOST (or the default socket) answers on, else a
#    private one from scripts/containers/dockerd.sh (installs docker.io; needs root),
#    stopped again at the end if this script started it. An engine without a bridge network runs the stack on
#    the host's network (compose.host-network.yml).
# 2. Images: local stand-ins for public images the engine lacks (images.sh), then
#    outboxd:local from the Dockerfile (BuildKit).
# 3. The stack (project outboxd-test): postgres and kafka healthy, outboxd runs
#    `init --apply` and `run` and turns healthy (/readyz).
# 4. The demo service writes committed, rolled-back and logical-message events; the
#    demo-consume service (Kafka's console consumer) reads each topic back; the
#    records, their order, keys and headers are checked, and so are outboxd's
#    /metrics (counts, and names against deploy/check_dashboard.py).
# 5. SIGTERM stops outboxd with exit code 0, the slot confirmed past the last event.
# 6. `down -v` removes the stack, unless --keep.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
HERE=scripts/containers
keep=0
case ${1:-} in
    --keep) keep=1 ;;
    '') ;;
    *) echo "usage: $0 [--keep]" >&2; exit 2 ;;
esac

step() { printf '\n==> %s\n' "$*" >&2; }
die() { printf '[containers/test] FAIL: %s\n' "$*" >&2; exit 1; }
t_start=$SECONDS
timing() { printf '[containers/test] %s: %d s\n' "$1" "$((SECONDS - $2))" >&2; }

compose=()
started_engine=0
finish() {
    local rc=$?
    if ((rc != 0 && ${#compose[@]} > 0)); then
        printf '\n[containers/test] failed; the last log lines of the stack:\n' >&2
        "${compose[@]}" logs --no-color --tail 40 >&2 2>&1 || true
    fi
    if ((keep == 0 && ${#compose[@]} > 0)); then
        "${compose[@]}" --profile demo down -v --remove-orphans >/dev/null 2>&1 ||
            "${compose[@]}" down -v --remove-orphans >/dev/null 2>&1 || true
    fi
    if ((started_engine == 1 && keep == 0)); then "$HERE/dockerd.sh" stop || true; fi
    printf '[containers/test] total: %d s\n' "$((SECONDS - t_start))" >&2
    exit "$rc"
}
trap finish EXIT

# --- 1. engine ---------------------------------------------------------------
step "Docker engine"
private_engine=0
if ! docker version >/dev/null 2>&1; then
    private_engine=1
    if ! "$HERE/dockerd.sh" status >/dev/null; then
        "$HERE/dockerd.sh" start
        started_engine=1
    fi
    eval "$("$HERE/dockerd.sh" env)"
fi
files=(-f docker-compose.yml)
build_network=()
if ! docker network inspect bridge >/dev/null 2>&1; then
    files+=(-f "$HERE/compose.host-network.yml")
    build_network=(--network host)
    echo "no bridge network: the stack runs on the host's network" >&2
fi

# BuildKit (cache mounts): docker with buildx, or the docker.io 20.10 client,
# which has BuildKit built in.
if docker buildx version >/dev/null 2>&1; then
    build=(docker build)
elif [[ -x /usr/bin/docker && $(/usr/bin/docker version --format '{{.Client.Version}}' 2>/dev/null) == 20.* ]]; then
    build=(env DOCKER_BUILDKIT=1 /usr/bin/docker build)
else
    die "building the Dockerfile needs BuildKit: install docker-buildx"
fi

if docker compose version >/dev/null 2>&1; then
    compose_cmd=(docker compose)
else
    if ! command -v docker-compose >/dev/null 2>&1; then
        [[ $(id -u) -eq 0 ]] || die "neither 'docker compose' nor docker-compose found"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >&2
        apt-get install -y -qq --no-install-recommends docker-compose >&2
    fi
    compose_cmd=(docker-compose)
fi
compose=("${compose_cmd[@]}" -p outboxd-test "${files[@]}")


# --- 2. images ---------------------------------------------------------------
step "Stand-ins for the public images the engine lacks"
t=$SECONDS
"$HERE/images.sh"
timing "stand-in images" "$t"

step "Building outboxd:local from the Dockerfile"
t=$SECONDS
mkdir -p .local/containers
if ! "${build[@]}" "${build_network[@]}" --progress plain -t outboxd:local . >.local/containers/outboxd-build.log 2>&1; then
    tail -n 40 .local/containers/outboxd-build.log >&2
    die "docker build failed (log: .local/containers/outboxd-build.log)"
fi
timing "outboxd image" "$t"
# The engine's data root is a cache kept between runs: drop superseded images.
if ((private_engine == 1)); then docker image prune -f >/dev/null; fi
[[ $(docker run --rm --network none --entrypoint id outboxd:local -u) == 10001 ]] || die "the image does not run as uid 10001"

# --- 3. stack ----------------------------------------------------------------
step "docker compose up: postgres, kafka, outboxd"
t=$SECONDS
"${compose[@]}" down -v --remove-orphans >/dev/null 2>&1 || true
"${compose[@]}" up -d --no-build postgres kafka outboxd
outboxd_id=$("${compose[@]}" ps -q outboxd)
deadline=$((SECONDS + 180))
until [[ $(docker inspect --format '{{.State.Health.Status}}' "$outboxd_id") == healthy ]]; do
    [[ $(docker inspect --format '{{.State.Running}}' "$outboxd_id") == true ]] || die "outboxd exited"
    ((SECONDS < deadline)) || die "outboxd not healthy (/readyz) within 180 s"
    sleep 1
done
timing "stack healthy" "$t"

# --- 4. events ---------------------------------------------------------------
step "demo: business transactions with outbox events"
"${compose[@]}" run --rm -T demo >/dev/null

# Reads TOPIC back with demo-consume; one record more than expected is waited for
# (5 s), so that an extra record would be seen.
consume() {
    local topic=$1 expect=$2
    "${compose[@]}" run --rm -T -e INCLUDE="${topic//./\\.}" -e EXPECT=$((expect + 1)) \
        -e TIMEOUT_MS=5000 demo-consume 2>/dev/null
}
step "demo-consume: reading the topics back"
orders=$(consume outbox.event.order 3)
customers=$(consume outbox.event.customer 1)
all=$(printf '%s\n%s' "$orders" "$customers")
printf '%s\n' "$all" >&2

check() { "$@" || die "check failed: $*"; }
values_of() { cut -f4 <<<"$1" | grep -o '"event": *"[a-z]*"' | sed 's/.*"\([a-z]*\)"$/\1/' | paste -sd ' '; }
check test "$(grep -c . <<<"$orders")" -eq 3
check test "$(grep -c . <<<"$customers")" -eq 1
# Commit order within the key; the rolled-back order-2 never appears.
check test "$(values_of "$orders")" = "created discounted shipped"
check test "$(cut -f3 <<<"$orders" | sort -u)" = order-1
check test "$(values_of "$customers")" = points
check test "$(cut -f3 <<<"$customers")" = cust-7
check test "$(grep -c 'order-2' <<<"$all")" -eq 0
# Every record has Debezium's id header and outboxd's idempotency key.
check test "$(cut -f2 <<<"$all" | grep -c '^id:.*,outboxd\.lsn:[0-9A-F]*/[0-9A-F]*,outboxd\.index:[0-9]')" -eq 4
last_lsn=$(cut -f2 <<<"$orders" | tail -n 1 | grep -o 'outboxd\.lsn:[0-9A-F/]*' | cut -d: -f2)

step "outboxd's /metrics"
# shellcheck disable=SC2016 # expanded by the container's bash
metrics=$("${compose[@]}" exec -T outboxd bash -c \
    'exec 3<>/dev/tcp/127.0.0.1/${OUTBOXD_SERVER__METRICS_ADDRESS##*:}
     printf "GET /metrics HTTP/1.0\r\n\r\n" >&3; cat <&3' | tr -d '\r' | sed '1,/^$/d')
grep -E '^outboxd_(events_published|delivery_errors|reconnects)_total ' <<<"$metrics" >&2
check grep -qx 'outboxd_events_published_total 4' <<<"$metrics"
check grep -qx 'outboxd_delivery_errors_total 0' <<<"$metrics"
python3 deploy/check_dashboard.py --metrics <(printf '%s\n' "$metrics")

# --- 5. clean stop -----------------------------------------------------------
step "SIGTERM: outboxd drains, confirms and exits 0"
"${compose[@]}" stop -t 40 outboxd
check test "$(docker inspect --format '{{.State.ExitCode}}' "$outboxd_id")" -eq 0
confirmed=$("${compose[@]}" exec -T postgres psql -X -At -U postgres -d app -c \
    "SELECT confirmed_flush_lsn >= '$last_lsn' FROM pg_replication_slots WHERE slot_name = 'outboxd'")
check test "$confirmed" = t

step "passed: 4 events relayed in commit order, the rolled-back one not, clean stop"
echo "containers: 1 passed, 0 failed"
