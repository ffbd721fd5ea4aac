#!/usr/bin/env bash
# Build dependencies of outboxd that cargo cannot fetch: a C toolchain for librdkafka
# and OpenSSL's headers (Kafka TLS / SASL). Installs Debian's packages when missing.
set -euo pipefail

missing=()
command -v cc >/dev/null || missing+=(build-essential)
command -v make >/dev/null || missing+=(make)
command -v pkg-config >/dev/null || missing+=(pkg-config)
command -v curl >/dev/null || missing+=(curl)
if ! pkg-config --exists openssl 2>/dev/null; then missing+=(libssl-dev); fi
if ! pkg-config --exists zlib 2>/dev/null; then missing+=(zlib1g-dev); fi

if [[ ${#missing[@]} -gt 0 ]]; then
    if [[ $(id -u) -ne 0 ]]; then
        echo "error: missing build packages: ${missing[*]} (install them with apt-get as root)" >&2
        exit 1
    fi
    echo "[deps] installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq "${missing[@]}" >&2
fi
command -v cargo >/dev/null || {
    echo "error: cargo not found; install Rust (rustup) and run again" >&2
    exit 1
}
