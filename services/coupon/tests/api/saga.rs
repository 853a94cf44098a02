//! The saga pair `use_coupon` / `restore_coupon` behind the barrier: repeats
//! replay, compensation first blocks the action, failures leave a clean
//! slate, and concurrent sagas never use one coupon twice.

use std::collections::HashSet;

use commerce_proto::coupon::v1 as pb;
use commerce_testkit::{assert_status, error_reason};
use tonic::Code;

use crate::support::{TestApp, expired, fixed, percent, saga, spawn, state};

/// A fresh template and alice's coupon of it.
async fn alice_coupon(app: &TestApp, request: pb::CreateTemplateRequest) -> pb::UserCoupon {
    let template = app.create_template(request).await;
    app.issue(template.id, "alice").await.unwrap()
}

#[tokio::test]
async fn use_twice_gives_the_same_result_and_uses_once() {
    let app = spawn().await;
    let coupon = alice_coupon(&app, percent(10, Some(5_000))).await;
    let saga_id = saga();
    let first = app
        .use_coupon(&saga_id, &coupon, 30_000, None)
        .await
        .unwrap();
    assert_eq!(
        first,
        pb::UseCouponResponse {
            saga_id: saga_id.clone(),
            user_coupon_id: coupon.id,
            discount: 3_000,
        }
    );
    // A repeat (even with another amount) replays the first result.
    assert_eq!(
        app.use_coupon(&saga_id, &coupon, 90_000, None)
            .await
            .unwrap(),
        first
    );
    let stored = app.coupon("alice", coupon.id).await;
    assert_eq!(state(&stored), pb::UserCouponState::Used);
    assert_eq!(stored.used_by_saga, saga_id);
    assert!(stored.used_at.is_some());
    // Another saga cannot use it again.
    assert_status(
        app.use_coupon(&saga(), &coupon, 30_000, None).await,
        Code::FailedPrecondition,
        "COUPON_ALREADY_USED",
    );
    // The saga id is accepted in any case and canonicalised.
    let upper = saga_id.to_uppercase();
    assert_eq!(
        app.use_coupon(&upper, &coupon, 30_000, None).await.unwrap(),
        first
    );
    app.stop().await;
}

#[tokio::test]
async fn restore_makes_the_coupon_usable_again_once() {
    let app = spawn().await;
    let coupon = alice_coupon(&app, fixed(2_000)).await;
    let saga_id = saga();
    app.use_coupon(&saga_id, &coupon, 10_000, None)
        .await
        .unwrap();
    let restored = app.restore(&saga_id).await.unwrap();
    assert_eq!(
        restored,
        pb::RestoreCouponResponse {
            saga_id: saga_id.clone(),
            restored: true,
            user_coupon_id: coupon.id,
        }
    );
    assert_eq!(app.restore(&saga_id).await.unwrap(), restored);
    let stored = app.coupon("alice", coupon.id).await;
    assert_eq!(state(&stored), pb::UserCouponState::Available);
    assert_eq!(stored.used_by_saga, "");
    assert_eq!(stored.used_at, None);
    // A late repeat of the action replays and does not use it again.
    assert_eq!(
        app.use_coupon(&saga_id, &coupon, 10_000, None)
            .await
            .unwrap()
            .discount,
        2_000
    );
    assert_eq!(
        state(&app.coupon("alice", coupon.id).await),
        pb::UserCouponState::Available
    );
    // Another saga may use it now, and restoring the first saga again
    // leaves that use alone.
    let next = saga();
    app.use_coupon(&next, &coupon, 10_000, None).await.unwrap();
    assert_eq!(app.restore(&saga_id).await.unwrap(), restored);
    let stored = app.coupon("alice", coupon.id).await;
    assert_eq!(state(&stored), pb::UserCouponState::Used);
    assert_eq!(stored.used_by_saga, next);
    app.stop().await;
}

#[tokio::test]
async fn restore_before_use_blocks_the_use() {
    let app = spawn().await;
    let coupon = alice_coupon(&app, fixed(2_000)).await;
    let saga_id = saga();
    let nothing = app.restore(&saga_id).await.unwrap();
    assert_eq!(
        nothing,
        pb::RestoreCouponResponse {
            saga_id: saga_id.clone(),
            restored: false,
            user_coupon_id: 0,
        }
    );
    assert_status(
        app.use_coupon(&saga_id, &coupon, 10_000, None).await,
        Code::FailedPrecondition,
        "SAGA_ALREADY_COMPENSATED",
    );
    assert_eq!(
        state(&app.coupon("alice", coupon.id).await),
        pb::UserCouponState::Available
    );
    assert_eq!(app.restore(&saga_id).await.unwrap(), nothing);
    app.stop().await;
}

