//! Steno-style tests of every saga declaration, in process: the executor
//! drives each saga against an in-memory store and an in-memory world of
//! participants with the services' barrier semantics (an action or undo
//! repeated replays its first answer; an undo before its action blocks it).
//! They check, for every step of both sagas: actions and undos delivered
//! twice change the world once; a refusal at any step leaves a clean slate
//! and a REJECTED order with that reason; a crash at any log write (or
//! between a call and its write) resumed from the log alone ends as without
//! the crash; undos before their actions and late duplicate actions neither
//! hang nor apply twice.

#![allow(clippy::unwrap_used, clippy::panic)] // Tests fail loudly by design.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use commerce_platform::error::ServiceError;
use commerce_platform::{SagaCall, SagaId, UserId};

use super::{OrderSagas, cancel_order, place_order};
use crate::domain::order::{LineRequest, OrderState, SnapshotLine};
use crate::domain::saga::{
    Lease, LogEntry, Outcome, Rejection, RetryPolicy, SagaParams, SagaState, SagaWrite, Step,
};
use crate::executor::{Driven, Executor, Holder, SagaStore};
use crate::fault::Faults;
use crate::participants::{Participants, Reply, StepError};
use crate::store::OrderChange;

const PRICE: i64 = 1_000;
const DISCOUNT: i64 = 500;
const COUPON: i64 = 7;

/// What a barrier row holds: the first answer, or the action blocked by an
/// undo that came first.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Row {
    Applied(i64),
    Blocked,
}

/// The participants' state: stock, one user's points, one coupon.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Ledgers {
    available: BTreeMap<i64, i64>,
    reserved: BTreeMap<i64, i64>,
    sold: BTreeMap<i64, i64>,
    balance: i64,
    coupon_used: bool,
}

#[derive(Debug)]
struct WorldState {
    ledgers: Ledgers,
    barrier: HashMap<(String, &'static str), Row>,
    reservations: HashMap<String, Vec<LineRequest>>,
    /// The action refused (by its step name), before any effect.
    refuse: Option<&'static str>,
    /// Every call delivered twice; the second answer is returned.
    twice: bool,
    /// The highest lease fence seen per saga id (the barrier's fencing).
    fences: HashMap<String, i64>,
}

impl WorldState {
    /// Refuses a call whose fence is older than one seen for its saga.
    fn fence(&mut self, call: &SagaCall) -> Reply<()> {
        let seen = self.fences.entry(call.saga.to_string()).or_insert(0);
        if call.fence < *seen {
            return Err(StepError::Fenced(format!("fence {} < {seen}", call.fence)));
        }
        *seen = call.fence;
        Ok(())
    }
}

/// The in-memory participants.
#[derive(Clone)]
struct World(Arc<Mutex<WorldState>>);

impl World {
    fn new() -> Self {
        Self(Arc::new(Mutex::new(WorldState {
            ledgers: Ledgers {
                available: BTreeMap::from([(1, 10), (2, 10)]),
                reserved: BTreeMap::from([(1, 0), (2, 0)]),
                sold: BTreeMap::from([(1, 0), (2, 0)]),
                balance: 100_000,
                coupon_used: false,
            },
            barrier: HashMap::new(),
            reservations: HashMap::new(),
            refuse: None,
            twice: false,
            fences: HashMap::new(),
        })))
    }

    fn ledgers(&self) -> Ledgers {
        self.0.lock().unwrap().ledgers.clone()
    }

    fn set(&self, refuse: Option<&'static str>, twice: bool) {
        let mut state = self.0.lock().unwrap();
        state.refuse = refuse;
        state.twice = twice;
    }

