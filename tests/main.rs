//! End-to-end tests of tidemark against the real PostgreSQL and Apache Kafka.
//! Start both with `scripts/dev-stack.sh up`; `scripts/test.sh` does that and runs
//! everything. One binary, one module per behaviour, helpers in `support`.

mod support;

mod bridge_crash;
mod bridge_exactly_once;
mod bridge_keys;
mod bridge_ops;
mod bridge_refusals;
mod bridge_secrets;
mod bridge_setup;
mod bridge_snapshot;
mod bridge_stream;
mod bridge_values;
mod bridge_wire;
mod client_checkpoints;
mod client_commit_visibility;
mod client_compaction;
mod client_copy;
mod client_deadlines;
mod client_race;
mod client_robust;
mod client_schema;
mod client_toast;
mod client_topic_history;
mod debezium_conformance;
mod dump_tool;
mod faults;
mod kafka_sasl_ssl;
mod kafka_transactions;
mod postgres_tls;
mod table_shapes;
mod transaction_metadata;
mod value_schema;
