//! The Redis fast paths with and without Redis: one workload against a
//! server of the mesh (which has Redis), then against a second process of
//! the same server on the same database started with `--redis-url off`.
//!
//! - `flash_coupon`: many users race for a small first-come template; the
//!   coupon service's admission gate turns the losers away in Redis, before
//!   MySQL's conditional update. Exactly the template's quantity must be
//!   issued either way.
//! - `catalogue`: GetProduct and ListProducts (sorted, paged, with and
//!   without a brand) of a seeded catalogue; the product service's
//!   cache-aside answers from Redis. A sample of the cached answers must
//!   equal the uncached server's.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use commerce_e2e::node::Node;
use commerce_proto::coupon::v1 as coupon;
use commerce_proto::coupon::v1::coupon_service_client::CouponServiceClient;
use commerce_proto::product::v1 as product;
use commerce_proto::product::v1::catalog_service_client::CatalogServiceClient;
use tonic::transport::Channel;

use crate::load::{self, CallOutcome};
use crate::mesh::{Caller, Systems, channel};
use crate::metrics::{self, CpuSample};
use crate::model::{FastPathComparison, FastPathRow, ScenarioResult, Shop};
use crate::scenarios::Plan;
use crate::seed::{self, ShopSize};

/// HTTP/2 connections the generator spreads its calls over.
const CONNECTIONS: usize = 8;

/// The server a workload runs against, as the measurement names it.
struct Target<'a> {
    /// Process name in the CPU split (`coupon`, `product`).
    process: &'static str,
    node: &'a Node,
    redis: bool,
}

/// Runs `count` calls, `concurrency` in flight, against `target` and
/// measures them: throughput, latency, MariaDB's counters and the CPU of
/// the server, MariaDB and Redis, per call. Error answers with a code in
/// `expected` are answers like any other; the rest count as errors.
async fn measure_calls<F, Fut>(
    server_url: &str,
    target: &Target<'_>,
    count: usize,
    concurrency: usize,
    expected: &[tonic::Code],
    call: F,
) -> anyhow::Result<(FastPathRow, CallOutcome)>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), tonic::Status>> + Send,
{
    let mut processes: Vec<(&str, u32)> = target
        .node
        .pid()
        .map(|pid| (target.process, pid))
        .into_iter()
        .collect();
    processes.extend(metrics::database_pid().map(|pid| ("mariadb", pid)));
    processes.extend(metrics::redis_pid().map(|pid| ("redis", pid)));
    let mut counters = metrics::DbCounterReader::connect(server_url).await?;
    let db_before = counters.read().await?;
    let cpu_before = CpuSample::take(&processes);
    let outcome = load::drive_calls(count, concurrency, call).await;
    let cpu_after = CpuSample::take(&processes);
    let db_after = counters.read().await?;
    let calls = outcome.calls();
    let unexpected = outcome.calls()
        - outcome.ok
        - expected
            .iter()
            .map(|code| outcome.errors_of(*code))
            .sum::<u64>();
    let row = FastPathRow {
        redis: target.redis,
        concurrency,
        calls,
        errors: unexpected,
        elapsed_secs: outcome.elapsed.as_secs_f64(),
        throughput: calls as f64 / outcome.elapsed.as_secs_f64().max(1e-9),
        latency: outcome.latency(),
        db_per_call: counters.per_order(&db_before, &db_after, calls),
        cpu_secs_per_call: cpu_before.per_order(&cpu_after, calls),
    };
    tracing::info!(
        server = target.process,
        redis = target.redis,
        concurrency,
        throughput = format!("{:.0}/s", row.throughput),
        p99_ms = format!("{:.1}", row.latency.p99),
        errors = row.errors,
        "fast path measured"
    );
    Ok((row, outcome))
}

// ------------------------------------------------------------ flash coupon

/// One race for one template.
struct FlashRound {
    row: FastPathRow,
    issued: u64,
    sold_out: u64,
    /// The template's `issued_quantity` after the race.
    stored_issued: i64,
}

