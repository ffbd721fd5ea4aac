//! Outbox columns as Debezium's PostgreSQL connector hands them to Connect: the
//! schema each column type gets (with the column's nullability and default) and the
//! value pgoutput's text becomes.
//!
//! Supported types: `bool`, `int2`, `int4`, `int8`, `float4`, `float8`, `text`,
//! `varchar`, `bpchar`, `name`, `uuid`, `json`, `jsonb`, `bytea`, `date`,
//! `timestamp`, `timestamptz`. Another type is an error when (and only when) a
//! routed column has it.

use base64::Engine as _;
use bytes::Bytes;
use outboxd_pgoutput::Column;

use super::catalog::ColumnInfo;
use super::connect::{Datum, Kind, Schema, Text, Value};
use super::temporal::{parse_date, parse_timestamp, zoned_timestamp};
use crate::config::BinaryHandling;

mod oid {
    pub const BOOL: u32 = 16;
    pub const BYTEA: u32 = 17;
    pub const NAME: u32 = 19;
    pub const INT8: u32 = 20;
    pub const INT2: u32 = 21;
    pub const INT4: u32 = 23;
    pub const TEXT: u32 = 25;
    pub const JSON: u32 = 114;
    pub const FLOAT4: u32 = 700;
    pub const FLOAT8: u32 = 701;
    pub const BPCHAR: u32 = 1042;
    pub const VARCHAR: u32 = 1043;
    pub const DATE: u32 = 1082;
    pub const TIMESTAMP: u32 = 1114;
    pub const TIMESTAMPTZ: u32 = 1184;
    pub const UUID: u32 = 2950;
    pub const JSONB: u32 = 3802;
}

/// How one column is read: its type and the schema Debezium gives it.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnType {
    oid: u32,
    /// Fractional digits of a `timestamp(p)` / `timestamptz(p)`.
    precision: Option<u32>,
    binary: BinaryHandling,
    pub schema: Schema,
}

