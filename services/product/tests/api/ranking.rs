//! The sales ranking: order events from the Redis stream, the consumer
//! group's recovery of entries a dead consumer left, the rebuild from
//! reservations, and the ranking's API. Each test uses its own Redis prefix
//! (its own stream and keys) and its own database.

use std::time::Duration;

use commerce_platform::{ServerConfig, time};
use commerce_proto::events::v1 as events;
use commerce_proto::product::v1 as pb;
use commerce_testkit::{TestDatabase, TestServer, assert_status};
use diesel::sql_types::{Nullable, Text};
use diesel_async::RunQueryDsl;
use events::order_event::Kind;
use pb::catalog_service_client::CatalogServiceClient;
use pb::product_admin_service_client::ProductAdminServiceClient;
use pb::stock_service_client::StockServiceClient;
use product_service::ranking::{ConsumerSettings, GROUP, STREAM};
use prost::Message;
use redis::AsyncCommands;
use redis::streams::StreamInfoGroupsReply;
use tonic::Code;

use crate::support::{TestApp, lines, saga};

/// Bounded polling: a condition is given this many tries, 50 ms apart.
const TRIES: usize = 400;

/// A consumer that reacts quickly; claims only entries idle for `min_idle`.
fn quick(min_idle: Duration) -> ConsumerSettings {
    ConsumerSettings {
        block: Duration::from_millis(100),
        claim_min_idle: min_idle,
        claim_every: Duration::from_millis(50),
        backoff_first: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        ..ConsumerSettings::default()
    }
}

/// A product server under the Redis `prefix` (`None`: Redis off).
async fn spawn_ranked(prefix: Option<&str>, consumer: ConsumerSettings) -> TestApp {
    let db = TestDatabase::create("product").await.unwrap();
    let mut config = ServerConfig::for_tests("product", db.url.clone());
    config.database.acquire_timeout = Duration::from_secs(20);
    match prefix {
        Some(prefix) => config.redis.prefix = prefix.to_owned(),
        None => config.redis.url = None,
    }
    let app = product_service::build_with(config, consumer).await.unwrap();
    let server = TestServer::start(app);
    let channel = server.channel();
    TestApp {
        db,
        catalog: CatalogServiceClient::new(channel.clone()),
        admin: ProductAdminServiceClient::new(channel.clone()),
        stock: StockServiceClient::new(channel.clone()),
        barrier:
            commerce_proto::saga::v1::saga_barrier_service_client::SagaBarrierServiceClient::new(
                channel,
            ),
        server,
    }
}

fn new_prefix() -> String {
    format!("test:{}", uuid::Uuid::new_v4().simple())
}

/// The test's side of Redis: publishes events the way the orchestrator does
/// and inspects the stream.
struct Stream {
    conn: redis::aio::MultiplexedConnection,
    prefix: String,
    key: String,
}

