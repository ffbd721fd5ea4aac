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
# services of scripts/pg.sh and scripts/kafka.sh (which must be running; kafka.sh
# installs the JDK and Maven). Libraries come from PyPI, the Go module proxy and
# Maven Central into .cache/snippets ($SNIPPETS_CACHE to put them elsewhere). Without
# a Go as new as go/go.mod asks, the pinned toolchain (the module golang.org/toolchain)
# is fetched by a bootstrap Go (Debian's, installed as root when there is none) into
# the same cache; python3-venv is installed as root when missing.
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

# Debian's package $1, as root, for what $2 says is missing.
apt_install() {
    if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
        fail "$2; install $1 (e.g. 'sudo apt-get install $1')"
    fi
    log "$2: installing $1 with apt-get"
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$1" >&2
}

# The Go toolchain used when the installed Go is older than go.mod's `go` line.
GO_TOOLCHAIN=go1.26.8

# Sets GO to a Go at least as new as go/go.mod asks for.
ensure_go() {
    local wanted have dir arch tmp module
    wanted=go$(awk '$1 == "go" {print $2}' "$HERE/go/go.mod")
    if command -v go >/dev/null; then
        have=$(GOTOOLCHAIN=local go env GOVERSION)
        if [[ $(printf '%s\n' "$wanted" "$have" | sort -V | head -1) == "$wanted" ]]; then
            GO=go
            return
        fi
    fi
    dir=$CACHE/$GO_TOOLCHAIN
    GO=$dir/bin/go
    [[ -x $GO ]] && return
    command -v go >/dev/null || apt_install golang-go "go not found"
    arch=$(GOTOOLCHAIN=local go env GOARCH)
    module=golang.org/toolchain@v0.0.1-$GO_TOOLCHAIN.linux-$arch
    log "Go ${have:-not found}, go.mod wants $wanted: fetching $module"
    # As the go command does when it switches toolchains: the module (checked against
    # the checksum database), unpacked with its programs made executable again.
    tmp=$(mktemp -d "$CACHE/.go-toolchain.XXXXXX")
    (cd "$tmp" && GOMODCACHE=$tmp GOFLAGS=-modcacherw GOTOOLCHAIN=local go mod download "$module" >&2) \
        || fail "go mod download $module failed (is the Go module proxy reachable?)"
    rm -rf "$dir"
    mv "$tmp/golang.org/toolchain@v0.0.1-$GO_TOOLCHAIN.linux-$arch" "$dir"
    rm -rf "$tmp"
    chmod +x "$dir"/bin/* "$dir"/pkg/tool/*/*
    "$GO" version >/dev/null || fail "the fetched toolchain in $dir does not run"
}

python_env() {
    python3 -c 'import ensurepip' 2>/dev/null || apt_install python3-venv "python3 cannot make a venv"
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
        ensure_go
        (cd "$HERE/go" && GOTOOLCHAIN=local GOFLAGS=-mod=mod "$GO" build -o "$CACHE/inbox-consumer-go" .) ;;
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