    /// An action behind the barrier: applied once, replayed after, refused
    /// once its undo came first.
    fn action(
        &self,
        saga: &SagaCall,
        name: &'static str,
        effect: impl Fn(&mut WorldState) -> Reply<i64>,
    ) -> Reply<i64> {
        let mut state = self.0.lock().unwrap();
        state.fence(saga)?;
        let times = if state.twice { 2 } else { 1 };
        let mut answer = Err(StepError::Transient("never called".into()));
        for _ in 0..times {
            let key = (saga.to_string(), name);
            answer = match state.barrier.get(&key) {
                Some(Row::Applied(v)) => Ok(*v),
                Some(Row::Blocked) => Err(StepError::Rejected(Rejection::new(
                    "SAGA_ALREADY_COMPENSATED",
                    format!("{name} came after its undo"),
                ))),
                None if state.refuse == Some(name) => Err(StepError::Rejected(Rejection::new(
                    format!("REFUSED_{}", name.to_uppercase()),
                    format!("{name} refused"),
                ))),
                None => {
                    let v = effect(&mut state);
                    if let Ok(v) = v {
                        state.barrier.insert(key, Row::Applied(v));
                    }
                    v
                }
            };
        }
        answer
    }

    /// An undo behind the barrier: applied once; before its action, a no-op
    /// that blocks the action.
    fn undo(
        &self,
        saga: &SagaCall,
        action: &'static str,
        name: &'static str,
        effect: impl Fn(&mut WorldState, i64),
    ) -> Reply<()> {
        let mut state = self.0.lock().unwrap();
        state.fence(saga)?;
        let times = if state.twice { 2 } else { 1 };
        for _ in 0..times {
            if state.barrier.contains_key(&(saga.to_string(), name)) {
                continue;
            }
            state
                .barrier
                .insert((saga.to_string(), name), Row::Applied(0));
            match state.barrier.get(&(saga.to_string(), action)).cloned() {
                Some(Row::Applied(v)) => effect(&mut state, v),
                _ => {
                    state
                        .barrier
                        .insert((saga.to_string(), action), Row::Blocked);
                }
            }
        }
        Ok(())
    }
}

impl Participants for World {
    async fn reserve_stock(
        &self,
        saga: &SagaCall,
        _order_id: &str,
        lines: &[LineRequest],
    ) -> Reply<Vec<SnapshotLine>> {
        let key = saga.to_string();
        self.action(saga, "reserve_stock", |s| {
            for l in lines {
                if s.ledgers.available[&l.product_id] < l.quantity {
                    return Err(StepError::Rejected(Rejection::new(
                        "STOCK_INSUFFICIENT",
                        "short",
                    )));
                }
            }
            for l in lines {
                *s.ledgers.available.get_mut(&l.product_id).unwrap() -= l.quantity;
                *s.ledgers.reserved.get_mut(&l.product_id).unwrap() += l.quantity;
            }
            s.reservations.insert(key.clone(), lines.to_vec());
            Ok(0)
        })?;
        Ok(lines
            .iter()
            .map(|l| SnapshotLine {
                product_id: l.product_id,
                quantity: l.quantity,
                product_name: format!("p{}", l.product_id),
                brand_id: 1,
                brand_name: "b".into(),
                unit_price: PRICE,
            })
            .collect())
    }

    async fn confirm_reservation(&self, saga: &SagaCall) -> Reply<()> {
        let key = saga.to_string();
        self.action(saga, "confirm_order", |s| {
            for l in s.reservations[&key].clone() {
                *s.ledgers.reserved.get_mut(&l.product_id).unwrap() -= l.quantity;
                *s.ledgers.sold.get_mut(&l.product_id).unwrap() += l.quantity;
            }
            Ok(0)
        })
        .map(drop)
    }

    async fn release_reservation(&self, saga: &SagaCall) -> Reply<()> {
        let key = saga.to_string();
        let confirmed = self
            .0
            .lock()
            .unwrap()
            .barrier
            .contains_key(&(key.clone(), "confirm_order"));
        self.undo(saga, "reserve_stock", "release_stock", |s, _| {
            let from = if confirmed {
                &mut s.ledgers.sold
            } else {
                &mut s.ledgers.reserved
            };
            for l in &s.reservations[&key] {
                *from.get_mut(&l.product_id).unwrap() -= l.quantity;
            }
            for l in s.reservations[&key].clone() {
                *s.ledgers.available.get_mut(&l.product_id).unwrap() += l.quantity;
            }
        })
    }

    async fn quote_discount(&self, _user: &UserId, _coupon: i64, _amount: i64) -> Reply<i64> {
        Ok(DISCOUNT)
    }

