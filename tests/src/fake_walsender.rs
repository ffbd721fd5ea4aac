//! A fake walsender for testing the replication client against a server that
//! misbehaves: a TCP listener on 127.0.0.1 that speaks just enough of the protocol. It
//! accepts the startup, answers START_REPLICATION with CopyBothResponse and then sends
//! whatever the scenario says, recording what the client sent.

pub mod frames;
pub mod random;

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use outboxd_pgoutput::Lsn;
use outboxd_replication::{
    ConnectOptions, Error, LogicalStream, ReplicationClient, SslMode, StartOptions, StreamEvent,
    StreamSettings,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::timeout;

use frames::{
    auth_ok, backend_key_data, command_complete, copy_both_response, keepalive, parameter_status,
    ready_for_query,
};

/// How long any scenario may take to produce its error.
pub const PROMPTLY: Duration = Duration::from_secs(5);

/// One thing the fake server does.
#[derive(Debug, Clone)]
pub enum Step {
    Send(Vec<u8>),
    /// Half-close (FIN) and wait for the client to hang up: a close that never turns
    /// into a reset, so the client reads everything sent before it.
    Close,
}

/// What the fake server received from the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    Startup(Vec<(String, String)>),
    Query(String),
    CopyData(Vec<u8>),
}

/// A fake walsender serving one connection; its task ends when dropped.
#[derive(Debug)]
pub struct FakeServer {
    /// The port it listens on (127.0.0.1).
    pub port: u16,
    received: mpsc::UnboundedReceiver<Received>,
    task: JoinHandle<io::Result<()>>,
    answers_keepalive_requests: Arc<AtomicBool>,
}

