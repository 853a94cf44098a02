//! The store and the engine against a real MariaDB (each test its own
//! database): fenced writes after a lost lease, the forward retry budget read
//! from the step log, and the amounts a rejected order shows. Participants
//! are addresses that refuse connections, so every call fails transiently.

#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

use std::sync::Arc;
use std::time::Duration;

use commerce_platform::db::DbSettings;
use commerce_platform::time::now;
use commerce_platform::trace_context::TraceHeaders;
use commerce_platform::{Database, SagaId, migrate};
use commerce_testkit::TestDatabase;
use diesel_async::SimpleAsyncConnection;

use crate::domain::order::{OrderEvent, OrderState, PlaceOrder, Pricing, SnapshotLine, reason};
use crate::domain::saga::{
    Direction, LogEntry, Outcome, Rejection, RetryPolicy, SagaParams, SagaState, Step, StepOutput,
};
use crate::engine::{Driven, Engine, EngineConfig};
use crate::fault::Faults;
use crate::participants::{GrpcParticipants, ParticipantConfig};
use crate::store::{Lease, NewSaga, OrderChange, OrderStore, Placed, SagaWrite, TakeOver};

struct Fixture {
    db: TestDatabase,
    store: OrderStore,
}

async fn fixture() -> Fixture {
    let db = TestDatabase::create("orchestrator").await.unwrap();
    migrate::run(&db.url, &[&crate::MIGRATIONS], Duration::from_secs(10))
        .await
        .unwrap();
    let database = Database::new(&DbSettings {
        url: db.url.clone(),
        max_connections: 4,
        acquire_timeout: Duration::from_secs(5),
    });
    Fixture {
        db,
        store: OrderStore::new(database),
    }
}

/// The trace every saga of [`place`] starts in.
fn started_in() -> TraceHeaders {
    TraceHeaders {
        traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned(),
        tracestate: Some("vendor=1".to_owned()),
    }
}

fn in_a_minute() -> chrono::NaiveDateTime {
    now() + chrono::Duration::seconds(60)
}

/// Records an order (one line, no coupon) with its saga leased to `owner`,
/// and its first step STARTED (as a run that checkpointed it left it).
async fn place(store: &OrderStore, user: &str, owner: &str) -> (String, SagaId, Lease) {
    let request = PlaceOrder::parse(user, [(7, 2)].into_iter(), None, "key-1").unwrap();
    let order_id = uuid::Uuid::now_v7().hyphenated().to_string();
    let saga_id = SagaId::generate();
    let params = SagaParams::PlaceOrder {
        order_id: order_id.clone(),
        user: request.user.clone(),
        lines: request.lines.clone(),
        user_coupon_id: None,
    };
    let placed = store
        .order_place(
            &order_id,
            &request,
            &NewSaga {
                id: &saga_id,
                params: &params,
                owner,
                lease_until: in_a_minute(),
                trace: Some(&started_in()),
            },
        )
        .await
        .unwrap();
    let Placed::Created(lease) = placed else {
        panic!("a new order")
    };
    let started = event(0, Direction::Forward, 1, Outcome::Started);
    let mut first = progress(vec![(Step::ReserveStock, started)], Vec::new());
    first.current_step = 0;
    assert!(
        store
            .saga_write(&saga_id, &order_id, &lease, &first)
            .await
            .unwrap()
    );
    (order_id, saga_id, lease)
}

fn event(step: usize, direction: Direction, attempt: u32, outcome: Outcome) -> LogEntry {
    LogEntry::new(step, direction, attempt, outcome, now())
}

fn reserved(subtotal: i64, discount: i64) -> (StepOutput, Pricing) {
    let pricing = Pricing::new(subtotal, discount);
    let lines = vec![SnapshotLine {
        product_id: 7,
        quantity: 2,
        product_name: "Lamp".into(),
        brand_id: 1,
        brand_name: "Acme".into(),
        unit_price: subtotal / 2,
    }];
    (
        StepOutput::Reserved {
            lines: lines.clone(),
            pricing,
        },
        pricing,
    )
}

/// A write of step outcomes with order changes, keeping the saga RUNNING.
fn progress(entries: Vec<(Step, LogEntry)>, changes: Vec<OrderChange>) -> SagaWrite<OrderChange> {
    SagaWrite {
        entries,
        state: SagaState::Running,
        current_step: 1,
        attempts: 1,
        reason: None,
        next_attempt_at: now(),
        lease_until: Some(in_a_minute()),
        changes,
    }
}

