//! The lattice laws, for every CRDT type, over generated causal histories.
//!
//! Case count per law: `EDGESYNC_PROPTEST_CASES` (default 10,000; CI runs the default).

use edgesync_core::arbitrary::{self, run, Model};
use edgesync_core::Lattice;
use proptest::prelude::*;
use proptest::test_runner::Config;

const REPLICAS: usize = 3;
const STEPS: usize = 24;

fn config() -> Config {
    Config {
        cases: arbitrary::cases(),
        failure_persistence: None,
        ..Config::default()
    }
}

fn join_all<S: Lattice>(states: impl IntoIterator<Item = S>) -> S {
    states
        .into_iter()
        .fold(S::default(), |acc, s| acc.joined(&s))
}

macro_rules! laws {
    ($($module:ident => $model:ty),* $(,)?) => {$(
        mod $module {
            use super::*;
            type M = $model;
            type S = <M as Model>::State;

            proptest! {
                #![proptest_config(config())]

                #[test]
                fn join_is_commutative(h in arbitrary::history::<M>(REPLICAS, STEPS)) {
                    let o = run::<M>(REPLICAS, &h);
                    let (a, b) = (&o.finals[0], &o.finals[1]);
                    prop_assert_eq!(a.clone().joined(b), b.clone().joined(a));
                }

                #[test]
                fn join_is_associative(h in arbitrary::history::<M>(REPLICAS, STEPS)) {
                    let o = run::<M>(REPLICAS, &h);
                    let (a, b, c) = (&o.finals[0], &o.finals[1], &o.finals[2]);
                    prop_assert_eq!(
                        a.clone().joined(b).joined(c),
                        a.clone().joined(&b.clone().joined(c))
                    );
                }

                #[test]
                fn join_is_idempotent(h in arbitrary::history::<M>(REPLICAS, STEPS)) {
                    let o = run::<M>(REPLICAS, &h);
                    for s in o.finals.iter().chain(&o.deltas) {
                        prop_assert_eq!(&s.clone().joined(s), s);
                    }
                }

                #[test]
                fn joining_deltas_equals_joining_full_states(
                    h in arbitrary::history::<M>(REPLICAS, STEPS)
                ) {
                    let o = run::<M>(REPLICAS, &h);
                    prop_assert_eq!(join_all(o.deltas.clone()), join_all(o.finals.clone()));
                }

                #[test]
                fn replicas_converge_under_any_order_with_duplicates(
                    h in arbitrary::history::<M>(REPLICAS, STEPS),
                    seeds in prop::array::uniform3(any::<u64>()),
                ) {
                    let o = run::<M>(REPLICAS, &h);
                    let expected: S = join_all(o.finals.clone());
                    for seed in seeds {
                        let mut receiver = S::default();
                        for i in arbitrary::delivery_order(o.deltas.len(), seed) {
                            receiver.join(&o.deltas[i]);
                        }
                        prop_assert_eq!(&receiver, &expected);
                    }
                }

                #[test]
                fn batched_deltas_equal_individual_deltas(
                    h in arbitrary::history::<M>(REPLICAS, STEPS),
                    batch in 1usize..6,
                ) {
                    // What a delta batch does: join consecutive deltas first, ship the join.
                    let o = run::<M>(REPLICAS, &h);
                    let batched = join_all(o.deltas.chunks(batch).map(|c| join_all(c.to_vec())));
                    prop_assert_eq!(batched, join_all(o.deltas.clone()));
                }
            }
        }
    )*};
}

laws! {
    g_counter => arbitrary::GCounterModel,
    pn_counter => arbitrary::PnCounterModel,
    max_register => arbitrary::MaxRegisterModel,
    min_register => arbitrary::MinRegisterModel,
    lww_register => arbitrary::LwwRegisterModel,
    mv_register => arbitrary::MvRegisterModel,
    or_set => arbitrary::OrSetModel,
    rollup_map => arbitrary::RollupMapModel,
}
