//! What an operator should do about an error, in outboxd's terms (its commands and
//! configuration keys). The component crates say what happened; this is the one
//! place that turns that into next steps, for `run`'s last log line and for
//! `check`'s report alike.

use outboxd_replication::{AuthFailure, Error, Preflight};

use crate::relay::RelayError;

/// The runbook section for slot trouble.
const SLOT_RUNBOOK: &str = "docs/operations.md, \"Slot runbook\"";

/// Next steps for an error anywhere in `error`'s chain, if outboxd knows any.
pub fn for_chain(error: &anyhow::Error) -> Option<String> {
    error.chain().find_map(|cause| {
        if let Some(e) = cause.downcast_ref::<RelayError>() {
            return match e {
                RelayError::Replication(e) => for_replication(e),
                _ => None,
            };
        }
        cause.downcast_ref::<Error>().and_then(for_replication)
    })
}

/// Next steps for a PostgreSQL-side error.
pub fn for_replication(error: &Error) -> Option<String> {
    let advice = match error {
        Error::Auth { failure, .. } => match failure {
            AuthFailure::PasswordMissing => {
                "set the password with OUTBOXD_POSTGRES__PASSWORD, postgres.password_file (a \
                 mounted secret) or PGPASSWORD; avoid putting it in postgres.url"
                    .to_owned()
            }
            AuthFailure::Rejected(server) => return for_sqlstate(&server.code),
            AuthFailure::UnsupportedMethod(_) => {
                "configure pg_hba.conf to use scram-sha-256 (or md5) for this user".to_owned()
            }
            AuthFailure::Scram(_) => {
                "check the password (OUTBOXD_POSTGRES__PASSWORD or postgres.password_file)"
                    .to_owned()
            }
            _ => return None,
        },
        Error::Io { .. } => "check the host and port in postgres.url, that PostgreSQL \
                             listens there (listen_addresses, port) and that no firewall is in \
                             the way"
            .to_owned(),
        Error::Tls { .. } => "check sslmode and sslrootcert in postgres.url against the \
                              server's certificate (its CA, and its name for verify-full)"
            .to_owned(),
        Error::Preflight(p) => return for_preflight(p),
        Error::SlotMissing { .. } => "`outboxd init --apply` creates it; or set \
                                      postgres.create_slot = true to let `outboxd run` create \
                                      it on its first start"
            .to_owned(),
        Error::SlotMismatch { .. } => {
            "set postgres.slot to a name of outboxd's own (a new slot starts at the current \
             WAL end)"
                .to_owned()
        }
        Error::SlotInUse { .. } => "another outboxd (or any other client) streams from this \
                                    slot; this one retries and takes over when it is free"
            .to_owned(),
        Error::SlotInvalidated { slot, .. } => format!(
            "events committed since the slot's last confirmed position may be missing from \
             Kafka: follow {SLOT_RUNBOOK} (republish them with `outboxd replay`, drop the slot \
             with SELECT pg_drop_replication_slot('{slot}'), then start once with `outboxd \
             run --accept-gap`), and raise max_slot_wal_keep_size or alert on \
             outboxd_lag_bytes"
        ),
        Error::SlotJumped { .. } => {
            format!("events may be missing from Kafka: follow {SLOT_RUNBOOK}")
        }
        Error::NoUsableHost { .. } => "check that a host in postgres.url is up and, with \
                                       target_session_attrs, that one of them is the kind it \
                                       asks for (a primary for read-write); outboxd retries"
            .to_owned(),
        Error::Server { error, .. } => return for_sqlstate(&error.code),
        Error::Sql { .. } => return error.sqlstate().and_then(for_sqlstate),
        _ => return None,
    };
    Some(advice)
}

fn for_preflight(p: &Preflight) -> Option<String> {
    let advice = match p {
        Preflight::TableMissing(_) => {
            "create it (`outboxd init` prints the DDL, `outboxd init --apply` runs it) or \
             correct postgres.tables"
        }
        Preflight::ColumnsMissing { .. } => {
            "add the columns, or map the names under [routing.columns] to the ones the table has"
        }
        Preflight::PublicationMissing { .. } | Preflight::PublicationNotCreated { .. } => {
            "`outboxd init --apply` creates it; with postgres.create_publication = true (the \
             default) `outboxd run` creates it when the role owns the tables"
        }
        _ => return None,
    };
    Some(advice.to_owned())
}

fn for_sqlstate(code: &str) -> Option<String> {
    let advice = match code {
        "28P01" => {
            "check the user in postgres.url and its password (OUTBOXD_POSTGRES__PASSWORD or \
             postgres.password_file); the server's log says which pg_hba.conf line applied"
        }
        "28000" => {
            "add a pg_hba.conf line that lets this user connect to this database from this \
             host (with the TLS the line asks for), then reload PostgreSQL"
        }
        "3D000" => "correct the database name in postgres.url",
        "42501" => "grant the role the privilege the message names, or use a role that has it",
        "53300" => {
            "the server has no free connection slots: raise max_connections or \
                    max_wal_senders, or close idle sessions; outboxd retries"
        }
        _ => return None,
    };
    Some(advice.to_owned())
}

#[cfg(test)]
mod tests {
    use outboxd_replication::{ServerError, TableName};

    use super::*;

    fn rejected(code: &str) -> Error {
        Error::Auth {
            user: "relay".to_owned(),
            failure: AuthFailure::Rejected(Box::new(ServerError {
                severity: "FATAL".to_owned(),
                code: code.to_owned(),
                message: "password authentication failed for user \"relay\"".to_owned(),
                detail: None,
                hint: None,
            })),
        }
    }

    #[test]
    fn auth_failures_name_the_settings_to_fix() {
        let advice = for_replication(&rejected("28P01")).expect("advice");
        assert!(advice.contains("OUTBOXD_POSTGRES__PASSWORD"), "{advice}");
        let missing = Error::Auth {
            user: "relay".to_owned(),
            failure: AuthFailure::PasswordMissing,
        };
        let advice = for_replication(&missing).expect("advice");
        assert!(advice.contains("OUTBOXD_POSTGRES__PASSWORD"), "{advice}");
        assert!(advice.contains("postgres.password_file"), "{advice}");
    }

    #[test]
    fn advice_is_found_through_the_error_chain() {
        let table = TableName::parse("public.outbox").expect("table");
        let error: anyhow::Error =
            RelayError::Replication(Preflight::TableMissing(table).into()).into();
        let advice = for_chain(&error.context("starting")).expect("advice");
        assert!(advice.contains("outboxd init"), "{advice}");
    }
}
