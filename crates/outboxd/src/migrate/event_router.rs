//! The connector's transforms: each Outbox Event Router's settings as `[routing]`
//! keys, for the tables its predicate selects; other transforms explained.

use regex::Regex;

use super::connector::Source;
use super::fates::{self, Fate};
use super::settings::{list, Note, Settings};
use super::toml::{Section, Value};

const EVENT_ROUTER: &str = "io.debezium.transforms.outbox.EventRouter";
const DECODE_MESSAGES: &str =
    "io.debezium.connector.postgresql.transforms.DecodeLogicalDecodingMessageContent";

/// The routing sections: `[routing]` gets the settings of a router that applies to
/// every table; with several routers each table gets its own section.
#[derive(Debug, Default)]
pub struct Routing {
    pub base: Vec<(String, Value, String)>,
    pub tables: Vec<(String, Section)>,
    /// The tables an Event Router applies to (the others are not outbox tables).
    pub routed_tables: Vec<String>,
}

pub fn routing(
    s: &Settings<'_>,
    source: &Source,
    logical_name: &str,
    notes: &mut Vec<Note>,
) -> Result<Routing, String> {
    let aliases = s.take("transforms").map(list).unwrap_or_default();
    let mut routers = Vec::new();
    let mut decodes_messages = false;
    for alias in &aliases {
        let prefix = format!("transforms.{alias}.");
        match s.take(&format!("{prefix}type")) {
            Some(EVENT_ROUTER) => routers.push(alias.clone()),
            Some(DECODE_MESSAGES) => {
                decodes_messages = true;
                for k in s.keys_with_prefix(&prefix) {
                    s.mark(k);
                }
                notes.push(Note::explained(
                    &format!("{prefix}type"),
                    DECODE_MESSAGES,
                    true,
                    "outboxd reads outbox events sent as logical messages in its own JSON \
                     envelope (docs/configuration.md, \"Outbox events as logical messages\")"
                        .to_owned(),
                ));
            }
            other => {
                for k in s.keys_with_prefix(&prefix) {
                    s.mark(k);
                }
                notes.push(Note::explained(
                    &format!("{prefix}type"),
                    other.unwrap_or(""),
                    false,
                    "a transform other than the Outbox Event Router: outboxd does not apply it, \
                     so the records would differ"
                        .to_owned(),
                ));
            }
        }
    }
    if routers.is_empty() {
        return Err(format!(
            "no transform is the Outbox Event Router ({EVENT_ROUTER}): this connector is not \
             an outbox connector"
        ));
    }
    messages(s, decodes_messages, notes);
    let mut out = Routing::default();
    let mut owners: Vec<(String, Vec<String>)> = source
        .tables
        .iter()
        .map(|t| (t.clone(), Vec::new()))
        .collect();
    let mut sections = Vec::new();
    for alias in &routers {
        let section = router_settings(s, alias, notes)?;
        let selected = selected_tables(s, alias, &source.tables, logical_name, notes)?;
        for (table, routers) in &mut owners {
            if selected.contains(table) {
                routers.push(alias.clone());
            }
        }
        sections.push((alias.clone(), section, selected));
    }
    for (table, routers) in &owners {
        match routers.len() {
            0 => notes.push(Note::explained(
                "table.include.list",
                table,
                true,
                format!(
                    "no Outbox Event Router applies to {table}: Debezium writes its change \
                     events as they are, outboxd (which relays outbox tables only) leaves it out"
                ),
            )),
            1 => out.routed_tables.push(table.clone()),
            _ => notes.push(Note::explained(
                "transforms",
                &routers.join(","),
                false,
                format!(
                    "several Outbox Event Routers apply to {table} one after another; outboxd \
                     routes a table once"
                ),
            )),
        }
    }
    if sections.len() == 1 && sections[0].2.len() == source.tables.len() {
        let (_, section, _) = sections.remove(0);
        out.base = section
            .entries
            .into_iter()
            .map(|e| (e.key, e.value, e.comment))
            .collect();
    } else {
        for (_, section, selected) in sections {
            for table in selected.iter().filter(|t| out.routed_tables.contains(t)) {
                let mut per_table = section.clone();
                per_table.name = format!("routing.tables.\"{table}\"");
                out.tables.push((table.clone(), per_table));
            }
        }
    }
    Ok(out)
}

