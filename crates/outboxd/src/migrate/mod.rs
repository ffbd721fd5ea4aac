//! `outboxd migrate --from-debezium FILE`: a Debezium PostgreSQL connector with the
//! Outbox Event Router (Connect's REST JSON or a `.properties` file) to the
//! equivalent outboxd configuration, every setting it does not carry over with the
//! reason, and the cut-over steps with the connector's slot and publication.
//!
//! - [`input`] reads the connector (and optionally the worker) configuration;
//! - [`connector`] maps the connector's settings, [`event_router`] the routers';
//! - [`fates`] knows why the other settings do not apply;
//! - [`toml`] writes the file, [`steps`] the cut-over.

pub mod connector;
pub mod event_router;
pub mod fates;
pub mod input;
pub mod settings;
pub mod steps;
pub mod toml;

use std::path::{Path, PathBuf};

use connector::Source;
use settings::{Note, Settings};
use toml::Section;

/// The result: the configuration file's text, the notes and the cut-over steps.
#[derive(Debug)]
pub struct Migration {
    pub connector: String,
    pub sections: Vec<Section>,
    pub notes: Vec<Note>,
    pub source: Source,
}

impl Migration {
    /// Whether every setting was carried over or does not apply.
    pub fn complete(&self) -> bool {
        self.notes.iter().all(|n| n.supported)
    }

    /// The configuration file.
    pub fn toml(&self, from: &str) -> String {
        format!(
            "# outboxd configuration for Debezium connector '{}', by `outboxd migrate` from \
             {from}.\n# Each key names the Debezium setting it stands for; unset keys keep \
             outboxd's defaults (docs/configuration.md).\n\n{}",
            self.connector,
            toml::render(&self.sections)
        )
    }

    /// The settings not carried over, one per line.
    pub fn report(&self) -> Vec<String> {
        self.notes
            .iter()
            .map(|n| {
                let kind = if n.supported { "n/a" } else { "NOT SUPPORTED" };
                let value = if n.value.is_empty() {
                    String::new()
                } else {
                    format!(" = {}", n.value)
                };
                format!("{kind}: {}{value}: {}", n.setting, n.reason)
            })
            .collect()
    }
}

/// Maps a connector's configuration; `worker` supplies what the connector inherits
/// from its Connect worker (converters, bootstrap servers).
pub fn migrate(
    connector: &input::ConnectorConfig,
    worker: Option<&input::ConnectorConfig>,
) -> Result<Migration, String> {
    let s = Settings::new(connector);
    let w = worker.map(Settings::new);
    let mut notes = Vec::new();
    let (mut postgres, source) = connector::postgres(&s, &mut notes)?;
    let mut routing = Section::new("routing");
    connector::column_settings(&s, &mut routing, &mut notes);
    let logical_name = match routing.get("logical_name") {
        Some(toml::Value::Str(name)) => name.clone(),
        _ => String::new(),
    };
    connector::formats(&s, w.as_ref(), &mut routing, &mut notes);
    let decodes = event_router::decodes_messages(&s);
    let routers = event_router::routing(&s, &source, &logical_name, &mut notes)?;
    for (key, value, comment) in routers.base {
        routing.set(&key, value, comment);
    }
    for (key, value, comment) in event_router::message_keys(&s, decodes) {
        routing.set(&key, value, comment);
    }
    let source = Source {
        tables: routers.routed_tables.clone(),
        ..source
    };
    postgres.set(
        "tables",
        toml::Value::List(source.tables.clone()),
        "table.include.list: the tables an Event Router applies to",
    );
    let (kafka, producer, topic_creation) = connector::kafka(&s, w.as_ref(), &mut notes);
    s.mark("transforms");
    for (key, value) in s.unused() {
        notes.push(Note::new(key, value, fates::connector(key)));
    }
    let mut sections = vec![postgres, kafka, producer, topic_creation, routing];
    sections.extend(routers.tables.into_iter().map(|(_, section)| section));
    Ok(Migration {
        connector: connector
            .name
            .clone()
            .unwrap_or_else(|| "<connector>".to_owned()),
        sections,
        notes,
        source,
    })
}

/// The command: prints the configuration (or writes it to `output`), then the
/// settings not carried over and the cut-over steps. Fails when a setting that
/// changes the records is not supported (the file is still written).
pub fn run(from: &Path, worker: Option<&Path>, output: Option<&PathBuf>) -> anyhow::Result<()> {
    let connector = input::read(from)?;
    let worker = worker.map(input::read).transpose()?;
    let migration = migrate(&connector, worker.as_ref())
        .map_err(|e| anyhow::anyhow!("{}: {e}", from.display()))?;
    let from_name = from.display().to_string();
    let text = migration.toml(&from_name);
    let config_name = output.map_or("outboxd.toml".to_owned(), |p| p.display().to_string());
    let mut report = vec!["Settings not carried over:".to_owned()];
    let notes = migration.report();
    if notes.is_empty() {
        report.push("  (none)".to_owned());
    }
    report.extend(notes.into_iter().map(|n| format!("  {n}")));
    report.push(String::new());
    report.push("Cut-over (docs/operations.md, \"Migrate from Debezium\"):".to_owned());
    report.extend(
        steps::cut_over(&migration.connector, &migration.source, &config_name)
            .into_iter()
            .map(|s| format!("  {s}")),
    );
    match output {
        Some(path) => {
            std::fs::write(path, &text)
                .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
            println!("wrote {}\n", path.display());
            for line in &report {
                println!("{line}");
            }
        }
        None => {
            print!("{text}");
            for line in &report {
                println!("# {line}");
            }
        }
    }
    if !migration.complete() {
        anyhow::bail!(
            "some settings of connector '{}' change the records in ways outboxd does not \
             support (NOT SUPPORTED above); the configuration was written without them",
            migration.connector
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests;
