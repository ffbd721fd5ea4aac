#!/usr/bin/env bash
# Runs outboxd's whole test suite against a real local PostgreSQL and Apache Kafka.
#
#   scripts/test.sh [--no-lint] [extra cargo test args…]
#
# Starts (or reuses) the throwaway services from scripts/pg.sh and scripts/kafka.sh,
# installing what they need on first use, then runs fmt and clippy checks and
# `cargo test --workspace`. The services stay up afterwards so that a second run is
# quick; `scripts/pg.sh stop` and `scripts/kafka.sh stop` end them.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

lint=1
if [[ "${1:-}" == "--no-lint" ]]; then lint=0; shift; fi

scripts/deps.sh

step() { printf '\n==> %s\n' "$*" >&2; }

step "starting PostgreSQL and Kafka"
scripts/pg.sh start
scripts/kafka.sh start
eval "$(scripts/pg.sh env)"
eval "$(scripts/kafka.sh env)"

if [[ $lint -eq 1 ]]; then
    step "cargo fmt --check"
    cargo fmt --all -- --check
    step "cargo clippy -D warnings"
    cargo clippy --workspace --all-targets --all-features --locked -- -D warnings
fi

step "cargo test (PostgreSQL at $OUTBOXD_TEST_PG_URL, Kafka at $OUTBOXD_TEST_KAFKA_BROKERS)"
cargo test --workspace --all-features --locked "$@"
