//! `table.expand.json.payload`: a JSON object payload becomes a Connect struct with
//! a schema inferred from the document, as Debezium's `JsonSchemaData` does. When it
//! cannot (not an object, a mixed array, a number beyond `long`), the payload stays
//! the string it was, as in Debezium, and the caller logs why.
//!
//! Inference, from the document: strings, booleans, `int32` / `int64` / `float64`
//! by the number's form, arrays of the first non-null element's type, objects as
//! optional structs named by their path (`payload.lines`); fields that are null or
//! empty arrays are left out unless `json_payload_nulls` / `json_payload_empty_arrays`
//! keep them. Array elements that are objects of different shapes get one merged
//! schema; Debezium merges them in hash-set order, which is not stable from run to
//! run, outboxd in document order.

use super::connect::{Field, Kind, Schema, Text, Value};
use super::json_tree::{self, Node};
use crate::config::{JsonPayloadEmptyArrays, JsonPayloadNulls};

/// What became of a payload.
#[derive(Debug, Clone, PartialEq)]
pub enum Expansion {
    Expanded(Schema, Value),
    /// Not expanded (not JSON, or no schema could be inferred): the payload stays
    /// the text it was, with its column's schema.
    Unchanged(String),
    /// A schema was inferred, but the document does not fit it (a top-level array, a
    /// number beyond `long`, array elements of different types): Debezium keeps the
    /// new schema with the old text, a record Connect cannot serialize except as a
    /// string. `None`: the inferred schema was empty (e.g. `[]`).
    Broken(Option<Schema>, String),
}

/// The expansion rules of one route.
#[derive(Debug, Clone, Copy)]
pub struct Expander {
    pub nulls: JsonPayloadNulls,
    pub empty_arrays: JsonPayloadEmptyArrays,
}

impl Expander {
    /// Expands a payload `text` whose column is `column`. Only text starting with `{`
    /// or `[` is tried, as in Debezium.
    pub fn expand(&self, column: &str, text: &str) -> Expansion {
        if !text.starts_with(['{', '[']) {
            let first = text.chars().next().map_or(String::new(), String::from);
            return Expansion::Unchanged(format!(
                "Unable to parse payload starting with '{first}'"
            ));
        }
        let node = match json_tree::parse(text) {
            Ok(node) => node,
            Err(e) => return Expansion::Unchanged(e),
        };
        let schema = match self.schema(Some(column), &node) {
            Ok(schema) => schema,
            Err(e) => return Expansion::Unchanged(e),
        };
        let Some(schema) = schema else {
            return Expansion::Broken(
                None,
                "no schema could be inferred from the payload".to_owned(),
            );
        };
        if !matches!(schema.kind, Kind::Struct(_)) {
            let why = format!(
                "Not a struct schema: Schema{{{}}}",
                schema.type_name().to_ascii_uppercase()
            );
            return Expansion::Broken(Some(schema), why);
        }
        match struct_value(&node, &schema) {
            Ok(value) => Expansion::Expanded(schema, value),
            Err(e) => Expansion::Broken(Some(schema), e),
        }
    }

    /// `toConnectSchema`: `None` for what is left out (nulls, empty arrays).
    fn schema(&self, key: Option<&str>, node: &Node) -> Result<Option<Schema>, String> {
        let optional = |kind| Some(Schema::new(kind, true));
        Ok(match node {
            Node::String(_) => optional(Kind::String),
            Node::Bool(_) => optional(Kind::Boolean),
            Node::Int(_) => optional(Kind::Int32),
            Node::Long(_) => optional(Kind::Int64),
            Node::Double(_) | Node::BigInteger => optional(Kind::Float64),
            Node::Null => match self.nulls {
                JsonPayloadNulls::OptionalBytes => optional(Kind::Bytes),
                JsonPayloadNulls::Ignore => None,
            },
            Node::Array(items) if items.is_empty() => match self.empty_arrays {
                JsonPayloadEmptyArrays::OptionalString => {
                    optional(Kind::Array(Box::new(Schema::new(Kind::String, true))))
                }
                JsonPayloadEmptyArrays::Ignore => None,
            },
            Node::Array(items) => optional(Kind::Array(Box::new(self.element_schema(key, items)?))),
            Node::Object(members) => {
                let mut fields: Vec<Field> = Vec::new();
                for (name, value) in members {
                    let path = match key {
                        Some(k) if !k.trim().is_empty() => format!("{k}.{name}"),
                        _ => name.clone(),
                    };
                    if let Some(schema) = self.schema(Some(&path), value)? {
                        if fields.iter().all(|f| f.name != *name) {
                            fields.push(Field {
                                name: name.clone(),
                                schema,
                            });
                        }
                    }
                }
                Some(Schema {
                    name: key.map(|k| k.to_owned().into()),
                    ..Schema::new(Kind::Struct(fields), true)
                })
            }
        })
    }

