//! Shared proptest generators and causal-history models (feature `proptest`).
//!
//! A [`Model`] describes one CRDT type: its operations and how a replica applies one. A history
//! is a list of [`Step`]s over a few replicas, mixing local operations (each yields a delta) and
//! syncs (one replica joins another's full state), so generated states carry real causal
//! structure: concurrent writes, removes of remote adds, out-of-order deltas.

use proptest::prelude::*;

use crate::crdt::{
    Direction, Extremum, GCounter, Lattice, LwwRegister, Max, Min, MvRegister, OrSet, PnCounter,
    RollupMap,
};
use crate::hlc::HlcClock;
use crate::id::{DeviceId, Incarnation, ReplicaId};
use crate::value::Value;

/// Property-test cases per law: `EDGESYNC_PROPTEST_CASES`, else `PROPTEST_CASES`, else 10,000.
pub fn cases() -> u32 {
    ["EDGESYNC_PROPTEST_CASES", "PROPTEST_CASES"]
        .iter()
        .find_map(|k| std::env::var(k).ok()?.parse().ok())
        .unwrap_or(10_000)
}

/// Replica number `i` of a small fixed pool (device `dev-{i}`, incarnation `i + 1`).
pub fn replica(i: usize) -> ReplicaId {
    let device = DeviceId::new(&format!("dev-{i}")).expect("generated ids follow the grammar");
    let incarnation = Incarnation::new(i as u64 + 1).expect("small");
    ReplicaId::new(device, incarnation)
}

/// Values from a small domain, so that collisions (same element, equal values) happen often.
pub fn small_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        (0i64..4).prop_map(Value::Long),
        prop::sample::select(vec![-1.5f64, 0.0, 2.25]).prop_map(Value::Double),
        prop::sample::select(vec!["a", "b"]).prop_map(Value::from),
        any::<bool>().prop_map(Value::Bool),
    ]
}

/// Any value, including NaNs, infinities, negative zero and long strings.
pub fn any_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::Long),
        any::<f64>().prop_map(Value::Double),
        ".{0,40}".prop_map(Value::String),
        any::<bool>().prop_map(Value::Bool),
    ]
}

/// One CRDT type under test.
pub trait Model {
    /// The CRDT.
    type State: Lattice + std::fmt::Debug;
    /// One operation.
    type Op: std::fmt::Debug + Clone;
    /// Per-replica local state besides the CRDT (e.g. its clock).
    type Local: Default + Clone + std::fmt::Debug;
    /// Generator of operations.
    fn op() -> BoxedStrategy<Self::Op>;
    /// Applies `op` at `replica`, returning the delta.
    fn apply(
        state: &mut Self::State,
        local: &mut Self::Local,
        replica: &ReplicaId,
        op: &Self::Op,
    ) -> Self::State;
}

/// One step of a history.
#[derive(Debug, Clone)]
pub enum Step<Op> {
    /// Replica `replica` performs `op`.
    Local {
        /// Replica index.
        replica: usize,
        /// The operation.
        op: Op,
    },
    /// Replica `to` joins the full state of replica `from`.
    Sync {
        /// Source replica index.
        from: usize,
        /// Target replica index.
        to: usize,
    },
}

/// Histories over `replicas` replicas, up to `max_len` steps.
pub fn history<M: Model>(
    replicas: usize,
    max_len: usize,
) -> impl Strategy<Value = Vec<Step<M::Op>>> {
    let step = prop_oneof![
        3 => (0..replicas, M::op()).prop_map(|(replica, op)| Step::Local { replica, op }),
        1 => (0..replicas, 0..replicas).prop_map(|(from, to)| Step::Sync { from, to }),
    ];
    prop::collection::vec(step, 0..=max_len)
}

/// What running a history produced.
#[derive(Debug, Clone)]
pub struct Outcome<S> {
    /// Every delta, in the order it was made.
    pub deltas: Vec<S>,
    /// Each replica's final state.
    pub finals: Vec<S>,
}

/// Runs a history.
pub fn run<M: Model>(replicas: usize, steps: &[Step<M::Op>]) -> Outcome<M::State> {
    let ids: Vec<ReplicaId> = (0..replicas).map(replica).collect();
    let mut states = vec![M::State::default(); replicas];
    let mut locals = vec![M::Local::default(); replicas];
    let mut deltas = Vec::new();
    for s in steps {
        match s {
            Step::Local { replica, op } => {
                let d = M::apply(
                    &mut states[*replica],
                    &mut locals[*replica],
                    &ids[*replica],
                    op,
                );
                deltas.push(d);
            }
            Step::Sync { from, to } => {
                let src = states[*from].clone();
                states[*to].join(&src);
            }
        }
    }
    Outcome {
        deltas,
        finals: states,
    }
}

