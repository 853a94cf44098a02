//! The baseline served in-process over gRPC, against a fresh database per
//! test: what an order changes, what a rejection leaves alone, idempotency,
//! and no overselling under concurrency.

use std::time::Instant;

use commerce_platform::ServerConfig;
use commerce_proto::order::v1 as pb;
use commerce_proto::order::v1::order_service_client::OrderServiceClient;
use commerce_testkit::TestChannel as Channel;
use commerce_testkit::{TestDatabase, TestServer, assert_status};
use diesel::prelude::*;
use diesel_async::{AsyncMysqlConnection, RunQueryDsl};
use tonic::Code;

use super::schema::{point_ledger, product_stock, products, user_coupons};
use super::seed::reset;
use super::{BaselineTotals, build, seed, totals};
use crate::model::{SeededBrand, SeededCoupon, SeededProduct, SeededTemplate, SeededUser, Shop};

/// A seeded database and the baseline server on it.
struct Baseline {
    db: TestDatabase,
    server: TestServer,
    orders: OrderServiceClient<Channel>,
}

impl Baseline {
    async fn start(label: &str, shop: &Shop) -> anyhow::Result<Self> {
        let db = TestDatabase::create(label).await?;
        seed(&db.url, shop).await?;
        let server =
            TestServer::start(build(ServerConfig::for_tests("baseline", db.url.clone())).await?);
        let orders = OrderServiceClient::new(server.channel());
        Ok(Self { db, server, orders })
    }

    async fn place(
        &self,
        user: &str,
        lines: &[(i64, i64)],
        coupon: Option<i64>,
        key: &str,
    ) -> Result<pb::Order, tonic::Status> {
        self.orders
            .clone()
            .place_order(request(user, lines, coupon, key))
            .await
            .map(tonic::Response::into_inner)
    }

    async fn get(&self, user: &str, order_id: &str) -> Result<pb::Order, tonic::Status> {
        self.orders
            .clone()
            .get_order(pb::GetOrderRequest {
                order_id: order_id.into(),
                user_id: user.into(),
            })
            .await
            .map(tonic::Response::into_inner)
    }

    async fn totals(&self) -> anyhow::Result<BaselineTotals> {
        totals(&self.db.url).await
    }

    async fn stop(self) -> anyhow::Result<()> {
        self.server.stop().await?;
        self.db.drop_database().await
    }
}

fn request(
    user: &str,
    lines: &[(i64, i64)],
    coupon: Option<i64>,
    key: &str,
) -> pb::PlaceOrderRequest {
    pb::PlaceOrderRequest {
        user_id: user.into(),
        lines: lines
            .iter()
            .map(|&(product_id, quantity)| pb::OrderLineRequest {
                product_id,
                quantity,
            })
            .collect(),
        user_coupon_id: coupon,
        idempotency_key: key.into(),
    }
}

fn product(id: i64, name: &str, price: i64, stock: i64) -> SeededProduct {
    SeededProduct {
        id,
        name: name.into(),
        price,
        stock,
    }
}

fn user(user_id: &str, points: i64) -> SeededUser {
    SeededUser {
        user_id: user_id.into(),
        points,
    }
}

/// Shoe 1,000 x10, Hat 2,500 x3, Bag 500 x5; u1 has 10,000 points and
/// coupon 31, u2 has 100 points and coupon 32 (1,500 off from 3,000).
fn small_shop() -> Shop {
    Shop {
        brand: SeededBrand {
            id: 3,
            name: "Acme".into(),
        },
        products: vec![
            product(11, "Shoe", 1_000, 10),
            product(12, "Hat", 2_500, 3),
            product(13, "Bag", 500, 5),
        ],
        users: vec![user("u1", 10_000), user("u2", 100), user("u3", 0)],
        templates: vec![SeededTemplate {
            id: 21,
            amount: 1_500,
            min_order_amount: 3_000,
            total_quantity: 10,
        }],
        coupons: vec![
            SeededCoupon {
                id: 31,
                template_id: 21,
                user_id: "u1".into(),
            },
            SeededCoupon {
                id: 32,
                template_id: 21,
                user_id: "u2".into(),
            },
        ],
    }
}

