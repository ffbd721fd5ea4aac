//! The CopyBoth stream after START_REPLICATION, and the standby-status rules.
//!
//! What we report to the server (docs/architecture.md, "The LSN rules"):
//! - `write` = the highest position we have received (data or keepalive);
//! - `flush` = `apply` = what the caller has acknowledged as durable downstream,
//!   or — when nothing is in flight and the settings allow it — the server's WAL end
//!   from its keepalives, so an idle outbox on a busy database holds back no WAL;
//! - never lower than what we reported before;
//! - on a timer (the caller picks an interval below `wal_sender_timeout`), at once
//!   when the server asks, and once more when the stream is closed.
//!
//! Liveness: a path that silently drops packets leaves the socket open and a read
//! waiting forever. The server only speaks when it has data, when WAL moves, or when
//! *we* have been silent — so an idle but healthy server can be quiet indefinitely.
//! Halfway through `receive_timeout` without a byte we therefore ask for a keepalive
//! (a status update with reply-requested, which the walsender answers at once); if
//! the other half passes without a byte too, the stream fails with the retryable
//! [`Error::ReceiveTimeout`].

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use outboxd_pgoutput::{LogicalMessage, Lsn, SharedRelation, StreamDecoder};
use postgres_protocol::message::backend::Message;
use tokio::time::Instant;

use crate::conn::{conn_timeout_error, copy_data_payload, server_error, Backend, PgConnection};
use crate::error::Error;
use crate::protocol::{ServerFrame, StatusUpdate};

/// The receive timeout when the server's `wal_sender_timeout` is disabled (0) or
/// was not looked up.
pub const DEFAULT_RECEIVE_TIMEOUT: Duration = Duration::from_secs(60);

/// Added to the server's `wal_sender_timeout` for the derived receive timeout: if we
/// gave up on the server sooner than it gives up on us, the reconnect would find
/// the slot still held (a retryable `SlotInUse`, but a wasted round).
const RECEIVE_TIMEOUT_MARGIN: Duration = Duration::from_secs(5);

/// The shortest receive timeout honoured; a zero one would fail every read.
const MIN_RECEIVE_TIMEOUT: Duration = Duration::from_millis(100);

/// Knobs of a stream.
#[derive(Debug, Clone)]
pub struct StreamSettings {
    /// How often a status update goes out without being asked for. Keep it well
    /// below the server's `wal_sender_timeout` (see [`StreamSettings::for_timeout`]).
    pub status_interval: Duration,
    /// How long the stream waits without receiving a byte before it fails with
    /// [`Error::ReceiveTimeout`]; halfway through it asks the server for a keepalive.
    /// `None`: the server's `wal_sender_timeout` plus 5 s, set by
    /// [`StreamSettings::for_timeout`] ([`DEFAULT_RECEIVE_TIMEOUT`] when the server's
    /// is disabled or unknown).
    pub receive_timeout: Option<Duration>,
    /// The largest backend message accepted.
    pub max_message_bytes: usize,
    /// Whether the stream confirms the server's WAL end by itself when nothing is in
    /// flight (see [`StreamPositions::idle_wal_end`]). A caller that must record
    /// every position before it is confirmed turns this off and acknowledges the
    /// idle WAL end itself.
    pub confirm_idle_wal_end: bool,
}

impl Default for StreamSettings {
    fn default() -> Self {
        StreamSettings {
            status_interval: Duration::from_secs(10),
            receive_timeout: None,
            max_message_bytes: crate::conn::DEFAULT_MAX_MESSAGE_BYTES,
            confirm_idle_wal_end: true,
        }
    }
}

impl StreamSettings {
    /// Caps the status interval at a third of the server's `wal_sender_timeout`, so
    /// that a delayed update still arrives in time, and derives the receive timeout
    /// from it unless one was set.
    pub fn for_timeout(mut self, wal_sender_timeout: Option<Duration>) -> Self {
        if let Some(timeout) = wal_sender_timeout {
            let cap = (timeout / 3).max(Duration::from_millis(100));
            self.status_interval = self.status_interval.min(cap);
        }
        self.receive_timeout.get_or_insert(
            wal_sender_timeout.map_or(DEFAULT_RECEIVE_TIMEOUT, |t| t + RECEIVE_TIMEOUT_MARGIN),
        );
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
        /// When the server sent it: microseconds since 2000-01-01 on the server's
        /// clock, so comparable with a Begin's commit time.
        server_time: i64,
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
    /// When nothing is in flight (every transaction handed out is acknowledged and
    /// none is half received), every transaction that committed before the server's
    /// WAL end has reached the caller: that WAL end may be confirmed. `None` while
    /// something is in flight, or when the WAL end is not past what is acknowledged.
    pub idle_wal_end: Option<Lsn>,
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
    receive_timeout: Duration,
    /// A keepalive request not answered yet: when it went out, and the count of
    /// bytes received by then (any byte since counts as the answer).
    probe: Option<(Instant, u64)>,
}

impl LogicalStream {
    pub(crate) fn new(mut conn: PgConnection, start: Lsn, settings: StreamSettings) -> Self {
        conn.set_max_message_bytes(settings.max_message_bytes);
        LogicalStream {
            conn,
            decoder: StreamDecoder::new(),
            next_status: Instant::now() + settings.status_interval,
            receive_timeout: settings
                .receive_timeout
                .unwrap_or(DEFAULT_RECEIVE_TIMEOUT)
                .max(MIN_RECEIVE_TIMEOUT),
            probe: None,
            settings,
            positions: StreamPositions {
                received: start,
                server_wal_end: start,
                acknowledged: start,
                reported_flush: start,
                idle_wal_end: None,
            },
            last_commit_end: start,
        }
    }

