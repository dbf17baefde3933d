//! tidemark-core: the contract between `tidemark-bridge` and `tidemark-client`, in
//! one place so the two halves cannot drift apart.
//!
//! | module | job |
//! |---|---|
//! | [`wire`] | the record format, the value codec, the key encoding and the partitioner |
//! | [`pg`] | PostgreSQL: one parser of URL and TLS settings, the codec's session options, the catalog queries both halves make, which errors are worth retrying |
//! | [`backoff`] | how long to wait before trying again |
//! | [`secrets`] | what never appears in output: URL passwords, secret Kafka properties |
//!
//! Nothing enters this crate unless both halves use it. `docs/design.md` describes
//! the contract.

pub mod backoff;
pub mod pg;
pub mod secrets;
pub mod wire;
