//! `outboxd check`: every prerequisite, each reported with what to do, so one run
//! shows all problems. Exits non-zero if any fails.

use std::time::Duration;

use outboxd_kafka_sink::{ClusterCheck, KafkaSink};
use outboxd_replication::{Admin, Error, Preflight, TableName};

use crate::advice;
use crate::config::Config;
use crate::settings::{connect_options, sink_config};
use crate::topics::TopicRules;

/// How long a Kafka request of the check may take.
const KAFKA_TIMEOUT: Duration = Duration::from_secs(10);

mod recovery;

#[derive(Debug, Default)]
struct Report {
    failures: usize,
}

impl Report {
    fn line(&mut self, what: &str, result: Result<String, String>) {
        match result {
            Ok(detail) => println!("ok    {what}{detail}"),
            Err(e) => {
                self.failures += 1;
                println!("FAIL  {what}: {e}");
            }
        }
    }

    /// A risk that does not stop `run`: said, not counted as a failure.
    fn warn(&self, what: &str, why: &str) {
        println!("warn  {what}: {why}");
    }
}

fn plain(r: Result<(), Error>) -> Result<String, String> {
    r.map(|()| String::new()).map_err(|e| explained(&e))
}

/// The error, then what to do about it.
fn explained(e: &Error) -> String {
    match advice::for_replication(e) {
        Some(advice) => format!("{e}; {advice}"),
        None => e.to_string(),
    }
}

pub async fn run(config: &Config) -> anyhow::Result<()> {
    let mut report = Report::default();
    check_postgres(config, &mut report).await;
    recovery::check_failover(config, &mut report).await;
    check_kafka(config, &mut report).await;
    if !config.kafka.brokers.is_empty() {
        recovery::check_checkpoint(config, &mut report).await;
    }
    if report.failures > 0 {
        anyhow::bail!("{} check(s) failed", report.failures);
    }
    println!("all checks passed");
    Ok(())
}

async fn check_postgres(config: &Config, report: &mut Report) {
    let opts = match connect_options(config) {
        Ok(o) => o,
        Err(e) => return report.line("postgres.url", Err(explained(&e))),
    };
    let admin = match Admin::connect(&opts).await {
        Ok(a) => {
            report.line(
                &format!("PostgreSQL reachable at {}", a.peer()),
                Ok(String::new()),
            );
            a
        }
        Err(e) => return report.line("PostgreSQL reachable", Err(explained(&e))),
    };
    report.line("wal_level = logical", plain(admin.check_wal_level().await));
    report.line(
        "role may stream replication",
        plain(admin.check_replication_role().await),
    );
    // Tables that exist: a missing table is reported once, not again as missing
    // from the publication.
    let mut tables = Vec::new();
    for t in &config.postgres.tables {
        match TableName::parse(t) {
            Ok(t) => {
                let routing = config.routing.for_table(&t.to_string()).unwrap_or_default();
                let checked = admin.check_table(&t, &routing.required_columns()).await;
                let exists = !matches!(checked, Err(Error::Preflight(Preflight::TableMissing(_))));
                report.line(
                    &format!("outbox table {t} with the routed columns"),
                    plain(checked),
                );
                if exists {
                    tables.push(t);
                }
            }
            Err(e) => report.line("table name", Err(explained(&e))),
        }
    }
    if !tables.is_empty() {
        let publication = &config.postgres.publication;
        let result = admin.ensure_publication(publication, &tables, false).await;
        let result = match result {
            Err(Error::Preflight(Preflight::PublicationMissing { .. }))
                if config.postgres.create_publication =>
            {
                Ok(" (missing; outboxd run creates it)".to_owned())
            }
            other => plain(other),
        };
        report.line(
            &format!("publication '{publication}' publishes the outbox inserts"),
            result,
        );
    }
    let slot = &config.postgres.slot;
    let state = match admin.slot(slot).await {
        Ok(Some(info)) => Admin::verify_slot(&info, opts.database())
            .map(|()| {
                format!(
                    " (confirmed {}, lag {} bytes, wal_status {}{})",
                    info.confirmed_flush_lsn
                        .map_or("-".to_owned(), |l| l.to_string()),
                    info.lag_bytes.unwrap_or(0),
                    info.wal_status.as_deref().unwrap_or("-"),
                    info.active_pid
                        .map_or(String::new(), |p| format!(", in use by pid {p}")),
                )
            })
            .map_err(|e| explained(&e)),
        Ok(None) if config.postgres.create_slot => {
            Ok(" (does not exist yet; outboxd run creates it)".to_owned())
        }
        Ok(None) => Err(explained(&Error::SlotMissing { slot: slot.clone() })),
        Err(e) => Err(explained(&e)),
    };
    report.line(&format!("slot '{slot}' usable"), state);
}

