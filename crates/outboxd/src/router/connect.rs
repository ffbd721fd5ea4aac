//! Kafka Connect's data model, as far as outbox records need it: schemas and values
//! the way Debezium's PostgreSQL connector hands columns to the Outbox Event Router,
//! and the text forms Connect derives from them (Java's `toString`, the
//! `SimpleHeaderConverter`).

use std::borrow::Cow;
use std::fmt::Write as _;

use base64::Engine as _;
use bytes::Bytes;

/// A Connect schema: its type, whether it is optional, its logical name and
/// version (e.g. `io.debezium.data.Json`, version 1) and its default.
#[derive(Debug, Clone, PartialEq)]
pub struct Schema {
    pub kind: Kind,
    pub optional: bool,
    pub name: Option<Cow<'static, str>>,
    pub version: Option<i32>,
    pub default: Option<Box<Value>>,
}

/// The type of a [`Schema`].
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    Boolean,
    Int16,
    Int32,
    Int64,
    Float32,
    Float64,
    String,
    Bytes,
    Array(Box<Schema>),
    Struct(Vec<Field>),
}

/// A field of a struct schema.
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    pub name: String,
    pub schema: Schema,
}

/// A Connect value. Strings are UTF-8 (checked where they are made) and share the
/// bytes they were decoded from.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Boolean(bool),
    Int16(i16),
    Int32(i32),
    Int64(i64),
    Float32(f32),
    Float64(f64),
    String(Text),
    Bytes(Bytes),
    Array(Vec<Value>),
    /// Field values in the order of the schema's fields.
    Struct(Vec<Value>),
}

/// UTF-8 text held as [`Bytes`], so a column's text needs no copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Text(Bytes);

impl Text {
    /// `None` when `bytes` is not UTF-8.
    pub fn new(bytes: Bytes) -> Option<Text> {
        std::str::from_utf8(&bytes).ok()?;
        Some(Text(bytes))
    }

    pub fn as_str(&self) -> &str {
        // Checked in `new`; never fails.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    pub fn bytes(&self) -> &Bytes {
        &self.0
    }
}

impl From<String> for Text {
    fn from(s: String) -> Text {
        Text(Bytes::from(s))
    }
}

impl From<&'static str> for Text {
    fn from(s: &'static str) -> Text {
        Text(Bytes::from_static(s.as_bytes()))
    }
}

/// A value with its schema: what a column, a key or a payload is in Connect.
#[derive(Debug, Clone, PartialEq)]
pub struct Datum {
    pub value: Value,
    pub schema: Schema,
}

impl Schema {
    pub fn new(kind: Kind, optional: bool) -> Schema {
        Schema {
            kind,
            optional,
            name: None,
            version: None,
            default: None,
        }
    }

    /// A schema with a logical name and version (Debezium's semantic types).
    pub fn named(kind: Kind, optional: bool, name: &'static str, version: i32) -> Schema {
        Schema {
            name: Some(Cow::Borrowed(name)),
            version: Some(version),
            ..Schema::new(kind, optional)
        }
    }

    pub fn fields(&self) -> &[Field] {
        match &self.kind {
            Kind::Struct(fields) => fields,
            _ => &[],
        }
    }

    /// The type's name in Connect's JSON schema (`JsonSchema`'s type names).
    pub fn type_name(&self) -> &'static str {
        match self.kind {
            Kind::Boolean => "boolean",
            Kind::Int16 => "int16",
            Kind::Int32 => "int32",
            Kind::Int64 => "int64",
            Kind::Float32 => "float",
            Kind::Float64 => "double",
            Kind::String => "string",
            Kind::Bytes => "bytes",
            Kind::Array(_) => "array",
            Kind::Struct(_) => "struct",
        }
    }
}

