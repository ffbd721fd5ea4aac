//! The connector's own settings: where PostgreSQL is, the slot, publication and
//! tables, the converters (key and value formats), the settings that change how
//! columns look, and what goes to Kafka's side (producer properties, topic creation).

use super::fates::Fate;
use super::settings::{list, Note, Settings};
use super::toml::{Section, Value};

/// What the cut-over needs to know, besides the generated file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub slot: String,
    pub publication: String,
    /// The connector decodes with pgoutput, so outboxd can take its slot over.
    pub pgoutput: bool,
    pub tables: Vec<String>,
}

const POSTGRES_CONNECTOR: &str = "io.debezium.connector.postgresql.PostgresConnector";

/// `[postgres]`, and the facts of the cut-over.
pub fn postgres(s: &Settings<'_>, notes: &mut Vec<Note>) -> Result<(Section, Source), String> {
    match s.take("connector.class") {
        Some(POSTGRES_CONNECTOR) => {}
        Some(other) => {
            return Err(format!(
                "connector.class is {other}; outboxd replaces Debezium's PostgreSQL connector \
                 ({POSTGRES_CONNECTOR})"
            ))
        }
        None => {
            return Err(format!(
                "connector.class is missing (expected {POSTGRES_CONNECTOR})"
            ))
        }
    }
    let mut section = Section::new("postgres");
    let host = s.take("database.hostname").unwrap_or("localhost");
    let port = s.take("database.port").unwrap_or("5432");
    let user = s.take("database.user").unwrap_or("postgres");
    let db = s.take("database.dbname").unwrap_or("postgres");
    let mut params = Vec::new();
    if let Some(mode) = s.take("database.sslmode") {
        params.push(format!("sslmode={mode}"));
    }
    if let Some(root) = s.take("database.sslrootcert") {
        params.push(format!("sslrootcert={root}"));
    }
    let query = if params.is_empty() {
        String::new()
    } else {
        format!("?{}", params.join("&"))
    };
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    section.set(
        "url",
        Value::Str(format!("postgres://{user}@{host}:{port}/{db}{query}")),
        "database.hostname, .port, .user, .dbname, .sslmode",
    );
    let plugin = s.take("plugin.name").unwrap_or("decoderbufs");
    let pgoutput = plugin == "pgoutput";
    let connector_slot = s.take("slot.name").unwrap_or("debezium").to_owned();
    let connector_publication = s
        .take("publication.name")
        .unwrap_or("dbz_publication")
        .to_owned();
    let (slot, publication) = if pgoutput {
        section.set(
            "slot",
            Value::Str(connector_slot.clone()),
            "slot.name: the connector's slot",
        );
        section.set(
            "publication",
            Value::Str(connector_publication.clone()),
            "publication.name",
        );
        section.set(
            "create_slot",
            Value::Bool(false),
            "take Debezium's slot over, never a new one",
        );
        section.set(
            "create_publication",
            Value::Bool(false),
            "the connector's publication exists",
        );
        (connector_slot, connector_publication)
    } else {
        notes.push(Note::explained(
            "plugin.name",
            plugin,
            true,
            format!(
                "the connector's slot '{connector_slot}' decodes with {plugin}, which outboxd cannot \
                 read: outboxd gets a pgoutput slot of its own ('outboxd') and a publication \
                 ('outboxd'), created before the connector stops (see the cut-over steps)"
            ),
        ));
        s.mark("slot.name");
        s.mark("publication.name");
        ("outboxd".to_owned(), "outboxd".to_owned())
    };
    let tables = tables(s, notes);
    section.set("tables", Value::List(tables.clone()), "table.include.list");
    if let Some(ms) = s.take("status.update.interval.ms") {
        if let Ok(n) = ms.parse::<i64>() {
            section.set(
                "status_interval_ms",
                Value::Int(n),
                "status.update.interval.ms",
            );
        }
    }
    Ok((
        section,
        Source {
            slot,
            publication,
            pgoutput,
            tables,
        },
    ))
}

