//! The connector's settings as `migrate` reads them: each taken once, so that
//! every setting left over is accounted for with a reason.

use std::cell::RefCell;
use std::collections::BTreeSet;

use super::fates::Fate;
use super::input::ConnectorConfig;

/// A setting outboxd has no key for, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub setting: String,
    pub value: String,
    pub supported: bool,
    pub reason: String,
}

impl Note {
    pub fn new(setting: &str, value: &str, fate: Fate) -> Note {
        let (supported, reason) = match fate {
            Fate::NotApplicable(r) => (true, r),
            Fate::Unsupported(r) => (false, r),
        };
        Note {
            setting: setting.to_owned(),
            value: shown(setting, value),
            supported,
            reason: reason.to_owned(),
        }
    }

    /// A note with a reason made for this configuration.
    pub fn explained(setting: &str, value: &str, supported: bool, reason: String) -> Note {
        Note {
            setting: setting.to_owned(),
            value: shown(setting, value),
            supported,
            reason,
        }
    }
}

/// A value as the report may show it: secrets never.
fn shown(setting: &str, value: &str) -> String {
    let secret = outboxd_kafka_sink::is_secret(setting)
        || ["jaas", "credentials", "user.info"]
            .iter()
            .any(|s| setting.contains(s));
    if secret && !value.is_empty() {
        "<redacted>".to_owned()
    } else {
        value.to_owned()
    }
}

/// Settings with a record of which were used.
#[derive(Debug)]
pub struct Settings<'a> {
    config: &'a ConnectorConfig,
    used: RefCell<BTreeSet<String>>,
}

impl<'a> Settings<'a> {
    pub fn new(config: &'a ConnectorConfig) -> Self {
        Settings {
            config,
            used: RefCell::new(BTreeSet::new()),
        }
    }

    /// The setting's value, marking it used.
    pub fn take(&self, key: &str) -> Option<&'a str> {
        let value = self.config.get(key)?;
        self.used.borrow_mut().insert(key.to_owned());
        Some(value.trim())
    }

    /// A boolean setting (Connect accepts any case); `None` when unset.
    pub fn take_bool(&self, key: &str) -> Result<Option<bool>, String> {
        match self.take(key) {
            None => Ok(None),
            Some(v) if v.eq_ignore_ascii_case("true") => Ok(Some(true)),
            Some(v) if v.eq_ignore_ascii_case("false") => Ok(Some(false)),
            Some(v) => Err(format!("{key} = '{v}' is not a boolean")),
        }
    }

    /// The setting's value without marking it used.
    pub fn peek(&self, key: &str) -> Option<&'a str> {
        self.config.get(key).map(str::trim)
    }

    /// Keys starting with `prefix`, in order.
    pub fn keys_with_prefix(&self, prefix: &str) -> Vec<&'a str> {
        self.config
            .settings
            .keys()
            .filter(|k| k.starts_with(prefix))
            .map(String::as_str)
            .collect()
    }

    /// The settings never taken, with their values.
    pub fn unused(&self) -> Vec<(&'a str, &'a str)> {
        let used = self.used.borrow();
        self.config
            .settings
            .iter()
            .filter(|(k, _)| !used.contains(*k))
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }

    pub fn is_used(&self, key: &str) -> bool {
        self.used.borrow().contains(key)
    }

    /// Marks a setting used (its meaning was dealt with by a note).
    pub fn mark(&self, key: &str) {
        self.used.borrow_mut().insert(key.to_owned());
    }
}

/// Comma-separated list items, trimmed, empty ones dropped (Connect's LIST type).
pub fn list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}
