//! More golden scenarios: JSON expansion, routing (route.by.field, regex groups,
//! key column, missing columns, invalid operations), tombstones, bytes, several
//! tables with routers of their own.

use super::golden::{run, Scenario};
use super::scenarios::{rows, OUTBOX};

const STRING: &str = "org.apache.kafka.connect.storage.StringConverter";
const JSON: &str = "org.apache.kafka.connect.json.JsonConverter";

fn setting(k: &'static str, v: &str) -> (&'static str, String) {
    (k, v.to_owned())
}

/// Text payloads: JSON Debezium expands, and text it leaves as it is.
/// (Payloads whose expansion fails after the schema is inferred stop Debezium:
/// `expansion_failure_stops_both`.)
const TEXT_PAYLOADS: [&str; 13] = [
    "plain text",
    "  {\"leading\": \"space\"}",
    "{\"mixed\": [1, \"x\"]}",
    "{\"b\": 1, \"a\": 2, \"b\": 3}",
    "{\"n\": null, \"e\": [], \"o\": {}, \"arr\": [[1, 2], [3]], \"objs\": [{\"x\": 1, \"y\": \"a\"}, {\"x\": 2, \"y\": \"b\"}]}",
    "{\"d\": 1e2, \"neg\": -0, \"f\": 1.5e-7, \"big\": 9223372036854775807, \"small\": -2147483649, \"z\": 0.0}",
    "{\"s\": \"\\u00e9\\ud83d\\ude00\\n\\t\\\"\\/\", \"u\": \"\\u0001\\u007f\"}",
    "{\"onlynulls\": [null, null]}",
    "{\"nested\": {\"deeper\": {\"deepest\": [true, false, null]}}, \"t\": true}",
    "{}",
    "{\"a\": 1} trailing",
    "x",
    "{\"ints\": [1, 2, 3], \"longs\": [3000000000, 4000000000], \"doubles\": [0.5, 1.5]}",
];

fn text_rows(aggregate_type: &str, payloads: &[&str]) -> String {
    let mut sql = String::from("INSERT INTO outbox_text VALUES\n");
    let values: Vec<String> = payloads
        .iter()
        .enumerate()
        .map(|(i, p)| {
            format!(
                "(md5('text{aggregate_type}{i}')::uuid, '{aggregate_type}', 'm-{i}', 'Noted', '{}')",
                p.replace('\'', "''")
            )
        })
        .chain(std::iter::once(format!(
            "(md5('textnull{aggregate_type}')::uuid, '{aggregate_type}', 'm-null', 'Noted', NULL)"
        )))
        .collect();
    sql.push_str(&values.join(",\n"));
    sql.push(';');
    sql
}

fn both_schemas() -> &'static str {
    "CREATE TABLE outbox (
        id uuid PRIMARY KEY, aggregatetype varchar(255) NOT NULL,
        aggregateid varchar(255) NOT NULL, type varchar(255) NOT NULL DEFAULT 'created',
        payload jsonb, ts timestamp, ts3 timestamp(3), tstz timestamptz, tstz3 timestamptz(3),
        part int4, ver int4, n int8, s2 int2, flag boolean, note text, d date,
        f8 float8, f4 float4, bin bytea, u uuid, k int8, tracingspancontext varchar(512));
     CREATE TABLE outbox_text (
        id uuid PRIMARY KEY, aggregatetype text NOT NULL, aggregateid text NOT NULL,
        type text, payload text)"
}

/// `table.expand.json.payload` with JsonConverter (schemas on): jsonb payloads of
/// every shape, and text payloads, some of which Debezium cannot expand.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs Kafka Connect with Debezium; scripts/test-debezium.sh runs it"]
async fn expanded_json_payloads() {
    // `[]` and `{"broken": `: no schema inferred (an empty one, or none).
    let payloads: Vec<&str> = TEXT_PAYLOADS
        .iter()
        .copied()
        .chain(["[]", "{\"broken\": "])
        .collect();
    let expected = 150 + payloads.len() + 1;
    let s = Scenario {
        name: "expanded_json_payloads",
        schema: both_schemas(),
        tables: vec!["public.outbox", "public.outbox_text"],
        rows: format!(
            "{}\n{}",
            rows(150, &["order"], "expand"),
            text_rows("memo", &payloads)
        ),
        settings: vec![
            setting("key.converter", STRING),
            setting("value.converter", JSON),
            setting(
                "transforms.outbox.route.topic.replacement",
                "{p}.${routedByValue}",
            ),
            setting("transforms.outbox.table.expand.json.payload", "true"),
        ],
        topics: vec!["{p}.order", "{p}.memo"],
        expected,
        ..Scenario::default()
    };
    run(s).await.assert_same("expanded_json_payloads", expected);
}

