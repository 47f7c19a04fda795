//! # edgesync-protocol: the sync protocol, without I/O
//!
//! Two state machines, written once and driven by whoever does the I/O (the edge-agent and the
//! reconciler in production, the seeded fleet simulator in tests), in the style of rumqttc's
//! `MqttState` versus its event loop: inputs are method calls with the current time passed in,
//! outputs are return values. No clocks are read, nothing blocks, nothing is sent from here.
//!
//! - [`agent::Agent`]: which seq range to send next (always from the server's watermark + 1,
//!   within a bounded window of batches and bytes), when to give up on a send and go back to the
//!   watermark, how to resume after a reconnect, and what the spool may trim.
//! - [`server::Server`]: de-duplicates batches by causal context, releases events in dot order
//!   per replica (a gap holds later events back), hands out the state deltas to merge, and says
//!   what to acknowledge (the watermark) and what is missing (exact ranges, and since when).
//!
//! ## The contract between them
//! 1. The agent assigns dense seqs at append and never sends a seq it has not made durable.
//! 2. The server acknowledges a watermark `w` only once every seq `1..=w` is durable on its side;
//!    acks are monotone per replica.
//! 3. The agent trims its spool only at or below an acknowledged watermark, and after any
//!    (re)connect or timeout it sends again from `watermark + 1` (go-back-N): nothing the server
//!    acknowledged is sent again, and nothing unacknowledged is ever forgotten. Before it goes
//!    back it asks for the server's current watermark (the retained ack: on a connect, and
//!    after a timeout), so that a batch that arrived but whose ack was lost is acknowledged,
//!    not sent again.
//! 4. Duplicates, reordering and partial overlaps between batches are expected and harmless:
//!    events are de-duplicated by dot, state deltas are joins.

pub mod agent;
pub mod server;

pub use agent::{Agent, AgentConfig, AgentDurable, BatchRequest};
pub use server::{Applied, ReplicaState, ReplicaStatus, Server, ServerConfig};
