//! Orders the business rules refuse: each ends REJECTED with the
//! participant's reason and leaves every service exactly as it was, its saga
//! compensated step by step, last first. Bad input is refused before
//! anything is recorded.

use std::collections::HashMap;

use commerce_proto::coupon::v1 as coupon;
use commerce_proto::order::v1 as order;
use commerce_proto::order::v1::OrderState;
use commerce_proto::product::v1 as product;
use commerce_testkit::assert_status;
use diesel_async::RunQueryDsl;
use tonic::Code;

use crate::harness::Mesh;
use crate::shop::{self, assert_invariants};

/// Places an order that must be rejected with `reason`, checks that
/// `products` and `user` are exactly as before, and that the saga undid,
/// last first, every step it had started. Returns the rejected step and the
/// compensations in log order.
async fn rejected(
    mesh: &Mesh,
    user: &str,
    lines: &[(i64, i64)],
    coupon: Option<i64>,
    reason: &str,
    products: &[i64],
) -> (String, Vec<String>) {
    let before = shop::world(mesh, products, &[user]).await;
    let order = shop::place(mesh, user, lines, coupon).await;
    assert_eq!(shop::state(&order), OrderState::Rejected, "{order:?}");
    assert_eq!(order.reason, reason, "{order:?}");
    assert!(!order.reason_message.is_empty(), "{order:?}");
    assert_eq!(
        shop::world(mesh, products, &[user]).await,
        before,
        "{reason}: everything as before the order"
    );
    shop::assert_compensated(mesh, &order.saga_id, reason).await
}

