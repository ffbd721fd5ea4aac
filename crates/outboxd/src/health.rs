//! What `/readyz` answers: the relay's role and whether it can do its job.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Mutex;

/// What the relay is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Opening a session, or waiting to retry.
    Starting,
    /// Relaying from the slot.
    Active,
    /// Another process holds the slot; this relay takes over when it is free.
    Standby,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Starting => "starting",
            Role::Active => "active",
            Role::Standby => "standby",
        }
    }

    fn from_u8(value: u8) -> Role {
        match value {
            1 => Role::Active,
            2 => Role::Standby,
            _ => Role::Starting,
        }
    }

    fn as_u8(self) -> u8 {
        match self {
            Role::Starting => 0,
            Role::Active => 1,
            Role::Standby => 2,
        }
    }
}

/// Readiness: an active relay whose stream is attached and whose producer is
/// healthy, or a standby (it is doing its job: waiting to take over). A standby
/// counts as ready so that a rolling update of an active/standby pair can proceed.
#[derive(Debug, Default)]
pub struct Health {
    role: AtomicU8,
    stream_attached: AtomicBool,
    producer_problem: Mutex<Option<String>>,
}

impl Health {
    pub fn set_role(&self, role: Role) {
        self.role.store(role.as_u8(), Ordering::Relaxed);
    }

    pub fn role(&self) -> Role {
        Role::from_u8(self.role.load(Ordering::Relaxed))
    }

    pub fn set_stream_attached(&self, attached: bool) {
        self.stream_attached.store(attached, Ordering::Relaxed);
    }

    pub fn set_producer_problem(&self, problem: Option<String>) {
        if let Ok(mut p) = self.producer_problem.lock() {
            *p = problem;
        }
    }

    /// `Ok` with the role when ready, else why not.
    pub(crate) fn readiness(&self) -> Result<&'static str, String> {
        match self.role() {
            Role::Standby => return Ok("standby"),
            Role::Starting => return Err("starting: no replication session yet".to_owned()),
            Role::Active => {}
        }
        if !self.stream_attached.load(Ordering::Relaxed) {
            return Err("replication stream not attached".to_owned());
        }
        match self.producer_problem.lock().ok().and_then(|p| p.clone()) {
            Some(problem) => Err(format!("producer: {problem}")),
            None => Ok("active"),
        }
    }
}