/// Expansion without schemas, keeping null fields and empty arrays
/// (`table.json.payload.null.behavior=optional_bytes`,
/// `table.json.payload.empty.array.behavior=optional_string`), StringConverter keys.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs Kafka Connect with Debezium; scripts/test-debezium.sh runs it"]
async fn expanded_json_keeping_nulls() {
    let expected = 100 + TEXT_PAYLOADS.len() + 1;
    let s = Scenario {
        name: "expanded_json_keeping_nulls",
        schema: both_schemas(),
        tables: vec!["public.outbox", "public.outbox_text"],
        rows: format!(
            "{}\n{}",
            rows(100, &["order"], "keepnulls"),
            text_rows("memo", &TEXT_PAYLOADS)
        ),
        settings: vec![
            setting("key.converter", STRING),
            setting("value.converter", JSON),
            setting("value.converter.schemas.enable", "false"),
            setting(
                "transforms.outbox.route.topic.replacement",
                "{p}.${routedByValue}",
            ),
            setting("transforms.outbox.table.expand.json.payload", "true"),
            setting(
                "transforms.outbox.table.json.payload.null.behavior",
                "optional_bytes",
            ),
            setting(
                "transforms.outbox.table.json.payload.empty.array.behavior",
                "optional_string",
            ),
        ],
        topics: vec!["{p}.order", "{p}.memo"],
        expected,
        ..Scenario::default()
    };
    run(s)
        .await
        .assert_same("expanded_json_keeping_nulls", expected);
}

/// A payload whose expansion fails after its schema was inferred (a top-level array,
/// a number beyond `long`, array elements that do not fit the merged schema): with
/// JsonConverter Debezium's task fails on it; so does outboxd, after the same events.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs Kafka Connect with Debezium; scripts/test-debezium.sh runs it"]
async fn expansion_failure_stops_both() {
    for (i, broken) in [
        "[1, 2]",
        "{\"huge\": 123456789012345678901234}",
        "{\"a\": [{\"x\": 1}, {\"x\": \"s\"}]}",
    ]
    .into_iter()
    .enumerate()
    {
        let s = Scenario {
            name: "expansion_failure_stops_both",
            schema: both_schemas(),
            tables: vec!["public.outbox", "public.outbox_text"],
            rows: format!(
                "{}\n{}\n{}",
                rows(20, &["order"], &format!("broken{i}")),
                text_rows("memo", &[broken]),
                rows(5, &["order"], &format!("after{i}"))
            ),
            settings: vec![
                setting("key.converter", STRING),
                setting("value.converter", JSON),
                setting(
                    "transforms.outbox.route.topic.replacement",
                    "{p}.${routedByValue}",
                ),
                setting("transforms.outbox.table.expand.json.payload", "true"),
            ],
            topics: vec!["{p}.order", "{p}.memo"],
            expected: 20,
            stops: true,
            ..Scenario::default()
        };
        let outcome = run(s).await;
        outcome.assert_same(&format!("expansion_failure_stops_both {broken}"), 20);
        assert!(
            outcome.relay_log.contains("Debezium fails on this record"),
            "{}",
            outcome.relay_log
        );
    }
}

/// `route.by.field`, `route.topic.regex` with groups and `route.topic.replacement`
/// (a value the regex does not match is the topic itself), the key from an int8
/// column (NULL for some rows) as a JSON key with schema, a placed column the
/// table lacks (`table.field.additional.missing=ignore`), and UPDATEs and DELETEs of
/// the outbox table (`table.op.invalid.behavior=error`: logged, skipped).
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs Kafka Connect with Debezium; scripts/test-debezium.sh runs it"]
async fn routing_keys_missing_columns_and_updates() {
    let rows = format!(
        "{}
         INSERT INTO outbox (id, aggregatetype, aggregateid, type, payload, k)
             VALUES (md5('raw')::uuid, 'order', 'agg-raw', '{{p}}-raw', '{{\"raw\": true}}', 7);
         UPDATE outbox SET note = 'changed' WHERE n IS NOT NULL AND s2 < 20;
         DELETE FROM outbox WHERE s2 BETWEEN 20 AND 30;
         {}",
        rows(200, &["order"], "routing"),
        rows(50, &["order"], "routing-after")
    );
    let s = Scenario {
        name: "routing_keys_missing_columns_and_updates",
        schema: OUTBOX,
        tables: vec!["public.outbox"],
        rows,
        settings: vec![
            setting("key.converter", JSON),
            setting("value.converter", STRING),
            setting("transforms.outbox.route.by.field", "type"),
            setting(
                "transforms.outbox.route.topic.regex",
                "(?<routedByValue>[A-Z][a-z]+)(.*)",
            ),
            setting(
                "transforms.outbox.route.topic.replacement",
                "{p}.$2.${routedByValue}",
            ),
            setting("transforms.outbox.table.field.event.key", "k"),
            setting(
                "transforms.outbox.table.fields.additional.placement",
                "nope:header,ts:header:when,type:header:eventType",
            ),
            setting("transforms.outbox.table.field.additional.missing", "ignore"),
            setting("transforms.outbox.table.op.invalid.behavior", "error"),
        ],
        topics: vec!["{p}.Created.Order", "{p}.Deleted.Order", "{p}-raw"],
        expected: 251,
        ..Scenario::default()
    };
    run(s)
        .await
        .assert_same("routing_keys_missing_columns_and_updates", 251);
}

