//! The CopyBoth stream after START_REPLICATION, and the standby-status rules.
//!
//! What we report to the server (field notes §1, §5):
//! - `write` = the highest position we have received (data or keepalive);
//! - `flush` = `apply` = what the caller has acknowledged as durable downstream,
//!   or — when nothing is in flight — the server's WAL end from its keepalives, so
//!   an idle outbox on a busy database holds back no WAL;
//! - never lower than what we reported before;
//! - on a timer (the caller picks an interval below `wal_sender_timeout`), at once
//!   when the server asks, and once more when the stream is closed.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use outboxd_pgoutput::{LogicalMessage, Lsn, SharedRelation, StreamDecoder};
use postgres_protocol::message::backend::Message;
use tokio::time::Instant;

use crate::conn::{copy_data_payload, server_error, Backend, PgConnection};
use crate::error::Error;
use crate::protocol::{ServerFrame, StatusUpdate};

/// Knobs of a stream.
#[derive(Debug, Clone)]
pub struct StreamSettings {
    /// How often a status update goes out without being asked for. Keep it well
    /// below the server's `wal_sender_timeout` (see [`StreamSettings::for_timeout`]).
    pub status_interval: Duration,
    /// The largest backend message accepted.
    pub max_message_bytes: usize,
}

impl Default for StreamSettings {
    fn default() -> Self {
        StreamSettings {
            status_interval: Duration::from_secs(10),
            max_message_bytes: crate::conn::DEFAULT_MAX_MESSAGE_BYTES,
        }
    }
}

impl StreamSettings {
    /// Caps the status interval at a third of the server's `wal_sender_timeout`, so
    /// that a delayed update still arrives in time.
    pub fn for_timeout(mut self, wal_sender_timeout: Option<Duration>) -> Self {
        if let Some(timeout) = wal_sender_timeout {
            let cap = (timeout / 3).max(Duration::from_millis(100));
            self.status_interval = self.status_interval.min(cap);
        }
        self
    }
}

/// What the stream yields.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    /// One decoded pgoutput message. Changes carry the relation they refer to.
    Message {
        wal_start: Lsn,
        message: LogicalMessage,
        relation: Option<SharedRelation>,
        /// Size of the pgoutput message on the wire, for memory accounting.
        wire_bytes: usize,
    },
    /// The server's keepalive (already answered if it asked for a reply).
    Keepalive { wal_end: Lsn },
}

/// Positions of a stream, for metrics and decisions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamPositions {
    /// Highest position received.
    pub received: Lsn,
    /// The server's WAL end from its latest keepalive or XLogData header.
    pub server_wal_end: Lsn,
    /// What the caller acknowledged.
    pub acknowledged: Lsn,
    /// The flush position last reported to the server.
    pub reported_flush: Lsn,
}

/// A running logical replication stream.
#[derive(Debug)]
pub struct LogicalStream {
    conn: PgConnection,
    decoder: StreamDecoder,
    settings: StreamSettings,
    positions: StreamPositions,
    /// End LSN of the last Commit handed to the caller (or the start position).
    last_commit_end: Lsn,
    next_status: Instant,
}

impl LogicalStream {
    pub(crate) fn new(mut conn: PgConnection, start: Lsn, settings: StreamSettings) -> Self {
        conn.set_max_message_bytes(settings.max_message_bytes);
        LogicalStream {
            conn,
            decoder: StreamDecoder::new(),
            next_status: Instant::now() + settings.status_interval,
            settings,
            positions: StreamPositions {
                received: start,
                server_wal_end: start,
                acknowledged: start,
                reported_flush: start,
            },
            last_commit_end: start,
        }
    }

    /// Current positions.
    pub fn positions(&self) -> StreamPositions {
        self.positions
    }

    /// Whether a transaction has begun and not yet committed.
    pub fn in_transaction(&self) -> bool {
        self.decoder.in_transaction().is_some()
    }

    /// Records that everything up to `lsn` (the end LSN of a fully delivered
    /// transaction) is durable downstream. Lower values than before are ignored.
    pub fn acknowledge(&mut self, lsn: Lsn) {
        self.positions.acknowledged = self.positions.acknowledged.max(lsn);
    }

    /// The flush position to report now.
    ///
    /// When the caller has acknowledged everything we handed out and we are between
    /// transactions, nothing is in flight: every transaction that committed before
    /// the server's WAL end has reached us, so the slot may follow the server.
    pub fn flush_position(&self) -> Lsn {
        let p = &self.positions;
        let idle = !self.in_transaction() && p.acknowledged >= self.last_commit_end;
        let target = if idle {
            p.acknowledged.max(p.server_wal_end)
        } else {
            p.acknowledged
        };
        target.max(p.reported_flush)
    }

