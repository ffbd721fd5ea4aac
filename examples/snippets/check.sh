#!/usr/bin/env bash
# Runs each consumer snippet of docs/consumers.md (Java, Go, Python) against the real
# Kafka and PostgreSQL: the records of fixture.py (two events of an order, a
# duplicate, a stale event, a late replay, another order's event), the inbox tables
# of crates/inbox/sql/inbox.sql, and the same expected outcomes and rows for all.
# Also checks that the code shown in docs/consumers.md is the code run here.
#
#   examples/snippets/check.sh [java] [go] [python]      (default: all three)
#
# Uses OUTBOXD_TEST_PG_URL and OUTBOXD_TEST_KAFKA_BROKERS when set, else the local
# services of scripts/pg.sh and scripts/kafka.sh (which must be running). Libraries
# come from PyPI, the Go module proxy and Maven Central into .cache/snippets
# ($SNIPPETS_CACHE to put them elsewhere).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
CACHE="${SNIPPETS_CACHE:-$ROOT/.cache/snippets}"
langs=("$@")
[[ ${#langs[@]} -gt 0 ]] || langs=(java go python)

[[ -n ${OUTBOXD_TEST_PG_URL:-} ]] || eval "$("$ROOT/scripts/pg.sh" env)"
[[ -n ${OUTBOXD_TEST_KAFKA_BROKERS:-} ]] || eval "$("$ROOT/scripts/kafka.sh" env)"
PSQL=("${OUTBOXD_TEST_PG_BINDIR:-/usr/lib/postgresql/15/bin}/psql" -X -q -At -v ON_ERROR_STOP=1)
BROKERS=$OUTBOXD_TEST_KAFKA_BROKERS
ADMIN_URL=$OUTBOXD_TEST_PG_URL

log() { printf '[snippets] %s\n' "$*" >&2; }
fail() { log "FAIL: $*"; exit 1; }

docs_match() {
    python3 - "$ROOT/docs/consumers.md" "$@" <<'PY'
import re, sys
docs = open(sys.argv[1]).read()
for path in sys.argv[2:]:
    text = open(path).read()
    regions = re.findall(r"(?:#|//) docs:begin\n(.*?)\n[ \t]*(?:#|//) docs:end", text, re.S)
    if not regions:
        sys.exit(f"{path}: no docs:begin/docs:end region")
    for region in regions:
        if region not in docs:
            sys.exit(f"docs/consumers.md does not show this part of {path} as it is:\n{region}")
PY
}

python_env() {
    if [[ ! -x $CACHE/venv/bin/python ]] || ! cmp -s "$HERE/python/requirements.txt" "$CACHE/venv/requirements.txt"; then
        log "installing confluent-kafka and psycopg into $CACHE/venv"
        rm -rf "$CACHE/venv"
        python3 -m venv "$CACHE/venv"
        "$CACHE/venv/bin/pip" install -q --disable-pip-version-check -r "$HERE/python/requirements.txt"
        cp "$HERE/python/requirements.txt" "$CACHE/venv/requirements.txt"
    fi
}

build() {
    case $1 in
    python) ;;
    go)
        command -v go >/dev/null || fail "go not found (install Go 1.26+)"
        (cd "$HERE/go" && GOFLAGS=-mod=mod go build -o "$CACHE/inbox-consumer-go" .) ;;
    java)
        command -v mvn >/dev/null || fail "mvn not found (scripts/kafka.sh installs it)"
        mvn -B -q -f "$HERE/java/pom.xml" dependency:copy-dependencies -DincludeScope=runtime \
            -DoutputDirectory="$CACHE/java-lib" 2>&1 | sed -e $'s/\e\\[[0-9;]*m//g' -e '/^[[:space:]]*$/d' >&2 ;;
    esac
}

# postgres://user@host:port/db → jdbc:postgresql://host:port/db?user=user
jdbc_url() {
    sed -E 's#^postgres(ql)?://([^@/]+)@([^/?]+)/([^?]+).*#jdbc:postgresql://\3/\4?user=\2#' <<<"$1"
}

# Runs one snippet on TOPIC for 6 records (3 minutes at most).
run() {
    local lang=$1 topic=$2 group=$3 url=$4
    case $lang in
    python) timeout 180 "$CACHE/venv/bin/python" "$HERE/python/inbox_consumer.py" "$BROKERS" "$topic" "$group" "$url" 6 ;;
    go) timeout 180 "$CACHE/inbox-consumer-go" "$BROKERS" "$topic" "$group" "$url" 6 ;;
    java)
        timeout 180 java -cp "$CACHE/java-lib/*" "$HERE/java/InboxConsumer.java" \
            "$BROKERS" "$topic" "$group" "$(jdbc_url "$url")" 6 ;;
    esac
}

check_one() {
    local lang=$1 started=$SECONDS
    local name="snippet_${lang}_$$" topic="snippets.$lang.$$"
    local url="${ADMIN_URL%/*}/$name"
    build "$lang"
    "${PSQL[@]}" "$ADMIN_URL" -c "CREATE DATABASE $name"
    trap '"${PSQL[@]}" "$ADMIN_URL" -c "DROP DATABASE IF EXISTS '"$name"' WITH (FORCE)" || true' RETURN
    sed -e 's/{inbox_versions}/inbox_versions/g' -e 's/{inbox}/inbox/g' "$ROOT/crates/inbox/sql/inbox.sql" |
        "${PSQL[@]}" "$url"
    "${PSQL[@]}" "$url" -c "CREATE TABLE applied_events (n bigserial, event_id text, order_id text, payload text)"
    "$CACHE/venv/bin/python" "$HERE/fixture.py" produce "$BROKERS" "$topic"
    local out
    out=$(run "$lang" "$topic" "snippet-$lang-$$" "$url") || fail "$lang: the snippet failed"
    "$CACHE/venv/bin/python" "$HERE/fixture.py" delete "$BROKERS" "$topic" || true
    local outcomes expected
    outcomes=$(sed -E 's/ [0-9]+$//' <<<"$out")
    expected=$("$CACHE/venv/bin/python" "$HERE/fixture.py" outcomes)
    [[ $outcomes == "$expected" ]] || fail "$lang: outcomes
$outcomes
expected
$expected"
    local rows
    rows=$("${PSQL[@]}" "$url" -c "SELECT string_agg(event_id, ',' ORDER BY n) FROM applied_events")
    [[ $rows == "e1,e2,e4,e5" ]] || fail "$lang: applied $rows, expected e1,e2,e4,e5"
    rows=$("${PSQL[@]}" "$url" -c "SELECT string_agg(event_id, ',' ORDER BY event_id) FROM inbox")
    [[ $rows == "e1,e2,e4,e5" ]] || fail "$lang: inbox holds $rows, expected e1,e2,e4,e5"
    rows=$("${PSQL[@]}" "$url" -c "SELECT string_agg(aggregate_id || '=' || lsn || ':' || event_index, ',' ORDER BY aggregate_id) FROM inbox_versions")
    [[ $rows == "order-1=0/20:0,order-2=0/30:1" ]] || fail "$lang: versions $rows"
    log "$lang: ok ($((SECONDS - started)) s): $(tr '\n' ',' <<<"$outcomes" | sed 's/,$//')"
}

mkdir -p "$CACHE"
python_env
docs_match "$HERE/python/inbox_consumer.py" "$HERE/go/main.go" "$HERE/java/InboxConsumer.java"
for lang in "${langs[@]}"; do
    check_one "$lang"
done
log "${#langs[@]} snippets passed"
