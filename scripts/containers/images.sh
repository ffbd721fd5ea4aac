#!/usr/bin/env bash
# Local stand-ins for the public images the Dockerfile and docker-compose.yml name,
# for a Docker engine that cannot pull from a registry (CI here):
#
#   debian:bookworm-slim   debootstrap --variant=minbase bookworm, imported
#   rust:1-bookworm        Debian's Rust 1.96 (rustc-web, cargo-web) and C toolchain
#   postgres:17            PostgreSQL 17 of scripts/pg-versions.sh (npm's embedded-postgres)
#   apache/kafka:4.3.1     the jars of scripts/kafka.sh on Debian's OpenJDK 17
#
#   scripts/containers/images.sh [--force] [debian|rust|postgres|kafka]...
#
# Only Debian's archive, npm and Maven Central are contacted. A tag that exists and
# is not a stand-in (a pulled image) is never replaced. A stand-in is rebuilt when
# its recipe (scripts/containers/stand-ins/NAME) or its base changed, or with
# --force. Downloads are cached in .cache/containers (CONTAINERS_CACHE_DIR).
# Runs against the engine DOCKER_HOST names (scripts/containers/dockerd.sh env).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE=$ROOT/scripts/containers/stand-ins
CACHE=${CONTAINERS_CACHE_DIR:-$ROOT/.cache/containers}
WORK=$ROOT/.local/containers
LABEL=dev.outboxd.stand-in
KAFKA_LIB=$ROOT/.cache/kafka/4.3.1/lib

log() { printf '[images] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

force=0
names=()
for arg in "$@"; do
    case $arg in
        --force) force=1 ;;
        debian | rust | postgres | kafka) names+=("$arg") ;;
        *) die "unknown argument '$arg' (usage: $0 [--force] [debian|rust|postgres|kafka]...)" ;;
    esac
done
((${#names[@]} > 0)) || names=(debian rust postgres kafka)

declare -A TAG=([debian]=debian:bookworm-slim [rust]=rust:1-bookworm
    [postgres]=postgres:17 [kafka]=apache/kafka:4.3.1)

# The stand-in's recipe hash: its files, its base image's label and its inputs.
recipe() {
    local name=$1 base_label=$2 inputs
    case $name in
        postgres) inputs=$("$ROOT/scripts/pg-versions.sh" version 17) ;;
        kafka) inputs=$(cat "$ROOT/scripts/kafka/pom.xml" "$ROOT/scripts/kafka/tools-log4j2.properties") ;;
        *) inputs= ;;
    esac
    { find "$HERE/$name" -type f | sort | xargs cat; printf '%s\n%s' "$base_label" "$inputs"; } |
        sha256sum | cut -c1-16
}

label_of() { docker image inspect --format "{{index .Config.Labels \"$LABEL\"}}" "$1" 2>/dev/null; }

# True if TAG must be (re)built to carry recipe WANT.
stale() {
    local tag=$1 want=$2 have
    if ! have=$(label_of "$tag"); then return 0; fi
    if [[ -z $have || $have == '<no value>' ]]; then
        log "$tag exists and is not a stand-in: kept"
        return 1
    fi
    [[ $force -eq 1 || $have != "$want" ]]
}

need_root() { [[ $(id -u) -eq 0 ]] || die "$1 needs root"; }

apt_install() {
    need_root "installing $*"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends "$@" >&2
}

build_debian() {
    local want=$1 tarball=$CACHE/debian-bookworm-minbase.tar
    if [[ ! -f $tarball || $force -eq 1 ]]; then
        need_root "debootstrap"
        command -v debootstrap >/dev/null 2>&1 || apt_install debootstrap
        local rootfs=$WORK/debian-rootfs
        rm -rf "$rootfs"
        mkdir -p "$rootfs" "$CACHE"
        log "debootstrap --variant=minbase bookworm (log: $WORK/debootstrap.log)"
        debootstrap --variant=minbase bookworm "$rootfs" http://deb.debian.org/debian \
            >"$WORK/debootstrap.log" 2>&1 || { tail -n 20 "$WORK/debootstrap.log" >&2; die "debootstrap failed"; }
        bash "$HERE/debian/finalize.sh" "$rootfs"
        tar -C "$rootfs" --numeric-owner -cf "$tarball.tmp" .
        mv "$tarball.tmp" "$tarball"
        rm -rf "$rootfs"
    fi
    log "importing $tarball as debian:bookworm-slim"
    docker import --change "LABEL $LABEL=$want" --change 'CMD ["bash"]' \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        "$tarball" debian:bookworm-slim >/dev/null
}

# Copies the recipe into a fresh build context; the caller adds the large inputs.
context() {
    local ctx=$WORK/$1
    rm -rf "$ctx"
    mkdir -p "$WORK"
    cp -r "$HERE/$1" "$ctx"
    printf '%s' "$ctx"
}

build_rust() {
    local ctx
    ctx=$(context rust)
    cp /etc/ssl/certs/ca-certificates.crt "$ctx/host-ca.crt"
    docker_build "$1" rust:1-bookworm "$ctx"
}

build_postgres() {
    local ctx bindir
    ctx=$(context postgres)
    bindir=$("$ROOT/scripts/pg-versions.sh" fetch 17)
    cp -a "$(dirname "$bindir")" "$ctx/pg17"
    rm -f "$ctx"/pg17/lib/*.a
    docker_build "$1" postgres:17 "$ctx"
}

build_kafka() {
    local ctx
    ctx=$(context kafka)
    if [[ ! -f $KAFKA_LIB/kafka_2.13-4.3.1.jar ]]; then
        log "resolving the Kafka jars (scripts/kafka.sh)"
        "$ROOT/scripts/kafka.sh" tool org.apache.kafka.tools.TopicCommand --version >/dev/null
    fi
    cp -r "$KAFKA_LIB" "$ctx/libs"
    cp "$ROOT/scripts/kafka/tools-log4j2.properties" "$ctx/"
    docker_build "$1" apache/kafka:4.3.1 "$ctx"
}

docker_build() {
    local want=$1 tag=$2 ctx=$3
    log "building $tag (log: $ctx.log)"
    docker build --network host --label "$LABEL=$want" -t "$tag" "$ctx" >"$ctx.log" 2>&1 ||
        { tail -n 30 "$ctx.log" >&2; die "building $tag failed (log: $ctx.log)"; }
    rm -rf "$ctx"
}

debian_label=
for name in debian rust postgres kafka; do
    base=
    [[ $name == debian ]] || base=$debian_label
    want=$(recipe "$name" "$base")
    if [[ " ${names[*]} " == *" $name "* ]] && stale "${TAG[$name]}" "$want"; then
        t0=$SECONDS
        "build_$name" "$want"
        log "${TAG[$name]} ready ($((SECONDS - t0)) s)"
    fi
    if [[ $name == debian ]]; then debian_label=$(label_of debian:bookworm-slim || true); fi
done
