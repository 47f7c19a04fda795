//! Disk faults under the spool, on real RocksDB files: flipped bits in a table file and in the
//! WAL, a truncated WAL, a damaged MANIFEST, a disk that fills up mid-write. Every time the
//! spool opens by itself, keeps every record it can still read exactly as written, turns what
//! it cannot into dropped ranges with reason `Corrupt` (so its seqs stay dense and nothing is
//! reused), and takes writes again.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use edgesync_agent::spool::{Appended, DropReason, Entry, Spool, SpoolConfig, SpoolError};
use edgesync_testkit::{files_by_size, flip_bytes};

const EVENTS: u64 = 2_000;
const PER_APPEND: u64 = 10;

fn body(i: u64) -> Vec<u8> {
    let mut b = format!("event-{i:08}-").into_bytes();
    b.resize(200, b'.');
    b
}

/// A spool of `EVENTS` events in appends of `PER_APPEND` (each one WAL record).
fn filled(dir: &Path) {
    let s = Spool::open(dir, SpoolConfig::default()).unwrap();
    for a in 0..EVENTS / PER_APPEND {
        let bodies = (a * PER_APPEND..(a + 1) * PER_APPEND).map(body).collect();
        assert!(matches!(s.append(bodies).unwrap(), Appended::Stored(_)));
    }
}

/// Opening again replays the WAL into a table file (RocksDB flushes at recovery).
fn into_tables(dir: &Path) {
    drop(Spool::open(dir, SpoolConfig::default()).unwrap());
}

/// Every seq `1..=EVENTS` is an event with its original bytes or inside a `Corrupt` range;
/// returns how many are corrupt.
fn check_salvaged(s: &Spool) -> u64 {
    let got = s.read(1, usize::MAX, usize::MAX).unwrap();
    let mut next = 1;
    let mut corrupt = 0;
    for e in &got {
        match e {
            Entry::Event { seq, body: b, .. } => {
                assert_eq!(*seq, next, "seqs are dense");
                assert_eq!(b, &body(seq - 1), "seq {seq} kept as written");
                next += 1;
            }
            Entry::Dropped {
                first,
                last,
                reason,
            } => {
                assert_eq!(*first, next, "seqs are dense");
                assert_eq!(*reason, DropReason::Corrupt);
                corrupt += last - first + 1;
                next = last + 1;
            }
        }
    }
    assert_eq!(next, EVENTS + 1, "every seq accounted for");
    assert_eq!(corrupt, s.salvage().corrupt_seqs());
    corrupt
}

/// New writes take the next seqs, and a second open finds nothing to mend.
fn writes_again(dir: &Path, s: Spool) {
    let got = s.append(vec![body(EVENTS)]).unwrap();
    assert_eq!(
        got,
        Appended::Stored(edgesync_core::SeqRange::new(EVENTS + 1, EVENTS + 1).unwrap())
    );
    drop(s);
    let s = Spool::open(dir, SpoolConfig::default()).unwrap();
    assert!(!s.salvage().found_damage(), "{:?}", s.salvage());
    assert_eq!(s.meta().next_seq, EVENTS + 2);
}

#[test]
fn flipped_bits_in_a_table_file_cost_only_the_records_of_the_bad_block() {
    let dir = tempfile::tempdir().unwrap();
    filled(dir.path());
    into_tables(dir.path());
    let sst = files_by_size(dir.path(), |n| n.ends_with(".sst")).pop();
    flip_bytes(&sst.expect("a table file"), 0.4, 16).unwrap();
    let s = Spool::open(dir.path(), SpoolConfig::default()).unwrap();
    assert!(s.salvage().rebuilt, "{:?}", s.salvage());
    let corrupt = check_salvaged(&s);
    assert!(
        corrupt > 0 && corrupt < EVENTS / 10,
        "{corrupt} seqs lost to one block"
    );
    let aside = corrupt_copy(dir.path());
    assert!(aside.exists(), "the damaged spool is kept beside it");
    writes_again(dir.path(), s);
    std::fs::remove_dir_all(aside).unwrap();
}

fn corrupt_copy(dir: &Path) -> PathBuf {
    let mut s = dir.as_os_str().to_owned();
    s.push(".corrupt");
    PathBuf::from(s)
}