/// Which tables a router applies to: all, or those whose change-event topic
/// (`<topic.prefix>.<schema>.<table>`) its `TopicNameMatches` predicate matches.
fn selected_tables(
    s: &Settings<'_>,
    alias: &str,
    tables: &[String],
    logical_name: &str,
    notes: &mut Vec<Note>,
) -> Result<Vec<String>, String> {
    let Some(predicate) = s.take(&format!("transforms.{alias}.predicate")) else {
        return Ok(tables.to_vec());
    };
    let negate = s
        .take_bool(&format!("transforms.{alias}.negate"))?
        .unwrap_or(false);
    let kind = s
        .take(&format!("predicates.{predicate}.type"))
        .unwrap_or("");
    if kind != "org.apache.kafka.connect.transforms.predicates.TopicNameMatches" {
        notes.push(Note::explained(
            &format!("predicates.{predicate}.type"),
            kind,
            false,
            "outboxd can select the tables of a router by TopicNameMatches only; this router \
             is taken to apply to every table"
                .to_owned(),
        ));
        return Ok(tables.to_vec());
    }
    let pattern = s
        .take(&format!("predicates.{predicate}.pattern"))
        .unwrap_or("");
    let regex = Regex::new(&format!("^(?:{pattern})$"))
        .map_err(|e| format!("predicates.{predicate}.pattern '{pattern}': {e}"))?;
    Ok(tables
        .iter()
        .filter(|t| regex.is_match(&format!("{logical_name}.{t}")) != negate)
        .cloned()
        .collect())
}

/// The Event Router's own settings as `[routing]` keys.
fn router_settings(
    s: &Settings<'_>,
    alias: &str,
    notes: &mut Vec<Note>,
) -> Result<Section, String> {
    let mut section = Section::new("routing");
    let prefix = format!("transforms.{alias}.");
    let column_keys = [
        ("table.field.event.id", "columns.id"),
        ("table.field.event.key", "columns.aggregate_id"),
        ("table.field.event.type", "columns.event_type"),
        ("table.field.event.payload", "columns.payload"),
        ("table.field.event.timestamp", "columns.timestamp"),
        ("table.field.event.schema.version", "columns.schema_version"),
        ("route.by.field", "columns.aggregate_type"),
        ("tracing.span.context.field", "columns.tracing_span_context"),
        ("route.topic.regex", "topic_regex"),
        ("route.topic.replacement", "topic"),
    ];
    for (setting, key) in column_keys {
        if let Some(v) = s.take(&format!("{prefix}{setting}")) {
            section.set(key, Value::Str(v.to_owned()), setting);
        }
    }
    let bools = [
        (
            "route.tombstone.on.empty.payload",
            "tombstone_on_empty_payload",
        ),
        ("table.expand.json.payload", "expand_json_payload"),
    ];
    for (setting, key) in bools {
        if let Some(v) = s.take_bool(&format!("{prefix}{setting}"))? {
            section.set(key, Value::Bool(v), setting);
        }
    }
    let enums: [(&str, &str, &[&str]); 4] = [
        (
            "table.op.invalid.behavior",
            "invalid_operation",
            &["warn", "error", "fatal"],
        ),
        (
            "table.field.additional.missing",
            "missing_columns",
            &["error", "ignore"],
        ),
        (
            "table.json.payload.null.behavior",
            "json_payload_nulls",
            &["ignore", "optional_bytes"],
        ),
        (
            "table.json.payload.empty.array.behavior",
            "json_payload_empty_arrays",
            &["ignore", "optional_string"],
        ),
    ];
    for (setting, key, allowed) in enums {
        if let Some(v) = s.take(&format!("{prefix}{setting}")) {
            let lower = v.to_ascii_lowercase();
            if !allowed.contains(&lower.as_str()) {
                return Err(format!(
                    "{prefix}{setting} = '{v}' is not one of {}",
                    allowed.join(", ")
                ));
            }
            section.set(key, Value::Str(lower), setting);
        }
    }
    // The older spelling: `table.fields.additional.error.on.missing=false` is `ignore`.
    if let Some(false) =
        s.take_bool(&format!("{prefix}table.fields.additional.error.on.missing"))?
    {
        section.set(
            "missing_columns",
            Value::Str("ignore".to_owned()),
            "table.fields.additional.error.on.missing = false",
        );
    }
    if let Some(placements) = s.take(&format!("{prefix}table.fields.additional.placement")) {
        placement(placements, &prefix, &mut section)?;
    }
    if s.peek(&format!("{prefix}tracing.span.context.field"))
        .is_none()
    {
        notes.push(Note::explained(
            &format!("{prefix}tracing.*"),
            "",
            true,
            "outboxd turns a tracingspancontext column into traceparent / tracestate headers \
             whether or not the Connect worker had OpenTelemetry (without it Debezium adds \
             none); set routing.columns.tracing_span_context = \"\" to add none"
                .to_owned(),
        ));
    }
    for key in s.keys_with_prefix(&prefix) {
        if !s.is_used(key) {
            let value = s.take(key).unwrap_or_default();
            notes.push(Note::new(key, value, fates::router(&key[prefix.len()..])));
        }
    }
    Ok(section)
}

