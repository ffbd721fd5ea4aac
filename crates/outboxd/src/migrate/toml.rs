//! The generated configuration: TOML sections with only the keys that differ from
//! outboxd's defaults, each with a comment naming the Debezium setting it came from.

use std::fmt::Write as _;

/// A value outboxd's configuration takes.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Str(String),
    Bool(bool),
    Int(i64),
    List(Vec<String>),
    /// An inline table (`{ "cleanup.policy" = "compact" }`).
    Inline(Vec<(String, Value)>),
    /// An array of inline tables (`[{ column = "type", header = "eventType" }]`).
    Tables(Vec<Vec<(String, Value)>>),
}

impl Value {
    /// An inline table of strings.
    pub fn strings(pairs: Vec<(String, String)>) -> Value {
        Value::Inline(pairs.into_iter().map(|(k, v)| (k, Value::Str(v))).collect())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub key: String,
    pub value: Value,
    pub comment: String,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Section {
    pub name: String,
    pub entries: Vec<Entry>,
}

impl Section {
    pub fn new(name: &str) -> Section {
        Section {
            name: name.to_owned(),
            entries: Vec::new(),
        }
    }

    pub fn set(&mut self, key: &str, value: Value, comment: impl Into<String>) {
        self.entries.retain(|e| e.key != key);
        self.entries.push(Entry {
            key: key.to_owned(),
            value,
            comment: comment.into(),
        });
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.entries.iter().find(|e| e.key == key).map(|e| &e.value)
    }
}

/// Renders sections in order; empty ones are left out.
pub fn render(sections: &[Section]) -> String {
    let mut out = String::new();
    for section in sections.iter().filter(|s| !s.entries.is_empty()) {
        let _ = writeln!(out, "[{}]", section.name);
        for entry in &section.entries {
            // `columns.id` is a dotted key: `id` in the `columns` table.
            let path: Vec<String> = entry.key.split('.').map(key).collect();
            let line = format!("{} = {}", path.join("."), value(&entry.value));
            if entry.comment.is_empty() {
                let _ = writeln!(out, "{line}");
            } else {
                let _ = writeln!(out, "{line:<48} # {}", entry.comment);
            }
        }
        out.push('\n');
    }
    out
}

fn key(k: &str) -> String {
    if !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        k.to_owned()
    } else {
        string(k)
    }
}

fn value(v: &Value) -> String {
    match v {
        Value::Str(s) => string(s),
        Value::Bool(b) => b.to_string(),
        Value::Int(n) => n.to_string(),
        Value::List(items) => format!(
            "[{}]",
            items
                .iter()
                .map(|s| string(s))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Value::Inline(pairs) => inline(pairs),
        Value::Tables(tables) => format!(
            "[{}]",
            tables
                .iter()
                .map(|t| inline(t))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn inline(pairs: &[(String, Value)]) -> String {
    if pairs.is_empty() {
        return "{}".to_owned();
    }
    format!(
        "{{ {} }}",
        pairs
            .iter()
            .map(|(k, v)| format!("{} = {}", key(k), value(v)))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// A TOML basic string.
pub fn string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use figment::providers::Format as _;

    use super::*;

    #[test]
    fn renders_valid_toml() {
        let mut s = Section::new("routing.tables.\"public.outbox\"");
        s.set(
            "topic",
            Value::Str("a.${routedByValue}".into()),
            "route.topic.replacement",
        );
        s.set(
            "additional_headers",
            Value::Tables(vec![vec![
                ("column".into(), Value::Str("type".into())),
                ("header".into(), Value::Str("eventType".into())),
            ]]),
            "",
        );
        s.set("topic_regex", Value::Str("(?<x>[a-z]+)\\.\"q\"".into()), "");
        let text = render(&[Section::new("empty"), s]);
        assert!(!text.contains("[empty]"));
        let tables = figment::Figment::from(figment::providers::Toml::string(&text))
            .find_value("routing.tables")
            .unwrap();
        let dict = tables.into_dict().unwrap();
        let regex = dict["public.outbox"].find_ref("topic_regex");
        assert_eq!(
            regex.and_then(|v| v.as_str()),
            Some("(?<x>[a-z]+)\\.\"q\""),
            "{text}"
        );
    }
}
