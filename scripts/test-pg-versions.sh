#!/usr/bin/env bash
# Runs outboxd's PostgreSQL-facing core tests on every supported PostgreSQL major
# besides the one scripts/test.sh ran the whole suite on (Debian's), then the
# physical standby and failover slot test (PostgreSQL 17 and 18).
#
#   scripts/test-pg-versions.sh [MAJOR…]    default: the majors scripts/pg-versions.sh
#                                            pins, less Debian's installed one
#
# Each major gets a dedicated cluster (scripts/pg.sh with PG_MAJOR, a free port and
# a state directory of its own, with the shared cluster's TLS and per-user
# authentication setup), removed afterwards. The core tests run against it:
# CORE_TESTS (the replication client and decoder, authentication and TLS, liveness),
# RELAY_TEST (the relay end to end) and SECURITY_PG_TESTS (the binary over
# verify-full TLS). Kafka is the one OUTBOXD_TEST_KAFKA_BROKERS names, else
# scripts/kafka.sh's. Every major runs even when one fails; the exit status is
# non-zero if any failed; the summary gives each major's result and time.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

CORE_TESTS=(smoke replication replication_auth replication_timeout)
# The relay end to end, beside CORE_TESTS (it takes as long as all of them, mostly
# waiting on PostgreSQL and Kafka; measured 55 s instead of 85 s a major).
RELAY_TEST=relay
# The binary over TLS to PostgreSQL (security.rs's other test is about Kafka).
SECURITY_PG_TESTS=(postgres_over_verify_full_tls verify_full_refuses_a_wrong_host_name)
FAILOVER_MAJORS=(17 18)

step() { printf '\n==> %s\n' "$*" >&2; }

if [[ $# -gt 0 ]]; then
    majors=("$@")
else
    debian=$(ls /usr/lib/postgresql 2>/dev/null | sort -V | tail -n 1 || true)
    mapfile -t majors < <(scripts/pg-versions.sh majors | grep -vx "${debian:-none}")
fi

# A TCP port on 127.0.0.1 that nothing listens on, below Linux's ephemeral range
# (32768-60999): a port there can be held by a client's outgoing connection, which
# no probe sees, and the server then fails to bind it (seen in CI).
free_port() {
    local port
    for ((port = 25400 + RANDOM % 2000; ; port++)); do
        (: </dev/tcp/127.0.0.1/"$port") 2>/dev/null || { echo "$port"; return; }
    done
}

scripts/deps.sh
for major in "${majors[@]}" "${FAILOVER_MAJORS[@]}"; do
    scripts/pg-versions.sh fetch "$major" >/dev/null
done
if [[ -z ${OUTBOXD_TEST_KAFKA_BROKERS:-} ]]; then
    scripts/kafka.sh start
    eval "$(scripts/kafka.sh env)"
fi
test_args=()
for t in "${CORE_TESTS[@]}"; do test_args+=(--test "$t"); done

# The core tests against the cluster at port $1 with state directory $2.
run_core() {
    eval "$(PG_PORT=$1 PG_STATE_DIR=$2 scripts/pg.sh env)"
    local rc=0 relay_log relay_pid
    relay_log=$(mktemp)
    cargo test --workspace --all-features --locked --test "$RELAY_TEST" >"$relay_log" 2>&1 &
    relay_pid=$!
    cargo test --workspace --all-features --locked --no-fail-fast "${test_args[@]}" || rc=1
    cargo test --workspace --all-features --locked --test security -- "${SECURITY_PG_TESTS[@]}" || rc=1
    wait "$relay_pid" || rc=1
    printf '\n--- tests/%s.rs (ran alongside) ---\n' "$RELAY_TEST"
    cat "$relay_log"
    rm -f "$relay_log"
    return "$rc"
}

STATE=
cleanup() { [[ -z $STATE ]] || PG_STATE_DIR=$STATE scripts/pg.sh reset >/dev/null 2>&1 || true; }
trap cleanup EXIT

summary=()
failed=0
for major in "${majors[@]}"; do
    port=$(free_port)
    STATE=$(mktemp -d "${TMPDIR:-/tmp}/outboxd-pg$major.XXXXXX")
    step "PostgreSQL $major ($(scripts/pg-versions.sh version "$major")) on 127.0.0.1:$port: ${CORE_TESTS[*]} $RELAY_TEST security"
    started=$(date +%s)
    PG_MAJOR=$major PG_PORT=$port PG_STATE_DIR=$STATE scripts/pg.sh start >/dev/null
    result=passed
    (run_core "$port" "$STATE") || { result=FAILED; failed=1; }
    cleanup
    STATE=
    summary+=("PostgreSQL $major: $result in $(($(date +%s) - started)) s")
done

step "physical standby and failover slots on PostgreSQL ${FAILOVER_MAJORS[*]}"
started=$(date +%s)
result=passed
cargo test --workspace --all-features --locked --test pg_standby -- --ignored \
    || { result=FAILED; failed=1; }
# outboxd itself through a failover, with and without the synchronized slot.
for major in "${FAILOVER_MAJORS[@]}"; do
    OUTBOXD_TEST_PG_MAJOR=$major cargo test --workspace --all-features --locked --test failover \
        -- --ignored || { result=FAILED; failed=1; }
done
summary+=("standby and failover (PostgreSQL ${FAILOVER_MAJORS[*]}): $result in $(($(date +%s) - started)) s")

step "summary"
printf '%s\n' "${summary[@]}" >&2
exit "$failed"
