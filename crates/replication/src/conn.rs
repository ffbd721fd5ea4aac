//! A framed PostgreSQL protocol-3 connection, just enough for replication.
//!
//! tokio-postgres cannot enter CopyBoth mode, so the replication connection is ours:
//! TCP (optionally TLS), startup with `replication=database`, authentication (trust,
//! cleartext, md5, SCRAM-SHA-256), the simple query protocol, and CopyBoth frames.
//! Messages are framed and parsed with `postgres-protocol`; CopyBothResponse (`W`),
//! which its parser does not know, is handled here.
//!
//! Reading is cancellation-safe: partial frames stay in the connection's buffer, so
//! `read_message` can sit in a `tokio::select!` next to timers.

mod auth;

use std::collections::HashMap;
use std::io;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use fallible_iterator::FallibleIterator;
use postgres_protocol::message::backend::{ErrorFields, Message};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::config::{ConnectOptions, Host};
use crate::error::{Error, ServerError};
use crate::hosts::{self, Rejection};
use crate::session_attrs::{self, ServerState};
use crate::transport::{negotiate_tls, set_tcp_keepalive, Transport};

/// The largest backend message we accept. Postgres itself caps a field at 1 GiB; a
/// frame beyond that is garbage, and buffering it would exhaust memory.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 1 << 30;

/// The most the read buffer grows by ahead of data actually received.
const READ_CHUNK_BYTES: usize = 1 << 20;

/// One backend message: everything `postgres-protocol` parses, plus CopyBothResponse.
pub(crate) enum Backend {
    Message(Message),
    CopyBothResponse,
}

/// Rows of a simple query, every value as text.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct QueryResult {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Option<String>>>,
}

impl QueryResult {
    /// The value of `column` in the first row.
    pub fn first(&self, column: &str) -> Option<&str> {
        let idx = self.columns.iter().position(|c| c == column)?;
        self.rows.first()?.get(idx)?.as_deref()
    }
}

/// A connection speaking the frontend/backend protocol.
#[derive(Debug)]
pub struct PgConnection {
    transport: Transport,
    read_buf: BytesMut,
    write_buf: BytesMut,
    peer: String,
    max_message_bytes: usize,
    parameters: HashMap<String, String>,
    /// When bytes last arrived from the server, and how many so far: the stream's
    /// receive timeout measures silence with them.
    last_received: Instant,
    bytes_received: u64,
}

impl PgConnection {
    /// Connects to the first host of `opts` that accepts the connection and
    /// matches `target_session_attrs` (see `hosts`), negotiating TLS per `sslmode`,
    /// starting up and authenticating. With `replication` the session is a
    /// walsender (`replication=database`).
    pub async fn connect(opts: &ConnectOptions, replication: bool) -> Result<Self, Error> {
        hosts::connect_first(opts, async |host, wanted| {
            let mut conn = Self::connect_host(opts, host, replication)
                .await
                .map_err(Rejection::Failed)?;
            let reported = ServerState::reported(|name| conn.parameter(name));
            let checked = session_attrs::check_session(wanted, reported, async |sql| {
                let result = conn.simple_query(sql).await?;
                Ok(result
                    .rows
                    .first()
                    .and_then(|row| row.first().cloned().flatten()))
            })
            .await;
            match checked {
                Ok(()) => Ok(conn),
                Err(rejection) => {
                    conn.terminate().await;
                    Err(rejection)
                }
            }
        })
        .await
    }

