//! Causal context properties, checked against a plain set-of-dots model.

use std::collections::BTreeSet;

use edgesync_core::arbitrary::{self, replica};
use edgesync_core::{CausalContext, Dot, SeqRange};
use proptest::prelude::*;
use proptest::test_runner::Config;

fn config() -> Config {
    Config {
        cases: arbitrary::cases(),
        failure_persistence: None,
        ..Config::default()
    }
}

/// (replica index, seq) pairs, dense enough to form watermarks and gaps.
fn dots() -> impl Strategy<Value = Vec<(usize, u64)>> {
    prop::collection::vec((0usize..3, 1u64..80), 0..120)
}

fn build(ds: &[(usize, u64)]) -> CausalContext {
    let mut c = CausalContext::new();
    for &(r, s) in ds {
        c.insert(&Dot::new(replica(r), s));
    }
    c
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn result_is_independent_of_insertion_order(ds in dots(), seed in any::<u64>()) {
        let order = arbitrary::delivery_order(ds.len(), seed);
        let shuffled: Vec<_> = order.into_iter().map(|i| ds[i]).collect();
        prop_assert_eq!(build(&ds), build(&shuffled));
    }

    #[test]
    fn insert_reports_new_dots_exactly(ds in dots()) {
        let mut c = CausalContext::new();
        let mut model = BTreeSet::new();
        for &(r, s) in &ds {
            let d = Dot::new(replica(r), s);
            prop_assert_eq!(c.insert(&d), model.insert((r, s)));
        }
        for r in 0..3 {
            for s in 1..=90 {
                prop_assert_eq!(c.contains(&Dot::new(replica(r), s)), model.contains(&(r, s)));
            }
        }
    }

    #[test]
    fn watermark_and_missing_ranges_are_exact(ds in dots(), up_to in 0u64..100) {
        let c = build(&ds);
        let model: BTreeSet<(usize, u64)> = ds.iter().copied().collect();
        for r in 0..3 {
            let rid = replica(r);
            let wm = c.watermark(&rid);
            prop_assert!((1..=wm).all(|s| model.contains(&(r, s))));
            prop_assert!(!model.contains(&(r, wm + 1)));
            let missing = c.missing(&rid, up_to);
            // Ranges are sorted, maximal (never adjacent) and cover exactly the absent seqs.
            for w in missing.windows(2) {
                prop_assert!(w[0].end + 1 < w[1].start);
            }
            let listed: BTreeSet<u64> =
                missing.iter().flat_map(|m: &SeqRange| m.start..=m.end).collect();
            let absent: BTreeSet<u64> =
                (wm + 1..=up_to).filter(|s| !model.contains(&(r, *s))).collect();
            prop_assert_eq!(listed, absent);
        }
    }

    #[test]
    fn merge_is_union(a in dots(), b in dots()) {
        let mut m = build(&a);
        m.merge(&build(&b));
        let both: Vec<_> = a.iter().chain(&b).copied().collect();
        prop_assert_eq!(&m, &build(&both));
        let mut n = build(&b);
        n.merge(&build(&a));
        prop_assert_eq!(&m, &n, "merge is commutative");
        let mut i = m.clone();
        i.merge(&m);
        prop_assert_eq!(&i, &m, "merge is idempotent");
    }

    #[test]
    fn compact_form_round_trips(ds in dots()) {
        let c = build(&ds);
        let parts = c.iter().map(|(r, rc)| {
            let ranges: Vec<(u64, u64)> = rc.ranges().map(|x| (x.start, x.end)).collect();
            let rebuilt = edgesync_core::ReplicaContext::from_parts(r, rc.watermark(), ranges)
                .expect("canonical parts are accepted");
            (r.clone(), rebuilt)
        });
        prop_assert_eq!(CausalContext::from_parts(parts).unwrap(), c);
    }
}
