//! A replayed row as the record the live relay produces for it — the same router,
//! so topic, key, value, `id` and configured headers, and so the partition, are the
//! same — with what a table row cannot tell left out, and the replay header added.
//!
//! A row in the table has no commit LSN, so `outboxd.lsn` and `outboxd.index` are
//! left out (a made-up position would break their promise: unique, and ordered as
//! committed). `outboxd.xid` is the row's `xmin`; `outboxd.commit_time` and the
//! record timestamp are the commit timestamp when the server records them
//! (`track_commit_timestamp`), the time the live relay uses too (docs/architecture.md,
//! "Replay"); without them the header is left out and the timestamp is the row's
//! time column.

use std::fmt;

use bytes::Bytes;
use outboxd_kafka_sink::{headers as header, Record, RecordMeta};
use outboxd_pgoutput::{ColumnValue, Lsn, Relation, PG_EPOCH_UNIX_SECS};
use outboxd_replication::TableName;

use crate::config::RoutingConfig;
use crate::router::{Catalog, Router, SourcePosition};

/// Microseconds between the Unix epoch and PostgreSQL's (2000-01-01).
const PG_EPOCH_UNIX_MICROS: i64 = PG_EPOCH_UNIX_SECS as i64 * 1_000_000;

/// One selected row, as the row query returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceRow {
    /// Index of its table in the configured tables.
    pub table: usize,
    /// Its time (the time source), µs since the Unix epoch.
    pub time_us: Option<i64>,
    /// The inserting transaction's commit time, µs since the Unix epoch, when known.
    pub commit_us: Option<i64>,
    /// `xmin`: the transaction (or subtransaction) that inserted it.
    pub xid: u32,
    /// Its physical position, to name it when it has no id.
    pub ctid: String,
    /// The routed columns as output text, in the relation's column order.
    pub values: Vec<Option<String>>,
}

/// Why a row cannot be replayed, naming it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowError {
    pub id: Option<String>,
    /// `schema.table`.
    pub table: String,
    pub ctid: String,
    pub xid: u32,
    pub reason: String,
}

impl fmt::Display for RowError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.id {
            Some(id) => write!(f, "row id={id}")?,
            None => write!(f, "a row")?,
        }
        write!(
            f,
            " of {} (ctid {}, inserted by transaction {}): {}",
            self.table, self.ctid, self.xid, self.reason
        )
    }
}

impl std::error::Error for RowError {}

/// Turns selected rows into records.
#[derive(Debug)]
pub struct RowRouter {
    router: Router,
    relations: Vec<Relation>,
    tables: Vec<TableName>,
    /// Per table, its routing's id column.
    id_columns: Vec<String>,
    /// Rows routed so far; see [`RowRouter::record`].
    routed: u64,
}

impl RowRouter {
    /// `relations[i]` describes table `tables[i]` with the columns of the row
    /// query's values. Errors name the routing setting that does not compile.
    pub fn new(
        routing: &RoutingConfig,
        relations: Vec<Relation>,
        tables: Vec<TableName>,
        catalog: Catalog,
    ) -> Result<Self, String> {
        let mut router = Router::new(routing, &tables)?;
        router.set_catalog(catalog);
        let id_columns = tables
            .iter()
            .map(|t| routing.for_table(&t.to_string()).map(|r| r.columns.id))
            .collect::<Result<_, _>>()?;
        Ok(RowRouter {
            router,
            relations,
            tables,
            id_columns,
            routed: 0,
        })
    }

