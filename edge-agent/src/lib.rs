//! # edgesync-agent
//!
//! Runs on the device or its gateway: appends every event to a durable RocksDB spool with a per-device sequence number and HLC stamp, and publishes compressed delta batches over MQTT, resuming from the server's acknowledged watermark.
//!
//! Not built yet: this crate holds the place of the edge agent in the workspace until its issue
//! (#5) lands. What exists today is the model it will run: `edgesync-core` and the wire
//! contract in `edgesync-schemas`.

/// What this binary says when asked to run before it is built.
pub const NOT_BUILT: &str =
    "the edgesync edge agent is not built yet (issue #5); see ARCHITECTURE.md";
