//! The saga step (DeductPoints) and its compensation (RefundPoints): twice in
//! a row, compensation first, action after compensation, failure leaving a
//! clean slate.

use commerce_proto::point::v1 as pb;
use commerce_proto::saga::v1::BarrierState;
use commerce_testkit::assert_status;
use tonic::Code;

use crate::{new_saga, spawn};

fn applied(operation: &str) -> (String, BarrierState) {
    (operation.to_owned(), BarrierState::Applied)
}

#[tokio::test]
async fn deduct_twice_deducts_once_and_replays_the_first_result() {
    let app = spawn().await;
    app.charge("alice", 1_000, "top-up").await;
    let saga = new_saga();

    let first = app.deduct(&saga, "alice", 300).await.unwrap();
    assert_eq!(
        first,
        pb::DeductPointsResponse {
            saga_id: saga.clone(),
            user_id: "alice".to_owned(),
            deducted: 300,
            balance: 700,
        }
    );
    assert_eq!(app.deduct(&saga, "alice", 300).await.unwrap(), first);
    // Even a repeat carrying other values replays the first result.
    assert_eq!(app.deduct(&saga, "alice", 999).await.unwrap(), first);
    // The canonical form of the saga id is the same saga.
    let upper = saga.to_uppercase();
    assert_eq!(app.deduct(&upper, "alice", 300).await.unwrap(), first);

    assert_eq!(app.balance("alice").await, 700);
    let ledger = app.assert_consistent("alice").await;
    assert_eq!(ledger.len(), 2);
    assert_eq!(ledger[0].kind(), pb::LedgerKind::Use);
    assert_eq!((ledger[0].amount, ledger[0].balance_after), (-300, 700));
    assert_eq!(ledger[0].reference, saga);
    assert_eq!(app.barrier(&saga).await, [applied("deduct_points")]);
    app.finish().await;
}

#[tokio::test]
async fn refund_gives_back_exactly_the_deduction_once() {
    let app = spawn().await;
    app.charge("alice", 1_000, "top-up").await;
    let saga = new_saga();
    app.deduct(&saga, "alice", 400).await.unwrap();
    // Another saga's deduction is not touched by this refund.
    let other = new_saga();
    app.deduct(&other, "alice", 100).await.unwrap();

    let refunded = app.refund(&saga).await;
    assert_eq!(
        refunded,
        pb::RefundPointsResponse {
            saga_id: saga.clone(),
            refunded: true,
            user_id: "alice".to_owned(),
            amount: 400,
            balance: 900,
        }
    );
    assert_eq!(app.refund(&saga).await, refunded, "a repeat replays");
    assert_eq!(app.balance("alice").await, 900);

    // A late repeat of the deduction replays; it never takes points again.
    let late = app.deduct(&saga, "alice", 400).await.unwrap();
    assert_eq!((late.deducted, late.balance), (400, 600));
    assert_eq!(app.balance("alice").await, 900);

    let ledger = app.assert_consistent("alice").await;
    let kinds: Vec<_> = ledger.iter().map(|e| (e.kind(), e.amount)).collect();
    assert_eq!(
        kinds,
        [
            (pb::LedgerKind::Refund, 400),
            (pb::LedgerKind::Use, -100),
            (pb::LedgerKind::Use, -400),
            (pb::LedgerKind::Charge, 1_000),
        ]
    );
    assert_eq!(
        app.barrier(&saga).await,
        [applied("deduct_points"), applied("refund_points")]
    );
    app.finish().await;
}

#[tokio::test]
async fn refund_before_deduct_is_a_noop_and_blocks_the_deduct() {
    let app = spawn().await;
    app.charge("alice", 1_000, "top-up").await;
    let saga = new_saga();

    let nothing = app.refund(&saga).await;
    assert_eq!(
        nothing,
        pb::RefundPointsResponse {
            saga_id: saga.clone(),
            refunded: false,
            user_id: String::new(),
            amount: 0,
            balance: 0,
        }
    );
    let late = app.deduct(&saga, "alice", 100).await;
    assert_status(late, Code::FailedPrecondition, "SAGA_ALREADY_COMPENSATED");
    // Refused again on a repeat; the refund stays a no-op.
    let late = app.deduct(&saga, "alice", 100).await;
    assert_status(late, Code::FailedPrecondition, "SAGA_ALREADY_COMPENSATED");
    assert_eq!(app.refund(&saga).await, nothing);

    assert_eq!(app.balance("alice").await, 1_000);
    assert_eq!(app.assert_consistent("alice").await.len(), 1);
    assert_eq!(
        app.barrier(&saga).await,
        [
            ("deduct_points".to_owned(), BarrierState::Blocked),
            applied("refund_points"),
        ]
    );
    app.finish().await;
}

#[tokio::test]
async fn failed_deduct_leaves_a_clean_slate_and_its_refund_is_a_noop() {
    let app = spawn().await;
    app.charge("alice", 100, "top-up").await;
    let saga = new_saga();

    let short = app.deduct(&saga, "alice", 101).await;
    assert_status(short, Code::FailedPrecondition, "POINT_INSUFFICIENT");
    assert_eq!(app.balance("alice").await, 100);
    assert_eq!(app.assert_consistent("alice").await.len(), 1);
    assert!(
        app.barrier(&saga).await.is_empty(),
        "no barrier row survives"
    );

    let refund = app.refund(&saga).await;
    assert!(!refund.refunded);
    assert_eq!(app.balance("alice").await, 100);
    // The saga was compensated: even an affordable retry is refused now.
    let retry = app.deduct(&saga, "alice", 50).await;
    assert_status(retry, Code::FailedPrecondition, "SAGA_ALREADY_COMPENSATED");
    assert_eq!(app.assert_consistent("alice").await.len(), 1);

    // A user never seen has nothing to deduct, and is not created by asking.
    let stranger = new_saga();
    let unknown = app.deduct(&stranger, "nobody", 1).await;
    assert_status(unknown, Code::FailedPrecondition, "POINT_INSUFFICIENT");
    assert_eq!(app.sql_balance("nobody").await, None);
    assert!(app.barrier(&stranger).await.is_empty());

    // The exact balance can be deducted, down to zero.
    let all = app.deduct(&new_saga(), "alice", 100).await.unwrap();
    assert_eq!(all.balance, 0);
    assert_eq!(app.assert_consistent("alice").await.len(), 2);
    app.finish().await;
}

#[tokio::test]
async fn refund_may_exceed_the_charge_cap() {
    let app = spawn().await;
    let charges = (0..100).map(|i| {
        let app = &app;
        async move { app.charge("alice", 10_000_000, &format!("fill-{i}")).await }
    });
    futures::future::join_all(charges).await;
    let saga = new_saga();
    app.deduct(&saga, "alice", 50_000_000).await.unwrap();
    // Refill to the cap, then the refund restores the deducted points on top.
    for i in 0..5 {
        app.charge("alice", 10_000_000, &format!("refill-{i}"))
            .await;
    }
    assert_eq!(app.balance("alice").await, 1_000_000_000);
    let refund = app.refund(&saga).await;
    assert!(refund.refunded);
    assert_eq!(refund.balance, 1_050_000_000);
    app.assert_consistent("alice").await;
    app.finish().await;
}