/// A `SELECT COUNT(*) AS n` row.
#[derive(diesel::QueryableByName)]
struct RowCount {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[tokio::test]
async fn business_rejections_leave_every_service_as_before() {
    let mesh = Mesh::start(1).await;
    let brand = shop::brand(&mesh, "Acme").await;
    let shoe = shop::product(&mesh, brand, "Shoe", 12_000, 10).await;
    let sock = shop::product(&mesh, brand, "Sock", 1_500, 2).await;
    let hat = shop::product(&mesh, brand, "Hat", 20_000, 5).await;
    let yacht = shop::product(&mesh, brand, "Yacht", 1_000_000_000, 5).await;
    let coupon_3000 = shop::fixed_template(&mesh, 3_000, 10_000, 100, false).await;
    let coupon_min_50k = shop::fixed_template(&mesh, 5_000, 50_000, 100, false).await;
    let soon_expired = shop::fixed_template(&mesh, 2_000, 0, 100, false).await;
    let mut charged = HashMap::new();
    for (user, amount) in [
        ("short", 1_000_000),
        ("poor", 5_000),
        ("reuser", 100_000),
        ("late", 100_000),
        ("thief", 100_000),
        ("small", 100_000),
        ("lost", 100_000),
        ("eager", 100_000),
    ] {
        shop::charge(&mesh, user, amount).await;
        charged.insert(user.to_owned(), amount);
    }

    // Short stock on the second line (lines are taken in product-id order):
    // nothing is reserved, the first line's stock stays available.
    assert!(shoe < sock);
    let (step, undone) = rejected(
        &mesh,
        "short",
        &[(shoe, 3), (sock, 5)],
        None,
        "STOCK_INSUFFICIENT",
        &[shoe, sock],
    )
    .await;
    assert_eq!(
        (step.as_str(), strs(&undone)),
        ("reserve_stock", vec!["release_stock"])
    );
    assert_eq!(shop::stock(&mesh, shoe).await.available, 10);

    // Not enough points: the stock reserved before is released.
    let (step, undone) = rejected(
        &mesh,
        "poor",
        &[(shoe, 1)],
        None,
        "POINT_INSUFFICIENT",
        &[shoe],
    )
    .await;
    assert_eq!(
        (step.as_str(), strs(&undone)),
        ("deduct_points", vec!["refund_points", "release_stock"])
    );

    // More points than any balance may hold (1e9): not enough points either.
    let (step, undone) = rejected(
        &mesh,
        "poor",
        &[(yacht, 2)],
        None,
        "POINT_INSUFFICIENT",
        &[yacht],
    )
    .await;
    assert_eq!(
        (step.as_str(), strs(&undone)),
        ("deduct_points", vec!["refund_points", "release_stock"])
    );

    // A coupon a confirmed order used already.
    let reused = shop::issue(&mesh, coupon_3000, "reuser").await;
    let first = shop::place(&mesh, "reuser", &[(shoe, 1)], Some(reused)).await;
    assert_eq!(shop::state(&first), OrderState::Confirmed, "{first:?}");
    let (step, _) = rejected(
        &mesh,
        "reuser",
        &[(shoe, 1)],
        Some(reused),
        "COUPON_ALREADY_USED",
        &[shoe],
    )
    .await;
    assert_eq!(step, "reserve_stock", "refused at the quote");
    let used = shop::coupon_of(&mesh, "reuser", reused).await;
    assert_eq!(
        used.used_by_saga, first.saga_id,
        "still used by the first order"
    );

    // An expired template issues nothing; a coupon whose window ended
    // after it was issued is refused at the order.
    let expired_template = shop::fixed_template(&mesh, 2_000, 0, 100, true).await;
    assert_status(
        mesh.coupons()
            .issue_coupon(coupon::IssueCouponRequest {
                template_id: expired_template,
                user_id: "late".into(),
            })
            .await,
        Code::FailedPrecondition,
        "COUPON_EXPIRED",
    );
    let expired = shop::issue(&mesh, soon_expired, "late").await;
    shop::expire_template(&mesh, soon_expired).await;
    rejected(
        &mesh,
        "late",
        &[(shoe, 1)],
        Some(expired),
        "COUPON_EXPIRED",
        &[shoe],
    )
    .await;

    // Another user's coupon is not found for this user, and stays unused.
    let others = shop::issue(&mesh, coupon_3000, "small").await;
    rejected(
        &mesh,
        "thief",
        &[(shoe, 1)],
        Some(others),
        "USER_COUPON_NOT_FOUND",
        &[shoe],
    )
    .await;
    assert_eq!(
        shop::coupon_of(&mesh, "small", others).await.state,
        coupon::UserCouponState::Available as i32
    );

    // Below the coupon's minimum order amount.
    let minimum = shop::issue(&mesh, coupon_min_50k, "small").await;
    rejected(
        &mesh,
        "small",
        &[(shoe, 2), (sock, 1)],
        Some(minimum),
        "COUPON_MIN_ORDER_NOT_MET",
        &[shoe, sock],
    )
    .await;

    // An unknown product next to a known one.
    rejected(
        &mesh,
        "lost",
        &[(shoe, 1), (999_999, 1)],
        None,
        "PRODUCT_NOT_FOUND",
        &[shoe],
    )
    .await;

    // A product taken off sale.
    mesh.product_admin()
        .update_product(product::UpdateProductRequest {
            product_id: hat,
            name: None,
            price: None,
            status: Some(product::ProductStatus::Suspended as i32),
        })
        .await
        .unwrap();
    rejected(
        &mesh,
        "eager",
        &[(shoe, 1), (hat, 1)],
        None,
        "PRODUCT_NOT_ON_SALE",
        &[shoe, hat],
    )
    .await;

    let counts = mesh
        .sagas()
        .count_sagas(order::CountSagasRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!((counts.completed, counts.compensated), (1, 9), "{counts:?}");
    assert_invariants(
        &mesh,
        &[(shoe, 10), (sock, 2), (hat, 5), (yacht, 5)],
        &charged,
    )
    .await;
    mesh.shutdown().await;
}

#[tokio::test]
async fn bad_place_order_input_is_refused_and_records_nothing() {
    let mesh = Mesh::start(1).await;
    let brand = shop::brand(&mesh, "Acme").await;
    let shoe = shop::product(&mesh, brand, "Shoe", 1_000, 10).await;
    shop::charge(&mesh, "val", 100_000).await;
    let before = shop::world(&mesh, &[shoe], &["val"]).await;
    let many: Vec<(i64, i64)> = (1..=101).map(|p| (p, 1)).collect();

    let cases: Vec<(order::PlaceOrderRequest, &str)> = vec![
        (shop::request("val", &[], None, "k1"), "lines"),
        (
            shop::request("val", &[(shoe, 0)], None, "k2"),
            "lines[0].quantity",
        ),
        (
            shop::request("val", &[(shoe, 1), (shoe + 1, 1001)], None, "k3"),
            "lines[1].quantity",
        ),
        (
            shop::request("val", &[(shoe, 600), (shoe, 401)], None, "k9"),
            "lines[1].quantity",
        ),
        (
            shop::request("val", &[(0, 1)], None, "k4"),
            "lines[0].product_id",
        ),
        (shop::request("val", &many, None, "k5"), "lines"),
        (
            shop::request("bad user", &[(shoe, 1)], None, "k6"),
            "user_id",
        ),
        (shop::request("", &[(shoe, 1)], None, "k7"), "user_id"),
        (
            shop::request("val", &[(shoe, 1)], None, ""),
            "idempotency_key",
        ),
        (
            shop::request("val", &[(shoe, 1)], None, "trailing "),
            "idempotency_key",
        ),
        (
            shop::request("val", &[(shoe, 1)], None, &"k".repeat(129)),
            "idempotency_key",
        ),
        (
            shop::request("val", &[(shoe, 1)], Some(0), "k8"),
            "user_coupon_id",
        ),
    ];
    for (request, field) in cases {
        let answer = mesh.orders().place_order(request).await;
        assert_status(answer, Code::InvalidArgument, field);
    }

    let listed = mesh
        .orders()
        .list_orders(order::ListOrdersRequest {
            user_id: "val".into(),
            page: 0,
            size: 10,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.total, 0, "no order recorded: {listed:?}");
    let counts = mesh
        .sagas()
        .count_sagas(order::CountSagasRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        counts,
        order::CountSagasResponse::default(),
        "no saga recorded"
    );
    assert_eq!(shop::world(&mesh, &[shoe], &["val"]).await, before);
    let mut db = mesh.order_db.connect().await.unwrap();
    for table in ["orders", "sagas", "saga_log"] {
        let rows: Vec<RowCount> = diesel::sql_query(format!("SELECT COUNT(*) AS n FROM {table}"))
            .load(&mut db)
            .await
            .unwrap();
        assert_eq!(rows[0].n, 0, "no row in {table}");
    }

    let charged = HashMap::from([("val".to_owned(), 100_000)]);
    assert_invariants(&mesh, &[(shoe, 10)], &charged).await;
    mesh.shutdown().await;
}
