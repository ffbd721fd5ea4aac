//! Trying the hosts of a connection string in order, as libpq does, until one
//! accepts the connection and matches `target_session_attrs` (which
//! `session_attrs` decides). Both connections (replication and admin) go through
//! here, so they pass over the same hosts for the same reasons.

use std::fmt;

use crate::config::{ConnectOptions, Host, TargetSessionAttrs};
use crate::conn::conn_timeout_error;
use crate::error::{describe_sql, Error};
use crate::session_attrs::SessionMismatch;

/// A host that was tried and passed over.
#[derive(Debug)]
pub struct Rejected {
    /// `host:port`.
    pub host: String,
    pub reason: Rejection,
}

/// Why a host was passed over.
#[derive(Debug, thiserror::Error)]
pub enum Rejection {
    /// Connecting failed in a way that may pass (see [`Error::is_retryable`]).
    #[error("{}", brief(.0))]
    Failed(Error),
    /// The server is not what `target_session_attrs` asks for.
    #[error(transparent)]
    Mismatch(SessionMismatch),
}

/// The error's message without the peer, which the list of rejected hosts
/// already gives.
fn brief(error: &Error) -> String {
    match error {
        Error::Io { source, .. } => source.to_string(),
        Error::Sql { error, .. } => describe_sql(error),
        other => other.to_string(),
    }
}

