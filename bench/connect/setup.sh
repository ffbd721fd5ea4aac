#!/usr/bin/env bash
# Resolves Kafka Connect 4.3.1 (standalone worker, bench/connect/pom.xml) and the
# Debezium Postgres connector plugin archive, pinned, from Maven Central into
# bench/.work/connect (lib/ = the worker's classpath, plugins/ = its plugin.path),
# and prints that directory. Nothing is fetched again while pom.xml and the
# Debezium version are unchanged.
#
#   bench/connect/setup.sh [--with-otel]
#
# --with-otel also resolves the OpenTelemetry SDK (bench/connect/otel/pom.xml) into
# bench/.work/connect/otel: a worker with it on its classpath traces outbox events
# as Debezium documents (scripts/test-debezium.sh's tracing test). Needs a JDK 17+
# and maven (bench/run.sh and scripts/test-debezium.sh install them).
set -euo pipefail

DEBEZIUM_VERSION=${DEBEZIUM_VERSION:-3.7.0.Final}
HERE=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
CONNECT_DIR=${CONNECT_DIR:-$HERE/../.work/connect}

log() { printf 'connect-setup: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
strip_ansi() { sed -e $'s/\e\\[[0-9;]*m//g' -e '/^[[:space:]]*$/d'; }

command -v mvn >/dev/null || die "maven not found (apt-get install maven)"
mkdir -p "$(dirname "$CONNECT_DIR")"
CONNECT_DIR=$(cd "$(dirname "$CONNECT_DIR")" && pwd -P)/$(basename "$CONNECT_DIR")

resolve_connect() {
    local key
    key=$( (sha256sum "$HERE/pom.xml"; echo "$DEBEZIUM_VERSION") | sha256sum | cut -d' ' -f1)
    if [[ -f $CONNECT_DIR/.complete && $(cat "$CONNECT_DIR/.complete") == "$key" ]]; then
        return
    fi
    log "resolving Kafka Connect 4.3.1 and Debezium $DEBEZIUM_VERSION from Maven Central"
    rm -rf "$CONNECT_DIR.tmp"
    mkdir -p "$CONNECT_DIR.tmp/lib" "$CONNECT_DIR.tmp/plugins" "$CONNECT_DIR.tmp/dl"
    mvn -B -q -f "$HERE/pom.xml" dependency:copy-dependencies \
        -DincludeScope=runtime -DoutputDirectory="$CONNECT_DIR.tmp/lib" 2>&1 | strip_ansi >&2
    [[ -f $CONNECT_DIR.tmp/lib/connect-runtime-4.3.1.jar ]] || die "connect-runtime not resolved"
    # The connector as Debezium ships it: the plugin archive, one directory on plugin.path.
    mvn -B -q org.apache.maven.plugins:maven-dependency-plugin:3.6.1:copy \
        -Dartifact="io.debezium:debezium-connector-postgres:$DEBEZIUM_VERSION:tar.gz:plugin" \
        -DoutputDirectory="$CONNECT_DIR.tmp/dl" 2>&1 | strip_ansi >&2
    tar -xzf "$CONNECT_DIR.tmp/dl/debezium-connector-postgres-$DEBEZIUM_VERSION-plugin.tar.gz" \
        -C "$CONNECT_DIR.tmp/plugins"
    [[ -f $CONNECT_DIR.tmp/plugins/debezium-connector-postgres/debezium-connector-postgres-$DEBEZIUM_VERSION.jar ]] ||
        die "Debezium plugin archive did not unpack as expected"
    rm -rf "$CONNECT_DIR.tmp/dl"
    # Keep an OpenTelemetry directory resolved earlier: it does not depend on the above.
    [[ -d $CONNECT_DIR/otel ]] && mv "$CONNECT_DIR/otel" "$CONNECT_DIR.tmp/otel"
    rm -rf "$CONNECT_DIR"
    mv "$CONNECT_DIR.tmp" "$CONNECT_DIR"
    printf '%s\n' "$key" >"$CONNECT_DIR/.complete"
}

resolve_otel() {
    local key dir=$CONNECT_DIR/otel
    key=$(sha256sum "$HERE/otel/pom.xml" | cut -d' ' -f1)
    if [[ -f $dir/.complete && $(cat "$dir/.complete") == "$key" ]]; then
        return
    fi
    log "resolving the OpenTelemetry SDK from Maven Central"
    rm -rf "$dir"
    mkdir -p "$dir"
    mvn -B -q -f "$HERE/otel/pom.xml" dependency:copy-dependencies \
        -DincludeScope=runtime -DoutputDirectory="$dir" 2>&1 | strip_ansi >&2
    ls "$dir"/opentelemetry-sdk-extension-autoconfigure-*.jar >/dev/null 2>&1 ||
        die "the OpenTelemetry SDK was not resolved"
    printf '%s\n' "$key" >"$dir/.complete"
}

resolve_connect
[[ ${1:-} == --with-otel ]] && resolve_otel
printf '%s\n' "$CONNECT_DIR"
