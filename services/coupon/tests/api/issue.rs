//! IssueCoupon and ListUserCoupons: one coupon per user per template, never
//! more than the total quantity, whatever the concurrency.

use std::collections::HashSet;

use commerce_proto::coupon::v1 as pb;
use commerce_testkit::{assert_status, error_reason};
use tonic::Code;

use crate::support::{expired, fixed, percent, spawn, state, upcoming};

#[tokio::test]
async fn issued_coupons_are_listed_newest_first_with_their_templates() {
    let app = spawn().await;
    let a = app.create_template(fixed(1_000)).await;
    let b = app.create_template(percent(10, Some(3_000))).await;
    let c = app.create_template(upcoming(fixed(2_000))).await;

    let first = app.issue(a.id, "alice").await.unwrap();
    assert_eq!(first.user_id, "alice");
    assert_eq!(state(&first), pb::UserCouponState::Available);
    assert_eq!(first.used_by_saga, "");
    assert_eq!(first.used_at, None);
    assert!(first.issued_at.is_some());
    let template = first.template.clone().unwrap();
    assert_eq!(template.id, a.id);
    assert_eq!(template.issued_quantity, 1);
    app.issue(b.id, "alice").await.unwrap();
    // A template whose window has not started can be issued already.
    let third = app.issue(c.id, "alice").await.unwrap();
    app.issue(a.id, "bob").await.unwrap();

    let listed = app.list("alice", 0, 10).await.unwrap();
    assert_eq!(listed.total, 3);
    assert_eq!((listed.page, listed.size), (0, 10));
    let templates: Vec<i64> = listed
        .coupons
        .iter()
        .map(|coupon| coupon.template.as_ref().unwrap().id)
        .collect();
    assert_eq!(templates, vec![c.id, b.id, a.id]);
    assert_eq!(listed.coupons[0], third);

    let page0 = app.list("alice", 0, 2).await.unwrap();
    let page1 = app.list("alice", 1, 2).await.unwrap();
    assert_eq!(page0.coupons.len(), 2);
    assert_eq!(page1.coupons.len(), 1);
    assert_eq!((page1.total, page1.page, page1.size), (3, 1, 2));
    assert_eq!(page1.coupons[0].template.as_ref().unwrap().id, a.id);
    assert!(app.list("alice", 2, 2).await.unwrap().coupons.is_empty());

    let nobody = app.list("nobody", 0, 10).await.unwrap();
    assert_eq!((nobody.total, nobody.coupons.len()), (0, 0));
    assert_eq!(app.get_template(a.id).await.issued_quantity, 2);

    assert_status(
        app.list("alice", -1, 10).await,
        Code::InvalidArgument,
        "page",
    );
    assert_status(app.list("alice", 0, 0).await, Code::InvalidArgument, "size");
    assert_status(
        app.list("alice", 0, 101).await,
        Code::InvalidArgument,
        "size",
    );
    assert_status(app.list("", 0, 10).await, Code::InvalidArgument, "user_id");
    app.stop().await;
}

#[tokio::test]
async fn one_coupon_per_user_per_template() {
    let app = spawn().await;
    let template = app.create_template(fixed(1_000)).await;
    app.issue(template.id, "alice").await.unwrap();
    assert_status(
        app.issue(template.id, "alice").await,
        Code::AlreadyExists,
        "COUPON_ALREADY_ISSUED",
    );
    // The refused second issue did not consume the quantity.
    assert_eq!(app.get_template(template.id).await.issued_quantity, 1);
    assert_eq!(app.list("alice", 0, 10).await.unwrap().total, 1);
    app.stop().await;
}

#[tokio::test]
async fn issuance_stops_at_the_total_quantity_and_refuses_bad_requests() {
    let app = spawn().await;
    let template = app
        .create_template(pb::CreateTemplateRequest {
            total_quantity: 2,
            ..fixed(1_000)
        })
        .await;
    app.issue(template.id, "alice").await.unwrap();
    app.issue(template.id, "bob").await.unwrap();
    assert_status(
        app.issue(template.id, "carol").await,
        Code::FailedPrecondition,
        "COUPON_SOLD_OUT",
    );
    // A holder asking again is told it holds one, even when sold out.
    assert_status(
        app.issue(template.id, "alice").await,
        Code::AlreadyExists,
        "COUPON_ALREADY_ISSUED",
    );
    assert_eq!(app.get_template(template.id).await.issued_quantity, 2);

    let past = app.create_template(expired(fixed(1_000))).await;
    assert_status(
        app.issue(past.id, "alice").await,
        Code::FailedPrecondition,
        "COUPON_EXPIRED",
    );
    assert_eq!(app.get_template(past.id).await.issued_quantity, 0);

    assert_status(
        app.issue(9_999, "alice").await,
        Code::NotFound,
        "COUPON_TEMPLATE_NOT_FOUND",
    );
    assert_status(
        app.issue(0, "alice").await,
        Code::InvalidArgument,
        "template_id",
    );
    for user in ["", "has space", &"x".repeat(65)] {
        assert_status(
            app.issue(template.id, user).await,
            Code::InvalidArgument,
            "user_id",
        );
    }
    assert_eq!(app.count("SELECT COUNT(*) AS n FROM user_coupons").await, 2);
    app.stop().await;
}

#[tokio::test]
async fn first_come_race_never_over_issues() {
    let app = spawn().await;
    let template = app
        .create_template(pb::CreateTemplateRequest {
            total_quantity: 10,
            ..fixed(1_000)
        })
        .await;
    // 200 distinct users, and 40 of them asking twice.
    let users: Vec<String> = (0..200)
        .map(|i| format!("user-{i}"))
        .chain((0..40).map(|i| format!("user-{}", i * 5)))
        .collect();
    let calls = users.iter().map(|user| {
        let mut client = app.coupons.clone();
        let request = pb::IssueCouponRequest {
            template_id: template.id,
            user_id: user.clone(),
        };
        tokio::spawn(async move { client.issue_coupon(request).await })
    });
    let results = futures::future::join_all(calls).await;

    let mut winners = HashSet::new();
    for result in results {
        match result.unwrap() {
            Ok(coupon) => assert!(winners.insert(coupon.into_inner().user_id)),
            Err(status) => {
                let reason = error_reason(&status);
                assert!(
                    matches!(
                        reason.as_deref(),
                        Some("COUPON_SOLD_OUT" | "COUPON_ALREADY_ISSUED")
                    ),
                    "unexpected failure {status:?}"
                );
            }
        }
    }
    assert_eq!(winners.len(), 10);
    assert_eq!(app.get_template(template.id).await.issued_quantity, 10);
    let id = template.id;
    assert_eq!(
        app.count(&format!(
            "SELECT COUNT(*) AS n FROM user_coupons WHERE template_id = {id}"
        ))
        .await,
        10
    );
    assert_eq!(
        app.count(&format!(
            "SELECT COUNT(DISTINCT user_id) AS n FROM user_coupons WHERE template_id = {id}"
        ))
        .await,
        10
    );
    for winner in &winners {
        assert_eq!(app.list(winner, 0, 10).await.unwrap().total, 1);
    }
    app.stop().await;
}
