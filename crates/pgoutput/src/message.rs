//! The pgoutput (protocol version 1) message model.
//!
//! Each type mirrors one message of the wire format one-to-one, so that a
//! decoded message can be encoded back to the identical bytes (see the
//! `encode` feature). Interpretation — which tuple belongs to which table, what
//! a column means — is left to the layers above; only the [`StreamDecoder`]
//! adds cross-message checks.
//!
//! [`StreamDecoder`]: crate::StreamDecoder

use std::str::Utf8Error;
use std::sync::Arc;

use bytes::Bytes;

use crate::Lsn;

/// One decoded pgoutput message.
///
/// The variants are the messages a walsender sends with `proto_version '1'`
/// (plus `messages 'true'` for [`Message`]). Streaming, two-phase and
/// sequence messages of later protocol versions are deliberately unsupported:
/// outboxd only wants whole, committed transactions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogicalMessage {
    /// `B`: start of a committed transaction.
    Begin(Begin),
    /// `C`: end of the transaction opened by the last [`Begin`].
    Commit(Commit),
    /// `O`: the transaction came from another node via replication origin.
    Origin(Origin),
    /// `R`: schema of a table, sent before its first change on a connection
    /// and again after the table changes.
    Relation(Relation),
    /// `Y`: name of a non-builtin data type used by a following relation.
    Type(TypeMessage),
    /// `I`: a row was inserted.
    Insert(Insert),
    /// `U`: a row was updated.
    Update(Update),
    /// `D`: a row was deleted.
    Delete(Delete),
    /// `T`: one or more tables were truncated.
    Truncate(Truncate),
    /// `M`: a `pg_logical_emit_message()` call.
    Message(Message),
}

impl LogicalMessage {
    /// The one-byte tag that starts this message on the wire.
    pub const fn tag(&self) -> u8 {
        match self {
            LogicalMessage::Begin(_) => tag::BEGIN,
            LogicalMessage::Commit(_) => tag::COMMIT,
            LogicalMessage::Origin(_) => tag::ORIGIN,
            LogicalMessage::Relation(_) => tag::RELATION,
            LogicalMessage::Type(_) => tag::TYPE,
            LogicalMessage::Insert(_) => tag::INSERT,
            LogicalMessage::Update(_) => tag::UPDATE,
            LogicalMessage::Delete(_) => tag::DELETE,
            LogicalMessage::Truncate(_) => tag::TRUNCATE,
            LogicalMessage::Message(_) => tag::MESSAGE,
        }
    }

    /// Human-readable name of the message kind ("Insert", "Commit", ...).
    pub const fn name(&self) -> &'static str {
        match tag::name(self.tag()) {
            Some(name) => name,
            None => "unknown",
        }
    }
}

/// Wire tags of the protocol version 1 messages.
pub mod tag {
    /// Begin.
    pub const BEGIN: u8 = b'B';
    /// Commit.
    pub const COMMIT: u8 = b'C';
    /// Origin.
    pub const ORIGIN: u8 = b'O';
    /// Relation.
    pub const RELATION: u8 = b'R';
    /// Type.
    pub const TYPE: u8 = b'Y';
    /// Insert.
    pub const INSERT: u8 = b'I';
    /// Update.
    pub const UPDATE: u8 = b'U';
    /// Delete.
    pub const DELETE: u8 = b'D';
    /// Truncate.
    pub const TRUNCATE: u8 = b'T';
    /// Logical decoding message.
    pub const MESSAGE: u8 = b'M';

    /// Name of the message kind for a tag, `None` for tags we do not know.
    pub const fn name(tag: u8) -> Option<&'static str> {
        Some(match tag {
            BEGIN => "Begin",
            COMMIT => "Commit",
            ORIGIN => "Origin",
            RELATION => "Relation",
            TYPE => "Type",
            INSERT => "Insert",
            UPDATE => "Update",
            DELETE => "Delete",
            TRUNCATE => "Truncate",
            MESSAGE => "Message",
            _ => return None,
        })
    }
}

/// `B` Begin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Begin {
    /// LSN of the transaction's commit record. The matching [`Commit`]
    /// repeats it as `commit_lsn`; the [`StreamDecoder`](crate::StreamDecoder)
    /// checks that they agree.
    pub final_lsn: Lsn,
    /// Commit time, microseconds since 2000-01-01 UTC
    /// (see [`pg_time_to_system_time`](crate::pg_time_to_system_time)).
    pub commit_time: i64,
    /// Transaction id.
    pub xid: u32,
}

