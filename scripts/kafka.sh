#!/usr/bin/env bash
# Runs a real single-node Apache Kafka (KRaft, broker+controller) for local
# tests, from jars resolved out of Maven Central (no Docker, no tarball).
#
#   scripts/kafka.sh start    resolve jars (once), format (once), start, wait
#   scripts/kafka.sh stop     SIGTERM, wait, SIGKILL as a last resort
#   scripts/kafka.sh status   exit 0 if running, 3 if not
#   scripts/kafka.sh env      eval "$(scripts/kafka.sh env)"
#   scripts/kafka.sh logs [-f|N]   tail of .local/kafka/server.log
#   scripts/kafka.sh reset    stop and wipe .local/kafka (keeps the jar cache)
#   scripts/kafka.sh tool CLASS [ARGS...]   run a Kafka CLI class, e.g.
#       scripts/kafka.sh tool org.apache.kafka.tools.TopicCommand \
#           --bootstrap-server 127.0.0.1:19092 --list
#
# Environment: KAFKA_PORT (19092), KAFKA_CONTROLLER_PORT (19093),
# KAFKA_HEAP_OPTS (-Xmx512m -Xms256m), KAFKA_JVM_OPTS (GC and friends),
# KAFKA_OPTS (appended), KAFKA_START_TIMEOUT (90 s), KAFKA_STOP_TIMEOUT (30 s),
# JAVA_HOME (optional).
# KAFKA_STATE_DIR (.local/kafka) selects another broker: with other ports it runs
# next to the shared one (the fault tests start their own this way, to restart and
# kill it without disturbing other tests). KAFKA_PROXIED_PORT and KAFKA_PROXY_PORT
# add a listener on the first port that advertises the second, where a test's
# fault proxy forwards to it; clients bootstrapping through the proxy then stay on
# it, clients of KAFKA_PORT do not.
# KAFKA_SASL_SSL_PORT adds a SASL_SSL listener (SCRAM-SHA-256 and -512) on that port,
# with a PEM key store from KAFKA_SSL_DIR ($KAFKA_STATE_DIR/tls): server.pem (key and
# certificate chain) is made there with openssl when missing, signed by a throwaway
# CA (ca.crt, which clients trust; the certificate names localhost and 127.0.0.1).
# KAFKA_SCRAM_USERS ("name:password ...", no spaces, commas or brackets in either)
# are given SCRAM-SHA-256 and -512 credentials when the storage is formatted, i.e.
# on the first start of a state dir only.
# KAFKA_AUTHORIZER=1 (with KAFKA_SASL_SSL_PORT) turns on Kafka's ACL authorizer:
# principals of the SASL_SSL listener get only what ACLs grant them, while the
# plaintext listeners' (ANONYMOUS: controller, inter-broker, test tooling) are
# super users.
set -euo pipefail

KAFKA_VERSION=4.3.1

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
REPO_ROOT=$(cd -- "$SCRIPT_DIR/.." && pwd -P)
HELPER_DIR=$SCRIPT_DIR/kafka

# Jars are a re-creatable cache; broker state (config, data, logs) lives in
# .local and is disposable (`reset`).
CACHE_DIR=$REPO_ROOT/.cache/kafka/$KAFKA_VERSION
LIB_DIR=$CACHE_DIR/lib
LIB_MARKER=$CACHE_DIR/.complete
STATE_DIR=${KAFKA_STATE_DIR:-$REPO_ROOT/.local/kafka}
DATA_DIR=$STATE_DIR/data
CONFIG=$STATE_DIR/server.properties
ADMIN_CONFIG=$STATE_DIR/admin.properties
PID_FILE=$STATE_DIR/kafka.pid
LOG_FILE=$STATE_DIR/server.log
CONSOLE_LOG=$STATE_DIR/console.log
# Outside STATE_DIR, which `reset` deletes.
SSL_DIR=${KAFKA_SSL_DIR:-$STATE_DIR/tls}
LOCK_FILE=$REPO_ROOT/.local/kafka.lock
[[ -z ${KAFKA_STATE_DIR:-} ]] || LOCK_FILE=${KAFKA_STATE_DIR%/}.lock

