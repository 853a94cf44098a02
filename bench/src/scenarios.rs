//! The scenarios: uniform load at fixed concurrency levels (saga and
//! baseline, pair by pair), a hot product, a flash coupon and recovery of
//! in-flight sagas after `kill -9`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use commerce_proto::coupon::v1 as coupon;
use commerce_proto::order::v1 as order;
use commerce_proto::order::v1::order_service_client::OrderServiceClient;
use commerce_proto::point::v1 as point;
use commerce_proto::product::v1 as product;
use futures::{StreamExt, stream};
use tonic::transport::Channel;

use crate::baseline;
use crate::load::{self, Outcome};
use crate::mesh::{Systems, channel};
use crate::metrics::{self, CpuSample};
use crate::model::{LevelResult, OrderSpec, ScenarioResult, Shop, System};
use crate::seed::{self, ShopSize};

/// Sizes of a run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub levels: Vec<usize>,
    pub orders_per_level: usize,
    pub shop: ShopSize,
    pub hot_stock: i64,
    pub hot_buyers: usize,
    pub flash_coupons: i64,
    pub flash_users: usize,
    pub recovery_sagas: usize,
}

/// Per-call deadline of measured orders: long enough that an answer means
/// the saga finished.
const DEADLINE: Duration = Duration::from_secs(30);

/// HTTP/2 connections the generator spreads its calls over.
const CONNECTIONS: usize = 8;

fn clients(node: &commerce_e2e::node::Node) -> Vec<OrderServiceClient<Channel>> {
    (0..CONNECTIONS)
        .map(|_| OrderServiceClient::new(channel(node)))
        .collect()
}

/// Runs one list of orders against one system and measures it.
async fn measure(
    systems: &Systems,
    server_url: &str,
    scenario: &str,
    system: System,
    orders: Vec<OrderSpec>,
    concurrency: usize,
) -> anyhow::Result<(LevelResult, Outcome)> {
    let node = match system {
        System::Saga => &systems.orchestrator,
        System::Baseline => &systems.baseline,
    };
    let clients = clients(node);
    let mut processes = systems.pids();
    if let Some(db) = metrics::database_pid() {
        processes.push(("mariadb", db));
    }
    let count = orders.len() as u64;
    let commits_before = metrics::commits(server_url).await?;
    let cpu_before = CpuSample::take(&processes);
    let outcome = load::drive(&clients, Arc::new(orders), concurrency, DEADLINE).await;
    let cpu_after = CpuSample::take(&processes);
    let commits_after = metrics::commits(server_url).await?;
    let mut cpu = cpu_before.per_order(&cpu_after, count);
    // Only the system under test (and the database and generator) count.
    cpu.retain(|name, _| match system {
        System::Saga => name != "baseline",
        System::Baseline => matches!(name.as_str(), "baseline" | "mariadb" | "generator"),
    });
    let result = LevelResult {
        scenario: scenario.to_owned(),
        system,
        concurrency,
        orders: count,
        confirmed: outcome.confirmed,
        rejected: outcome.rejected,
        failed: outcome.failed(),
        elapsed_secs: outcome.elapsed.as_secs_f64(),
        throughput: outcome.answered() as f64 / outcome.elapsed.as_secs_f64().max(1e-9),
        latency: outcome.latency(),
        latency_curve: outcome.curve(),
        commits_per_order: (commits_after.saturating_sub(commits_before)) as f64
            / count.max(1) as f64,
        cpu_secs_per_order: cpu,
    };
    tracing::info!(
        scenario,
        system = system.label(),
        concurrency,
        throughput = format!("{:.0}/s", result.throughput),
        p99_ms = format!("{:.1}", result.latency.p99),
        confirmed = result.confirmed,
        rejected = result.rejected,
        failed = result.failed,
        "level done"
    );
    Ok((result, outcome))
}

/// Orders of the uniform scenario: 1 to 3 lines over many products, one in
/// three with a coupon (each coupon used by one order), spread over users.
fn uniform_orders(shop: &Shop, count: usize, first: usize, tag: &str) -> Vec<OrderSpec> {
    let products = shop.products.len();
    let users = shop.users.len();
    (first..first + count)
        .map(|k| {
            let coupon = (k % 3 == 0).then(|| shop.coupons.get(k / 3)).flatten();
            let user_id = coupon.map_or_else(
                || shop.users[(k * 31) % users].user_id.clone(),
                |c| c.user_id.clone(),
            );
            let mut lines: Vec<(i64, i64)> = Vec::new();
            for j in 0..1 + k % 3 {
                let product = shop.products[(k * 7 + j * 13) % products].id;
                if !lines.iter().any(|(p, _)| *p == product) {
                    lines.push((product, 1 + ((k + j) % 2) as i64));
                }
            }
            OrderSpec {
                user_id,
                lines,
                user_coupon_id: coupon.map(|c| c.id),
                idempotency_key: format!("{tag}-{k}"),
            }
        })
        .collect()
}

