//! Many concurrent calls through the real server: exact outcomes, and the
//! invariants checked afterwards against the API and the database.

use std::collections::HashSet;

use commerce_proto::point::v1 as pb;
use commerce_testkit::error_reason;
use tokio::task::JoinSet;
use tonic::Code;

use crate::{charge_request, deduct_request, new_saga, refund_request, spawn};

#[tokio::test]
async fn concurrent_charges_with_one_key_charge_once() {
    let app = spawn().await;
    let mut calls = JoinSet::new();
    for _ in 0..20 {
        let mut points = app.points.clone();
        calls.spawn(async move {
            points
                .charge(charge_request("alice", 2_500, "same-key"))
                .await
                .map(tonic::Response::into_inner)
        });
    }
    let results: Vec<pb::ChargeResponse> = calls
        .join_all()
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let first = &results[0];
    assert_eq!(first.balance, 2_500);
    assert!(
        results.iter().all(|r| r == first),
        "every call sees one charge"
    );

    assert_eq!(app.balance("alice").await, 2_500);
    assert_eq!(app.assert_consistent("alice").await.len(), 1);
    app.finish().await;
}

#[tokio::test]
async fn concurrent_deductions_never_overdraw() {
    let app = spawn().await;
    const START: i64 = 5_000;
    app.charge("alice", START, "top-up").await;

    // 100 sagas asking 50..=149 points each: 9,950 in all, about twice the balance.
    let mut calls = JoinSet::new();
    for i in 0..100 {
        let mut points = app.points.clone();
        let saga = new_saga();
        let amount = 50 + i;
        calls.spawn(async move {
            let result = points
                .deduct_points(deduct_request(&saga, "alice", amount))
                .await;
            (saga, amount, result)
        });
    }
    let mut deducted = 0;
    let mut succeeded = HashSet::new();
    let mut refused = Vec::new();
    for (saga, amount, result) in calls.join_all().await {
        match result {
            Ok(response) => {
                let response = response.into_inner();
                assert_eq!(response.deducted, amount);
                assert!(response.balance >= 0);
                deducted += amount;
                succeeded.insert(saga);
            }
            Err(status) => {
                assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
                assert_eq!(error_reason(&status).as_deref(), Some("POINT_INSUFFICIENT"));
                refused.push(amount);
            }
        }
    }
    assert!(!succeeded.is_empty() && !refused.is_empty());
    let balance = app.balance("alice").await;
    assert_eq!(balance, START - deducted);
    // The balance only went down, so every refused amount exceeded what was
    // left at its turn, hence what is left now.
    assert!(
        refused.iter().all(|amount| *amount > balance),
        "{refused:?} vs {balance}"
    );

    let ledger = app.assert_consistent("alice").await;
    let used: HashSet<String> = ledger
        .iter()
        .filter(|e| e.kind() == pb::LedgerKind::Use)
        .map(|e| e.reference.clone())
        .collect();
    assert_eq!(
        used, succeeded,
        "exactly the successful sagas are in the ledger"
    );
    assert_eq!(ledger.len(), succeeded.len() + 1);
    app.finish().await;
}

#[tokio::test]
async fn concurrent_repeats_of_one_deduction_apply_once() {
    let app = spawn().await;
    app.charge("alice", 1_000, "top-up").await;
    let saga = new_saga();
    let mut calls = JoinSet::new();
    for _ in 0..30 {
        let mut points = app.points.clone();
        let saga = saga.clone();
        calls.spawn(async move {
            points
                .deduct_points(deduct_request(&saga, "alice", 250))
                .await
                .map(tonic::Response::into_inner)
        });
    }
    for result in calls.join_all().await {
        let response = result.unwrap();
        assert_eq!((response.deducted, response.balance), (250, 750));
    }
    assert_eq!(app.balance("alice").await, 750);
    assert_eq!(app.assert_consistent("alice").await.len(), 2);
    app.finish().await;
}

#[tokio::test]
async fn concurrent_deduct_and_refund_of_one_saga_end_consistent() {
    let app = spawn().await;
    const START: i64 = 1_000_000;
    app.charge("alice", START, "top-up").await;

    // 50 sagas whose deduction and refund race (the refund may come first),
    // plus a repeat of each, all at once.
    let sagas: Vec<String> = (0..50).map(|_| new_saga()).collect();
    let mut deducts = JoinSet::new();
    let mut refunds = JoinSet::new();
    for saga in &sagas {
        for _ in 0..2 {
            let mut points = app.points.clone();
            let saga_for_deduct = saga.clone();
            deducts.spawn(async move {
                let result = points
                    .deduct_points(deduct_request(&saga_for_deduct, "alice", 1_000))
                    .await
                    .map(tonic::Response::into_inner);
                (saga_for_deduct, result)
            });
            let mut points = app.points.clone();
            let saga_for_refund = saga.clone();
            refunds.spawn(async move {
                points
                    .refund_points(refund_request(&saga_for_refund))
                    .await
                    .unwrap()
                    .into_inner()
            });
        }
    }
    let mut deducted = HashSet::new();
    let mut blocked = HashSet::new();
    for (saga, result) in deducts.join_all().await {
        match result {
            Ok(response) => {
                assert_eq!(response.deducted, 1_000);
                deducted.insert(saga);
            }
            Err(status) => {
                assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
                assert_eq!(
                    error_reason(&status).as_deref(),
                    Some("SAGA_ALREADY_COMPENSATED")
                );
                blocked.insert(saga);
            }
        }
    }
    assert!(deducted.is_disjoint(&blocked), "repeats of one saga agree");
    assert_eq!(deducted.len() + blocked.len(), sagas.len());
    for refund in refunds.join_all().await {
        // Refunded exactly when the deduction was applied (then refused never).
        assert_eq!(
            refund.refunded,
            deducted.contains(&refund.saga_id),
            "{refund:?}"
        );
        if refund.refunded {
            assert_eq!(refund.amount, 1_000);
        }
    }

    // Every applied deduction was given back exactly once.
    assert_eq!(app.balance("alice").await, START);
    let ledger = app.assert_consistent("alice").await;
    let of_kind = |kind: pb::LedgerKind| -> HashSet<String> {
        ledger
            .iter()
            .filter(|e| e.kind() == kind)
            .map(|e| e.reference.clone())
            .collect()
    };
    assert_eq!(of_kind(pb::LedgerKind::Use), deducted);
    assert_eq!(of_kind(pb::LedgerKind::Refund), deducted);
    assert_eq!(ledger.len(), 1 + 2 * deducted.len());
    app.finish().await;
}
