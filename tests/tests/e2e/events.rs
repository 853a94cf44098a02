//! Order events end to end: every order's state change reaches the Redis
//! stream once it commits, with what the participants did, in order per
//! order; a Redis outage blocks no order and a `kill -9` of the
//! orchestrator loses no event (the outbox drains when both are back).

use std::collections::{BTreeSet, HashMap};

use commerce_proto::events::v1 as ev;
use commerce_proto::order::v1 as order;
use commerce_proto::prost::Message;
use commerce_testkit::TcpProxy;
use ev::order_event::Kind;

use crate::harness::Mesh;
use crate::shop::{self, eventually};

const REDIS: &str = "127.0.0.1:6379";

async fn redis() -> redis::aio::MultiplexedConnection {
    redis::Client::open(format!("redis://{REDIS}"))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Every entry of the mesh's order stream, decoded, in stream order.
async fn stream(mesh: &Mesh) -> Vec<ev::OrderEvent> {
    let key = format!("{}:events:orders", mesh.redis_prefix);
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(&key)
        .arg("-")
        .arg("+")
        .query_async(&mut redis().await)
        .await
        .unwrap();
    reply
        .ids
        .iter()
        .map(|entry| {
            let bytes: Vec<u8> = entry.get("event").expect("an `event` field");
            let event = ev::OrderEvent::decode(bytes.as_slice()).unwrap();
            let kind: String = entry.get("type").unwrap();
            assert_eq!(kind, kind_name(&event), "{entry:?}");
            assert_eq!(entry.get::<String>("event_id").unwrap(), event.event_id);
            assert_eq!(entry.get::<String>("order_id").unwrap(), event.order_id);
            event
        })
        .collect()
}

fn kind_name(event: &ev::OrderEvent) -> &'static str {
    match event.kind.as_ref().unwrap() {
        Kind::Confirmed(_) => "OrderConfirmed",
        Kind::Rejected(_) => "OrderRejected",
        Kind::Cancelled(_) => "OrderCancelled",
        Kind::Shipped(_) => "OrderShipped",
        Kind::Delivered(_) => "OrderDelivered",
    }
}

/// Each order's distinct events (a repeat, same event id, counted once) in
/// stream order, after checking that a repeat never comes after a later
/// event of its order.
fn per_order(events: &[ev::OrderEvent]) -> HashMap<String, Vec<ev::OrderEvent>> {
    let mut orders: HashMap<String, Vec<ev::OrderEvent>> = HashMap::new();
    for event in events {
        let seen = orders.entry(event.order_id.clone()).or_default();
        match seen.iter().position(|e| e.event_id == event.event_id) {
            // A repeat (at least once) may only repeat the latest event.
            Some(i) => assert_eq!(i, seen.len() - 1, "out of order repeat: {event:?}"),
            None => seen.push(event.clone()),
        }
    }
    orders
}

fn kinds(events: &[ev::OrderEvent]) -> Vec<&'static str> {
    events.iter().map(kind_name).collect()
}

async fn outbox(mesh: &Mesh) -> order::OutboxStats {
    mesh.sagas()
        .get_outbox(order::GetOutboxRequest {})
        .await
        .unwrap()
        .into_inner()
}

async fn drained(mesh: &Mesh) {
    eventually(mesh, "the outbox drained", || async {
        (outbox(mesh).await.pending == 0).then_some(())
    })
    .await;
}

fn summary(event: &ev::OrderEvent) -> &ev::OrderSummary {
    match event.kind.as_ref().unwrap() {
        Kind::Confirmed(e) => e.order.as_ref(),
        Kind::Rejected(e) => e.order.as_ref(),
        Kind::Cancelled(e) => e.order.as_ref(),
        Kind::Shipped(e) => e.order.as_ref(),
        Kind::Delivered(e) => e.order.as_ref(),
    }
    .unwrap()
}