/// The outbox tables: `table.include.list` entries are regular expressions over
/// `schema.table`; outboxd needs the names, so only plain names (dots escaped or
/// not) are taken.
fn tables(s: &Settings<'_>, notes: &mut Vec<Note>) -> Vec<String> {
    let key = ["table.include.list", "table.whitelist"]
        .into_iter()
        .find(|k| s.peek(k).is_some());
    let Some(key) = key else {
        notes.push(Note::explained(
            "table.include.list",
            "",
            true,
            "not set: Debezium captures every table, and its router turns each row into an \
             event; outboxd relays the tables in postgres.tables, assumed public.outbox here: \
             list your outbox tables"
                .to_owned(),
        ));
        return vec!["public.outbox".to_owned()];
    };
    let value = s.take(key).unwrap_or_default();
    let mut out = Vec::new();
    for entry in list(value) {
        let plain = entry.replace("\\.", ".");
        if plain.contains([
            '*', '+', '?', '[', ']', '(', ')', '{', '}', '|', '^', '$', '\\',
        ]) {
            notes.push(Note::explained(
                key,
                &entry,
                false,
                "a regular expression: outboxd needs the outbox tables by name; list them in \
                 postgres.tables"
                    .to_owned(),
            ));
            continue;
        }
        out.push(if plain.contains('.') {
            plain
        } else {
            format!("public.{plain}")
        });
    }
    out
}

/// The connector settings that change how columns look in records, for `[routing]`.
pub fn column_settings(s: &Settings<'_>, routing: &mut Section, notes: &mut Vec<Note>) {
    let prefix = s
        .take("topic.prefix")
        .map(|p| (p, "topic.prefix"))
        .or_else(|| {
            s.take("database.server.name")
                .map(|p| (p, "database.server.name"))
        });
    if let Some((prefix, key)) = prefix {
        routing.set(
            "logical_name",
            Value::Str(prefix.to_owned()),
            format!("{key}: names envelope schemas and context headers"),
        );
    }
    let extended = s
        .take("extended.headers.enabled")
        .map(|v| v.eq_ignore_ascii_case("true"));
    if extended.unwrap_or(true) {
        routing.set(
            "context_headers",
            Value::Bool(true),
            "extended.headers.enabled (Debezium's default: true)",
        );
    }
    if let Some(mode) = s.take("binary.handling.mode") {
        match mode {
            "bytes" | "base64" | "base64-url-safe" | "hex" => {
                if mode != "bytes" {
                    routing.set(
                        "binary_handling",
                        Value::Str(mode.to_owned()),
                        "binary.handling.mode",
                    );
                }
            }
            other => notes.push(Note::explained(
                "binary.handling.mode",
                other,
                false,
                "not a mode outboxd knows".to_owned(),
            )),
        }
    }
    if let Some(mode) = s.take("time.precision.mode") {
        if !matches!(mode, "adaptive" | "adaptive_time_microseconds") {
            notes.push(Note::explained(
                "time.precision.mode",
                mode,
                false,
                "outboxd represents date and time columns as Debezium's default 'adaptive' \
                 mode does; placed timestamp columns would differ"
                    .to_owned(),
            ));
        }
    }
    for key in ["field.name.adjustment.mode", "schema.name.adjustment.mode"] {
        if let Some(mode) = s.take(key) {
            if mode != "none" {
                notes.push(Note::explained(
                    key,
                    mode,
                    false,
                    "outboxd keeps field and schema names as they are ('none')".to_owned(),
                ));
            }
        }
    }
}

