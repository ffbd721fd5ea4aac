//! Keys and values to bytes, as the Kafka Connect converter each [`RecordFormat`]
//! stands for writes them.

use bytes::Bytes;

use super::connect::{struct_java_string, Datum, Value};
use super::json;
use crate::config::RecordFormat;

/// Serializes a key or value; `None` (Connect's null schema and value, i.e. a
/// tombstone) and null values without a schema default give no bytes, except in
/// the JSON formats, which write `null`.
pub fn encode(format: RecordFormat, datum: Option<&Datum>) -> Result<Option<Bytes>, String> {
    let Some(datum) = datum else {
        return Ok(None);
    };
    match format {
        RecordFormat::String => Ok(string_converter(datum)),
        RecordFormat::Bytes => byte_array_converter(datum),
        RecordFormat::Json => {
            json::value(&datum.schema, &datum.value).map(|s| Some(Bytes::from(s)))
        }
        RecordFormat::JsonSchema => {
            json::enveloped(&datum.schema, &datum.value).map(|s| Some(Bytes::from(s)))
        }
    }
}

/// `StringConverter`: the value's `toString`. A `bytea` value is written as its
/// bytes, where Connect would write the `ByteBuffer`'s description
/// (`java.nio.HeapByteBuffer[pos=0 lim=3 cap=3]`), which loses them.
fn string_converter(datum: &Datum) -> Option<Bytes> {
    match &datum.value {
        Value::Null => None,
        Value::String(text) => Some(text.bytes().clone()),
        Value::Bytes(bytes) => Some(bytes.clone()),
        Value::Struct(values) => {
            let mut out = String::new();
            struct_java_string(&datum.schema, values, &mut out);
            Some(Bytes::from(out))
        }
        other => {
            let mut out = String::new();
            other.java_string(&mut out);
            Some(Bytes::from(out))
        }
    }
}

/// `ByteArrayConverter` (and Debezium's `BinaryDataConverter` for `bytea`): bytes
/// as they are. Text is written as its UTF-8 bytes, where Connect refuses it.
fn byte_array_converter(datum: &Datum) -> Result<Option<Bytes>, String> {
    match &datum.value {
        Value::Null => Ok(None),
        Value::Bytes(bytes) => Ok(Some(bytes.clone())),
        Value::String(text) => Ok(Some(text.bytes().clone())),
        _ => Err(format!(
            "format 'bytes' (ByteArrayConverter) cannot write a {} value; Debezium fails \
             the same way ('Invalid schema type for ByteArrayConverter'): choose 'string' or \
             a JSON format",
            datum.schema.type_name()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::connect::{Kind, Schema, Text};

    fn datum(value: Value, kind: Kind, optional: bool) -> Datum {
        Datum {
            value,
            schema: Schema::new(kind, optional),
        }
    }

    /// Bytes Debezium 3.7.0 wrote with each converter (docs/configuration.md).
    #[test]
    fn each_format_writes_what_its_converter_does() {
        let key = datum(Value::String(Text::from("order-1")), Kind::String, false);
        let cases = [
            (RecordFormat::String, Some(&b"order-1"[..])),
            (RecordFormat::Bytes, Some(b"order-1")),
            (RecordFormat::Json, Some(b"\"order-1\"")),
            (
                RecordFormat::JsonSchema,
                Some(br#"{"schema":{"type":"string","optional":false},"payload":"order-1"}"#),
            ),
        ];
        for (format, bytes) in cases {
            assert_eq!(
                encode(format, Some(&key)).unwrap().as_deref(),
                bytes,
                "{format:?}"
            );
        }
        let null_key = datum(Value::Null, Kind::Int64, true);
        assert_eq!(encode(RecordFormat::String, Some(&null_key)).unwrap(), None);
        assert_eq!(
            encode(RecordFormat::Json, Some(&null_key))
                .unwrap()
                .as_deref(),
            Some(&b"null"[..])
        );
        assert_eq!(
            encode(RecordFormat::JsonSchema, Some(&null_key))
                .unwrap()
                .as_deref(),
            Some(&br#"{"schema":{"type":"int64","optional":true},"payload":null}"#[..])
        );
        for format in [
            RecordFormat::String,
            RecordFormat::Json,
            RecordFormat::JsonSchema,
        ] {
            assert_eq!(encode(format, None).unwrap(), None, "tombstone");
        }
        let number = datum(Value::Int64(17), Kind::Int64, true);
        assert_eq!(
            encode(RecordFormat::String, Some(&number))
                .unwrap()
                .as_deref(),
            Some(&b"17"[..])
        );
        assert!(encode(RecordFormat::Bytes, Some(&number)).is_err());
    }
}