async fn stock_of(
    conn: &mut AsyncMysqlConnection,
    product_id: i64,
) -> anyhow::Result<(i64, i64, i64)> {
    Ok(product_stock::table
        .find(product_id)
        .select((
            product_stock::available,
            product_stock::reserved,
            product_stock::sold,
        ))
        .first(conn)
        .await?)
}

#[tokio::test]
async fn a_confirmed_order_takes_stock_points_and_coupon_once() -> anyhow::Result<()> {
    let shop = small_shop();
    let baseline = Baseline::start("bench_confirm", &shop).await?;
    let seeded = baseline.totals().await?;
    assert_eq!(
        seeded,
        BaselineTotals {
            stock_by_product: [(11, 10), (12, 3), (13, 5)].into(),
            points: 10_100,
            ledger_points: 10_100,
            ..BaselineTotals::default()
        }
    );

    let placed = baseline
        .place("u1", &[(12, 1), (11, 2)], Some(31), "k1")
        .await?;
    assert_eq!(placed.state(), pb::OrderState::Confirmed);
    assert_eq!(
        (placed.subtotal, placed.discount, placed.points_paid),
        (4_500, 1_500, 3_000)
    );
    assert_eq!(placed.user_coupon_id, Some(31));
    assert_eq!((placed.reason.as_str(), placed.saga_id.as_str()), ("", ""));
    let lines: Vec<_> = placed
        .lines
        .iter()
        .map(|l| {
            (
                l.product_id,
                l.quantity,
                l.product_name.as_str(),
                l.brand_id,
                l.brand_name.as_str(),
                l.unit_price,
                l.line_total,
            )
        })
        .collect();
    assert_eq!(
        lines,
        vec![
            (11, 2, "Shoe", 3, "Acme", 1_000, 2_000),
            (12, 1, "Hat", 3, "Acme", 2_500, 2_500),
        ]
    );
    assert!(placed.created_at.is_some());

    // What was stored is what was answered.
    assert_eq!(baseline.get("u1", &placed.order_id).await?, placed);
    // Another user's order is not found, as the orchestrator answers.
    assert_status(
        baseline.get("u2", &placed.order_id).await,
        Code::NotFound,
        "ORDER_NOT_FOUND",
    );

    let after = baseline.totals().await?;
    assert_eq!(
        after,
        BaselineTotals {
            sold: 3,
            ordered_units: 3,
            points: 7_100,
            ledger_points: 7_100,
            points_paid: 3_000,
            confirmed_orders: 1,
            used_coupons: 1,
            ..seeded.clone()
        }
    );
    let mut conn = baseline.db.connect().await?;
    assert_eq!(stock_of(&mut conn, 11).await?, (8, 0, 2));
    assert_eq!(stock_of(&mut conn, 12).await?, (2, 0, 1));
    let used_by: Option<String> = user_coupons::table
        .find(31)
        .select(user_coupons::used_by_order)
        .first(&mut conn)
        .await?;
    assert_eq!(used_by.as_deref(), Some(placed.order_id.as_str()));
    let entry: (String, i64, i64) = point_ledger::table
        .filter(point_ledger::reference.eq(&placed.order_id))
        .select((
            point_ledger::kind,
            point_ledger::amount,
            point_ledger::balance_after,
        ))
        .first(&mut conn)
        .await?;
    assert_eq!(entry, ("USE".to_owned(), -3_000, 7_000));

    // The same request again is the same order, and changes nothing.
    let again = baseline
        .place("u1", &[(11, 1), (12, 1), (11, 1)], Some(31), "k1")
        .await?;
    assert_eq!(again, placed);
    assert_eq!(baseline.totals().await?, after);
    assert_status(
        baseline.place("u1", &[(11, 1)], Some(31), "k1").await,
        Code::AlreadyExists,
        "IDEMPOTENCY_KEY_REUSED",
    );

    // Input is checked by the orchestrator's rules; other RPCs are not served.
    assert_status(
        baseline.place("u1", &[(11, 0)], None, "k2").await,
        Code::InvalidArgument,
        "lines[0].quantity",
    );
    let unknown = baseline.get("u1", &uuid::Uuid::new_v4().to_string()).await;
    assert_status(unknown, Code::NotFound, "ORDER_NOT_FOUND");
    let listed = baseline
        .orders
        .clone()
        .list_orders(pb::ListOrdersRequest {
            user_id: "u1".into(),
            page: 0,
            size: 10,
        })
        .await;
    assert_eq!(listed.unwrap_err().code(), Code::Unimplemented);

    // Reset empties everything; seeding again starts over.
    reset(&baseline.db.url).await?;
    assert_eq!(baseline.totals().await?, BaselineTotals::default());
    seed(&baseline.db.url, &shop).await?;
    assert_eq!(baseline.totals().await?, seeded);
    baseline.stop().await
}

