#!/usr/bin/env bash
# A throwaway local PostgreSQL cluster for outboxd's demo and tests.
#
#   scripts/pg.sh start|stop|crash|status|env|logs|reset|psql
#
# The cluster lives in .local/pg (git-ignored), listens on 127.0.0.1:${PG_PORT:-54329},
# runs with wal_level=logical and has a TLS certificate signed by a throwaway CA
# (.local/pg/tls/ca.crt) so that sslmode=verify-full can be tested.
#
# PG_STATE_DIR (default .local/pg) selects another cluster: with another PG_PORT it
# runs next to the shared one (the fault tests start their own this way, to crash
# and restart it without disturbing other tests). `crash` stops it with
# `pg_ctl -m immediate` (no shutdown checkpoint, crash recovery on the next start).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PG_PORT="${PG_PORT:-54329}"
STATE="${PG_STATE_DIR:-$ROOT/.local/pg}"
RUN_AS=(runuser -u postgres --)

log() { printf '[pg] %s\n' "$*" >&2; }
die() { printf '[pg] error: %s\n' "$*" >&2; exit 1; }

# Finds the newest installed server's bin directory; installs Debian's postgresql if none.
find_bindir() {
    local dir
    dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    if [[ -z "$dir" || ! -x "$dir/initdb" ]]; then
        [[ $(id -u) -eq 0 ]] || die "PostgreSQL server binaries not found; install Debian's 'postgresql' package (needs root)."
        log "installing Debian's postgresql (initdb not found)…"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >&2
        apt-get install -y -qq postgresql postgresql-contrib openssl >&2
        dir=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
    fi
    printf '%s' "$dir"
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
    chown postgres:postgres "$loc/data/outboxd.conf"
}

cmd_start() {
    local bindir loc
    bindir=$(find_bindir)
    loc=$(data_root)
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

cmd_stop() {
    local bindir loc
    bindir=$(find_bindir)
    loc=$(data_root)
    if is_running "$bindir" "$loc"; then
        "${RUN_AS[@]}" "$bindir/pg_ctl" -D "$loc/data" -m fast -w stop >/dev/null
        log "stopped"
    else
        log "not running"
    fi
}

cmd_crash() {
    local bindir loc
    bindir=$(find_bindir)
    loc=$(data_root)
    if is_running "$bindir" "$loc"; then
        "${RUN_AS[@]}" "$bindir/pg_ctl" -D "$loc/data" -m immediate -w stop >/dev/null
        log "stopped with -m immediate"
    else
        log "not running"
    fi
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

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    crash) cmd_crash ;;
    status) cmd_status ;;
    env)
        echo "export OUTBOXD_TEST_PG_URL=$(url)"
        echo "export OUTBOXD_TEST_PG_CA=$STATE/tls/ca.crt"
        echo "export OUTBOXD_TEST_PG_BINDIR=$(find_bindir)"
        ;;
    logs) tail -n "${2:-60}" "$STATE/postgres.log" ;;
    reset)
        cmd_stop
        loc=$(data_root)
        rm -rf "$loc" "$STATE"
        log "removed the cluster"
        ;;
    psql) shift; exec "$(find_bindir)/psql" "$(url)" "$@" ;;
    *) echo "usage: $0 start|stop|crash|status|env|logs [N]|reset|psql [args]" >&2; exit 2 ;;
esac
