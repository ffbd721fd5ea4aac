//! Connection strings as libpq reads them: `postgres://…` URLs and `key=value`
//! strings, including the multi-host forms (`postgres://a:5432,b:5433/db`,
//! `host=a,b port=5432,5433`) and libpq's rules for pairing the host, hostaddr
//! and port lists.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use crate::config::{ConnectOptions, Host, DEFAULT_HOST, DEFAULT_PORT};
use crate::error::Error;

impl FromStr for ConnectOptions {
    type Err = Error;

    /// Parses `postgres://user:pass@host:port[,host:port…]/db?sslmode=…` or
    /// `host=… port=… …`.
    fn from_str(s: &str) -> Result<Self, Error> {
        let s = s.trim();
        let pairs = if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            url_pairs(s)?
        } else {
            key_value_pairs(s)?
        };
        let mut opts = ConnectOptions::default();
        let mut lists = HostLists::default();
        for (key, value) in pairs {
            set(&mut opts, &mut lists, &key, value)?;
        }
        opts.hosts = lists.pair()?;
        Ok(opts)
    }
}

/// The `host`, `hostaddr` and `port` values as written: comma-separated lists that
/// are paired up once every option is known.
#[derive(Default)]
struct HostLists {
    host: Option<String>,
    hostaddr: Option<String>,
    port: Option<String>,
}

impl HostLists {
    /// libpq's rules: one host per `host` entry (or per `hostaddr` entry when there
    /// is no `host`); `hostaddr`, when given, has one entry per host; `port` has one
    /// entry for all hosts or one per host. An empty entry means the default.
    fn pair(&self) -> Result<Vec<Host>, Error> {
        let names = list(&self.host);
        let addrs = list(&self.hostaddr);
        let ports = list(&self.port);
        if !names.is_empty() && !addrs.is_empty() && names.len() != addrs.len() {
            return Err(Error::config(format!(
                "the connection string lists {} hostaddr values ({}) for {} hosts ({}): give \
                 one hostaddr per host",
                addrs.len(),
                addrs.join(","),
                names.len(),
                names.join(",")
            )));
        }
        let count = names.len().max(addrs.len()).max(1);
        if ports.len() > 1 && ports.len() != count {
            let shown = match (names.is_empty(), addrs.is_empty()) {
                (false, _) => names.join(","),
                (true, false) => addrs.join(","),
                (true, true) => DEFAULT_HOST.to_owned(),
            };
            return Err(Error::config(format!(
                "the connection string lists {} ports ({}) for {} hosts ({}): give one port \
                 for all hosts or one per host",
                ports.len(),
                ports.join(","),
                count,
                shown
            )));
        }
        (0..count)
            .map(|i| {
                let addr = addrs.get(i).copied().filter(|a| !a.is_empty());
                let hostaddr = addr
                    .map(|a| {
                        a.parse().map_err(|_| {
                            Error::config(format!("hostaddr '{a}' is not an IP address"))
                        })
                    })
                    .transpose()?;
                let name = match names.get(i).copied().filter(|n| !n.is_empty()) {
                    Some(name) => name,
                    None => addr.unwrap_or(DEFAULT_HOST),
                };
                let port = match ports.get(i).or(ports.first()).copied() {
                    None | Some("") => DEFAULT_PORT,
                    Some(p) => p
                        .parse()
                        .ok()
                        .filter(|p| *p != 0)
                        .ok_or_else(|| Error::config(format!("invalid port '{p}'")))?,
                };
                Ok(Host {
                    host: name.to_owned(),
                    hostaddr,
                    port,
                })
            })
            .collect()
    }
}

/// The entries of a comma-separated list; none for an absent or empty value.
fn list(value: &Option<String>) -> Vec<&str> {
    match value.as_deref() {
        None | Some("") => Vec::new(),
        Some(v) => v.split(',').map(str::trim).collect(),
    }
}

