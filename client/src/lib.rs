//! tidemark-client: an in-process cache of a PostgreSQL table, warm-started from
//! PostgreSQL and kept current from the Kafka topic that `tidemark-bridge` writes,
//! without missing or double-applying a change however hard the table is written
//! during the start.
//!
//! ```no_run
//! use serde::Deserialize;
//!
//! #[derive(Deserialize, Debug)]
//! struct Account { id: i64, owner: String, balance: String }
//!
//! # async fn run() -> Result<(), tidemark_client::Error> {
//! let accounts: tidemark_client::Cache<i64, Account> = tidemark_client::Cache::builder()
//!     .postgres("postgres://app@db/app")
//!     .kafka("broker:9092")
//!     .table("public.accounts")
//!     .build()
//!     .await?; // returns once warm and caught up
//! if let Some(a) = accounts.get(&42) {
//!     println!("{} has {}", a.owner, a.balance);
//! }
//! let mut changes = accounts.subscribe();
//! while let Ok(change) = changes.recv().await {
//!     println!("{:?} {:?}", change.key, change.origin);
//! }
//! # Ok(()) }
//! ```
//!
//! # How a warm start stays exact
//!
//! The snapshot strategy (the default) loads the table in one `REPEATABLE READ`
//! transaction, remembers the snapshot's transaction visibility and the WAL insert
//! position, replays the topic from a little before the snapshot time, and skips
//! exactly the records whose transaction the snapshot already contains. The
//! watermark strategy ([`Strategy::Watermark`]) serves topics another tool wrote; it
//! is exact only when its `ts` column grows in commit order per key. `docs/design.md`
//! has the full argument.
//!
//! # Types
//!
//! `K` is deserialised from the record key, a JSON object of the primary-key columns
//! (`{"id": 42}`); a single-column key also deserialises from the bare value, so
//! `Cache<i64, _>` works. `V` is deserialised from the whole row as a JSON object.
//! Values are encoded as [`tidemark_core::wire::codec`] describes (`numeric` as a string, `bytea`
//! as base64, `timestamptz` as RFC 3339, ...), identically for the bulk load and
//! the stream.
//!
//! | module | job |
//! |---|---|
//! | `config` | the checked settings, their defaults and the strategy |
//! | `state` | what the handle and the background task share: the map and its entries, changes, counters, status |
//! | `ts` | the watermark strategy's ordering column |
//! | `builder` | the settings and how a cache starts |
//! | `cache` | the handle: reads, subscriptions, figures, shutdown |
//! | `apply` | the apply rules: upsert, TOAST merge, delete, truncate per partition |
//! | `table` | the table's shape; COPY text to the same rows and keys as the bridge's |
//! | `load` | the snapshot, the streamed COPY and the insert LSN |
//! | `snapshot` | transaction visibility with modulo-2³² comparison |
//! | `seek` | the consumer, offsetsForTimes, high watermarks, manual assignment |
//! | `follow` | the consumer loop: filter, de-duplication, apply, readiness |
//! | `run` | the background task: warm start, follow, warm start again |
//! | `telemetry` | the figures, kept for `stats()` and exported through the `metrics` facade |
//! | `error` | the typed errors |

mod apply;
mod builder;
mod cache;
pub mod checkpoint;
mod config;
mod copy_row;
mod error;
mod follow;
mod load;
mod postgres;
mod row;
mod run;
mod seek;
mod state;
mod table;
mod telemetry;
mod ts;

pub use builder::Builder;
pub use cache::{Cache, Stats};
pub use config::{
    Strategy, DEFAULT_CHANNEL_CAPACITY, DEFAULT_SAFETY_WINDOW, DEFAULT_STARTUP_TIMEOUT,
    DEFAULT_TOPIC_PREFIX, TYPED_CONSUMER_PROPERTIES,
};
pub use error::{Error, Result};
pub use row::Row;
pub use state::{Change, Origin, PartitionPosition, StartedFrom};
/// The change envelope, as the records carry it.
pub use tidemark_core::wire::{Envelope, Op};