/// The message of [`Error::NoUsableHost`].
pub(crate) fn describe_rejections(wanted: TargetSessionAttrs, rejected: &[Rejected]) -> String {
    let list = rejected
        .iter()
        .map(Rejected::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    format!(
        "no PostgreSQL server could be used (target_session_attrs={wanted}): {list}. At least \
         one host must be up, accept connections and match target_session_attrs; during a \
         failover none may until a standby is promoted"
    )
}

/// Connects to the first host of `opts` that accepts the connection and matches
/// `target_session_attrs`, with `attempt` (which connects to one host and checks
/// the server with `session_attrs::check_session`).
///
/// As libpq: the hosts are tried in order, `connect_timeout` bounds each one, and
/// `prefer-standby` makes a second pass accepting any server when no standby was
/// found. A host is passed over when it does not match or its failure may pass
/// (unreachable, timed out, starting up or shutting down, in recovery, out of
/// connection slots); any other failure (authentication, TLS, a missing database)
/// ends the search with that error, as it would most likely repeat on every host
/// and needs an operator. With one host, its own failure is the error.
pub(crate) async fn connect_first<T>(
    opts: &ConnectOptions,
    mut attempt: impl AsyncFnMut(&Host, TargetSessionAttrs) -> Result<T, Rejection>,
) -> Result<T, Error> {
    if opts.hosts.is_empty() {
        return Err(Error::config("the connection options name no host"));
    }
    let passes: &[TargetSessionAttrs] = match opts.target_session_attrs {
        TargetSessionAttrs::PreferStandby => {
            &[TargetSessionAttrs::Standby, TargetSessionAttrs::Any]
        }
        ref wanted => std::slice::from_ref(wanted),
    };
    let tries = passes.len() * opts.hosts.len();
    let mut rejected = Vec::new();
    for &wanted in passes {
        for host in &opts.hosts {
            let outcome = tokio::time::timeout(opts.connect_timeout, attempt(host, wanted))
                .await
                .unwrap_or_else(|_| {
                    Err(Rejection::Failed(conn_timeout_error(
                        &host.to_string(),
                        "connecting",
                        opts.connect_timeout,
                    )))
                });
            let reason = match outcome {
                Ok(connection) => {
                    if !rejected.is_empty() {
                        tracing::info!(host = %host, passed_over = rejected.len(), "connected to PostgreSQL");
                    }
                    return Ok(connection);
                }
                Err(Rejection::Failed(e)) if !e.is_retryable() => return Err(e),
                Err(reason) => reason,
            };
            if tries > 1 {
                tracing::warn!(host = %host, reason = %reason, "PostgreSQL host passed over");
            }
            rejected.push(Rejected {
                host: host.to_string(),
                reason,
            });
        }
    }
    match rejected.pop() {
        Some(Rejected {
            reason: Rejection::Failed(e),
            ..
        }) if tries == 1 => Err(e),
        last => Err(Error::NoUsableHost {
            wanted: opts.target_session_attrs,
            rejected: rejected.into_iter().chain(last).collect(),
        }),
    }
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.host, self.reason)
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::time::{Duration, Instant};

    use crate::error::AuthFailure;
    use crate::session_attrs::examples::{PRIMARY, STANDBY};
    use crate::session_attrs::{check_session, ServerState};

    use super::*;

    use TargetSessionAttrs::{Any, PreferStandby, ReadWrite, Standby};
    /// What a scripted host does when tried.
    #[derive(Clone, Copy)]
    enum Script {
        Refuses,
        BadPassword,
        Is(ServerState),
        Hangs,
    }

    fn options(hosts: &[&str], wanted: TargetSessionAttrs) -> ConnectOptions {
        ConnectOptions {
            hosts: hosts.iter().map(|h| Host::new(*h, 5432)).collect(),
            target_session_attrs: wanted,
            connect_timeout: Duration::from_millis(200),
            ..ConnectOptions::default()
        }
    }

    /// Runs `connect_first` over hosts that behave as `script` says; returns the
    /// host connected to (or the error) and every (host, pass) tried.
    async fn run(
        opts: &ConnectOptions,
        script: impl Fn(&str) -> Script,
    ) -> (Result<String, Error>, Vec<(String, TargetSessionAttrs)>) {
        let mut tried = Vec::new();
        let result = connect_first(opts, async |host, wanted| {
            tried.push((host.host.clone(), wanted));
            let state = match script(&host.host) {
                Script::Refuses => {
                    return Err(Rejection::Failed(Error::Io {
                        peer: host.to_string(),
                        source: io::ErrorKind::ConnectionRefused.into(),
                    }))
                }
                Script::BadPassword => {
                    return Err(Rejection::Failed(Error::Auth {
                        user: "u".to_owned(),
                        failure: AuthFailure::PasswordMissing,
                    }))
                }
                Script::Hangs => std::future::pending().await,
                Script::Is(state) => state,
            };
            check_session(wanted, state, async |_| Ok(None)).await?;
            Ok(host.host.clone())
        })
        .await;
        (result, tried)
    }

    fn hosts_tried(tried: &[(String, TargetSessionAttrs)]) -> Vec<&str> {
        tried.iter().map(|(h, _)| h.as_str()).collect()
    }

    #[tokio::test]
    async fn hosts_are_tried_in_order_until_one_fits() {
        let opts = options(&["down", "standby", "primary", "never"], ReadWrite);
        let (result, tried) = run(&opts, |h| match h {
            "down" => Script::Refuses,
            "standby" => Script::Is(STANDBY),
            _ => Script::Is(PRIMARY),
        })
        .await;
        assert_eq!(result.unwrap(), "primary");
        assert_eq!(hosts_tried(&tried), ["down", "standby", "primary"]);
    }

    #[tokio::test]
    async fn an_error_an_operator_must_fix_ends_the_search() {
        let opts = options(&["down", "wrong", "primary"], Any);
        let (result, tried) = run(&opts, |h| match h {
            "down" => Script::Refuses,
            "wrong" => Script::BadPassword,
            _ => Script::Is(PRIMARY),
        })
        .await;
        assert!(matches!(result, Err(Error::Auth { .. })), "{result:?}");
        assert_eq!(hosts_tried(&tried), ["down", "wrong"]);
    }

    #[tokio::test]
    async fn when_no_host_fits_the_error_names_each_and_why() {
        let opts = options(&["db-a", "db-b"], ReadWrite);
        let (result, _) = run(&opts, |h| match h {
            "db-a" => Script::Refuses,
            _ => Script::Is(STANDBY),
        })
        .await;
        let e = result.unwrap_err();
        let Error::NoUsableHost { wanted, rejected } = &e else {
            panic!("{e:?}")
        };
        assert_eq!(*wanted, ReadWrite);
        assert_eq!(rejected.len(), 2);
        let text = e.to_string();
        assert!(
            text.contains("db-a:5432: connection refused; db-b:5432: read-only (a standby"),
            "{text}"
        );
        assert!(text.contains("target_session_attrs=read-write"), "{text}");
        assert!(e.is_retryable(), "a standby may be promoted: {text}");
    }

    #[tokio::test]
    async fn one_host_fails_with_its_own_error() {
        let (result, _) = run(&options(&["down"], Any), |_| Script::Refuses).await;
        assert!(matches!(result, Err(Error::Io { .. })), "{result:?}");
        let (result, _) = run(&options(&["standby"], ReadWrite), |_| Script::Is(STANDBY)).await;
        assert!(
            matches!(&result, Err(Error::NoUsableHost { rejected, .. }) if rejected.len() == 1),
            "{result:?}"
        );
    }

    #[tokio::test]
    async fn prefer_standby_falls_back_to_any_server_in_a_second_pass() {
        let opts = options(&["p1", "p2"], PreferStandby);
        let (result, tried) = run(&opts, |_| Script::Is(PRIMARY)).await;
        assert_eq!(result.unwrap(), "p1");
        assert_eq!(
            tried,
            [
                ("p1".to_owned(), Standby),
                ("p2".to_owned(), Standby),
                ("p1".to_owned(), Any)
            ]
        );
        let opts = options(&["p1", "s1"], PreferStandby);
        let (result, _) = run(&opts, |h| match h {
            "s1" => Script::Is(STANDBY),
            _ => Script::Is(PRIMARY),
        })
        .await;
        assert_eq!(result.unwrap(), "s1");
    }

    #[tokio::test]
    async fn connect_timeout_bounds_each_host() {
        let opts = options(&["silent", "primary"], Any);
        let started = Instant::now();
        let (result, _) = run(&opts, |h| match h {
            "silent" => Script::Hangs,
            _ => Script::Is(PRIMARY),
        })
        .await;
        assert_eq!(result.unwrap(), "primary");
        let took = started.elapsed();
        assert!(
            took >= opts.connect_timeout && took < opts.connect_timeout * 3,
            "{took:?}"
        );
        let (result, _) = run(&options(&["silent"], Any), |_| Script::Hangs).await;
        let e = result.unwrap_err();
        assert!(e.to_string().contains("timed out after 200ms"), "{e}");
    }

    #[tokio::test]
    async fn no_host_is_a_configuration_error() {
        let (result, tried) = run(&options(&[], Any), |_| Script::Is(PRIMARY)).await;
        assert!(matches!(result, Err(Error::Config(_))), "{result:?}");
        assert!(tried.is_empty());
    }
}