impl Value {
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// Java's `toString` of the value as Connect holds it: what `StringConverter`
    /// writes and what `Struct.toString` shows for a field.
    pub fn java_string(&self, out: &mut String) {
        match self {
            Value::Null => out.push_str("null"),
            Value::Boolean(b) => out.push_str(if *b { "true" } else { "false" }),
            Value::Int16(n) => push_display(out, n),
            Value::Int32(n) => push_display(out, n),
            Value::Int64(n) => push_display(out, n),
            Value::Float32(f) => out.push_str(&java_float(*f)),
            Value::Float64(f) => out.push_str(&java_double(*f)),
            Value::String(t) => out.push_str(t.as_str()),
            // Debezium hands bytea to Connect as a heap ByteBuffer; its toString
            // describes the buffer, not its bytes.
            Value::Bytes(b) => {
                let _ = write!(
                    out,
                    "java.nio.HeapByteBuffer[pos=0 lim={0} cap={0}]",
                    b.len()
                );
            }
            Value::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    item.java_string(out);
                }
                out.push(']');
            }
            Value::Struct(_) => out.push_str("Struct{}"),
        }
    }

    /// The text `SimpleHeaderConverter` (Connect's default header converter) writes:
    /// `Values.convertToString`. `None` for a null value (a header without a value).
    pub fn header_string(&self, schema: &Schema) -> Option<String> {
        let mut out = String::new();
        match self {
            Value::Null => return None,
            _ => append_header(&mut out, self, schema, false),
        }
        Some(out)
    }
}

/// `Struct.toString`: `Struct{name=value,…}` over the fields that are not null.
pub fn struct_java_string(schema: &Schema, values: &[Value], out: &mut String) {
    out.push_str("Struct{");
    let mut first = true;
    for (field, value) in schema.fields().iter().zip(values) {
        if value.is_null() {
            continue;
        }
        if !first {
            out.push(',');
        }
        first = false;
        out.push_str(&field.name);
        out.push('=');
        match value {
            Value::Struct(inner) => struct_java_string(&field.schema, inner, out),
            Value::Array(items) => array_java_string(&field.schema, items, out),
            other => other.java_string(out),
        }
    }
    out.push('}');
}

fn array_java_string(schema: &Schema, items: &[Value], out: &mut String) {
    let element = match &schema.kind {
        Kind::Array(element) => Some(element.as_ref()),
        _ => None,
    };
    out.push('[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        match (item, element) {
            (Value::Struct(inner), Some(s)) => struct_java_string(s, inner, out),
            (Value::Array(inner), Some(s)) => array_java_string(s, inner, out),
            (other, _) => other.java_string(out),
        }
    }
    out.push(']');
}

/// `Values.append`: strings bare at the top level and quoted inside structures,
/// bytes as base64, structures in a JSON-like form.
fn append_header(out: &mut String, value: &Value, schema: &Schema, embedded: bool) {
    match value {
        Value::Null => out.push_str("null"),
        Value::String(t) if embedded => {
            out.push('"');
            for c in t.as_str().chars() {
                match c {
                    '"' => out.push_str("\\\""),
                    '\\' => out.push_str("\\\\"),
                    c => out.push(c),
                }
            }
            out.push('"');
        }
        Value::Bytes(b) => {
            let encoded = base64::engine::general_purpose::STANDARD.encode(b);
            if embedded {
                let _ = write!(out, "\"{encoded}\"");
            } else {
                out.push_str(&encoded);
            }
        }
        Value::Array(items) => {
            let element = match &schema.kind {
                Kind::Array(e) => e.as_ref().clone(),
                _ => schema.clone(),
            };
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                append_header(out, item, &element, true);
            }
            out.push(']');
        }
        Value::Struct(values) => {
            out.push('{');
            for (i, (field, v)) in schema.fields().iter().zip(values).enumerate() {
                if i > 0 {
                    out.push(',');
                }
                append_header(
                    out,
                    &Value::String(Text::from(field.name.clone())),
                    schema,
                    true,
                );
                out.push(':');
                append_header(out, v, &field.schema, true);
            }
            out.push('}');
        }
        other => other.java_string(out),
    }
}

fn push_display(out: &mut String, v: impl std::fmt::Display) {
    let _ = write!(out, "{v}");
}

/// Java's `Double.toString`: the shortest digits that identify the value, in plain
/// notation between 10⁻³ and 10⁷ and in computerized scientific notation
/// (`1.5E10`) outside, always with a fractional digit.
pub fn java_double(v: f64) -> String {
    if v.is_nan() {
        return "NaN".to_owned();
    }
    if v.is_infinite() {
        return if v > 0.0 { "Infinity" } else { "-Infinity" }.to_owned();
    }
    java_layout(
        &format!("{v:e}"),
        v == 0.0,
        v.is_sign_negative(),
        v.abs() >= 1e-3 && v.abs() < 1e7,
    )
}