impl Stream {
    async fn open(prefix: &str) -> Self {
        let url = std::env::var("COMMERCE_TEST_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
        let conn = redis::Client::open(url)
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        Self {
            conn,
            prefix: prefix.to_owned(),
            key: format!("{prefix}:{STREAM}"),
        }
    }

    fn xadd(&self, event: &events::OrderEvent) -> redis::Cmd {
        let kind = match &event.kind {
            Some(Kind::Confirmed(_)) => "OrderConfirmed",
            Some(Kind::Rejected(_)) => "OrderRejected",
            Some(Kind::Cancelled(_)) => "OrderCancelled",
            Some(Kind::Shipped(_)) => "OrderShipped",
            Some(Kind::Delivered(_)) | None => "OrderDelivered",
        };
        let mut cmd = redis::cmd("XADD");
        cmd.arg(&self.key)
            .arg("MAXLEN")
            .arg("~")
            .arg(10_000)
            .arg("*")
            .arg("event_id")
            .arg(&event.event_id)
            .arg("order_id")
            .arg(&event.order_id)
            .arg("type")
            .arg(kind)
            .arg("event")
            .arg(event.encode_to_vec());
        cmd
    }

    /// Publishes `event`; returns its entry id.
    async fn publish(&mut self, event: &events::OrderEvent) -> String {
        self.xadd(event).query_async(&mut self.conn).await.unwrap()
    }

    async fn publish_all(&mut self, events: &[events::OrderEvent]) -> String {
        let mut last = String::new();
        for event in events {
            last = self.publish(event).await;
        }
        last
    }

    /// True once the group has been given every entry up to `last` and
    /// acknowledged them all.
    async fn drained(&mut self, last: &str) -> bool {
        let info: StreamInfoGroupsReply = self.conn.xinfo_groups(&self.key).await.unwrap();
        info.groups
            .iter()
            .any(|g| g.name == GROUP && g.last_delivered_id == last && g.pending == 0)
    }

    async fn wait_drained(&mut self, last: &str) {
        for _ in 0..TRIES {
            if self.drained(last).await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the consumer group never acknowledged every entry up to {last}");
    }

    /// Drops every ranking key (as if Redis lost the ranking).
    async fn forget_ranking(&mut self) {
        let keys: Vec<String> = self
            .conn
            .keys(format!("{}:ranking:*", self.prefix))
            .await
            .unwrap();
        if !keys.is_empty() {
            let _: () = self.conn.del(keys).await.unwrap();
        }
    }
}

fn order_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn summary(lines: &[(i64, i64)], ordered_at: chrono::NaiveDateTime) -> events::OrderSummary {
    events::OrderSummary {
        lines: lines
            .iter()
            .map(|&(product_id, quantity)| events::EventLine {
                product_id,
                quantity,
                ..Default::default()
            })
            .collect(),
        ordered_at: Some(time::to_proto(ordered_at)),
        ..Default::default()
    }
}

/// An event of `order`, placed now, with lines `lines`.
fn event(order: &str, kind: &str, lines: &[(i64, i64)]) -> events::OrderEvent {
    event_at(order, kind, lines, time::now())
}

fn event_at(
    order: &str,
    kind: &str,
    lines: &[(i64, i64)],
    ordered_at: chrono::NaiveDateTime,
) -> events::OrderEvent {
    let order_summary = Some(summary(lines, ordered_at));
    let kind = match kind {
        "confirmed" => Kind::Confirmed(events::OrderConfirmed {
            order: order_summary,
        }),
        "cancelled" => Kind::Cancelled(events::OrderCancelled {
            order: order_summary,
            ..Default::default()
        }),
        "rejected" => Kind::Rejected(events::OrderRejected {
            order: order_summary,
            reason: "STOCK_INSUFFICIENT".to_owned(),
            ..Default::default()
        }),
        "shipped" => Kind::Shipped(events::OrderShipped {
            order: order_summary,
        }),
        other => panic!("no event kind {other}"),
    };
    events::OrderEvent {
        event_id: uuid::Uuid::new_v4().to_string(),
        order_id: order.to_owned(),
        user_id: "user-1".to_owned(),
        occurred_at: Some(time::to_proto(time::now())),
        kind: Some(kind),
    }
}

async fn popular(app: &TestApp, window: pb::RankingWindow) -> Vec<(i64, i64)> {
    let response = app
        .catalog
        .clone()
        .list_popular_products(pb::ListPopularProductsRequest {
            window: window.into(),
            limit: 100,
        })
        .await
        .unwrap()
        .into_inner();
    for (i, p) in response.products.iter().enumerate() {
        assert_eq!(p.rank, i32::try_from(i + 1).unwrap());
    }
    response
        .products
        .into_iter()
        .map(|p| (p.product.unwrap().id, p.units_sold))
        .collect()
}

async fn wait_ranking(app: &TestApp, expected: &[(i64, i64)]) {
    let mut seen = Vec::new();
    for _ in 0..TRIES {
        seen = popular(app, pb::RankingWindow::Day).await;
        if seen == expected {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the ranking never became {expected:?}; last seen {seen:?}");
}

/// Three ON_SALE products with plenty of stock.
async fn three_products(app: &TestApp) -> (i64, i64, i64) {
    let brand = app.brand("Acme").await;
    let a = app.product(brand.id, "Anvil", 1_000, 1_000).await.id;
    let b = app.product(brand.id, "Bolt", 100, 1_000).await.id;
    let c = app.product(brand.id, "Crate", 500, 1_000).await.id;
    (a, b, c)
}

#[tokio::test]
async fn order_events_are_ranked_once_whatever_their_delivery() {
    let prefix = new_prefix();
    let app = spawn_ranked(Some(&prefix), quick(Duration::from_secs(30))).await;
    let mut stream = Stream::open(&prefix).await;
    let (a, b, c) = three_products(&app).await;

    let (o1, o2, o3, o4, o5) = (order_id(), order_id(), order_id(), order_id(), order_id());
    let o1_confirmed = event(&o1, "confirmed", &[(a, 2), (b, 1)]);
    let last = stream
        .publish_all(&[
            // Delivered twice: counted once.
            o1_confirmed.clone(),
            o1_confirmed,
            // Cancelled before its confirmation arrives: never counts.
            event(&o2, "cancelled", &[(a, 5)]),
            event(&o2, "confirmed", &[(a, 5)]),
            // Rejected: counts nothing.
            event(&o3, "rejected", &[(a, 7)]),
            // Confirmed then cancelled: taken back, the product leaves the set.
            event(&o4, "confirmed", &[(c, 3)]),
            event(&o4, "cancelled", &[(c, 3)]),
            // Shipping changes nothing.
            event(&o5, "confirmed", &[(b, 4), (c, 1)]),
            event(&o5, "shipped", &[(b, 4), (c, 1)]),
        ])
        .await;
    // An entry that is not an order event is skipped, never blocks the rest.
    let garbage: String = redis::cmd("XADD")
        .arg(&stream.key)
        .arg("*")
        .arg("event_id")
        .arg("x")
        .arg("event")
        .arg(&b"\xff\xff\xff"[..])
        .query_async(&mut stream.conn)
        .await
        .unwrap();
    assert!(garbage > last);
    let last = stream
        .publish(&event(&order_id(), "confirmed", &[(a, 1)]))
        .await;

    stream.wait_drained(&last).await;
    let expected = vec![(b, 5), (a, 3), (c, 1)];
    assert_eq!(popular(&app, pb::RankingWindow::Day).await, expected);
    assert_eq!(popular(&app, pb::RankingWindow::Week).await, expected);
    assert_eq!(popular(&app, pb::RankingWindow::Month).await, expected);

    // A limit keeps the best; an order of 8 days ago is only in the month.
    let top = app
        .catalog
        .clone()
        .list_popular_products(pb::ListPopularProductsRequest {
            window: pb::RankingWindow::Unspecified.into(),
            limit: 1,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(top.window, i32::from(pb::RankingWindow::Day));
    assert_eq!(top.products.len(), 1);
    assert_eq!(top.products[0].product.as_ref().unwrap().name, "Bolt");
    let long_ago = time::now() - chrono::Duration::days(8);
    let last = stream
        .publish(&event_at(&order_id(), "confirmed", &[(c, 10)], long_ago))
        .await;
    stream.wait_drained(&last).await;
    assert_eq!(popular(&app, pb::RankingWindow::Week).await, expected);
    assert_eq!(
        popular(&app, pb::RankingWindow::Month).await,
        vec![(c, 11), (b, 5), (a, 3)]
    );

    app.stop().await;
}

#[tokio::test]
async fn entries_a_dead_consumer_left_pending_are_claimed_and_applied_once() {
    let prefix = new_prefix();
    let mut stream = Stream::open(&prefix).await;
    // The group exists before the server: it was another server's.
    let _: () = stream
        .conn
        .xgroup_create_mkstream(&stream.key, GROUP, "0")
        .await
        .unwrap();
    let app = spawn_ranked(Some(&prefix), quick(Duration::from_millis(300))).await;
    let (a, b, _) = three_products(&app).await;

    // A consumer reads three entries and dies without acknowledging them.
    // Published and read in one transaction, so the live consumer cannot
    // read them first.
    let batch = [
        event(&order_id(), "confirmed", &[(a, 3)]),
        event(&order_id(), "confirmed", &[(b, 1)]),
        event(&order_id(), "confirmed", &[(a, 1), (b, 1)]),
    ];
    let mut pipe = redis::pipe();
    pipe.atomic();
    for e in &batch {
        pipe.add_command(stream.xadd(e));
    }
    pipe.cmd("XREADGROUP")
        .arg("GROUP")
        .arg(GROUP)
        .arg("dead-consumer")
        .arg("COUNT")
        .arg(10)
        .arg("STREAMS")
        .arg(&stream.key)
        .arg(">")
        .ignore();
    let (_, _, last): (String, String, String) = pipe.query_async(&mut stream.conn).await.unwrap();

    wait_ranking(&app, &[(a, 4), (b, 2)]).await;
    stream.wait_drained(&last).await;
    let pending: redis::streams::StreamPendingReply =
        stream.conn.xpending(&stream.key, GROUP).await.unwrap();
    assert_eq!(pending.count(), 0);
    // Exactly once: nothing more arrives later.
    let last = stream
        .publish(&event(&order_id(), "confirmed", &[(b, 1)]))
        .await;
    stream.wait_drained(&last).await;
    assert_eq!(
        popular(&app, pb::RankingWindow::Day).await,
        vec![(a, 4), (b, 3)]
    );
    // Holding nothing and idle past the claim's threshold, the dead
    // consumer is forgotten by the group; the live one stays.
    let mut consumers = Vec::new();
    for _ in 0..TRIES {
        let info: redis::streams::StreamInfoConsumersReply = stream
            .conn
            .xinfo_consumers(&stream.key, GROUP)
            .await
            .unwrap();
        consumers = info.consumers.into_iter().map(|c| c.name).collect();
        if !consumers.iter().any(|name| name == "dead-consumer") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(consumers.len(), 1, "{consumers:?}");
    assert_ne!(consumers[0], "dead-consumer");

    app.stop().await;
}

/// Reserves `request` for a new order placed at `placed`; returns (saga, order).
async fn reserve_order(
    app: &TestApp,
    request: &[(i64, i64)],
    placed: chrono::NaiveDateTime,
) -> (String, String) {
    let (saga_id, order) = (saga(), order_id());
    app.stock
        .clone()
        .reserve_stock(pb::ReserveStockRequest {
            saga_id: saga_id.clone(),
            lines: lines(request),
            saga_fence: 0,
            order_id: order.clone(),
            ordered_at: Some(time::to_proto(placed)),
        })
        .await
        .unwrap();
    (saga_id, order)
}

async fn rebuild(app: &TestApp) -> pb::RebuildRankingResponse {
    app.admin
        .clone()
        .rebuild_ranking(pb::RebuildRankingRequest { days: 0 })
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test]
async fn a_rebuild_from_reservations_equals_the_live_ranking_and_double_counts_nothing() {
    let prefix = new_prefix();
    let app = spawn_ranked(Some(&prefix), quick(Duration::from_secs(30))).await;
    let mut stream = Stream::open(&prefix).await;
    let (a, b, c) = three_products(&app).await;
    let placed = time::now();

    // Confirmed; confirmed then cancelled; rejected; still pending;
    // confirmed; and one from a caller that sends no order id.
    let (s1, o1) = reserve_order(&app, &[(a, 2), (b, 1)], placed).await;
    app.confirm(&s1).await.unwrap();
    let (s2, o2) = reserve_order(&app, &[(a, 3)], placed).await;
    app.confirm(&s2).await.unwrap();
    app.release(&s2).await.unwrap();
    let (s3, o3) = reserve_order(&app, &[(b, 4)], placed).await;
    app.release(&s3).await.unwrap();
    reserve_order(&app, &[(c, 9)], placed).await;
    let (s5, o5) = reserve_order(&app, &[(b, 2), (c, 1)], placed).await;
    app.confirm(&s5).await.unwrap();
    let anonymous = saga();
    app.reserve(&anonymous, &[(c, 10)]).await.unwrap();
    app.confirm(&anonymous).await.unwrap();
    let expected = vec![(b, 3), (a, 2), (c, 1)];

    // From the reservations alone.
    let report = rebuild(&app).await;
    assert_eq!(
        (report.orders_counted, report.orders_cancelled, report.days),
        (2, 2, 30)
    );
    assert_eq!(popular(&app, pb::RankingWindow::Day).await, expected);
    // Again: nothing changes.
    rebuild(&app).await;
    assert_eq!(popular(&app, pb::RankingWindow::Day).await, expected);

    // The events of the same orders, applied while another rebuild runs.
    let events = [
        event_at(&o1, "confirmed", &[(a, 2), (b, 1)], placed),
        event_at(&o2, "confirmed", &[(a, 3)], placed),
        event_at(&o2, "cancelled", &[(a, 3)], placed),
        event_at(&o3, "rejected", &[(b, 4)], placed),
        event_at(&o5, "confirmed", &[(b, 2), (c, 1)], placed),
    ];
    let (last, _) = tokio::join!(stream.publish_all(&events), async {
        for _ in 0..3 {
            rebuild(&app).await;
        }
    });
    stream.wait_drained(&last).await;
    assert_eq!(popular(&app, pb::RankingWindow::Day).await, expected);

    // The events alone (Redis lost the ranking; the group reads the stream
    // again from its start) give the same ranking.
    stream.forget_ranking().await;
    assert_eq!(popular(&app, pb::RankingWindow::Day).await, vec![]);
    let _: () = stream
        .conn
        .xgroup_setid(&stream.key, GROUP, "0")
        .await
        .unwrap();
    wait_ranking(&app, &expected).await;
    stream.wait_drained(&last).await;
    assert_eq!(popular(&app, pb::RankingWindow::Day).await, expected);

    // And a cancellation that arrives after a rebuild takes back once.
    let (s6, o6) = reserve_order(&app, &[(c, 5)], placed).await;
    app.confirm(&s6).await.unwrap();
    rebuild(&app).await;
    assert_eq!(
        popular(&app, pb::RankingWindow::Day).await,
        vec![(c, 6), (b, 3), (a, 2)]
    );
    app.release(&s6).await.unwrap();
    let last = stream
        .publish_all(&[
            event_at(&o6, "confirmed", &[(c, 5)], placed),
            event_at(&o6, "cancelled", &[(c, 5)], placed),
        ])
        .await;
    rebuild(&app).await;
    stream.wait_drained(&last).await;
    assert_eq!(popular(&app, pb::RankingWindow::Day).await, expected);

    app.stop().await;
}

#[tokio::test]
async fn ranking_requests_name_their_field_and_redis_off_is_unavailable_for_the_ranking_only() {
    let app = spawn_ranked(Some(&new_prefix()), quick(Duration::from_secs(30))).await;
    let mut catalog = app.catalog.clone();
    for (window, limit, field) in [
        (1, 0, "limit"),
        (1, -3, "limit"),
        (1, 101, "limit"),
        (42, 10, "window"),
    ] {
        assert_status(
            catalog
                .list_popular_products(pb::ListPopularProductsRequest { window, limit })
                .await,
            Code::InvalidArgument,
            field,
        );
    }
    for days in [-1, 31] {
        assert_status(
            app.admin
                .clone()
                .rebuild_ranking(pb::RebuildRankingRequest { days })
                .await,
            Code::InvalidArgument,
            "days",
        );
    }
    // Nothing sold yet: an empty ranking.
    assert_eq!(popular(&app, pb::RankingWindow::Month).await, vec![]);
    app.stop().await;

    let app = spawn_ranked(None, quick(Duration::from_secs(30))).await;
    let status = app
        .catalog
        .clone()
        .list_popular_products(pb::ListPopularProductsRequest {
            window: 0,
            limit: 10,
        })
        .await
        .unwrap_err();
    // (The platform hides an UNAVAILABLE cause from callers; the server
    // logs it: the ranking lives in Redis, which cannot be used.)
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let status = app
        .admin
        .clone()
        .rebuild_ranking(pb::RebuildRankingRequest { days: 1 })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    // The rest of the service works without Redis.
    let (a, _, _) = three_products(&app).await;
    let (saga_id, _) = reserve_order(&app, &[(a, 2)], time::now()).await;
    app.confirm(&saga_id).await.unwrap();
    assert_eq!(app.stock_of(a).await, (998, 0, 2));
    app.stop().await;
}

#[derive(diesel::QueryableByName)]
struct Recorded {
    #[diesel(sql_type = Nullable<Text>)]
    order_id: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    ordered_at: Option<String>,
    #[diesel(sql_type = Text)]
    created_at: String,
}

async fn recorded(app: &TestApp, saga_id: &str) -> Recorded {
    let mut conn = app.db.connect().await.unwrap();
    diesel::sql_query(format!(
        "SELECT order_id, CAST(ordered_at AS CHAR) AS ordered_at, \
         CAST(created_at AS CHAR) AS created_at FROM reservations WHERE saga_id = '{saga_id}'"
    ))
    .get_result(&mut conn)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_reservation_records_its_order_and_refuses_an_order_id_that_is_no_uuid() {
    let app = spawn_ranked(Some(&new_prefix()), quick(Duration::from_secs(30))).await;
    let (a, _, _) = three_products(&app).await;

    let placed = chrono::NaiveDate::from_ymd_opt(2026, 1, 2)
        .unwrap()
        .and_hms_micro_opt(3, 4, 5, 678_901)
        .unwrap();
    let (saga_id, order) = reserve_order(&app, &[(a, 1)], placed).await;
    let row = recorded(&app, &saga_id).await;
    assert_eq!(row.order_id.as_deref(), Some(order.as_str()));
    assert_eq!(
        row.ordered_at.as_deref(),
        Some("2026-01-02 03:04:05.678901")
    );

    // Without an order (an older caller): no order id, placed when reserved.
    let older = saga();
    app.reserve(&older, &[(a, 1)]).await.unwrap();
    let row = recorded(&app, &older).await;
    assert_eq!(row.order_id, None);
    assert_eq!(row.ordered_at.as_deref(), Some(row.created_at.as_str()));

    let before = app.row_counts().await;
    for (order_id, ordered_at, field) in [
        ("order-7", None, "order_id"),
        ("6f9619ff-8b86-d011-b42d", None, "order_id"),
        (
            "6f9619ff-8b86-d011-b42d-00c04fc964ff",
            Some({
                let mut t = time::to_proto(placed);
                t.nanos = -1;
                t
            }),
            "ordered_at",
        ),
    ] {
        assert_status(
            app.stock
                .clone()
                .reserve_stock(pb::ReserveStockRequest {
                    saga_id: saga(),
                    lines: lines(&[(a, 1)]),
                    saga_fence: 0,
                    order_id: order_id.to_owned(),
                    ordered_at,
                })
                .await,
            Code::InvalidArgument,
            field,
        );
    }
    assert_eq!(app.row_counts().await, before);
    app.stop().await;
}
