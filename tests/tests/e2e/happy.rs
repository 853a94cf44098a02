//! Orders that go through: with and without a coupon.

use std::collections::HashMap;

use commerce_proto::coupon::v1 as coupon;
use commerce_proto::order::v1::OrderState;

use crate::harness::Mesh;
use crate::shop::{self, assert_invariants};

#[tokio::test]
async fn order_without_coupon_is_confirmed_and_charged() {
    let mesh = Mesh::start(1).await;
    let brand = shop::brand(&mesh, "Acme").await;
    let shoe = shop::product(&mesh, brand, "Shoe", 12_000, 10).await;
    let sock = shop::product(&mesh, brand, "Sock", 1_500, 10).await;
    shop::charge(&mesh, "alice", 100_000).await;

    let order = shop::place(&mesh, "alice", &[(shoe, 2), (sock, 3)], None).await;

    assert_eq!(shop::state(&order), OrderState::Confirmed, "{order:?}");
    assert_eq!(order.subtotal, 2 * 12_000 + 3 * 1_500);
    assert_eq!(order.discount, 0);
    assert_eq!(order.points_paid, order.subtotal);
    let shoe_line = order.lines.iter().find(|l| l.product_id == shoe).unwrap();
    assert_eq!(
        (
            shoe_line.product_name.as_str(),
            shoe_line.brand_name.as_str()
        ),
        ("Shoe", "Acme")
    );
    assert_eq!(
        (shoe_line.unit_price, shoe_line.line_total),
        (12_000, 24_000)
    );
    let s = shop::stock(&mesh, shoe).await;
    assert_eq!((s.available, s.reserved, s.sold), (8, 0, 2));
    assert_eq!(
        shop::balance(&mesh, "alice").await,
        100_000 - order.subtotal
    );

    let charged = HashMap::from([("alice".to_owned(), 100_000)]);
    assert_invariants(&mesh, &[(shoe, 10), (sock, 10)], &charged).await;
    mesh.shutdown().await;
}

#[tokio::test]
async fn order_with_coupon_pays_the_discounted_amount_and_uses_the_coupon() {
    let mesh = Mesh::start(1).await;
    let brand = shop::brand(&mesh, "Acme").await;
    let shoe = shop::product(&mesh, brand, "Shoe", 12_000, 10).await;
    shop::charge(&mesh, "bob", 50_000).await;
    let template = shop::fixed_template(&mesh, 3_000, 10_000, 10, false).await;
    let coupon_id = shop::issue(&mesh, template, "bob").await;

    let order = shop::place(&mesh, "bob", &[(shoe, 1)], Some(coupon_id)).await;

    assert_eq!(shop::state(&order), OrderState::Confirmed, "{order:?}");
    assert_eq!(
        (order.subtotal, order.discount, order.points_paid),
        (12_000, 3_000, 9_000)
    );
    assert_eq!(shop::balance(&mesh, "bob").await, 41_000);
    let coupons = mesh
        .coupons()
        .list_user_coupons(coupon::ListUserCouponsRequest {
            user_id: "bob".into(),
            page: 0,
            size: 10,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        coupons.coupons[0].state,
        coupon::UserCouponState::Used as i32
    );
    assert_eq!(coupons.coupons[0].used_by_saga, order.saga_id);

    let charged = HashMap::from([("bob".to_owned(), 50_000)]);
    assert_invariants(&mesh, &[(shoe, 10)], &charged).await;
    mesh.shutdown().await;
}