KAFKA_HOST=127.0.0.1
KAFKA_PORT=${KAFKA_PORT:-19092}
KAFKA_CONTROLLER_PORT=${KAFKA_CONTROLLER_PORT:-19093}
BOOTSTRAP=$KAFKA_HOST:$KAFKA_PORT
START_TIMEOUT=${KAFKA_START_TIMEOUT:-90}
STOP_TIMEOUT=${KAFKA_STOP_TIMEOUT:-30}

# Small, bounded heap. SerialGC: no concurrent GC threads fighting the broker
# for 2 cores, and young collections of a 512 MiB heap are short anyway.
KAFKA_HEAP_OPTS=${KAFKA_HEAP_OPTS:--Xmx512m -Xms256m}
KAFKA_JVM_OPTS=${KAFKA_JVM_OPTS:--XX:+UseSerialGC -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true}
KAFKA_OPTS=${KAFKA_OPTS:-}
TOOL_JVM_OPTS=(-Xmx256m -XX:+UseSerialGC
    "-Dlog4j2.configurationFile=$HELPER_DIR/tools-log4j2.properties")
# The probe and the storage formatter live ~1 s: C1 alone starts them ~35%
# faster (measured). Not used for `tool`, where perf tools want C2.
QUICK_JVM_OPTS=(-XX:TieredStopAtLevel=1)

JAVA=java
BROKER_PID=
LOG_OFFSET=0

