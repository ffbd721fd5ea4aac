//! The cut-over from the connector to outboxd, as docs/operations.md describes and
//! crates/outboxd/tests/debezium.rs tests it, filled in with this connector's names.

use super::connector::Source;

/// The steps, as text lines.
pub fn cut_over(connector: &str, source: &Source, config_file: &str) -> Vec<String> {
    let connect = "http://<connect-host>:8083";
    let env = "export OUTBOXD_KAFKA__BROKERS=… OUTBOXD_POSTGRES__PASSWORD=…";
    let mut steps = vec![format!(
        "1. Review {config_file}, then: {env}; outboxd check --config {config_file} (until \
         init --apply below has run, it reports the missing checkpoint topic: expected)"
    )];
    if source.pgoutput {
        steps.extend([
            format!(
                "2. Stop the connector and wait until it has let go of the slot: \
                 curl -X PUT {connect}/connectors/{connector}/stop ; \
                 SELECT active_pid FROM pg_replication_slots WHERE slot_name = '{}' \
                 (repeat until NULL)",
                source.slot
            ),
            format!(
                "3. outboxd init --apply --config {config_file} (creates the checkpoint topic; \
                 slot '{}' and publication '{}' exist and are kept)",
                source.slot, source.publication
            ),
            format!(
                "4. outboxd run --config {config_file}: it resumes at the slot's confirmed \
                 position, so events the connector delivered but had not confirmed come again \
                 (duplicates: consumers deduplicate by the id header), none are skipped"
            ),
            format!(
                "5. Once outboxd relays (outboxd_events_published_total rises), delete the \
                 connector: curl -X DELETE {connect}/connectors/{connector} (it does not drop \
                 slot '{}' unless slot.drop.on.stop=true)",
                source.slot
            ),
        ]);
    } else {
        steps.extend([
            format!(
                "2. outboxd init --apply --config {config_file} while the connector still runs: \
                 it creates the pgoutput slot '{}', the publication '{}' and the checkpoint \
                 topic; events committed from now on are kept for outboxd",
                source.slot, source.publication
            ),
            format!(
                "3. Wait until the connector has delivered everything committed before step 2 \
                 (its slot's confirmed_flush_lsn is past slot '{}''s), then stop it: curl -X \
                 PUT {connect}/connectors/{connector}/stop",
                source.slot
            ),
            format!(
                "4. outboxd run --config {config_file}: events committed between steps 2 and 3 \
                 come twice (consumers deduplicate by the id header), none are skipped"
            ),
            format!(
                "5. Delete the connector (curl -X DELETE {connect}/connectors/{connector}) and \
                 drop its decoderbufs slot: it holds WAL back"
            ),
        ]);
    }
    steps
}