/// Everything a saga write can change, to compare before and after.
async fn snapshot(store: &OrderStore, saga_id: &SagaId, order_id: &str) -> String {
    let saga = store.saga_load(saga_id).await.unwrap();
    let order = store.order_get(order_id).await.unwrap();
    format!("{:?}\n{:?}\n{:?}", saga.saga, saga.raw_log, order)
}

/// An operator's retry: the saga taken over by `owner`.
async fn take_over(store: &OrderStore, saga_id: &SagaId, owner: &str) -> Lease {
    let seen = store.saga_get(saga_id).await.unwrap();
    store
        .saga_take_over(&TakeOver {
            saga_id,
            seen: &seen,
            owner,
            lease_until: in_a_minute(),
            turn_around: None,
        })
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn a_saga_keeps_the_trace_it_started_in_for_whoever_resumes_it() {
    let f = fixture().await;
    let (_, saga_id, _) = place(&f.store, "u-traced", "a").await;
    take_over(&f.store, &saga_id, "b").await;
    let saga = f.store.saga_load(&saga_id).await.unwrap().saga;
    assert_eq!(saga.trace, Some(started_in()));
    f.db.drop_database().await.unwrap();
}

#[tokio::test]
async fn a_writer_that_lost_its_lease_writes_nothing() {
    let f = fixture().await;
    // Taken over by an operator's retry, or claimed once the lease expired.
    for takeover in ["operator", "expiry"] {
        let (order_id, saga_id, stale) = place(&f.store, &format!("u-{takeover}"), "a").await;
        let fresh = match takeover {
            "operator" => take_over(&f.store, &saga_id, "b").await,
            _ => {
                let mut conn = f.db.connect().await.unwrap();
                conn.batch_execute(&format!(
                    "UPDATE sagas SET lease_expires_at = '2000-01-01 00:00:00' \
                     WHERE id = '{saga_id}'"
                ))
                .await
                .unwrap();
                let claimed = f
                    .store
                    .sagas_claim("b", in_a_minute(), 10, None)
                    .await
                    .unwrap();
                assert_eq!(claimed.len(), 1, "{takeover}");
                assert_eq!(claimed[0].0, saga_id, "{takeover}");
                claimed[0].1.clone()
            }
        };
        assert_eq!(fresh.owner, "b");
        assert!(fresh.fence > stale.fence, "{takeover}: {fresh:?} {stale:?}");
        let before = snapshot(&f.store, &saga_id, &order_id).await;

        // The stale writer's late outcome: the step done, the order priced
        // and confirmed. None of it lands.
        let (output, pricing) = reserved(10_000, 0);
        let mut done = event(0, Direction::Forward, 1, Outcome::Succeeded);
        done.output = Some(output);
        let mut late = progress(
            vec![
                (Step::ReserveStock, done),
                (
                    Step::DeductPoints,
                    event(1, Direction::Forward, 1, Outcome::Started),
                ),
            ],
            vec![
                OrderChange::Priced {
                    lines: Vec::new(),
                    pricing,
                },
                OrderChange::PointsPaid(10_000),
                OrderChange::Transition {
                    from: OrderState::Pending,
                    to: OrderState::Confirmed,
                    reason: None,
                },
            ],
        );
        late.state = SagaState::Completed;
        let written = f
            .store
            .saga_write(&saga_id, &order_id, &stale, &late)
            .await
            .unwrap();
        assert!(!written, "{takeover}: the stale write is refused");
        assert_eq!(
            snapshot(&f.store, &saga_id, &order_id).await,
            before,
            "{takeover}: nothing changed"
        );

        // The new holder writes.
        let failed = event(0, Direction::Forward, 1, Outcome::Failed);
        let written = f
            .store
            .saga_write(
                &saga_id,
                &order_id,
                &fresh,
                &progress(vec![(Step::ReserveStock, failed)], Vec::new()),
            )
            .await
            .unwrap();
        assert!(written, "{takeover}: the holder's write lands");
        let log = f.store.saga_load(&saga_id).await.unwrap().log;
        assert_eq!(log.len(), 2, "{takeover}: {log:?}");
    }
    f.db.drop_database().await.unwrap();
}

#[tokio::test]
async fn a_rejected_order_pays_nothing_and_a_confirmed_one_what_was_deducted() {
    let f = fixture().await;
    for end in [OrderEvent::Reject, OrderEvent::Confirm] {
        let (order_id, saga_id, lease) = place(&f.store, &format!("u-{end:?}"), "a").await;
        let (output, pricing) = reserved(10_000, 3_000);
        let mut done = event(0, Direction::Forward, 1, Outcome::Succeeded);
        done.output = Some(output);
        let priced = OrderChange::Priced {
            lines: Vec::new(),
            pricing,
        };
        assert!(
            f.store
                .saga_write(
                    &saga_id,
                    &order_id,
                    &lease,
                    &progress(vec![(Step::ReserveStock, done)], vec![priced]),
                )
                .await
                .unwrap()
        );
        // Priced, nothing deducted yet: nothing paid.
        let o = f.store.order_get(&order_id).await.unwrap().order;
        assert_eq!((o.subtotal, o.discount, o.points_paid), (10_000, 3_000, 0));

        let mut deducted = event(1, Direction::Forward, 1, Outcome::Succeeded);
        deducted.output = Some(StepOutput::PointsDeducted { amount: 7_000 });
        assert!(
            f.store
                .saga_write(
                    &saga_id,
                    &order_id,
                    &lease,
                    &progress(
                        vec![(Step::DeductPoints, deducted)],
                        vec![OrderChange::PointsPaid(7_000)],
                    ),
                )
                .await
                .unwrap()
        );
        let o = f.store.order_get(&order_id).await.unwrap().order;
        assert_eq!(o.points_paid, 7_000);

        // As the engine ends the saga: a rejected order's steps were all
        // undone.
        let reason = (end == OrderEvent::Reject)
            .then(|| Rejection::new("COUPON_ALREADY_USED", "used by another order"));
        let to = OrderState::Pending.apply(end).unwrap();
        let transition = OrderChange::Transition {
            from: OrderState::Pending,
            to,
            reason,
        };
        let changes = if to == OrderState::Rejected {
            vec![OrderChange::Undone, transition]
        } else {
            vec![transition]
        };
        let mut last = progress(Vec::new(), changes);
        last.lease_until = None;
        assert!(
            f.store
                .saga_write(&saga_id, &order_id, &lease, &last)
                .await
                .unwrap()
        );
        let o = f.store.order_get(&order_id).await.unwrap().order;
        match end {
            OrderEvent::Reject => {
                assert_eq!(o.state, "REJECTED");
                assert_eq!((o.subtotal, o.discount, o.points_paid), (10_000, 0, 0));
            }
            _ => {
                assert_eq!(o.state, "CONFIRMED");
                assert_eq!(
                    (o.subtotal, o.discount, o.points_paid),
                    (10_000, 3_000, 7_000)
                );
            }
        }
    }
    f.db.drop_database().await.unwrap();
}

/// A loopback address nothing listens on: calls fail at once (refused).
fn refusing_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("http://127.0.0.1:{port}")
}