    async fn deduct_points(&self, saga: &SagaCall, _user: &UserId, amount: i64) -> Reply<i64> {
        self.action(saga, "deduct_points", |s| {
            if s.ledgers.balance < amount {
                return Err(StepError::Rejected(Rejection::new(
                    "POINT_INSUFFICIENT",
                    "short",
                )));
            }
            s.ledgers.balance -= amount;
            Ok(amount)
        })
    }

    async fn refund_points(&self, saga: &SagaCall) -> Reply<()> {
        self.undo(saga, "deduct_points", "refund_points", |s, amount| {
            s.ledgers.balance += amount;
        })
    }

    async fn use_coupon(
        &self,
        saga: &SagaCall,
        _user: &UserId,
        _coupon: i64,
        _amount: i64,
        expected: i64,
    ) -> Reply<i64> {
        self.action(saga, "use_coupon", |s| {
            if s.ledgers.coupon_used {
                return Err(StepError::Rejected(Rejection::new(
                    "COUPON_ALREADY_USED",
                    "used",
                )));
            }
            s.ledgers.coupon_used = true;
            Ok(expected)
        })
    }

    async fn restore_coupon(&self, saga: &SagaCall) -> Reply<()> {
        self.undo(saga, "use_coupon", "restore_coupon", |s, _| {
            s.ledgers.coupon_used = false;
        })
    }
}

/// The order as the sagas leave it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Order {
    state: OrderState,
    subtotal: i64,
    discount: i64,
    points_paid: i64,
    reason: String,
    reason_message: String,
}

#[derive(Debug, Clone)]
struct MemSaga {
    params: SagaParams,
    log: Vec<LogEntry>,
    lease: Lease,
    state: SagaState,
}

#[derive(Debug)]
struct StoreState {
    sagas: HashMap<String, MemSaga>,
    order: Order,
    writes: usize,
    /// The write (counted from 1) that crashes before it commits.
    crash_before: Option<usize>,
    /// The write that commits, then crashes before its answer.
    crash_after: Option<usize>,
}

/// The in-memory saga log and order.
#[derive(Clone)]
struct Store(Arc<Mutex<StoreState>>);

impl Store {
    fn new() -> Self {
        Self(Arc::new(Mutex::new(StoreState {
            sagas: HashMap::new(),
            order: Order {
                state: OrderState::Pending,
                subtotal: 0,
                discount: 0,
                points_paid: 0,
                reason: String::new(),
                reason_message: String::new(),
            },
            writes: 0,
            crash_before: None,
            crash_after: None,
        })))
    }

    fn create(&self, saga: &SagaId, params: SagaParams, first: Vec<(Step, LogEntry)>) -> Lease {
        let lease = Lease {
            owner: "a".into(),
            fence: 1,
        };
        self.0.lock().unwrap().sagas.insert(
            saga.to_string(),
            MemSaga {
                params,
                log: first.into_iter().map(|(_, e)| e).collect(),
                lease: lease.clone(),
                state: SagaState::Running,
            },
        );
        lease
    }

    /// Another instance takes the saga over (as recovery does after a crash).
    fn take(&self, saga: &SagaId) -> Lease {
        let mut state = self.0.lock().unwrap();
        let saga = state.sagas.get_mut(saga.as_str()).unwrap();
        saga.lease = Lease {
            owner: "b".into(),
            fence: saga.lease.fence + 1,
        };
        saga.lease.clone()
    }

    fn order(&self) -> Order {
        self.0.lock().unwrap().order.clone()
    }

    fn saga(&self, saga: &SagaId) -> MemSaga {
        self.0.lock().unwrap().sagas[saga.as_str()].clone()
    }
}

fn crash() -> ServiceError {
    ServiceError::internal("crash injected")
}

impl SagaStore<OrderChange> for Store {
    async fn saga_log(&self, saga: &SagaId) -> Result<(SagaParams, Vec<LogEntry>), ServiceError> {
        let saga = self.saga(saga);
        Ok((saga.params, saga.log))
    }

