#!/usr/bin/env bash
# The official postgres image's entrypoint contract, the part docker-compose.yml
# and scripts/containers/test.sh rely on: on first start, initdb with
# POSTGRES_USER / POSTGRES_PASSWORD, password authentication from other hosts
# (POSTGRES_HOST_AUTH_METHOD, scram-sha-256 by default), POSTGRES_DB created,
# /docker-entrypoint-initdb.d/*.sql and *.sh run; then `postgres "$@"` as the
# postgres user, listening on every address (PGPORT honoured).
set -euo pipefail

die() { printf 'docker-entrypoint.sh: error: %s\n' "$*" >&2; exit 1; }

if [[ ${1:-} == -* ]]; then set -- postgres "$@"; fi
if [[ ${1:-} != postgres ]]; then exec "$@"; fi

if [[ $(id -u) -eq 0 ]]; then
    mkdir -p "$PGDATA"
    chown postgres:postgres "$PGDATA"
    chmod 0700 "$PGDATA"
    exec setpriv --reuid=postgres --regid=postgres --init-groups "${BASH_SOURCE[0]}" "$@"
fi

POSTGRES_USER=${POSTGRES_USER:-postgres}
POSTGRES_DB=${POSTGRES_DB:-$POSTGRES_USER}
auth=${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}

if [[ ! -s $PGDATA/PG_VERSION ]]; then
    if [[ -z ${POSTGRES_PASSWORD:-} && $auth != trust ]]; then
        die "the database is uninitialized and POSTGRES_PASSWORD is not set; set it (or POSTGRES_HOST_AUTH_METHOD=trust)"
    fi
    read -r -a initdb_args <<<"${POSTGRES_INITDB_ARGS:-}"
    initdb --username="$POSTGRES_USER" --pwfile=<(printf '%s\n' "${POSTGRES_PASSWORD:-}") \
        "${initdb_args[@]}" -D "$PGDATA"
    printf "listen_addresses = '*'\nunix_socket_directories = '/var/run/postgresql'\n" >>"$PGDATA/postgresql.conf"
    printf 'host all all all %s\n' "$auth" >>"$PGDATA/pg_hba.conf"

    # A server only on its socket while the database and the init scripts are made.
    pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start
    psql=(psql -X -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --no-password --dbname postgres)
    if [[ $POSTGRES_DB != postgres ]]; then
        "${psql[@]}" --set db="$POSTGRES_DB" <<<'CREATE DATABASE :"db"'
    fi
    shopt -s nullglob
    for f in /docker-entrypoint-initdb.d/*; do
        case $f in
            *.sql) echo "running $f"; "${psql[@]}" --dbname "$POSTGRES_DB" -f "$f" ;;
            *.sh) echo "running $f"; bash "$f" ;;
            *) echo "ignoring $f" ;;
        esac
    done
    pg_ctl -D "$PGDATA" -m fast -w stop
    echo "PostgreSQL init process complete; ready for start up."
fi

exec "$@"
