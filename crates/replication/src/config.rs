//! Connection options: the servers to try and how to talk to them.
//!
//! They are parsed (in `connstr`) from a libpq-style URL or `key=value` string
//! instead of through `tokio_postgres::Config` because the replication connection
//! needs the whole libpq `sslmode` range (`verify-ca`, `verify-full`),
//! `sslrootcert` and `target_session_attrs`, which tokio-postgres does not fully
//! model. The admin connection is then built from the same options, so both
//! connections always agree.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use crate::error::Error;

/// libpq's `sslmode`, with libpq's meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    /// Plain TCP only.
    Disable,
    /// TLS when the server offers it, plain TCP otherwise.
    #[default]
    Prefer,
    /// TLS, no certificate check (as libpq without a root certificate).
    Require,
    /// TLS, the server certificate must chain to `sslrootcert`.
    VerifyCa,
    /// As `VerifyCa`, and the certificate must name the host we connected to.
    VerifyFull,
}

impl FromStr for SslMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "allow" | "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(Error::config(format!(
                "unknown sslmode '{other}': use disable, prefer, require, verify-ca or verify-full"
            )))
            }
        })
    }
}

/// libpq's `target_session_attrs`: which of the listed servers is acceptable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TargetSessionAttrs {
    /// The first server that accepts the connection.
    #[default]
    Any,
    /// A session that accepts writes by default: not a standby, and
    /// `default_transaction_read_only` off.
    ReadWrite,
    /// The converse of `ReadWrite`.
    ReadOnly,
    /// A server not in hot standby mode.
    Primary,
    /// A server in hot standby mode.
    Standby,
    /// A standby if any of the servers is one; otherwise any server.
    PreferStandby,
}

impl TargetSessionAttrs {
    /// The name in connection strings.
    pub fn as_str(self) -> &'static str {
        match self {
            TargetSessionAttrs::Any => "any",
            TargetSessionAttrs::ReadWrite => "read-write",
            TargetSessionAttrs::ReadOnly => "read-only",
            TargetSessionAttrs::Primary => "primary",
            TargetSessionAttrs::Standby => "standby",
            TargetSessionAttrs::PreferStandby => "prefer-standby",
        }
    }
}

impl fmt::Display for TargetSessionAttrs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TargetSessionAttrs {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Ok(match s {
            "any" => TargetSessionAttrs::Any,
            "read-write" => TargetSessionAttrs::ReadWrite,
            "read-only" => TargetSessionAttrs::ReadOnly,
            "primary" => TargetSessionAttrs::Primary,
            "standby" => TargetSessionAttrs::Standby,
            "prefer-standby" => TargetSessionAttrs::PreferStandby,
            other => {
                return Err(Error::config(format!(
                    "unknown target_session_attrs '{other}': use any, read-write, read-only, \
                     primary, standby or prefer-standby"
                )))
            }
        })
    }
}

/// One server of the list: libpq's `host`, `hostaddr` and `port` at one index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// The name to connect to, and the name a `verify-full` certificate must carry.
    pub host: String,
    /// The address to connect to instead of resolving `host` (libpq's `hostaddr`).
    pub hostaddr: Option<IpAddr>,
    pub port: u16,
}

impl Host {
    pub fn new(host: impl Into<String>, port: u16) -> Host {
        Host {
            host: host.into(),
            hostaddr: None,
            port,
        }
    }
}

/// `host:port`, with brackets around an IPv6 address.
impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Everything needed to reach a PostgreSQL server: the servers to try in order,
/// and the options common to all of them.
///
/// `Debug` leaves the password out so that options can be logged.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnectOptions {
    /// Tried in this order until one accepts the connection and matches
    /// `target_session_attrs`.
    pub hosts: Vec<Host>,
    pub user: String,
    pub password: Option<String>,
    pub dbname: String,
    pub application_name: String,
    pub sslmode: SslMode,
    /// PEM file with the CA certificate(s) to trust; the system roots when absent.
    pub sslrootcert: Option<PathBuf>,
    /// The bound on connecting to one host (each host of the list has its own).
    pub connect_timeout: Duration,
    /// Run-time parameters for the session (libpq's `options`, e.g.
    /// `-c wal_sender_timeout=5s`).
    pub options: Option<String>,
    pub target_session_attrs: TargetSessionAttrs,
}

impl fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("hosts", &self.host_list())
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("dbname", &self.dbname)
            .field("application_name", &self.application_name)
            .field("sslmode", &self.sslmode)
            .field("sslrootcert", &self.sslrootcert)
            .field("connect_timeout", &self.connect_timeout)
            .field("options", &self.options)
            .field("target_session_attrs", &self.target_session_attrs)
            .finish()
    }
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            hosts: vec![Host::new(DEFAULT_HOST, DEFAULT_PORT)],
            user: "postgres".to_owned(),
            password: None,
            dbname: String::new(),
            application_name: "outboxd".to_owned(),
            sslmode: SslMode::Prefer,
            sslrootcert: None,
            connect_timeout: Duration::from_secs(10),
            options: None,
            target_session_attrs: TargetSessionAttrs::Any,
        }
    }
}

/// libpq's defaults for an empty host or port (we have no Unix sockets).
pub(crate) const DEFAULT_HOST: &str = "localhost";
pub(crate) const DEFAULT_PORT: u16 = 5432;

impl ConnectOptions {
    /// The database to connect to: `dbname`, or the user name as libpq does.
    pub fn database(&self) -> &str {
        if self.dbname.is_empty() {
            &self.user
        } else {
            &self.dbname
        }
    }

    /// A `host:port[,host:port…]/db as user` description for logs and errors
    /// (never the password). A connection names the one host it reached.
    pub fn describe(&self) -> String {
        self.describe_at(&self.host_list())
    }

    /// As `describe`, for a connection to `host`.
    pub(crate) fn describe_host(&self, host: &Host) -> String {
        self.describe_at(&host.to_string())
    }

    fn describe_at(&self, hosts: &str) -> String {
        format!("{hosts}/{} as {}", self.database(), self.user)
    }

    /// `host:port,host:port…`.
    pub(crate) fn host_list(&self) -> String {
        self.hosts
            .iter()
            .map(Host::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A tokio-postgres configuration for an ordinary SQL connection to `host`
    /// (one host: the admin connection tries the list itself, as the replication
    /// connection does, so that both follow the same rules).
    pub fn to_tokio_config(&self, host: &Host) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .host(&host.host)
            .port(host.port)
            .user(&self.user)
            .dbname(self.database())
            .application_name(&self.application_name)
            .connect_timeout(self.connect_timeout)
            // The replication connection's TCP settings (see `conn`), for the same
            // reason: a vanished peer must end the connection, not hang a query.
            .keepalives_idle(crate::transport::TCP_KEEPALIVE_IDLE)
            .keepalives_interval(crate::transport::TCP_KEEPALIVE_INTERVAL)
            .keepalives_retries(crate::transport::TCP_KEEPALIVE_RETRIES)
            .tcp_user_timeout(crate::transport::TCP_USER_TIMEOUT)
            .ssl_mode(match self.sslmode {
                SslMode::Disable => tokio_postgres::config::SslMode::Disable,
                SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
                _ => tokio_postgres::config::SslMode::Require,
            });
        if let Some(addr) = host.hostaddr {
            config.hostaddr(addr);
        }
        if let Some(p) = &self.password {
            config.password(p);
        }
        if let Some(o) = &self.options {
            config.options(o);
        }
        config
    }
}
