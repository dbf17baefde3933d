//! The contract between the bridge and the client: the record format
//! ([`envelope`]), the transaction metadata ([`transaction`]), the value codec ([`codec`]), the key's bytes ([`key`]) and the
//! partition of a key ([`partitioner`]). `docs/design.md` describes it; both halves of tidemark use only
//! these types, so they cannot drift apart.

pub mod codec;
pub mod connect;
pub mod debezium;
pub mod envelope;
pub mod heartbeat;
pub mod key;
pub mod partitioner;
mod pgtext;
pub mod transaction;

pub use codec::{ValueKind, SESSION_OPTIONS};
pub use debezium::ValueFormat;
pub use envelope::{Envelope, Op, Row, Source, TableName};