/// `C` Commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Commit {
    /// Flags; unused by Postgres so far (always 0). Kept raw, not validated,
    /// so that a future flag does not break decoding.
    pub flags: u8,
    /// LSN of the commit record; equals the [`Begin::final_lsn`].
    pub commit_lsn: Lsn,
    /// LSN just past the commit record. This is the position to confirm
    /// (flush) once the whole transaction is durable downstream: restarting
    /// from it resumes with the next transaction.
    pub end_lsn: Lsn,
    /// Commit time, microseconds since 2000-01-01 UTC.
    pub commit_time: i64,
}

/// `O` Origin: the current transaction was replayed from another node.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Origin {
    /// LSN of the commit on the origin server.
    pub commit_lsn: Lsn,
    /// Name of the replication origin.
    pub name: String,
}

/// Replica identity of a table (`pg_class.relreplident`): which old-row
/// columns Updates and Deletes carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReplicaIdentity {
    /// `d`: primary key columns (the default).
    Default,
    /// `n`: nothing; Updates and Deletes carry no old row data.
    Nothing,
    /// `f`: all columns.
    Full,
    /// `i`: the columns of a chosen unique index.
    Index,
}

impl ReplicaIdentity {
    /// Maps the wire byte (`d`, `n`, `f`, `i`) to a variant.
    pub const fn from_byte(b: u8) -> Option<Self> {
        match b {
            b'd' => Some(ReplicaIdentity::Default),
            b'n' => Some(ReplicaIdentity::Nothing),
            b'f' => Some(ReplicaIdentity::Full),
            b'i' => Some(ReplicaIdentity::Index),
            _ => None,
        }
    }

    /// The wire byte for this variant.
    pub const fn as_byte(self) -> u8 {
        match self {
            ReplicaIdentity::Default => b'd',
            ReplicaIdentity::Nothing => b'n',
            ReplicaIdentity::Full => b'f',
            ReplicaIdentity::Index => b'i',
        }
    }
}

/// `R` Relation: the schema of a published table as of now.
///
/// Tuples in Insert/Update/Delete messages carry one value per entry in
/// [`columns`](Relation::columns), in the same order, so this is what gives
/// their values a name and a type.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Relation {
    /// Table OID; Insert/Update/Delete/Truncate refer to the table by it.
    pub oid: u32,
    /// Schema name; empty for `pg_catalog`.
    pub namespace: String,
    /// Table name.
    pub name: String,
    /// Replica identity setting.
    pub replica_identity: ReplicaIdentity,
    /// Published columns (generated columns and, with column lists, unlisted
    /// ones are not sent).
    pub columns: Vec<Column>,
}

impl Relation {
    /// Position of the column called `name`, i.e. the index of its value in
    /// this relation's tuples. Exact, case-sensitive match (Postgres has
    /// already folded unquoted identifiers to lower case).
    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }

    /// The column called `name`, if any.
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }
}

/// One column of a [`Relation`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Column {
    /// Column flags; bit [`Column::FLAG_KEY`] marks replica identity columns.
    pub flags: u8,
    /// Column name.
    pub name: String,
    /// OID of the column's data type (e.g. 2950 for `uuid`, 3802 for `jsonb`).
    pub type_oid: u32,
    /// Type modifier (`atttypmod`), e.g. the length of a `varchar(n)` plus 4;
    /// -1 when there is none.
    pub type_modifier: i32,
}

impl Column {
    /// Flag bit: the column is part of the replica identity key.
    pub const FLAG_KEY: u8 = 1;

    /// Whether the column is part of the replica identity key.
    pub const fn is_key(&self) -> bool {
        self.flags & Self::FLAG_KEY != 0
    }
}

/// `Y` Type: namespace and name of a data type, sent before a Relation that
/// uses a type without a well-known OID.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TypeMessage {
    /// Type OID.
    pub oid: u32,
    /// Schema name; empty for `pg_catalog`.
    pub namespace: String,
    /// Type name.
    pub name: String,
}

/// Values of one row, one per column of the relation, in column order.
pub type TupleData = Vec<ColumnValue>;

/// One column value of a row.
///
/// The payload is a slice of the received message (no copy), so holding on
/// to a value keeps the whole message buffer alive.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ColumnValue {
    /// `n`: SQL NULL.
    Null,
    /// `u`: a TOASTed value that the update did not change; Postgres does
    /// not send it again. Only occurs in the new tuple of an Update.
    UnchangedToast,
    /// `t`: the value in the type's text output format (`binary 'false'`,
    /// the default).
    Text(Bytes),
    /// `b`: the value in the type's binary send format (`binary 'true'`).
    Binary(Bytes),
}