impl ColumnType {
    /// The column's type and schema; `info` (from the catalog) gives nullability and
    /// the default, otherwise the column counts as optional without a default.
    pub fn of(
        column: &Column,
        info: Option<&ColumnInfo>,
        binary: BinaryHandling,
    ) -> Result<ColumnType, String> {
        let optional = info.is_none_or(|i| !i.not_null);
        // Time types keep their declared precision in the type modifier.
        let precision = u32::try_from(column.type_modifier).ok();
        let kind_name = |kind, name: Option<&'static str>| match name {
            Some(n) => Schema::named(kind, optional, n, 1),
            None => Schema::new(kind, optional),
        };
        let schema = match column.type_oid {
            oid::BOOL => kind_name(Kind::Boolean, None),
            oid::INT2 => kind_name(Kind::Int16, None),
            oid::INT4 => kind_name(Kind::Int32, None),
            oid::INT8 => kind_name(Kind::Int64, None),
            oid::FLOAT4 => kind_name(Kind::Float32, None),
            oid::FLOAT8 => kind_name(Kind::Float64, None),
            oid::TEXT | oid::VARCHAR | oid::BPCHAR | oid::NAME => kind_name(Kind::String, None),
            oid::UUID => kind_name(Kind::String, Some("io.debezium.data.Uuid")),
            oid::JSON | oid::JSONB => kind_name(Kind::String, Some("io.debezium.data.Json")),
            oid::BYTEA => match binary {
                BinaryHandling::Bytes => kind_name(Kind::Bytes, None),
                _ => kind_name(Kind::String, None),
            },
            oid::DATE => kind_name(Kind::Int32, Some("io.debezium.time.Date")),
            oid::TIMESTAMP if precision.is_some_and(|p| p <= 3) => {
                kind_name(Kind::Int64, Some("io.debezium.time.Timestamp"))
            }
            oid::TIMESTAMP => kind_name(Kind::Int64, Some("io.debezium.time.MicroTimestamp")),
            oid::TIMESTAMPTZ => kind_name(Kind::String, Some("io.debezium.time.ZonedTimestamp")),
            other => {
                return Err(format!(
                    "column '{}' has type OID {other}, which outboxd cannot convert the way \
                     Debezium does (supported: bool, int2, int4, int8, float4, float8, text, \
                     varchar, char, name, uuid, json, jsonb, bytea, date, timestamp, \
                     timestamptz); route a column of one of those types instead",
                    column.name
                ))
            }
        };
        let mut column_type = ColumnType {
            oid: column.type_oid,
            precision,
            binary,
            schema,
        };
        if let Some(expression) = info.and_then(|i| i.default.as_deref()) {
            column_type.schema.default = column_type.parse_default(expression).map(Box::new);
        }
        Ok(column_type)
    }

    /// Whether the value is JSON text (a `json` or `jsonb` column).
    pub fn is_json(&self) -> bool {
        matches!(self.oid, oid::JSON | oid::JSONB)
    }

    /// Whether the column is a `timestamp`, whose value is a time since the epoch.
    pub fn timestamp_unit_micros(&self) -> Option<bool> {
        match self.schema.name.as_deref() {
            Some("io.debezium.time.MicroTimestamp") => Some(true),
            Some("io.debezium.time.Timestamp") => Some(false),
            _ => None,
        }
    }

    /// A column value (pgoutput's text format) as Connect holds it.
    pub fn value(&self, text: Option<&Bytes>) -> Result<Value, String> {
        let Some(raw) = text else {
            return Ok(Value::Null);
        };
        if self.oid == oid::BYTEA {
            return self.bytea(raw);
        }
        let text = Text::new(raw.clone()).ok_or("is not UTF-8")?;
        let s = text.as_str();
        let bad = |what: &str| format!("'{s}' is not a valid {what}");
        Ok(match self.oid {
            oid::BOOL => match s {
                "t" => Value::Boolean(true),
                "f" => Value::Boolean(false),
                _ => return Err(bad("boolean")),
            },
            oid::INT2 => Value::Int16(s.parse().map_err(|_| bad("int2"))?),
            oid::INT4 => Value::Int32(s.parse().map_err(|_| bad("int4"))?),
            oid::INT8 => Value::Int64(s.parse().map_err(|_| bad("int8"))?),
            oid::FLOAT4 => Value::Float32(parse_float(s).ok_or_else(|| bad("float4"))?),
            oid::FLOAT8 => Value::Float64(parse_float(s).ok_or_else(|| bad("float8"))?),
            oid::DATE => Value::Int32(parse_date(s)?),
            oid::TIMESTAMP => {
                let micros = parse_timestamp(s)?;
                match self.timestamp_unit_micros() {
                    Some(false) => Value::Int64(micros.div_euclid(1000)),
                    _ => Value::Int64(micros),
                }
            }
            oid::TIMESTAMPTZ => Value::String(Text::from(zoned_timestamp(
                parse_timestamp(s)?,
                self.precision,
            ))),
            _ => Value::String(text),
        })
    }

    fn bytea(&self, raw: &Bytes) -> Result<Value, String> {
        let bytes = decode_bytea_hex(raw).ok_or("is not valid bytea hex text")?;
        Ok(match self.binary {
            BinaryHandling::Bytes => Value::Bytes(bytes),
            BinaryHandling::Base64 => Value::String(Text::from(
                base64::engine::general_purpose::STANDARD.encode(&bytes),
            )),
            BinaryHandling::Base64UrlSafe => Value::String(Text::from(
                base64::engine::general_purpose::URL_SAFE.encode(&bytes),
            )),
            BinaryHandling::Hex => {
                let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
                Value::String(Text::from(hex))
            }
        })
    }

    /// Debezium's reading of a column default (`PostgresDefaultValueConverter`): a
    /// literal (`'created'::character varying`, `42`), a function or
    /// `CURRENT_TIMESTAMP` as the type's placeholder (`''`, `0`, the epoch, the nil
    /// UUID, `{}`), `NULL::…` as none. Anything it cannot parse: no default.
    fn parse_default(&self, expression: &str) -> Option<Value> {
        let expression = match self.oid {
            oid::TEXT | oid::VARCHAR | oid::BPCHAR | oid::JSON | oid::JSONB | oid::NAME => {
                expression
            }
            _ => expression.trim(),
        };
        let generated = is_function_call(expression)
            || [
                "current_timestamp",
                "current_time",
                "current_date",
                "localtime",
                "localtimestamp",
            ]
            .contains(&expression.to_ascii_lowercase().as_str());
        let literal = |placeholder: &'static str| -> Option<String> {
            if generated {
                return Some(placeholder.to_owned());
            }
            extract_literal(expression)
        };
        let text = |t: String| Some(Value::String(Text::from(t)));
        match self.oid {
            oid::TEXT | oid::VARCHAR | oid::BPCHAR => text(literal("")?),
            oid::JSON | oid::JSONB => text(literal("{}")?),
            oid::UUID => text(literal("00000000-0000-0000-0000-000000000000")?),
            oid::BOOL => Some(Value::Boolean(
                literal("false")?.eq_ignore_ascii_case("true"),
            )),
            oid::INT2 => literal("0")?.parse().ok().map(Value::Int16),
            oid::INT4 => literal("0")?.parse().ok().map(Value::Int32),
            oid::INT8 => literal("0")?.parse().ok().map(Value::Int64),
            oid::FLOAT4 => literal("0.0")?.parse().ok().map(Value::Float32),
            oid::FLOAT8 => literal("0.0")?.parse().ok().map(Value::Float64),
            oid::DATE => parse_date(&literal("1970-01-01")?).ok().map(Value::Int32),
            oid::TIMESTAMP | oid::TIMESTAMPTZ => {
                let raw = literal("1970-01-01 00:00:00")?;
                let raw = if raw.len() == 10 {
                    format!("{raw} 00:00:00")
                } else {
                    raw
                };
                self.value(Some(&Bytes::from(raw))).ok()
            }
            _ => None,
        }
    }
}

