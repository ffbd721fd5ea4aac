//! Column values as Debezium 3.7.0 gave them (its headers, written by the
//! SimpleHeaderConverter, show the Connect values: docs/configuration.md).

use super::*;

fn column(type_oid: u32, type_modifier: i32) -> Column {
    Column {
        flags: 0,
        name: "c".to_owned(),
        type_oid,
        type_modifier,
    }
}

fn header(type_oid: u32, type_modifier: i32, text: &str) -> Option<String> {
    let ty = ColumnType::of(
        &column(type_oid, type_modifier),
        None,
        BinaryHandling::Bytes,
    )
    .unwrap();
    let value = ty
        .value(Some(&Bytes::copy_from_slice(text.as_bytes())))
        .unwrap();
    value.header_string(&ty.schema)
}

#[test]
fn values_as_debezium_hands_them_to_connect() {
    let cases = [
        (oid::INT8, -1, "9000000000", "9000000000"),
        (oid::INT2, -1, "7", "7"),
        (oid::BOOL, -1, "t", "true"),
        (
            oid::TIMESTAMPTZ,
            -1,
            "2024-01-02 01:04:05.12+00",
            "2024-01-02T01:04:05.120000Z",
        ),
        (
            oid::TIMESTAMPTZ,
            3,
            "2024-01-02 03:04:05.1+00",
            "2024-01-02T03:04:05.100Z",
        ),
        (
            oid::TIMESTAMP,
            -1,
            "2024-01-02 03:04:05.123456",
            "1704164645123456",
        ),
        (
            oid::TIMESTAMP,
            3,
            "2024-01-02 03:04:05.123",
            "1704164645123",
        ),
        (oid::DATE, -1, "2024-02-29", "19782"),
        (oid::FLOAT8, -1, "15000000000", "1.5E10"),
        (oid::FLOAT4, -1, "0.1", "0.1"),
        (oid::BYTEA, -1, "\\x00ff41", "AP9B"),
        (oid::TEXT, -1, "hello \"q\"", "hello \"q\""),
        (
            oid::UUID,
            -1,
            "22222222-2222-4222-8222-222222222222",
            "22222222-2222-4222-8222-222222222222",
        ),
    ];
    for (type_oid, typmod, text, expected) in cases {
        assert_eq!(
            header(type_oid, typmod, text).as_deref(),
            Some(expected),
            "{type_oid} {text}"
        );
    }
    let ty = ColumnType::of(&column(oid::TEXT, -1), None, BinaryHandling::Bytes).unwrap();
    assert_eq!(ty.value(None).unwrap(), Value::Null);
}

#[test]
fn binary_handling_modes() {
    let raw = Bytes::from_static(b"\\x00ff41");
    for (mode, expected) in [
        (BinaryHandling::Base64, "AP9B"),
        (BinaryHandling::Base64UrlSafe, "AP9B"),
        (BinaryHandling::Hex, "00ff41"),
    ] {
        let ty = ColumnType::of(&column(oid::BYTEA, -1), None, mode).unwrap();
        assert_eq!(ty.schema.kind, Kind::String);
        assert_eq!(
            ty.value(Some(&raw)).unwrap(),
            Value::String(Text::from(expected))
        );
    }
}

#[test]
fn schemas_take_nullability_and_debeziums_reading_of_defaults() {
    let info = |not_null, default: &str| ColumnInfo {
        not_null,
        default: Some(default.to_owned()),
    };
    let of = |type_oid, i: &ColumnInfo| {
        ColumnType::of(&column(type_oid, -1), Some(i), BinaryHandling::Bytes)
            .unwrap()
            .schema
    };
    let s = of(oid::VARCHAR, &info(true, "'created'::character varying"));
    assert!(!s.optional);
    assert_eq!(
        s.default.as_deref(),
        Some(&Value::String(Text::from("created")))
    );
    let s = of(oid::TEXT, &info(false, "'it''s'::text"));
    assert_eq!(
        s.default.as_deref(),
        Some(&Value::String(Text::from("it's")))
    );
    let s = of(oid::UUID, &info(true, "gen_random_uuid()"));
    assert_eq!(
        s.default.as_deref(),
        Some(&Value::String(Text::from(
            "00000000-0000-0000-0000-000000000000"
        )))
    );
    assert_eq!(
        of(oid::INT4, &info(false, "42")).default.as_deref(),
        Some(&Value::Int32(42))
    );
    assert_eq!(
        of(oid::INT8, &info(false, "'-7'::bigint"))
            .default
            .as_deref(),
        Some(&Value::Int64(-7))
    );
    assert_eq!(
        of(oid::TIMESTAMP, &info(false, "now()")).default.as_deref(),
        Some(&Value::Int64(0))
    );
    assert_eq!(
        of(oid::TIMESTAMPTZ, &info(false, "CURRENT_TIMESTAMP"))
            .default
            .as_deref(),
        Some(&Value::String(Text::from("1970-01-01T00:00:00.000000Z")))
    );
    assert_eq!(of(oid::TEXT, &info(false, "NULL::text")).default, None);
    assert_eq!(of(oid::BYTEA, &info(false, "'\\x00'::bytea")).default, None);
}

#[test]
fn unsupported_types_are_named() {
    let e = ColumnType::of(&column(1700, -1), None, BinaryHandling::Bytes).unwrap_err();
    assert!(e.contains("OID 1700") && e.contains("column 'c'"), "{e}");
}