impl FakeServer {
    /// Listens on an ephemeral port and serves one connection: `startup` answers the
    /// startup packet, `streaming` follows the CopyBothResponse to START_REPLICATION.
    pub async fn start(startup: Vec<Step>, streaming: Vec<Step>) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("local address").port();
        let (tx, received) = mpsc::unbounded_channel();
        let answers_keepalive_requests = Arc::new(AtomicBool::new(false));
        let answers = answers_keepalive_requests.clone();
        let task = tokio::spawn(async move {
            let (socket, _) = listener.accept().await?;
            serve(socket, startup, streaming, tx, answers).await
        });
        FakeServer {
            port,
            received,
            task,
            answers_keepalive_requests,
        }
    }

    /// From now on, answer a status update that asks for a reply with a keepalive,
    /// as a walsender does.
    pub fn answer_keepalive_requests(&self) {
        self.answers_keepalive_requests
            .store(true, Ordering::Relaxed);
    }

    /// The error connecting to a server that answers the startup packet with `startup`.
    pub async fn startup_error(startup: Vec<Step>) -> Error {
        let fake = FakeServer::start(startup, vec![]).await;
        timeout(PROMPTLY, ReplicationClient::connect(&fake.options()))
            .await
            .expect("the startup fails promptly")
            .expect_err("the startup fails")
    }

    /// A server that starts up normally and then streams `streaming`.
    pub async fn streaming(streaming: Vec<Step>) -> FakeServer {
        FakeServer::start(normal_startup(), streaming).await
    }

    pub fn options(&self) -> ConnectOptions {
        ConnectOptions {
            hosts: vec![outboxd_replication::Host::new("127.0.0.1", self.port)],
            user: "fake_user".to_owned(),
            password: None,
            dbname: "fake_db".to_owned(),
            sslmode: SslMode::Disable,
            connect_timeout: Duration::from_secs(5),
            ..ConnectOptions::default()
        }
    }

    /// Connects and starts streaming with `settings`.
    pub async fn stream_with(&self, settings: StreamSettings) -> LogicalStream {
        let client = timeout(PROMPTLY, ReplicationClient::connect(&self.options()))
            .await
            .expect("startup against the fake server hangs")
            .expect("startup against the fake server");
        assert_eq!(client.server_major_version(), Some(15));
        let start = StartOptions {
            slot: "fake_slot".to_owned(),
            start_lsn: Lsn::ZERO,
            publications: vec!["pub".to_owned()],
            messages: false,
        };
        timeout(PROMPTLY, client.start(&start, settings))
            .await
            .expect("START_REPLICATION against the fake server hangs")
            .expect("START_REPLICATION against the fake server")
    }

    pub async fn stream(&self) -> LogicalStream {
        self.stream_with(StreamSettings::default()).await
    }

    /// A stream that gives up after `receive_timeout` of silence.
    pub async fn stream_with_receive_timeout(&self, receive_timeout: Duration) -> LogicalStream {
        self.stream_with(StreamSettings {
            receive_timeout: Some(receive_timeout),
            ..StreamSettings::default()
        })
        .await
    }

    /// Waits (briefly) for something the client sent that `pick` selects.
    pub async fn wait_for<T>(&mut self, mut pick: impl FnMut(&Received) -> Option<T>) -> Option<T> {
        timeout(PROMPTLY, async {
            while let Some(r) = self.received.recv().await {
                if let Some(t) = pick(&r) {
                    return Some(t);
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn normal_startup() -> Vec<Step> {
    vec![Step::Send(
        [
            auth_ok(),
            parameter_status("server_version", "15.0"),
            backend_key_data(),
            ready_for_query(),
        ]
        .concat(),
    )]
}

async fn serve(
    mut socket: TcpStream,
    startup: Vec<Step>,
    streaming: Vec<Step>,
    tx: mpsc::UnboundedSender<Received>,
    answers_keepalive_requests: Arc<AtomicBool>,
) -> io::Result<()> {
    // The startup packet (after an SSLRequest, which we decline, if one comes).
    loop {
        let len = socket.read_u32().await? as usize;
        let mut body = vec![0; len.saturating_sub(4)];
        socket.read_exact(&mut body).await?;
        if body.get(..4) == Some(&80_877_103u32.to_be_bytes()[..]) {
            socket.write_all(b"N").await?;
            continue;
        }
        let strings: Vec<String> = body
            .get(4..)
            .unwrap_or_default()
            .split(|b| *b == 0)
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect();
        let params = strings
            .chunks(2)
            .filter(|kv| kv.len() == 2 && !kv[0].is_empty())
            .map(|kv| (kv[0].clone(), kv[1].clone()))
            .collect();
        let _ = tx.send(Received::Startup(params));
        break;
    }
    if !run(&mut socket, startup).await? {
        return Ok(());
    }
    let mut streaming = Some(streaming);
    loop {
        let tag = match socket.read_u8().await {
            Ok(tag) => tag,
            Err(_) => return Ok(()),
        };
        let len = socket.read_u32().await? as usize;
        let mut body = vec![0; len.saturating_sub(4)];
        socket.read_exact(&mut body).await?;
        match tag {
            b'Q' => {
                let sql = String::from_utf8_lossy(&body)
                    .trim_end_matches('\0')
                    .to_owned();
                let start = sql.starts_with("START_REPLICATION");
                let _ = tx.send(Received::Query(sql));
                if start {
                    socket.write_all(&copy_both_response()).await?;
                    let steps = streaming.take().unwrap_or_default();
                    if !run(&mut socket, steps).await? {
                        return Ok(());
                    }
                } else {
                    socket
                        .write_all(&[command_complete("SELECT 0"), ready_for_query()].concat())
                        .await?;
                }
            }
            b'd' => {
                if answers_keepalive_requests.load(Ordering::Relaxed)
                    && body.first() == Some(&b'r')
                    && body.last() == Some(&1)
                {
                    socket.write_all(&keepalive(Lsn(0x10), false)).await?;
                }
                let _ = tx.send(Received::CopyData(body));
            }
            b'X' => return Ok(()),
            _ => {}
        }
    }
}

/// Runs `steps`; `false` when the connection was closed.
async fn run(socket: &mut TcpStream, steps: Vec<Step>) -> io::Result<bool> {
    for step in steps {
        match step {
            Step::Send(bytes) => {
                socket.write_all(&bytes).await?;
                socket.flush().await?;
            }
            Step::Close => {
                socket.shutdown().await?;
                let mut sink = [0u8; 4096];
                while matches!(socket.read(&mut sink).await, Ok(n) if n > 0) {}
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// Reads events until the first error, which must come within [`PROMPTLY`].
pub async fn first_error(stream: &mut LogicalStream) -> (Vec<StreamEvent>, Error) {
    let read = async {
        let mut events = Vec::new();
        loop {
            match stream.next_event().await {
                Ok(e) => {
                    assert!(events.len() < 10_000, "endless events");
                    events.push(e);
                }
                Err(e) => return (events, e),
            }
        }
    };
    timeout(PROMPTLY, read)
        .await
        .expect("the stream neither failed nor ended within 5 s")
}

/// A short name for the kind of a replication error, for tallying outcomes.
pub fn error_kind(e: &Error) -> &'static str {
    match e {
        Error::Io { .. } => "io",
        Error::Protocol(_) => "protocol",
        Error::Decode { .. } => "decode",
        Error::Server { .. } => "server",
        Error::Auth { .. } => "auth",
        Error::StreamClosed => "stream-closed",
        _ => "other",
    }
}
