#!/usr/bin/env bash
# A throwaway local PostgreSQL cluster for outboxd's demo and tests.
#
#   scripts/pg.sh start|stop|crash|promote|status|env|logs|reset|psql
#   scripts/pg.sh standby-of PRIMARY_STATE_DIR
#
# The cluster lives in .local/pg (git-ignored), listens on 127.0.0.1:${PG_PORT:-54329},
# runs with wal_level=logical and has a TLS certificate signed by a throwaway CA
# (.local/pg/tls/ca.crt) so that sslmode=verify-full can be tested.
#
# PG_STATE_DIR (default .local/pg) selects another cluster: with another PG_PORT it
# runs next to the shared one (the fault tests start their own this way, to crash
# and restart it without disturbing other tests). `crash` stops it with
# `pg_ctl -m immediate` (no shutdown checkpoint, crash recovery on the next start).
#
# The server binaries: those the cluster was created with (remembered in
# $PG_STATE_DIR/bindir); for a new cluster PG_BINDIR, else PG_MAJOR (14…18: the build
# scripts/pg-versions.sh pins), else the newest Debian PostgreSQL (installed when
# there is none). psql is Debian's where the server's bin directory has none.
#
# `standby-of PRIMARY_STATE_DIR` makes this PG_STATE_DIR and PG_PORT a physical
# standby of the running cluster in PRIMARY_STATE_DIR, without pg_basebackup: it
# creates a physical slot for the standby on the primary, stops the primary cleanly,
# copies its data directory (without its replication slots), starts the primary
# again and the copy as a standby streaming from it (standby.signal,
# primary_conninfo, primary_slot_name, hot_standby_feedback; from PostgreSQL 17 also
# sync_replication_slots on the standby and synchronized_standby_slots on the
# primary, so that failover slots are synchronized). `promote` promotes a standby.
# Such settings live in $PG_STATE_DIR/extra.conf, appended to the settings at every
# start.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PG_PORT="${PG_PORT:-54329}"
STATE="${PG_STATE_DIR:-$ROOT/.local/pg}"
RUN_AS=(runuser -u postgres --)

log() { printf '[pg] %s\n' "$*" >&2; }
die() { printf '[pg] error: %s\n' "$*" >&2; exit 1; }

apt_install() {
    [[ $(id -u) -eq 0 ]] || die "$1 not found; install Debian's '$2' package (needs root)."
    log "installing Debian's $2 ($1 not found)…"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq "$2" "${@:3}" >&2
}

newest_debian_bindir() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true; }

# The newest installed Debian server's bin directory; installs postgresql if none.
debian_bindir() {
    local dir
    dir=$(newest_debian_bindir)
    if [[ -z "$dir" || ! -x "$dir/initdb" ]]; then
        apt_install "initdb" postgresql postgresql-contrib openssl
        dir=$(newest_debian_bindir)
    fi
    printf '%s' "$dir"
}

# The server binaries of this cluster (see the header for the order).
find_bindir() {
    if [[ -f "$STATE/bindir" && -x "$(cat "$STATE/bindir")/postgres" ]]; then
        cat "$STATE/bindir"
    elif [[ -n "${PG_BINDIR:-}" ]]; then
        [[ -x "$PG_BINDIR/initdb" && -x "$PG_BINDIR/pg_ctl" ]] || die "PG_BINDIR=$PG_BINDIR has no initdb and pg_ctl"
        printf '%s' "$PG_BINDIR"
    elif [[ -n "${PG_MAJOR:-}" ]]; then
        "$ROOT/scripts/pg-versions.sh" fetch "$PG_MAJOR" || die "no PostgreSQL $PG_MAJOR binaries"
    else
        debian_bindir
    fi
}

# psql: the server's own, else Debian's (its psql talks to every major).
find_psql() {
    local bindir=$1 dir
    if [[ -x "$bindir/psql" ]]; then printf '%s' "$bindir/psql"; return; fi
    dir=$(newest_debian_bindir)
    if [[ -z "$dir" || ! -x "$dir/psql" ]]; then
        apt_install psql postgresql-client
        dir=$(newest_debian_bindir)
    fi
    printf '%s' "$dir/psql"
}