    async fn saga_progress(
        &self,
        saga: &SagaId,
        _params: &SagaParams,
        lease: &Lease,
        write: &SagaWrite<OrderChange>,
    ) -> Result<bool, ServiceError> {
        let mut state = self.0.lock().unwrap();
        state.writes += 1;
        let n = state.writes;
        if state.crash_before == Some(n) {
            return Err(crash());
        }
        let StoreState { sagas, order, .. } = &mut *state;
        let row = sagas.get_mut(saga.as_str()).unwrap();
        if row.lease != *lease {
            return Ok(false);
        }
        for (_, entry) in &write.entries {
            // Keyed like saga_log's unique key: a repeated event is ignored.
            let logged = row.log.iter().any(|e| {
                (e.step, e.direction, e.attempt, e.outcome)
                    == (entry.step, entry.direction, entry.attempt, entry.outcome)
            });
            if !logged {
                row.log.push(entry.clone());
            }
        }
        row.state = write.state;
        for change in &write.changes {
            match change {
                OrderChange::Priced { pricing, .. } => {
                    order.subtotal = pricing.subtotal;
                    order.discount = pricing.discount;
                }
                OrderChange::PointsPaid(amount) => order.points_paid = *amount,
                OrderChange::Undone => {
                    order.discount = 0;
                    order.points_paid = 0;
                }
                OrderChange::Transition { from, to, reason } => {
                    assert_eq!(order.state, *from, "the saga's expected order state");
                    order.state = *to;
                    let r = reason.clone().unwrap_or(Rejection::new("", ""));
                    order.reason = r.reason;
                    order.reason_message = r.message;
                }
            }
        }
        if state.crash_after == Some(n) {
            return Err(crash());
        }
        Ok(true)
    }

    async fn saga_holder(&self, saga: &SagaId) -> Result<Holder, ServiceError> {
        let saga = self.saga(saga);
        Ok(Holder {
            owner: saga.lease.owner,
            fence: saga.lease.fence,
            state: saga.state.as_str(),
        })
    }
}

type Exec = Executor<Store, OrderSagas<World>>;

fn policy() -> RetryPolicy {
    RetryPolicy {
        base: Duration::from_millis(1),
        max: Duration::from_millis(2),
        forward_budget: Duration::from_secs(60),
        stuck_after: 3,
        stuck_retry: Duration::from_secs(60),
    }
}

fn executor(store: &Store, world: &World) -> Exec {
    Executor::new(
        store.clone(),
        OrderSagas::new(world.clone()),
        Duration::from_secs(60),
        policy(),
        Faults::default(),
    )
}

fn user() -> UserId {
    UserId::parse("user_id", "u1").unwrap()
}

fn place_params(coupon: bool) -> SagaParams {
    SagaParams::PlaceOrder {
        order_id: "order-1".into(),
        user: user(),
        lines: vec![
            LineRequest {
                product_id: 1,
                quantity: 2,
            },
            LineRequest {
                product_id: 2,
                quantity: 1,
            },
        ],
        user_coupon_id: coupon.then_some(COUPON),
    }
}

/// Records a saga with an empty log, as the application does.
fn begin(store: &Store, params: SagaParams) -> (SagaId, Lease) {
    let saga = SagaId::generate();
    let lease = store.create(&saga, params, Vec::new());
    (saga, lease)
}

/// Drives to the end, resuming after every crash as recovery does: an
/// unfinished saga, taken over (another lease), driven from its log alone.
async fn run_to_end(exec: &Exec, store: &Store, saga: &SagaId, lease: Lease) -> Driven {
    let mut lease = lease;
    for _ in 0..50 {
        match exec.drive(saga, lease).await {
            Ok(driven) => return driven,
            Err(_) => {
                let state = store.saga(saga).state;
                if state.is_finished() {
                    // The crash came after the last write committed.
                    return Driven::Finished(state);
                }
                lease = store.take(saga);
            }
        }
    }
    panic!("the saga never ended");
}

/// Everything a run leaves: the world, the order, the saga's state.
#[derive(Debug, PartialEq, Eq)]
struct End {
    ledgers: Ledgers,
    order: Order,
    saga: SagaState,
}

struct Setup {
    refuse: Option<&'static str>,
    twice: bool,
    crash_before: Option<usize>,
    crash_after: Option<usize>,
}