/// `[kafka]`: brokers and security from the worker configuration when given,
/// `producer.override.*`, and `topic.creation.*`.
pub fn kafka(
    s: &Settings<'_>,
    worker: Option<&Settings<'_>>,
    notes: &mut Vec<Note>,
) -> (Section, Section, Section) {
    let mut kafka = Section::new("kafka");
    let mut producer = Section::new("kafka.producer");
    match worker.and_then(|w| w.take("bootstrap.servers")) {
        Some(servers) => kafka.set(
            "brokers",
            Value::Str(servers.to_owned()),
            "the worker's bootstrap.servers",
        ),
        None => kafka.set(
            "brokers",
            Value::Str(String::new()),
            "set it (or OUTBOXD_KAFKA__BROKERS): the worker's bootstrap.servers",
        ),
    }
    if let Some(w) = worker {
        for key in ["security.protocol", "sasl.mechanism"] {
            if let Some(v) = w.take(key) {
                let name = if key == "sasl.mechanism" {
                    "sasl.mechanisms"
                } else {
                    key
                };
                producer.set(
                    name,
                    Value::Str(v.to_owned()),
                    format!("the worker's {key}"),
                );
            }
        }
    }
    for key in s.keys_with_prefix("producer.override.") {
        let property = &key["producer.override.".len()..];
        let value = s.take(key).unwrap_or_default();
        match property {
            "acks" | "compression.type" | "linger.ms" | "batch.size" | "security.protocol"
            | "client.id" | "enable.idempotence" => {
                producer.set(property, Value::Str(value.to_owned()), key);
            }
            "max.request.size" => {
                producer.set("message.max.bytes", Value::Str(value.to_owned()), key)
            }
            "sasl.mechanism" => producer.set("sasl.mechanisms", Value::Str(value.to_owned()), key),
            _ => notes.push(Note::explained(
                key,
                value,
                true,
                "a Java producer property without a direct librdkafka counterpart here: set \
                 the librdkafka equivalent under [kafka.producer] (secrets from \
                 OUTBOXD_KAFKA__PRODUCER__…)"
                    .to_owned(),
            )),
        }
    }
    (kafka, producer, topic_creation(s))
}

/// Connect's `topic.creation.*` as `[kafka.topic_creation]`.
fn topic_creation(s: &Settings<'_>) -> Section {
    let mut section = Section::new("kafka.topic_creation");
    let defaults = s.keys_with_prefix("topic.creation.default.");
    if defaults.is_empty() {
        return section;
    }
    section.set(
        "enable",
        Value::Bool(true),
        "topic.creation.default.* is set",
    );
    let mut configs = Vec::new();
    for key in defaults {
        let name = &key["topic.creation.default.".len()..];
        let value = s.take(key).unwrap_or_default();
        match (name, value.parse::<i64>()) {
            ("partitions", Ok(n)) => section.set("partitions", Value::Int(n), key),
            ("replication.factor", Ok(n)) => section.set("replication_factor", Value::Int(n), key),
            _ => configs.push((name.to_owned(), value.to_owned())),
        }
    }
    if !configs.is_empty() {
        section.set(
            "configs",
            Value::strings(configs),
            "topic.creation.default.<topic config>",
        );
    }
    let groups = s
        .take("topic.creation.groups")
        .map(list)
        .unwrap_or_default();
    let mut rendered = Vec::new();
    for group in groups {
        let mut fields = vec![("name".to_owned(), Value::Str(group.clone()))];
        let mut configs = Vec::new();
        let prefix = format!("topic.creation.{group}.");
        for key in s.keys_with_prefix(&prefix) {
            let name = &key[prefix.len()..];
            let value = s.take(key).unwrap_or_default();
            match (name, value.parse::<i64>()) {
                ("include" | "exclude", _) => {
                    fields.push((name.to_owned(), Value::List(list(value))))
                }
                ("partitions", Ok(n)) => fields.push((name.to_owned(), Value::Int(n))),
                ("replication.factor", Ok(n)) => {
                    fields.push(("replication_factor".to_owned(), Value::Int(n)));
                }
                _ => configs.push((name.to_owned(), value.to_owned())),
            }
        }
        if !configs.is_empty() {
            fields.push(("configs".to_owned(), Value::strings(configs)));
        }
        rendered.push(fields);
    }
    if !rendered.is_empty() {
        section.set("groups", Value::Tables(rendered), "topic.creation.groups");
    }
    section
}

