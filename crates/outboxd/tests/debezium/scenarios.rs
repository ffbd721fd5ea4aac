//! The golden scenarios, one per group of router settings (docs/configuration.md
//! lists which test covers which setting).

use super::golden::{run, Scenario};

/// An outbox table with a column of every type outboxd converts.
pub const OUTBOX: &str = "CREATE TABLE outbox (
    id uuid PRIMARY KEY,
    aggregatetype varchar(255) NOT NULL,
    aggregateid varchar(255) NOT NULL,
    type varchar(255) NOT NULL DEFAULT 'created',
    payload jsonb,
    ts timestamp, ts3 timestamp(3), tstz timestamptz, tstz3 timestamptz(3),
    part int4, ver int4, n int8, s2 int2, flag boolean, note text, d date,
    f8 float8, f4 float4, bin bytea, u uuid, k int8,
    tracingspancontext varchar(512))";

/// `count` rows in transactions of 25, over `types` aggregate types, with NULLs,
/// escapes, Unicode and numbers of every form; timestamps within the last minutes
/// (older records would fall to the broker's retention).
pub fn rows(count: usize, types: &[&str], id_salt: &str) -> String {
    let types = types
        .iter()
        .map(|t| format!("'{t}'"))
        .collect::<Vec<_>>()
        .join(",");
    let mut sql = String::new();
    for start in (0..count).step_by(25) {
        let end = (start + 25).min(count);
        sql.push_str(&format!(
            "BEGIN;
             INSERT INTO outbox (id, aggregatetype, aggregateid, type, payload, ts, ts3, tstz,
                                 tstz3, part, ver, n, s2, flag, note, d, f8, f4, bin, u, k)
             SELECT md5('{id_salt}' || g)::uuid,
                    (ARRAY[{types}])[1 + g % {n}],
                    'agg-' || (g % 17),
                    CASE WHEN g % 5 = 0 THEN 'OrderDeleted' ELSE 'OrderCreated' END,
                    CASE WHEN g % 11 = 0 THEN NULL
                         ELSE jsonb_build_object('seq', g, 'total', g * 1.25, 'big', g * 1000000000::bigint,
                              'lines', jsonb_build_array(jsonb_build_object('sku', 'S' || g, 'qty', g % 4)),
                              'note', E'tab\\there \"quoted\" back\\\\slash é ☃ 😀 ' || chr(1),
                              'none', NULL, 'empty', '[]'::jsonb, 'ratio', 1.0 / (1 + g)) END,
                    CASE WHEN g % 7 = 3 THEN NULL ELSE now() - interval '20 minutes' + g * interval '1.000123 second' END,
                    now() - interval '20 minutes' + g * interval '0.5 second',
                    CASE WHEN g % 7 = 4 THEN NULL ELSE now() - interval '20 minutes' + g * interval '1.25 second' END,
                    now() - interval '20 minutes' + g * interval '0.1 second',
                    CASE WHEN g % 9 = 0 THEN NULL ELSE g % 6 END,
                    CASE WHEN g % 4 = 0 THEN NULL ELSE 1 + g % 3 END,
                    CASE WHEN g % 6 = 0 THEN NULL ELSE g::bigint * 7919 * 1000003 END,
                    (g % 300)::int2,
                    CASE WHEN g % 3 = 0 THEN NULL ELSE g % 2 = 0 END,
                    CASE WHEN g % 8 = 0 THEN NULL ELSE 'note ' || g || E' \"q\" \\\\ é 😀' END,
                    DATE '2024-02-29' + g,
                    CASE WHEN g % 10 = 0 THEN NULL ELSE g * 1.5e7 + 0.25 END,
                    CASE WHEN g % 10 = 1 THEN NULL ELSE (g * 0.1)::float4 END,
                    CASE WHEN g % 12 = 0 THEN NULL ELSE decode(md5(g::text), 'hex') END,
                    md5('u' || g)::uuid,
                    CASE WHEN g % 5 = 2 THEN NULL ELSE g END
             FROM generate_series({start}, {last}) g;
             COMMIT;\n",
            n = types.split(',').count(),
            last = end - 1,
        ));
    }
    sql
}

const TYPED_HEADERS: &str = "type:header:eventType,n:header,s2:header,flag:header,tstz:header,\
    tstz3:header,ts:header,ts3:header,d:header,f8:header,f4:header,bin:header,note:header,\
    u:header,part:header";

fn setting(k: &'static str, v: &str) -> (&'static str, String) {
    (k, v.to_owned())
}

const STRING: &str = "org.apache.kafka.connect.storage.StringConverter";
const JSON: &str = "org.apache.kafka.connect.json.JsonConverter";