const PLAIN: Setup = Setup {
    refuse: None,
    twice: false,
    crash_before: None,
    crash_after: None,
};

/// Places an order (with or without a coupon) under `setup`; with `cancel`,
/// then cancels it (the setup applying to the cancellation).
async fn scenario(coupon: bool, cancel: bool, setup: &Setup) -> (End, usize) {
    let (store, world) = (Store::new(), World::new());
    let exec = executor(&store, &world);
    let arm = |store: &Store| {
        world.set(setup.refuse, setup.twice);
        let mut s = store.0.lock().unwrap();
        s.writes = 0;
        s.crash_before = setup.crash_before;
        s.crash_after = setup.crash_after;
    };
    if !cancel {
        arm(&store);
    }
    let (placed, lease) = begin(&store, place_params(coupon));
    let driven = run_to_end(&exec, &store, &placed, lease).await;
    let mut saga = placed.clone();
    if cancel {
        assert_eq!(driven, Driven::Finished(SagaState::Completed));
        store.0.lock().unwrap().order.state = OrderState::Cancelling;
        arm(&store);
        let params = SagaParams::CancelOrder {
            order_id: "order-1".into(),
            user: user(),
            placed_by: placed.clone(),
            user_coupon_id: coupon.then_some(COUPON),
        };
        let (cancelling, lease) = begin(&store, params);
        run_to_end(&exec, &store, &cancelling, lease).await;
        saga = cancelling;
    }
    let writes = store.0.lock().unwrap().writes;
    let end = End {
        ledgers: world.ledgers(),
        order: store.order(),
        saga: store.saga(&saga).state,
    };
    (end, writes)
}

fn clean_slate() -> Ledgers {
    World::new().ledgers()
}

#[tokio::test]
async fn a_saga_without_trouble_ends_as_declared() {
    for coupon in [false, true] {
        let (end, _) = scenario(coupon, false, &PLAIN).await;
        assert_eq!(end.saga, SagaState::Completed);
        assert_eq!(end.order.state, OrderState::Confirmed);
        let discount = if coupon { DISCOUNT } else { 0 };
        assert_eq!(end.order.subtotal, 3 * PRICE);
        assert_eq!(end.order.points_paid, 3 * PRICE - discount);
        assert_eq!(end.ledgers.balance, 100_000 - 3 * PRICE + discount);
        assert_eq!(end.ledgers.sold, BTreeMap::from([(1, 2), (2, 1)]));
        assert_eq!(end.ledgers.coupon_used, coupon);

        let (end, _) = scenario(coupon, true, &PLAIN).await;
        assert_eq!(end.saga, SagaState::Completed);
        assert_eq!(end.order.state, OrderState::Cancelled);
        assert_eq!(
            end.ledgers,
            clean_slate(),
            "a cancelled order gives all back"
        );
    }
}

#[tokio::test]
async fn every_action_and_undo_twice_changes_the_world_once() {
    for coupon in [false, true] {
        for cancel in [false, true] {
            let (once, _) = scenario(coupon, cancel, &PLAIN).await;
            let twice = Setup {
                twice: true,
                ..PLAIN
            };
            assert_eq!(scenario(coupon, cancel, &twice).await.0, once);
        }
        // Undos twice too: a refusal at the last step undoes all before it.
        let refused = Setup {
            refuse: Some("confirm_order"),
            ..PLAIN
        };
        let (once, _) = scenario(coupon, false, &refused).await;
        let twice = Setup {
            twice: true,
            ..refused
        };
        assert_eq!(scenario(coupon, false, &twice).await.0, once);
        assert_eq!(once.ledgers, clean_slate());
    }
}

