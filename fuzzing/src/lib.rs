//! # edgesync-fuzzing: what the fuzz targets check
//!
//! Every decoder that takes bytes from outside the process has a check here ([`targets`]):
//! the check feeds it one input and asserts more than "no panic":
//!
//! - what decodes re-encodes to a value that decodes to the same value (batches, every Avro
//!   record kind, CRDT states, spool records: a decoder and its encoder agree);
//! - a batch the reconciler decodes, the bridge's cheaper `check_batch` accepts too, naming the
//!   same replica and first seq (the bridge never dead-letters what the reconciler would take);
//! - a refused batch has a dead-letter reason;
//! - a topic that parses as a device's batch topic is that device's batch topic;
//! - a spool record read from disk is written back byte for byte;
//! - parsed ingest requests hold at most one event per two input bytes (nothing invented).
//!
//! Memory is bounded per input by libFuzzer's `-malloc_limit_mb` (see `scripts/fuzz`), the
//! codec's own limits (`Limits`) being what keeps it so. `fuzz/` (cargo-fuzz, nightly) drives
//! each check with libFuzzer; `tests/replay.rs` runs every kept input in
//! `fuzzing/fixtures/<target>/` and every [`seeds`] input through the same checks on stable
//! Rust, so a crasher once found stays fixed.

mod checks;
mod seeds;

pub use checks::*;
pub use seeds::seeds;

/// One fuzz target: its name (the folder of its fixtures and corpus) and its check.
pub type Target = (&'static str, fn(&[u8]));

/// Every target this build has (the agent's and the services' need their features).
pub fn targets() -> Vec<Target> {
    let mut t: Vec<Target> = vec![
        ("batch", checks::batch),
        ("batch_plain", checks::batch_plain),
        ("records", checks::records),
        ("topic", checks::topic),
    ];
    #[cfg(feature = "agent")]
    t.extend([
        ("ingest_json", checks::ingest_json as fn(&[u8])),
        ("spool_record", checks::spool_record),
        ("agent_config", checks::agent_config),
    ]);
    #[cfg(feature = "services")]
    t.extend([
        ("bridge_config", checks::bridge_config as fn(&[u8])),
        ("reconciler_config", checks::reconciler_config),
    ]);
    t
}