/// `^[(]?[A-Za-z0-9_.]+\((?:.+(?:, ?.+)*)?\)` (found at the start): a function call.
fn is_function_call(expression: &str) -> bool {
    let rest = expression.strip_prefix('(').unwrap_or(expression);
    let name_len = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
        .unwrap_or(rest.len());
    name_len > 0 && rest[name_len..].starts_with('(') && rest[name_len..].contains(')')
}

/// `'it''s'::text` → `it's`; a bare value (`42`, `true`) as is; `NULL::…` → none.
fn extract_literal(expression: &str) -> Option<String> {
    if !expression.contains('\'') {
        return (!expression.starts_with("NULL::")).then(|| expression.to_owned());
    }
    let start = expression.find('\'')? + 1;
    let bytes = expression.as_bytes();
    let mut i = start;
    let mut out = String::new();
    while i < bytes.len() {
        if bytes[i] == b'\'' {
            if bytes.get(i + 1) == Some(&b'\'') {
                out.push('\'');
                i += 2;
                continue;
            }
            return Some(out);
        }
        let c = expression[i..].chars().next()?;
        out.push(c);
        i += c.len_utf8();
    }
    None
}

fn parse_float<T: std::str::FromStr>(s: &str) -> Option<T> {
    match s {
        "Infinity" => "inf".parse().ok(),
        "-Infinity" => "-inf".parse().ok(),
        _ => s.parse().ok(),
    }
}

/// bytea's text output (`\x` + hex) back to bytes.
pub fn decode_bytea_hex(text: &[u8]) -> Option<Bytes> {
    let hex = text.strip_prefix(b"\\x")?;
    if hex.len() % 2 != 0 {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    hex.chunks_exact(2)
        .map(|pair| Some(nibble(pair[0])? << 4 | nibble(pair[1])?))
        .collect::<Option<Vec<u8>>>()
        .map(Bytes::from)
}

/// A value that needs no conversion: a text column's bytes as a string datum.
pub fn text_datum(text: Text, optional: bool) -> Datum {
    Datum {
        value: Value::String(text),
        schema: Schema::new(Kind::String, optional),
    }
}

#[cfg(test)]
#[path = "columns_tests.rs"]
mod tests;