/// A delivery schedule: every delta at least once, shuffled, with duplicates. Deterministic in
/// `seed` (splitmix64), so a failing case replays.
pub fn delivery_order(n: usize, seed: u64) -> Vec<usize> {
    let mut s = seed;
    let mut next = move || {
        s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    if n > 0 {
        let dups = (next() % (n as u64 + 1)) as usize;
        for _ in 0..dups {
            let at = (next() % (order.len() as u64 + 1)) as usize;
            let which = (next() % n as u64) as usize;
            order.insert(at, which);
        }
    }
    order
}

/// G-counter increments.
#[derive(Debug)]
pub struct GCounterModel;
impl Model for GCounterModel {
    type State = GCounter;
    type Op = u64;
    type Local = ();
    fn op() -> BoxedStrategy<u64> {
        (0u64..5).boxed()
    }
    fn apply(s: &mut GCounter, _: &mut (), r: &ReplicaId, op: &u64) -> GCounter {
        s.inc(r, *op)
    }
}

/// PN-counter additions.
#[derive(Debug)]
pub struct PnCounterModel;
impl Model for PnCounterModel {
    type State = PnCounter;
    type Op = i64;
    type Local = ();
    fn op() -> BoxedStrategy<i64> {
        (-5i64..5).boxed()
    }
    fn apply(s: &mut PnCounter, _: &mut (), r: &ReplicaId, op: &i64) -> PnCounter {
        s.add(r, *op)
    }
}

/// Max- or min-register writes.
#[derive(Debug)]
pub struct ExtremumModel<D>(std::marker::PhantomData<D>);
/// Max-register writes.
pub type MaxRegisterModel = ExtremumModel<Max>;
/// Min-register writes.
pub type MinRegisterModel = ExtremumModel<Min>;

impl<D: Direction> Model for ExtremumModel<D> {
    type State = Extremum<Value, D>;
    type Op = Value;
    type Local = ();
    fn op() -> BoxedStrategy<Value> {
        small_value().boxed()
    }
    fn apply(s: &mut Self::State, _: &mut (), _: &ReplicaId, op: &Value) -> Self::State {
        s.set(op.clone())
    }
}

/// LWW writes stamped by each replica's own HLC at a generated physical time (clocks of
/// different replicas collide on purpose, so ties are broken by replica).
#[derive(Debug)]
pub struct LwwRegisterModel;
impl Model for LwwRegisterModel {
    type State = LwwRegister<Value>;
    type Op = (u64, Value);
    type Local = LocalClock;
    fn op() -> BoxedStrategy<(u64, Value)> {
        (0u64..6, small_value()).boxed()
    }
    fn apply(
        s: &mut Self::State,
        clock: &mut LocalClock,
        r: &ReplicaId,
        (phys, v): &(u64, Value),
    ) -> Self::State {
        let hlc = clock.0.now(*phys);
        s.set(hlc, r, v.clone())
    }
}

/// A replica's HLC inside a model.
#[derive(Debug, Clone)]
pub struct LocalClock(pub HlcClock);
impl Default for LocalClock {
    fn default() -> Self {
        Self(HlcClock::new(u64::MAX))
    }
}

/// MV-register writes.
#[derive(Debug)]
pub struct MvRegisterModel;
impl Model for MvRegisterModel {
    type State = MvRegister<Value>;
    type Op = Value;
    type Local = ();
    fn op() -> BoxedStrategy<Value> {
        small_value().boxed()
    }
    fn apply(s: &mut Self::State, _: &mut (), r: &ReplicaId, op: &Value) -> Self::State {
        s.write(r, op.clone())
    }
}

/// OR-set operations.
#[derive(Debug, Clone)]
pub enum SetOp {
    /// Add an element.
    Add(Value),
    /// Remove an element.
    Remove(Value),
}

/// OR-set adds and removes.
#[derive(Debug)]
pub struct OrSetModel;
impl Model for OrSetModel {
    type State = OrSet<Value>;
    type Op = SetOp;
    type Local = ();
    fn op() -> BoxedStrategy<SetOp> {
        prop_oneof![
            small_value().prop_map(SetOp::Add),
            small_value().prop_map(SetOp::Remove)
        ]
        .boxed()
    }
    fn apply(s: &mut Self::State, _: &mut (), r: &ReplicaId, op: &SetOp) -> Self::State {
        match op {
            SetOp::Add(v) => s.add(r, v.clone()),
            SetOp::Remove(v) => s.remove(v),
        }
    }
}

/// Rollup samples into a few buckets.
#[derive(Debug)]
pub struct RollupMapModel;
impl Model for RollupMapModel {
    type State = RollupMap;
    type Op = (u64, f64);
    type Local = ();
    fn op() -> BoxedStrategy<(u64, f64)> {
        (0u64..3, -100.0f64..100.0).boxed()
    }
    fn apply(s: &mut RollupMap, _: &mut (), r: &ReplicaId, (b, x): &(u64, f64)) -> RollupMap {
        s.record(r, *b * 60_000, *x)
            .expect("generated samples are finite")
    }
}
