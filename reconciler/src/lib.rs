//! # edgesync-reconciler
//!
//! A Kafka consumer group that de-duplicates by causal context, merges delta-state CRDTs into RocksDB state stores and emits deduplicated events and converged state as Avro.
//!
//! Not built yet: this crate holds the place of the reconciler in the workspace until its issue
//! (#7) lands. What exists today is the model it will run: `edgesync-core` and the wire
//! contract in `edgesync-schemas`.

/// What this binary says when asked to run before it is built.
pub const NOT_BUILT: &str =
    "the edgesync reconciler is not built yet (issue #7); see ARCHITECTURE.md";
