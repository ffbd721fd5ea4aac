//! `migrate` on the outbox examples of Debezium's documentation (the Outbox Event
//! Router page, transformations/outbox-event-router.adoc, and the debezium-examples
//! outbox connector), each checked to load as an outboxd configuration.

use super::*;
use crate::config::{
    Config, InvalidOperation, MissingColumns, Overrides, RecordFormat, RoutingConfig,
};

/// The connection part every documented snippet leaves to the reader.
const CONNECTOR: &str = "name=outbox-connector
connector.class=io.debezium.connector.postgresql.PostgresConnector
database.hostname=db.internal
database.port=5432
database.user=debezium
database.password=hunter2
database.dbname=orders
topic.prefix=dbserver1
plugin.name=pgoutput
slot.name=outbox_slot
publication.name=outbox_pub
table.include.list=inventory.outboxevent
";

fn migrate_text(text: &str) -> Migration {
    migrate(&input::parse(text).unwrap(), None).unwrap()
}

/// The generated file, loaded the way `outboxd run --config` loads it.
fn load(m: &Migration) -> Config {
    let dir = std::env::temp_dir().join(format!("outboxd-migrate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(format!("{}.toml", rand::random::<u32>()));
    std::fs::write(&file, m.toml("test")).unwrap();
    let config = Config::load_from(Some(&file), &Overrides::default(), Vec::new());
    let _ = std::fs::remove_file(&file);
    config.unwrap_or_else(|e| panic!("{e:#}\n{}", m.toml("test")))
}

fn note<'a>(m: &'a Migration, setting: &str) -> &'a Note {
    m.notes
        .iter()
        .find(|n| n.setting == setting)
        .unwrap_or_else(|| panic!("no note for {setting}: {:?}", m.report()))
}

/// "Basic configuration": the router with its defaults.
#[test]
fn the_basic_configuration() {
    let m = migrate_text(&format!(
        "{CONNECTOR}transforms=outbox\ntransforms.outbox.type=io.debezium.transforms.outbox.EventRouter\n"
    ));
    let config = load(&m);
    assert_eq!(
        config.postgres.url,
        "postgres://debezium@db.internal:5432/orders"
    );
    assert_eq!(config.postgres.slot, "outbox_slot");
    assert_eq!(config.postgres.publication, "outbox_pub");
    assert_eq!(config.postgres.tables, ["inventory.outboxevent"]);
    assert!(!config.postgres.create_slot && !config.postgres.create_publication);
    let r = &config.routing;
    assert_eq!(r.topic, RoutingConfig::default().topic);
    assert_eq!(r.logical_name, "dbserver1");
    assert!(
        r.context_headers,
        "extended.headers.enabled defaults to true"
    );
    assert_eq!(r.message_prefix, "");
    // No converter on the connector: the worker's, assumed JsonConverter with schemas.
    assert_eq!(
        (r.key_format, r.value_format),
        (RecordFormat::JsonSchema, RecordFormat::JsonSchema)
    );
    assert!(note(&m, "key.converter").supported);
    assert!(note(&m, "database.password").supported);
    assert!(m.complete(), "{:?}", m.report());
    let text = format!("{}{:?}", m.toml("test"), m.report());
    assert!(
        !text.contains("hunter2"),
        "no password in the file or report:\n{text}"
    );
}

/// "Expanding escaped JSON String as JSON".
#[test]
fn expanding_json_payloads() {
    let m = migrate_text(&format!(
        "{CONNECTOR}transforms=outbox
transforms.outbox.type=io.debezium.transforms.outbox.EventRouter
transforms.outbox.table.expand.json.payload=true
value.converter=org.apache.kafka.connect.json.JsonConverter
"
    ));
    let r = load(&m).routing;
    assert!(r.expand_json_payload);
    assert_eq!(r.value_format, RecordFormat::JsonSchema);
}