/// Uniform load: at each level, the same orders to the saga, then to the
/// baseline.
pub async fn uniform(
    systems: &Systems,
    server_url: &str,
    baseline_url: &str,
    plan: &Plan,
) -> anyhow::Result<(Vec<LevelResult>, Option<ScenarioResult>)> {
    let shop = seed::seed(systems, plan.shop, "uniform").await?;
    baseline::seed(baseline_url, &shop).await?;
    let mut results = Vec::new();
    let mut breakdown = None;
    let mut first = 0;
    for &level in &plan.levels {
        let orders = uniform_orders(&shop, plan.orders_per_level, first, &format!("u{level}"));
        first += plan.orders_per_level;
        for system in [System::Saga, System::Baseline] {
            let log_from = metrics::log_len(systems.orchestrator.log());
            let (result, outcome) = measure(
                systems,
                server_url,
                "uniform",
                system,
                orders.clone(),
                level,
            )
            .await?;
            if system == System::Saga {
                settle(systems, &outcome).await?;
                // At the lowest level no call waits behind another.
                if breakdown.is_none() {
                    breakdown = Some(latency_breakdown(systems, log_from, &result));
                }
            }
            results.push(result);
        }
    }
    Ok((results, breakdown))
}

/// Where a saga's latency goes, from the orchestrator's per-step timing
/// events of one level: each participant call (network + the participant's
/// database) and each step-log write (the orchestrator's database).
fn latency_breakdown(systems: &Systems, log_from: u64, level: &LevelResult) -> ScenarioResult {
    let timings = metrics::step_timings(systems.orchestrator.log(), log_from);
    // Per saga, so a step only some sagas run (use_coupon) counts its share.
    let sagas = timings.get("place_order").map_or(1, |t| t.0.max(1)) as f64;
    let mut figures = BTreeMap::new();
    let (mut calls, mut writes) = (0.0, 0.0);
    for (step, (n, call, write)) in &timings {
        let n = (*n).max(1) as f64;
        figures.insert(format!("{step} call ms"), call / n);
        figures.insert(format!("{step} log write ms"), write / n);
        calls += call / sagas;
        writes += write / sagas;
    }
    figures.insert("saga mean latency ms".into(), level.latency.mean);
    figures.insert("participant calls ms per saga".into(), calls);
    figures.insert("orchestrator database ms per saga".into(), writes);
    figures.insert(
        "rest ms (gRPC in/out, scheduling, answer)".into(),
        (level.latency.mean - calls - writes).max(0.0),
    );
    ScenarioResult {
        name: "latency_breakdown".into(),
        description: format!(
            "mean time per step of one saga at {} client(s) (uniform load; use_coupon runs for a third of the orders)",
            level.concurrency
        ),
        figures,
        checks: vec![("timing events found".into(), !timings.is_empty())],
    }
}

