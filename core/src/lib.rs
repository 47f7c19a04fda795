//! # edgesync-core: the pure data model
//!
//! Everything edgesync agrees on, with **no I/O at all**: no tokio, no sockets, no disk, no
//! clocks read, no randomness drawn. Time and random bits are passed in by the caller, so every
//! function here is deterministic and can run inside a seeded simulation. The crate's
//! `Cargo.toml` depends only on `blake3` and `thiserror` (plus `proptest` behind a feature for
//! shared test generators); `scripts/test` checks that with `cargo tree`.
//!
//! - [`id`]: device ids (strict grammar), replicas `(device, incarnation)`, dots `(replica, seq)`.
//! - [`hlc`]: hybrid logical clock, monotone when the wall clock jumps backwards.
//! - [`causal`]: causal context (watermark + dots above it per replica), exact missing ranges,
//!   version vectors with causal `PartialOrd`.
//! - [`crdt`]: delta-state CRDTs: G/PN-counter, max/min/LWW/MV registers, OR-set, rollup map.
//! - [`event`], [`batch`]: events and delta batches (events of one seq range + joined deltas).
//! - [`digest`]: stable BLAKE3 digests of states, for edge/server convergence checks.

pub mod batch;
pub mod causal;
pub mod crdt;
pub mod digest;
pub mod event;
pub mod hlc;
pub mod id;
pub mod value;

#[cfg(feature = "proptest")]
pub mod arbitrary;

pub use batch::{BatchBuilder, BatchError, DeltaBatch, DropReason, DroppedRange};
pub use causal::{CausalContext, ReplicaContext, SeqRange, VersionVector};
pub use crdt::{Crdt, CrdtKind, Lattice};
pub use digest::StateDigest;
pub use event::{Event, EventError, EventLimits};
pub use hlc::{Hlc, HlcClock};
pub use id::{DeviceId, Dot, Incarnation, ReplicaId};
pub use value::Value;
