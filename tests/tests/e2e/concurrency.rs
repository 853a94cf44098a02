//! Orders racing for the same stock, points, coupon or idempotency key, all
//! sent at once: the participants' rules hold whatever the interleaving,
//! and every loser is fully compensated.

use std::collections::{BTreeSet, HashMap};

use commerce_proto::coupon::v1::UserCouponState;
use commerce_proto::order::v1 as order;
use commerce_proto::order::v1::OrderState;
use commerce_testkit::assert_status;
use futures::future::join_all;
use tonic::Code;

use crate::harness::Mesh;
use crate::shop::{self, assert_invariants};

/// Sends every request at once and waits until each order has settled.
async fn place_all(mesh: &Mesh, requests: Vec<order::PlaceOrderRequest>) -> Vec<order::Order> {
    let answers = join_all(requests.into_iter().map(|request| {
        let mut orders = mesh.orders();
        async move { orders.place_order(request).await }
    }))
    .await;
    let mut settled = Vec::new();
    for answer in answers {
        let placed = answer.unwrap().into_inner();
        settled.push(shop::settled(mesh, &placed.user_id, &placed.order_id).await);
    }
    settled
}

fn key() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn in_state(orders: &[order::Order], state: OrderState) -> Vec<&order::Order> {
    orders.iter().filter(|o| shop::state(o) == state).collect()
}