log() { printf 'kafka.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

now_ms() { date +%s%3N; }

is_root() { [[ $(id -u) -eq 0 ]]; }

# apt-get install, only when we are root and apt exists; otherwise explain.
apt_install() {
    local pkg=$1 why=$2
    if is_root && command -v apt-get >/dev/null 2>&1; then
        log "$why: installing $pkg with apt-get"
        apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$pkg" >&2
    else
        die "$why; install $pkg (e.g. 'sudo apt-get install $pkg')"
    fi
}

# Prints the major version of the given java binary (8 for 1.8), or nothing.
java_major() {
    local v
    v=$("$1" -version 2>&1 | sed -n 's/.*version "\([^"]*\)".*/\1/p' | head -n1)
    v=${v#1.}
    printf '%s\n' "${v%%[.+-]*}"
}

# Sets JAVA to an installed OpenJDK 17+ under /usr/lib/jvm, if there is one.
find_jvm17() {
    local candidate major
    for candidate in /usr/lib/jvm/java-*-openjdk-*/bin/java; do
        [[ -x $candidate ]] || continue
        major=$(java_major "$candidate")
        if [[ -n $major && $major -ge 17 ]]; then JAVA=$candidate; return 0; fi
    done
    return 1
}

# Kafka 4 needs Java 17+.
ensure_java() {
    if [[ -n ${JAVA_HOME:-} && -x $JAVA_HOME/bin/java ]]; then
        JAVA=$JAVA_HOME/bin/java
    elif ! command -v java >/dev/null 2>&1; then
        apt_install openjdk-17-jre-headless "java not found"
    fi
    local major
    major=$(java_major "$JAVA")
    [[ -n $major && $major -ge 17 ]] && return
    # An older default java may shadow an installed 17.
    find_jvm17 && return
    apt_install openjdk-17-jre-headless "Kafka $KAFKA_VERSION needs Java 17+ (found '${major:-none}')"
    find_jvm17 || die "Java 17 still not found after installing it"
}

# The jar set is keyed by the pom's hash, so editing the pom re-resolves.
pom_hash() { sha256sum "$HELPER_DIR/pom.xml" | cut -d' ' -f1; }

ensure_jars() {
    if [[ -f $LIB_MARKER && $(cat "$LIB_MARKER") == "$(pom_hash)" ]]; then
        return
    fi
    command -v mvn >/dev/null 2>&1 || apt_install maven "mvn not found"
    log "resolving Kafka $KAFKA_VERSION jars from Maven Central into ${LIB_DIR#"$REPO_ROOT"/}"
    local tmp=$LIB_DIR.tmp
    rm -rf "$tmp"
    mkdir -p "$CACHE_DIR"
    # Resolve into a temp dir and swap, so an interrupted run never leaves a
    # half-filled lib dir that looks complete. Debian's mvn 3.8 emits stray
    # ANSI resets even in batch mode: strip them.
    if ! mvn -B -q -f "$HELPER_DIR/pom.xml" dependency:copy-dependencies \
        -DincludeScope=runtime -DoutputDirectory="$tmp" 2>&1 |
        sed -e $'s/\e\\[[0-9;]*m//g' -e '/^[[:space:]]*$/d' >&2; then
        rm -rf "$tmp"
        die "maven could not resolve the Kafka jars (see output above)"
    fi
    [[ -f $tmp/kafka_2.13-$KAFKA_VERSION.jar ]] || die "kafka_2.13-$KAFKA_VERSION.jar missing after resolution"
    rm -rf "$LIB_DIR"
    mv "$tmp" "$LIB_DIR"
    pom_hash >"$LIB_MARKER"
    log "resolved $(find "$LIB_DIR" -name '*.jar' | wc -l) jars"
}

# Runs a Kafka main class from the cached jars with quiet tool logging.
# Leading -X/-D arguments go to the JVM.
run_tool() {
    local -a jvm=()
    while (($# > 0)) && [[ $1 == -* ]]; do jvm+=("$1"); shift; done
    "$JAVA" "${TOOL_JVM_OPTS[@]}" "${jvm[@]}" -cp "$LIB_DIR/*" "$@"
}

# True if the pid is our broker: a java process started on our config file.
# Guards against stale pid files whose pid was reused by something else.
is_our_kafka() {
    local pid=$1 cmdline
    [[ $pid =~ ^[0-9]+$ && -r /proc/$pid/cmdline ]] || return 1
    [[ $(cat "/proc/$pid/comm" 2>/dev/null) == java ]] || return 1
    cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
    [[ $cmdline == *" kafka.Kafka $CONFIG"* ]]
}

# Prints the pid of our running broker; repairs a lost or stale pid file.
running_pid() {
    local pid
    if [[ -f $PID_FILE ]]; then
        pid=$(<"$PID_FILE")
        if is_our_kafka "$pid"; then
            printf '%s\n' "$pid"
            return 0
        fi
        rm -f "$PID_FILE"
    fi
    # Pid file gone but the broker may still run (e.g. deleted by hand).
    local f
    for f in /proc/[0-9]*/cmdline; do
        pid=${f#/proc/}
        pid=${pid%/cmdline}
        if is_our_kafka "$pid"; then
            printf '%s\n' "$pid" >"$PID_FILE"
            printf '%s\n' "$pid"
            return 0
        fi
    done
    return 1
}

port_open() { (exec 3<>"/dev/tcp/$KAFKA_HOST/$1") 2>/dev/null; }

render_config() {
    mkdir -p "$DATA_DIR"
    sed -e "s|{{HOST}}|$KAFKA_HOST|g" \
        -e "s|{{PORT}}|$KAFKA_PORT|g" \
        -e "s|{{CONTROLLER_PORT}}|$KAFKA_CONTROLLER_PORT|g" \
        -e "s|{{DATA_DIR}}|$DATA_DIR|g" \
        "$HELPER_DIR/server.properties.in" >"$CONFIG"
    if [[ -n ${KAFKA_PROXIED_PORT:-} && -n ${KAFKA_PROXY_PORT:-} ]]; then
        sed -i \
            -e "s|^listeners=.*|&,PROXIED://$KAFKA_HOST:$KAFKA_PROXIED_PORT|" \
            -e "s|^advertised.listeners=.*|&,PROXIED://$KAFKA_HOST:$KAFKA_PROXY_PORT|" \
            -e "s|^listener.security.protocol.map=.*|&,PROXIED:PLAINTEXT|" \
            "$CONFIG"
    fi
    [[ -z ${KAFKA_SASL_SSL_PORT:-} ]] || add_sasl_ssl_listener
    # Admin client settings for the readiness probe: fail fast, retry here.
    cat >"$ADMIN_CONFIG" <<EOF
request.timeout.ms=5000
default.api.timeout.ms=15000
reconnect.backoff.ms=100
reconnect.backoff.max.ms=250
EOF
}

# A throwaway CA and a server certificate for localhost / 127.0.0.1, as one PEM key
# store (PKCS#8 key, then the certificate), which Kafka reads without a password.
make_tls() {
    [[ -f $SSL_DIR/server.pem ]] && return
    command -v openssl >/dev/null 2>&1 || apt_install openssl "openssl not found"
    log "making a test CA and server certificate in $SSL_DIR"
    mkdir -p "$SSL_DIR"
    (
        cd "$SSL_DIR"
        openssl req -x509 -newkey rsa:2048 -nodes -days 3650 \
            -subj "/CN=outboxd test Kafka CA" -keyout ca.key -out ca.crt
        openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
            -keyout server.key -out server.csr
        printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >san.ext
        openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
            -days 3650 -extfile san.ext -out server.crt
        cat server.key server.crt >server.pem.tmp
        chmod 0600 server.key server.pem.tmp
        mv server.pem.tmp server.pem
    ) >>"$CONSOLE_LOG" 2>&1 || { tail -n 20 "$CONSOLE_LOG" >&2; die "openssl failed"; }
}

# SCRAM over TLS; the inter-broker and controller listeners stay PLAINTEXT.
add_sasl_ssl_listener() {
    make_tls
    sed -i \
        -e "s|^listeners=.*|&,SASL_SSL://$KAFKA_HOST:$KAFKA_SASL_SSL_PORT|" \
        -e "s|^advertised.listeners=.*|&,SASL_SSL://$KAFKA_HOST:$KAFKA_SASL_SSL_PORT|" \
        -e "s|^listener.security.protocol.map=.*|&,SASL_SSL:SASL_SSL|" \
        "$CONFIG"
    local scram=org.apache.kafka.common.security.scram.ScramLoginModule
    cat >>"$CONFIG" <<EOF

# SASL_SSL listener (KAFKA_SASL_SSL_PORT), added by scripts/kafka.sh.
listener.name.sasl_ssl.sasl.enabled.mechanisms=SCRAM-SHA-256,SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=$scram required;
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=$scram required;
listener.name.sasl_ssl.ssl.keystore.type=PEM
listener.name.sasl_ssl.ssl.keystore.location=$SSL_DIR/server.pem
EOF
    [[ ${KAFKA_AUTHORIZER:-} != 1 ]] || cat >>"$CONFIG" <<EOF

# ACLs (KAFKA_AUTHORIZER=1), added by scripts/kafka.sh.
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:ANONYMOUS
EOF
}

# KRaft storage must be formatted exactly once per data dir.
format_storage() {
    [[ -f $DATA_DIR/meta.properties ]] && return
    # A cluster id is 16 random bytes in URL-safe base64 without padding;
    # Kafka's own generator also avoids ids starting with '-'.
    local id
    id=-
    while [[ $id == -* ]]; do
        id=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')
    done
    local -a scram=()
    local user mechanism
    for user in ${KAFKA_SCRAM_USERS:-}; do
        [[ $user == ?*:?* ]] || die "KAFKA_SCRAM_USERS: '$user' is not name:password"
        for mechanism in SCRAM-SHA-256 SCRAM-SHA-512; do
            scram+=(--add-scram "$mechanism=[name=${user%%:*},password=${user#*:}]")
        done
    done
    log "formatting KRaft storage (cluster id $id)"
    run_tool "${QUICK_JVM_OPTS[@]}" kafka.tools.StorageTool format --ignore-formatted \
        -t "$id" -c "$CONFIG" "${scram[@]}" >>"$CONSOLE_LOG" 2>&1 ||
        { tail -n 20 "$CONSOLE_LOG" >&2; die "storage format failed"; }
}

# server.log is appended to across runs: show only what this run wrote
# (from LOG_OFFSET on), unless the file was rolled meanwhile.
show_failure_logs() {
    if [[ -s $CONSOLE_LOG ]]; then
        log "last lines of ${CONSOLE_LOG#"$REPO_ROOT"/}:"
        tail -n 20 "$CONSOLE_LOG" >&2
    fi
    local size
    size=$(stat -c %s "$LOG_FILE" 2>/dev/null || echo 0)
    ((size >= LOG_OFFSET)) || LOG_OFFSET=0
    if ((size > LOG_OFFSET)); then
        log "last 40 lines of ${LOG_FILE#"$REPO_ROOT"/}:"
        tail -c "+$((LOG_OFFSET + 1))" "$LOG_FILE" | tail -n 40 >&2
    else
        log "nothing in ${LOG_FILE#"$REPO_ROOT"/} from this run"
    fi
}

# Ready means the broker answers a Metadata request (TopicCommand --list).
# The probe JVM runs in the background, started right away so its own
# start-up overlaps the broker's; its admin client retries the connection.
# Sets BROKER_PID (re-discovered if the launcher pid was not the JVM's).
wait_ready() {
    local t0=$1 deadline=$(($1 + START_TIMEOUT * 1000)) next_note now
    local probe_pid='' probe_rc
    next_note=$((t0 + 5000))
    while :; do
        now=$(now_ms)
        if ! kill -0 "$BROKER_PID" 2>/dev/null && ! BROKER_PID=$(running_pid); then
            log "broker process exited during start-up"
            break
        fi
        if ((now >= deadline)); then
            log "broker not ready after $START_TIMEOUT s"
            break
        fi
        if [[ -z $probe_pid ]]; then
            timeout 30 "$JAVA" "${TOOL_JVM_OPTS[@]}" "${QUICK_JVM_OPTS[@]}" \
                -cp "$LIB_DIR/*" org.apache.kafka.tools.TopicCommand \
                --bootstrap-server "$BOOTSTRAP" --command-config "$ADMIN_CONFIG" \
                --list >/dev/null 2>&1 9>&- &
            probe_pid=$!
        elif ! kill -0 "$probe_pid" 2>/dev/null; then
            # bash has reaped it; wait still hands back its exit status.
            probe_rc=0
            wait "$probe_pid" || probe_rc=$?
            ((probe_rc == 0)) && return 0
            probe_pid='' # retry after the sleep below
        fi
        if ((now >= next_note)); then
            log "waiting for the broker on $BOOTSTRAP ($(((now - t0) / 1000)) s)"
            next_note=$((now + 5000))
        fi
        sleep 0.2
    done
    if [[ -n $probe_pid ]]; then
        kill "$probe_pid" 2>/dev/null || true # timeout passes it on to java
        wait "$probe_pid" 2>/dev/null || true
    fi
    return 1
}

cmd_start() {
    local pid
    if pid=$(running_pid); then
        log "already running (pid $pid) on $BOOTSTRAP"
        printf 'KAFKA_BROKERS=%s\n' "$BOOTSTRAP"
        return 0
    fi
    local t0 port
    t0=$(now_ms)
    # Another broker (or anything) on our ports would make us probe the wrong
    # server, or fail late with a bind error.
    for port in "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT"; do
        if port_open "$port"; then
            die "port $KAFKA_HOST:$port is in use by another process (set KAFKA_PORT / KAFKA_CONTROLLER_PORT)"
        fi
    done
    ensure_java
    ensure_jars
    mkdir -p "$STATE_DIR"
    render_config
    : >"$CONSOLE_LOG"
    format_storage

    log "starting Kafka $KAFKA_VERSION on $BOOTSTRAP (controller $KAFKA_HOST:$KAFKA_CONTROLLER_PORT)"
    printf '[%s] ===== scripts/kafka.sh start =====\n' "$(date '+%F %T,%3N')" >>"$LOG_FILE"
    LOG_OFFSET=$(stat -c %s "$LOG_FILE")
    # Own session + nohup: the broker outlives the calling shell and its
    # terminal. The console log only catches what comes before log4j starts.
    # fd 9 is our lock: the broker must not inherit (and hold) it.
    local -a heap jvm extra
    read -r -a heap <<<"$KAFKA_HEAP_OPTS"
    read -r -a jvm <<<"$KAFKA_JVM_OPTS"
    read -r -a extra <<<"$KAFKA_OPTS"
    (cd "$STATE_DIR" && exec setsid nohup "$JAVA" "${heap[@]}" "${jvm[@]}" "${extra[@]}" \
        "-Dlog4j2.configurationFile=$HELPER_DIR/log4j2.properties" \
        "-Dkafka.logs.dir=$STATE_DIR" \
        -cp "$LIB_DIR/*" kafka.Kafka "$CONFIG" \
        >>"$CONSOLE_LOG" 2>&1 </dev/null 9>&-) &
    BROKER_PID=$!
    printf '%s\n' "$BROKER_PID" >"$PID_FILE"

    if ! wait_ready "$t0"; then
        show_failure_logs
        if kill -0 "$BROKER_PID" 2>/dev/null; then
            log "stopping the half-started broker"
            cmd_stop >/dev/null 2>&1 || true
        fi
        rm -f "$PID_FILE"
        exit 1
    fi
    local ms=$(($(now_ms) - t0))
    log "ready in $((ms / 1000)).$(printf '%03d' $((ms % 1000))) s (pid $BROKER_PID)"
    printf 'Kafka %s running at %s\n' "$KAFKA_VERSION" "$BOOTSTRAP"
    printf 'KAFKA_BROKERS=%s\n' "$BOOTSTRAP"
}

cmd_stop() {
    local pid
    if ! pid=$(running_pid); then
        rm -f "$PID_FILE"
        log "not running"
        return 0
    fi
    log "stopping pid $pid (SIGTERM, up to $STOP_TIMEOUT s)"
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + STOP_TIMEOUT))
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do
        sleep 0.2
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "no clean shutdown after $STOP_TIMEOUT s, sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
    fi
    rm -f "$PID_FILE"
    log "stopped"
}

cmd_status() {
    local pid
    if pid=$(running_pid); then
        local state="port open"
        port_open "$KAFKA_PORT" || state="port not open yet"
        printf 'running: pid %s, bootstrap %s (%s)\n' "$pid" "$BOOTSTRAP" "$state"
        return 0
    fi
    printf 'not running (bootstrap would be %s)\n' "$BOOTSTRAP"
    return 3
}

cmd_env() {
    printf 'export OUTBOXD_TEST_KAFKA_BROKERS=%s\n' "$BOOTSTRAP"
}

cmd_logs() {
    [[ -f $LOG_FILE ]] || die "no log yet (${LOG_FILE#"$REPO_ROOT"/})"
    case ${1:-} in
        -f) exec tail -n 50 -F "$LOG_FILE" ;;
        '') tail -n 100 "$LOG_FILE" ;;
        *) tail -n "$1" "$LOG_FILE" ;;
    esac
}

