//! tidemark-core: the contract between `tidemark-bridge` and `tidemark-client`, in
//! one place so the two halves cannot drift apart.
//!
//! | module | job |
//! |---|---|
//! | [`wire`] | the record format, the value codec, the key encoding and the partitioner |
//! | [`pg`] | connecting to PostgreSQL: one parser of URL and TLS settings, and the codec's session options |
//!
//! Nothing enters this crate unless both halves use it. `docs/design.md` describes
//! the contract.

pub mod pg;
pub mod wire;