fn set(
    opts: &mut ConnectOptions,
    lists: &mut HostLists,
    key: &str,
    value: String,
) -> Result<(), Error> {
    match key {
        "host" => lists.host = Some(value),
        "hostaddr" => lists.hostaddr = Some(value),
        "port" => lists.port = Some(value),
        "user" => opts.user = value,
        "password" => opts.password = Some(value),
        "dbname" => opts.dbname = value,
        "application_name" => opts.application_name = value,
        "sslmode" => opts.sslmode = value.parse()?,
        "sslrootcert" => opts.sslrootcert = Some(PathBuf::from(value)),
        "connect_timeout" => {
            let secs: u64 = value
                .parse()
                .map_err(|_| Error::config(format!("invalid connect_timeout '{value}'")))?;
            opts.connect_timeout = Duration::from_secs(secs.max(1));
        }
        "options" => opts.options = Some(value),
        "target_session_attrs" => opts.target_session_attrs = value.parse()?,
        // Options that only matter to other clients are accepted and ignored, so a
        // URL that works with psql works here too.
        "replication" | "client_encoding" | "channel_binding" | "gssencmode" | "keepalives"
        | "sslcert" | "sslkey" => {}
        other => {
            return Err(Error::config(format!(
                "unknown connection option '{other}'"
            )))
        }
    }
    Ok(())
}

/// The options of a URL, in order, as libpq collects them: the netloc's hosts and
/// ports become one `host` and one `port` list (`a:5432,b` → `a,b` and `5432,`).
fn url_pairs(s: &str) -> Result<Vec<(String, String)>, Error> {
    let rest = s
        .strip_prefix("postgresql://")
        .or_else(|| s.strip_prefix("postgres://"))
        .ok_or_else(|| Error::config("a connection URL starts with postgres://"))?;
    let mut pairs = Vec::new();
    let (main, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, path) = main.split_once('/').unwrap_or((main, ""));
    let (userinfo, netloc) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    if let Some(userinfo) = userinfo {
        let (user, password) = match userinfo.split_once(':') {
            Some((u, p)) => (u, Some(p)),
            None => (userinfo, None),
        };
        if !user.is_empty() {
            pairs.push(("user".to_owned(), percent_decode(user)?));
        }
        if let Some(p) = password {
            pairs.push(("password".to_owned(), percent_decode(p)?));
        }
    }
    let (hosts, ports) = netloc_lists(netloc)?;
    if !hosts.is_empty() {
        pairs.push(("host".to_owned(), percent_decode(&hosts)?));
    }
    if !ports.is_empty() {
        pairs.push(("port".to_owned(), percent_decode(&ports)?));
    }
    if !path.is_empty() {
        pairs.push(("dbname".to_owned(), percent_decode(path)?));
    }
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| Error::config(format!("URL parameter '{pair}' has no value")))?;
        pairs.push((percent_decode(k)?, percent_decode(v)?));
    }
    Ok(pairs)
}

/// Splits `host[:port][,host[:port]…]` (a host may be a bracketed IPv6 address)
/// into a host list and a port list with one entry per host, empty where no port
/// was given.
fn netloc_lists(netloc: &str) -> Result<(String, String), Error> {
    let mut hosts = Vec::new();
    let mut ports = Vec::new();
    for item in netloc.split(',') {
        let (host, port) = if let Some(v6) = item.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| Error::config(format!("unclosed '[' in URL host '{item}'")))?;
            match after {
                "" => (h, ""),
                _ => (
                    h,
                    after.strip_prefix(':').ok_or_else(|| {
                        Error::config(format!("unexpected '{after}' after ']' in URL host"))
                    })?,
                ),
            }
        } else {
            item.split_once(':').unwrap_or((item, ""))
        };
        hosts.push(host);
        ports.push(port);
    }
    Ok((hosts.join(","), ports.join(",")))
}