#[tokio::test]
async fn a_failed_use_leaves_the_coupon_available_and_restore_is_a_noop() {
    let app = spawn().await;
    let coupon = alice_coupon(
        &app,
        pb::CreateTemplateRequest {
            min_order_amount: 10_000,
            ..fixed(2_000)
        },
    )
    .await;
    let saga_id = saga();
    assert_status(
        app.use_coupon(&saga_id, &coupon, 9_999, None).await,
        Code::FailedPrecondition,
        "COUPON_MIN_ORDER_NOT_MET",
    );
    let stored = app.coupon("alice", coupon.id).await;
    assert_eq!(state(&stored), pb::UserCouponState::Available);
    assert_eq!(stored.used_by_saga, "");
    assert_eq!(
        app.count("SELECT COUNT(*) AS n FROM saga_barrier").await,
        0,
        "a failed action leaves no barrier row"
    );
    assert!(!app.restore(&saga_id).await.unwrap().restored);
    assert_eq!(
        state(&app.coupon("alice", coupon.id).await),
        pb::UserCouponState::Available
    );

    // Someone else's coupon is not found, and nothing changes either.
    let foreign = pb::UserCoupon {
        user_id: "mallory".to_owned(),
        ..coupon.clone()
    };
    let other_saga = saga();
    assert_status(
        app.use_coupon(&other_saga, &foreign, 50_000, None).await,
        Code::NotFound,
        "USER_COUPON_NOT_FOUND",
    );
    let missing = pb::UserCoupon {
        id: 9_999,
        ..coupon.clone()
    };
    assert_status(
        app.use_coupon(&other_saga, &missing, 50_000, None).await,
        Code::NotFound,
        "USER_COUPON_NOT_FOUND",
    );
    // After those failures the same saga can still use it.
    assert_eq!(
        app.use_coupon(&other_saga, &coupon, 50_000, None)
            .await
            .unwrap()
            .discount,
        2_000
    );
    app.stop().await;
}

#[tokio::test]
async fn use_of_a_lapsed_coupon_is_refused() {
    let app = spawn().await;
    let coupon = alice_coupon(&app, fixed(2_000)).await;
    let template_id = coupon.template.as_ref().unwrap().id;
    app.execute(&format!(
        "UPDATE coupon_templates SET valid_from = '2020-01-01', valid_until = '2020-01-02' \
         WHERE id = {template_id}"
    ))
    .await;
    assert_status(
        app.use_coupon(&saga(), &coupon, 50_000, None).await,
        Code::FailedPrecondition,
        "COUPON_EXPIRED",
    );
    // Expired templates are refused at issuance too.
    let past = app.create_template(expired(fixed(1_000))).await;
    assert_status(
        app.issue(past.id, "alice").await,
        Code::FailedPrecondition,
        "COUPON_EXPIRED",
    );
    app.stop().await;
}

#[tokio::test]
async fn expected_discount_must_match() {
    let app = spawn().await;
    let coupon = alice_coupon(&app, percent(10, None)).await;
    let saga_id = saga();
    assert_status(
        app.use_coupon(&saga_id, &coupon, 20_000, Some(1_999)).await,
        Code::FailedPrecondition,
        "COUPON_DISCOUNT_CHANGED",
    );
    assert_eq!(
        state(&app.coupon("alice", coupon.id).await),
        pb::UserCouponState::Available
    );
    let used = app
        .use_coupon(&saga_id, &coupon, 20_000, Some(2_000))
        .await
        .unwrap();
    assert_eq!(used.discount, 2_000);
    app.stop().await;
}

#[tokio::test]
async fn saga_requests_are_validated() {
    let app = spawn().await;
    let coupon = alice_coupon(&app, fixed(1_000)).await;
    let mut client = app.coupons.clone();
    let valid = pb::UseCouponRequest {
        saga_id: saga(),
        user_id: "alice".to_owned(),
        user_coupon_id: coupon.id,
        order_amount: 10_000,
        expected_discount: None,
        saga_fence: 0,
    };
    let cases = [
        (
            pb::UseCouponRequest {
                saga_id: String::new(),
                ..valid.clone()
            },
            "saga_id",
        ),
        (
            pb::UseCouponRequest {
                saga_id: "not-a-uuid".to_owned(),
                ..valid.clone()
            },
            "saga_id",
        ),
        (
            pb::UseCouponRequest {
                user_id: String::new(),
                ..valid.clone()
            },
            "user_id",
        ),
        (
            pb::UseCouponRequest {
                user_coupon_id: 0,
                ..valid.clone()
            },
            "user_coupon_id",
        ),
        (
            pb::UseCouponRequest {
                order_amount: -1,
                ..valid.clone()
            },
            "order_amount",
        ),
        (
            pb::UseCouponRequest {
                order_amount: 100_000_000_001,
                ..valid.clone()
            },
            "order_amount",
        ),
        (
            pb::UseCouponRequest {
                expected_discount: Some(-1),
                ..valid.clone()
            },
            "expected_discount",
        ),
    ];
    for (request, field) in cases {
        assert_status(
            client.use_coupon(request).await,
            Code::InvalidArgument,
            field,
        );
    }
    for saga_id in ["", "x"] {
        assert_status(app.restore(saga_id).await, Code::InvalidArgument, "saga_id");
    }
    assert_eq!(app.count("SELECT COUNT(*) AS n FROM saga_barrier").await, 0);
    assert_eq!(
        state(&app.coupon("alice", coupon.id).await),
        pb::UserCouponState::Available
    );
    app.stop().await;
}

