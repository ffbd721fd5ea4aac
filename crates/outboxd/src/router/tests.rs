//! The router on known rows: expected bytes are what Debezium 3.7.0 wrote for the
//! same rows (crates/outboxd/tests/debezium.rs compares against it end to end).

use bytes::Bytes;
use outboxd_pgoutput::{Column, ReplicaIdentity};

use super::*;
use crate::config::{EnvelopeField, HeaderPlacement, MissingColumns, RecordFormat, RoutingConfig};

fn col(name: &str, type_oid: u32, type_modifier: i32) -> Column {
    Column {
        flags: 0,
        name: name.to_owned(),
        type_oid,
        type_modifier,
    }
}

fn outbox_relation() -> Relation {
    Relation {
        oid: 16384,
        namespace: "public".to_owned(),
        name: "outbox".to_owned(),
        replica_identity: ReplicaIdentity::Default,
        columns: vec![
            col("id", 2950, -1),
            col("aggregatetype", 1043, 259),
            col("aggregateid", 1043, 259),
            col("type", 1043, 259),
            col("payload", 3802, -1),
            col("timestamp", 1114, -1),
            col("n", 20, -1),
            col("tracingspancontext", 1043, 260),
        ],
    }
}

fn text(s: &str) -> ColumnValue {
    ColumnValue::Text(Bytes::copy_from_slice(s.as_bytes()))
}

fn row(aggregate_type: ColumnValue, payload: ColumnValue) -> Vec<ColumnValue> {
    vec![
        text("6f1c9d1e-0000-4000-8000-000000000001"),
        aggregate_type,
        text("order-1"),
        text("OrderCreated"),
        payload,
        text("2024-01-02 03:04:05.123456"),
        ColumnValue::Null,
        ColumnValue::Null,
    ]
}

const POSITION: SourcePosition = SourcePosition {
    commit_lsn: Lsn(0x16_B374_D848),
    index: 3,
    commit_time: 1_000_000,
    xid: 742,
};

fn tables() -> Vec<TableName> {
    vec![TableName::parse("public.outbox").unwrap()]
}

fn router(config: RoutingConfig) -> Router {
    Router::new(&config, &tables()).unwrap()
}

fn route_row(config: RoutingConfig, values: &[ColumnValue]) -> Result<Record, RouteError> {
    let mut router = router(config);
    let event = router.event_from_row(&outbox_relation(), values, POSITION)?;
    router.route(event, POSITION)
}

fn header<'a>(r: &'a Record, name: &str) -> Option<Option<&'a [u8]>> {
    r.headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_deref())
}

fn with_event_type_header() -> RoutingConfig {
    RoutingConfig {
        additional_headers: vec![HeaderPlacement {
            column: "type".to_owned(),
            header: "eventType".to_owned(),
        }],
        ..RoutingConfig::default()
    }
}

/// The golden Debezium-compatible record for a known row.
#[test]
fn golden_record_for_an_outbox_row() {
    let r = route_row(
        with_event_type_header(),
        &row(
            text("order"),
            text("{\"id\": \"order-1\", \"total\": 42.0}"),
        ),
    )
    .unwrap();
    assert_eq!(r.topic, "outbox.event.order");
    assert_eq!(r.key.as_deref(), Some(&b"order-1"[..]));
    assert_eq!(
        r.value.as_deref(),
        Some(&b"{\"id\": \"order-1\", \"total\": 42.0}"[..])
    );
    let headers: Vec<(&str, Option<&[u8]>)> = r
        .headers
        .iter()
        .map(|(k, v)| (k.as_ref(), v.as_deref()))
        .collect();
    assert_eq!(
        headers,
        vec![
            ("id", Some(&b"6f1c9d1e-0000-4000-8000-000000000001"[..])),
            ("eventType", Some(b"OrderCreated")),
            ("outboxd.lsn", Some(b"16/B374D848")),
            ("outboxd.index", Some(b"3")),
            ("outboxd.xid", Some(b"742")),
            ("outboxd.commit_time", Some(b"2000-01-01T00:00:01.000000Z")),
        ]
    );
    assert_eq!(r.timestamp_ms, Some(946_684_801_000));
    assert_eq!(r.partition, None);
    assert_eq!(r.meta.event_id, "6f1c9d1e-0000-4000-8000-000000000001");
    assert_eq!(r.meta.lsn, 0x16_B374_D848);
}