#[tokio::test]
async fn each_rejection_is_a_rejected_order_that_changes_nothing() -> anyhow::Result<()> {
    let baseline = Baseline::start("bench_reject", &small_shop()).await?;
    let mut conn = baseline.db.connect().await?;
    diesel::update(products::table.find(13))
        .set(products::status.eq("SUSPENDED"))
        .execute(&mut conn)
        .await?;
    // Coupon 31 is used by a first order (3,000 meets its minimum exactly).
    let first = baseline.place("u1", &[(11, 3)], Some(31), "first").await?;
    assert_eq!(first.state(), pb::OrderState::Confirmed);
    assert_eq!(first.points_paid, 1_500);

    // (user, lines, coupon, reason)
    type Case = (
        &'static str,
        &'static [(i64, i64)],
        Option<i64>,
        &'static str,
    );
    let cases: [Case; 9] = [
        ("u1", &[(11, 1), (99, 1)], None, "PRODUCT_NOT_FOUND"),
        ("u1", &[(13, 1)], None, "PRODUCT_NOT_ON_SALE"),
        ("u1", &[(11, 1), (12, 4)], None, "STOCK_INSUFFICIENT"),
        ("u1", &[(11, 1)], Some(31), "COUPON_ALREADY_USED"),
        ("u2", &[(11, 1)], Some(32), "COUPON_MIN_ORDER_NOT_MET"),
        ("u1", &[(11, 3)], Some(32), "USER_COUPON_NOT_FOUND"),
        ("u1", &[(11, 3)], Some(999), "USER_COUPON_NOT_FOUND"),
        ("u2", &[(11, 1)], None, "POINT_INSUFFICIENT"),
        ("ghost", &[(11, 1)], None, "POINT_INSUFFICIENT"),
    ];
    for (i, (user, lines, coupon, reason)) in cases.into_iter().enumerate() {
        let before = baseline.totals().await?;
        let key = format!("reject-{i}");
        let order = baseline.place(user, lines, coupon, &key).await?;
        assert_eq!(
            (order.state(), order.reason.as_str()),
            (pb::OrderState::Rejected, reason),
            "case {i}: {order:?}"
        );
        assert!(!order.reason_message.is_empty());
        assert_eq!(
            baseline.totals().await?,
            BaselineTotals {
                rejected_orders: before.rejected_orders + 1,
                ..before
            },
            "case {i} changed the shop"
        );
        // A rejected order is an order: asking again gives it back.
        assert_eq!(baseline.place(user, lines, coupon, &key).await?, order);
    }

    // Not enough points is found once the order is priced: like the saga,
    // the rejected order keeps its snapshot and subtotal, and pays nothing.
    let poor = baseline.place("u3", &[(11, 1)], None, "poor").await?;
    assert_eq!(poor.reason, "POINT_INSUFFICIENT");
    assert_eq!(
        (poor.subtotal, poor.discount, poor.points_paid),
        (1_000, 0, 0)
    );
    assert_eq!(poor.lines[0].product_name, "Shoe");
    // Before that point, only the requested lines are kept.
    let short = baseline.place("u1", &[(12, 9)], None, "short").await?;
    assert_eq!((short.lines[0].quantity, short.lines[0].unit_price), (9, 0));
    assert_eq!(short.subtotal, 0);

    let free: (String,) = user_coupons::table
        .find(32)
        .select((user_coupons::state,))
        .first(&mut conn)
        .await?;
    assert_eq!(free.0, "AVAILABLE");
    baseline.stop().await
}