/// `table.op.invalid.behavior=fatal`: both stop at the UPDATE, after the events
/// before it.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs Kafka Connect with Debezium; scripts/test-debezium.sh runs it"]
async fn fatal_update_stops_both() {
    let rows = format!(
        "{}
         UPDATE outbox SET note = 'changed' WHERE s2 = 3;
         {}",
        rows(30, &["order"], "fatal-before"),
        rows(10, &["order"], "fatal-after")
    );
    let s = Scenario {
        name: "fatal_update_stops_both",
        schema: OUTBOX,
        tables: vec!["public.outbox"],
        rows,
        settings: vec![
            setting("key.converter", STRING),
            setting("value.converter", STRING),
            setting(
                "transforms.outbox.route.topic.replacement",
                "{p}.${routedByValue}",
            ),
            setting("transforms.outbox.table.op.invalid.behavior", "fatal"),
        ],
        topics: vec!["{p}.order"],
        expected: 30,
        stops: true,
        ..Scenario::default()
    };
    let outcome = run(s).await;
    outcome.assert_same("fatal_update_stops_both", 30);
    assert!(
        outcome.stopped.contains("Unexpected update message"),
        "{}",
        outcome.stopped
    );
    assert!(
        outcome
            .relay_log
            .contains("unexpected UPDATE of outbox table public.outbox"),
        "{}",
        outcome.relay_log
    );
}

/// `route.tombstone.on.empty.payload`: NULL and blank payloads (Java's `trim`)
/// become tombstones; JsonConverter values otherwise.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs Kafka Connect with Debezium; scripts/test-debezium.sh runs it"]
async fn tombstones_on_empty_payloads() {
    let blanks = "INSERT INTO outbox_text VALUES
        (md5('b1')::uuid, 'memo', 'b-1', 'Noted', ''),
        (md5('b2')::uuid, 'memo', 'b-2', 'Noted', '   '),
        (md5('b3')::uuid, 'memo', 'b-3', 'Noted', E'\\t\\n' || chr(1)),
        (md5('b4')::uuid, 'memo', 'b-4', 'Noted', E' x '),
        (md5('b5')::uuid, 'memo', 'b-5', 'Noted', NULL),
        (md5('b6')::uuid, 'memo', 'b-6', 'Noted', E'\\u00a0');";
    let expected = 100 + 6;
    let s = Scenario {
        name: "tombstones_on_empty_payloads",
        schema: both_schemas(),
        tables: vec!["public.outbox", "public.outbox_text"],
        rows: format!("{}\n{blanks}", rows(100, &["order"], "tombstones")),
        settings: vec![
            setting("key.converter", STRING),
            setting("value.converter", JSON),
            setting(
                "transforms.outbox.route.topic.replacement",
                "{p}.${routedByValue}",
            ),
            setting("transforms.outbox.route.tombstone.on.empty.payload", "true"),
        ],
        topics: vec!["{p}.order", "{p}.memo"],
        expected,
        ..Scenario::default()
    };
    run(s)
        .await
        .assert_same("tombstones_on_empty_payloads", expected);
}

