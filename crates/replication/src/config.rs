//! Connection options, parsed from a libpq-style URL or `key=value` string.
//!
//! We parse them ourselves instead of through `tokio_postgres::Config` because the
//! replication connection needs the whole libpq `sslmode` range (`verify-ca`,
//! `verify-full`) and `sslrootcert`, which tokio-postgres does not model. The admin
//! connection is then built from the same options, so both connections always agree.

use std::fmt;
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

/// Everything needed to reach one PostgreSQL server.
///
/// `Debug` leaves the password out so that options can be logged.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnectOptions {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
    pub dbname: String,
    pub application_name: String,
    pub sslmode: SslMode,
    /// PEM file with the CA certificate(s) to trust; the system roots when absent.
    pub sslrootcert: Option<PathBuf>,
    pub connect_timeout: Duration,
    /// Run-time parameters for the session (libpq's `options`, e.g.
    /// `-c wal_sender_timeout=5s`).
    pub options: Option<String>,
}

impl fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("dbname", &self.dbname)
            .field("application_name", &self.application_name)
            .field("sslmode", &self.sslmode)
            .field("sslrootcert", &self.sslrootcert)
            .field("connect_timeout", &self.connect_timeout)
            .field("options", &self.options)
            .finish()
    }
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            host: "localhost".to_owned(),
            port: 5432,
            user: "postgres".to_owned(),
            password: None,
            dbname: String::new(),
            application_name: "outboxd".to_owned(),
            sslmode: SslMode::Prefer,
            sslrootcert: None,
            connect_timeout: Duration::from_secs(10),
            options: None,
        }
    }
}

impl ConnectOptions {
    /// The database to connect to: `dbname`, or the user name as libpq does.
    pub fn database(&self) -> &str {
        if self.dbname.is_empty() {
            &self.user
        } else {
            &self.dbname
        }
    }

    /// A `host:port/db as user` description for logs and errors (never the password).
    pub fn describe(&self) -> String {
        format!(
            "{}:{}/{} as {}",
            self.host,
            self.port,
            self.database(),
            self.user
        )
    }

    fn set(&mut self, key: &str, value: String) -> Result<(), Error> {
        match key {
            "host" | "hostaddr" => self.host = value,
            "port" => {
                self.port = value
                    .parse()
                    .map_err(|_| Error::config(format!("invalid port '{value}'")))?
            }
            "user" => self.user = value,
            "password" => self.password = Some(value),
            "dbname" => self.dbname = value,
            "application_name" => self.application_name = value,
            "sslmode" => self.sslmode = value.parse()?,
            "sslrootcert" => self.sslrootcert = Some(PathBuf::from(value)),
            "connect_timeout" => {
                let secs: u64 = value
                    .parse()
                    .map_err(|_| Error::config(format!("invalid connect_timeout '{value}'")))?;
                self.connect_timeout = Duration::from_secs(secs.max(1));
            }
            "options" => self.options = Some(value),
            // Options that only matter to other clients are accepted and ignored, so a
            // URL that works with psql works here too.
            "replication"
            | "client_encoding"
            | "target_session_attrs"
            | "channel_binding"
            | "gssencmode"
            | "keepalives"
            | "sslcert"
            | "sslkey" => {}
            other => {
                return Err(Error::config(format!(
                    "unknown connection option '{other}'"
                )))
            }
        }
        Ok(())
    }