fn engine(store: &OrderStore, forward_budget: Duration) -> Arc<Engine> {
    let participants = GrpcParticipants::new(&ParticipantConfig {
        product: refusing_addr(),
        point: refusing_addr(),
        coupon: refusing_addr(),
        call_timeout: Duration::from_millis(500),
        tls: None,
    })
    .unwrap();
    Arc::new(Engine::new(
        store.clone(),
        participants,
        EngineConfig {
            owner: "a".to_owned(),
            lease: Duration::from_secs(60),
            retry: RetryPolicy {
                base: Duration::from_millis(1),
                max: Duration::from_millis(20),
                forward_budget,
                stuck_after: 1,
                stuck_retry: Duration::from_secs(3600),
            },
            recovery_interval: Duration::from_secs(3600),
            recovery_batch: 10,
            max_recovering: 1,
        },
        Faults::default(),
    ))
}

#[tokio::test]
async fn the_engine_stops_and_counts_when_its_lease_is_lost() {
    let f = fixture().await;
    let engine = engine(&f.store, Duration::from_secs(3600));
    let (order_id, saga_id, stale) = place(&f.store, "u-lost", "a").await;
    take_over(&f.store, &saga_id, "b").await;
    let before = snapshot(&f.store, &saga_id, &order_id).await;
    assert_eq!(engine.leases_lost(), 0);

    // The drive calls the (refusing) product service, then its FAILED
    // write is refused: it stops, writes nothing, and counts it.
    let driven = engine.drive(&saga_id, stale).await.unwrap();
    assert_eq!(driven, Driven::LeaseLost);
    assert_eq!(engine.leases_lost(), 1);
    assert_eq!(snapshot(&f.store, &saga_id, &order_id).await, before);
    f.db.drop_database().await.unwrap();
}