/// Many users race for a small first-come coupon template, on the coupon
/// server with its Redis gate, then on one without Redis (a template each).
pub async fn flash_coupon(
    systems: &Systems,
    server_url: &str,
    plan: &Plan,
) -> anyhow::Result<(ScenarioResult, FastPathComparison)> {
    let with = flash_round(
        systems,
        server_url,
        plan,
        &Target {
            process: "coupon",
            node: &systems.coupon,
            redis: true,
        },
    )
    .await?;
    let mut without_redis = systems.start_without_redis("coupon").await;
    let without = flash_round(
        systems,
        server_url,
        plan,
        &Target {
            process: "coupon",
            node: &without_redis,
            redis: false,
        },
    )
    .await;
    without_redis.kill().await;
    let without = without?;

    let users = plan.flash_users;
    let quantity = plan.flash_coupons;
    let mut figures = BTreeMap::new();
    figures.insert("users".into(), users as f64);
    figures.insert("quantity".into(), quantity as f64);
    for (side, round) in [("", &with), ("without Redis: ", &without)] {
        figures.insert(format!("{side}issued"), round.issued as f64);
        figures.insert(format!("{side}elapsed_secs"), round.row.elapsed_secs);
        figures.insert(format!("{side}requests_per_sec"), round.row.throughput);
        figures.insert(format!("{side}p50_ms"), round.row.latency.p50);
        figures.insert(format!("{side}p99_ms"), round.row.latency.p99);
        if let Some(statements) = round.row.db_per_call.get("Questions") {
            figures.insert(format!("{side}statements_per_request"), *statements);
        }
    }
    let mut checks = Vec::new();
    for (side, round) in [("with Redis", &with), ("without Redis", &without)] {
        checks.push((
            format!("{side}: exactly {quantity} issued"),
            round.issued as i64 == quantity && round.stored_issued == quantity,
        ));
        checks.push((
            format!("{side}: every other request is COUPON_SOLD_OUT"),
            round.sold_out == users as u64 - round.issued && round.row.errors == 0,
        ));
    }
    let concurrency = with.row.concurrency;
    let description = format!(
        "{users} users race for a template of {quantity} coupons ({concurrency} in flight), \
         on the coupon server with its Redis gate, then on one without Redis (same database, \
         a template each)"
    );
    Ok((
        ScenarioResult {
            name: "flash_coupon".into(),
            description: description.clone(),
            figures,
            checks,
        },
        FastPathComparison {
            name: "flash_coupon".into(),
            description,
            unit: "request".into(),
            rows: vec![with.row, without.row],
        },
    ))
}

async fn flash_round(
    systems: &Systems,
    server_url: &str,
    plan: &Plan,
    target: &Target<'_>,
) -> anyhow::Result<FlashRound> {
    let now = SystemTime::now();
    let template = systems
        .coupon_admin()
        .create_template(coupon::CreateTemplateRequest {
            name: "flash: 5,000 off".into(),
            kind: coupon::DiscountKind::Fixed as i32,
            value: 5_000,
            max_discount: None,
            min_order_amount: 0,
            valid_from: Some((now - Duration::from_secs(60)).into()),
            valid_until: Some((now + Duration::from_secs(86_400)).into()),
            total_quantity: plan.flash_coupons,
        })
        .await?
        .into_inner();
    let users = plan.flash_users;
    let concurrency = users.min(1_000);
    let clients: Arc<Vec<CouponServiceClient<Channel>>> = Arc::new(
        (0..CONNECTIONS)
            .map(|_| CouponServiceClient::new(channel(target.node, Caller::Bff)))
            .collect(),
    );
    let template_id = template.id;
    let (row, outcome) = measure_calls(
        server_url,
        target,
        users,
        concurrency,
        &[tonic::Code::FailedPrecondition],
        move |i| {
            let mut client = clients[i % clients.len()].clone();
            async move {
                client
                    .issue_coupon(coupon::IssueCouponRequest {
                        template_id,
                        user_id: format!("flash-user-{i}"),
                    })
                    .await
                    .map(|_| ())
            }
        },
    )
    .await?;
    let stored = systems
        .coupon_admin()
        .get_template(coupon::GetTemplateRequest { template_id })
        .await?
        .into_inner();
    Ok(FlashRound {
        row,
        issued: outcome.ok,
        sold_out: outcome.errors_of(tonic::Code::FailedPrecondition),
        stored_issued: stored.issued_quantity,
    })
}