#[tokio::test]
async fn fifty_sagas_racing_for_one_coupon_use_it_once() {
    let app = spawn().await;
    let coupon = alice_coupon(&app, fixed(1_000)).await;
    let sagas: Vec<String> = (0..50).map(|_| saga()).collect();
    let calls = sagas.iter().map(|saga_id| {
        let mut client = app.coupons.clone();
        let request = pb::UseCouponRequest {
            saga_id: saga_id.clone(),
            user_id: "alice".to_owned(),
            user_coupon_id: coupon.id,
            order_amount: 10_000,
            expected_discount: None,
            saga_fence: 0,
        };
        tokio::spawn(async move { client.use_coupon(request).await })
    });
    let results = futures::future::join_all(calls).await;
    let mut winners = Vec::new();
    for result in results {
        match result.unwrap() {
            Ok(used) => winners.push(used.into_inner().saga_id),
            Err(status) => assert_eq!(
                error_reason(&status).as_deref(),
                Some("COUPON_ALREADY_USED"),
                "{status:?}"
            ),
        }
    }
    assert_eq!(winners.len(), 1);
    let stored = app.coupon("alice", coupon.id).await;
    assert_eq!(state(&stored), pb::UserCouponState::Used);
    assert_eq!(stored.used_by_saga, winners[0]);
    // Only the winner left a barrier row.
    assert_eq!(app.count("SELECT COUNT(*) AS n FROM saga_barrier").await, 1);
    app.stop().await;
}

#[tokio::test]
async fn concurrent_repeats_of_one_use_apply_once() {
    let app = spawn().await;
    let coupon = alice_coupon(&app, fixed(1_000)).await;
    let saga_id = saga();
    let calls = (0..20).map(|_| {
        let mut client = app.coupons.clone();
        let request = pb::UseCouponRequest {
            saga_id: saga_id.clone(),
            user_id: "alice".to_owned(),
            user_coupon_id: coupon.id,
            order_amount: 10_000,
            expected_discount: None,
            saga_fence: 0,
        };
        tokio::spawn(async move { client.use_coupon(request).await })
    });
    for result in futures::future::join_all(calls).await {
        let used = result.unwrap().unwrap().into_inner();
        assert_eq!((used.user_coupon_id, used.discount), (coupon.id, 1_000));
    }
    assert_eq!(app.coupon("alice", coupon.id).await.used_by_saga, saga_id);
    app.stop().await;
}

#[tokio::test]
async fn use_and_restore_racing_always_end_with_the_coupon_available() {
    let app = spawn().await;
    let template = app.create_template(fixed(1_000)).await;
    let mut coupons = Vec::new();
    for i in 0..20 {
        coupons.push(app.issue(template.id, &format!("user-{i}")).await.unwrap());
    }
    let races = coupons.iter().map(|coupon| {
        let saga_id = saga();
        let mut user = app.coupons.clone();
        let mut compensator = app.coupons.clone();
        let use_request = pb::UseCouponRequest {
            saga_id: saga_id.clone(),
            user_id: coupon.user_id.clone(),
            user_coupon_id: coupon.id,
            order_amount: 10_000,
            expected_discount: None,
            saga_fence: 0,
        };
        let restore_request = pb::RestoreCouponRequest {
            saga_id,
            saga_fence: 0,
        };
        let used = tokio::spawn(async move { user.use_coupon(use_request).await });
        let restored =
            tokio::spawn(async move { compensator.restore_coupon(restore_request).await });
        async move { (used.await.unwrap(), restored.await.unwrap()) }
    });
    let mut sagas = HashSet::new();
    for (used, restored) in futures::future::join_all(races).await {
        let restored = restored.unwrap().into_inner();
        sagas.insert(restored.saga_id.clone());
        match used {
            // The use came first: the restore undid it.
            Ok(_) => assert!(restored.restored),
            // The restore came first: the use was refused.
            Err(status) => {
                assert_eq!(
                    error_reason(&status).as_deref(),
                    Some("SAGA_ALREADY_COMPENSATED")
                );
                assert!(!restored.restored);
            }
        }
    }
    assert_eq!(sagas.len(), 20);
    for coupon in &coupons {
        let stored = app.coupon(&coupon.user_id, coupon.id).await;
        assert_eq!(state(&stored), pb::UserCouponState::Available);
    }
    app.stop().await;
}
