//! The contract between the bridge and the client: the record format
//! ([`envelope`]) and the value codec ([`codec`]). DESIGN.md section 2 describes it;
//! both halves of tidemark use only these types, so they cannot drift apart.

pub mod codec;
pub mod envelope;

pub use codec::{ValueKind, SESSION_OPTIONS};
pub use envelope::{Envelope, Op, Row, Source, TableName};