/// The defaults with StringConverter, and a header for each column type (NULLs
/// give headers without values).
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs Kafka Connect with Debezium; scripts/test-debezium.sh runs it"]
async fn defaults_and_typed_headers() {
    let s = Scenario {
        name: "defaults_and_typed_headers",
        schema: OUTBOX,
        tables: vec!["public.outbox"],
        rows: rows(600, &["order", "customer", "payment"], "defaults"),
        settings: vec![
            setting("key.converter", STRING),
            setting("value.converter", STRING),
            setting(
                "transforms.outbox.route.topic.replacement",
                "{p}.${routedByValue}",
            ),
            setting(
                "transforms.outbox.table.fields.additional.placement",
                TYPED_HEADERS,
            ),
        ],
        topics: vec!["{p}.order", "{p}.customer", "{p}.payment"],
        expected: 600,
        ..Scenario::default()
    };
    run(s).await.assert_same("defaults_and_typed_headers", 600);
}

/// JsonConverter with schemas (Connect's default) for keys and values, an envelope
/// of every column type, an explicit partition, a schema version and the record
/// timestamp from a `timestamp(3)` column. One aggregate type: Debezium caches the
/// envelope schema by payload schema, so its name carries the first aggregate type
/// it saw (docs/configuration.md).
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs Kafka Connect with Debezium; scripts/test-debezium.sh runs it"]
async fn json_schema_envelope_partition_and_timestamp() {
    let s = Scenario {
        name: "json_schema_envelope_partition_and_timestamp",
        schema: OUTBOX,
        tables: vec!["public.outbox"],
        rows: rows(400, &["order"], "envelope"),
        settings: vec![
            setting("key.converter", JSON),
            setting("value.converter", JSON),
            setting(
                "transforms.outbox.route.topic.replacement",
                "{p}.${routedByValue}",
            ),
            setting(
                "transforms.outbox.table.fields.additional.placement",
                "type:envelope:eventType,n:envelope,tstz:envelope,ts:envelope,d:envelope,\
                 bin:envelope,flag:envelope,note:envelope,f8:envelope,u:envelope,part:partition,\
                 type:header:eventType",
            ),
            setting("transforms.outbox.table.field.event.schema.version", "ver"),
            setting("transforms.outbox.table.field.event.timestamp", "ts3"),
        ],
        topics: vec!["{p}.order"],
        expected: 400,
        exact_timestamps: true,
        ..Scenario::default()
    };
    run(s)
        .await
        .assert_same("json_schema_envelope_partition_and_timestamp", 400);
}

/// JsonConverter without schemas, an envelope, and the record timestamp from a
/// `timestamp` (microseconds) column.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs Kafka Connect with Debezium; scripts/test-debezium.sh runs it"]
async fn json_without_schemas() {
    let s = Scenario {
        name: "json_without_schemas",
        schema: OUTBOX,
        tables: vec!["public.outbox"],
        rows: rows(300, &["order", "customer"], "plainjson").replace(
            "CASE WHEN g % 7 = 3 THEN NULL ELSE now()",
            "CASE WHEN false THEN NULL ELSE now()",
        ),
        settings: vec![
            setting("key.converter", JSON),
            setting("key.converter.schemas.enable", "false"),
            setting("value.converter", JSON),
            setting("value.converter.schemas.enable", "false"),
            setting(
                "transforms.outbox.route.topic.replacement",
                "{p}.${routedByValue}",
            ),
            setting(
                "transforms.outbox.table.fields.additional.placement",
                "type:envelope:eventType,n:envelope,bin:envelope,flag:envelope,f4:envelope",
            ),
            setting("transforms.outbox.table.field.event.timestamp", "ts"),
        ],
        topics: vec!["{p}.order", "{p}.customer"],
        expected: 300,
        exact_timestamps: true,
        ..Scenario::default()
    };
    run(s).await.assert_same("json_without_schemas", 300);
}

/// StringConverter with an envelope: Connect writes the struct's `toString`.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs Kafka Connect with Debezium; scripts/test-debezium.sh runs it"]
async fn string_envelope() {
    let s = Scenario {
        name: "string_envelope",
        schema: OUTBOX,
        tables: vec!["public.outbox"],
        rows: rows(200, &["order"], "strenv"),
        settings: vec![
            setting("key.converter", STRING),
            setting("value.converter", STRING),
            setting(
                "transforms.outbox.route.topic.replacement",
                "{p}.${routedByValue}",
            ),
            setting(
                "transforms.outbox.table.fields.additional.placement",
                "type:envelope:eventType,n:envelope,bin:envelope,f8:envelope,tstz:envelope",
            ),
        ],
        topics: vec!["{p}.order"],
        expected: 200,
        ..Scenario::default()
    };
    run(s).await.assert_same("string_envelope", 200);
}