/// "Emitting messages with additional fields": header, envelope and partition.
#[test]
fn additional_fields() {
    let m = migrate_text(&format!(
        "{CONNECTOR}transforms=outbox
transforms.outbox.type=io.debezium.transforms.outbox.EventRouter
transforms.outbox.table.fields.additional.placement=eventType:header:type,eventType:envelope:type,partitionColumn:partition
transforms.outbox.table.field.additional.missing=ignore
transforms.outbox.table.op.invalid.behavior=fatal
key.converter=org.apache.kafka.connect.storage.StringConverter
value.converter=org.apache.kafka.connect.json.JsonConverter
value.converter.schemas.enable=false
"
    ));
    let r = load(&m).routing;
    assert_eq!(r.additional_headers[0].column, "eventType");
    assert_eq!(r.additional_headers[0].header, "type");
    assert_eq!(r.envelope_fields[0].field, "type");
    assert_eq!(r.partition_column.as_deref(), Some("partitionColumn"));
    assert_eq!(r.missing_columns, MissingColumns::Ignore);
    assert_eq!(r.invalid_operation, InvalidOperation::Fatal);
    assert_eq!(
        (r.key_format, r.value_format),
        (RecordFormat::String, RecordFormat::Json)
    );
    assert!(m.complete(), "{:?}", m.report());
}

/// "Using Apache Avro as the payload format": BinaryDataConverter with a delegate
/// is carried over (bytea payloads as bytes); Confluent's AvroConverter is not.
#[test]
fn avro_payloads() {
    let m = migrate_text(&format!(
        "{CONNECTOR}transforms=outbox
transforms.outbox.type=io.debezium.transforms.outbox.EventRouter
value.converter=io.debezium.converters.BinaryDataConverter
value.converter.delegate.converter.type=org.apache.kafka.connect.json.JsonConverter
value.converter.delegate.converter.type.schemas.enable=false
"
    ));
    assert_eq!(load(&m).routing.value_format, RecordFormat::Bytes);
    assert!(m.complete(), "{:?}", m.report());
    let m = migrate_text(&format!(
        "{CONNECTOR}transforms=outbox
transforms.outbox.type=io.debezium.transforms.outbox.EventRouter
value.converter=io.confluent.connect.avro.AvroConverter
value.converter.schema.registry.url=http://registry:8081
"
    ));
    assert!(!m.complete());
    assert!(!note(&m, "value.converter").supported);
    load(&m);
}

/// The debezium-examples outbox connector (REST JSON, pre-2.0 setting names, the
/// default decoderbufs plugin).
#[test]
fn the_debezium_examples_outbox_connector() {
    let m = migrate_text(
        r#"{
    "connector.class": "io.debezium.connector.postgresql.PostgresConnector",
    "tasks.max": "1",
    "database.hostname": "order-db",
    "database.port": "5432",
    "database.user": "postgresuser",
    "database.password": "postgrespw",
    "database.dbname" : "orderdb",
    "database.server.name": "dbserver1",
    "schema.whitelist": "inventory",
    "table.whitelist" : "inventory.outboxevent",
    "tombstones.on.delete" : "false",
    "transforms" : "outbox",
    "transforms.outbox.type" : "io.debezium.transforms.outbox.EventRouter",
    "transforms.outbox.route.topic.replacement" : "${routedByValue}.events",
    "transforms.outbox.table.field.event.timestamp" : "timestamp"
}"#,
    );
    let config = load(&m);
    assert_eq!(config.routing.topic, "${routedByValue}.events");
    assert_eq!(
        config.routing.columns.timestamp.as_deref(),
        Some("timestamp")
    );
    assert_eq!(config.routing.logical_name, "dbserver1");
    assert_eq!(config.postgres.tables, ["inventory.outboxevent"]);
    // decoderbufs: a slot of outboxd's own, made before the connector stops.
    assert_eq!(config.postgres.slot, "outboxd");
    assert!(config.postgres.create_slot && config.postgres.create_publication);
    assert!(note(&m, "plugin.name").supported);
    let steps = steps::cut_over(&m.connector, &m.source, "outboxd.toml").join("\n");
    assert!(steps.contains("while the connector still runs"), "{steps}");
    assert!(m.complete(), "{:?}", m.report());
}