    /// Connects to `host` (its `hostaddr` if given), then as `connect`.
    async fn connect_host(
        opts: &ConnectOptions,
        host: &Host,
        replication: bool,
    ) -> Result<Self, Error> {
        let peer = host.to_string();
        let io_err = |source| Error::Io {
            peer: peer.clone(),
            source,
        };
        let address = host
            .hostaddr
            .map_or_else(|| host.host.clone(), |a| a.to_string());
        let tcp = TcpStream::connect((address.as_str(), host.port));
        let tcp = tokio::time::timeout(opts.connect_timeout, tcp)
            .await
            .map_err(|_| {
                io_err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("connect timed out after {:?}", opts.connect_timeout),
                ))
            })?
            .map_err(io_err)?;
        tcp.set_nodelay(true).map_err(io_err)?;
        set_tcp_keepalive(&tcp).map_err(io_err)?;

        let transport = negotiate_tls(tcp, opts, host).await?;
        let mut conn = PgConnection {
            transport,
            read_buf: BytesMut::with_capacity(64 * 1024),
            write_buf: BytesMut::with_capacity(1024),
            peer,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            parameters: HashMap::new(),
            last_received: Instant::now(),
            bytes_received: 0,
        };
        tokio::time::timeout(opts.connect_timeout, conn.startup(opts, replication))
            .await
            .map_err(|_| {
                conn_timeout_error(
                    &conn.peer,
                    "startup and authentication",
                    opts.connect_timeout,
                )
            })??;
        Ok(conn)
    }

    /// The `host:port` we are connected to.
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// Whether the connection is encrypted.
    pub fn is_tls(&self) -> bool {
        matches!(self.transport, Transport::Tls(_))
    }

    /// A run-time parameter the server reported (`server_version`, …).
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.parameters.get(name).map(String::as_str)
    }

    /// The server's major version from `server_version` (e.g. 15), if known.
    pub fn server_major_version(&self) -> Option<u32> {
        self.parameter("server_version")?
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    }

    /// Caps the size of one backend message.
    pub fn set_max_message_bytes(&mut self, max: usize) {
        self.max_message_bytes = max;
    }

    /// When the last bytes arrived from the server (any bytes, so that a huge
    /// message arriving slowly counts as life).
    pub(crate) fn last_received(&self) -> Instant {
        self.last_received
    }

    /// Bytes received from the server so far (after TLS).
    pub(crate) fn bytes_received(&self) -> u64 {
        self.bytes_received
    }

    async fn startup(&mut self, opts: &ConnectOptions, replication: bool) -> Result<(), Error> {
        let mut params: Vec<(&str, &str)> = vec![
            ("user", opts.user.as_str()),
            ("database", opts.database()),
            ("application_name", opts.application_name.as_str()),
            ("client_encoding", "UTF8"),
            // Dates and times in the text form the relay's router parses.
            ("DateStyle", "ISO"),
        ];
        if replication {
            params.push(("replication", "database"));
        }
        if let Some(options) = &opts.options {
            params.push(("options", options.as_str()));
        }
        frontend::startup_message(params, &mut self.write_buf).map_err(|e| self.io(e))?;
        self.flush().await?;
        self.authenticate(opts).await?;
        // ParameterStatus and BackendKeyData until the server is ready.
        loop {
            match self.read_message().await? {
                Backend::Message(Message::ParameterStatus(p)) => {
                    let name = p.name().map_err(|e| self.io(e))?.to_owned();
                    let value = p.value().map_err(|e| self.io(e))?.to_owned();
                    self.parameters.insert(name, value);
                }
                Backend::Message(Message::BackendKeyData(_))
                | Backend::Message(Message::NoticeResponse(_)) => {}
                Backend::Message(Message::ReadyForQuery(_)) => return Ok(()),
                Backend::Message(Message::ErrorResponse(body)) => {
                    return Err(Error::Server {
                        during: "startup".to_owned(),
                        error: Box::new(server_error(body.fields())),
                    })
                }
                other => return Err(unexpected("startup", &other)),
            }
        }
    }

    /// Runs one command with the simple query protocol and collects its rows as text.
    pub async fn simple_query(&mut self, sql: &str) -> Result<QueryResult, Error> {
        frontend::query(sql, &mut self.write_buf).map_err(|e| self.io(e))?;
        self.flush().await?;
        let mut result = QueryResult::default();
        let mut failure = None;
        loop {
            match self.read_message().await? {
                Backend::Message(Message::RowDescription(body)) => {
                    let mut fields = body.fields();
                    while let Some(f) = fields.next().map_err(|e| self.io(e))? {
                        result.columns.push(f.name().to_owned());
                    }
                }
                Backend::Message(Message::DataRow(body)) => {
                    let mut row = Vec::new();
                    let mut ranges = body.ranges();
                    while let Some(range) = ranges.next().map_err(|e| self.io(e))? {
                        row.push(
                            range
                                .and_then(|r| body.buffer().get(r))
                                .map(|v| String::from_utf8_lossy(v).into_owned()),
                        );
                    }
                    result.rows.push(row);
                }
                Backend::Message(Message::ErrorResponse(body)) => {
                    failure = Some(server_error(body.fields()));
                }
                Backend::Message(Message::ReadyForQuery(_)) => {
                    return match failure {
                        Some(error) => Err(Error::Server {
                            during: first_words(sql),
                            error: Box::new(error),
                        }),
                        None => Ok(result),
                    }
                }
                Backend::Message(
                    Message::CommandComplete(_)
                    | Message::EmptyQueryResponse
                    | Message::NoticeResponse(_)
                    | Message::ParameterStatus(_),
                ) => {}
                other => return Err(unexpected(&first_words(sql), &other)),
            }
        }
    }

    /// Sends a command that answers with CopyBothResponse (START_REPLICATION) and waits
    /// for that answer.
    pub async fn start_copy_both(&mut self, sql: &str) -> Result<(), Error> {
        frontend::query(sql, &mut self.write_buf).map_err(|e| self.io(e))?;
        self.flush().await?;
        loop {
            match self.read_message().await? {
                Backend::CopyBothResponse => return Ok(()),
                Backend::Message(Message::NoticeResponse(_)) => {}
                Backend::Message(Message::ErrorResponse(body)) => {
                    let error = server_error(body.fields());
                    // The server follows an error with ReadyForQuery; consume it so the
                    // connection stays usable, but do not let a broken one hide the error.
                    let _ = tokio::time::timeout(Duration::from_secs(1), self.read_message()).await;
                    return Err(Error::Server {
                        during: first_words(sql),
                        error: Box::new(error),
                    });
                }
                other => return Err(unexpected(&first_words(sql), &other)),
            }
        }
    }

    /// Reads the next backend message. Cancellation-safe.
    pub(crate) async fn read_message(&mut self) -> Result<Backend, Error> {
        loop {
            if let Some(message) = self.parse_buffered()? {
                return Ok(message);
            }
            let n = self
                .transport
                .read_buf(&mut self.read_buf)
                .await
                .map_err(|e| self.io(e))?;
            if n > 0 {
                self.last_received = Instant::now();
                self.bytes_received += n as u64;
            }
            if n == 0 {
                return Err(self.io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    if self.read_buf.is_empty() {
                        "the server closed the connection"
                    } else {
                        "the server closed the connection in the middle of a message"
                    },
                )));
            }
        }
    }

    /// Whether a complete message is already buffered, so that reading it will not
    /// wait for the network.
    pub(crate) fn has_buffered_message(&self) -> bool {
        let b = &self.read_buf;
        b.len() >= 5 && b.len() > u32::from_be_bytes([b[1], b[2], b[3], b[4]]) as usize
    }

    /// Takes one complete message off the read buffer, if there is one.
    fn parse_buffered(&mut self) -> Result<Option<Backend>, Error> {
        if self.read_buf.len() < 5 {
            return Ok(None);
        }
        let tag = self.read_buf[0];
        let len = u32::from_be_bytes([
            self.read_buf[1],
            self.read_buf[2],
            self.read_buf[3],
            self.read_buf[4],
        ]) as usize;
        if len < 4 || len > self.max_message_bytes {
            return Err(Error::protocol(format!(
                "backend message '{}' declares length {len} (allowed 4..={})",
                tag.escape_ascii(),
                self.max_message_bytes
            )));
        }
        let total = len + 1;
        if self.read_buf.len() < total {
            // Grow with the data, not with the header's promise: a lying header must
            // not make us reserve up to the cap before a byte of it has arrived.
            self.read_buf
                .reserve((total - self.read_buf.len()).min(READ_CHUNK_BYTES));
            return Ok(None);
        }
        if tag == b'W' {
            // CopyBothResponse: format and per-column formats; nothing we need.
            self.read_buf.advance(total);
            return Ok(Some(Backend::CopyBothResponse));
        }
        match Message::parse(&mut self.read_buf) {
            Ok(Some(m)) => Ok(Some(Backend::Message(m))),
            Ok(None) => Err(Error::protocol(
                "framing disagreement while parsing a message",
            )),
            Err(e) => Err(Error::protocol(format!(
                "malformed backend message '{}': {e}",
                tag.escape_ascii()
            ))),
        }
    }

    /// Queues one CopyData frame with `payload`.
    pub(crate) fn queue_copy_data(&mut self, payload: &[u8]) -> Result<(), Error> {
        let data = frontend::CopyData::new(payload).map_err(|e| self.io(e))?;
        data.write(&mut self.write_buf);
        Ok(())
    }

    /// Queues CopyDone.
    pub(crate) fn queue_copy_done(&mut self) {
        frontend::copy_done(&mut self.write_buf);
    }

    /// Writes everything queued. Cancellation-safe: what was not written yet stays
    /// queued (a frame is never half dropped) and goes out with the next flush.
    pub(crate) async fn flush(&mut self) -> Result<(), Error> {
        self.transport
            .write_all_buf(&mut self.write_buf)
            .await
            .map_err(|e| self.io(e))?;
        self.transport.flush().await.map_err(|e| self.io(e))
    }

    /// Says goodbye (Terminate) and closes the socket; errors are irrelevant by now.
    pub async fn terminate(mut self) {
        frontend::terminate(&mut self.write_buf);
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            let _ = self.flush().await;
            let _ = self.transport.shutdown().await;
        })
        .await;
    }

    fn io(&self, source: io::Error) -> Error {
        Error::Io {
            peer: self.peer.clone(),
            source,
        }
    }
}