// --------------------------------------------------------------- catalogue

/// One catalogue read.
#[derive(Debug, Clone)]
enum Read {
    Product(i64),
    Page(product::ListProductsRequest),
}

/// Products per page of the catalogue's list reads.
const PAGE_SIZE: i32 = 20;
/// Pages the list reads spread over (the first ones, as shoppers read).
const PAGES: usize = 5;
/// Reads whose answers are compared between the two servers.
const SAMPLED: usize = 50;

/// splitmix64: a deterministic spread of read `k` over the catalogue.
fn spread(k: usize) -> u64 {
    let mut z = (k as u64).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Read `k` of the mix: seven in ten a GetProduct of a product of `shop`,
/// the rest a ListProducts page (one of the first [`PAGES`], one of the
/// three sorts, of the shop's brand or of every brand).
fn catalogue_read(shop: &Shop, k: usize) -> Read {
    let r = spread(k);
    let products = shop.products.len().max(1);
    if r % 10 < 7 {
        let index = (r >> 8) as usize % products;
        return Read::Product(shop.products.get(index).map_or(0, |p| p.id));
    }
    let sorts = [
        product::ProductSort::Latest,
        product::ProductSort::PriceAsc,
        product::ProductSort::LikesDesc,
    ];
    let pages = products.div_ceil(PAGE_SIZE as usize).clamp(1, PAGES);
    Read::Page(product::ListProductsRequest {
        brand_id: ((r >> 4) & 1 == 0).then_some(shop.brand.id),
        sort: sorts[(r >> 5) as usize % sorts.len()] as i32,
        page: ((r >> 12) as usize % pages) as i32,
        size: PAGE_SIZE,
    })
}

/// A read's answer, comparable between servers.
#[derive(Debug, PartialEq)]
enum Answer {
    Product(product::Product),
    Page(product::ListProductsResponse),
}

async fn answer(
    client: &mut CatalogServiceClient<Channel>,
    read: &Read,
) -> Result<Answer, tonic::Status> {
    Ok(match read {
        Read::Product(product_id) => Answer::Product(
            client
                .get_product(product::GetProductRequest {
                    product_id: *product_id,
                })
                .await?
                .into_inner(),
        ),
        Read::Page(request) => Answer::Page(client.list_products(*request).await?.into_inner()),
    })
}

/// Catalogue reads at each of the plan's levels, on the product server
/// without Redis then with it (the same reads, after a warm-up of each);
/// then a sample of reads answered by both and compared.
pub async fn catalogue(
    systems: &Systems,
    server_url: &str,
    plan: &Plan,
) -> anyhow::Result<(ScenarioResult, FastPathComparison)> {
    let size = ShopSize {
        products: plan.shop.products,
        stock_per_product: 1_000,
        users: 0,
        points_per_user: 0,
        coupons: 0,
    };
    let shop = seed::seed(systems, size, "catalogue").await?;
    let mut without_redis = systems.start_without_redis("product").await;
    let outcome = catalogue_rounds(systems, &without_redis, server_url, plan, &shop).await;
    without_redis.kill().await;
    let (rows, mismatches, sampled) = outcome?;

    let reads = plan.catalogue_reads;
    let errors: u64 = rows.iter().map(|r| r.errors).sum();
    let mut figures = BTreeMap::new();
    figures.insert("products".into(), shop.products.len() as f64);
    figures.insert("reads per level and server".into(), reads as f64);
    figures.insert("sampled reads compared".into(), sampled.len() as f64);
    figures.insert("mismatches".into(), mismatches.len() as f64);
    let description = format!(
        "{reads} catalogue reads per level (7 in 10 GetProduct of one of {} products, the \
         rest ListProducts pages of {PAGE_SIZE}, three sorts, with and without a brand), on \
         the product server with its Redis cache, then on one without Redis (same database)",
        shop.products.len()
    );
    Ok((
        ScenarioResult {
            name: "catalogue".into(),
            description: description.clone(),
            figures,
            checks: vec![
                (
                    "every read answered, with and without Redis".into(),
                    errors == 0,
                ),
                (
                    format!(
                        "{} sampled reads: the cached server's answers equal the uncached \
                         server's, and products their seeded name and price{}",
                        sampled.len(),
                        mismatches
                            .first()
                            .map(|m| format!(" (first mismatch: {m})"))
                            .unwrap_or_default()
                    ),
                    mismatches.is_empty() && !sampled.is_empty(),
                ),
            ],
        },
        FastPathComparison {
            name: "catalogue".into(),
            description,
            unit: "read".into(),
            rows,
        },
    ))
}

/// The measured rounds (rows), then the comparison of a sample of reads:
/// (rows, mismatches, reads compared).
async fn catalogue_rounds(
    systems: &Systems,
    without_redis: &Node,
    server_url: &str,
    plan: &Plan,
    shop: &Shop,
) -> anyhow::Result<(Vec<FastPathRow>, Vec<String>, Vec<Read>)> {
    let count = plan.catalogue_reads;
    let mut rows = Vec::new();
    for (n, &level) in plan.levels.iter().enumerate() {
        let reads: Arc<Vec<Read>> = Arc::new(
            (0..count)
                .map(|k| catalogue_read(shop, n * count + k))
                .collect(),
        );
        for (redis, node) in [(false, without_redis), (true, &systems.product)] {
            let target = Target {
                process: "product",
                node,
                redis,
            };
            let clients: Arc<Vec<CatalogServiceClient<Channel>>> = Arc::new(
                (0..CONNECTIONS)
                    .map(|_| CatalogServiceClient::new(channel(node, Caller::Bff)))
                    .collect(),
            );
            let reads = Arc::clone(&reads);
            let call = move |i: usize| {
                let mut client = clients[i % clients.len()].clone();
                let reads = Arc::clone(&reads);
                async move {
                    answer(&mut client, &reads[i % reads.len()])
                        .await
                        .map(|_| ())
                }
            };
            // Connections open, pools and (with Redis) the cache filled.
            load::drive_calls(count.div_ceil(5), level, call.clone()).await;
            let (row, _) = measure_calls(server_url, &target, count, level, &[], call).await?;
            rows.push(row);
        }
    }

    let sampled: Vec<Read> = (0..SAMPLED)
        .map(|k| catalogue_read(shop, k * 7_919))
        .collect();
    let prices: BTreeMap<i64, (&str, i64)> = shop
        .products
        .iter()
        .map(|p| (p.id, (p.name.as_str(), p.price)))
        .collect();
    let mut cached = systems.catalog();
    let mut uncached = CatalogServiceClient::new(channel(without_redis, Caller::Bff));
    let mut mismatches = Vec::new();
    for read in &sampled {
        // The first read may fill the cache; the second is then a hit.
        let first = answer(&mut cached, read).await?;
        let hit = answer(&mut cached, read).await?;
        let truth = answer(&mut uncached, read).await?;
        if first != truth || hit != truth {
            mismatches.push(format!("{read:?}: cached {hit:?}, uncached {truth:?}"));
        }
        if let Answer::Product(p) = &truth
            && prices.get(&p.id) != Some(&(p.name.as_str(), p.price))
        {
            mismatches.push(format!("product {} is not as seeded: {p:?}", p.id));
        }
    }
    Ok((rows, mismatches, sampled))
}