/// Waits until every saga of the mesh is terminal (bounded).
async fn settle(systems: &Systems, _outcome: &Outcome) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut sagas = systems.sagas();
    let mut pause = Duration::from_millis(5);
    loop {
        let counts = sagas
            .count_sagas(order::CountSagasRequest {})
            .await?
            .into_inner();
        if counts.running + counts.compensating == 0 {
            return Ok(started.elapsed());
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(120),
            "sagas still unfinished after 120 s: {counts:?}"
        );
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Many buyers, one unit each, for a product with little stock.
pub async fn hot_product(
    systems: &Systems,
    server_url: &str,
    baseline_url: &str,
    plan: &Plan,
) -> anyhow::Result<(Vec<LevelResult>, ScenarioResult)> {
    let size = ShopSize {
        products: 1,
        stock_per_product: plan.hot_stock,
        users: plan.hot_buyers,
        points_per_user: 1_000_000,
        coupons: 0,
    };
    let shop = seed::seed(systems, size, "hot").await?;
    baseline::seed(baseline_url, &shop).await?;
    let product_id = shop.products[0].id;
    let orders: Vec<OrderSpec> = shop
        .users
        .iter()
        .enumerate()
        .map(|(i, u)| OrderSpec {
            user_id: u.user_id.clone(),
            lines: vec![(product_id, 1)],
            user_coupon_id: None,
            idempotency_key: format!("hot-{i}"),
        })
        .collect();
    let buyers = orders.len();
    let (saga, outcome) = measure(
        systems,
        server_url,
        "hot_product",
        System::Saga,
        orders.clone(),
        buyers,
    )
    .await?;
    let drain = outcome.elapsed + settle(systems, &outcome).await?;
    let (base, _) = measure(
        systems,
        server_url,
        "hot_product",
        System::Baseline,
        orders,
        buyers,
    )
    .await?;

    let stock = systems
        .catalog()
        .get_product(product::GetProductRequest { product_id })
        .await?
        .into_inner()
        .stock
        .unwrap_or_default();
    let balances = balances(systems, &shop).await?;
    let baseline_totals = baseline::totals(baseline_url).await?;
    let untouched = balances.values().filter(|b| **b == 1_000_000).count();
    let insufficient = outcome
        .reasons
        .get("STOCK_INSUFFICIENT")
        .copied()
        .unwrap_or(0);
    let expected_sold = plan.hot_stock.min(buyers as i64);
    let mut figures = BTreeMap::new();
    figures.insert("buyers".into(), buyers as f64);
    figures.insert("stock".into(), plan.hot_stock as f64);
    figures.insert("confirmed".into(), outcome.confirmed as f64);
    figures.insert("rejected".into(), outcome.rejected as f64);
    figures.insert("drain_secs".into(), drain.as_secs_f64());
    figures.insert("saga_p99_ms".into(), saga.latency.p99);
    figures.insert("baseline_p99_ms".into(), base.latency.p99);
    let checks = vec![
        (
            format!("exactly {expected_sold} confirmed"),
            outcome.confirmed as i64 == expected_sold,
        ),
        (
            "every other buyer rejected with STOCK_INSUFFICIENT".to_owned(),
            insufficient as usize == buyers - expected_sold as usize && outcome.failed() == 0,
        ),
        (
            "stock: sold = confirmed, nothing left reserved, never negative".to_owned(),
            stock.sold == expected_sold
                && stock.reserved == 0
                && stock.available == plan.hot_stock - expected_sold,
        ),
        (
            "rejected buyers' points fully refunded".to_owned(),
            untouched == buyers - expected_sold as usize,
        ),
        (
            format!("baseline: exactly {expected_sold} sold, points = ledger"),
            baseline_totals.sold == expected_sold
                && baseline_totals.confirmed_orders == expected_sold
                && baseline_totals.points == baseline_totals.ledger_points,
        ),
    ];
    Ok((
        vec![saga, base],
        ScenarioResult {
            name: "hot_product".into(),
            description: format!(
                "{buyers} concurrent buyers, one unit each, for a product with {} units",
                plan.hot_stock
            ),
            figures,
            checks,
        },
    ))
}

async fn balances(systems: &Systems, shop: &Shop) -> anyhow::Result<BTreeMap<String, i64>> {
    stream::iter(shop.users.iter().map(|u| u.user_id.clone()))
        .map(|user_id| {
            let mut points = systems.points();
            async move {
                let balance = points
                    .get_balance(point::GetBalanceRequest {
                        user_id: user_id.clone(),
                    })
                    .await?
                    .into_inner()
                    .balance;
                anyhow::Ok((user_id, balance))
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

/// Many users race for a small first-come coupon template.
pub async fn flash_coupon(systems: &Systems, plan: &Plan) -> anyhow::Result<ScenarioResult> {
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
    let started = Instant::now();
    let clients: Vec<_> = (0..CONNECTIONS).map(|_| systems.coupons()).collect();
    let results: Vec<(Result<(), tonic::Code>, Duration)> = stream::iter(0..users)
        .map(|i| {
            let mut client = clients[i % CONNECTIONS].clone();
            async move {
                let sent = Instant::now();
                let answer = client
                    .issue_coupon(coupon::IssueCouponRequest {
                        template_id: template.id,
                        user_id: format!("flash-user-{i}"),
                    })
                    .await;
                (answer.map(|_| ()).map_err(|s| s.code()), sent.elapsed())
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let elapsed = started.elapsed();
    let issued = results.iter().filter(|(r, _)| r.is_ok()).count();
    let sold_out = results
        .iter()
        .filter(|(r, _)| *r == Err(tonic::Code::FailedPrecondition))
        .count();
    let mut latencies: Vec<f64> = results
        .iter()
        .map(|(_, d)| d.as_secs_f64() * 1000.0)
        .collect();
    latencies.sort_by(f64::total_cmp);
    let p99 = latencies
        .get((latencies.len() as f64 * 0.99) as usize)
        .copied()
        .unwrap_or_default();
    let stored = systems
        .coupon_admin()
        .get_template(coupon::GetTemplateRequest {
            template_id: template.id,
        })
        .await?
        .into_inner();
    let mut figures = BTreeMap::new();
    figures.insert("users".into(), users as f64);
    figures.insert("quantity".into(), plan.flash_coupons as f64);
    figures.insert("issued".into(), issued as f64);
    figures.insert("elapsed_secs".into(), elapsed.as_secs_f64());
    figures.insert(
        "requests_per_sec".into(),
        users as f64 / elapsed.as_secs_f64(),
    );
    figures.insert("p99_ms".into(), p99);
    Ok(ScenarioResult {
        name: "flash_coupon".into(),
        description: format!(
            "{users} users race for a template of {} coupons ({concurrency} in flight)",
            plan.flash_coupons
        ),
        figures,
        checks: vec![
            (
                format!("exactly {} issued", plan.flash_coupons),
                issued as i64 == plan.flash_coupons && stored.issued_quantity == plan.flash_coupons,
            ),
            (
                "every other request is COUPON_SOLD_OUT".into(),
                sold_out == users - issued,
            ),
        ],
    })
}

/// `kill -9` of the orchestrator with many sagas in flight, then the time
/// from its restart until every saga is terminal. The point service is
/// paused (SIGSTOP) while the orders arrive, so that the sagas pile up
/// in flight, and resumed as the orchestrator dies.
pub async fn recovery(systems: &mut Systems, plan: &Plan) -> anyhow::Result<ScenarioResult> {
    let size = ShopSize {
        products: 50,
        stock_per_product: 100_000,
        users: plan.recovery_sagas.clamp(1, 500),
        points_per_user: 10_000_000,
        coupons: 0,
    };
    let shop = seed::seed(systems, size, "recovery").await?;
    let orders = uniform_orders(&shop, plan.recovery_sagas, 0, "recovery");
    let point_pid = systems
        .point
        .pid()
        .ok_or_else(|| anyhow::anyhow!("point service not running"))?;
    signal("STOP", point_pid)?;
    let clients = clients(&systems.orchestrator);
    // Each call gets a PENDING answer once the orchestrator's wait runs out:
    // by then its order and saga are recorded and in flight.
    let sent = load::drive(
        &clients,
        Arc::new(orders),
        plan.recovery_sagas.min(1_000),
        Duration::from_secs(3),
    )
    .await;
    // Every order recorded and its saga in flight (waiting on points).
    let mut sagas = systems.sagas();
    let in_flight = {
        let counts = sagas
            .count_sagas(order::CountSagasRequest {})
            .await?
            .into_inner();
        counts.running + counts.compensating
    };
    systems.orchestrator.kill().await;
    signal("CONT", point_pid)?;
    let restarted = Instant::now();
    systems.orchestrator.start().await;
    let serving = restarted.elapsed();
    let mut sagas = systems.sagas();
    let mut pause = Duration::from_millis(5);
    let counts = loop {
        let counts = sagas
            .count_sagas(order::CountSagasRequest {})
            .await?
            .into_inner();
        if counts.running + counts.compensating == 0 {
            break counts;
        }
        anyhow::ensure!(
            restarted.elapsed() < Duration::from_secs(300),
            "sagas still unfinished 300 s after the restart: {counts:?}"
        );
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(20));
    };
    let recovery = restarted.elapsed();
    let confirmed = confirmed_orders(systems, &shop).await?;
    let mut figures = BTreeMap::new();
    figures.insert("orders_sent".into(), plan.recovery_sagas as f64);
    figures.insert("accepted".into(), sent.answered() as f64);
    figures.insert("in_flight_at_kill".into(), in_flight as f64);
    figures.insert("restart_to_serving_secs".into(), serving.as_secs_f64());
    figures.insert("recovery_secs".into(), recovery.as_secs_f64());
    figures.insert("confirmed".into(), confirmed as f64);
    Ok(ScenarioResult {
        name: "recovery".into(),
        description: format!(
            "kill -9 of the orchestrator with {in_flight} sagas in flight; time from restart until all are terminal"
        ),
        figures,
        checks: vec![
            (
                "every saga terminal, none stuck".into(),
                counts.running + counts.compensating + counts.stuck == 0,
            ),
            (
                "every saga in flight at the kill confirmed".into(),
                confirmed == in_flight as u64,
            ),
        ],
    })
}

/// Orders of the shop's users that ended CONFIRMED.
async fn confirmed_orders(systems: &Systems, shop: &Shop) -> anyhow::Result<u64> {
    let mut total = 0;
    let mut orders = systems.orders();
    for user in &shop.users {
        let mut page = 0;
        loop {
            let listed = orders
                .list_orders(order::ListOrdersRequest {
                    user_id: user.user_id.clone(),
                    page,
                    size: 100,
                })
                .await?
                .into_inner();
            total += listed
                .orders
                .iter()
                .filter(|o| o.state == order::OrderState::Confirmed as i32)
                .count() as u64;
            if listed.orders.len() < 100 {
                break;
            }
            page += 1;
        }
    }
    Ok(total)
}

fn signal(signal: &str, pid: u32) -> anyhow::Result<()> {
    let status = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()?;
    anyhow::ensure!(status.success(), "kill -{signal} {pid} failed");
    Ok(())
}
