#!/usr/bin/env bash
# Side-by-side benchmark: the slot-read limit (pg_recvlogical), outboxd (at-least-once
# and exactly-once) and Debezium (Kafka Connect + Postgres connector + Outbox Event
# Router), in one run.
#
#   bench/run.sh                 full preset: 1M events for each of k = 1, 10, 100,
#                                latency steps and ladder, outboxd also with 4x memory
#                                caps and two runtime threads, a sweep of exactly-once's
#                                transaction limits, SIGKILL takeovers of an active
#                                relay by a standby; writes docs/benchmarks.md (its
#                                generated section), docs/benchmarks.png,
#                                bench/results/ (~45 min)
#   bench/run.sh --quick         50k events, k = 10, 6 s latency steps, no ladder, a
#                                small sweep, one takeover per mode (~3 min); results
#                                only in bench/.work/runs/<run>/ (add --publish to
#                                write docs/ as well)
#   bench/run.sh --profile       also profile outboxd (perf + flame graphs): an extra
#                                drain per k and an extra 10k events/s step
#   bench/run.sh --help          every option (bench/bench.py)
#
# Prepares everything it needs, then hands over to bench/bench.py:
#   - Debian packages when missing (as root): postgresql (server + pg_recvlogical,
#     pgbench, pg_waldump), a JDK 17+, maven, python3-venv;
#   - Python packages pinned in bench/requirements.txt, in bench/.work/venv;
#   - Kafka 4.3.1 jars (scripts/kafka.sh's Maven Central cache, .cache/kafka);
#   - Kafka Connect 4.3.1 (bench/connect/pom.xml) and the Debezium Postgres
#     connector plugin archive, pinned, from Maven Central, into bench/.work/connect
#     (bench/connect/setup.sh);
#   - outboxd, built in release mode (CARGO_TARGET_DIR, default bench/.work/target;
#     BENCH_OUTBOXD_PROFILE=debug reuses a test build, for CI's smoke run only).
# The run starts its own PostgreSQL cluster (127.0.0.1:54400, track_commit_timestamp
# on) and its own Kafka broker (127.0.0.1:19192), both fresh, and stops them at the
# end; the shared services of scripts/pg.sh and scripts/kafka.sh are not touched.
set -euo pipefail

DEBEZIUM_VERSION=${DEBEZIUM_VERSION:-3.7.0.Final}

BENCH_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
ROOT=$(cd -- "$BENCH_DIR/.." && pwd -P)
WORK=$BENCH_DIR/.work
CONNECT_DIR=$WORK/connect

log() { printf 'bench: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

case "${1:-}" in
    -h | --help)
        sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "${BASH_SOURCE[0]}" >&2
        [[ -x $WORK/venv/bin/python ]] && "$WORK/venv/bin/python" "$BENCH_DIR/bench.py" --help >&2
        exit 0
        ;;
esac

apt_install() {
    [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null ||
        die "missing $*; install it (e.g. 'sudo apt-get install $*')"
    log "installing $* with apt-get"
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2
}

pg_bindir() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }

ensure_system() {
    local bindir
    bindir=$(pg_bindir || true)
    if [[ -z $bindir || ! -x $bindir/initdb || ! -x $bindir/pgbench ]]; then
        apt_install postgresql postgresql-contrib
    fi
    [[ $(id -u) -eq 0 ]] || die "run as root: the PostgreSQL cluster is started as the postgres user (runuser)"
    command -v mvn >/dev/null || apt_install maven
    command -v cargo >/dev/null || die "cargo not found: install Rust (https://rustup.rs)"
    python3 -c 'import venv, ensurepip' 2>/dev/null || apt_install python3-venv
}

ensure_python() {
    local want have=''
    want=$(sha256sum "$BENCH_DIR/requirements.txt" | cut -d' ' -f1)
    [[ -f $WORK/venv/.requirements ]] && have=$(cat "$WORK/venv/.requirements")
    if [[ ! -x $WORK/venv/bin/python || $have != "$want" ]]; then
        log "creating bench/.work/venv (bench/requirements.txt)"
        python3 -m venv "$WORK/venv"
        "$WORK/venv/bin/pip" install -q --disable-pip-version-check -r "$BENCH_DIR/requirements.txt" >&2
        printf '%s\n' "$want" >"$WORK/venv/.requirements"
    fi
}

# Kafka's jars: scripts/kafka.sh resolves them (and Java 17) into .cache/kafka.
ensure_kafka_jars() {
    "$ROOT/scripts/kafka.sh" tool org.apache.kafka.tools.TopicCommand --version >/dev/null
}


# Kafka Connect and the Debezium plugin: bench/connect/setup.sh (shared with
# scripts/test-debezium.sh) resolves them into bench/.work/connect.
ensure_connect() {
    DEBEZIUM_VERSION=$DEBEZIUM_VERSION CONNECT_DIR=$CONNECT_DIR "$BENCH_DIR/connect/setup.sh" >/dev/null
}

build_outboxd() {
    export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$WORK/target}
    local profile=${BENCH_OUTBOXD_PROFILE:-release}
    case $profile in
        release) ;;
        debug) log "warning: a debug build of outboxd: numbers from this run mean nothing" ;;
        *) die "BENCH_OUTBOXD_PROFILE must be release or debug, not '$profile'" ;;
    esac
    log "building outboxd ($profile, CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
    (cd "$ROOT" && cargo build --locked -q -p outboxd $([[ $profile == release ]] && echo --release)) >&2
    OUTBOXD_BIN=$CARGO_TARGET_DIR/$profile/outboxd
    [[ -x $OUTBOXD_BIN ]] || die "outboxd binary missing after build"
}

# --profile: perf (Debian's linux-perf) and inferno's flame graph tools.
ensure_profiler() {
    command -v perf >/dev/null || apt_install linux-perf
    if [[ ! -x $WORK/tools/bin/inferno-flamegraph ]]; then
        log "installing inferno (flame graphs) into bench/.work/tools"
        cargo install -q --locked inferno --version 0.12.8 --root "$WORK/tools" >&2
    fi
}

mkdir -p "$WORK"
ensure_system
for arg in "$@"; do [[ $arg == --profile ]] && ensure_profiler; done
ensure_python
ensure_kafka_jars
ensure_connect
build_outboxd

# What the user typed, for the report's "Generated by" line.
export BENCH_ARGS="$*"
exec "$WORK/venv/bin/python" -u "$BENCH_DIR/bench.py" \
    --outboxd-bin "$OUTBOXD_BIN" \
    --pg-bindir "$(pg_bindir)" \
    --kafka-lib "$ROOT/.cache/kafka/4.3.1/lib" \
    --connect-dir "$CONNECT_DIR" \
    --debezium-version "$DEBEZIUM_VERSION" \
    "$@"