#[test]
fn json_keys_bytea_payloads_and_templates() {
    let config = RoutingConfig {
        key_format: RecordFormat::Json,
        topic: "events.${routedByValue}.v1".to_owned(),
        source_headers: false,
        ..RoutingConfig::default()
    };
    let mut relation = outbox_relation();
    relation.columns[4].type_oid = 17;
    let mut router = router(config);
    let event = router
        .event_from_row(&relation, &row(text("order"), text("\\x00ff41")), POSITION)
        .unwrap();
    let r = router.route(event, POSITION).unwrap();
    assert_eq!(r.topic, "events.order.v1");
    assert_eq!(r.key.as_deref(), Some(&b"\"order-1\""[..]));
    assert_eq!(r.value.as_deref(), Some(&[0x00, 0xff, 0x41][..]));
    assert_eq!(r.headers.len(), 1, "only the id header: {:?}", r.headers);
}

#[test]
fn null_payloads_give_null_values_or_tombstones() {
    let r = route_row(
        RoutingConfig::default(),
        &row(text("order"), ColumnValue::Null),
    )
    .unwrap();
    assert_eq!(r.value, None);
    let json = RoutingConfig {
        value_format: RecordFormat::Json,
        ..RoutingConfig::default()
    };
    let r = route_row(json.clone(), &row(text("order"), ColumnValue::Null)).unwrap();
    assert_eq!(
        r.value.as_deref(),
        Some(&b"null"[..]),
        "JsonConverter writes null"
    );
    let tombstones = RoutingConfig {
        tombstone_on_empty_payload: true,
        ..json
    };
    let r = route_row(tombstones, &row(text("order"), ColumnValue::Null)).unwrap();
    assert_eq!(r.value, None);
}

#[test]
fn timestamps_envelopes_and_null_headers() {
    let config = RoutingConfig {
        value_format: RecordFormat::JsonSchema,
        logical_name: "exdb".to_owned(),
        envelope_fields: vec![EnvelopeField {
            column: "type".to_owned(),
            field: "eventType".to_owned(),
        }],
        additional_headers: vec![
            HeaderPlacement {
                column: "n".to_owned(),
                header: "n".to_owned(),
            },
            HeaderPlacement {
                column: "absent".to_owned(),
                header: "absent".to_owned(),
            },
        ],
        missing_columns: MissingColumns::Ignore,
        columns: crate::config::ColumnNames {
            timestamp: Some("timestamp".to_owned()),
            ..Default::default()
        },
        ..RoutingConfig::default()
    };
    let r = route_row(config, &row(text("order"), text("{\"a\": 1}"))).unwrap();
    assert_eq!(r.timestamp_ms, Some(1_704_164_645_123));
    assert_eq!(
        header(&r, "n"),
        Some(None),
        "a NULL column is a header without a value"
    );
    assert_eq!(header(&r, "absent"), None);
    assert_eq!(
        String::from_utf8(r.value.unwrap().to_vec()).unwrap(),
        r#"{"schema":{"type":"struct","fields":[{"type":"string","optional":true,"name":"io.debezium.data.Json","version":1,"field":"payload"},{"type":"string","optional":true,"field":"eventType"}],"optional":false,"name":"exdb.public.outbox.order.Value"},"payload":{"payload":"{\"a\": 1}","eventType":"OrderCreated"}}"#
    );
}

