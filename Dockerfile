# outboxd: a small runtime image around one static-ish binary.
FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p outboxd && strip target/release/outboxd

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libssl3 \
    && rm -rf /var/lib/apt/lists/* && useradd --system --uid 10001 outboxd
COPY --from=build /src/target/release/outboxd /usr/local/bin/outboxd
USER outboxd
ENTRYPOINT ["/usr/local/bin/outboxd"]
CMD ["--help"]