/// Several routers, each for the tables its predicate selects.
#[test]
fn a_router_per_table() {
    let m = migrate_text(
        "name=two
connector.class=io.debezium.connector.postgresql.PostgresConnector
plugin.name=pgoutput
topic.prefix=shop
table.include.list=public.orders_outbox,public.audit_outbox,public.customers
key.converter=org.apache.kafka.connect.storage.StringConverter
value.converter=org.apache.kafka.connect.storage.StringConverter
transforms=orders,audit
transforms.orders.type=io.debezium.transforms.outbox.EventRouter
transforms.orders.predicate=isOrders
transforms.orders.route.topic.replacement=orders.${routedByValue}
transforms.audit.type=io.debezium.transforms.outbox.EventRouter
transforms.audit.predicate=isAudit
transforms.audit.route.by.field=type
predicates=isOrders,isAudit
predicates.isOrders.type=org.apache.kafka.connect.transforms.predicates.TopicNameMatches
predicates.isOrders.pattern=shop\\.public\\.orders_outbox
predicates.isAudit.type=org.apache.kafka.connect.transforms.predicates.TopicNameMatches
predicates.isAudit.pattern=.*audit.*
",
    );
    let config = load(&m);
    assert_eq!(
        config.postgres.tables,
        ["public.orders_outbox", "public.audit_outbox"]
    );
    let orders = config.routing.for_table("public.orders_outbox").unwrap();
    assert_eq!(orders.topic, "orders.${routedByValue}");
    let audit = config.routing.for_table("public.audit_outbox").unwrap();
    assert_eq!(audit.columns.aggregate_type, "type");
    assert_eq!(audit.topic, RoutingConfig::default().topic);
    assert!(note(&m, "table.include.list")
        .reason
        .contains("public.customers"));
    assert!(m.complete(), "{:?}", m.report());
}

#[test]
fn topic_creation_and_unknown_settings() {
    let m = migrate_text(&format!(
        "{CONNECTOR}transforms=outbox
transforms.outbox.type=io.debezium.transforms.outbox.EventRouter
transforms.outbox.no.such.setting=1
topic.creation.default.partitions=6
topic.creation.default.replication.factor=3
topic.creation.default.cleanup.policy=delete
topic.creation.groups=big
topic.creation.big.include=outbox\\\\.event\\\\.order.*
topic.creation.big.partitions=12
snapshot.mode=initial
"
    ));
    let config = load(&m);
    let t = &config.kafka.topic_creation;
    assert!(t.enable);
    assert_eq!((t.partitions, t.replication_factor), (6, 3));
    assert_eq!(
        t.configs.get("cleanup.policy").map(String::as_str),
        Some("delete")
    );
    assert_eq!(t.groups[0].include, ["outbox\\.event\\.order.*"]);
    assert_eq!(t.groups[0].partitions, Some(12));
    assert!(note(&m, "snapshot.mode").supported);
    assert!(!note(&m, "transforms.outbox.no.such.setting").supported);
}

#[test]
fn not_an_outbox_connector() {
    let e = migrate(
        &input::parse("connector.class=io.debezium.connector.mysql.MySqlConnector").unwrap(),
        None,
    )
    .unwrap_err();
    assert!(e.contains("PostgreSQL connector"), "{e}");
    let e = migrate(&input::parse(CONNECTOR).unwrap(), None).unwrap_err();
    assert!(e.contains("Outbox Event Router"), "{e}");
}

/// Every setting `migrate` explains is in docs/configuration.md's table.
#[test]
fn the_documentation_lists_every_setting() {
    let docs = include_str!("../../../../docs/configuration.md");
    for name in fates::documented_names() {
        assert!(
            docs.contains(&format!("`{name}`")),
            "docs/configuration.md lacks `{name}`"
        );
    }
}