/// `column:placement[:alias]`, comma-separated.
fn placement(value: &str, prefix: &str, section: &mut Section) -> Result<(), String> {
    let mut headers = Vec::new();
    let mut envelope = Vec::new();
    for item in list(value) {
        let parts: Vec<&str> = item.split(':').map(str::trim).collect();
        let (column, place) = match parts.as_slice() {
            [c, p] | [c, p, _] => (*c, p.to_ascii_lowercase()),
            _ => return Err(format!("{prefix}table.fields.additional.placement: '{item}' is not column:placement[:alias]")),
        };
        let alias = parts.get(2).copied().unwrap_or(column);
        let pair = |a: &str, b: &str| {
            vec![
                ("column".to_owned(), Value::Str(column.to_owned())),
                (a.to_owned(), Value::Str(b.to_owned())),
            ]
        };
        match place.as_str() {
            "header" => headers.push(pair("header", alias)),
            "envelope" => envelope.push(pair("field", alias)),
            "partition" => section.set(
                "partition_column",
                Value::Str(column.to_owned()),
                "table.fields.additional.placement …:partition",
            ),
            other => return Err(format!("{prefix}table.fields.additional.placement: placement '{other}' is not header, envelope or partition")),
        }
    }
    if !headers.is_empty() {
        section.set(
            "additional_headers",
            Value::Tables(headers),
            "table.fields.additional.placement …:header",
        );
    }
    if !envelope.is_empty() {
        section.set(
            "envelope_fields",
            Value::Tables(envelope),
            "table.fields.additional.placement …:envelope",
        );
    }
    Ok(())
}

/// Logical messages: routed only when the connector decodes them for the router.
fn messages(s: &Settings<'_>, decodes: bool, notes: &mut Vec<Note>) {
    for key in ["message.prefix.include.list", "message.prefix.exclude.list"] {
        if let Some(v) = s.take(key) {
            if !decodes {
                notes.push(Note::new(key, v, Fate::NotApplicable(
                    "without DecodeLogicalDecodingMessageContent no message reaches the Event Router, \
                     so outboxd relays no messages (routing.message_prefix = \"\")",
                )));
            }
        }
    }
}

/// The `[routing]` keys for messages.
pub fn message_keys(s: &Settings<'_>, decodes: bool) -> Vec<(String, Value, String)> {
    if !decodes {
        return vec![(
            "message_prefix".to_owned(),
            Value::Str(String::new()),
            "the connector routes no logical messages".to_owned(),
        )];
    }
    let include = s
        .peek("message.prefix.include.list")
        .map(list)
        .unwrap_or_default();
    let exclude = s
        .peek("message.prefix.exclude.list")
        .map(list)
        .unwrap_or_default();
    if !exclude.is_empty() {
        return vec![(
            "message_prefix_exclude".to_owned(),
            Value::List(exclude),
            "message.prefix.exclude.list".to_owned(),
        )];
    }
    let include = if include.is_empty() {
        vec![".*".to_owned()]
    } else {
        include
    };
    vec![(
        "message_prefix_include".to_owned(),
        Value::List(include),
        "message.prefix.include.list (unset: every prefix)".to_owned(),
    )]
}

/// Whether the connector decodes logical messages for the router.
pub fn decodes_messages(s: &Settings<'_>) -> bool {
    let aliases = s.peek("transforms").map(list).unwrap_or_default();
    aliases
        .iter()
        .any(|a| s.peek(&format!("transforms.{a}.type")) == Some(DECODE_MESSAGES))
}