#[test]
fn a_flipped_wal_record_costs_only_its_own_events_and_no_seq_is_reused() {
    let dir = tempfile::tempdir().unwrap();
    filled(dir.path());
    let wal = files_by_size(dir.path(), |n| n.ends_with(".log")).pop();
    flip_bytes(&wal.expect("a WAL file"), 0.5, 4).unwrap();
    let s = Spool::open(dir.path(), SpoolConfig::default()).unwrap();
    let corrupt = check_salvaged(&s);
    assert!(
        corrupt > 0 && corrupt < EVENTS / 10,
        "{corrupt} seqs lost to one record"
    );
    writes_again(dir.path(), s);
}

#[test]
fn a_truncated_wal_opens_with_what_it_still_holds() {
    let dir = tempfile::tempdir().unwrap();
    filled(dir.path());
    let wal = files_by_size(dir.path(), |n| n.ends_with(".log")).pop();
    let wal = wal.expect("a WAL file");
    let len = std::fs::metadata(&wal).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&wal)
        .unwrap()
        .set_len(len * 6 / 10)
        .unwrap();
    let s = Spool::open(dir.path(), SpoolConfig::default()).unwrap();
    // The lost tail is not known to the spool (its `m/next` went with it): the events kept
    // are dense from 1, each as written, and new ones follow them.
    let got = s.read(1, usize::MAX, usize::MAX).unwrap();
    let kept = got.len() as u64;
    assert!(kept > EVENTS / 2 && kept < EVENTS, "{kept}");
    for (i, e) in got.iter().enumerate() {
        let Entry::Event { seq, body: b, .. } = e else {
            panic!("{e:?}")
        };
        assert_eq!((*seq, b), (i as u64 + 1, &body(i as u64)));
    }
    assert_eq!(s.meta().next_seq, kept + 1);
    assert!(matches!(s.append(vec![body(0)]).unwrap(), Appended::Stored(r) if r.start == kept + 1));
}

#[test]
fn a_damaged_manifest_is_rebuilt_from_the_table_files() {
    let dir = tempfile::tempdir().unwrap();
    filled(dir.path());
    into_tables(dir.path());
    let manifest = files_by_size(dir.path(), |n| n.starts_with("MANIFEST")).pop();
    flip_bytes(&manifest.expect("a MANIFEST"), 0.1, 32).unwrap();
    let s = Spool::open(dir.path(), SpoolConfig::default()).unwrap();
    assert!(s.salvage().repaired, "{:?}", s.salvage());
    assert_eq!(check_salvaged(&s), 0, "the repairer keeps every table");
    writes_again(dir.path(), s);
}

/// A tmpfs of `bytes`, mounted for the test's life (the test runs as root, as the suite does).
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(bytes: u64) -> Self {
        let dir = tempfile::tempdir().unwrap().keep();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}")])
            .arg("tmpfs")
            .arg(&dir)
            .status()
            .unwrap();
        assert!(
            status.success(),
            "mount a small tmpfs (this test needs root)"
        );
        SmallDisk(dir)
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Writes `path` until the disk is full.
fn fill(path: &Path) {
    use std::io::Write as _;
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 64 << 10];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.sync_all();
}

#[test]
fn a_full_disk_refuses_writes_with_an_error_and_takes_them_again_when_space_returns() {
    let disk = SmallDisk::mount(64 << 20);
    let filler = disk.0.join("filler");
    let dir = disk.0.join("spool");
    let s = Spool::open(&dir, SpoolConfig::default()).unwrap();
    let mut answered = 0u64;
    let mut refused = None;
    // Another program takes what the spool left of the disk; its appends then run out of it.
    fill(&filler);
    for a in 0..10_000u64 {
        let bodies = (a * PER_APPEND..(a + 1) * PER_APPEND).map(body).collect();
        match s.append(bodies) {
            Ok(Appended::Stored(r)) => answered = r.end,
            Ok(other) => panic!("{other:?}"),
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let e = refused.expect("the disk never filled");
    assert!(matches!(e, SpoolError::Db(_)), "{e}");
    assert!(e.to_string().contains("No space"), "{e}");
    std::fs::remove_file(&filler).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let again = loop {
        match s.append(vec![body(answered)]) {
            Ok(Appended::Stored(r)) => break r,
            other => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "no writes after space returned: {other:?}"
                );
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
        }
    };
    assert_eq!(again.start, answered + 1, "no seq lost or reused");
    drop(s);
    let s = Spool::open(&dir, SpoolConfig::default()).unwrap();
    assert_eq!(s.meta().next_seq, answered + 2);
    let got = s.read(1, usize::MAX, usize::MAX).unwrap();
    assert_eq!(got.len() as u64, answered + 1);
}