    /// The record for `row`.
    pub fn record(&mut self, row: &SourceRow) -> Result<Record, RowError> {
        let fail = |id: Option<String>, reason: String| RowError {
            id,
            table: self
                .tables
                .get(row.table)
                .map_or_else(|| format!("table #{}", row.table), ToString::to_string),
            ctid: row.ctid.clone(),
            xid: row.xid,
            reason,
        };
        let relation = self
            .relations
            .get(row.table)
            .ok_or_else(|| fail(None, "the row query named an unknown table".to_owned()))?;
        // The row query pads narrower tables with NULLs.
        let values: Vec<ColumnValue> = row
            .values
            .iter()
            .take(relation.columns.len())
            .map(|v| match v {
                Some(text) => ColumnValue::Text(Bytes::from(text.clone())),
                None => ColumnValue::Null,
            })
            .collect();
        // The router keeps per-transaction headers for as long as the commit LSN
        // stays the same. A row has no LSN: a number of its own keeps one row's xid
        // and commit time from being reused for the next. Its headers are removed.
        self.routed += 1;
        let position = SourcePosition {
            commit_lsn: Lsn(self.routed),
            index: 0,
            commit_time: row.commit_us.map_or(0, |us| us - PG_EPOCH_UNIX_MICROS),
            xid: row.xid,
        };
        // The id as stored: the router's errors would name a NULL id by the made-up
        // position.
        let id_column = self.id_columns.get(row.table).map_or("id", String::as_str);
        let id = relation
            .column_index(id_column)
            .and_then(|i| row.values.get(i).cloned().flatten());
        let Some(id) = id else {
            return Err(fail(
                None,
                format!(
                    "its {id_column} is NULL: a replayed record must carry the event's id, by \
                     which consumers recognise it"
                ),
            ));
        };
        let mut record = self
            .router
            .event_from_row(relation, &values, position)
            .and_then(|event| self.router.route(event, position))
            .map_err(|e| fail(Some(id.clone()), e.reason))?;
        record.headers.retain(|(name, _)| {
            name != header::LSN
                && name != header::INDEX
                && (row.commit_us.is_some() || name != header::COMMIT_TIME)
        });
        record
            .headers
            .push((header::REPLAY.into(), Some(Bytes::from_static(b"true"))));
        record.timestamp_ms = row.commit_us.or(row.time_us).map(|us| us.div_euclid(1000));
        record.meta = RecordMeta {
            event_id: id,
            ..RecordMeta::default()
        };
        Ok(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HeaderPlacement;
    use outboxd_pgoutput::{Column, ReplicaIdentity};

    fn relation() -> Relation {
        let col = |name: &str, type_oid: u32| Column {
            flags: 0,
            name: name.to_owned(),
            type_oid,
            type_modifier: -1,
        };
        Relation {
            oid: 16384,
            namespace: "public".to_owned(),
            name: "outbox".to_owned(),
            replica_identity: ReplicaIdentity::Default,
            columns: vec![
                col("id", 2950),
                col("aggregatetype", 25),
                col("aggregateid", 25),
                col("payload", 3802),
                col("type", 25),
            ],
        }
    }

    fn routing() -> RoutingConfig {
        RoutingConfig {
            additional_headers: vec![HeaderPlacement {
                column: "type".to_owned(),
                header: "eventType".to_owned(),
            }],
            ..RoutingConfig::default()
        }
    }

    fn row(id: Option<&str>, commit_us: Option<i64>, xid: u32) -> SourceRow {
        let text = |s: &str| Some(s.to_owned());
        SourceRow {
            table: 0,
            time_us: Some(1_700_000_000_000_000),
            commit_us,
            xid,
            ctid: "(0,7)".to_owned(),
            values: vec![
                id.map(str::to_owned),
                text("order"),
                text("order-1"),
                text("{\"total\": 42}"),
                text("OrderCreated"),
            ],
        }
    }

    fn router() -> RowRouter {
        RowRouter::new(
            &routing(),
            vec![relation()],
            vec![TableName::parse("outbox").unwrap()],
            Catalog::default(),
        )
        .unwrap()
    }

    fn names(r: &Record) -> Vec<(&str, &[u8])> {
        r.headers
            .iter()
            .map(|(k, v)| (k.as_ref(), v.as_deref().unwrap_or_default()))
            .collect()
    }

    /// The record equals the live relay's for the same row and commit, except for
    /// the position headers and the replay header.
    #[test]
    fn a_replayed_record_is_the_live_record_without_its_position_plus_the_replay_header() {
        let commit_us = 1_700_000_000_123_456;
        let replayed = router()
            .record(&row(Some("e-1"), Some(commit_us), 742))
            .unwrap();

        let position = SourcePosition {
            commit_lsn: Lsn(0x16_B374_D848),
            index: 3,
            commit_time: commit_us - PG_EPOCH_UNIX_MICROS,
            xid: 742,
        };
        let mut live_router =
            Router::new(&routing(), &[TableName::parse("outbox").unwrap()]).unwrap();
        let values: Vec<ColumnValue> = row(Some("e-1"), None, 742)
            .values
            .into_iter()
            .map(|v| ColumnValue::Text(Bytes::from(v.unwrap())))
            .collect();
        let event = live_router
            .event_from_row(&relation(), &values, position)
            .unwrap();
        let live = live_router.route(event, position).unwrap();

        assert_eq!(
            (
                &replayed.topic,
                &replayed.key,
                &replayed.value,
                replayed.timestamp_ms
            ),
            (&live.topic, &live.key, &live.value, live.timestamp_ms)
        );
        let mut expected: Vec<(&str, &[u8])> = names(&live)
            .into_iter()
            .filter(|(k, _)| *k != header::LSN && *k != header::INDEX)
            .collect();
        expected.push((header::REPLAY, b"true"));
        assert_eq!(names(&replayed), expected);
        assert_eq!(
            names(&replayed)[..3],
            [
                ("id", &b"e-1"[..]),
                ("eventType", b"OrderCreated"),
                ("outboxd.xid", b"742")
            ]
        );
        assert_eq!(replayed.meta.event_id, "e-1");
    }

    #[test]
    fn without_commit_timestamps_the_time_column_stamps_the_record() {
        let mut router = router();
        let r = router.record(&row(Some("e-1"), None, 9)).unwrap();
        assert!(r.headers.iter().all(|(k, _)| k != header::COMMIT_TIME));
        assert_eq!(r.timestamp_ms, Some(1_700_000_000_000));
        // The next row gets its own xid, not the previous row's.
        let next = router.record(&row(Some("e-2"), None, 10)).unwrap();
        let xid = next.headers.iter().find(|(k, _)| k == header::XID).unwrap();
        assert_eq!(xid.1.as_deref(), Some(&b"10"[..]));
    }

    #[test]
    fn rows_that_cannot_be_replayed_are_named() {
        let e = router().record(&row(None, None, 9)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "a row of public.outbox (ctid (0,7), inserted by transaction 9): its id is NULL: a \
             replayed record must carry the event's id, by which consumers recognise it"
        );
        let mut bad = row(Some("e-3"), None, 9);
        bad.values[1] = Some("no/slash".to_owned());
        let e = router().record(&bad).unwrap_err();
        assert_eq!(e.id.as_deref(), Some("e-3"));
        assert!(
            e.to_string().starts_with("row id=e-3 of public.outbox"),
            "{e}"
        );
        assert!(e.reason.contains("not a legal Kafka topic name"), "{e}");
    }
}
