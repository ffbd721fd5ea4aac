//! A Debezium connector's configuration as Kafka Connect takes it: the REST API's
//! JSON (`{"name": …, "config": {…}}`, or the bare `config` object of
//! `PUT /connectors/<name>/config`) or a standalone worker's `.properties` file.

use std::collections::BTreeMap;
use std::path::Path;

/// A connector's settings, values as strings (as Connect reads them).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConnectorConfig {
    pub name: Option<String>,
    pub settings: BTreeMap<String, String>,
}

impl ConnectorConfig {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.settings.get(key).map(String::as_str)
    }
}

/// Reads `path`: JSON when it starts with `{`, `.properties` otherwise.
pub fn read(path: &Path) -> anyhow::Result<ConnectorConfig> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

pub fn parse(text: &str) -> Result<ConnectorConfig, String> {
    if text.trim_start().starts_with('{') {
        return from_json(text);
    }
    let settings: BTreeMap<String, String> =
        crate::java_properties::parse(text).into_iter().collect();
    if settings.is_empty() {
        return Err(
            "no settings found (expected Connect's REST JSON or a .properties file)".into(),
        );
    }
    Ok(ConnectorConfig {
        name: settings.get("name").cloned(),
        settings,
    })
}

fn from_json(text: &str) -> Result<ConnectorConfig, String> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
    let object = value.as_object().ok_or("expected a JSON object")?;
    let (name, config) = match object.get("config") {
        Some(serde_json::Value::Object(config)) => (
            object
                .get("name")
                .and_then(|n| n.as_str())
                .map(str::to_owned),
            config,
        ),
        _ => (None, object),
    };
    let mut settings = BTreeMap::new();
    for (key, value) in config {
        let text = match value {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Bool(_) | serde_json::Value::Number(_) => value.to_string(),
            serde_json::Value::Null => continue,
            other => {
                return Err(format!(
                    "setting '{key}' is {other}, not a string: Connect settings are strings"
                ))
            }
        };
        settings.insert(key.clone(), text);
    }
    let name = name.or_else(|| settings.get("name").cloned());
    Ok(ConnectorConfig { name, settings })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rest_json_bare_json_and_properties() {
        let rest =
            parse(r#"{"name": "outbox", "config": {"slot.name": "s", "tasks.max": 1}}"#).unwrap();
        assert_eq!(rest.name.as_deref(), Some("outbox"));
        assert_eq!(rest.get("tasks.max"), Some("1"));
        let bare = parse(r#"{"slot.name": "s", "name": "n"}"#).unwrap();
        assert_eq!(bare.name.as_deref(), Some("n"));
        let props =
            parse("name=outbox\ntransforms.outbox.route.topic.replacement=a.${routedByValue}\n")
                .unwrap();
        assert_eq!(
            props.get("transforms.outbox.route.topic.replacement"),
            Some("a.${routedByValue}")
        );
        assert!(parse("{\"config\": [1]}").is_err());
        assert!(parse("").is_err());
    }
}