#[test]
fn unroutable_rows_name_the_event_and_its_position() {
    let e = route_row(
        RoutingConfig::default(),
        &row(ColumnValue::Null, text("{}")),
    )
    .unwrap_err();
    let shown = e.to_string();
    assert!(
        shown.contains("6f1c9d1e-0000-4000-8000-000000000001"),
        "{shown}"
    );
    assert!(
        shown.contains("16/B374D848") && shown.contains("#3"),
        "{shown}"
    );
    assert!(shown.contains("aggregatetype is NULL"), "{shown}");

    let e = route_row(
        RoutingConfig::default(),
        &row(text("bad topic/name"), text("{}")),
    )
    .unwrap_err();
    assert!(e.reason.contains("not a legal Kafka topic name"), "{e}");

    let small = RoutingConfig {
        max_record_bytes: 10,
        ..RoutingConfig::default()
    };
    let e = route_row(small, &row(text("order"), text("{\"big\": true}"))).unwrap_err();
    assert!(e.reason.contains("max_record_bytes"), "{e}");

    let renamed = RoutingConfig {
        columns: crate::config::ColumnNames {
            payload: "body".to_owned(),
            ..Default::default()
        },
        ..RoutingConfig::default()
    };
    let e = route_row(renamed, &row(text("order"), text("{}"))).unwrap_err();
    assert!(e.reason.contains("no column 'body'"), "{e}");
}

#[test]
fn trace_context_becomes_w3c_headers() {
    let mut values = row(text("order"), text("{}"));
    values[7] = text(
        "#Tue Nov 30 10:00:00 UTC 2026\ntraceparent=00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\ntracestate=k\\=v\n",
    );
    let r = route_row(RoutingConfig::default(), &values).unwrap();
    let names: Vec<&str> = r.headers.iter().map(|(k, _)| k.as_ref()).collect();
    assert_eq!(&names[..3], ["traceparent", "tracestate", "id"]);
    assert_eq!(
        header(&r, "traceparent"),
        Some(Some(
            &b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"[..]
        ))
    );
    values[7] = text("traceparent=garbage");
    let r = route_row(RoutingConfig::default(), &values).unwrap();
    assert_eq!(
        header(&r, "traceparent"),
        None,
        "unusable: logged, left out"
    );
}