    /// Whether the next event is already received, so that
    /// [`next_event`](Self::next_event) returns it without waiting for the network.
    pub fn has_buffered_event(&self) -> bool {
        self.conn.has_buffered_message()
    }

    /// When the next timer-driven status update is due.
    pub fn status_due(&self) -> Instant {
        self.next_status
    }

    /// Sends a standby status update now and restarts the timer.
    pub async fn send_status(&mut self, reply_requested: bool) -> Result<(), Error> {
        let flush = self.flush_position();
        let update = StatusUpdate {
            write: self.positions.received.max(flush),
            flush,
            apply: flush,
            reply_requested,
        };
        self.conn
            .queue_copy_data(&update.encode(SystemTime::now()))?;
        self.conn.flush().await?;
        self.positions.reported_flush = flush;
        self.next_status = Instant::now() + self.settings.status_interval;
        tracing::trace!(write = %update.write, flush = %flush, "standby status sent");
        Ok(())
    }

    /// The next event. While waiting it sends status updates on the timer, and it
    /// answers keepalives that ask for a reply before returning them.
    /// Cancellation-safe: a frame half read stays buffered.
    pub async fn next_event(&mut self) -> Result<StreamEvent, Error> {
        loop {
            let due = self.next_status;
            let message = tokio::select! {
                m = self.conn.read_message() => m?,
                _ = tokio::time::sleep_until(due) => {
                    self.send_status(false).await?;
                    continue;
                }
            };
            let payload = match message {
                Backend::Message(Message::ErrorResponse(body)) => {
                    return Err(Error::Server {
                        during: "replication".to_owned(),
                        error: Box::new(server_error(body.fields())),
                    })
                }
                Backend::Message(Message::CopyDone) => return Err(Error::StreamClosed),
                Backend::Message(Message::NoticeResponse(_)) => continue,
                Backend::Message(m) => match copy_data_payload(m) {
                    Some(p) => p,
                    None => {
                        return Err(Error::protocol(
                            "unexpected non-CopyData message during replication",
                        ))
                    }
                },
                Backend::CopyBothResponse => {
                    return Err(Error::protocol(
                        "second CopyBothResponse during replication",
                    ))
                }
            };
            return self.handle_frame(payload).await;
        }
    }

    async fn handle_frame(&mut self, payload: Bytes) -> Result<StreamEvent, Error> {
        match ServerFrame::parse(payload)? {
            ServerFrame::XLogData {
                wal_start,
                wal_end,
                data,
                ..
            } => {
                let wire_bytes = data.len();
                let message = self.decoder.decode(data).map_err(|source| Error::Decode {
                    lsn: wal_start,
                    source,
                })?;
                let p = &mut self.positions;
                p.received = p.received.max(wal_start);
                p.server_wal_end = p.server_wal_end.max(wal_end);
                let relation = match &message {
                    LogicalMessage::Insert(i) => self.decoder.relation(i.relation_oid).cloned(),
                    LogicalMessage::Update(u) => self.decoder.relation(u.relation_oid).cloned(),
                    LogicalMessage::Delete(d) => self.decoder.relation(d.relation_oid).cloned(),
                    _ => None,
                };
                if let LogicalMessage::Commit(c) = &message {
                    self.last_commit_end = self.last_commit_end.max(c.end_lsn);
                    p.received = p.received.max(c.end_lsn);
                }
                Ok(StreamEvent::Message {
                    wal_start,
                    message,
                    relation,
                    wire_bytes,
                })
            }
            ServerFrame::Keepalive {
                wal_end,
                reply_requested,
                ..
            } => {
                let p = &mut self.positions;
                p.server_wal_end = p.server_wal_end.max(wal_end);
                p.received = p.received.max(wal_end);
                if reply_requested {
                    self.send_status(false).await?;
                }
                Ok(StreamEvent::Keepalive { wal_end })
            }
        }
    }

    /// Ends the stream cleanly: a final status update, CopyDone, and a bounded wait
    /// for the server to finish (so it has processed our last position). Returns the
    /// flush position reported last.
    pub async fn close(mut self) -> Result<Lsn, Error> {
        self.send_status(false).await?;
        self.conn.queue_copy_done();
        self.conn.flush().await?;
        let flushed = self.positions.reported_flush;
        let drain = async {
            loop {
                match self.conn.read_message().await {
                    Ok(Backend::Message(Message::ReadyForQuery(_))) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), drain).await;
        self.conn.terminate().await;
        tracing::info!(flush = %flushed, "replication stream closed");
        Ok(flushed)
    }
}
