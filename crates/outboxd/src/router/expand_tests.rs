//! Expansion against what Debezium 3.7.0 wrote for the same payloads (with
//! JsonConverter, schemas on: docs/configuration.md).

use super::*;
use crate::router::json;

fn expanded(e: Expander, text: &str) -> (Schema, Value) {
    match e.expand("payload", text) {
        Expansion::Expanded(schema, value) => (schema, value),
        other => panic!("{text}: {other:?}"),
    }
}

fn expander() -> Expander {
    Expander {
        nulls: JsonPayloadNulls::Ignore,
        empty_arrays: JsonPayloadEmptyArrays::Ignore,
    }
}

#[test]
fn an_object_payload_as_debezium_expands_it() {
    let (schema, value) = expanded(
        expander(),
        r#"{"id": "order-1", "big": 12345678901, "none": null, "empty": [], "lines": [{"qty": 2, "sku": "a"}], "total": 42.5}"#,
    );
    assert_eq!(
        json::enveloped(&schema, &value).unwrap(),
        r#"{"schema":{"type":"struct","fields":[{"type":"string","optional":true,"field":"id"},{"type":"int64","optional":true,"field":"big"},{"type":"array","items":{"type":"struct","fields":[{"type":"int32","optional":true,"field":"qty"},{"type":"string","optional":true,"field":"sku"}],"optional":true,"name":"payload.lines"},"optional":true,"field":"lines"},{"type":"double","optional":true,"field":"total"}],"optional":true,"name":"payload"},"payload":{"id":"order-1","big":12345678901,"lines":[{"qty":2,"sku":"a"}],"total":42.5}}"#
    );
}

#[test]
fn nulls_and_empty_arrays_kept_when_asked() {
    let keep = Expander {
        nulls: JsonPayloadNulls::OptionalBytes,
        empty_arrays: JsonPayloadEmptyArrays::OptionalString,
    };
    let (schema, value) = expanded(keep, r#"{"none": null, "empty": []}"#);
    assert_eq!(
        json::value(&schema, &value).unwrap(),
        r#"{"none":null,"empty":[]}"#
    );
    assert_eq!(schema.fields()[0].schema.kind, Kind::Bytes);
}

/// Debezium's two failures: before a schema is inferred the payload is unchanged;
/// after, the record keeps the new schema with the old text.
#[test]
fn what_cannot_expand() {
    for payload in [
        "plain text",
        "  {\"a\": 1}",
        r#"{"a": [1, "x"]}"#,
        r#"{"a": [1, 12345678901]}"#,
        r#"{"a": [null]}"#,
        "{broken",
    ] {
        assert!(
            matches!(
                expander().expand("payload", payload),
                Expansion::Unchanged(_)
            ),
            "{payload}"
        );
    }
    for payload in [
        "[1, 2]",
        r#"{"a": 123456789012345678901234}"#,
        r#"{"a": [{"x": 1}, {"x": "s"}]}"#,
    ] {
        assert!(
            matches!(
                expander().expand("payload", payload),
                Expansion::Broken(Some(_), _)
            ),
            "{payload}"
        );
    }
    assert!(matches!(
        expander().expand("payload", "[]"),
        Expansion::Broken(None, _)
    ));
}

#[test]
fn object_arrays_merge_their_fields() {
    let (schema, value) = expanded(
        expander(),
        r#"{"a": [{"x": 1}, {"y": "s"}, {"x": 2, "z": true}]}"#,
    );
    assert_eq!(
        json::value(&schema, &value).unwrap(),
        r#"{"a":[{"x":1,"y":null,"z":null},{"x":null,"y":"s","z":null},{"x":2,"y":null,"z":true}]}"#
    );
}
