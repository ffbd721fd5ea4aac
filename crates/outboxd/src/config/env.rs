//! Environment variables as a configuration layer: `OUTBOXD_<SECTION>__<KEY>`.

use std::collections::BTreeMap;

use figment::providers::Serialized;

/// `OUTBOXD_A__B__C=v` → `a.b.c = v`; under `kafka.producer`, `_` in the property
/// name becomes `.`.
pub(super) fn env_provider(
    vars: &[(String, String)],
) -> Serialized<BTreeMap<String, toml_value::Value>> {
    let mut root = BTreeMap::new();
    for (key, value) in vars {
        let Some(rest) = key.strip_prefix("OUTBOXD_") else {
            continue;
        };
        let parts: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
        let path: Vec<String> = if parts.len() == 3 && parts[0] == "kafka" && parts[1] == "producer"
        {
            vec![
                parts[0].clone(),
                parts[1].clone(),
                parts[2].replace('_', "."),
            ]
        } else {
            parts
        };
        toml_value::insert(&mut root, &path, value);
    }
    Serialized::defaults(root)
}

/// A tiny value tree for environment overrides: strings parsed as TOML scalars
/// where they look like one (so `OUTBOXD_POSTGRES__CREATE_SLOT=false` is a bool).
mod toml_value {
    use std::collections::BTreeMap;

    use serde::Serialize;

    #[derive(Debug, Clone, Serialize)]
    #[serde(untagged)]
    pub enum Value {
        Bool(bool),
        Int(i64),
        String(String),
        List(Vec<String>),
        Table(BTreeMap<String, Value>),
    }

    fn scalar(raw: &str, key: &str) -> Value {
        if key == "tables" {
            return Value::List(
                raw.split(',')
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty())
                    .collect(),
            );
        }
        match raw {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => match raw.parse::<i64>() {
                // Producer properties stay strings: librdkafka wants them as text.
                Ok(n) if !key.contains('.') => Value::Int(n),
                _ => Value::String(raw.to_owned()),
            },
        }
    }

    pub fn insert(root: &mut BTreeMap<String, Value>, path: &[String], raw: &str) {
        let Some((last, parents)) = path.split_last() else {
            return;
        };
        let mut table = root;
        for p in parents {
            let entry = table
                .entry(p.clone())
                .or_insert_with(|| Value::Table(BTreeMap::new()));
            if !matches!(entry, Value::Table(_)) {
                *entry = Value::Table(BTreeMap::new());
            }
            let Value::Table(t) = entry else { return };
            table = t;
        }
        table.insert(last.clone(), scalar(raw, last));
    }
}
