//! `outboxd init`: what outboxd needs — outbox table(s), publication, slot, and the
//! checkpoint topic in Kafka. Printed for review by default; `--apply` creates what
//! is missing.

use std::time::Duration;

use outboxd_kafka_sink::checkpoint::{CheckpointStore, SHORT_HISTORY};
use outboxd_replication::{Admin, TableName};

use crate::config::Config;
use crate::settings::{checkpoint_topic_configs, connect_options, sink_config};
use crate::topics::TopicCreator;

/// How long creating the checkpoint topic may take.
const KAFKA_TIMEOUT: Duration = Duration::from_secs(30);

/// The statements, in order. Each is idempotent or guarded when applied.
pub fn statements(config: &Config) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    let mut tables = Vec::new();
    for t in &config.postgres.tables {
        let table = TableName::parse(t)?;
        let routing = config
            .routing
            .for_table(&table.to_string())
            .map_err(anyhow::Error::msg)?;
        let c = &routing.columns;
        // Debezium's table, with the configured column names.
        let tracing = match c.tracing_span_context.as_str() {
            "" => String::new(),
            column => format!(",\n    {} varchar(255)", quote(column)),
        };
        out.push(format!(
            "CREATE TABLE IF NOT EXISTS {table} (\n    \
                 {id} uuid PRIMARY KEY DEFAULT gen_random_uuid(),\n    \
                 {at} varchar(255) NOT NULL,\n    \
                 {ai} varchar(255) NOT NULL,\n    \
                 {ty} varchar(255) NOT NULL,\n    \
                 {pl} jsonb,\n    \
                 {ts} timestamptz NOT NULL DEFAULT now(){tracing}\n)",
            table = table.quoted(),
            id = quote(&c.id),
            at = quote(&c.aggregate_type),
            ai = quote(&c.aggregate_id),
            ty = quote(&c.event_type),
            pl = quote(&c.payload),
            ts = quote(c.timestamp.as_deref().unwrap_or("timestamp")),
        ));
        tables.push(table.quoted());
    }
    if !tables.is_empty() {
        out.push(format!(
            "CREATE PUBLICATION {} FOR TABLE {} WITH (publish = 'insert')",
            quote(&config.postgres.publication),
            tables.join(", ")
        ));
    }
    let slot = config.postgres.slot.replace('\'', "''");
    out.push(if config.postgres.failover_slot {
        // PostgreSQL 17+: (name, plugin, temporary, twophase, failover).
        format!(
            "SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput', false, false, true)"
        )
    } else {
        format!("SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')")
    });
    Ok(out)
}

/// A quoted SQL identifier.
pub(crate) fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

pub async fn run(config: &Config, apply: bool) -> anyhow::Result<()> {
    let statements = statements(config)?;
    if !apply {
        println!("-- outboxd needs these; review and run them, or run `outboxd init --apply`.");
        println!("-- Services insert events into the outbox table in their business transaction;");
        println!("-- deleting the rows in the same transaction keeps the table empty.");
        for s in &statements {
            println!("{s};\n");
        }
        let short_history: String = SHORT_HISTORY
            .iter()
            .map(|(k, v)| format!(" --config {k}={v}"))
            .collect();
        println!(
            "-- And in Kafka, the checkpoint topic (one partition, compacted), e.g.:\n\
             -- kafka-topics.sh --create --topic {} --partitions 1 --config cleanup.policy=compact{short_history}",
            config.kafka.checkpoint_topic
        );
        return Ok(());
    }
    if config.kafka.brokers.is_empty() {
        eprintln!(
            "not created: the checkpoint topic '{}' (kafka.brokers is not set). `outboxd run` \
             needs it: set kafka.brokers and run `outboxd init --apply` again",
            config.kafka.checkpoint_topic
        );
    } else {
        let store = CheckpointStore::new(
            &sink_config(config),
            &config.kafka.checkpoint_topic,
            KAFKA_TIMEOUT,
        )?
        .with_topic_configs(checkpoint_topic_configs(config));
        let topic = store
            .ensure_topic(1, config.kafka.checkpoint_replication_factor)
            .await?;
        println!(
            "checkpoint topic '{}' ready ({} partition(s), compacted)",
            config.kafka.checkpoint_topic, topic.partitions
        );
        if let Some(advice) = topic.long_history() {
            eprintln!("warning: checkpoint topic: {advice}");
        }
        if let (Some(creator), Some(dlq)) = (
            TopicCreator::new(&config.kafka, sink_config(config)).map_err(anyhow::Error::msg)?,
            &config.kafka.dead_letter_topic,
        ) {
            creator
                .ensure(dlq)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("dead-letter topic '{dlq}' ready (kafka.topic_creation)");
        }
    }
    let opts = connect_options(config)?;
    let admin = Admin::connect(&opts).await?;
    admin.check_wal_level().await?;
    for s in &statements {
        if s.starts_with("CREATE PUBLICATION") {
            let exists = admin
                .client()
                .query_opt(
                    "SELECT 1 FROM pg_publication WHERE pubname = $1",
                    &[&config.postgres.publication],
                )
                .await?
                .is_some();
            if exists {
                println!("publication '{}' exists", config.postgres.publication);
                continue;
            }
        }
        if s.starts_with("SELECT pg_create_logical_replication_slot")
            && admin.slot(&config.postgres.slot).await?.is_some()
        {
            println!("slot '{}' exists", config.postgres.slot);
            continue;
        }
        admin
            .client()
            .batch_execute(s)
            .await
            .map_err(|e| anyhow::anyhow!("{e}\nwhile running:\n{s}"))?;
        println!("done: {}", s.lines().next().unwrap_or(s));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_has_the_configured_column_names() {
        let mut config = Config::default();
        config.postgres.tables = vec!["shop.events".to_owned()];
        config.routing.columns.id = "event_id".to_owned();
        config.routing.columns.timestamp = Some("created_at".to_owned());
        config.routing.columns.tracing_span_context = String::new();
        let table = &statements(&config).unwrap()[0];
        assert!(
            table.starts_with("CREATE TABLE IF NOT EXISTS \"shop\".\"events\""),
            "{table}"
        );
        assert!(table.contains("\"event_id\" uuid PRIMARY KEY"), "{table}");
        assert!(table.contains("\"created_at\" timestamptz"), "{table}");
        assert!(!table.contains("tracingspancontext"), "{table}");

        let table = &statements(&Config::default()).unwrap()[0];
        assert!(table.contains("\"timestamp\" timestamptz"), "{table}");
        assert!(
            table.contains("\"tracingspancontext\" varchar(255)"),
            "{table}"
        );
    }
}
