//! Connect's `JsonConverter`, byte for byte: values (`convertToJson`), schemas
//! (`asJsonSchema`) and the `{"schema":…,"payload":…}` envelope, written compactly
//! the way its Jackson serializer does.

use std::fmt::Write as _;

use base64::Engine as _;

use super::connect::{java_double, java_float, Kind, Schema, Value};

/// Why a value cannot be written as JSON (Connect fails the record the same way).
pub type JsonError = String;

/// `schemas.enable=false`: the value alone. A null value of an optional schema is
/// `null`; of a schema with a default, the default (`replace.null.with.default`).
pub fn value(schema: &Schema, value: &Value) -> Result<String, JsonError> {
    let mut out = String::new();
    write_value(&mut out, schema, value)?;
    Ok(out)
}

/// `schemas.enable=true`: `{"schema":…,"payload":…}`.
pub fn enveloped(schema: &Schema, value: &Value) -> Result<String, JsonError> {
    let mut out = String::from("{\"schema\":");
    write_schema(&mut out, schema);
    out.push_str(",\"payload\":");
    write_value(&mut out, schema, value)?;
    out.push('}');
    Ok(out)
}

fn write_value(out: &mut String, schema: &Schema, value: &Value) -> Result<(), JsonError> {
    match value {
        Value::Null => {
            if let Some(default) = &schema.default {
                return write_value(out, schema, default);
            }
            if !schema.optional {
                return Err(
                    "Conversion error: null value for field that is required and has no \
                     default value"
                        .to_owned(),
                );
            }
            out.push_str("null");
        }
        Value::Boolean(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Int16(n) => push(out, n),
        Value::Int32(n) => push(out, n),
        Value::Int64(n) => push(out, n),
        Value::Float32(f) => write_float(out, f.is_finite(), || java_float(*f)),
        Value::Float64(f) => write_float(out, f.is_finite(), || java_double(*f)),
        Value::String(t) => write_string(out, t.as_str()),
        Value::Bytes(b) => {
            out.push('"');
            base64::engine::general_purpose::STANDARD.encode_string(b, out);
            out.push('"');
        }
        Value::Array(items) => {
            let element = match &schema.kind {
                Kind::Array(e) => e.as_ref(),
                _ => {
                    return Err(format!(
                        "an array value for a {} schema",
                        schema.type_name()
                    ))
                }
            };
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(out, element, item)?;
            }
            out.push(']');
        }
        Value::Struct(values) => {
            out.push('{');
            for (i, (field, v)) in schema.fields().iter().zip(values).enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(out, &field.name);
                out.push(':');
                write_value(out, &field.schema, v)?;
            }
            out.push('}');
        }
    }
    Ok(())
}

/// Jackson writes non-finite numbers as strings (`"NaN"`), finite ones as Java
/// prints them.
fn write_float(out: &mut String, finite: bool, text: impl FnOnce() -> String) {
    if finite {
        out.push_str(&text());
    } else {
        write_string(out, &text());
    }
}

/// `asJsonSchema`: type, then items or fields, optional, name, version, default;
/// a struct field's schema ends with its `field` name.
pub fn write_schema(out: &mut String, schema: &Schema) {
    out.push_str("{\"type\":\"");
    out.push_str(schema.type_name());
    out.push('"');
    match &schema.kind {
        Kind::Array(element) => {
            out.push_str(",\"items\":");
            write_schema(out, element);
        }
        Kind::Struct(fields) => {
            out.push_str(",\"fields\":[");
            for (i, field) in fields.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_schema(out, &field.schema);
                out.pop();
                out.push_str(",\"field\":");
                write_string(out, &field.name);
                out.push('}');
            }
            out.push(']');
        }
        _ => {}
    }
    let _ = write!(out, ",\"optional\":{}", schema.optional);
    if let Some(name) = &schema.name {
        out.push_str(",\"name\":");
        write_string(out, name);
    }
    if let Some(version) = schema.version {
        let _ = write!(out, ",\"version\":{version}");
    }
    if let Some(default) = &schema.default {
        out.push_str(",\"default\":");
        // A default is never null, so this cannot fail.
        let _ = write_value(out, schema, default);
    }
    out.push('}');
}