#[tokio::test]
async fn a_refusal_at_any_step_leaves_a_clean_slate_and_a_rejected_order() {
    for coupon in [false, true] {
        for step in place_order::steps(&place_params(coupon)) {
            let name = step.action.name();
            let setup = Setup {
                refuse: Some(name),
                ..PLAIN
            };
            let (end, _) = scenario(coupon, false, &setup).await;
            assert_eq!(end.saga, SagaState::Compensated, "{name}");
            assert_eq!(end.ledgers, clean_slate(), "{name}");
            assert_eq!(end.order.state, OrderState::Rejected, "{name}");
            assert_eq!(end.order.reason, format!("REFUSED_{}", name.to_uppercase()));
            assert_eq!(end.order.reason_message, format!("{name} refused"));
            assert_eq!(
                (end.order.discount, end.order.points_paid),
                (0, 0),
                "{name}"
            );
        }
    }
}

#[tokio::test]
async fn a_crash_at_any_write_resumes_from_the_log_to_the_same_end() {
    for coupon in [false, true] {
        for cancel in [false, true] {
            for refuse in [None, Some("confirm_order"), Some("deduct_points")] {
                if cancel && refuse.is_some() {
                    continue; // A cancellation cannot be refused (see below).
                }
                let base = Setup { refuse, ..PLAIN };
                let (expected, writes) = scenario(coupon, cancel, &base).await;
                assert!(writes >= 1);
                for n in 1..=writes {
                    // Before the commit: also a crash between a call and its
                    // outcome's write.
                    let before = Setup {
                        crash_before: Some(n),
                        ..base
                    };
                    let after = Setup {
                        crash_after: Some(n),
                        ..base
                    };
                    for (when, setup) in [("before", before), ("after", after)] {
                        let (end, _) = scenario(coupon, cancel, &setup).await;
                        assert_eq!(
                            end, expected,
                            "coupon {coupon}, cancel {cancel}, {refuse:?}: crash {when} write {n}"
                        );
                    }
                }
            }
        }
    }
}

#[tokio::test]
async fn a_refused_cancellation_step_is_retried_until_stuck_then_finishes() {
    let (store, world) = (Store::new(), World::new());
    let exec = executor(&store, &world);
    let (placed, lease) = begin(&store, place_params(true));
    run_to_end(&exec, &store, &placed, lease).await;
    store.0.lock().unwrap().order.state = OrderState::Cancelling;
    // A cancellation must not turn around: a refused step is retried, and
    // the saga gets STUCK for operators.
    let params = SagaParams::CancelOrder {
        order_id: "order-1".into(),
        user: user(),
        placed_by: placed.clone(),
        user_coupon_id: Some(COUPON),
    };
    let steps = cancel_order::steps(&params);
    assert_eq!(steps.len(), 4);
    let (cancel, lease) = begin(&store, params);
    // Participants refusing the cancellation's first call.
    struct Refusing;
    impl Participants for Refusing {
        async fn reserve_stock(
            &self,
            _: &SagaCall,
            _: &str,
            _: &[LineRequest],
        ) -> Reply<Vec<SnapshotLine>> {
            unreachable!()
        }
        async fn confirm_reservation(&self, _: &SagaCall) -> Reply<()> {
            unreachable!()
        }
        async fn release_reservation(&self, _: &SagaCall) -> Reply<()> {
            Err(StepError::Rejected(Rejection::new("NO", "refused")))
        }
        async fn quote_discount(&self, _: &UserId, _: i64, _: i64) -> Reply<i64> {
            unreachable!()
        }
        async fn deduct_points(&self, _: &SagaCall, _: &UserId, _: i64) -> Reply<i64> {
            unreachable!()
        }
        async fn refund_points(&self, _: &SagaCall) -> Reply<()> {
            unreachable!()
        }
        async fn use_coupon(&self, _: &SagaCall, _: &UserId, _: i64, _: i64, _: i64) -> Reply<i64> {
            unreachable!()
        }
        async fn restore_coupon(&self, _: &SagaCall) -> Reply<()> {
            unreachable!()
        }
    }
    let stubborn = Executor::new(
        store.clone(),
        OrderSagas::new(Refusing),
        Duration::from_secs(60),
        policy(),
        Faults::default(),
    );
    assert_eq!(stubborn.drive(&cancel, lease).await.unwrap(), Driven::Stuck);
    assert_eq!(store.saga(&cancel).state, SagaState::Stuck);
    let failed = store
        .saga(&cancel)
        .log
        .iter()
        .filter(|e| e.outcome == Outcome::Failed)
        .count();
    assert_eq!(failed, 3);
    // The operator's retry, the participant willing again.
    let lease = store.take(&cancel);
    assert_eq!(
        exec.drive(&cancel, lease).await.unwrap(),
        Driven::Finished(SagaState::Completed)
    );
    assert_eq!(store.order().state, OrderState::Cancelled);
    assert_eq!(world.ledgers(), clean_slate());
}

