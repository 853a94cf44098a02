//! A small shop seeded through the public APIs, order helpers, and the
//! invariants every test checks at its end.

use std::collections::HashMap;
use std::time::Duration;

use commerce_proto::coupon::v1 as coupon;
use commerce_proto::order::v1 as order;
use commerce_proto::order::v1::order_service_client::OrderServiceClient;
use commerce_proto::point::v1 as point;
use commerce_proto::product::v1 as product;

use commerce_testkit::TestChannel as Channel;
use tonic::Code;

use crate::harness::Mesh;

/// The forward steps of an order with a coupon, in order.
pub const FORWARD: [&str; 4] = [
    "reserve_stock",
    "deduct_points",
    "use_coupon",
    "confirm_order",
];

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
pub async fn fixed_template(
    mesh: &Mesh,
    amount: i64,
    min_order: i64,
    quantity: i64,
    expired: bool,
) -> i64 {
    let (from, until) = if expired {
        (
            at(Duration::from_secs(7200), false),
            at(Duration::from_secs(3600), false),
        )
    } else {
        (
            at(Duration::from_secs(3600), false),
            at(Duration::from_secs(30 * 86_400), true),
        )
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

/// A shop for one order with a coupon, as the trace tests place it: a
/// product of 10,000 KRW (5 in stock), 50,000 points for `user` and a coupon
/// of 1,000 off (orders from 5,000) issued to them. Returns the product's
/// and the coupon's ids.
pub async fn item_and_coupon(mesh: &Mesh, user: &str) -> (i64, i64) {
    let brand = brand(mesh, "Traced").await;
    let item = product(mesh, brand, "Lantern", 10_000, 5).await;
    charge(mesh, user, 50_000).await;
    let template = fixed_template(mesh, 1_000, 5_000, 10, false).await;
    (item, issue(mesh, template, user).await)
}

pub fn request(
    user: &str,
    lines: &[(i64, i64)],
    coupon: Option<i64>,
    key: &str,
) -> order::PlaceOrderRequest {
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
pub async fn place(
    mesh: &Mesh,
    user: &str,
    lines: &[(i64, i64)],
    coupon: Option<i64>,
) -> order::Order {
    let placed = mesh
        .orders()
        .place_order(request(
            user,
            lines,
            coupon,
            &uuid::Uuid::new_v4().to_string(),
        ))
        .await
        .unwrap()
        .into_inner();
    settled(mesh, user, &placed.order_id).await
}

pub fn state(o: &order::Order) -> order::OrderState {
    order::OrderState::try_from(o.state).unwrap()
}

/// Reads `user`'s order until its saga has settled it (not PENDING or
/// CANCELLING), with growing pauses, for at most a minute.
pub async fn settled(mesh: &Mesh, user: &str, order_id: &str) -> order::Order {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut pause = Duration::from_millis(10);
    loop {
        let current = mesh
            .orders()
            .get_order(get_order_request(user, order_id))
            .await;
        if let Ok(current) = current {
            let current = current.into_inner();
            if !matches!(
                state(&current),
                order::OrderState::Pending | order::OrderState::Cancelling
            ) {
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

/// `user`'s GetOrder request for `order_id`.
pub fn get_order_request(user: &str, order_id: &str) -> order::GetOrderRequest {
    order::GetOrderRequest {
        order_id: order_id.to_owned(),
        user_id: user.to_owned(),
    }
}

/// `user`'s order as it stands now.
pub async fn order(mesh: &Mesh, user: &str, order_id: &str) -> order::Order {
    mesh.orders()
        .get_order(get_order_request(user, order_id))
        .await
        .unwrap()
        .into_inner()
}

/// Places an order through `client` with a short deadline: the orchestrator
/// answers PENDING before it when the saga cannot finish. A call that gets
/// no answer is sent again with the same key (the order it may have recorded
/// is the one answered then).
pub async fn place_pending(
    mesh: &Mesh,
    client: &OrderServiceClient<Channel>,
    request: order::PlaceOrderRequest,
) -> order::Order {
    eventually(mesh, "an answer to PlaceOrder", || async {
        let mut call = tonic::Request::new(request.clone());
        call.set_timeout(Duration::from_millis(500));
        match client.clone().place_order(call).await {
            Ok(placed) => Some(placed.into_inner()),
            Err(status) => {
                assert!(
                    matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
                    "only the deadline may fail the call: {status:?}"
                );
                None
            }
        }
    })
    .await
}

/// The kinds of the ledger entries a saga left at the point service,
/// sorted.
pub async fn ledger_kinds(mesh: &Mesh, user: &str, saga_id: &str) -> Vec<point::LedgerKind> {
    let mut kinds: Vec<point::LedgerKind> = mesh
        .points()
        .list_ledger(point::ListLedgerRequest {
            user_id: user.to_owned(),
            page: 0,
            size: 100,
        })
        .await
        .unwrap()
        .into_inner()
        .entries
        .into_iter()
        .filter(|e| e.reference == saga_id)
        .map(|e| point::LedgerKind::try_from(e.kind).unwrap())
        .collect();
    kinds.sort_by_key(|k| *k as i32);
    kinds
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
            order::OrderState::Confirmed
                | order::OrderState::Shipped
                | order::OrderState::Delivered
        )
    };
    for &(product_id, initial) in products {
        let s = stock(mesh, product_id).await;
        assert_eq!(
            s.available + s.reserved + s.sold,
            initial,
            "product {product_id}: {s:?}"
        );
        assert_eq!(
            s.reserved, 0,
            "product {product_id} still has reserved units"
        );
        let sold: i64 = orders
            .iter()
            .filter(|o| holds_goods(o))
            .flat_map(|o| &o.lines)
            .filter(|l| l.product_id == product_id)
            .map(|l| l.quantity)
            .sum();
        assert_eq!(
            s.sold, sold,
            "product {product_id}: sold units vs confirmed orders"
        );
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
        assert_eq!(
            charged - paid,
            balance,
            "user {user}: charges - paid vs balance"
        );
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

/// Ends the window of a template that has issued coupons (issuance refuses
/// an expired template, so an expired coupon in hand needs the coupon
/// database): from then on its coupons are COUPON_EXPIRED.
pub async fn expire_template(mesh: &Mesh, template_id: i64) {
    use diesel_async::SimpleAsyncConnection;
    let mut conn = mesh.database("coupon").connect().await.unwrap();
    conn.batch_execute(&format!(
        "UPDATE coupon_templates SET valid_from = '2000-01-01 00:00:00', \
         valid_until = '2000-01-02 00:00:00' WHERE id = {template_id}"
    ))
    .await
    .unwrap();
}

/// Every coupon of `user`, newest first.
pub async fn coupons_of(mesh: &Mesh, user: &str) -> Vec<coupon::UserCoupon> {
    mesh.coupons()
        .list_user_coupons(coupon::ListUserCouponsRequest {
            user_id: user.to_owned(),
            page: 0,
            size: 100,
        })
        .await
        .unwrap()
        .into_inner()
        .coupons
}

/// One coupon of `user`.
pub async fn coupon_of(mesh: &Mesh, user: &str, coupon_id: i64) -> coupon::UserCoupon {
    coupons_of(mesh, user)
        .await
        .into_iter()
        .find(|c| c.id == coupon_id)
        .unwrap_or_else(|| panic!("coupon {coupon_id} of {user}"))
}

/// What an order can change, for "nothing changed" checks: the stock of
/// some products, and the balance and coupons of some users.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct World {
    /// (product, available, reserved, sold).
    pub stock: Vec<(i64, i64, i64, i64)>,
    pub balances: Vec<(String, i64)>,
    /// (coupon, state, used by saga).
    pub coupons: Vec<(i64, i32, String)>,
}

pub async fn world(mesh: &Mesh, products: &[i64], users: &[&str]) -> World {
    let mut world = World {
        stock: Vec::new(),
        balances: Vec::new(),
        coupons: Vec::new(),
    };
    for &p in products {
        let s = stock(mesh, p).await;
        world.stock.push((p, s.available, s.reserved, s.sold));
    }
    for &user in users {
        world
            .balances
            .push((user.to_owned(), balance(mesh, user).await));
        for c in coupons_of(mesh, user).await {
            world.coupons.push((c.id, c.state, c.used_by_saga));
        }
    }
    world
}

/// The step that undoes a forward step of a PLACE_ORDER saga.
fn undo_of(step: &str) -> Option<&'static str> {
    match step {
        "reserve_stock" => Some("release_stock"),
        "deduct_points" => Some("refund_points"),
        "use_coupon" => Some("restore_coupon"),
        _ => None,
    }
}

/// Checks that a PLACE_ORDER saga was rejected with `reason` and fully
/// compensated: COMPENSATED with that reason, exactly one REJECTED forward
/// entry and no forward entry after it, then a SUCCEEDED compensation of
/// every started forward step that has one, last first, each logged
/// STARTED before SUCCEEDED. Returns the rejected step and the undone
/// steps in log order.
pub async fn assert_compensated(mesh: &Mesh, saga_id: &str, reason: &str) -> (String, Vec<String>) {
    use order::{StepDirection as D, StepOutcome as O};
    let detail = mesh
        .sagas()
        .get_saga(order::SagaRef {
            saga_id: saga_id.to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    let saga = detail.saga.unwrap();
    assert_eq!(
        (saga.state, saga.reason.as_str()),
        (order::SagaState::Compensated as i32, reason),
        "saga {saga_id}"
    );
    let log = detail.log;
    let is = |e: &order::StepLogEntry, d: D, o: O| e.direction == d as i32 && e.outcome == o as i32;
    let rejected: Vec<usize> = (0..log.len())
        .filter(|&i| is(&log[i], D::Forward, O::Rejected))
        .collect();
    assert_eq!(rejected.len(), 1, "one rejection in {log:#?}");
    let at = rejected[0];
    assert!(
        log[at].error.starts_with(reason),
        "rejection {:?} carries {reason}",
        log[at]
    );
    let mut forward: Vec<&str> = Vec::new();
    for e in log[..=at]
        .iter()
        .filter(|e| e.direction == D::Forward as i32)
    {
        if !forward.contains(&e.step_name.as_str()) {
            forward.push(&e.step_name);
        }
    }
    let expected: Vec<&str> = forward.iter().rev().filter_map(|s| undo_of(s)).collect();
    let after = &log[at + 1..];
    assert!(
        after.iter().all(|e| e.direction == D::Compensate as i32),
        "only compensations after the rejection: {after:#?}"
    );
    let undone: Vec<String> = after
        .iter()
        .filter(|e| e.outcome == O::Succeeded as i32)
        .map(|e| e.step_name.clone())
        .collect();
    assert_eq!(undone, expected, "compensations, last step first: {log:#?}");
    for name in &undone {
        let first_started = after
            .iter()
            .position(|e| e.step_name == *name && is(e, D::Compensate, O::Started));
        let succeeded = after
            .iter()
            .position(|e| e.step_name == *name && is(e, D::Compensate, O::Succeeded));
        assert!(
            first_started < succeeded && first_started.is_some(),
            "{name} STARTED before SUCCEEDED"
        );
    }
    (log[at].step_name.clone(), undone)
}

/// A saga with its full step log, from the operators' service.
pub async fn saga_detail(mesh: &Mesh, saga_id: &str) -> order::SagaDetail {
    mesh.sagas()
        .get_saga(order::SagaRef {
            saga_id: saga_id.to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
}

/// The one order of `user` (for a PlaceOrder call that gave no answer).
pub async fn only_order_of(mesh: &Mesh, user: &str) -> order::Order {
    let mut orders = orders_of(mesh, &[user.to_owned()]).await;
    assert_eq!(orders.len(), 1, "orders of {user}: {orders:#?}");
    orders.pop().unwrap()
}

/// Checks that a saga only went forward: COMPLETED, each of `steps`
/// SUCCEEDED exactly once and in that order, and no compensation logged.
pub async fn assert_forward_once(mesh: &Mesh, saga_id: &str, steps: &[&str]) -> order::SagaDetail {
    use order::{StepDirection as D, StepOutcome as O};
    let detail = saga_detail(mesh, saga_id).await;
    let saga = detail.saga.as_ref().unwrap();
    assert_eq!(
        saga.state,
        order::SagaState::Completed as i32,
        "saga {saga_id}: {detail:#?}"
    );
    assert!(
        detail
            .log
            .iter()
            .all(|e| e.direction == D::Forward as i32 && e.outcome != O::Rejected as i32),
        "saga {saga_id} was never turned around: {detail:#?}"
    );
    let succeeded: Vec<&str> = detail
        .log
        .iter()
        .filter(|e| e.outcome == O::Succeeded as i32)
        .map(|e| e.step_name.as_str())
        .collect();
    assert_eq!(
        succeeded, steps,
        "saga {saga_id}: one success per step: {detail:#?}"
    );
    detail
}

/// Polls `probe` with growing pauses until it gives a value, for at most a
/// minute (`what` names the awaited condition in the failure message).
pub async fn eventually<T, F, Fut>(mesh: &Mesh, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut pause = Duration::from_millis(10);
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within a minute; logs in {}",
            mesh.log_dir.display()
        );
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(250));
    }
}
