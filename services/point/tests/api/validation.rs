//! Malformed requests: INVALID_ARGUMENT naming the field, and no state change.

use commerce_proto::point::v1 as pb;
use commerce_testkit::assert_status;
use tonic::Code;

use crate::{charge_request, deduct_request, new_saga, refund_request, spawn};

const BAD_USER_IDS: &[&str] = &["", "has space", "semi;colon", "caf\u{e9}", "quote'"];

#[tokio::test]
async fn bad_user_ids_are_refused_by_every_rpc() {
    let app = spawn().await;
    let mut points = app.points.clone();
    let too_long = "u".repeat(65);
    let bad: Vec<&str> = BAD_USER_IDS
        .iter()
        .copied()
        .chain([too_long.as_str()])
        .collect();

    for user in bad {
        assert_status(
            points.charge(charge_request(user, 10, "key")).await,
            Code::InvalidArgument,
            "user_id",
        );
        assert_status(
            points
                .get_balance(pb::GetBalanceRequest {
                    user_id: user.to_owned(),
                })
                .await,
            Code::InvalidArgument,
            "user_id",
        );
        assert_status(
            points
                .list_ledger(pb::ListLedgerRequest {
                    user_id: user.to_owned(),
                    page: 0,
                    size: 10,
                })
                .await,
            Code::InvalidArgument,
            "user_id",
        );
        assert_status(
            points
                .deduct_points(deduct_request(&new_saga(), user, 10))
                .await,
            Code::InvalidArgument,
            "user_id",
        );
    }
    // The longest allowed id works.
    let longest = "u".repeat(64);
    assert_eq!(app.charge(&longest, 5, "key").await.balance, 5);
    assert_eq!(app.sql_count("point_accounts").await, 1);
    assert_eq!(app.sql_count("point_ledger").await, 1);
    assert_eq!(app.sql_count("saga_barrier").await, 0);
    app.finish().await;
}

#[tokio::test]
async fn bad_paging_is_refused() {
    let app = spawn().await;
    app.charge("alice", 10, "key").await;
    let mut points = app.points.clone();
    for (page, size, field) in [
        (-1, 10, "page"),
        (i32::MIN, 10, "page"),
        (100_001, 10, "page"),
        (0, 0, "size"),
        (0, -1, "size"),
        (0, 101, "size"),
    ] {
        let refused = points
            .list_ledger(pb::ListLedgerRequest {
                user_id: "alice".to_owned(),
                page,
                size,
            })
            .await;
        assert_status(refused, Code::InvalidArgument, field);
    }
    let largest = points
        .list_ledger(pb::ListLedgerRequest {
            user_id: "alice".to_owned(),
            page: 0,
            size: 100,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((largest.entries.len(), largest.total), (1, 1));
    app.finish().await;
}

#[tokio::test]
async fn bad_saga_requests_are_refused_and_leave_nothing() {
    let app = spawn().await;
    app.charge("alice", 1_000, "key").await;
    let mut points = app.points.clone();

    for saga in [
        "",
        "not-a-uuid",
        "1234",
        "5a1b6d1e-8c3f-4f7a-9b1e-2d3c4b5a6f7",
    ] {
        assert_status(
            points
                .deduct_points(deduct_request(saga, "alice", 10))
                .await,
            Code::InvalidArgument,
            "saga_id",
        );
        assert_status(
            points.refund_points(refund_request(saga)).await,
            Code::InvalidArgument,
            "saga_id",
        );
    }
    for amount in [0, -1, 1_000_000_001, i64::MIN, i64::MAX] {
        assert_status(
            points
                .deduct_points(deduct_request(&new_saga(), "alice", amount))
                .await,
            Code::InvalidArgument,
            "amount",
        );
    }
    assert_eq!(app.balance("alice").await, 1_000);
    assert_eq!(app.sql_count("point_ledger").await, 1);
    assert_eq!(app.sql_count("saga_barrier").await, 0);
    app.finish().await;
}
