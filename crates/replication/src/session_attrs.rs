//! `target_session_attrs`: whether a freshly connected server is what the
//! connection string asks for, decided as libpq decides it.

use crate::config::TargetSessionAttrs;
use crate::error::Error;
use crate::hosts::Rejection;

/// A server that does not match `target_session_attrs`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{found}, not what target_session_attrs={wanted} asks for")]
pub struct SessionMismatch {
    pub wanted: TargetSessionAttrs,
    /// What the server is, e.g. "read-only (a standby in hot standby mode)".
    pub found: &'static str,
}

/// What a server told about itself, as far as `target_session_attrs` cares.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ServerState {
    pub in_hot_standby: Option<bool>,
    /// Whether a new session is read-only: in hot standby, or
    /// `default_transaction_read_only` on.
    pub read_only: Option<bool>,
}

impl ServerState {
    /// What the server reported at startup: PostgreSQL 14+ sends `in_hot_standby`
    /// and `default_transaction_read_only` as ParameterStatus, to walsenders too.
    pub fn reported<'a>(parameter: impl Fn(&str) -> Option<&'a str>) -> ServerState {
        let flag = |name| parameter(name).map(|v| v == "on");
        let in_hot_standby = flag("in_hot_standby");
        let read_only = match (in_hot_standby, flag("default_transaction_read_only")) {
            (Some(standby), Some(default_read_only)) => Some(standby || default_read_only),
            _ => None,
        };
        ServerState {
            in_hot_standby,
            read_only,
        }
    }
}

/// A question startup left open (servers before 14), asked as libpq asks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Probe {
    ReadOnly,
    InHotStandby,
}

impl Probe {
    fn sql(self) -> &'static str {
        match self {
            Probe::ReadOnly => "SHOW transaction_read_only",
            Probe::InHotStandby => "SELECT pg_catalog.pg_is_in_recovery()",
        }
    }

    fn record(self, answer: &str, state: &mut ServerState) {
        match self {
            Probe::ReadOnly => state.read_only = Some(answer == "on"),
            Probe::InHotStandby => state.in_hot_standby = Some(answer == "t"),
        }
    }
}

impl TargetSessionAttrs {
    /// The question to ask when startup did not say enough.
    fn probe(self, state: &ServerState) -> Option<Probe> {
        match self {
            TargetSessionAttrs::Any => None,
            TargetSessionAttrs::ReadWrite | TargetSessionAttrs::ReadOnly => {
                state.read_only.is_none().then_some(Probe::ReadOnly)
            }
            TargetSessionAttrs::Primary
            | TargetSessionAttrs::Standby
            | TargetSessionAttrs::PreferStandby => state
                .in_hot_standby
                .is_none()
                .then_some(Probe::InHotStandby),
        }
    }

    /// Whether a server in `state` will do (`prefer-standby` as in its first pass).
    fn accepts(self, state: &ServerState) -> Result<(), SessionMismatch> {
        let found = match self {
            TargetSessionAttrs::Any => None,
            TargetSessionAttrs::ReadWrite => match (state.read_only, state.in_hot_standby) {
                (Some(false), _) => None,
                (_, Some(true)) => Some("read-only (a standby in hot standby mode)"),
                (_, Some(false)) => Some("read-only (default_transaction_read_only is on)"),
                (_, None) => Some("read-only"),
            },
            TargetSessionAttrs::ReadOnly => {
                (state.read_only == Some(false)).then_some("read-write")
            }
            TargetSessionAttrs::Primary => {
                (state.in_hot_standby == Some(true)).then_some("in hot standby mode (a standby)")
            }
            TargetSessionAttrs::Standby | TargetSessionAttrs::PreferStandby => {
                (state.in_hot_standby == Some(false))
                    .then_some("not in hot standby mode (a primary)")
            }
        };
        match found {
            None => Ok(()),
            Some(found) => Err(SessionMismatch {
                wanted: self,
                found,
            }),
        }
    }
}