/// A JSON string as Jackson escapes it: `"` and `\`, the short escapes for
/// backspace, form feed, newline, carriage return and tab, `\u00XX` (upper-case hex)
/// for the other control characters, and characters beyond the Basic Multilingual
/// Plane as their UTF-16 surrogate pair (`\uD83D\uDE00`: Jackson's UTF-8 writer
/// does not combine surrogates by default); everything else as is.
pub fn write_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c if (c as u32) > 0xFFFF => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04X}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn push(out: &mut String, v: impl std::fmt::Display) {
    let _ = write!(out, "{v}");
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::router::connect::{Field, Text};

    fn json_payload_schema() -> Schema {
        Schema::named(Kind::String, true, "io.debezium.data.Json", 1)
    }

    /// Bytes Debezium 3.7.0 with Connect 4.3.1's JsonConverter wrote for these
    /// columns (docs/configuration.md, "Converters").
    #[test]
    fn envelopes_match_the_json_converter() {
        let key = Schema::new(Kind::String, false);
        assert_eq!(
            enveloped(&key, &Value::String(Text::from("order-1"))).unwrap(),
            r#"{"schema":{"type":"string","optional":false},"payload":"order-1"}"#
        );
        assert_eq!(
            enveloped(&json_payload_schema(), &Value::Null).unwrap(),
            r#"{"schema":{"type":"string","optional":true,"name":"io.debezium.data.Json","version":1},"payload":null}"#
        );
        let mut event_type = Schema::new(Kind::String, false);
        event_type.default = Some(Box::new(Value::String(Text::from("created"))));
        let envelope = Schema {
            name: Some("exdb.public.outbox.order.Value".into()),
            ..Schema::new(
                Kind::Struct(vec![
                    Field {
                        name: "payload".to_owned(),
                        schema: json_payload_schema(),
                    },
                    Field {
                        name: "eventType".to_owned(),
                        schema: event_type,
                    },
                    Field {
                        name: "bin".to_owned(),
                        schema: Schema::new(Kind::Bytes, true),
                    },
                ]),
                false,
            )
        };
        let v = Value::Struct(vec![
            Value::String(Text::from("{\"a\": 1}")),
            Value::String(Text::from("OrderCreated")),
            Value::Bytes(Bytes::from_static(&[0, 0xff, 0x41])),
        ]);
        assert_eq!(
            enveloped(&envelope, &v).unwrap(),
            r#"{"schema":{"type":"struct","fields":[{"type":"string","optional":true,"name":"io.debezium.data.Json","version":1,"field":"payload"},{"type":"string","optional":false,"default":"created","field":"eventType"},{"type":"bytes","optional":true,"field":"bin"}],"optional":false,"name":"exdb.public.outbox.order.Value"},"payload":{"payload":"{\"a\": 1}","eventType":"OrderCreated","bin":"AP9B"}}"#
        );
    }

    #[test]
    fn nulls_take_the_default_or_fail_when_required() {
        let mut s = Schema::new(Kind::String, false);
        assert!(value(&s, &Value::Null).is_err());
        s.default = Some(Box::new(Value::String(Text::from("created"))));
        assert_eq!(value(&s, &Value::Null).unwrap(), "\"created\"");
        assert_eq!(value(&json_payload_schema(), &Value::Null).unwrap(), "null");
    }

    #[test]
    fn strings_are_escaped_as_jackson_does() {
        let mut out = String::new();
        write_string(&mut out, "a\"b\\c\n\t\u{1}\u{1f}é/\u{7f}😀");
        assert_eq!(
            out,
            "\"a\\\"b\\\\c\\n\\t\\u0001\\u001Fé/\u{7f}\\uD83D\\uDE00\""
        );
    }
}
