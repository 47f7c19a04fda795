//! # edgesync-reconciler
//!
//! The Kafka consumer that turns at-least-once batches into exactly-once events and converged
//! state, in two stages run by one binary (each a consumer group, so several processes split
//! the partitions):
//!
//! - [`device`]: batches partitioned by device → the protocol's `Server` (causal
//!   de-duplication, in-order release) → events, re-keyed state deltas, acks;
//! - [`key`]: state deltas partitioned by CRDT key → joined in the RocksDB [`store`] →
//!   converged values on the compacted state topic.
//!
//! [`ledger`] is the completeness ledger behind `/v1/status`; [`service::run`] wires it all
//! under one cancellation token.

pub mod config;
pub mod device;
pub mod key;
pub mod ledger;
pub mod metrics;
pub mod out;
pub mod service;
pub mod stage;
pub mod store;

/// Why a stage stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Kafka failed (a client could not be created, or a delivery failed for good).
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// The state store failed.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// An output could not be encoded (a bug: inputs were decoded and validated).
    #[error("encode: {0}")]
    Encode(#[from] edgesync_schemas::EncodeError),
    /// Replaying a partition range failed.
    #[error("replay: {0}")]
    Replay(String),
}