/// The `key=value` pairs of a libpq keyword/value string, values optionally in
/// single quotes with backslash escapes.
fn key_value_pairs(s: &str) -> Result<Vec<(String, String)>, Error> {
    let mut pairs = Vec::new();
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
        pairs.push((key, value));
    }
    Ok(pairs)
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
    use crate::config::{SslMode, TargetSessionAttrs};

    use super::*;

    fn parse(s: &str) -> ConnectOptions {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn hosts(s: &str) -> Vec<String> {
        parse(s).hosts.iter().map(Host::to_string).collect()
    }

    fn error(s: &str) -> String {
        match s.parse::<ConnectOptions>() {
            Ok(o) => panic!("{s} parsed: {o:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn parses_a_url() {
        let o = parse(
            "postgres://app%40x:p%2Fw@db.example:6543/shop?sslmode=verify-full&sslrootcert=/ca.pem&application_name=relay",
        );
        assert_eq!(o.user, "app@x");
        assert_eq!(o.password.as_deref(), Some("p/w"));
        assert_eq!(o.hosts, vec![Host::new("db.example", 6543)]);
        assert_eq!(o.dbname, "shop");
        assert_eq!(o.sslmode, SslMode::VerifyFull);
        assert_eq!(o.sslrootcert, Some(PathBuf::from("/ca.pem")));
        assert_eq!(o.application_name, "relay");
        assert_eq!(o.target_session_attrs, TargetSessionAttrs::Any);
    }

    #[test]
    fn parses_key_values_with_quotes() {
        let o = parse("host=127.0.0.1 port=5 user=u password='a b\\'c' dbname=d");
        assert_eq!(o.hosts, vec![Host::new("127.0.0.1", 5)]);
        assert_eq!(o.password.as_deref(), Some("a b'c"));
        assert_eq!(o.database(), "d");
    }

    #[test]
    fn ipv6_host_and_defaults() {
        let o = parse("postgres://[::1]:7/");
        assert_eq!(o.hosts, vec![Host::new("::1", 7)]);
        assert_eq!(o.hosts[0].to_string(), "[::1]:7");
        assert_eq!(o.database(), "postgres");
        assert_eq!(o.sslmode, SslMode::Prefer);
        assert_eq!(hosts("postgres:///db"), ["localhost:5432"]);
        assert_eq!(hosts("postgres://:6000/db"), ["localhost:6000"]);
        assert_eq!(hosts("dbname=x"), ["localhost:5432"]);
    }

    #[test]
    fn url_lists_pair_each_host_with_its_own_port() {
        let o = parse("postgres://u@db-a:5432,db-b:5433/shop?target_session_attrs=read-write");
        assert_eq!(
            o.hosts,
            vec![Host::new("db-a", 5432), Host::new("db-b", 5433)]
        );
        assert_eq!(o.target_session_attrs, TargetSessionAttrs::ReadWrite);
        assert_eq!(o.describe(), "db-a:5432,db-b:5433/shop as u");
        // As libpq: in a URL a port belongs to the host it follows; the others get
        // the default (psql "postgres://a,b:1/" tries a:5432, then b:1).
        assert_eq!(hosts("postgres://a,b:5433/db"), ["a:5432", "b:5433"]);
        assert_eq!(hosts("postgres://a:5433,b/db"), ["a:5433", "b:5432"]);
        assert_eq!(hosts("postgres://a,b/db"), ["a:5432", "b:5432"]);
        // A port parameter overrides the netloc's list, and one port serves all.
        assert_eq!(hosts("postgres://a,b/db?port=6000"), ["a:6000", "b:6000"]);
        assert_eq!(hosts("postgres:///db?host=a,b&port=1,2"), ["a:1", "b:2"]);
    }

    #[test]
    fn url_lists_take_bracketed_ipv6_hosts() {
        assert_eq!(
            hosts("postgres://[::1]:6000,[fe80::2],10.0.0.3:7000/db"),
            ["[::1]:6000", "[fe80::2]:5432", "10.0.0.3:7000"]
        );
    }

    #[test]
    fn key_value_lists_follow_libpq() {
        assert_eq!(
            hosts("host=a,b port=5432,5433 dbname=d"),
            ["a:5432", "b:5433"]
        );
        assert_eq!(
            hosts("host=a,b,c port=6000"),
            ["a:6000", "b:6000", "c:6000"]
        );
        assert_eq!(hosts("host=a,b"), ["a:5432", "b:5432"]);
        assert_eq!(
            hosts("host=a,,c port=1,2,"),
            ["a:1", "localhost:2", "c:5432"]
        );
        assert_eq!(hosts("host=::1,::2 port=1"), ["[::1]:1", "[::2]:1"]);
    }

    #[test]
    fn hostaddr_pairs_with_host_or_stands_alone() {
        let o = parse("host=db-a,db-b hostaddr=10.0.0.1,10.0.0.2 port=5433");
        assert_eq!(o.hosts[1].host, "db-b");
        assert_eq!(o.hosts[1].hostaddr, Some("10.0.0.2".parse().unwrap()));
        assert_eq!(o.hosts[1].port, 5433);
        let o = parse("hostaddr=10.0.0.1,::1");
        assert_eq!(o.hosts[1].host, "::1");
        assert_eq!(o.hosts[1].hostaddr, Some("::1".parse().unwrap()));
        let o = parse("host=db-a,db-b hostaddr=,10.0.0.2");
        assert_eq!(o.hosts[0].hostaddr, None);
    }

    #[test]
    fn mismatched_lists_are_rejected_naming_both() {
        let e = error("host=a,b port=1,2,3");
        assert!(
            e.contains("3 ports (1,2,3)") && e.contains("2 hosts (a,b)"),
            "{e}"
        );
        let e = error("postgres://a,b/db?port=1,2,3");
        assert!(e.contains("(1,2,3)") && e.contains("(a,b)"), "{e}");
        let e = error("host=a,b hostaddr=10.0.0.1");
        assert!(
            e.contains("1 hostaddr values (10.0.0.1)") && e.contains("2 hosts (a,b)"),
            "{e}"
        );
        assert!(error("hostaddr=db.example").contains("not an IP address"));
        assert!(error("host=a,b port=1,x").contains("invalid port 'x'"));
        assert!(error("postgres://a:0/db").contains("invalid port '0'"));
        assert!(error("postgres://[::1/db").contains("unclosed '['"));
        assert!(error("postgres://[::1]x/db").contains("after ']'"));
    }

    #[test]
    fn target_session_attrs_takes_libpq_values_only() {
        for (text, attrs) in [
            ("any", TargetSessionAttrs::Any),
            ("read-write", TargetSessionAttrs::ReadWrite),
            ("read-only", TargetSessionAttrs::ReadOnly),
            ("primary", TargetSessionAttrs::Primary),
            ("standby", TargetSessionAttrs::Standby),
            ("prefer-standby", TargetSessionAttrs::PreferStandby),
        ] {
            let o = parse(&format!("host=a target_session_attrs={text}"));
            assert_eq!(o.target_session_attrs, attrs);
            assert_eq!(attrs.to_string(), text);
        }
        let e = error("postgres://a/db?target_session_attrs=master");
        assert!(e.contains("'master'") && e.contains("read-write"), "{e}");
    }

    #[test]
    fn rejects_bad_input_with_a_clear_error() {
        assert!(error("postgres://h/db?sslmode=sometimes").contains("sslmode"));
        assert!(error("port=x").contains("invalid port"));
        assert!(error("password='open").contains("unterminated"));
        assert!(error("postgres://h/db?bogus=1").contains("'bogus'"));
    }

    #[test]
    fn debug_never_shows_the_password_and_lists_the_hosts() {
        let o = parse("postgres://u:hunter2@h1,h2:6000/db");
        let shown = format!("{o:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("redacted"));
        assert!(shown.contains("h1:5432,h2:6000"), "{shown}");
    }
}