cmd_reset() {
    cmd_stop
    rm -rf "$STATE_DIR"
    log "wiped ${STATE_DIR#"$REPO_ROOT"/} (jar cache kept in ${CACHE_DIR#"$REPO_ROOT"/})"
}

cmd_tool() {
    (($# > 0)) || die "usage: $0 tool MAIN_CLASS [ARGS...]"
    ensure_java
    ensure_jars
    run_tool "$@"
}

usage() {
    sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "${BASH_SOURCE[0]}" >&2
    exit 2
}

# Serialises start/stop/reset, e.g. several test binaries calling `start` at
# once: the first starts the broker, the others then find it running.
take_lock() {
    command -v flock >/dev/null 2>&1 || return 0
    mkdir -p "${LOCK_FILE%/*}"
    exec 9>"$LOCK_FILE"
    flock -w 180 9 || die "timed out waiting for $LOCK_FILE"
}

main() {
    local cmd=${1:-}
    (($# > 0)) && shift
    case $cmd in
        start | stop | reset) take_lock ;;
    esac
    case $cmd in
        start) cmd_start ;;
        stop) cmd_stop ;;
        status) cmd_status ;;
        env) cmd_env ;;
        logs) cmd_logs "$@" ;;
        reset) cmd_reset ;;
        tool) cmd_tool "$@" ;;
        *) usage ;;
    esac
}

main "$@"