/// The key and value formats from the converters (the connector's, else the
/// worker's, else Kafka's sample worker configuration: JsonConverter with schemas).
pub fn formats(
    s: &Settings<'_>,
    worker: Option<&Settings<'_>>,
    routing: &mut Section,
    notes: &mut Vec<Note>,
) {
    for (role, key) in [("key", "key_format"), ("value", "value_format")] {
        let setting = format!("{role}.converter");
        let (source, class): (&Settings<'_>, Option<&str>) = match s.take(&setting) {
            Some(c) => (s, Some(c)),
            None => match worker.and_then(|w| w.take(&setting).map(|c| (w, c))) {
                Some((w, c)) => (w, Some(c)),
                None => (s, None),
            },
        };
        let schemas = source
            .take(&format!("{setting}.schemas.enable"))
            .is_none_or(|v| !v.eq_ignore_ascii_case("false"));
        if let Some(v) = source.take(&format!("{setting}.replace.null.with.default")) {
            if v.eq_ignore_ascii_case("false") {
                notes.push(Note::explained(&format!("{setting}.replace.null.with.default"), v, false,
                    "outboxd writes a column's default for a NULL, as JsonConverter does by default".to_owned()));
            }
        }
        let format = match class {
            None => {
                notes.push(Note::explained(
                    &setting,
                    "",
                    true,
                    "not set on the connector: the worker's converter applies; assumed \
                     JsonConverter with schemas.enable=true (Kafka's sample worker \
                     configuration); pass --worker-config to read the worker's"
                        .to_owned(),
                ));
                "json_schema"
            }
            Some("org.apache.kafka.connect.storage.StringConverter") => "string",
            Some(
                "org.apache.kafka.connect.converters.ByteArrayConverter"
                | "io.debezium.converters.ByteArrayConverter",
            ) => "bytes",
            Some("io.debezium.converters.BinaryDataConverter") => {
                if let Some(delegate) = source.take(&format!("{setting}.delegate.converter.type")) {
                    notes.push(Note::explained(
                        &format!("{setting}.delegate.converter.type"),
                        delegate,
                        true,
                        "serves Debezium's non-outbox records (heartbeats, schema changes), which \
                         outboxd does not produce; bytea payloads are written as bytes"
                            .to_owned(),
                    ));
                    for k in source.keys_with_prefix(&format!("{setting}.delegate.")) {
                        source.mark(k);
                    }
                }
                "bytes"
            }
            Some("org.apache.kafka.connect.json.JsonConverter") if schemas => "json_schema",
            Some("org.apache.kafka.connect.json.JsonConverter") => "json",
            Some(other) => {
                notes.push(Note::explained(
                    &setting,
                    other,
                    false,
                    "outboxd writes StringConverter, ByteArrayConverter and JsonConverter \
                     bytes; it has no schema-registry (Avro, Protobuf, JSON Schema) or \
                     CloudEvents serializer (docs/configuration.md, \"Converters\")"
                        .to_owned(),
                ));
                for k in source.keys_with_prefix(&format!("{setting}.")) {
                    source.mark(k);
                }
                continue;
            }
        };
        for k in source.keys_with_prefix(&format!("{setting}.")) {
            if !source.is_used(k) {
                let value = source.take(k).unwrap_or_default();
                notes.push(Note::new(
                    k,
                    value,
                    Fate::NotApplicable("a converter setting that does not change these records"),
                ));
            }
        }
        if format != "string" {
            routing.set(
                key,
                Value::Str(format.to_owned()),
                format!("{setting} = {}", class.unwrap_or("(the worker's)")),
            );
        }
    }
    if let Some(class) = s.take("header.converter") {
        if class != "org.apache.kafka.connect.storage.SimpleHeaderConverter" {
            notes.push(Note::explained(
                "header.converter",
                class,
                false,
                "outboxd writes header values as Connect's default SimpleHeaderConverter does"
                    .to_owned(),
            ));
        }
    }
}
