//! `verify` (an fsck of the spool: every record decodes and is accepted, seqs dense from the
//! first held one to `next_seq - 1`) and `repair` (each bad record becomes a one-seq dropped
//! range with reason `Corrupt`, written by the writer like any change).

use super::writer::Writer;
use super::*;

impl Spool {
    /// Checks every record: it decodes, `check` accepts its body, and seqs are dense from the
    /// first held seq to `next - 1`.
    pub fn verify(
        &self,
        check: impl Fn(&[u8]) -> Result<(), String>,
    ) -> Result<VerifyReport, SpoolError> {
        let meta = self.meta();
        let mut r = VerifyReport {
            records: 0,
            first: None,
            last: None,
            gaps: Vec::new(),
            bad: BTreeMap::new(),
            next_seq: meta.next_seq,
            acked: meta.acked,
        };
        let mut expect: Option<u64> = None;
        let first = keys::event_key(0);
        let from = IteratorMode::From(&first, Direction::Forward);
        for item in self.db.db()?.iterator_opt(from, super::scan_options()) {
            let (k, v) = item?;
            let Some(seq) = keys::seq_of(&k) else { break };
            r.records += 1;
            r.first.get_or_insert(seq);
            if let Some(e) = expect {
                if seq > e {
                    r.gaps.extend(SeqRange::new(e, seq - 1));
                }
            }
            let end = match keys::decode(&v) {
                Some(keys::Record::Event { body, .. }) => {
                    if let Err(why) = check(body) {
                        r.bad.insert(seq, why);
                    }
                    seq
                }
                Some(keys::Record::Dropped { last, .. }) if last >= seq => last,
                Some(keys::Record::Dropped { .. }) => {
                    r.bad
                        .insert(seq, "dropped range ends before it starts".into());
                    seq
                }
                None => {
                    r.bad.insert(seq, "record does not decode".into());
                    seq
                }
            };
            r.last = Some(end);
            expect = Some(end + 1);
        }
        if let Some(last) = r.last {
            if last >= meta.next_seq {
                r.bad
                    .insert(last, format!("seq beyond next_seq {}", meta.next_seq));
            }
        }
        Ok(r)
    }

    /// Replaces every record `verify` found bad by a dropped range (reason `Corrupt`), so the
    /// server is told they are gone and no valid record or seq is touched. Returns how many.
    pub fn repair(&self, report: &VerifyReport) -> Result<usize, SpoolError> {
        let (reply, rx) = mpsc::sync_channel(1);
        self.send(Request::Repair {
            seqs: report.bad.keys().copied().collect(),
            reply,
        })?;
        Ok(rx.recv().map_err(|_| SpoolError::Closed)?? as usize)
    }
}

/// What `verify` found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyReport {
    /// Records held.
    pub records: u64,
    /// First held seq.
    pub first: Option<u64>,
    /// Last held seq (end of a dropped range included).
    pub last: Option<u64>,
    /// Seqs missing between held records (never expected: each is a bug or damage).
    pub gaps: Vec<SeqRange>,
    /// Records that fail, by seq, with the reason.
    pub bad: BTreeMap<u64, String>,
    /// `next_seq` from the metadata.
    pub next_seq: u64,
    /// Acknowledged watermark from the metadata.
    pub acked: u64,
}

impl VerifyReport {
    /// Whether nothing is wrong.
    pub fn is_clean(&self) -> bool {
        self.gaps.is_empty() && self.bad.is_empty()
    }
}

impl Writer {
    /// Replaces the records at `seqs` by one-seq dropped ranges (reason `Corrupt`), keeping
    /// the counters true.
    pub(super) fn repair(
        &self,
        s: &mut State,
        b: &mut WriteBatch,
        seqs: &[u64],
        now: u64,
    ) -> Result<u64, SpoolError> {
        let mut repaired = 0;
        for &seq in seqs {
            let Some(old) = self.db.db()?.get(keys::event_key(seq))? else {
                continue; // trimmed meanwhile
            };
            if matches!(keys::decode(&old), Some(keys::Record::Event { .. })) {
                s.events = s.events.saturating_sub(1);
            }
            let rec = keys::dropped_record(now, seq, DropReason::Corrupt.byte());
            s.bytes = s.bytes.saturating_sub(record_size(old.len())) + record_size(rec.len());
            b.put(keys::event_key(seq), rec);
            repaired += 1;
        }
        s.oldest_ms = self.oldest_event_after(s.acked, seqs)?;
        Ok(repaired)
    }
}