# The server runs as the postgres OS user, which Debian's package creates; the builds
# from scripts/pg-versions.sh need it too.
ensure_postgres_user() {
    id postgres >/dev/null 2>&1 && return
    [[ $(id -u) -eq 0 ]] || die "no 'postgres' OS user to run the server as; create one (needs root)"
    log "creating the postgres OS user"
    useradd --system --user-group --home-dir /var/lib/postgresql --create-home --shell /bin/bash postgres
}

# The postgres OS user must be able to reach the data directory. A checkout under a
# directory it cannot traverse gets its cluster in /tmp instead (still per checkout).
data_root() {
    if [[ -f "$STATE/location" ]]; then cat "$STATE/location"; return; fi
    mkdir -p "$STATE"
    local loc="$STATE/cluster"
    if ! "${RUN_AS[@]}" test -x "$STATE" 2>/dev/null; then
        local key="$ROOT"
        [[ -z "${PG_STATE_DIR:-}" ]] || key="$STATE"
        loc="/tmp/outboxd-pg-$(printf '%s' "$key" | md5sum | cut -c1-8)"
    fi
    printf '%s' "$loc" >"$STATE/location"
    printf '%s' "$loc"
}

url() { printf 'postgres://postgres@127.0.0.1:%s/postgres' "$PG_PORT"; }

is_running() {
    local bindir=$1 loc=$2
    [[ -f "$loc/data/PG_VERSION" ]] && "${RUN_AS[@]}" "$bindir/pg_ctl" -D "$loc/data" status >/dev/null 2>&1
}

make_tls() {
    local tls=$1
    command -v openssl >/dev/null || { apt-get install -y -qq openssl >&2 || die "openssl missing"; }
    mkdir -p "$tls"
    # A throwaway CA and a server certificate for localhost / 127.0.0.1.
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=outboxd test CA" \
        -keyout "$tls/ca.key" -out "$tls/ca.crt" >/dev/null 2>&1
    openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
        -keyout "$tls/server.key" -out "$tls/server.csr" >/dev/null 2>&1
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >"$tls/san.ext"
    openssl x509 -req -in "$tls/server.csr" -CA "$tls/ca.crt" -CAkey "$tls/ca.key" \
        -CAcreateserial -days 3650 -extfile "$tls/san.ext" -out "$tls/server.crt" >/dev/null 2>&1
    chmod 0600 "$tls/server.key"
}

init_cluster() {
    local bindir=$1 loc=$2
    log "creating cluster in $loc/data"
    mkdir -p "$loc"
    chown postgres:postgres "$loc"
    "${RUN_AS[@]}" "$bindir/initdb" -D "$loc/data" -A trust -U postgres --no-sync -E UTF8 --locale=C.UTF-8 >"$STATE/initdb.log" 2>&1 \
        || { cat "$STATE/initdb.log" >&2; die "initdb failed"; }
    printf '%s' "$bindir" >"$STATE/bindir"
    make_tls "$loc/data/tls"
    chown -R postgres:postgres "$loc/data/tls"
    mkdir -p "$STATE/tls" && cp "$loc/data/tls/ca.crt" "$STATE/tls/ca.crt"
    mkdir -p "$loc/run" && chown postgres:postgres "$loc/run"
    echo "include_if_exists = 'outboxd.conf'" >>"$loc/data/postgresql.conf"
    # Per-user authentication methods so that every method the client supports can be
    # tested on one cluster; everyone else is trusted (loopback only).
    cat >"$loc/data/pg_hba.conf" <<'EOF'
local   all             all                                     trust
hostnossl all           outboxd_tls         127.0.0.1/32        reject
hostssl all             outboxd_tls         127.0.0.1/32        scram-sha-256
host    all             outboxd_md5         127.0.0.1/32        md5
host    all             outboxd_password    127.0.0.1/32        password
host    all             outboxd_scram       127.0.0.1/32        scram-sha-256
host    all             all                 127.0.0.1/32        trust
host    replication     all                 127.0.0.1/32        trust
EOF
}