#[tokio::test]
async fn undos_before_their_actions_and_late_duplicates_apply_nothing() {
    let world = World::new();
    let (saga, user) = (SagaCall::unfenced(SagaId::generate()), user());
    let lines = [LineRequest {
        product_id: 1,
        quantity: 3,
    }];
    // Each undo delivered before its action: a no-op that blocks it.
    world.release_reservation(&saga).await.unwrap();
    world.refund_points(&saga).await.unwrap();
    world.restore_coupon(&saga).await.unwrap();
    assert!(world.reserve_stock(&saga, "", &lines).await.is_err());
    assert!(world.deduct_points(&saga, &user, 100).await.is_err());
    assert!(
        world
            .use_coupon(&saga, &user, COUPON, 100, 10)
            .await
            .is_err()
    );
    assert_eq!(world.ledgers(), clean_slate());

    // An action twice, out of order (its duplicate after the undo): the
    // duplicate replays and applies nothing.
    let other = SagaCall::unfenced(SagaId::generate());
    world.deduct_points(&other, &user, 100).await.unwrap();
    world.refund_points(&other).await.unwrap();
    assert_eq!(world.deduct_points(&other, &user, 100).await.unwrap(), 100);
    world.reserve_stock(&other, "", &lines).await.unwrap();
    world.release_reservation(&other).await.unwrap();
    world.reserve_stock(&other, "", &lines).await.unwrap();
    assert_eq!(world.ledgers(), clean_slate());

    // Through the executor: a saga refused at its first step compensates
    // that step too (a no-op that blocks a late arrival of the action),
    // and ends without waiting on anything.
    let store = Store::new();
    let exec = executor(&store, &world);
    world.set(Some("reserve_stock"), false);
    let (saga, lease) = begin(&store, place_params(false));
    let driven = tokio::time::timeout(Duration::from_secs(5), exec.drive(&saga, lease))
        .await
        .expect("nothing hangs")
        .unwrap();
    assert_eq!(driven, Driven::Finished(SagaState::Compensated));
    world.set(None, false);
    let late = place_params(false);
    let SagaParams::PlaceOrder { lines, .. } = &late else {
        unreachable!()
    };
    let saga = SagaCall {
        saga,
        fence: i64::MAX,
    };
    assert!(
        world.reserve_stock(&saga, "", lines).await.is_err(),
        "blocked"
    );
    assert_eq!(world.ledgers(), clean_slate());
}

/// An instance that lost its lease cannot change a participant that has
/// seen the new holder's fence: its next call is refused, it stops
/// (LeaseLost) without writing, and the new holder ends the saga alone.
#[tokio::test]
async fn a_stale_instance_is_fenced_off_by_the_participants() {
    let world = World::new();
    let store = Store::new();
    let exec = executor(&store, &world);
    let (saga, stale) = begin(&store, place_params(false));
    // Another instance takes the saga over and makes the first call.
    let current = store.take(&saga);
    assert!(current.fence > stale.fence);
    let SagaParams::PlaceOrder { lines, .. } = place_params(false) else {
        unreachable!()
    };
    let call = SagaCall {
        saga: saga.clone(),
        fence: current.fence,
    };
    world.reserve_stock(&call, "", &lines).await.unwrap();
    let seen = world.ledgers();

    let driven = exec.drive(&saga, stale).await.unwrap();
    assert_eq!(driven, Driven::LeaseLost);
    assert_eq!(world.ledgers(), seen, "the stale instance changed nothing");
    assert_eq!(exec.leases_lost(), 1);

    let driven = exec.drive(&saga, current).await.unwrap();
    assert_eq!(driven, Driven::Finished(SagaState::Completed));
    assert_eq!(store.order().state, OrderState::Confirmed);
}
