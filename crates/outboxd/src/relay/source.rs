//! The replication side of the relay, as narrow traits, and their PostgreSQL
//! implementation: a [`Connector`] opens one [`Source`] per session.

use outboxd_pgoutput::Lsn;
use outboxd_replication::{
    open_stream, Admin, ConnectOptions, ReaderConfig, ReplicationEvent, ReplicationReader,
    SourceSpec, StreamPositions, TableName,
};

use crate::relay::RelayError;

/// One session's stream of decoded messages.
pub(crate) trait Source {
    /// The next message; `None` once the source stopped (at a transaction boundary
    /// after [`stop_at_transaction_boundary`](Source::stop_at_transaction_boundary),
    /// or because of an error that [`close`](Source::close) returns).
    /// Cancellation-safe: a message is either returned or stays queued.
    async fn recv(&mut self) -> Option<ReplicationEvent>;
    /// Everything up to `lsn` (the end LSN of a transaction) is durable downstream.
    fn acknowledge(&self, lsn: Lsn);
    /// Finish the transaction in progress, then end the stream.
    fn stop_at_transaction_boundary(&self);
    fn positions(&self) -> StreamPositions;
    /// Reports the final position and closes: the last flush position, or the
    /// error that ended the stream.
    async fn close(self) -> Result<Lsn, outboxd_replication::Error>;
}

/// A session's source and where it resumed.
#[derive(Debug)]
pub(crate) struct Opened<S> {
    pub source: S,
    pub resume_lsn: Lsn,
}

/// Opens a source per session.
pub(crate) trait Connector {
    type Source: Source;
    /// Opens a stream that starts no earlier than `already_delivered` (what this
    /// process confirmed itself; the slot may not have heard of it yet).
    async fn open(&mut self, already_delivered: Lsn) -> Result<Opened<Self::Source>, RelayError>;
}

impl Source for ReplicationReader {
    async fn recv(&mut self) -> Option<ReplicationEvent> {
        ReplicationReader::recv(self).await
    }

    fn acknowledge(&self, lsn: Lsn) {
        ReplicationReader::acknowledge(self, lsn);
    }

    fn stop_at_transaction_boundary(&self) {
        ReplicationReader::stop_at_transaction_boundary(self);
    }

    fn positions(&self) -> StreamPositions {
        ReplicationReader::positions(self)
    }

    async fn close(self) -> Result<Lsn, outboxd_replication::Error> {
        ReplicationReader::close(self).await
    }
}

/// Opens replication sessions on PostgreSQL: preflight, publication, slot, stream.
#[derive(Debug)]
pub(crate) struct PgConnector {
    pub connect: ConnectOptions,
    pub tables: Vec<TableName>,
    pub create_publication: bool,
    pub spec: SourceSpec,
    pub reader: ReaderConfig,
}

impl Connector for PgConnector {
    type Source = ReplicationReader;

    async fn open(
        &mut self,
        already_delivered: Lsn,
    ) -> Result<Opened<ReplicationReader>, RelayError> {
        let admin = Admin::connect(&self.connect).await?;
        admin.check_wal_level().await?;
        if !self.tables.is_empty() {
            let publication = self.spec.publications.first().map_or("", String::as_str);
            admin
                .ensure_publication(publication, &self.tables, self.create_publication)
                .await?;
        }
        let spec = SourceSpec {
            already_delivered,
            ..self.spec.clone()
        };
        let (stream, started) = open_stream(&self.connect, &admin, &spec).await?;
        tracing::info!(
            slot = %spec.slot,
            resume = %started.resume_lsn,
            created_slot = started.created_slot,
            server_version = started.server_major_version,
            "relaying"
        );
        Ok(Opened {
            source: ReplicationReader::spawn(stream, self.reader.clone()),
            resume_lsn: started.resume_lsn,
        })
    }
}
