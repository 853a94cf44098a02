//! QuoteDiscount: the discount arithmetic through the API and every reason a
//! coupon does not apply. Quotes never change anything.

use commerce_proto::coupon::v1 as pb;
use commerce_testkit::assert_status;
use tonic::Code;

use crate::support::{expired, fixed, percent, saga, spawn, state, upcoming};

#[tokio::test]
async fn quotes_compute_the_discount_and_what_is_left_to_pay() {
    let app = spawn().await;
    let flat = app.create_template(fixed(3_000)).await;
    let capped = app.create_template(percent(15, Some(2_000))).await;
    let whole = app.create_template(percent(100, None)).await;
    let flat = app.issue(flat.id, "alice").await.unwrap();
    let capped = app.issue(capped.id, "alice").await.unwrap();
    let whole = app.issue(whole.id, "alice").await.unwrap();

    let cases = [
        (&flat, 10_000, 3_000),
        (&flat, 2_500, 2_500),
        (&flat, 0, 0),
        (&capped, 9_999, 1_499),
        (&capped, 13_333, 1_999),
        (&capped, 100_000, 2_000),
        (&whole, 12_345, 12_345),
        (&whole, 100_000_000_000, 100_000_000_000),
    ];
    for (coupon, order_amount, discount) in cases {
        let quote = app.quote("alice", coupon.id, order_amount).await.unwrap();
        assert_eq!(
            quote,
            pb::DiscountQuote {
                user_coupon_id: coupon.id,
                order_amount,
                discount,
                payable: order_amount - discount,
            }
        );
    }
    assert_status(
        app.quote("alice", flat.id, 100_000_000_001).await,
        Code::InvalidArgument,
        "order_amount",
    );
    assert_status(
        app.quote("alice", flat.id, -1).await,
        Code::InvalidArgument,
        "order_amount",
    );
    assert_status(
        app.quote("alice", 0, 1_000).await,
        Code::InvalidArgument,
        "user_coupon_id",
    );
    assert_status(
        app.quote("", flat.id, 1_000).await,
        Code::InvalidArgument,
        "user_id",
    );
    // Quotes are read-only.
    assert_eq!(
        state(&app.coupon("alice", flat.id).await),
        pb::UserCouponState::Available
    );
    app.stop().await;
}

#[tokio::test]
async fn quotes_refuse_with_each_reason() {
    let app = spawn().await;
    let minimum = app
        .create_template(pb::CreateTemplateRequest {
            min_order_amount: 10_000,
            ..fixed(1_000)
        })
        .await;
    let minimum = app.issue(minimum.id, "alice").await.unwrap();
    assert_status(
        app.quote("alice", minimum.id, 9_999).await,
        Code::FailedPrecondition,
        "COUPON_MIN_ORDER_NOT_MET",
    );
    assert_eq!(
        app.quote("alice", minimum.id, 10_000)
            .await
            .unwrap()
            .discount,
        1_000
    );

    let future = app.create_template(upcoming(fixed(1_000))).await;
    let future = app.issue(future.id, "alice").await.unwrap();
    assert_status(
        app.quote("alice", future.id, 50_000).await,
        Code::FailedPrecondition,
        "COUPON_NOT_ACTIVE",
    );

    // An expired template cannot be issued; a coupon issued in time and then
    // past its window is simulated by moving the stored window.
    let lapsed = app.create_template(fixed(1_000)).await;
    let lapsed = app.issue(lapsed.id, "alice").await.unwrap();
    let template_id = lapsed.template.as_ref().unwrap().id;
    app.execute(&format!(
        "UPDATE coupon_templates SET valid_from = '2020-01-01', valid_until = '2020-01-02' \
         WHERE id = {template_id}"
    ))
    .await;
    assert_status(
        app.quote("alice", lapsed.id, 50_000).await,
        Code::FailedPrecondition,
        "COUPON_EXPIRED",
    );
    let past = app.create_template(expired(fixed(1_000))).await;
    assert_status(
        app.issue(past.id, "alice").await,
        Code::FailedPrecondition,
        "COUPON_EXPIRED",
    );

    let used = app.create_template(fixed(1_000)).await;
    let used = app.issue(used.id, "alice").await.unwrap();
    app.use_coupon(&saga(), &used, 50_000, None).await.unwrap();
    assert_status(
        app.quote("alice", used.id, 50_000).await,
        Code::FailedPrecondition,
        "COUPON_ALREADY_USED",
    );

    // Another user's coupon, and one that does not exist, are not found.
    assert_status(
        app.quote("mallory", minimum.id, 50_000).await,
        Code::NotFound,
        "USER_COUPON_NOT_FOUND",
    );
    assert_status(
        app.quote("alice", 9_999, 50_000).await,
        Code::NotFound,
        "USER_COUPON_NOT_FOUND",
    );
    app.stop().await;
}
