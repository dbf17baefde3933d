//! tidemark-client: an in-process cache of a PostgreSQL table, warm-started from
//! PostgreSQL and kept current from the Kafka topic that `tidemark-bridge` writes.
//!
//! | module | job |
//! |---|---|
//! | [`wire`] | the record format and value codec shared with the bridge |

pub mod wire;