/// Checks a freshly connected server against `wanted`: from what it `reported` at
/// startup, or else from its answer to a query that `ask` runs (returning the first
/// column of the first row).
pub(crate) async fn check_session(
    wanted: TargetSessionAttrs,
    reported: ServerState,
    ask: impl AsyncFnOnce(&'static str) -> Result<Option<String>, Error>,
) -> Result<(), Rejection> {
    let mut state = reported;
    if let Some(probe) = wanted.probe(&state) {
        let answer = ask(probe.sql()).await.map_err(Rejection::Failed)?;
        let answer = answer.ok_or_else(|| {
            Rejection::Failed(Error::protocol(format!(
                "no answer to '{}' while checking target_session_attrs",
                probe.sql()
            )))
        })?;
        probe.record(&answer, &mut state);
    }
    wanted.accepts(&state).map_err(Rejection::Mismatch)
}

/// Servers of each kind, as their startup parameters describe them.
#[cfg(test)]
pub(crate) mod examples {
    use super::ServerState;

    pub const PRIMARY: ServerState = ServerState {
        in_hot_standby: Some(false),
        read_only: Some(false),
    };
    pub const STANDBY: ServerState = ServerState {
        in_hot_standby: Some(true),
        read_only: Some(true),
    };
    pub const READ_ONLY_PRIMARY: ServerState = ServerState {
        in_hot_standby: Some(false),
        read_only: Some(true),
    };
}

#[cfg(test)]
mod tests {
    use super::examples::{PRIMARY, READ_ONLY_PRIMARY, STANDBY};
    use super::*;

    use TargetSessionAttrs::{Any, PreferStandby, Primary, ReadOnly, ReadWrite, Standby};

    #[test]
    fn startup_parameters_tell_the_state_of_a_14_plus_server() {
        let params = |standby: &'static str, read_only: &'static str| {
            move |name: &str| match name {
                "in_hot_standby" => Some(standby),
                "default_transaction_read_only" => Some(read_only),
                _ => None,
            }
        };
        assert_eq!(ServerState::reported(params("off", "off")), PRIMARY);
        assert_eq!(ServerState::reported(params("on", "off")), STANDBY);
        assert_eq!(
            ServerState::reported(params("off", "on")),
            READ_ONLY_PRIMARY
        );
        assert_eq!(ServerState::reported(|_| None), ServerState::default());
    }

    #[test]
    fn each_attribute_accepts_what_libpq_accepts() {
        let cases = [
            (Any, [true, true, true]),
            (ReadWrite, [true, false, false]),
            (ReadOnly, [false, true, true]),
            (Primary, [true, false, true]),
            (Standby, [false, true, false]),
            (PreferStandby, [false, true, false]),
        ];
        for (wanted, [primary, standby, read_only_primary]) in cases {
            for (state, expected) in [
                (PRIMARY, primary),
                (STANDBY, standby),
                (READ_ONLY_PRIMARY, read_only_primary),
            ] {
                assert_eq!(
                    wanted.accepts(&state).is_ok(),
                    expected,
                    "{wanted} on {state:?}"
                );
            }
        }
        let e = ReadWrite.accepts(&STANDBY).unwrap_err();
        assert_eq!(
            e.to_string(),
            "read-only (a standby in hot standby mode), not what \
             target_session_attrs=read-write asks for"
        );
        let e = ReadWrite.accepts(&READ_ONLY_PRIMARY).unwrap_err();
        assert!(e.found.contains("default_transaction_read_only"), "{e}");
    }

    #[test]
    fn a_server_before_14_is_asked_as_libpq_asks() {
        let unknown = ServerState::default();
        assert_eq!(Any.probe(&unknown), None);
        assert_eq!(ReadWrite.probe(&unknown), Some(Probe::ReadOnly));
        assert_eq!(ReadOnly.probe(&unknown), Some(Probe::ReadOnly));
        for wanted in [Primary, Standby, PreferStandby] {
            assert_eq!(wanted.probe(&unknown), Some(Probe::InHotStandby));
        }
        for wanted in [Any, ReadWrite, ReadOnly, Primary, Standby, PreferStandby] {
            assert_eq!(wanted.probe(&STANDBY), None, "{wanted}");
        }
    }

    fn check(
        wanted: TargetSessionAttrs,
        reported: ServerState,
        answer: Option<&str>,
    ) -> (Result<(), Rejection>, Vec<&'static str>) {
        let mut asked = Vec::new();
        let result =
            futures_util::FutureExt::now_or_never(check_session(wanted, reported, async |sql| {
                asked.push(sql);
                Ok(answer.map(str::to_owned))
            }))
            .expect("no waiting");
        (result, asked)
    }

    #[test]
    fn check_session_asks_only_when_startup_did_not_tell() {
        let (result, asked) = check(ReadWrite, STANDBY, None);
        assert!(matches!(result, Err(Rejection::Mismatch(_))));
        assert!(asked.is_empty());
        let (result, asked) = check(ReadWrite, ServerState::default(), Some("on"));
        assert!(matches!(result, Err(Rejection::Mismatch(_))));
        assert_eq!(asked, ["SHOW transaction_read_only"]);
        let (result, _) = check(ReadWrite, ServerState::default(), Some("off"));
        assert!(result.is_ok());
        let (result, asked) = check(Primary, ServerState::default(), Some("t"));
        assert!(matches!(result, Err(Rejection::Mismatch(_))));
        assert_eq!(asked, ["SELECT pg_catalog.pg_is_in_recovery()"]);
        let (result, _) = check(Standby, ServerState::default(), Some("t"));
        assert!(result.is_ok());
        let (result, _) = check(Standby, ServerState::default(), None);
        assert!(
            matches!(&result, Err(Rejection::Failed(Error::Protocol(m))) if m.contains("no answer")),
            "{result:?}"
        );
    }
}
