//! The Kafka side: [`topics`] creates the topics, [`producer`] writes records and
//! turns delivery reports into progress of the acknowledgement frontier.

pub mod producer;
pub mod topics;

pub use producer::{Record, Sink, TYPED_PRODUCER_PROPERTIES};