/// Java's `Float.toString`, by the same rules on the float's own shortest digits.
pub fn java_float(v: f32) -> String {
    if v.is_nan() {
        return "NaN".to_owned();
    }
    if v.is_infinite() {
        return if v > 0.0 { "Infinity" } else { "-Infinity" }.to_owned();
    }
    java_layout(
        &format!("{v:e}"),
        v == 0.0,
        v.is_sign_negative(),
        v.abs() >= 1e-3 && v.abs() < 1e7,
    )
}

/// Lays out Rust's shortest `d.ddde±x` digits the way Java prints them.
fn java_layout(scientific: &str, zero: bool, negative: bool, plain: bool) -> String {
    let sign = if negative { "-" } else { "" };
    if zero {
        return format!("{sign}0.0");
    }
    let unsigned = scientific.trim_start_matches('-');
    let (mantissa, exponent) = unsigned.split_once('e').unwrap_or((unsigned, "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    if !plain {
        let (first, rest) = digits.split_at(1);
        let rest = if rest.is_empty() { "0" } else { rest };
        return format!("{sign}{first}.{rest}E{exponent}");
    }
    // Plain: the point sits after `exponent + 1` digits.
    let point = exponent + 1;
    if point <= 0 {
        let zeros = "0".repeat(usize::try_from(-point).unwrap_or(0));
        return format!("{sign}0.{zeros}{digits}");
    }
    let point = usize::try_from(point).unwrap_or(0);
    if digits.len() <= point {
        let zeros = "0".repeat(point - digits.len());
        format!("{sign}{digits}{zeros}.0")
    } else {
        let (int, frac) = digits.split_at(point);
        format!("{sign}{int}.{frac}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_print_as_java_does() {
        for (v, java) in [
            (42.5, "42.5"),
            (100.0, "100.0"),
            (1.5e10, "1.5E10"),
            (1e7, "1.0E7"),
            (9_999_999.0, "9999999.0"),
            (0.001, "0.001"),
            (0.0001, "1.0E-4"),
            (0.1, "0.1"),
            (-2.25, "-2.25"),
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (123_456.789, "123456.789"),
            (1.0e-7, "1.0E-7"),
            (f64::MAX, "1.7976931348623157E308"),
            (f64::NAN, "NaN"),
            (f64::NEG_INFINITY, "-Infinity"),
        ] {
            assert_eq!(java_double(v), java, "{v}");
        }
        assert_eq!(java_float(0.1), "0.1");
        assert_eq!(java_float(1.5e10), "1.5E10");
    }

    #[test]
    fn header_strings_follow_the_simple_header_converter() {
        let s = Schema::new(Kind::Bytes, true);
        assert_eq!(
            Value::Bytes(Bytes::from_static(&[0, 0xff, 0x41])).header_string(&s),
            Some("AP9B".to_owned())
        );
        assert_eq!(Value::Null.header_string(&s), None);
        let b = Schema::new(Kind::Boolean, true);
        assert_eq!(
            Value::Boolean(true).header_string(&b).as_deref(),
            Some("true")
        );
        let d = Schema::new(Kind::Float64, true);
        assert_eq!(
            Value::Float64(1.5e10).header_string(&d).as_deref(),
            Some("1.5E10")
        );
    }

    #[test]
    fn structs_print_as_java_does() {
        let schema = Schema::new(
            Kind::Struct(vec![
                Field {
                    name: "payload".to_owned(),
                    schema: Schema::new(Kind::String, true),
                },
                Field {
                    name: "n".to_owned(),
                    schema: Schema::new(Kind::Int64, true),
                },
                Field {
                    name: "bin".to_owned(),
                    schema: Schema::new(Kind::Bytes, true),
                },
            ]),
            false,
        );
        let mut out = String::new();
        struct_java_string(
            &schema,
            &[
                Value::String(Text::from("{\"a\": 1}")),
                Value::Null,
                Value::Bytes(Bytes::from_static(b"abc")),
            ],
            &mut out,
        );
        assert_eq!(
            out,
            "Struct{payload={\"a\": 1},bin=java.nio.HeapByteBuffer[pos=0 lim=3 cap=3]}"
        );
    }
}