    fn parse_url(s: &str) -> Result<Self, Error> {
        let rest = s
            .strip_prefix("postgresql://")
            .or_else(|| s.strip_prefix("postgres://"))
            .ok_or_else(|| Error::config("a connection URL starts with postgres://"))?;
        let mut opts = ConnectOptions::default();
        let (main, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (authority, path) = main.split_once('/').unwrap_or((main, ""));
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        if let Some(userinfo) = userinfo {
            let (user, password) = match userinfo.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (userinfo, None),
            };
            if !user.is_empty() {
                opts.user = percent_decode(user)?;
            }
            if let Some(p) = password {
                opts.password = Some(percent_decode(p)?);
            }
        }
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| Error::config("unclosed '[' in URL host"))?;
            (h, after.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        if !host.is_empty() {
            opts.host = percent_decode(host)?;
        }
        if let Some(port) = port.filter(|p| !p.is_empty()) {
            opts.set("port", port.to_owned())?;
        }
        if !path.is_empty() {
            opts.dbname = percent_decode(path)?;
        }
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| Error::config(format!("URL parameter '{pair}' has no value")))?;
            opts.set(&percent_decode(k)?, percent_decode(v)?)?;
        }
        Ok(opts)
    }

    fn parse_key_values(s: &str) -> Result<Self, Error> {
        let mut opts = ConnectOptions::default();
        let mut chars = s.chars().peekable();
        loop {
            while chars.peek().is_some_and(|c| c.is_whitespace()) {
                chars.next();
            }
            if chars.peek().is_none() {
                break;
            }
            let key: String = chars
                .by_ref()
                .take_while(|c| *c != '=')
                .collect::<String>()
                .trim()
                .to_owned();
            while chars.peek().is_some_and(|c| c.is_whitespace()) {
                chars.next();
            }
            let mut value = String::new();
            if chars.peek() == Some(&'\'') {
                chars.next();
                loop {
                    match chars.next() {
                        Some('\\') => value.extend(chars.next()),
                        Some('\'') => break,
                        Some(c) => value.push(c),
                        None => return Err(Error::config("unterminated quoted value")),
                    }
                }
            } else {
                while let Some(c) = chars.peek().copied() {
                    if c.is_whitespace() {
                        break;
                    }
                    value.push(c);
                    chars.next();
                }
            }
            if key.is_empty() {
                return Err(Error::config("connection string has an empty key"));
            }
            opts.set(&key, value)?;
        }
        Ok(opts)
    }

    /// An equivalent tokio-postgres configuration for the ordinary SQL connection.
    pub fn to_tokio_config(&self) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .host(&self.host)
            .port(self.port)
            .user(&self.user)
            .dbname(self.database())
            .application_name(&self.application_name)
            .connect_timeout(self.connect_timeout)
            // The replication connection's TCP settings (see `conn`), for the same
            // reason: a vanished peer must end the connection, not hang a query.
            .keepalives_idle(crate::conn::TCP_KEEPALIVE_IDLE)
            .keepalives_interval(crate::conn::TCP_KEEPALIVE_INTERVAL)
            .keepalives_retries(crate::conn::TCP_KEEPALIVE_RETRIES)
            .tcp_user_timeout(crate::conn::TCP_USER_TIMEOUT)
            .ssl_mode(match self.sslmode {
                SslMode::Disable => tokio_postgres::config::SslMode::Disable,
                SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
                _ => tokio_postgres::config::SslMode::Require,
            });
        if let Some(p) = &self.password {
            config.password(p);
        }
        if let Some(o) = &self.options {
            config.options(o);
        }
        config
    }
}

impl FromStr for ConnectOptions {
    type Err = Error;

    /// Parses `postgres://user:pass@host:port/db?sslmode=…` or `host=… port=… …`.
    fn from_str(s: &str) -> Result<Self, Error> {
        let s = s.trim();
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            Self::parse_url(s)
        } else {
            Self::parse_key_values(s)
        }
    }
}

fn percent_decode(s: &str) -> Result<String, Error> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| Error::config("invalid percent-encoding in URL"))?;
                out.push(hex);
                i += 3;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| Error::config("URL component is not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_url() {
        let o: ConnectOptions =
            "postgres://app%40x:p%2Fw@db.example:6543/shop?sslmode=verify-full&sslrootcert=/ca.pem&application_name=relay"
                .parse()
                .unwrap();
        assert_eq!(o.user, "app@x");
        assert_eq!(o.password.as_deref(), Some("p/w"));
        assert_eq!(o.host, "db.example");
        assert_eq!(o.port, 6543);
        assert_eq!(o.dbname, "shop");
        assert_eq!(o.sslmode, SslMode::VerifyFull);
        assert_eq!(o.sslrootcert, Some(PathBuf::from("/ca.pem")));
        assert_eq!(o.application_name, "relay");
    }

    #[test]
    fn parses_key_values_with_quotes() {
        let o: ConnectOptions = "host=127.0.0.1 port=5 user=u password='a b\\'c' dbname=d"
            .parse()
            .unwrap();
        assert_eq!(o.host, "127.0.0.1");
        assert_eq!(o.port, 5);
        assert_eq!(o.password.as_deref(), Some("a b'c"));
        assert_eq!(o.database(), "d");
    }

    #[test]
    fn ipv6_host_and_defaults() {
        let o: ConnectOptions = "postgres://[::1]:7/".parse().unwrap();
        assert_eq!(o.host, "::1");
        assert_eq!(o.port, 7);
        assert_eq!(o.database(), "postgres");
        assert_eq!(o.sslmode, SslMode::Prefer);
    }

    #[test]
    fn rejects_bad_input_with_a_clear_error() {
        let e = "postgres://h/db?sslmode=sometimes"
            .parse::<ConnectOptions>()
            .unwrap_err();
        assert!(e.to_string().contains("sslmode"), "{e}");
        assert!("port=x".parse::<ConnectOptions>().is_err());
        assert!("password='open".parse::<ConnectOptions>().is_err());
        assert!("postgres://h/db?bogus=1".parse::<ConnectOptions>().is_err());
    }

    #[test]
    fn debug_never_shows_the_password() {
        let o: ConnectOptions = "postgres://u:hunter2@h/db".parse().unwrap();
        let shown = format!("{o:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("redacted"));
    }
}
