//! A small shop seeded through the public APIs, order helpers, and the
//! invariants every test checks at its end.

use std::collections::HashMap;
use std::time::Duration;

use commerce_proto::coupon::v1 as coupon;
use commerce_proto::order::v1 as order;
use commerce_proto::point::v1 as point;
use commerce_proto::product::v1 as product;

use crate::harness::Mesh;

pub const USER_COUPON_NONE: Option<i64> = None;

pub async fn brand(mesh: &Mesh, name: &str) -> i64 {
    mesh.product_admin()
        .create_brand(product::CreateBrandRequest {
            name: name.to_owned(),
            description: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .id
}

pub async fn product(mesh: &Mesh, brand_id: i64, name: &str, price: i64, stock: i64) -> i64 {
    mesh.product_admin()
        .create_product(product::CreateProductRequest {
            brand_id,
            name: name.to_owned(),
            price,
            status: product::ProductStatus::OnSale as i32,
            stock,
        })
        .await
        .unwrap()
        .into_inner()
        .id
}

pub async fn charge(mesh: &Mesh, user: &str, amount: i64) {
    mesh.points()
        .charge(point::ChargeRequest {
            user_id: user.to_owned(),
            amount,
            idempotency_key: uuid::Uuid::new_v4().to_string(),
        })
        .await
        .unwrap();
}

pub async fn balance(mesh: &Mesh, user: &str) -> i64 {
    mesh.points()
        .get_balance(point::GetBalanceRequest {
            user_id: user.to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
        .balance
}

pub async fn stock(mesh: &Mesh, product_id: i64) -> product::Stock {
    mesh.catalog()
        .get_product(product::GetProductRequest { product_id })
        .await
        .unwrap()
        .into_inner()
        .stock
        .unwrap()
}

fn at(offset: Duration, future: bool) -> prost_types::Timestamp {
    let now = std::time::SystemTime::now();
    let t = if future { now + offset } else { now - offset };
    prost_types::Timestamp::from(t)
}

/// A FIXED template valid from an hour ago for `days_left` days (negative:
/// expired that long ago).
pub async fn fixed_template(mesh: &Mesh, amount: i64, min_order: i64, quantity: i64, expired: bool) -> i64 {
    let (from, until) = if expired {
        (at(Duration::from_secs(7200), false), at(Duration::from_secs(3600), false))
    } else {
        (at(Duration::from_secs(3600), false), at(Duration::from_secs(30 * 86_400), true))
    };
    mesh.coupon_admin()
        .create_template(coupon::CreateTemplateRequest {
            name: format!("{amount} off"),
            kind: coupon::DiscountKind::Fixed as i32,
            value: amount,
            max_discount: None,
            min_order_amount: min_order,
            valid_from: Some(from),
            valid_until: Some(until),
            total_quantity: quantity,
        })
        .await
        .unwrap()
        .into_inner()
        .id
}

pub async fn issue(mesh: &Mesh, template_id: i64, user: &str) -> i64 {
    mesh.coupons()
        .issue_coupon(coupon::IssueCouponRequest {
            template_id,
            user_id: user.to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
        .id
}

pub fn request(user: &str, lines: &[(i64, i64)], coupon: Option<i64>, key: &str) -> order::PlaceOrderRequest {
    order::PlaceOrderRequest {
        user_id: user.to_owned(),
        lines: lines
            .iter()
            .map(|&(product_id, quantity)| order::OrderLineRequest {
                product_id,
                quantity,
            })
            .collect(),
        user_coupon_id: coupon,
        idempotency_key: key.to_owned(),
    }
}

/// Places an order and waits until its saga has settled it.
pub async fn place(mesh: &Mesh, user: &str, lines: &[(i64, i64)], coupon: Option<i64>) -> order::Order {
    let placed = mesh
        .orders()
        .place_order(request(user, lines, coupon, &uuid::Uuid::new_v4().to_string()))
        .await
        .unwrap()
        .into_inner();
    settled(mesh, &placed.order_id).await
}

pub fn state(o: &order::Order) -> order::OrderState {
    order::OrderState::try_from(o.state).unwrap()
}

/// Reads the order until its saga has settled it (not PENDING or
/// CANCELLING), with growing pauses, for at most a minute.
pub async fn settled(mesh: &Mesh, order_id: &str) -> order::Order {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut pause = Duration::from_millis(10);
    loop {
        let current = mesh
            .orders()
            .get_order(order::GetOrderRequest {
                order_id: order_id.to_owned(),
            })
            .await;
        if let Ok(current) = current {
            let current = current.into_inner();
            if !matches!(state(&current), order::OrderState::Pending | order::OrderState::Cancelling) {
                return current;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "order {order_id} did not settle; logs in {}",
            mesh.log_dir.display()
        );
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(250));
    }
}

/// Every order of `users`.
pub async fn orders_of(mesh: &Mesh, users: &[String]) -> Vec<order::Order> {
    let mut all = Vec::new();
    for user in users {
        let mut page = 0;
        loop {
            let listed = mesh
                .orders()
                .list_orders(order::ListOrdersRequest {
                    user_id: user.clone(),
                    page,
                    size: 100,
                })
                .await
                .unwrap()
                .into_inner();
            let done = listed.orders.len() < 100;
            all.extend(listed.orders);
            if done {
                break;
            }
            page += 1;
        }
    }
    all
}

/// The invariants of the mesh once every saga is terminal:
/// - every saga is COMPLETED or COMPENSATED;
/// - per product, available + reserved + sold = initial, nothing stays
///   reserved, and sold = units of confirmed orders;
/// - per user, the balance is the ledger's sum, and charges - points paid by
///   confirmed orders = balance;
/// - each coupon is used by at most one confirmed order, and a USED coupon
///   belongs to a confirmed order.
pub async fn assert_invariants(
    mesh: &Mesh,
    products: &[(i64, i64)],
    charged: &HashMap<String, i64>,
) {
    let counts = mesh
        .sagas()
        .count_sagas(order::CountSagasRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (counts.running, counts.compensating, counts.stuck),
        (0, 0, 0),
        "unfinished sagas: {counts:?}"
    );
    let users: Vec<String> = charged.keys().cloned().collect();
    let orders = orders_of(mesh, &users).await;
    let holds_goods = |o: &order::Order| {
        matches!(
            state(o),
            order::OrderState::Confirmed | order::OrderState::Shipped | order::OrderState::Delivered
        )
    };
    for &(product_id, initial) in products {
        let s = stock(mesh, product_id).await;
        assert_eq!(s.available + s.reserved + s.sold, initial, "product {product_id}: {s:?}");
        assert_eq!(s.reserved, 0, "product {product_id} still has reserved units");
        let sold: i64 = orders
            .iter()
            .filter(|o| holds_goods(o))
            .flat_map(|o| &o.lines)
            .filter(|l| l.product_id == product_id)
            .map(|l| l.quantity)
            .sum();
        assert_eq!(s.sold, sold, "product {product_id}: sold units vs confirmed orders");
    }
    for (user, charged) in charged {
        let balance = balance(mesh, user).await;
        let ledger = mesh
            .points()
            .list_ledger(point::ListLedgerRequest {
                user_id: user.clone(),
                page: 0,
                size: 100,
            })
            .await
            .unwrap()
            .into_inner();
        if ledger.total <= 100 {
            let sum: i64 = ledger.entries.iter().map(|e| e.amount).sum();
            assert_eq!(sum, balance, "user {user}: ledger sum vs balance");
        }
        let paid: i64 = orders
            .iter()
            .filter(|o| o.user_id == *user && holds_goods(o))
            .map(|o| o.points_paid)
            .sum();
        assert_eq!(charged - paid, balance, "user {user}: charges - paid vs balance");
    }
    let mut coupon_users: HashMap<i64, usize> = HashMap::new();
    for o in orders.iter().filter(|o| holds_goods(o)) {
        if let Some(c) = o.user_coupon_id {
            *coupon_users.entry(c).or_default() += 1;
        }
    }
    for (coupon_id, n) in &coupon_users {
        assert_eq!(*n, 1, "coupon {coupon_id} used by {n} confirmed orders");
    }
    for user in &users {
        let listed = mesh
            .coupons()
            .list_user_coupons(coupon::ListUserCouponsRequest {
                user_id: user.clone(),
                page: 0,
                size: 100,
            })
            .await
            .unwrap()
            .into_inner();
        for c in listed.coupons {
            let used = c.state == coupon::UserCouponState::Used as i32;
            assert_eq!(
                used,
                coupon_users.contains_key(&c.id),
                "coupon {} of {user}: USED iff a confirmed order used it",
                c.id
            );
        }
    }
}