impl ColumnValue {
    /// The value as text, for [`ColumnValue::Text`] only.
    ///
    /// Text output is in the database's server encoding, UTF-8 in any
    /// modern setup; the check is done (it is cheap) rather than assumed,
    /// so a `SQL_ASCII` or `LATIN1` database shows up as an error instead
    /// of as mangled events.
    pub fn as_text(&self) -> Option<Result<&str, Utf8Error>> {
        match self {
            ColumnValue::Text(b) => Some(std::str::from_utf8(b)),
            _ => None,
        }
    }

    /// The raw bytes of a text or binary value; `None` for NULL and
    /// unchanged TOAST.
    pub fn as_bytes(&self) -> Option<&Bytes> {
        match self {
            ColumnValue::Text(b) | ColumnValue::Binary(b) => Some(b),
            ColumnValue::Null | ColumnValue::UnchangedToast => None,
        }
    }

    /// Whether the value is SQL NULL.
    pub const fn is_null(&self) -> bool {
        matches!(self, ColumnValue::Null)
    }
}

/// The old row image carried by an Update or Delete.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum OldTuple {
    /// `K`: only the replica identity key columns are set; the others are
    /// NULL. Sent for `REPLICA IDENTITY DEFAULT`/`INDEX`.
    Key(TupleData),
    /// `O`: the complete old row. Sent for `REPLICA IDENTITY FULL`.
    Full(TupleData),
}

impl OldTuple {
    /// The column values, whichever kind of image this is.
    pub fn values(&self) -> &TupleData {
        match self {
            OldTuple::Key(t) | OldTuple::Full(t) => t,
        }
    }
}

/// `I` Insert.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Insert {
    /// OID of the table, announced by an earlier [`Relation`].
    pub relation_oid: u32,
    /// The inserted row.
    pub new: TupleData,
}

/// `U` Update.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Update {
    /// OID of the table.
    pub relation_oid: u32,
    /// Old row image: present only when the key changed (`K`) or the table
    /// has `REPLICA IDENTITY FULL` (`O`).
    pub old: Option<OldTuple>,
    /// The new row; unchanged TOASTed columns are
    /// [`ColumnValue::UnchangedToast`].
    pub new: TupleData,
}

/// `D` Delete.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Delete {
    /// OID of the table.
    pub relation_oid: u32,
    /// Key (`K`) or full (`O`) image of the deleted row.
    pub old: OldTuple,
}

/// `T` Truncate.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Truncate {
    /// Option bits: [`Truncate::OPTION_CASCADE`],
    /// [`Truncate::OPTION_RESTART_IDENTITY`]. Kept raw.
    pub options: u8,
    /// OIDs of the truncated tables.
    pub relation_oids: Vec<u32>,
}

impl Truncate {
    /// Option bit: `TRUNCATE ... CASCADE`.
    pub const OPTION_CASCADE: u8 = 1;
    /// Option bit: `TRUNCATE ... RESTART IDENTITY`.
    pub const OPTION_RESTART_IDENTITY: u8 = 2;

    /// Whether `CASCADE` was given.
    pub const fn cascade(&self) -> bool {
        self.options & Self::OPTION_CASCADE != 0
    }

    /// Whether `RESTART IDENTITY` was given.
    pub const fn restart_identity(&self) -> bool {
        self.options & Self::OPTION_RESTART_IDENTITY != 0
    }
}

/// `M` logical decoding message, written by `pg_logical_emit_message()`.
///
/// This is how an outbox event can travel without a table: emitted
/// transactionally inside the business transaction, it arrives between that
/// transaction's Begin and Commit, and only if it committed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Message {
    /// `true` if emitted transactionally (flags bit 1). Non-transactional
    /// messages are sent as soon as decoded, outside any Begin/Commit, and
    /// even if the emitting transaction later rolls back.
    pub transactional: bool,
    /// LSN of the message record.
    pub lsn: Lsn,
    /// The prefix given to `pg_logical_emit_message`; pgoutput sends every
    /// message to every slot, so consumers filter on it.
    pub prefix: String,
    /// The content, arbitrary bytes (not necessarily UTF-8), sliced from the
    /// input without copying.
    pub content: Bytes,
}

impl Message {
    /// Flags bit for a transactional message.
    pub const FLAG_TRANSACTIONAL: u8 = 1;
}

/// Shared, immutable relation as kept in the [`StreamDecoder`] cache.
///
/// [`StreamDecoder`]: crate::StreamDecoder
pub type SharedRelation = Arc<Relation>;
