//! # edgesync-bridge
//!
//! Subscribes to the MQTT broker and produces batches into Kafka keyed by device, acknowledging MQTT only after Kafka has the data; dead-letters bad input; carries acknowledgements back to devices.
//!
//! Not built yet: this crate holds the place of the bridge in the workspace until its issue
//! (#6) lands. What exists today is the model it will run: `edgesync-core` and the wire
//! contract in `edgesync-schemas`.

/// What this binary says when asked to run before it is built.
pub const NOT_BUILT: &str = "the edgesync bridge is not built yet (issue #6); see ARCHITECTURE.md";
