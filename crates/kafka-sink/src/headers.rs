//! The names of the headers outboxd puts on records: one list, shared by the relay's
//! router (source headers) and the sink (dead-letter headers), so that consumers and
//! tests read the names from here.

/// Debezium's event id header, kept for drop-in compatibility.
pub const ID: &str = "id";

/// The source position of the record's transaction (its commit LSN), in Postgres
/// `X/Y` notation. Also on dead-letter records.
pub const LSN: &str = "outboxd.lsn";
/// The record's index within its source transaction (decimal). With [`LSN`], a
/// unique, ordered idempotency key. Also on dead-letter records.
pub const INDEX: &str = "outboxd.index";
/// The source transaction id (decimal).
pub const XID: &str = "outboxd.xid";
/// The source transaction's commit time (RFC 3339, microseconds, UTC).
pub const COMMIT_TIME: &str = "outboxd.commit_time";
/// `true` on records re-published from the outbox table by `outboxd replay`.
pub const REPLAY: &str = "outboxd.replay";

/// Dead-letter records: why the record was dead-lettered (the broker's,
/// librdkafka's or the router's reason).
pub const ERROR: &str = "outboxd.error";
/// Dead-letter records: the topic the record was meant for, when one was known.
pub const ORIGINAL_TOPIC: &str = "outboxd.original.topic";
/// Dead-letter records: the event id.
pub const EVENT_ID: &str = "outboxd.event.id";
/// Dead-letter records: `true` when the value was left out because it was itself too
/// large.
pub const VALUE_DROPPED: &str = "outboxd.error.value_dropped";
