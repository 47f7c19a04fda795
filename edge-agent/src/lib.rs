//! # edgesync-agent
//!
//! The program that runs on a device or its gateway. Writes never wait for the network: every
//! event is appended to the local durable [`spool`] with a per-device sequence number, and the
//! uplink (driving `edgesync-protocol`'s agent state machine) sends delta batches when it can.
//!
//! Built so far: the spool, the outbox that turns spool entries into the batches the protocol
//! asks for, and the MQTT uplink (issue #5, in progress). Persisted agent CRDT state, ingest, CLI, config
//! and metrics follow.

pub mod outbox;
pub mod spool;
pub mod uplink;

/// What the binary says when asked to run before the uplink exists.
pub const NOT_BUILT: &str =
    "the edgesync edge agent's uplink is not built yet (issue #5, in progress); see ARCHITECTURE.md";
