//! Applies one event in one database transaction: record its id, check its version,
//! run the handler, commit. The rules of what is applied live here.

use std::future::Future;

use deadpool_postgres::Pool;
use tokio_postgres::types::PgLsn;
use tokio_postgres::Transaction;

use crate::event::{Event, Version};
use crate::metrics::Outcome;
use crate::schema::Tables;

/// What a handler returns when it fails; the transaction is rolled back and the
/// event tried again.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Your code: applies one event's effects with `tx`, the transaction that also
/// records the event in the inbox. Write your read model and your own outbox
/// events with it; do nothing outside it that cannot be repeated (the transaction
/// may roll back and the event come again).
///
/// ```no_run
/// use outboxd_inbox::{BoxError, Event, Handler, tokio_postgres::Transaction};
///
/// struct CountOrders;
///
/// impl Handler for CountOrders {
///     async fn handle(&self, tx: &Transaction<'_>, event: &Event) -> Result<(), BoxError> {
///         tx.execute(
///             "INSERT INTO order_counts VALUES ($1, 1) \
///              ON CONFLICT (order_id) DO UPDATE SET events = order_counts.events + 1",
///             &[&event.aggregate_id()],
///         )
///         .await?;
///         Ok(())
///     }
/// }
/// ```
pub trait Handler: Send + Sync + 'static {
    fn handle(
        &self,
        tx: &Transaction<'_>,
        event: &Event,
    ) -> impl Future<Output = Result<(), BoxError>> + Send;
}

/// Why an attempt failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AttemptError {
    #[error("no database connection: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("database: {0}")]
    Database(#[from] tokio_postgres::Error),
    #[error("handler: {0}")]
    Handler(BoxError),
}

/// The rules, decided under the locks taken in the transaction:
/// 1. an id already in the inbox is a duplicate: skipped;
/// 2. otherwise an event older than (or as old as) its aggregate's applied version
///    is stale and skipped, unless it is a replay, which is applied late (its id
///    was never applied, and a replay is how lost events are delivered again);
/// 3. otherwise it is applied and becomes the aggregate's version.
///
/// Events without a version or without a key are deduplicated by id alone.
pub(crate) async fn apply<H: Handler>(
    pool: &Pool,
    tables: &Tables,
    handler: &H,
    event: &mut Event,
) -> Result<(Outcome, Option<Version>), AttemptError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let version = event.version();
    let lsn = version.map(|v| PgLsn::from(v.lsn));
    let index = version.map(|v| i64::from(v.index));
    let recorded = tx
        .execute(
            &tx.prepare_cached(&tables.insert_event()).await?,
            &[
                &event.id(),
                &event.topic(),
                &event.partition(),
                &event.offset(),
                &event.aggregate_id(),
                &lsn,
                &index,
                &event.is_replay(),
            ],
        )
        .await?;
    if recorded == 0 {
        tx.rollback().await?;
        return Ok((Outcome::Duplicate, None));
    }
    let mut newer_version = false;
    let mut late_after = None;
    if let (Some(v), Some(aggregate)) = (version, event.aggregate_id()) {
        let first = tx
            .execute(
                &tx.prepare_cached(&tables.insert_version()).await?,
                &[&event.topic(), &aggregate, &lsn, &index, &event.id()],
            )
            .await?;
        if first == 0 {
            let row = tx
                .query_one(
                    &tx.prepare_cached(&tables.lock_version()).await?,
                    &[&event.topic(), &aggregate],
                )
                .await?;
            let applied = Version {
                lsn: row.get::<_, PgLsn>(0).into(),
                index: u32::try_from(row.get::<_, i64>(1)).unwrap_or(u32::MAX),
            };
            if v > applied {
                newer_version = true;
            } else if event.is_replay() {
                late_after = Some(applied);
            } else {
                tx.rollback().await?;
                return Ok((Outcome::Stale, Some(applied)));
            }
        }
    }
    event.late_after = late_after;
    handler
        .handle(&tx, event)
        .await
        .map_err(AttemptError::Handler)?;
    if newer_version {
        tx.execute(
            &tx.prepare_cached(&tables.update_version()).await?,
            &[
                &event.topic(),
                &event.aggregate_id(),
                &lsn,
                &index,
                &event.id(),
            ],
        )
        .await?;
    }
    tx.commit().await?;
    let outcome = match event.late_after {
        Some(_) => Outcome::AppliedLate,
        None => Outcome::Applied,
    };
    Ok((outcome, event.late_after))
}