#[tokio::test]
async fn concurrent_orders_never_oversell_and_twins_share_one_order() -> anyhow::Result<()> {
    const BUYERS: usize = 10;
    const ORDERS_EACH: usize = 4;
    const STOCK: i64 = 5;
    // A bulky shop besides the scarce product, to exercise batched seeding.
    let bulk = 2_500;
    let mut shop = small_shop();
    shop.products = vec![
        product(1, "Scarce", 100, STOCK),
        product(2, "Plenty", 10, 1_000),
    ];
    shop.products
        .extend((0..bulk).map(|i| product(1_000 + i, &format!("bulk {i}"), 100, 10)));
    shop.users = (0..BUYERS).map(|i| user(&format!("b{i}"), 1_000)).collect();
    shop.users
        .extend((0..bulk).map(|i| user(&format!("bulk{i}"), 500)));
    shop.templates[0].total_quantity = 10_000;
    shop.coupons = (0..bulk)
        .map(|i| SeededCoupon {
            id: 1_000 + i,
            template_id: 21,
            user_id: format!("bulk{i}"),
        })
        .collect();
    let started = Instant::now();
    let baseline = Baseline::start("bench_race", &shop).await?;
    eprintln!(
        "seeded {} products, {} users, {} coupons and started in {:?}",
        shop.products.len(),
        shop.users.len(),
        shop.coupons.len(),
        started.elapsed()
    );
    let seeded = baseline.totals().await?;
    assert_eq!(seeded.stock_by_product.len(), shop.products.len());

    let placing = (0..BUYERS * ORDERS_EACH).map(|k| {
        let user = format!("b{}", k % BUYERS);
        let key = format!("race-{k}");
        let baseline = &baseline;
        async move { baseline.place(&user, &[(1, 1)], None, &key).await }
    });
    let answers = futures::future::join_all(placing).await;
    let mut confirmed = 0;
    for answer in answers {
        let order = answer?;
        match order.state() {
            pb::OrderState::Confirmed => confirmed += 1,
            pb::OrderState::Rejected => assert_eq!(order.reason, "STOCK_INSUFFICIENT"),
            other => panic!("unexpected state {other:?}"),
        }
    }
    assert_eq!(confirmed, STOCK);

    // The same request sent at once many times is one order.
    let twins = (0..8).map(|_| baseline.place("b0", &[(2, 2)], None, "twin"));
    let twins = futures::future::try_join_all(twins).await?;
    assert!(twins.iter().all(|o| o.order_id == twins[0].order_id));
    assert_eq!(twins[0].state(), pb::OrderState::Confirmed);

    let after = baseline.totals().await?;
    assert_eq!(after.stock_by_product, seeded.stock_by_product);
    assert_eq!((after.sold, after.ordered_units), (STOCK + 2, STOCK + 2));
    assert_eq!(after.confirmed_orders, STOCK + 1);
    assert_eq!(after.points, seeded.points - STOCK * 100 - 20);
    assert_eq!(after.ledger_points, after.points);
    let mut conn = baseline.db.connect().await?;
    assert_eq!(stock_of(&mut conn, 1).await?, (0, 0, STOCK));
    baseline.stop().await
}
