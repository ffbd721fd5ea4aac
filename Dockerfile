# outboxd's image: the release binary on Debian bookworm-slim, run as an
# unprivileged user (uid 10001).
#
#   docker build -t outboxd .
#
# Needs BuildKit (Docker's default builder since 23.0): cargo's registry and the
# target directory are cache mounts, so a rebuild after a source change compiles
# only the workspace crates. .dockerignore keeps the context to what cargo needs.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY crates crates
COPY tests tests
COPY examples/order-service examples/order-service
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p outboxd \
    && install -D --strip target/release/outboxd /out/outboxd

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libssl3 \
    && rm -rf /var/lib/apt/lists/* && useradd --system --uid 10001 outboxd
COPY --from=build /out/outboxd /usr/local/bin/outboxd
USER outboxd
# /healthz, /readyz and /metrics when server.metrics_address is 0.0.0.0:9187.
EXPOSE 9187
ENTRYPOINT ["/usr/local/bin/outboxd"]
CMD ["--help"]