fn reasons(orders: &[&order::Order]) -> BTreeSet<String> {
    orders.iter().map(|o| o.reason.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn more_buyers_than_stock_sells_exactly_the_stock() {
    let mesh = Mesh::start(1).await;
    let brand = shop::brand(&mesh, "Acme").await;
    let ticket = shop::product(&mesh, brand, "Ticket", 1_000, 15).await;
    let users: Vec<String> = (0..40).map(|i| format!("buyer-{i}")).collect();
    join_all(users.iter().map(|u| shop::charge(&mesh, u, 10_000))).await;
    let charged: HashMap<String, i64> = users.iter().map(|u| (u.clone(), 10_000)).collect();

    let orders = place_all(
        &mesh,
        users
            .iter()
            .map(|u| shop::request(u, &[(ticket, 1)], None, &key()))
            .collect(),
    )
    .await;

    let confirmed = in_state(&orders, OrderState::Confirmed);
    let rejected = in_state(&orders, OrderState::Rejected);
    assert_eq!((confirmed.len(), rejected.len()), (15, 25), "{orders:#?}");
    assert_eq!(
        reasons(&rejected),
        BTreeSet::from(["STOCK_INSUFFICIENT".to_owned()])
    );
    for o in &rejected {
        assert_eq!(shop::balance(&mesh, &o.user_id).await, 10_000, "{o:?}");
        shop::assert_compensated(&mesh, &o.saga_id, "STOCK_INSUFFICIENT").await;
    }
    for o in &confirmed {
        assert_eq!(shop::balance(&mesh, &o.user_id).await, 9_000, "{o:?}");
    }
    let s = shop::stock(&mesh, ticket).await;
    assert_eq!((s.available, s.reserved, s.sold), (0, 0, 15));

    assert_invariants(&mesh, &[(ticket, 15)], &charged).await;
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_orders_never_spend_more_points_than_the_balance() {
    let mesh = Mesh::start(1).await;
    let brand = shop::brand(&mesh, "Acme").await;
    let lamp = shop::product(&mesh, brand, "Lamp", 7_000, 100).await;
    let cup = shop::product(&mesh, brand, "Cup", 3_000, 100).await;
    shop::charge(&mesh, "spender", 50_000).await;

    // 20 orders of 7,000 or 10,000 points: 170,000 wanted, 50,000 held.
    let orders = place_all(
        &mesh,
        (0..20)
            .map(|i| {
                let lines: &[(i64, i64)] = if i % 2 == 0 {
                    &[(lamp, 1)]
                } else {
                    &[(lamp, 1), (cup, 1)]
                };
                shop::request("spender", lines, None, &key())
            })
            .collect(),
    )
    .await;

    let confirmed = in_state(&orders, OrderState::Confirmed);
    let rejected = in_state(&orders, OrderState::Rejected);
    assert_eq!(confirmed.len() + rejected.len(), 20, "{orders:#?}");
    assert!(!confirmed.is_empty() && !rejected.is_empty(), "{orders:#?}");
    let paid: i64 = confirmed.iter().map(|o| o.points_paid).sum();
    let balance = shop::balance(&mesh, "spender").await;
    assert!(paid <= 50_000, "paid {paid}");
    assert_eq!(
        50_000 - balance,
        paid,
        "deducted = paid by confirmed orders"
    );
    assert!(
        balance < 7_000,
        "the cheapest order was refused with {balance} left"
    );
    assert_eq!(
        reasons(&rejected),
        BTreeSet::from(["POINT_INSUFFICIENT".to_owned()])
    );
    for o in &rejected {
        let (step, _) = shop::assert_compensated(&mesh, &o.saga_id, "POINT_INSUFFICIENT").await;
        assert_eq!(step, "deduct_points");
    }
    let lamps = confirmed.len() as i64;
    let cups = confirmed.iter().filter(|o| o.lines.len() == 2).count() as i64;
    assert_eq!(shop::stock(&mesh, lamp).await.available, 100 - lamps);
    assert_eq!(shop::stock(&mesh, cup).await.available, 100 - cups);

    let charged = HashMap::from([("spender".to_owned(), 50_000)]);
    assert_invariants(&mesh, &[(lamp, 100), (cup, 100)], &charged).await;
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_coupon_in_concurrent_orders_is_used_once() {
    let mesh = Mesh::start(1).await;
    let brand = shop::brand(&mesh, "Acme").await;
    let shoe = shop::product(&mesh, brand, "Shoe", 12_000, 100).await;
    shop::charge(&mesh, "saver", 1_000_000).await;
    let template = shop::fixed_template(&mesh, 3_000, 10_000, 10, false).await;
    let coupon_id = shop::issue(&mesh, template, "saver").await;

    let orders = place_all(
        &mesh,
        (0..10)
            .map(|_| shop::request("saver", &[(shoe, 1)], Some(coupon_id), &key()))
            .collect(),
    )
    .await;

    let confirmed = in_state(&orders, OrderState::Confirmed);
    let rejected = in_state(&orders, OrderState::Rejected);
    assert_eq!((confirmed.len(), rejected.len()), (1, 9), "{orders:#?}");
    let winner = confirmed[0];
    assert_eq!(
        (winner.subtotal, winner.discount, winner.points_paid),
        (12_000, 3_000, 9_000)
    );
    // Refused at the quote (seen USED) or at the use (lost the race there).
    assert_eq!(
        reasons(&rejected),
        BTreeSet::from(["COUPON_ALREADY_USED".to_owned()])
    );
    for o in &rejected {
        let (step, _) = shop::assert_compensated(&mesh, &o.saga_id, "COUPON_ALREADY_USED").await;
        assert!(
            ["reserve_stock", "use_coupon"].contains(&step.as_str()),
            "{step}"
        );
    }
    let coupon = shop::coupon_of(&mesh, "saver", coupon_id).await;
    assert_eq!(coupon.state, UserCouponState::Used as i32);
    assert_eq!(coupon.used_by_saga, winner.saga_id);
    assert_eq!(shop::balance(&mesh, "saver").await, 1_000_000 - 9_000);
    let s = shop::stock(&mesh, shoe).await;
    assert_eq!((s.available, s.reserved, s.sold), (99, 0, 1));

    let charged = HashMap::from([("saver".to_owned(), 1_000_000)]);
    assert_invariants(&mesh, &[(shoe, 100)], &charged).await;
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_idempotency_key_gives_one_order() {
    let mesh = Mesh::start(1).await;
    let brand = shop::brand(&mesh, "Acme").await;
    let shoe = shop::product(&mesh, brand, "Shoe", 12_000, 10).await;
    let sock = shop::product(&mesh, brand, "Sock", 1_500, 10).await;
    shop::charge(&mesh, "clicker", 100_000).await;
    let request = shop::request("clicker", &[(shoe, 1), (sock, 2)], None, "checkout-1");

    let answers = join_all((0..20).map(|_| {
        let mut orders = mesh.orders();
        let request = request.clone();
        async move { orders.place_order(request).await }
    }))
    .await;
    let ids: BTreeSet<String> = answers
        .into_iter()
        .map(|a| a.unwrap().into_inner().order_id)
        .collect();
    assert_eq!(ids.len(), 1, "one order for one key: {ids:?}");
    let order_id = ids.into_iter().next().unwrap();
    let order = shop::settled(&mesh, "clicker", &order_id).await;
    assert_eq!(shop::state(&order), OrderState::Confirmed, "{order:?}");

    // The same key again, sequentially: the same order, nothing new.
    let again = mesh
        .orders()
        .place_order(request.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (again.order_id.as_str(), again.state),
        (order_id.as_str(), order.state)
    );
    // The same key for a different order is an error.
    let other = shop::request("clicker", &[(shoe, 2), (sock, 2)], None, "checkout-1");
    assert_status(
        mesh.orders().place_order(other).await,
        Code::AlreadyExists,
        "IDEMPOTENCY_KEY_REUSED",
    );
    let other_coupon = shop::request("clicker", &[(shoe, 1), (sock, 2)], Some(7), "checkout-1");
    assert_status(
        mesh.orders().place_order(other_coupon).await,
        Code::AlreadyExists,
        "IDEMPOTENCY_KEY_REUSED",
    );
    // The key belongs to its user: another user's same key is another order.
    shop::charge(&mesh, "neighbour", 100_000).await;
    let neighbours = shop::request("neighbour", &[(shoe, 1), (sock, 2)], None, "checkout-1");
    let neighbours = mesh
        .orders()
        .place_order(neighbours)
        .await
        .unwrap()
        .into_inner();
    assert_ne!(neighbours.order_id, order_id);
    let neighbours = shop::settled(&mesh, &neighbours.user_id, &neighbours.order_id).await;
    assert_eq!(shop::state(&neighbours), OrderState::Confirmed);
    // A rejected order's key replays the rejection, even once the cause is
    // gone: the same key is the same order.
    let attempt = shop::request("broke", &[(shoe, 1)], None, "try-1");
    let first = mesh
        .orders()
        .place_order(attempt.clone())
        .await
        .unwrap()
        .into_inner();
    let first = shop::settled(&mesh, &first.user_id, &first.order_id).await;
    assert_eq!(first.reason, "POINT_INSUFFICIENT", "{first:?}");
    shop::charge(&mesh, "broke", 100_000).await;
    let replay = mesh
        .orders()
        .place_order(attempt)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            replay.order_id.as_str(),
            replay.state,
            replay.reason.as_str()
        ),
        (
            first.order_id.as_str(),
            OrderState::Rejected as i32,
            "POINT_INSUFFICIENT"
        )
    );
    assert_eq!(shop::balance(&mesh, "broke").await, 100_000);

    let listed = mesh
        .orders()
        .list_orders(order::ListOrdersRequest {
            user_id: "clicker".into(),
            page: 0,
            size: 10,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.total, 1, "{listed:?}");
    assert_eq!(listed.orders[0].order_id, order_id);
    assert_eq!(shop::balance(&mesh, "clicker").await, 100_000 - 15_000);
    let counts = mesh
        .sagas()
        .count_sagas(order::CountSagasRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!((counts.completed, counts.compensated), (2, 1), "{counts:?}");

    let charged = HashMap::from([
        ("clicker".to_owned(), 100_000),
        ("neighbour".to_owned(), 100_000),
        ("broke".to_owned(), 100_000),
    ]);
    assert_invariants(&mesh, &[(shoe, 10), (sock, 10)], &charged).await;
    mesh.shutdown().await;
}