pub(crate) fn conn_timeout_error(peer: &str, what: &str, after: Duration) -> Error {
    Error::Io {
        peer: peer.to_owned(),
        source: io::Error::new(
            io::ErrorKind::TimedOut,
            format!("{what} timed out after {after:?}"),
        ),
    }
}

/// Collects an ErrorResponse / NoticeResponse without trusting it to be UTF-8.
pub(crate) fn server_error(mut fields: ErrorFields<'_>) -> ServerError {
    let mut error = ServerError {
        severity: "ERROR".to_owned(),
        code: "XX000".to_owned(),
        message: String::new(),
        detail: None,
        hint: None,
    };
    while let Ok(Some(field)) = fields.next() {
        let value = String::from_utf8_lossy(field.value_bytes()).into_owned();
        match field.type_() {
            b'V' => error.severity = value,
            b'C' => error.code = value,
            b'M' => error.message = value,
            b'D' => error.detail = Some(value),
            b'H' => error.hint = Some(value),
            _ => {}
        }
    }
    error
}

fn first_words(sql: &str) -> String {
    sql.split_whitespace().take(2).collect::<Vec<_>>().join(" ")
}

fn unexpected(during: &str, message: &Backend) -> Error {
    let name = match message {
        Backend::CopyBothResponse => "CopyBothResponse",
        Backend::Message(m) => message_name(m),
    };
    Error::protocol(format!("unexpected {name} during {during}"))
}

fn message_name(m: &Message) -> &'static str {
    match m {
        Message::CopyData(_) => "CopyData",
        Message::CopyDone => "CopyDone",
        Message::CopyInResponse(_) => "CopyInResponse",
        Message::CopyOutResponse(_) => "CopyOutResponse",
        Message::DataRow(_) => "DataRow",
        Message::RowDescription(_) => "RowDescription",
        Message::ReadyForQuery(_) => "ReadyForQuery",
        Message::CommandComplete(_) => "CommandComplete",
        Message::ErrorResponse(_) => "ErrorResponse",
        Message::NoticeResponse(_) => "NoticeResponse",
        Message::ParameterStatus(_) => "ParameterStatus",
        Message::AuthenticationOk => "AuthenticationOk",
        _ => "message",
    }
}

/// Copies a CopyData payload out of a message (zero-copy: a slice of the read buffer).
pub(crate) fn copy_data_payload(message: Message) -> Option<Bytes> {
    match message {
        Message::CopyData(body) => Some(body.into_bytes()),
        _ => None,
    }
}
