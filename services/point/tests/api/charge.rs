//! Charging, balances and the ledger.

use commerce_proto::point::v1 as pb;
use commerce_testkit::assert_status;
use tonic::Code;

use crate::{charge_request, spawn};

#[tokio::test]
async fn charge_then_balance_and_ledger_round_trip() {
    let app = spawn().await;

    // A user never seen has 0 points, and asking creates nothing.
    assert_eq!(app.balance("alice").await, 0);
    assert_eq!(app.sql_count("point_accounts").await, 0);
    assert!(app.ledger("alice").await.is_empty());

    let first = app.charge("alice", 1_000, "charge-1").await;
    assert_eq!(first.balance, 1_000);
    let entry = first.entry.unwrap();
    assert_eq!(entry.user_id, "alice");
    assert_eq!(entry.kind(), pb::LedgerKind::Charge);
    assert_eq!(entry.amount, 1_000);
    assert_eq!(entry.balance_after, 1_000);
    assert_eq!(entry.reference, "charge-1");
    assert!(entry.created_at.is_some());

    let second = app.charge("alice", 500, "charge-2").await;
    assert_eq!(second.balance, 1_500);
    assert_eq!(app.balance("alice").await, 1_500);

    let ledger = app.assert_consistent("alice").await;
    let summary: Vec<_> = ledger
        .iter()
        .map(|e| (e.reference.as_str(), e.amount, e.balance_after))
        .collect();
    assert_eq!(
        summary,
        [("charge-2", 500, 1_500), ("charge-1", 1_000, 1_000)]
    );
    assert_eq!(ledger[1], entry);

    // Paging: one entry per page, newest first, total always 2.
    let mut points = app.points.clone();
    for (page, reference) in [(0, "charge-2"), (1, "charge-1")] {
        let listed = points
            .list_ledger(pb::ListLedgerRequest {
                user_id: "alice".to_owned(),
                page,
                size: 1,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!((listed.page, listed.size, listed.total), (page, 1, 2));
        assert_eq!(listed.entries.len(), 1);
        assert_eq!(listed.entries[0].reference, reference);
    }
    let beyond = points
        .list_ledger(pb::ListLedgerRequest {
            user_id: "alice".to_owned(),
            page: 5,
            size: 10,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(beyond.entries.is_empty());
    assert_eq!(beyond.total, 2);

    // Another user's ledger is separate.
    assert_eq!(app.balance("bob").await, 0);
    assert!(app.ledger("bob").await.is_empty());
    app.finish().await;
}

#[tokio::test]
async fn repeated_charge_key_charges_once_and_another_amount_is_refused() {
    let app = spawn().await;
    let first = app.charge("alice", 700, "order-42").await;
    let again = app.charge("alice", 700, "order-42").await;
    assert_eq!(again, first, "a repeat returns the first result");

    // A later charge does not change what the repeat returns.
    app.charge("alice", 300, "order-43").await;
    let later = app.charge("alice", 700, "order-42").await;
    assert_eq!(later, first);
    assert_eq!(later.balance, 700);

    let reused = app
        .points
        .clone()
        .charge(charge_request("alice", 701, "order-42"))
        .await;
    assert_status(reused, Code::AlreadyExists, "IDEMPOTENCY_KEY_REUSED");

    // Keys belong to a user: the same key charges another user.
    let bob = app.charge("bob", 700, "order-42").await;
    assert_eq!(bob.balance, 700);
    assert_ne!(bob.entry.unwrap().id, first.entry.unwrap().id);

    assert_eq!(app.balance("alice").await, 1_000);
    assert_eq!(app.assert_consistent("alice").await.len(), 2);
    assert_eq!(app.assert_consistent("bob").await.len(), 1);
    app.finish().await;
}

#[tokio::test]
async fn charge_limits_name_the_field_or_reason_and_change_nothing() {
    let app = spawn().await;
    let mut points = app.points.clone();

    for amount in [0, -1, -10_000_000, 10_000_001, i64::MAX, i64::MIN] {
        let refused = points
            .charge(charge_request("alice", amount, &format!("k{amount}")))
            .await;
        assert_status(refused, Code::InvalidArgument, "amount");
    }
    let long_key = "k".repeat(129);
    for key in ["", long_key.as_str(), "caf\u{e9}", "tab\tkey", "trailing "] {
        let refused = points.charge(charge_request("alice", 10, key)).await;
        assert_status(refused, Code::InvalidArgument, "idempotency_key");
    }
    assert_eq!(app.sql_count("point_accounts").await, 0);
    assert_eq!(app.sql_count("point_ledger").await, 0);

    // The largest charge and the longest key are fine.
    let max_key = "k".repeat(128);
    assert_eq!(
        app.charge("alice", 10_000_000, &max_key).await.balance,
        10_000_000
    );

    // Fill the account up to exactly the cap (100 charges of the maximum).
    let charges = (1..100).map(|i| {
        let app = &app;
        async move { app.charge("alice", 10_000_000, &format!("fill-{i}")).await }
    });
    futures::future::join_all(charges).await;
    assert_eq!(app.balance("alice").await, 1_000_000_000);

    let over = points.charge(charge_request("alice", 1, "one-more")).await;
    assert_status(over, Code::FailedPrecondition, "POINT_BALANCE_LIMIT");
    // A repeat of an earlier charge still replays its first result at the cap.
    let replay = app.charge("alice", 10_000_000, &max_key).await;
    assert_eq!(replay.balance, 10_000_000);

    // The refused charge left no trace.
    assert_eq!(app.balance("alice").await, 1_000_000_000);
    assert_eq!(app.assert_consistent("alice").await.len(), 100);
    assert_eq!(app.sql_count("point_accounts").await, 1);
    app.finish().await;
}
