#!/usr/bin/env bash
# A private Docker engine for machines without one (CI, a sandbox): Debian's
# docker.io with its own data root and socket, no bridge and no iptables rules, so
# that it touches nothing of the host's network. Containers and builds use the
# host's network (scripts/containers/compose.host-network.yml).
#
#   scripts/containers/dockerd.sh start    install docker.io if missing, start, wait
#   scripts/containers/dockerd.sh stop     stop the engine (and the containers in it)
#   scripts/containers/dockerd.sh status   exit 0 if running, 3 if not
#   scripts/containers/dockerd.sh env      eval "$(scripts/containers/dockerd.sh env)"
#
# Images live in the data root, .cache/containers/docker (CONTAINERS_CACHE_DIR
# moves it), so they survive between runs. One engine per data root: a checkout
# whose .cache points at another's shares that engine.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CACHE=${CONTAINERS_CACHE_DIR:-$ROOT/.cache/containers}
mkdir -p "$CACHE/docker"
DATA_ROOT=$(cd "$CACHE/docker" && pwd -P)
# Sockets have a 108-byte path limit: the run directory stays short, keyed by the
# data root so that one data root never gets two engines.
RUN_DIR=/run/outboxd-docker-$(printf '%s' "$DATA_ROOT" | md5sum | cut -c1-8)
SOCKET=$RUN_DIR/docker.sock
PID_FILE=$RUN_DIR/dockerd.pid
LOG_FILE=$RUN_DIR/dockerd.log
START_TIMEOUT=${DOCKERD_START_TIMEOUT:-60}

log() { printf '[dockerd] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

running() {
    [[ -S $SOCKET ]] && DOCKER_HOST=unix://$SOCKET /usr/bin/docker version >/dev/null 2>&1
}

ensure_installed() {
    command -v dockerd >/dev/null 2>&1 && [[ -x /usr/bin/docker ]] && return
    [[ $(id -u) -eq 0 ]] || die "dockerd not found; install Debian's docker.io (needs root)"
    log "installing Debian's docker.io"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends docker.io >&2
}

cmd_start() {
    if running; then
        log "already running (data root $DATA_ROOT)"
        return 0
    fi
    [[ $(id -u) -eq 0 ]] || die "starting the engine needs root"
    ensure_installed
    mkdir -p "$RUN_DIR"
    # An empty config file: /etc/docker/daemon.json, if any, belongs to someone else.
    printf '{}\n' >"$RUN_DIR/daemon.json"
    log "starting dockerd (data root $DATA_ROOT, socket $SOCKET, log $LOG_FILE)"
    setsid nohup dockerd \
        --config-file "$RUN_DIR/daemon.json" \
        --host "unix://$SOCKET" \
        --data-root "$DATA_ROOT" \
        --exec-root "$RUN_DIR/exec" \
        --pidfile "$PID_FILE" \
        --bridge=none --iptables=false --ip-forward=false --ip-masq=false \
        --log-level warn \
        >>"$LOG_FILE" 2>&1 </dev/null &
    local deadline=$((SECONDS + START_TIMEOUT))
    until running; do
        if ((SECONDS >= deadline)); then
            tail -n 30 "$LOG_FILE" >&2
            die "dockerd did not answer within $START_TIMEOUT s (log above)"
        fi
        sleep 0.5
    done
    log "ready: $(DOCKER_HOST=unix://$SOCKET /usr/bin/docker version --format '{{.Server.Version}}')"
}

cmd_stop() {
    local pid
    if [[ ! -f $PID_FILE ]] || ! pid=$(<"$PID_FILE") || ! kill -0 "$pid" 2>/dev/null; then
        log "not running"
        return 0
    fi
    log "stopping dockerd (pid $pid)"
    kill -TERM "$pid"
    local deadline=$((SECONDS + 60))
    while kill -0 "$pid" 2>/dev/null; do
        ((SECONDS < deadline)) || die "dockerd (pid $pid) still running 60 s after SIGTERM"
        sleep 0.5
    done
    # dockerd leaves a bind mount of the host's network namespace in its exec root.
    awk -v dir="$RUN_DIR/" 'index($2, dir) == 1 { print $2 }' /proc/mounts | sort -r |
        while read -r mount; do umount "$mount"; done
    log "stopped"
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status)
        if running; then echo "running: unix://$SOCKET (data root $DATA_ROOT)"; else echo "not running"; exit 3; fi
        ;;
    env) echo "export DOCKER_HOST=unix://$SOCKET" ;;
    *) echo "usage: $0 start|stop|status|env" >&2; exit 2 ;;
esac