# Settings live in their own file, rewritten at every start, so that a changed script
# takes effect on an existing cluster too.
write_settings() {
    local loc=$1
    cat >"$loc/data/outboxd.conf" <<EOF
# Written by scripts/pg.sh at every start; edits here are overwritten.
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$loc/run'
max_connections = 200
wal_level = logical
max_replication_slots = 64
max_wal_senders = 64
# Bounded so that a forgotten slot cannot fill the disk; tests lower it further.
max_slot_wal_keep_size = 4GB
# Short, so that keepalive handling is exercised by the tests.
wal_sender_timeout = 10s
# A throwaway cluster: durability on power loss does not matter, speed does. Commits
# stay synchronous: walsenders only send flushed WAL, so an asynchronous commit would
# reach the slot up to wal_writer_delay later.
fsync = off
full_page_writes = off
shared_buffers = 256MB
max_wal_size = 2GB
ssl = on
ssl_cert_file = 'tls/server.crt'
ssl_key_file = 'tls/server.key'
ssl_ca_file = 'tls/ca.crt'
log_min_messages = warning
log_connections = off
EOF
    [[ ! -f "$STATE/extra.conf" ]] || cat "$STATE/extra.conf" >>"$loc/data/outboxd.conf"
    chown postgres:postgres "$loc/data/outboxd.conf"
}

cmd_start() {
    local bindir loc
    ensure_postgres_user
    bindir=$(find_bindir)
    loc=$(data_root)
    if [[ -n "${PG_MAJOR:-}" && -f "$loc/data/PG_VERSION" && "$(cat "$loc/data/PG_VERSION")" != "$PG_MAJOR" ]]; then
        die "the cluster in $STATE is PostgreSQL $(cat "$loc/data/PG_VERSION"), not PG_MAJOR=$PG_MAJOR; reset it or use another PG_STATE_DIR"
    fi
    if is_running "$bindir" "$loc"; then
        log "already running on 127.0.0.1:$PG_PORT"
    else
        [[ -f "$loc/data/PG_VERSION" ]] || init_cluster "$bindir" "$loc"
        write_settings "$loc"
        log "starting PostgreSQL $("$bindir/postgres" --version | awk '{print $3}') on 127.0.0.1:$PG_PORT (log: $STATE/postgres.log)"
        touch "$STATE/postgres.log" && chown postgres:postgres "$STATE/postgres.log" 2>/dev/null || true
        local logfile="$STATE/postgres.log"
        "${RUN_AS[@]}" test -w "$logfile" || logfile="$loc/postgres.log"
        "${RUN_AS[@]}" "$bindir/pg_ctl" -D "$loc/data" -l "$logfile" -w -t 60 start >/dev/null \
            || { tail -n 40 "$logfile" >&2; die "PostgreSQL did not start; see $logfile"; }
    fi
    echo "PG_URL=$(url)"
}

# Stops the cluster with pg_ctl shutdown mode $1 (fast, immediate).
stop_with() {
    local bindir loc
    bindir=$(find_bindir)
    loc=$(data_root)
    if is_running "$bindir" "$loc"; then
        "${RUN_AS[@]}" "$bindir/pg_ctl" -D "$loc/data" -m "$1" -w stop >/dev/null
        log "stopped (-m $1)"
    else
        log "not running"
    fi
}

cmd_promote() {
    local bindir loc
    bindir=$(find_bindir)
    loc=$(data_root)
    is_running "$bindir" "$loc" || die "not running"
    [[ -f "$loc/data/standby.signal" ]] || die "not a standby (no standby.signal in $loc/data)"
    "${RUN_AS[@]}" "$bindir/pg_ctl" -D "$loc/data" -w -t 60 promote >/dev/null \
        || { tail -n 40 "$STATE/postgres.log" >&2; die "promotion did not finish; see $STATE/postgres.log"; }
    log "promoted"
}

cmd_status() {
    local bindir loc
    bindir=$(find_bindir)
    loc=$(data_root)
    if is_running "$bindir" "$loc"; then
        echo "running: $(url) (data: $loc/data)"
    else
        echo "not running"
        return 3
    fi
}

# Runs SQL on the cluster at port $2 with psql from bin directory $1; prints the result.
sql_at() {
    "$(find_psql "$1")" -X -q -A -t -v ON_ERROR_STOP=1 -d "postgres://postgres@127.0.0.1:$2/postgres" -c "$3"
}

# Sets a primary's synchronized_standby_slots to the slots of all its standbys.
add_synchronized_standby_slot() {
    local primary=$1 slot=$2 conf=$1/extra.conf listed
    listed=$(sed -n "s/^synchronized_standby_slots = '\(.*\)'$/\1/p" "$conf" 2>/dev/null || true)
    { grep -v '^synchronized_standby_slots = ' "$conf" 2>/dev/null || true
      echo "synchronized_standby_slots = '${listed:+$listed,}$slot'"; } >"$conf.new"
    mv "$conf.new" "$conf"
}