    /// Current positions.
    pub fn positions(&self) -> StreamPositions {
        StreamPositions {
            idle_wal_end: self.idle_wal_end(),
            ..self.positions
        }
    }

    /// See [`StreamPositions::idle_wal_end`].
    fn idle_wal_end(&self) -> Option<Lsn> {
        let p = &self.positions;
        let idle = !self.in_transaction() && p.acknowledged >= self.last_commit_end;
        (idle && p.server_wal_end > p.acknowledged).then_some(p.server_wal_end)
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

    /// The flush position to report now: what the caller acknowledged, or, when
    /// nothing is in flight and the settings allow it, the server's WAL end (so an
    /// idle outbox on a busy database holds back no WAL). Never lower than before.
    pub fn flush_position(&self) -> Lsn {
        let p = &self.positions;
        let target = match self.idle_wal_end() {
            Some(wal_end) if self.settings.confirm_idle_wal_end => wal_end,
            _ => p.acknowledged,
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
        // A write that cannot complete means the peer stopped taking data: as dead
        // as a silent one, and it must not stall us past the receive timeout.
        tokio::time::timeout(self.receive_timeout, self.conn.flush())
            .await
            .map_err(|_| {
                conn_timeout_error(
                    self.conn.peer(),
                    "sending a standby status update (the server takes no data; the network \
                     path may be dropping packets)",
                    self.receive_timeout,
                )
            })??;
        self.positions.reported_flush = flush;
        self.next_status = Instant::now() + self.settings.status_interval;
        tracing::trace!(write = %update.write, flush = %flush, "standby status sent");
        Ok(())
    }

    /// The next event. While waiting it sends status updates on the timer, and it
    /// answers keepalives that ask for a reply before returning them. Fails with
    /// [`Error::ReceiveTimeout`] when the server stays silent (see the module docs).
    /// Cancellation-safe: a frame half read stays buffered, a status update half
    /// written stays queued, and the silence is measured from the last byte received.
    pub async fn next_event(&mut self) -> Result<StreamEvent, Error> {
        loop {
            let due = self.next_status;
            let (silence_deadline, probing) = self.silence_deadline();
            let message = tokio::select! {
                // Data already buffered wins over a timer that fired meanwhile (say,
                // while the caller was not reading because of backpressure).
                biased;
                m = self.conn.read_message() => m?,
                _ = tokio::time::sleep_until(due) => {
                    self.send_status(false).await?;
                    continue;
                }
                _ = tokio::time::sleep_until(silence_deadline) => {
                    if probing {
                        return Err(Error::ReceiveTimeout {
                            peer: self.conn.peer().to_owned(),
                            silent: self.conn.last_received().elapsed(),
                            timeout: self.receive_timeout,
                        });
                    }
                    let received = self.conn.bytes_received();
                    self.send_status(true).await?;
                    self.probe = Some((Instant::now(), received));
                    tracing::debug!(peer = self.conn.peer(), "server silent; keepalive requested");
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

    /// When to act on the server's silence, and whether that is the failure (a
    /// keepalive request is outstanding) or the time to send one.
    fn silence_deadline(&mut self) -> (Instant, bool) {
        let half = self.receive_timeout / 2;
        match self.probe {
            Some((sent, received)) if self.conn.bytes_received() == received => (sent + half, true),
            _ => {
                self.probe = None;
                (self.conn.last_received() + half, false)
            }
        }
    }

    async fn handle_frame(&mut self, payload: Bytes) -> Result<StreamEvent, Error> {
        match ServerFrame::parse(payload)? {
            ServerFrame::XLogData {
                wal_start,
                wal_end,
                server_time,
                data,
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
                    server_time,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receive_timeout_follows_wal_sender_timeout_unless_set() {
        let derived = |server| {
            StreamSettings::default()
                .for_timeout(server)
                .receive_timeout
        };
        assert_eq!(
            derived(Some(Duration::from_secs(10))),
            Some(Duration::from_secs(15))
        );
        assert_eq!(
            derived(Some(Duration::from_secs(60))),
            Some(Duration::from_secs(65))
        );
        // wal_sender_timeout = 0: the server never gives up, we do after a minute.
        assert_eq!(derived(None), Some(DEFAULT_RECEIVE_TIMEOUT));
        let set = StreamSettings {
            receive_timeout: Some(Duration::from_secs(3)),
            ..StreamSettings::default()
        };
        assert_eq!(
            set.for_timeout(Some(Duration::from_secs(60)))
                .receive_timeout,
            Some(Duration::from_secs(3))
        );
    }

    #[test]
    fn a_receive_timeout_is_retryable_and_says_what_to_check() {
        let e = Error::ReceiveTimeout {
            peer: "db:5432".to_owned(),
            silent: Duration::from_secs(15),
            timeout: Duration::from_secs(15),
        };
        assert!(e.is_retryable());
        let text = e.to_string();
        for needle in ["db:5432", "15s", "dropping packets", "receive_timeout_secs"] {
            assert!(text.contains(needle), "{needle} missing in: {text}");
        }
    }
}