#[tokio::test]
async fn the_forward_budget_counts_from_the_step_log_across_restarts() {
    let f = fixture().await;

    // A step first STARTED ten minutes ago (by a run of the orchestrator
    // that stopped since), budget one minute: the resumed attempt fails and
    // the budget is already spent, so the saga compensates at once; the
    // release cannot reach the product service either, and with
    // stuck_after = 1 the saga is STUCK.
    let (_, old, lease) = place(&f.store, "u-old", "a").await;
    let mut conn = f.db.connect().await.unwrap();
    conn.batch_execute(&format!(
        "UPDATE saga_log SET created_at = created_at - INTERVAL 10 MINUTE WHERE saga_id = '{old}'"
    ))
    .await
    .unwrap();
    let driven = engine(&f.store, Duration::from_secs(60))
        .drive(&old, lease)
        .await
        .unwrap();
    assert_eq!(driven, Driven::Stuck);
    let saga = f.store.saga_load(&old).await.unwrap();
    assert_eq!(
        (saga.saga.state.as_str(), saga.saga.reason.as_str()),
        ("STUCK", reason::STEP_RETRIES_EXHAUSTED)
    );
    let forward: Vec<_> = saga
        .log
        .iter()
        .filter(|e| e.direction == Direction::Forward)
        .map(|e| (e.attempt, e.outcome))
        .collect();
    assert_eq!(
        forward,
        [(1, Outcome::Started), (1, Outcome::Rejected)],
        "one attempt, then the spent budget: {:?}",
        saga.raw_log
    );
    let rejected = saga
        .log
        .iter()
        .find(|e| e.outcome == Outcome::Rejected)
        .unwrap();
    // Stored as it always was: "REASON: message".
    let stored = saga
        .raw_log
        .iter()
        .find_map(|row| (row.outcome == "REJECTED").then_some(row.error.clone()?))
        .unwrap();
    assert_eq!(
        rejected.rejection.as_ref().unwrap().reason,
        reason::STEP_RETRIES_EXHAUSTED
    );
    assert!(
        stored.starts_with("STEP_RETRIES_EXHAUSTED: reserve_stock kept failing for "),
        "{rejected:?}"
    );
    assert!(stored.contains("(attempts: 1)"), "{rejected:?}");

    // A step started just now with a budget of a few seconds is retried
    // (however many attempts fit) before it compensates.
    let (_, fresh, lease) = place(&f.store, "u-fresh", "a").await;
    let driven = engine(&f.store, Duration::from_secs(3))
        .drive(&fresh, lease)
        .await
        .unwrap();
    assert_eq!(driven, Driven::Stuck);
    let saga = f.store.saga_load(&fresh).await.unwrap();
    let failed = saga
        .log
        .iter()
        .filter(|e| e.direction == Direction::Forward && e.outcome == Outcome::Failed)
        .count();
    assert!(failed >= 1, "retried before giving up: {:?}", saga.raw_log);
    assert_eq!(saga.saga.reason, reason::STEP_RETRIES_EXHAUSTED);
    f.db.drop_database().await.unwrap();
}