#[tokio::test]
async fn every_state_change_is_published_with_what_the_participants_did() {
    let mesh = Mesh::start(1).await;
    let brand = shop::brand(&mesh, "Events").await;
    let hat = shop::product(&mesh, brand, "Hat", 1_000, 10).await;
    shop::charge(&mesh, "alice", 10_000).await;

    let confirmed = shop::place(&mesh, "alice", &[(hat, 1)], None).await;
    let rejected = shop::place(&mesh, "bob", &[(hat, 1)], None).await;
    assert_eq!(shop::state(&rejected), order::OrderState::Rejected);
    let cancelled = shop::place(&mesh, "alice", &[(hat, 2)], None).await;
    let before_cancel = shop::balance(&mesh, "alice").await;
    mesh.orders()
        .cancel_order(order::CancelOrderRequest {
            order_id: cancelled.order_id.clone(),
            user_id: "alice".to_owned(),
        })
        .await
        .unwrap();
    let cancelled_now = shop::settled(&mesh, &cancelled.user_id, &cancelled.order_id).await;
    assert_eq!(shop::state(&cancelled_now), order::OrderState::Cancelled);
    let refunded = shop::balance(&mesh, "alice").await - before_cancel;
    let shipped = shop::place(&mesh, "alice", &[(hat, 1)], None).await;
    for mark in [0, 1] {
        let r = order::OrderRef {
            order_id: shipped.order_id.clone(),
        };
        if mark == 0 {
            mesh.orders().mark_shipped(r).await.unwrap();
        } else {
            mesh.orders().mark_delivered(r).await.unwrap();
        }
    }
    drained(&mesh).await;
    let stats = outbox(&mesh).await;
    assert_eq!(stats.stream, format!("{}:events:orders", mesh.redis_prefix));
    assert!(stats.published_kept >= 7, "{stats:?}");

    let entries = stream(&mesh).await;
    let orders = per_order(&entries);
    assert_eq!(orders.len(), 4, "{orders:#?}");

    // What an operator sees: `commerce-mesh events tail` prints the same
    // events as JSON lines.
    let tail = tokio::process::Command::new(env!("CARGO_BIN_EXE_commerce-mesh"))
        .args(["events", "tail", "--redis-prefix", &mesh.redis_prefix])
        .args(["--last", "1000", "--count", &entries.len().to_string()])
        .output()
        .await
        .unwrap();
    assert!(tail.status.success(), "{tail:?}");
    let lines: Vec<serde_json::Value> = String::from_utf8(tail.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let tailed: Vec<&str> = lines
        .iter()
        .map(|l| l["event_id"].as_str().unwrap())
        .collect();
    let streamed: Vec<&str> = entries.iter().map(|e| e.event_id.as_str()).collect();
    assert_eq!(tailed, streamed);
    assert_eq!(lines[0]["type"], kind_name(&entries[0]));
    let of = |o: &order::Order| orders[&o.order_id].clone();

    let events = of(&confirmed);
    assert_eq!(kinds(&events), ["OrderConfirmed"]);
    let s = summary(&events[0]);
    assert_eq!((s.subtotal, s.discount, s.points_paid), (1_000, 0, 1_000));
    assert_eq!(s.lines.len(), 1);
    assert_eq!(
        (
            s.lines[0].product_id,
            s.lines[0].quantity,
            s.lines[0].unit_price
        ),
        (hat, 1, 1_000)
    );
    assert_eq!(s.lines[0].product_name, "Hat");
    assert_eq!(events[0].user_id, "alice");
    assert_eq!(s.saga_id, confirmed.saga_id);

    // Rejected: the reason, and nothing paid.
    let events = of(&rejected);
    assert_eq!(kinds(&events), ["OrderRejected"]);
    let Kind::Rejected(r) = events[0].kind.as_ref().unwrap() else {
        unreachable!()
    };
    assert_eq!(r.reason, "POINT_INSUFFICIENT");
    let s = summary(&events[0]);
    assert_eq!((s.discount, s.points_paid), (0, 0));

    // Cancelled: confirmed first, then refunded exactly what was paid.
    let events = of(&cancelled);
    assert_eq!(kinds(&events), ["OrderConfirmed", "OrderCancelled"]);
    let Kind::Cancelled(c) = events[1].kind.as_ref().unwrap() else {
        unreachable!()
    };
    assert_eq!(c.points_refunded, 2_000);
    assert_eq!(c.points_refunded, refunded);
    assert_eq!(c.points_refunded, cancelled.points_paid);

    let events = of(&shipped);
    assert_eq!(
        kinds(&events),
        ["OrderConfirmed", "OrderShipped", "OrderDelivered"]
    );
    // occurred_at follows commit order within an order.
    let times: Vec<_> = events
        .iter()
        .map(|e| {
            let t = e.occurred_at.unwrap();
            (t.seconds, t.nanos)
        })
        .collect();
    assert!(times.is_sorted(), "{times:?}");
    mesh.shutdown().await;
}

/// Orders placed while the orchestrator cannot reach Redis (its connection
/// cut at a proxy) all settle; their events wait in the outbox, survive a
/// `kill -9` of the orchestrator in the middle of a load, and are all
/// published once Redis is reachable again.
#[tokio::test]
async fn a_redis_outage_and_a_crash_block_no_order_and_lose_no_event() {
    let mut mesh = Mesh::start(1).await;
    let brand = shop::brand(&mesh, "Outage").await;
    let hat = shop::product(&mesh, brand, "Hat", 100, 1_000).await;
    let users: Vec<String> = (0..8).map(|i| format!("user-{i}")).collect();
    for user in &users {
        shop::charge(&mesh, user, 100_000).await;
    }
    let proxy = TcpProxy::start(REDIS.parse().unwrap()).await.unwrap();
    let redis_url = format!("redis://{}", proxy.addr);
    let node = &mut mesh.orchestrators[0];
    node.kill().await;
    node.start_with(&[("REDIS_URL", &redis_url)]).await;

    // Redis away: orders go on.
    proxy.cut().await;
    let mut placed = BTreeSet::new();
    for (i, user) in users.iter().enumerate() {
        let o = shop::place(&mesh, user, &[(hat, 1 + (i as i64 % 3))], None).await;
        assert_eq!(shop::state(&o), order::OrderState::Confirmed, "{o:?}");
        placed.insert(o.order_id);
    }
    assert_eq!(outbox(&mesh).await.pending, users.len() as i64);

    // A load in flight when the orchestrator dies (Redis still away).
    let mut load = Vec::new();
    for (i, user) in users.iter().enumerate() {
        let mut orders = mesh.orders();
        let request = shop::request(user, &[(hat, 1)], None, &format!("crash-{i}"));
        load.push(tokio::spawn(
            async move { orders.place_order(request).await },
        ));
    }
    mesh.orchestrators[0].kill().await;
    for call in load {
        let _ = call.await.unwrap();
    }
    proxy.restore();
    mesh.orchestrators[0]
        .start_with(&[("REDIS_URL", &redis_url)])
        .await;
    // The load's orders, whether or not their call was answered: placing
    // them again with the same keys returns each (or records it now).
    for (i, user) in users.iter().enumerate() {
        let o = mesh
            .orders()
            .place_order(shop::request(
                user,
                &[(hat, 1)],
                None,
                &format!("crash-{i}"),
            ))
            .await
            .unwrap()
            .into_inner();
        let o = shop::settled(&mesh, &o.user_id, &o.order_id).await;
        assert_eq!(shop::state(&o), order::OrderState::Confirmed, "{o:?}");
        placed.insert(o.order_id);
    }
    drained(&mesh).await;

    let orders = per_order(&stream(&mesh).await);
    let published: BTreeSet<String> = orders.keys().cloned().collect();
    assert_eq!(published, placed);
    for (order_id, events) in &orders {
        assert_eq!(kinds(events), ["OrderConfirmed"], "{order_id}");
    }
    mesh.shutdown().await;
}

/// Concurrent duplicates of one PlaceOrder (same user and key) all answer
/// the same order, and only one order exists; a different request under
/// the same key is refused as ever.
#[tokio::test]
async fn concurrent_duplicates_get_the_one_order() {
    let mesh = Mesh::start(1).await;
    let brand = shop::brand(&mesh, "Dupes").await;
    let hat = shop::product(&mesh, brand, "Hat", 100, 100).await;
    shop::charge(&mesh, "carol", 10_000).await;
    let calls: Vec<_> = (0..16)
        .map(|_| {
            let mut orders = mesh.orders();
            let request = shop::request("carol", &[(hat, 1)], None, "double-tap");
            tokio::spawn(async move { orders.place_order(request).await })
        })
        .collect();
    let mut ids = BTreeSet::new();
    for call in calls {
        ids.insert(call.await.unwrap().unwrap().into_inner().order_id);
    }
    assert_eq!(ids.len(), 1, "{ids:?}");
    let all = shop::orders_of(&mesh, &["carol".to_owned()]).await;
    assert_eq!(all.len(), 1);
    let other = mesh
        .orders()
        .place_order(shop::request("carol", &[(hat, 2)], None, "double-tap"))
        .await
        .unwrap_err();
    assert_eq!(other.code(), tonic::Code::AlreadyExists);
    mesh.shutdown().await;
}

/// Two orchestrator instances on one database each run a relay: every
/// event is published exactly once in the normal case (the claims keep
/// them apart), in order per order.
#[tokio::test]
async fn two_relays_publish_each_event_once() {
    let mesh = Mesh::start(2).await;
    let brand = shop::brand(&mesh, "Twins").await;
    let hat = shop::product(&mesh, brand, "Hat", 100, 1_000).await;
    let users: Vec<String> = (0..6).map(|i| format!("twin-{i}")).collect();
    for user in &users {
        shop::charge(&mesh, user, 100_000).await;
    }
    let calls: Vec<_> = (0..24)
        .map(|i| {
            let mut orders = mesh.orders_at(i % 2);
            let request = shop::request(
                &users[i % users.len()],
                &[(hat, 1)],
                None,
                &format!("twin-{i}"),
            );
            tokio::spawn(async move { orders.place_order(request).await })
        })
        .collect();
    let mut placed = BTreeSet::new();
    for call in calls {
        let o = call.await.unwrap().unwrap().into_inner();
        shop::settled(&mesh, &o.user_id, &o.order_id).await;
        placed.insert(o.order_id);
    }
    drained(&mesh).await;
    let entries = stream(&mesh).await;
    let ids: BTreeSet<&str> = entries.iter().map(|e| e.event_id.as_str()).collect();
    assert_eq!(ids.len(), entries.len(), "an event was published twice");
    let orders = per_order(&entries);
    assert_eq!(orders.keys().cloned().collect::<BTreeSet<_>>(), placed);
    mesh.shutdown().await;
}