cmd_standby_of() {
    local primary=${1:-}
    [[ -n "$primary" && -f "$primary/location" && -f "$primary/bindir" ]] \
        || die "usage: PG_STATE_DIR=… PG_PORT=… $0 standby-of PRIMARY_STATE_DIR (a cluster started by this script)"
    primary=$(cd "$primary" && pwd)
    [[ "$primary" != "$STATE" ]] || die "a cluster cannot be its own standby; set PG_STATE_DIR"
    [[ ! -f "$STATE/location" ]] || die "$STATE already holds a cluster; reset it or use another PG_STATE_DIR"
    local ploc bindir pport major slot loc started
    ploc=$(cat "$primary/location")
    bindir=$(cat "$primary/bindir")
    pport=$(sed -n 's/^port = //p' "$ploc/data/outboxd.conf")
    major=$(cat "$ploc/data/PG_VERSION")
    slot="standby_$PG_PORT"
    started=$(date +%s%N)
    [[ $(PG_STATE_DIR=$primary PG_PORT=$pport "$0" status) == running* ]] || die "the primary in $primary is not running"

    sql_at "$bindir" "$pport" "SELECT pg_create_physical_replication_slot('$slot', true)" >/dev/null
    if ((major >= 17)); then add_synchronized_standby_slot "$primary" "$slot"; fi
    PG_STATE_DIR=$primary PG_PORT=$pport "$0" stop
    loc=$(data_root)
    mkdir -p "$loc"
    chown postgres:postgres "$loc"
    cp -a "$ploc/data" "$loc/data"
    PG_STATE_DIR=$primary PG_PORT=$pport "$0" start >/dev/null
    # The copy's slots are the primary's; a standby gets its own by synchronization.
    rm -rf "$loc/data/postmaster.pid" "$loc/data/postmaster.opts" "$loc/data/pg_replslot/"*
    touch "$loc/data/standby.signal"
    mkdir -p "$loc/run" "$STATE/tls"
    chown -R postgres:postgres "$loc"
    cp "$primary/tls/ca.crt" "$STATE/tls/ca.crt"
    printf '%s' "$bindir" >"$STATE/bindir"
    {
        echo "primary_conninfo = 'host=127.0.0.1 port=$pport user=postgres dbname=postgres application_name=$slot'"
        echo "primary_slot_name = '$slot'"
        echo "hot_standby_feedback = on"
        if ((major >= 17)); then echo "sync_replication_slots = on"; fi
    } >"$STATE/extra.conf"
    cmd_start >/dev/null
    local status="" i
    for ((i = 0; i < 300; i++)); do
        status=$(sql_at "$bindir" "$PG_PORT" "SELECT status FROM pg_stat_wal_receiver" || true)
        [[ "$status" != streaming ]] || break
        sleep 0.1
    done
    [[ "$status" == streaming ]] || die "the standby did not start streaming within 30 s (wal receiver: '${status}'); see $STATE/postgres.log"
    log "standby of 127.0.0.1:$pport streaming on 127.0.0.1:$PG_PORT (slot $slot, $((($(date +%s%N) - started) / 1000000)) ms)"
    echo "PG_URL=$(url)"
}

case "${1:-}" in
    start) cmd_start ;;
    stop) stop_with fast ;;
    crash) stop_with immediate ;;
    promote) cmd_promote ;;
    standby-of) shift; ensure_postgres_user; cmd_standby_of "$@" ;;
    status) cmd_status ;;
    env)
        echo "export OUTBOXD_TEST_PG_URL=$(url)"
        echo "export OUTBOXD_TEST_PG_CA=$STATE/tls/ca.crt"
        echo "export OUTBOXD_TEST_PG_BINDIR=$(find_bindir)"
        ;;
    logs) tail -n "${2:-60}" "$STATE/postgres.log" ;;
    reset)
        stop_with fast
        loc=$(data_root)
        rm -rf "$loc" "$STATE"
        log "removed the cluster"
        ;;
    psql) shift; exec "$(find_psql "$(find_bindir)")" "$(url)" "$@" ;;
    *) echo "usage: $0 start|stop|crash|promote|status|env|logs [N]|reset|psql [args]|standby-of PRIMARY_STATE_DIR" >&2; exit 2 ;;
esac
