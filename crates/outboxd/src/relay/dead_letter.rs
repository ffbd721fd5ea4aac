//! The dead-letter record of an event that could not be routed.

use bytes::Bytes;
use outboxd_kafka_sink::{Record, RecordMeta};

use crate::router::RouteError;

/// A dead-letter record for an event that could not be routed.
pub(crate) fn unroutable(topic: &str, error: &RouteError) -> Record {
    let p = error.position;
    Record {
        topic: topic.to_owned(),
        key: None,
        value: None,
        headers: vec![
            ("outboxd.error".into(), Bytes::from(error.reason.clone())),
            (
                "outboxd.event.id".into(),
                Bytes::from(error.event_id.clone()),
            ),
            ("outboxd.lsn".into(), Bytes::from(p.commit_lsn.to_string())),
            ("outboxd.index".into(), Bytes::from(p.index.to_string())),
            ("outboxd.xid".into(), Bytes::from(p.xid.to_string())),
        ],
        timestamp_ms: None,
        meta: RecordMeta {
            event_id: error.event_id.clone(),
            lsn: p.commit_lsn.0,
            index: p.index,
        },
    }
}
