//! The Kafka side: [`topics`] creates the topics, [`producer`] writes records and
//! reports each one's delivery to whoever numbers the transactions ([`Acks`], the
//! pipeline's acknowledgement frontier), [`state`] keeps the bridge's own state, and
//! [`readback`] reads the bridge's topics back.

pub mod producer;
pub mod readback;
pub mod state;
pub mod topics;

pub use producer::{Acks, Record, Sink};
