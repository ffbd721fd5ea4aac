//! The order service's handler: keeps the order read model and publishes
//! `OrderSummaryUpdated` through the service's own outbox, in the transaction the
//! inbox opened for the event.

use outboxd_inbox::tokio_postgres::Transaction;
use outboxd_inbox::{BoxError, Event, Handler};

/// The service's tables (`sql/schema.sql`).
pub const SCHEMA: &str = include_str!("../sql/schema.sql");

/// Header with the event type, as outboxd places it with
/// `routing.additional_headers = [{ column = "type", header = "eventType" }]`.
const EVENT_TYPE_HEADER: &str = "eventType";

/// Applies order events to `order_summary` and `order_timeline`.
#[derive(Debug, Clone, Copy, Default)]
pub struct OrderProjection;

impl Handler for OrderProjection {
    async fn handle(&self, tx: &Transaction<'_>, event: &Event) -> Result<(), BoxError> {
        let order_id = event
            .aggregate_id()
            .ok_or("the record has no key, so no order id")?;
        let event_type = event
            .header(EVENT_TYPE_HEADER)
            .and_then(|t| std::str::from_utf8(t).ok())
            .unwrap_or("OrderEvent");
        let payload = event.payload().map(std::str::from_utf8).transpose()?;
        // A late replay, or a replay without a version (whether newer events were
        // applied is unknown), counts and joins the timeline, but the summary keeps
        // the state it has.
        let late = event.late_after().is_some() || (event.is_replay() && event.version().is_none());
        let row = tx
            .query_one(
                "INSERT INTO order_summary AS s (order_id, events, status, total, last_event_id) \
                 VALUES ($1, 1, $2, ($3::text::jsonb ->> 'total')::numeric, $4) \
                 ON CONFLICT (order_id) DO UPDATE SET \
                   events = s.events + 1, \
                   status = CASE WHEN $5 THEN s.status ELSE EXCLUDED.status END, \
                   total = CASE WHEN $5 THEN s.total ELSE coalesce(EXCLUDED.total, s.total) END, \
                   last_event_id = CASE WHEN $5 THEN s.last_event_id ELSE EXCLUDED.last_event_id END, \
                   updated_at = now() \
                 RETURNING events, status, total::text",
                &[&order_id, &event_type, &payload, &event.id(), &late],
            )
            .await?;
        let position: i32 = row.get(0);
        let (status, total): (String, Option<String>) = (row.get(1), row.get(2));
        tx.execute(
            "INSERT INTO order_timeline (order_id, position, event_id, event_type, payload, \
             version, late) VALUES ($1, $2, $3, $4, $5::text::jsonb, $6, $7)",
            &[
                &order_id,
                &position,
                &event.id(),
                &event_type,
                &payload,
                &event.version().map(|v| v.to_string()),
                &late,
            ],
        )
        .await?;
        tx.execute(
            "INSERT INTO outbox (aggregatetype, aggregateid, type, payload) \
             VALUES ('order_summary', $1, 'OrderSummaryUpdated', jsonb_build_object( \
               'order_id', $1::text, 'events', $2::int, 'status', $3::text, \
               'total', $4::text::numeric, 'caused_by', $5::text))",
            &[&order_id, &position, &status, &total, &event.id()],
        )
        .await?;
        Ok(())
    }
}
