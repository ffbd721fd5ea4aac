//! What becomes of the Debezium settings outboxd has no key for: each with the
//! reason, so that `outboxd migrate` explains every setting it leaves out.
//! docs/configuration.md has the same table for readers (a test keeps them in step).

/// Why a setting is left out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// It has no meaning for outboxd; the records are the same without it.
    NotApplicable(&'static str),
    /// It would change the records, and outboxd cannot do what it asks.
    Unsupported(&'static str),
}

const NO_SNAPSHOT: &str = "outboxd never snapshots: it relays what is committed after the \
     slot's position (a snapshot of an outbox table would send old events again)";
const STREAMS: &str = "outboxd streams without batching or polling; its buffer is \
     postgres.max_buffered_bytes";
const HEARTBEATS: &str = "outboxd confirms an idle outbox's position itself (no heartbeat \
     records or queries needed: docs/architecture.md, \"The LSN rules\")";
const ONLY_OUTBOX: &str = "outboxd reads only the outbox tables in postgres.tables; the \
     columns it places are chosen by [routing]";
const NO_SKIPPING: &str = "outboxd never skips a record: an event it cannot route or \
     deliver stops it (the slot stays before it) or goes to kafka.dead_letter_topic";
const NO_SIGNALS: &str = "outboxd has no signals, notifications or incremental snapshots";
const WORKER: &str = "a Kafka Connect setting with no counterpart: outboxd is not a Connect \
     worker";
const NOT_RECORDS: &str = "does not change the records; outboxd has no such setting";

/// Connector (not router) settings by name; a trailing `*` matches a prefix.
const CONNECTOR: &[(&str, Fate)] = &[
    ("name", Fate::NotApplicable("outboxd has no connector name; run one outboxd per slot")),
    ("tasks.max", Fate::NotApplicable("outboxd is one process per slot")),
    ("snapshot.*", Fate::NotApplicable(NO_SNAPSHOT)),
    ("snapshot.mode", Fate::NotApplicable(NO_SNAPSHOT)),
    ("tombstones.on.delete", Fate::NotApplicable("the router drops deletes, and their tombstones with them; so does outboxd")),
    ("heartbeat.*", Fate::NotApplicable(HEARTBEATS)),
    ("poll.interval.ms", Fate::NotApplicable(STREAMS)),
    ("max.batch.size", Fate::NotApplicable(STREAMS)),
    ("max.queue.size", Fate::NotApplicable(STREAMS)),
    ("max.queue.size.in.bytes", Fate::NotApplicable(STREAMS)),
    ("slot.drop.on.stop", Fate::NotApplicable("outboxd never drops its slot")),
    ("slot.max.retries", Fate::NotApplicable("outboxd retries with backoff until stopped")),
    ("slot.retry.delay.ms", Fate::NotApplicable("outboxd retries with backoff until stopped")),
    ("slot.stream.params", Fate::NotApplicable("outboxd asks pgoutput for what it needs")),
    ("slot.failover", Fate::NotApplicable("the slot exists; postgres.failover_slot applies to slots outboxd creates")),
    ("publication.autocreate.mode", Fate::NotApplicable("the connector's publication exists and outboxd uses it as it is (postgres.create_publication = false)")),
    ("database.password", Fate::NotApplicable("a secret, not written to the file: set OUTBOXD_POSTGRES__PASSWORD or postgres.password_file")),
    ("database.tcpKeepAlive", Fate::NotApplicable("outboxd always uses TCP keepalive")),
    ("database.initial.statements", Fate::Unsupported("outboxd runs no statements of yours on its connections")),
    ("database.sslcert", Fate::Unsupported("outboxd does not authenticate to PostgreSQL with client certificates")),
    ("database.sslkey", Fate::Unsupported("outboxd does not authenticate to PostgreSQL with client certificates")),
    ("database.sslpassword", Fate::Unsupported("outboxd does not authenticate to PostgreSQL with client certificates")),
    ("database.server.id", Fate::NotApplicable(NOT_RECORDS)),
    ("schema.include.list", Fate::NotApplicable(ONLY_OUTBOX)),
    ("schema.exclude.list", Fate::NotApplicable(ONLY_OUTBOX)),
    ("schema.whitelist", Fate::NotApplicable(ONLY_OUTBOX)),
    ("schema.blacklist", Fate::NotApplicable(ONLY_OUTBOX)),
    ("table.exclude.list", Fate::NotApplicable(ONLY_OUTBOX)),
    ("table.blacklist", Fate::NotApplicable(ONLY_OUTBOX)),
    ("column.include.list", Fate::NotApplicable(ONLY_OUTBOX)),
    ("column.exclude.list", Fate::NotApplicable(ONLY_OUTBOX)),
    ("column.*", Fate::Unsupported("outboxd does not mask, truncate or rename columns; route unmasked columns only")),
    ("include.schema.changes", Fate::NotApplicable("outboxd emits no schema change events")),
    ("schema.history.*", Fate::NotApplicable("outboxd keeps no schema history")),
    ("provide.transaction.metadata", Fate::NotApplicable("outboxd puts the transaction on every record instead (outboxd.xid, outboxd.lsn headers)")),
    ("skipped.operations", Fate::NotApplicable("outboxd relays inserts; updates follow routing.invalid_operation, deletes and truncates are ignored")),
    ("event.processing.failure.handling.mode", Fate::NotApplicable(NO_SKIPPING)),
    ("errors.*", Fate::NotApplicable(NO_SKIPPING)),
    ("signal.*", Fate::NotApplicable(NO_SIGNALS)),
    ("notification.*", Fate::NotApplicable(NO_SIGNALS)),
    ("incremental.snapshot.*", Fate::NotApplicable(NO_SIGNALS)),
    ("read.only", Fate::NotApplicable(NO_SIGNALS)),
    ("flush.lsn.source", Fate::NotApplicable("outboxd confirms the slot only after Kafka acknowledged every event up to it")),
    ("lsn.flush.*", Fate::NotApplicable("outboxd confirms the slot only after Kafka acknowledged every event up to it")),
    ("offset.*", Fate::NotApplicable("outboxd's position is the slot plus its checkpoint topic (kafka.checkpoint_topic)")),
    ("decimal.handling.mode", Fate::NotApplicable("only numeric columns are affected, and outboxd routes no numeric column (an error names it if one is placed)")),
    ("hstore.handling.mode", Fate::NotApplicable("only hstore columns are affected, which outboxd does not route")),
    ("interval.handling.mode", Fate::NotApplicable("only interval columns are affected, which outboxd does not route")),
    ("include.unknown.datatypes", Fate::NotApplicable("outboxd names a routed column of an unknown type in an error")),
    ("converters", Fate::Unsupported("custom column converters change values in ways outboxd cannot know")),
    ("custom.metric.tags", Fate::NotApplicable("outboxd's metrics are at /metrics")),
    ("openlineage.*", Fate::NotApplicable("outboxd emits no lineage events")),
    ("guardrail.*", Fate::NotApplicable(NOT_RECORDS)),
    ("retriable.restart.connector.wait.ms", Fate::NotApplicable("outboxd retries with backoff")),
    ("query.fetch.size", Fate::NotApplicable(NO_SNAPSHOT)),
    ("unavailable.value.placeholder", Fate::NotApplicable("outboxd names a column whose value PostgreSQL did not send (unchanged TOAST) in an error")),
    ("database.history.*", Fate::NotApplicable("outboxd keeps no schema history")),
    ("topic.naming.strategy", Fate::NotApplicable("the router names the topics")),
    ("topic.delimiter", Fate::NotApplicable("the router names the topics")),
    ("topic.heartbeat.prefix", Fate::NotApplicable(HEARTBEATS)),
    ("topic.transaction", Fate::NotApplicable("outboxd emits no transaction metadata topic")),
    ("topic.cache.size", Fate::NotApplicable(NOT_RECORDS)),
    ("consumer.override.*", Fate::NotApplicable(WORKER)),
    ("admin.override.*", Fate::NotApplicable("outboxd's admin requests use the kafka.producer connection settings")),
    ("exactly.once.support", Fate::NotApplicable(WORKER)),
    ("transaction.boundary*", Fate::NotApplicable(WORKER)),
    ("offsets.storage.topic", Fate::NotApplicable(WORKER)),
    ("predicates", Fate::NotApplicable("used to decide which tables each Event Router applies to")),
    ("predicates.*", Fate::NotApplicable("used to decide which tables each Event Router applies to")),
];

/// Event Router settings outboxd has no key for.
const ROUTER: &[(&str, Fate)] = &[
    ("tracing.operation.name", Fate::NotApplicable("outboxd records no spans of its own: it passes the writer's trace context on (traceparent, tracestate)")),
    ("tracing.with.context.field.only", Fate::NotApplicable("outboxd adds trace headers only for rows with a context and records no spans for the others")),
    ("type", Fate::NotApplicable("the Outbox Event Router, which outboxd is")),
    ("predicate", Fate::NotApplicable("decides which tables this Event Router applies to")),
    ("negate", Fate::NotApplicable("decides which tables this Event Router applies to")),
];

fn lookup(table: &[(&str, Fate)], key: &str) -> Option<Fate> {
    table.iter().find_map(|(pattern, fate)| {
        let hit = match pattern.strip_suffix('*') {
            Some(prefix) => key.starts_with(prefix),
            None => key == *pattern,
        };
        hit.then_some(*fate)
    })
}

/// The fate of a connector setting outboxd has no key for.
pub fn connector(key: &str) -> Fate {
    lookup(CONNECTOR, key).unwrap_or(Fate::Unsupported(
        "not a setting outboxd migrate knows: left out; check that it does not change the \
         records",
    ))
}

/// The fate of an Event Router setting outboxd has no key for.
pub fn router(key: &str) -> Fate {
    lookup(ROUTER, key).unwrap_or(Fate::Unsupported(
        "not an Outbox Event Router setting of Debezium 3.7: left out",
    ))
}

/// Every setting name in the tables, for the documentation check.
pub fn documented_names() -> impl Iterator<Item = &'static str> {
    CONNECTOR.iter().chain(ROUTER).map(|(name, _)| *name)
}