async fn check_kafka(config: &Config, report: &mut Report) {
    if config.kafka.brokers.is_empty() {
        return report.line(
            "kafka.brokers",
            Err("not set: pass --kafka-brokers or set OUTBOXD_KAFKA__BROKERS".to_owned()),
        );
    }
    let sink = match KafkaSink::new(sink_config(config)) {
        Ok((sink, _)) => sink,
        Err(e) => return report.line("Kafka producer configuration", Err(e.to_string())),
    };
    // The sink adds the dead-letter topic to the topics it is asked about.
    let cluster = match sink.check(&[], KAFKA_TIMEOUT).await {
        Ok(cluster) => cluster,
        Err(e) => {
            return report.line(
                "Kafka reachable",
                Err(format!(
                    "{e}; check kafka.brokers ({}): each must be reachable from here, and the \
                     brokers' advertised.listeners must name addresses this host can reach",
                    config.kafka.brokers
                )),
            )
        }
    };
    report.line(
        &format!("Kafka reachable at {}", config.kafka.brokers),
        Ok(format!(" ({} broker(s))", cluster.brokers.len())),
    );
    let rules = TopicRules::new(&config.kafka.topic_creation).ok().flatten();
    for topic in &cluster.topics {
        let r = match (&topic.error, topic.exists) {
            (Some(e), _) => Err(e.clone()),
            (None, true) => Ok(format!(" ({} partitions)", topic.partitions)),
            (None, false) if rules.is_some() => {
                Ok(" (missing; outboxd creates it: kafka.topic_creation)".to_owned())
            }
            (None, false) => Err("missing: create it (kafka-topics.sh --create), enable \
                                  auto.create.topics.enable on the brokers, or set \
                                  kafka.topic_creation.enable"
                .to_owned()),
        };
        report.line(&format!("dead-letter topic '{}' exists", topic.name), r);
    }
    routed_topics(config, &sink, &cluster, rules.as_ref(), report).await;
}

/// Routed topics depend on the values to come: report the ones that exist (with
/// their partition counts against `kafka.topic_creation`, since the count decides
/// where a key's records go) and whether the others will be created.
async fn routed_topics(
    config: &Config,
    sink: &KafkaSink,
    cluster: &ClusterCheck,
    rules: Option<&TopicRules>,
    report: &mut Report,
) {
    let mut templates: Vec<String> = config
        .postgres
        .tables
        .iter()
        .filter_map(|t| config.routing.for_table(t).ok())
        .map(|r| r.topic)
        .collect();
    if config.routing.relays_messages() {
        templates.push(config.routing.topic.clone());
    }
    templates.sort();
    templates.dedup();
    let prefixes: Vec<&str> = templates
        .iter()
        .map(|t| t.split('$').next().unwrap_or(t))
        .collect();
    let existing: Vec<String> = cluster
        .all_topics
        .iter()
        .filter(|t| prefixes.iter().any(|p| !p.is_empty() && t.starts_with(p)))
        .cloned()
        .collect();
    let auto_create = match cluster.brokers.first() {
        Some(b) => sink
            .broker_setting(b.id, "auto.create.topics.enable", KAFKA_TIMEOUT)
            .await
            .ok()
            .flatten(),
        None => None,
    };
    let detail = format!(
        " ({} existing topic(s) match '{}…'{}; broker auto.create.topics.enable = {}{})",
        existing.len(),
        prefixes.join("…', '"),
        if existing.is_empty() {
            String::new()
        } else {
            format!(": {}", existing.join(", "))
        },
        auto_create.as_deref().unwrap_or("unknown"),
        if rules.is_some() {
            "; outboxd creates missing ones"
        } else {
            ""
        },
    );
    let what = format!(
        "routed topics '{}' present or auto-creatable",
        templates.join("', '")
    );
    if existing.is_empty() && auto_create.as_deref() == Some("false") && rules.is_none() {
        return report.line(
            &what,
            Err(format!(
                "no topic matches and the broker does not create topics: create one per \
                 routed value, or set kafka.topic_creation.enable{detail}"
            )),
        );
    }
    report.line(&what, Ok(detail));
    let Some(rules) = rules else { return };
    let mut wanted = existing.clone();
    wanted.extend(config.kafka.dead_letter_topic.clone());
    let described = match sink.check(&wanted, KAFKA_TIMEOUT).await {
        Ok(c) => c.topics,
        Err(e) => return report.line("partition counts", Err(e.to_string())),
    };
    let mut checked = std::collections::HashSet::new();
    for topic in described
        .iter()
        .filter(|t| t.exists && checked.insert(t.name.clone()))
    {
        let Ok(expected) = usize::try_from(rules.spec(&topic.name).partitions) else {
            continue; // the broker's default: nothing to compare
        };
        let r = if topic.partitions == expected {
            Ok(String::new())
        } else {
            Err(format!(
                "{} partitions, but kafka.topic_creation gives it {expected}: a key's records \
                 go to murmur2(key) % partitions, so with another count they land on other \
                 partitions than before (or than Debezium's). Align the configuration with \
                 the topic, or recreate the topic",
                topic.partitions
            ))
        };
        report.line(
            &format!("topic '{}' has the configured partition count", topic.name),
            r,
        );
    }
}
