//! Every kept fuzz input (`fixtures/<target>/*`: crashers found and fixed, and inputs worth
//! keeping) and every seed, through its target's check, on stable Rust.

use std::collections::BTreeSet;
use std::path::Path;

use edgesync_fuzzing::{codec, seeds, targets};

fn fixtures() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

#[test]
fn every_kept_input_passes_its_check() {
    let mut replayed = 0;
    for (name, check) in targets() {
        let dir = fixtures().join(name);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.expect("a readable fixtures folder").path();
            let bytes = std::fs::read(&path).expect("a readable fixture");
            eprintln!("{name}: {}", path.display());
            check(&bytes);
            replayed += 1;
        }
    }
    eprintln!("{replayed} kept inputs replayed");
}

#[test]
fn every_fixtures_folder_is_a_target() {
    let names: BTreeSet<&str> = targets().iter().map(|(n, _)| *n).collect();
    for entry in std::fs::read_dir(fixtures()).expect("fixtures/ exists") {
        let entry = entry.expect("readable");
        if entry.path().is_dir() {
            let name = entry.file_name().to_string_lossy().into_owned();
            assert!(
                names.contains(name.as_str()),
                "fixtures/{name} names no target"
            );
        }
    }
}

#[test]
fn every_target_has_seeds_and_they_pass_their_check() {
    let seeds = seeds();
    for (name, check) in targets() {
        let mine: Vec<&Vec<u8>> = seeds
            .iter()
            .filter(|(t, _)| *t == name)
            .map(|(_, b)| b)
            .collect();
        assert!(!mine.is_empty(), "no seed for {name}");
        mine.iter().for_each(|b| check(b));
    }
}

/// The seeds reach the decoders' success paths (a corpus of refused inputs would fuzz only the
/// first check each decoder makes).
#[test]
fn the_seeds_decode() {
    let c = codec();
    for (target, bytes) in seeds() {
        let ok = match target {
            "batch" => c.decode_batch(&bytes).is_ok(),
            "batch_plain" => {
                let compressed = zstd::bulk::compress(&bytes, 1).expect("compresses");
                c.decode_batch(&compressed).is_ok()
            }
            "records" => {
                c.decode_event(&bytes).is_ok()
                    || c.decode_ack(&bytes).is_ok()
                    || c.decode_state_record(&bytes).is_ok()
                    || c.decode_dead_letter(&bytes).is_ok()
                    || c.decode_completeness(&bytes).is_ok()
                    || c.decode_crdt_state(&bytes).is_ok()
                    || c.decode_spool_record(&bytes, edgesync_fuzzing::spool_dot())
                        .is_ok()
            }
            "topic" => std::str::from_utf8(&bytes).is_ok(),
            "ingest_json" => {
                use edgesync_agent::ingest::json::{parse_json, parse_ndjson};
                parse_json(&bytes).is_ok() || parse_ndjson(&bytes).is_ok()
            }
            "spool_record" => edgesync_agent::spool::keys::decode(&bytes).is_some(),
            _ => true, // configs: the shipped files, loaded by each service's own test
        };
        assert!(ok, "a {target} seed does not decode: {bytes:02x?}");
    }
}