/// The executor's writes are group-committed: written together, each one
/// stays fenced on its own (a stale lease writes nothing and is answered
/// `false`), and a write that fails fails only its own saga.
#[tokio::test]
async fn group_committed_writes_are_fenced_and_fail_alone() {
    use crate::executor::SagaStore;

    let f = fixture().await;
    let (good_order, good, good_lease) = place(&f.store, "u-good", "a").await;
    let (_, stale, stale_lease) = place(&f.store, "u-stale", "a").await;
    take_over(&f.store, &stale, "b").await;
    let (_, bad, bad_lease) = place(&f.store, "u-bad", "a").await;
    let params = |saga: &SagaId| {
        let f = &f;
        let saga = saga.clone();
        async move { f.store.saga_load(&saga).await.unwrap().saga.params }
    };
    let failed_once = event(0, Direction::Forward, 1, Outcome::Failed);
    let write = progress(vec![(Step::ReserveStock, failed_once)], Vec::new());
    // A transition from a state the order is not in breaks an invariant.
    let broken = progress(
        Vec::new(),
        vec![OrderChange::Transition {
            from: OrderState::Confirmed,
            to: OrderState::Cancelled,
            reason: None,
        }],
    );
    let (good_params, stale_params, bad_params) = (
        params(&good).await,
        params(&stale).await,
        params(&bad).await,
    );
    let (written, refused, failed) = tokio::join!(
        f.store
            .saga_progress(&good, &good_params, &good_lease, &write),
        f.store
            .saga_progress(&stale, &stale_params, &stale_lease, &write),
        f.store
            .saga_progress(&bad, &bad_params, &bad_lease, &broken),
    );
    assert!(written.unwrap(), "the current lease writes");
    assert!(!refused.unwrap(), "the stale lease writes nothing");
    assert!(failed.is_err(), "the broken write fails");
    assert_eq!(f.store.saga_load(&good).await.unwrap().log.len(), 2);
    assert_eq!(f.store.saga_load(&stale).await.unwrap().log.len(), 1);
    assert_eq!(f.store.saga_load(&bad).await.unwrap().log.len(), 1);
    assert_eq!(
        f.store.order_get(&good_order).await.unwrap().order.state,
        "PENDING"
    );
    f.db.drop_database().await.unwrap();
}

#[tokio::test]
async fn outbox_claims_are_exclusive_ordered_per_order_and_retaken_after_expiry() {
    let f = fixture().await;
    let (first, _, _) = place(&f.store, "u-first", "a").await;
    let (second, _, _) = place(&f.store, "u-second", "a").await;
    // Two events of `first` (confirmed, then cancelled) around one of
    // `second`: the cancellation may not go out before the confirmation.
    let mut conn = f.db.connect().await.unwrap();
    conn.batch_execute(&format!(
        "INSERT INTO outbox (event_id, order_id, kind, occurred_at) VALUES \
         ('e-1', '{first}', 'confirmed', NOW(6)), \
         ('e-2', '{second}', 'confirmed', NOW(6)), \
         ('e-3', '{first}', 'cancelled', NOW(6))"
    ))
    .await
    .unwrap();
    let events = |pending: &[crate::store::PendingEvent]| {
        pending
            .iter()
            .map(|e| e.row.event_id.clone())
            .collect::<Vec<_>>()
    };

    // `a` takes one row; `b` the next claimable one, never `a`'s, and not
    // the cancellation, whose confirmation is unpublished.
    let a = f.store.outbox_claim("a", in_a_minute(), 1).await.unwrap();
    assert_eq!(events(&a), ["e-1"]);
    assert_eq!(a[0].order.id, first);
    let b = f.store.outbox_claim("b", in_a_minute(), 10).await.unwrap();
    assert_eq!(events(&b), ["e-2"]);
    assert!(
        f.store
            .outbox_claim("c", in_a_minute(), 10)
            .await
            .unwrap()
            .is_empty()
    );

    // `a` retakes its own unpublished claim (a retry), and once it is
    // published the cancellation is free.
    let again = f.store.outbox_claim("a", in_a_minute(), 10).await.unwrap();
    assert_eq!(events(&again), ["e-1"]);
    let ids: Vec<i64> = again.iter().map(|e| e.row.id).collect();
    // Marking by another owner marks nothing.
    f.store.outbox_published("c", &ids).await.unwrap();
    assert!(
        f.store
            .outbox_claim("c", in_a_minute(), 10)
            .await
            .unwrap()
            .is_empty()
    );
    f.store.outbox_published("a", &ids).await.unwrap();
    let c = f.store.outbox_claim("c", in_a_minute(), 10).await.unwrap();
    assert_eq!(events(&c), ["e-3"]);

    // `b` died holding e-2: once its claim expires another relay takes it.
    conn.batch_execute(
        "UPDATE outbox SET claim_until = NOW(6) - INTERVAL 1 SECOND WHERE event_id = 'e-2'",
    )
    .await
    .unwrap();
    let d = f.store.outbox_claim("d", in_a_minute(), 10).await.unwrap();
    assert_eq!(events(&d), ["e-2"]);
    let counts = f.store.outbox_counts().await.unwrap();
    assert_eq!((counts.pending, counts.published_kept), (2, 1));
    drop(conn);
    f.db.drop_database().await.unwrap();
}