    /// The schema of an array's elements: from its first non-null element, all of
    /// one JSON type (and one number type); objects' schemas merged.
    fn element_schema(&self, key: Option<&str>, items: &[Node]) -> Result<Schema, String> {
        let mut sample: Option<&Node> = None;
        for item in items.iter().filter(|i| !matches!(i, Node::Null)) {
            let Some(first) = sample else {
                sample = Some(item);
                continue;
            };
            if json_type(first) != json_type(item) {
                return Err("Field is not a homogenous array".to_owned());
            }
            if json_type(first) == "number"
                && self.schema(None, first)?.map(|s| s.kind)
                    != self.schema(None, item)?.map(|s| s.kind)
            {
                return Err("Field is not a homogenous array, different number types".to_owned());
            }
        }
        match sample {
            Some(Node::Object(_)) => {
                let mut merged: Option<Schema> = None;
                for item in items.iter().filter(|i| matches!(i, Node::Object(_))) {
                    let Some(schema) = self.schema(key, item)? else {
                        continue;
                    };
                    merged = Some(match merged {
                        None => schema,
                        Some(left) => merge(left, schema),
                    });
                }
                merged.ok_or_else(|| "Array has unrecognized member schema".to_owned())
            }
            Some(other) => self
                .schema(None, other)?
                .ok_or_else(|| "Array has unrecognized member schema".to_owned()),
            None => self
                .schema(None, &Node::Null)?
                .ok_or_else(|| "Array has unrecognized member schema".to_owned()),
        }
    }
}

/// `mergeSchema`: the left fields, then the right's new ones; a left bytes field
/// (from a null) gives way to a typed one.
fn merge(left: Schema, right: Schema) -> Schema {
    let Kind::Struct(mut fields) = left.kind else {
        return left;
    };
    for field in right.fields() {
        match fields.iter_mut().find(|f| f.name == field.name) {
            None => fields.push(field.clone()),
            Some(old)
                if old.schema != field.schema
                    && old.schema.kind == Kind::Bytes
                    && field.schema.kind != Kind::Bytes =>
            {
                *old = field.clone();
            }
            Some(_) => {}
        }
    }
    Schema {
        kind: Kind::Struct(fields),
        ..left
    }
}

fn json_type(node: &Node) -> &'static str {
    match node {
        Node::Null => "null",
        Node::Bool(_) => "boolean",
        Node::Int(_) | Node::Long(_) | Node::BigInteger | Node::Double(_) => "number",
        Node::String(_) => "string",
        Node::Array(_) => "array",
        Node::Object(_) => "object",
    }
}

/// `jsonNodeToStructInternal`: the document's values for the schema's fields,
/// checked against their types as `Struct.put` does.
fn struct_value(node: &Node, schema: &Schema) -> Result<Value, String> {
    let Node::Object(members) = node else {
        return Err("Not a struct".to_owned());
    };
    let mut values = Vec::with_capacity(schema.fields().len());
    for field in schema.fields() {
        let value = match members.iter().find(|(n, _)| *n == field.name) {
            Some((_, v)) => field_value(v, &field.schema)?,
            None => Value::Null,
        };
        values.push(value);
    }
    Ok(Value::Struct(values))
}

fn field_value(node: &Node, schema: &Schema) -> Result<Value, String> {
    let mismatch = || format!("Invalid Java object for schema type {}", schema.type_name());
    let value = match (node, &schema.kind) {
        (Node::Null, _) => Value::Null,
        (Node::String(s), Kind::String) => Value::String(Text::from(s.clone())),
        (Node::Bool(b), Kind::Boolean) => Value::Boolean(*b),
        (Node::Int(n), Kind::Int32) => Value::Int32(*n),
        (Node::Long(n), Kind::Int64) => Value::Int64(*n),
        (Node::Double(f), Kind::Float64) => Value::Float64(*f),
        (Node::Array(items), Kind::Array(element)) => Value::Array(
            items
                .iter()
                .map(|i| field_value(i, element))
                .collect::<Result<_, _>>()?,
        ),
        (Node::Object(_), Kind::Struct(_)) => struct_value(node, schema)?,
        _ => return Err(mismatch()),
    };
    Ok(value)
}

#[cfg(test)]
#[path = "expand_tests.rs"]
mod tests;
