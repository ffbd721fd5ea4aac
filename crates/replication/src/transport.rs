//! The byte stream under the protocol: TCP with keepalives and a user timeout, and
//! TLS negotiated the PostgreSQL way (an SSLRequest before the TLS handshake).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::config::{ConnectOptions, Host, SslMode};
use crate::conn::conn_timeout_error;
use crate::error::Error;
use crate::tls;

/// TCP keepalive: probe after 30 s of silence, every 10 s, give up after 3 misses.
/// A backstop for the moments without an application-level timeout (commands that
/// may legitimately wait, such as CREATE_REPLICATION_SLOT): a peer that vanished
/// without a FIN or RST is noticed within about a minute instead of never.
pub(crate) const TCP_KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
pub(crate) const TCP_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
pub(crate) const TCP_KEEPALIVE_RETRIES: u32 = 3;
/// How long sent data may stay unacknowledged before the kernel drops the
/// connection (Linux `TCP_USER_TIMEOUT`); without it a write into a dead path
/// sits in the socket buffer for the ~15 minutes of TCP's retransmissions.
pub(crate) const TCP_USER_TIMEOUT: Duration = Duration::from_secs(60);

/// The byte stream under the protocol: plain TCP or TLS over TCP.
#[derive(Debug)]
pub(crate) enum Transport {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_flush(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Asks for TLS when the options want it; the stream to speak the protocol over.
pub(crate) async fn negotiate_tls(
    mut tcp: TcpStream,
    opts: &ConnectOptions,
    host: &Host,
) -> Result<Transport, Error> {
    let Some(config) = tls::client_config(opts)? else {
        return Ok(Transport::Plain(tcp));
    };
    let peer = &host.to_string();
    let io_err = |source| Error::Io {
        peer: peer.to_owned(),
        source,
    };
    let mut request = BytesMut::new();
    frontend::ssl_request(&mut request);
    tcp.write_all(&request).await.map_err(io_err)?;
    let answer = tokio::time::timeout(opts.connect_timeout, tcp.read_u8())
        .await
        .map_err(|_| conn_timeout_error(peer, "the TLS request", opts.connect_timeout))?
        .map_err(io_err)?;
    match answer {
        b'S' => {
            let name = tls::server_name(host)?;
            let stream = tokio::time::timeout(
                opts.connect_timeout,
                TlsConnector::from(config).connect(name, tcp),
            )
            .await
            .map_err(|_| conn_timeout_error(peer, "the TLS handshake", opts.connect_timeout))?
            .map_err(|e| Error::Tls {
                peer: peer.to_owned(),
                reason: e.to_string(),
            })?;
            Ok(Transport::Tls(Box::new(stream)))
        }
        b'N' if opts.sslmode == SslMode::Prefer => Ok(Transport::Plain(tcp)),
        b'N' => Err(Error::Tls {
            peer: peer.to_owned(),
            reason: format!(
                "the server does not accept TLS connections, but sslmode={:?} requires TLS",
                opts.sslmode
            ),
        }),
        other => Err(Error::protocol(format!(
            "unexpected answer '{}' to the TLS request",
            other.escape_ascii()
        ))),
    }
}

/// Keepalive probes and `TCP_USER_TIMEOUT` (Linux) on the socket.
pub(crate) fn set_tcp_keepalive(tcp: &TcpStream) -> io::Result<()> {
    let socket = socket2::SockRef::from(tcp);
    socket.set_tcp_keepalive(
        &socket2::TcpKeepalive::new()
            .with_time(TCP_KEEPALIVE_IDLE)
            .with_interval(TCP_KEEPALIVE_INTERVAL)
            .with_retries(TCP_KEEPALIVE_RETRIES),
    )?;
    #[cfg(target_os = "linux")]
    socket.set_tcp_user_timeout(Some(TCP_USER_TIMEOUT))?;
    Ok(())
}
