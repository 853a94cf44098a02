//! The sales ranking end to end: orders through the orchestrator, events
//! through the outbox relay and the stream, the product service's consumer
//! group into Redis. Through a `kill -9` of the orchestrator, a cut of the
//! relay's Redis connection and a `kill -9` of the consumer (the product
//! server) while events flow, every confirmed, rejected and cancelled order
//! is counted exactly once; and a ranking Redis lost is rebuilt equal.

use std::collections::{BTreeMap, BTreeSet};

use commerce_proto::events::v1 as ev;
use commerce_proto::order::v1 as order;
use commerce_proto::product::v1 as product;
use commerce_proto::prost::Message;
use commerce_testkit::TcpProxy;

use crate::harness::Mesh;
use crate::shop::{self, eventually};

const REDIS: &str = "127.0.0.1:6379";

/// An order to place: user, idempotency key, lines.
type Planned = (String, String, Vec<(i64, i64)>);

async fn redis() -> redis::aio::MultiplexedConnection {
    redis::Client::open(format!("redis://{REDIS}"))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Each order's placement day (UTC), from its events in the stream.
async fn order_days(mesh: &Mesh) -> BTreeMap<String, String> {
    let key = format!("{}:events:orders", mesh.redis_prefix);
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(&key)
        .arg("-")
        .arg("+")
        .query_async(&mut redis().await)
        .await
        .unwrap();
    let mut days = BTreeMap::new();
    for entry in &reply.ids {
        let bytes: Vec<u8> = entry.get("event").unwrap();
        let event = ev::OrderEvent::decode(bytes.as_slice()).unwrap();
        let summary = match event.kind.unwrap() {
            ev::order_event::Kind::Confirmed(e) => e.order,
            ev::order_event::Kind::Rejected(e) => e.order,
            ev::order_event::Kind::Cancelled(e) => e.order,
            ev::order_event::Kind::Shipped(e) => e.order,
            ev::order_event::Kind::Delivered(e) => e.order,
        }
        .unwrap();
        let at = summary.ordered_at.unwrap();
        let day = chrono::DateTime::from_timestamp(at.seconds, 0)
            .unwrap()
            .format("%Y-%m-%d")
            .to_string();
        days.insert(event.order_id, day);
    }
    days
}

/// The ranking as kept in Redis: (per-order states, units per product) over
/// `days`.
async fn ranking(
    mesh: &Mesh,
    days: &BTreeSet<String>,
) -> (BTreeMap<String, char>, BTreeMap<i64, i64>) {
    let mut conn = redis().await;
    let (mut states, mut units) = (BTreeMap::new(), BTreeMap::new());
    for day in days {
        let orders: BTreeMap<String, String> = redis::cmd("HGETALL")
            .arg(format!("{}:ranking:orders:{day}", mesh.redis_prefix))
            .query_async(&mut conn)
            .await
            .unwrap();
        for (order_id, state) in orders {
            let first = state.chars().next().unwrap();
            assert!(
                states.insert(order_id, first).is_none(),
                "an order in two days"
            );
        }
        let sold: Vec<(i64, f64)> = redis::cmd("ZRANGE")
            .arg(format!("{}:ranking:day:{day}", mesh.redis_prefix))
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES")
            .query_async(&mut conn)
            .await
            .unwrap();
        for (product_id, n) in sold {
            *units.entry(product_id).or_insert(0) += n as i64;
        }
    }
    units.retain(|_, n| *n != 0);
    (states, units)
}

#[tokio::test]
async fn every_order_counts_once_through_crashes_and_a_lost_ranking_is_rebuilt_equal() {
    let mut mesh = Mesh::start(1).await;
    // A consumer that dies leaves entries pending: let another claim them
    // soon (the default waits 30 s).
    let fast_claims = [
        ("RANKING_CLAIM_MIN_IDLE_MS", "300"),
        ("RANKING_CLAIM_EVERY_MS", "200"),
        ("RANKING_BLOCK_MS", "200"),
    ];
    mesh.product.kill().await;
    mesh.product.start_with(&fast_claims).await;
    let proxy = TcpProxy::start(REDIS.parse().unwrap()).await.unwrap();
    let relay_redis = format!("redis://{}", proxy.addr);
    mesh.orchestrators[0].kill().await;
    mesh.orchestrators[0]
        .start_with(&[("REDIS_URL", &relay_redis)])
        .await;

    let brand = shop::brand(&mesh, "Ranked").await;
    let products = [
        shop::product(&mesh, brand, "Hat", 100, 10_000).await,
        shop::product(&mesh, brand, "Scarf", 300, 10_000).await,
        shop::product(&mesh, brand, "Glove", 200, 10_000).await,
    ];
    let payers: Vec<String> = (0..6).map(|i| format!("payer-{i}")).collect();
    for user in &payers {
        shop::charge(&mesh, user, 1_000_000).await;
    }
    let lines = |i: usize| -> Vec<(i64, i64)> {
        let mut l = vec![(products[i % 3], 1 + (i % 4) as i64)];
        if i.is_multiple_of(2) {
            l.push((products[(i + 1) % 3], 2));
        }
        l
    };
    let mut keys: Vec<Planned> = Vec::new();
    let place_all = |mesh: &Mesh, batch: Vec<Planned>| {
        batch
            .into_iter()
            .map(|(user, key, lines)| {
                let mut orders = mesh.orders();
                tokio::spawn(async move {
                    orders
                        .place_order(shop::request(&user, &lines, None, &key))
                        .await
                })
            })
            .collect::<Vec<_>>()
    };
    let batch = |from: usize, n: usize| -> Vec<Planned> {
        (from..from + n)
            .map(|i| {
                // Every fifth order is by a user without points: REJECTED.
                let user = if i % 5 == 4 {
                    format!("broke-{i}")
                } else {
                    payers[i % payers.len()].clone()
                };
                (user, format!("rank-{i}"), lines(i))
            })
            .collect()
    };

    // 1. Normal flow.
    let first = batch(0, 10);
    keys.extend(first.clone());
    for call in place_all(&mesh, first) {
        call.await.unwrap().unwrap();
    }
    // 2. The relay's Redis connection cut, and the orchestrator killed with
    //    a load in flight.
    proxy.cut().await;
    let second = batch(10, 10);
    keys.extend(second.clone());
    let calls = place_all(&mesh, second);
    mesh.orchestrators[0].kill().await;
    for call in calls {
        let _ = call.await.unwrap();
    }
    proxy.restore();
    mesh.orchestrators[0]
        .start_with(&[("REDIS_URL", &relay_redis)])
        .await;
    // 3. The consumer (product server) killed while events flow.
    let third = batch(20, 10);
    keys.extend(third.clone());
    let calls = place_all(&mesh, third);
    mesh.product.kill().await;
    mesh.product.start_with(&fast_claims).await;
    for call in calls {
        let _ = call.await.unwrap();
    }

    // Every order, answered or not, by its key; cancel a few confirmed.
    let mut settled = Vec::new();
    for (user, key, lines) in &keys {
        let placed = mesh
            .orders()
            .place_order(shop::request(user, lines, None, key))
            .await
            .unwrap()
            .into_inner();
        settled.push(shop::settled(&mesh, &placed.user_id, &placed.order_id).await);
    }
    let mut cancelled = BTreeSet::new();
    for o in settled
        .iter()
        .filter(|o| shop::state(o) == order::OrderState::Confirmed)
        .step_by(4)
    {
        mesh.orders()
            .cancel_order(order::CancelOrderRequest {
                order_id: o.order_id.clone(),
                user_id: o.user_id.clone(),
            })
            .await
            .unwrap();
        let done = shop::settled(&mesh, &o.user_id, &o.order_id).await;
        assert_eq!(shop::state(&done), order::OrderState::Cancelled);
        cancelled.insert(o.order_id.clone());
    }

    let mut expected_states = BTreeMap::new();
    let mut expected_units: BTreeMap<i64, i64> = BTreeMap::new();
    for o in &settled {
        let state = match shop::state(o) {
            _ if cancelled.contains(&o.order_id) => 'X',
            order::OrderState::Confirmed => {
                for l in &o.lines {
                    *expected_units.entry(l.product_id).or_insert(0) += l.quantity;
                }
                'C'
            }
            order::OrderState::Rejected => 'R',
            other => panic!("order {} ended {other:?}", o.order_id),
        };
        expected_states.insert(o.order_id.clone(), state);
    }
    assert!(expected_states.values().any(|s| *s == 'R'));

    // Wait for the stream to carry every order and the consumer to apply it.
    let days = eventually(&mesh, "every order's events in the stream", || async {
        let days = order_days(&mesh).await;
        expected_states
            .keys()
            .all(|id| days.contains_key(id))
            .then_some(days)
    })
    .await;
    let day_set: BTreeSet<String> = days.values().cloned().collect();
    let (states, units) = eventually(&mesh, "the ranking applied every order", || async {
        let (states, units) = ranking(&mesh, &day_set).await;
        (states == expected_states && units == expected_units).then_some((states, units))
    })
    .await;

    // The API serves it (today's window, when every order is of today).
    if day_set.len() == 1 {
        let popular = mesh
            .catalog()
            .list_popular_products(product::ListPopularProductsRequest {
                window: product::RankingWindow::Day as i32,
                limit: 10,
            })
            .await
            .unwrap()
            .into_inner();
        let served: BTreeMap<i64, i64> = popular
            .products
            .iter()
            .map(|p| (p.product.as_ref().unwrap().id, p.units_sold))
            .collect();
        assert_eq!(served, expected_units);
    }

    // Redis loses the ranking: the rebuild from the product database gives
    // the same counts.
    let mut conn = redis().await;
    for day in &day_set {
        let _: () = redis::cmd("DEL")
            .arg(format!("{}:ranking:day:{day}", mesh.redis_prefix))
            .arg(format!("{}:ranking:orders:{day}", mesh.redis_prefix))
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    mesh.product_admin()
        .rebuild_ranking(product::RebuildRankingRequest { days: 2 })
        .await
        .unwrap();
    let (rebuilt_states, rebuilt_units) = ranking(&mesh, &day_set).await;
    assert_eq!(rebuilt_units, units);
    // A rejected order leaves a released reservation only when its stock
    // was reserved; either way it counts nothing.
    for (order_id, state) in &states {
        let rebuilt = rebuilt_states.get(order_id).copied();
        match state {
            'C' => assert_eq!(rebuilt, Some('C'), "{order_id}"),
            _ => assert_ne!(rebuilt, Some('C'), "{order_id}"),
        }
    }
    mesh.shutdown().await;
}