/// bytea payloads with Debezium's BinaryDataConverter (its documented Avro path:
/// the bytes as they are), including NULL and empty ones.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs Kafka Connect with Debezium; scripts/test-debezium.sh runs it"]
async fn binary_payloads() {
    let schema = "CREATE TABLE outbox_bin (id uuid PRIMARY KEY, aggregatetype text NOT NULL,
        aggregateid text NOT NULL, type text, payload bytea, flag boolean)";
    let rows = "INSERT INTO outbox_bin
        SELECT md5('bin' || g)::uuid, 'blob', 'b-' || (g % 7), 'Stored',
               CASE WHEN g % 10 = 0 THEN NULL WHEN g % 10 = 1 THEN ''::bytea
                    ELSE decode(repeat(md5(g::text), 1 + g % 5), 'hex') END,
               g % 2 = 0
        FROM generate_series(1, 120) g;";
    let s = Scenario {
        name: "binary_payloads",
        schema,
        tables: vec!["public.outbox_bin"],
        rows: rows.to_owned(),
        settings: vec![
            setting("key.converter", STRING),
            setting(
                "value.converter",
                "io.debezium.converters.BinaryDataConverter",
            ),
            setting("value.converter.delegate.converter.type", JSON),
            setting(
                "transforms.outbox.route.topic.replacement",
                "{p}.${routedByValue}",
            ),
            setting(
                "transforms.outbox.table.fields.additional.placement",
                "flag:header,payload:header:raw",
            ),
        ],
        topics: vec!["{p}.blob"],
        expected: 120,
        ..Scenario::default()
    };
    run(s).await.assert_same("binary_payloads", 120);
}

/// Two outbox tables, each with an Event Router of its own selected by a
/// `TopicNameMatches` predicate: `migrate` makes a `[routing.tables]` section each.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs Kafka Connect with Debezium; scripts/test-debezium.sh runs it"]
async fn several_tables_with_their_own_routing() {
    let schema = "CREATE TABLE outbox (
        id uuid PRIMARY KEY, aggregatetype varchar(255) NOT NULL,
        aggregateid varchar(255) NOT NULL, type varchar(255) NOT NULL DEFAULT 'created',
        payload jsonb, ts timestamp, ts3 timestamp(3), tstz timestamptz, tstz3 timestamptz(3),
        part int4, ver int4, n int8, s2 int2, flag boolean, note text, d date,
        f8 float8, f4 float4, bin bytea, u uuid, k int8, tracingspancontext varchar(512));
     CREATE TABLE audit_outbox (
        event_id uuid PRIMARY KEY, kind text NOT NULL, subject text NOT NULL, body jsonb,
        happened timestamp NOT NULL)";
    let audit = "INSERT INTO audit_outbox
        SELECT md5('audit' || g)::uuid, CASE WHEN g % 2 = 0 THEN 'login' ELSE 'logout' END,
               'user-' || (g % 9), jsonb_build_object('g', g),
               now() - interval '10 minutes' + g * interval '1 second'
        FROM generate_series(1, 80) g;";
    let s = Scenario {
        name: "several_tables_with_their_own_routing",
        schema,
        tables: vec!["public.outbox", "public.audit_outbox"],
        rows: format!("{}\n{audit}", rows(120, &["order", "customer"], "several")),
        settings: vec![
            setting("key.converter", STRING),
            setting("value.converter", STRING),
            setting("transforms", "general,audit"),
            setting("transforms.outbox.type", ""),
            setting(
                "transforms.general.type",
                "io.debezium.transforms.outbox.EventRouter",
            ),
            setting("transforms.general.predicate", "isGeneral"),
            setting(
                "transforms.general.route.topic.replacement",
                "{p}.${routedByValue}",
            ),
            setting(
                "transforms.general.table.fields.additional.placement",
                "type:header:eventType",
            ),
            setting(
                "transforms.audit.type",
                "io.debezium.transforms.outbox.EventRouter",
            ),
            setting("transforms.audit.predicate", "isAudit"),
            setting("transforms.audit.table.field.event.id", "event_id"),
            setting("transforms.audit.route.by.field", "kind"),
            setting("transforms.audit.table.field.event.key", "subject"),
            setting("transforms.audit.table.field.event.payload", "body"),
            setting("transforms.audit.table.field.event.timestamp", "happened"),
            setting(
                "transforms.audit.route.topic.replacement",
                "{p}-audit.${routedByValue}",
            ),
            setting("predicates", "isGeneral,isAudit"),
            setting(
                "predicates.isGeneral.type",
                "org.apache.kafka.connect.transforms.predicates.TopicNameMatches",
            ),
            setting("predicates.isGeneral.pattern", "{p}\\.public\\.outbox"),
            setting(
                "predicates.isAudit.type",
                "org.apache.kafka.connect.transforms.predicates.TopicNameMatches",
            ),
            setting("predicates.isAudit.pattern", "{p}\\.public\\.audit_outbox"),
        ],
        topics: vec![
            "{p}.order",
            "{p}.customer",
            "{p}-audit.login",
            "{p}-audit.logout",
        ],
        expected: 200,
        ..Scenario::default()
    };
    run(s)
        .await
        .assert_same("several_tables_with_their_own_routing", 200);
}