#[test]
fn logical_message_envelopes() {
    let mut router = router(with_event_type_header());
    let content = br#"{"aggregatetype":"order","aggregateid":"o-9","type":"OrderShipped","payload":{"carrier":"dhl"},"headers":{"tenant":"t1"}}"#;
    let event = router.event_from_message(content, POSITION).unwrap();
    let r = router.route(event, POSITION).unwrap();
    assert_eq!(r.topic, "outbox.event.order");
    assert_eq!(r.key.as_deref(), Some(&b"o-9"[..]));
    assert_eq!(r.value.as_deref(), Some(&br#"{"carrier":"dhl"}"#[..]));
    // Without an id, the event id is derived from its position: stable on replay.
    assert_eq!(header(&r, "id"), Some(Some(&b"16/B374D848:3"[..])));
    assert_eq!(header(&r, "eventType"), Some(Some(&b"OrderShipped"[..])));
    assert_eq!(header(&r, "tenant"), Some(Some(&b"t1"[..])));

    let e = router
        .event_from_message(b"not json", POSITION)
        .unwrap_err();
    assert!(e.reason.contains("not an outbox envelope"), "{e}");
}

#[test]
fn message_prefix_lists() {
    let r = router(RoutingConfig::default());
    assert!(r.relays_message("outbox") && !r.relays_message("outbox2"));
    let r = router(RoutingConfig {
        message_prefix_include: vec!["outbox\\..*".to_owned()],
        ..RoutingConfig::default()
    });
    assert!(r.relays_message("outbox.orders") && !r.relays_message("outbox"));
    let r = router(RoutingConfig {
        message_prefix_exclude: vec!["audit.*".to_owned()],
        ..RoutingConfig::default()
    });
    assert!(r.relays_message("anything") && !r.relays_message("audit.x"));
}

#[test]
fn per_table_routing_overrides() {
    let mut config = RoutingConfig::default();
    let overrides: figment::value::Dict = [(
        "topic".to_owned(),
        figment::value::Value::from("invoices.${routedByValue}"),
    )]
    .into_iter()
    .collect();
    config
        .tables
        .insert("public.invoices".to_owned(), overrides);
    let tables = vec![
        TableName::parse("public.outbox").unwrap(),
        TableName::parse("public.invoices").unwrap(),
    ];
    let mut router = Router::new(&config, &tables).unwrap();
    let mut invoices = outbox_relation();
    invoices.oid = 16400;
    invoices.name = "invoices".to_owned();
    for (relation, topic) in [
        (outbox_relation(), "outbox.event.order"),
        (invoices, "invoices.order"),
    ] {
        let event = router
            .event_from_row(&relation, &row(text("order"), text("{}")), POSITION)
            .unwrap();
        assert_eq!(router.route(event, POSITION).unwrap().topic, topic);
    }
    let e = Router::new(&config, &tables[..1]).unwrap_err();
    assert!(e.contains("not in postgres.tables"), "{e}");
    // The table may be named without its schema.
    assert_eq!(
        config.for_table("invoices").unwrap().topic,
        "invoices.${routedByValue}"
    );
    assert_eq!(
        config.for_table("outbox").unwrap().required_columns(),
        ["aggregateid", "aggregatetype", "id", "payload"]
    );
}

#[test]
fn fatal_updates_stop_warned_ones_do_not() {
    let r = router(RoutingConfig::default());
    let values = row(text("order"), text("{}"));
    assert!(r
        .unexpected_update(&outbox_relation(), &values, POSITION)
        .is_ok());
    let r = router(RoutingConfig {
        invalid_operation: crate::config::InvalidOperation::Fatal,
        ..RoutingConfig::default()
    });
    let e = r
        .unexpected_update(&outbox_relation(), &values, POSITION)
        .unwrap_err();
    assert_eq!(e.event_id, "6f1c9d1e-0000-4000-8000-000000000001");
    assert!(e.reason.contains("UPDATE"), "{e}");
}

/// The caches must not leak one transaction's values into the next, nor let a bad
/// aggregate type through the second time.
#[test]
fn cached_values_follow_the_transaction_and_the_aggregate_type() {
    let mut router = router(RoutingConfig::default());
    let relation = outbox_relation();
    let mut record = |aggregate_type: &str, position: SourcePosition| {
        let event = router
            .event_from_row(&relation, &row(text(aggregate_type), text("{}")), position)
            .unwrap();
        router.route(event, position)
    };
    let header = |r: &Record, name: &str| {
        let (_, v) = r.headers.iter().find(|(k, _)| k == name).unwrap();
        String::from_utf8(v.as_ref().unwrap().to_vec()).unwrap()
    };
    let second = SourcePosition {
        index: 4,
        ..POSITION
    };
    let next_txn = SourcePosition {
        commit_lsn: Lsn(0x16_B374_F000),
        index: 0,
        commit_time: 2_000_000,
        xid: 743,
    };
    let a = record("order", POSITION).unwrap();
    let b = record("order", second).unwrap();
    let c = record("invoice", next_txn).unwrap();
    assert_eq!(
        (a.topic.as_str(), c.topic.as_str()),
        ("outbox.event.order", "outbox.event.invoice")
    );
    assert_eq!(header(&a, "outboxd.lsn"), header(&b, "outboxd.lsn"));
    assert_eq!(header(&b, "outboxd.index"), "4");
    assert_eq!(header(&c, "outboxd.lsn"), "16/B374F000");
    assert_eq!(header(&c, "outboxd.xid"), "743");
    assert_eq!(
        header(&c, "outboxd.commit_time"),
        "2000-01-01T00:00:02.000000Z"
    );
    assert_eq!(c.timestamp_ms, Some(946_684_802_000));
    for _ in 0..2 {
        assert!(record("no/slash", next_txn).is_err());
    }
}
