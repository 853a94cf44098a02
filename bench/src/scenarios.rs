//! The scenarios: uniform load at fixed concurrency levels (saga and
//! baseline, pair by pair), the uniform load on several orchestrator
//! instances, a hot product, a flash coupon and recovery of in-flight sagas
//! after `kill -9`. Every scenario that places orders ends with a
//! reconciliation of its shop (`reconcile`).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use commerce_proto::order::v1 as order;
use commerce_proto::order::v1::order_service_client::OrderServiceClient;
use commerce_proto::point::v1 as point;
use commerce_proto::product::v1 as product;
use commerce_testkit::metrics::Exposition;
use futures::{StreamExt, stream};
use tonic::transport::Channel;

use crate::baseline;
use crate::load::{self, Outcome};
use crate::mesh::{Caller, Systems, channel};
use crate::metrics::{self, CpuSample};
use crate::model::{LevelResult, OrderSpec, OutboxLag, ScenarioResult, Shop, System};
use crate::outbox::{self, EventStream};
use crate::reconcile;
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
    /// Catalogue reads per level and server (the `catalogue` scenario).
    pub catalogue_reads: usize,
    pub recovery_sagas: usize,
    /// Orchestrator instances of the `instances` scenario (1 first, the
    /// reference).
    pub instance_counts: Vec<usize>,
    /// Concurrency levels of the `instances` scenario.
    pub instance_levels: Vec<usize>,
}

/// Per-call deadline of measured orders: long enough that an answer means
/// the saga finished.
const DEADLINE: Duration = Duration::from_secs(30);

/// HTTP/2 connections the generator spreads its calls over.
const CONNECTIONS: usize = 8;

fn clients(node: &commerce_e2e::node::Node) -> Vec<OrderServiceClient<Channel>> {
    clients_over(&[node])
}

/// [`CONNECTIONS`] connections to each of `nodes`, interleaved, so that the
/// generator's clients (client `w` takes connection `w % len`) spread
/// round-robin over the nodes.
fn clients_over(nodes: &[&commerce_e2e::node::Node]) -> Vec<OrderServiceClient<Channel>> {
    (0..CONNECTIONS)
        .flat_map(|_| {
            nodes
                .iter()
                .map(|n| OrderServiceClient::new(channel(n, Caller::Bff)))
        })
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
    let nodes = match system {
        System::Saga => systems.orchestrators(),
        System::Dtm => vec![&systems.dtm.node],
        System::Baseline => vec![&systems.baseline],
    };
    let clients = clients_over(&nodes);
    let mut processes = systems.pids();
    if let Some(db) = metrics::database_pid() {
        processes.push(("mariadb", db));
    }
    let count = orders.len() as u64;
    let mut counters = metrics::DbCounterReader::connect(server_url).await?;
    let db_before = counters.read().await?;
    let cpu_before = CpuSample::take(&processes);
    let outcome = match system {
        System::Dtm => {
            let client = &systems.dtm.client;
            client.drive(Arc::new(orders), concurrency, DEADLINE).await
        }
        _ => load::drive(&clients, Arc::new(orders), concurrency, DEADLINE).await,
    };
    let cpu_after = CpuSample::take(&processes);
    let db_after = counters.read().await?;
    let db = counters.per_order(&db_before, &db_after, count);
    let mut cpu = cpu_before.per_order(&cpu_after, count);
    // Only the system under test (and the database and generator) count.
    cpu.retain(|name, _| match system {
        System::Saga => !matches!(name.as_str(), "baseline" | "dtm"),
        System::Dtm => !(name == "baseline" || name.starts_with("orchestrator")),
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
        commits_per_order: db.get("Com_commit").copied().unwrap_or_default(),
        cpu_secs_per_order: cpu,
        db_per_order: db,
        instances: nodes.len(),
        transport: systems.transport(),
    };
    tracing::info!(
        scenario,
        system = system.label(),
        concurrency,
        throughput = format!("{:.0}/s", result.throughput),
        p99_ms = format!("{:.1}", result.latency.p99),
        instances = result.instances,
        statements = format!(
            "{:.1}",
            result
                .db_per_order
                .get("Questions")
                .copied()
                .unwrap_or_default()
        ),
        confirmed = result.confirmed,
        rejected = result.rejected,
        failed = result.failed,
        "level done"
    );
    Ok((result, outcome))
}

/// An order of `shop`'s first user that costs more than the points the user
/// was seeded with (the dearest products, half their stock each), within
/// what the point service accepts as one deduction; `None` when the shop
/// is too small for one.
fn unpayable_order(shop: &Shop, key: &str) -> Option<OrderSpec> {
    let user = shop.users.first()?;
    let mut products: Vec<_> = shop.products.iter().collect();
    products.sort_by_key(|p| std::cmp::Reverse(p.price));
    let (mut lines, mut cost) = (Vec::new(), 0i64);
    for product in products {
        if cost > user.points {
            break;
        }
        let quantity = (product.stock / 2).min(1_000);
        if quantity > 0 {
            lines.push((product.id, quantity));
            cost = cost.saturating_add(product.price.saturating_mul(quantity));
        }
    }
    (cost > user.points && cost <= 1_000_000_000).then(|| OrderSpec {
        user_id: user.user_id.clone(),
        lines,
        user_coupon_id: None,
        idempotency_key: key.to_owned(),
    })
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

/// What the uniform scenario found: its levels, its latency breakdown,
/// reconciliation and dtm comparison, and the outbox's lag at each saga
/// level.
pub struct Uniform {
    pub levels: Vec<LevelResult>,
    pub scenarios: Vec<ScenarioResult>,
    pub outbox_lag: Vec<OutboxLag>,
}

/// Uniform load: at each level, the same orders to the saga, then to the
/// baseline (and dtm). After each saga level, the outbox relay's lag
/// (`outbox`); at the end, every order reconciled and every confirmed or
/// rejected one found in the order event stream.
pub async fn uniform(
    systems: &Systems,
    server_url: &str,
    baseline_url: &str,
    plan: &Plan,
) -> anyhow::Result<Uniform> {
    let shop = seed::seed(systems, plan.shop, "uniform").await?;
    baseline::seed(baseline_url, &shop).await?;
    // dtm places the same orders in a shop of its own (same sizes, prices
    // and coupons) on the same participants.
    let dtm_shop = seed::seed(systems, plan.shop, "uniform-dtm").await?;
    let mut dtm_placed = Vec::new();
    let mut results = Vec::new();
    let mut breakdown = None;
    let mut events = EventStream::connect(&systems.redis).await?;
    let mut outbox_lag = Vec::new();
    let mut with_events = HashSet::new();
    let mut first = 0;
    for &level in &plan.levels {
        let orders = uniform_orders(&shop, plan.orders_per_level, first, &format!("u{level}"));
        let dtm_orders = uniform_orders(
            &dtm_shop,
            plan.orders_per_level,
            first,
            &format!("d{level}"),
        );
        first += plan.orders_per_level;
        for system in [System::Saga, System::Baseline, System::Dtm] {
            let timings_from = metrics::orchestrator_metrics(systems).await?;
            let orders = match system {
                System::Dtm => dtm_orders.clone(),
                _ => orders.clone(),
            };
            let stream_from = events.last_id().await?;
            let (result, outcome) =
                measure(systems, server_url, "uniform", system, orders, level).await?;
            if system == System::Dtm {
                dtm_placed.extend(systems.dtm.settle().await?);
            }
            if system == System::Saga {
                let load_ended = Instant::now();
                let pending_after_load = outbox::pending(systems).await?;
                let drained = outbox::wait_drained(systems, load_ended).await?;
                let drain = load_ended.elapsed();
                settle(systems, &outcome).await?;
                // Sagas that ended after their call's deadline published later.
                let drained = drained && outbox::wait_drained(systems, Instant::now()).await?;
                let published = events.read_after(&stream_from).await?;
                let lag = outbox::LevelEvents {
                    concurrency: level,
                    orders: result.orders,
                    pending_after_load,
                    drain,
                    drained,
                }
                .summary(&published);
                tracing::info!(
                    concurrency = level,
                    pending_after_load,
                    drain_ms = drain.as_millis() as u64,
                    events = lag.events,
                    lag_p99_ms = format!("{:.1}", lag.lag_p99_ms),
                    "outbox drained"
                );
                outbox_lag.push(lag);
                with_events.extend(outbox::orders_with_events(&published));
                // At the lowest level no call waits behind another.
                if breakdown.is_none() {
                    let timings_to = metrics::orchestrator_metrics(systems).await?;
                    breakdown = Some(latency_breakdown(
                        timings_from.as_ref(),
                        timings_to.as_ref(),
                        &result,
                    ));
                }
            }
            results.push(result);
        }
    }
    // Every uniform order confirms, so dtm's compensation path runs here
    // once: an order its user cannot pay, whose deduction is refused after
    // its stock was reserved. dtm must end it rejected with the reservation
    // released; the reconciliation below checks that nothing of it is left.
    let mut dtm_compensation = None;
    if let Some(unpayable) = unpayable_order(&dtm_shop, "dtm-unpayable") {
        systems
            .dtm
            .client
            .drive(Arc::new(vec![unpayable]), 1, DEADLINE)
            .await;
        let ended = systems.dtm.settle().await?;
        dtm_compensation = Some(
            !ended.is_empty()
                && ended
                    .iter()
                    .all(|p| p.ending == crate::dtm::client::Ending::Rejected),
        );
        dtm_placed.extend(ended);
    }
    let placed = plan.orders_per_level * plan.levels.len();
    let books = reconcile::mesh_books(systems, &shop).await?;
    let mut saga = reconcile::check("saga", &shop, &books, Some(placed)).checks;
    saga.push(reconcile::events_published(&books, &with_events));
    let mut checks = prefixed("saga", saga);
    checks.extend(reconcile_baseline(baseline_url, &shop, Some(placed)).await?);
    checks.extend(crate::dtm::check::reconcile(systems, &dtm_shop, &dtm_placed).await?);
    if let Some(compensated) = dtm_compensation {
        checks.push((
            "dtm: an order its user cannot pay ends rejected (its reservation compensated)".into(),
            compensated,
        ));
    }
    let reconciliation = reconciliation("uniform", &shop, checks);
    let peer = crate::dtm::report::peer("uniform", &results, &systems.dtm);
    Ok(Uniform {
        levels: results,
        scenarios: breakdown
            .into_iter()
            .chain([reconciliation])
            .chain(peer)
            .collect(),
        outbox_lag,
    })
}

/// The saga mesh's books for `shop` checked (see `reconcile`), each check
/// named "saga: ...".
pub async fn reconcile_saga(
    systems: &Systems,
    shop: &Shop,
    placed: Option<usize>,
) -> anyhow::Result<Vec<(String, bool)>> {
    let books = reconcile::mesh_books(systems, shop).await?;
    Ok(prefixed(
        "saga",
        reconcile::check("saga", shop, &books, placed).checks,
    ))
}

/// The baseline's books (it holds the scenario's shop only) checked, each
/// check named "baseline: ...".
pub async fn reconcile_baseline(
    baseline_url: &str,
    shop: &Shop,
    placed: Option<usize>,
) -> anyhow::Result<Vec<(String, bool)>> {
    let books = reconcile::baseline_books(baseline_url).await?;
    Ok(prefixed(
        "baseline",
        reconcile::check("baseline", shop, &books, placed).checks,
    ))
}

fn prefixed(system: &str, checks: Vec<(String, bool)>) -> Vec<(String, bool)> {
    checks
        .into_iter()
        .map(|(check, held)| (format!("{system}: {check}"), held))
        .collect()
}

/// The reconciliation of one scenario as a result of its own.
fn reconciliation(scenario: &str, shop: &Shop, checks: Vec<(String, bool)>) -> ScenarioResult {
    let mut figures = BTreeMap::new();
    figures.insert("products".into(), shop.products.len() as f64);
    figures.insert("users".into(), shop.users.len() as f64);
    figures.insert("coupons".into(), shop.coupons.len() as f64);
    ScenarioResult {
        name: format!("reconcile_{scenario}"),
        description: format!(
            "after the {scenario} scenario, each system's orders set against the stock, points \
             and coupons of the scenario's shop (rules in bench/src/reconcile.rs)"
        ),
        figures,
        checks,
    }
}

/// The uniform load on 1, 2, 4, ... orchestrator instances sharing one
/// database (each its own process and instance id, the same participants),
/// the generator's clients spread round-robin over them. Saga only; on a
/// shop of its own, reconciled at the end.
pub async fn instances(
    systems: &mut Systems,
    server_url: &str,
    plan: &Plan,
) -> anyhow::Result<(Vec<LevelResult>, ScenarioResult)> {
    let measured = plan.instance_counts.len() * plan.instance_levels.len() * plan.orders_per_level;
    let size = ShopSize {
        coupons: measured.div_ceil(3),
        ..plan.shop
    };
    let shop = seed::seed(systems, size, "instances").await?;
    let mut results = Vec::new();
    let mut first = 0;
    // Warm-up orders come after every measured one: no coupon left for them.
    let mut warm = measured;
    let mut placed = 0;
    let outcome = async {
        for &count in &plan.instance_counts {
            systems.set_orchestrators(count).await?;
            for &level in &plan.instance_levels {
                // New instances start with empty pools: a few orders first.
                let warm_up = uniform_orders(&shop, level * 2, warm, &format!("iw{count}x{level}"));
                warm += warm_up.len();
                placed += warm_up.len();
                let clients = clients_over(&systems.orchestrators());
                let outcome = load::drive(&clients, Arc::new(warm_up), level, DEADLINE).await;
                settle(systems, &outcome).await?;

                let orders = uniform_orders(
                    &shop,
                    plan.orders_per_level,
                    first,
                    &format!("i{count}x{level}"),
                );
                first += plan.orders_per_level;
                placed += orders.len();
                let (result, outcome) = measure(
                    systems,
                    server_url,
                    "instances",
                    System::Saga,
                    orders,
                    level,
                )
                .await?;
                settle(systems, &outcome).await?;
                results.push(result);
            }
        }
        anyhow::Ok(())
    }
    .await;
    systems.set_orchestrators(1).await?;
    outcome?;
    let checks = reconcile_saga(systems, &shop, Some(placed)).await?;
    Ok((results, reconciliation("instances", &shop, checks)))
}

/// Where a saga's latency goes, from the orchestrator's step metrics before
/// and after one level: each participant call (network + the participant's
/// database) and each step-log write (the orchestrator's database).
fn latency_breakdown(
    before: Option<&Exposition>,
    after: Option<&Exposition>,
    level: &LevelResult,
) -> ScenarioResult {
    let timings = match (before, after) {
        (Some(before), Some(after)) => metrics::step_timings(before, after),
        _ => BTreeMap::new(),
    };
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
        // Without metrics (`BENCH_METRICS=off`) there is nothing to find.
        checks: match before {
            Some(_) => vec![("step timings found".into(), !timings.is_empty())],
            None => Vec::new(),
        },
    }
}

/// Waits until every saga of the mesh is terminal (bounded).
async fn settle(systems: &Systems, _outcome: &Outcome) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut pause = Duration::from_millis(5);
    loop {
        let counts = count_sagas(systems).await?;
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

/// The orchestrator's saga counts. An orchestrator busy with thousands of
/// sagas may answer UNAVAILABLE (its database pool exhausted) or late: such
/// an answer is retried for up to [`COUNT_PATIENCE`].
async fn count_sagas(systems: &Systems) -> anyhow::Result<order::CountSagasResponse> {
    let started = Instant::now();
    let mut sagas = systems.sagas();
    loop {
        let mut request = tonic::Request::new(order::CountSagasRequest {});
        request.set_timeout(Duration::from_secs(5));
        match sagas.count_sagas(request).await {
            Ok(counts) => return Ok(counts.into_inner()),
            Err(status)
                if matches!(
                    status.code(),
                    tonic::Code::Unavailable
                        | tonic::Code::DeadlineExceeded
                        | tonic::Code::Cancelled
                        | tonic::Code::ResourceExhausted
                ) && started.elapsed() < COUNT_PATIENCE =>
            {
                tracing::debug!(%status, "CountSagas failed; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(status) => return Err(status.into()),
        }
    }
}

/// How long [`count_sagas`] retries.
const COUNT_PATIENCE: Duration = Duration::from_secs(60);

/// Places every order, `concurrency` calls at a time, each with `deadline`;
/// a call that gets no answer (the orchestrator overloaded) is sent again
/// with the same idempotency key (an order is recorded once), up to
/// [`PLACE_ATTEMPTS`] times. An answer (PENDING, or an outcome) means the
/// order and its saga are recorded. Returns (orders answered, calls
/// retried, orders never answered).
async fn place_all(
    clients: &[OrderServiceClient<Channel>],
    orders: Vec<OrderSpec>,
    concurrency: usize,
    deadline: Duration,
) -> (u64, u64, u64) {
    let results: Vec<(bool, u64)> = stream::iter(orders.into_iter().enumerate())
        .map(|(i, spec)| {
            let mut client = clients[i % clients.len()].clone();
            async move {
                for attempt in 0..PLACE_ATTEMPTS {
                    let mut request = tonic::Request::new(order::PlaceOrderRequest {
                        user_id: spec.user_id.clone(),
                        lines: spec
                            .lines
                            .iter()
                            .map(|&(product_id, quantity)| order::OrderLineRequest {
                                product_id,
                                quantity,
                            })
                            .collect(),
                        user_coupon_id: spec.user_coupon_id,
                        idempotency_key: spec.idempotency_key.clone(),
                    });
                    request.set_timeout(deadline);
                    if client.place_order(request).await.is_ok() {
                        return (true, attempt);
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                (false, PLACE_ATTEMPTS)
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let answered = results.iter().filter(|(ok, _)| *ok).count() as u64;
    let retried = results.iter().map(|(_, r)| r).sum();
    (answered, retried, results.len() as u64 - answered)
}

/// Calls [`place_all`] makes per order at most.
const PLACE_ATTEMPTS: u64 = 20;

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
    let mut checks = vec![
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
    checks.extend(reconcile_saga(systems, &shop, Some(buyers)).await?);
    checks.extend(reconcile_baseline(baseline_url, &shop, Some(buyers)).await?);
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
    // While the sagas pile up, the orchestrator waits on the paused point
    // service instead of timing out every 3 s and retrying, and its recovery
    // loop does not take over its own sagas whose leases expire meanwhile
    // (leases are the ordinary 10 s): with thousands of sagas, those retries
    // and takeovers (each a step-log write) exhaust its database pool and
    // slow the recording of new orders to a crawl. The restart after the
    // kill has the ordinary settings: what is measured is the ordinary
    // recovery. (Every saga is terminal here, so this restart loses
    // nothing.)
    systems
        .restart_orchestrator_with(&[
            ("CALL_TIMEOUT_MS", PILE_UP_PATIENCE_MS),
            ("RECOVERY_INTERVAL_MS", PILE_UP_PATIENCE_MS),
        ])
        .await;
    let point_pid = systems
        .point
        .pid()
        .ok_or_else(|| anyhow::anyhow!("point service not running"))?;
    signal("STOP", point_pid)?;
    let clients = clients(&systems.orchestrator);
    // Each call gets a PENDING answer once the orchestrator's wait runs out
    // (just before the call's deadline): by then its order and saga are
    // recorded and in flight. A short wait keeps the calls moving, so that
    // many sagas pile up quickly.
    let sending = Instant::now();
    let (accepted, retried, unanswered) = place_all(
        &clients,
        orders,
        plan.recovery_sagas.min(RECOVERY_SENDERS),
        RECOVERY_SEND_DEADLINE,
    )
    .await;
    let send_secs = sending.elapsed().as_secs_f64();
    // Every order recorded and its saga in flight (waiting on points).
    let in_flight = {
        let counts = count_sagas(systems).await?;
        counts.running + counts.compensating
    };
    tracing::info!(
        in_flight,
        accepted,
        retried,
        unanswered,
        send_secs,
        "recovery: killing the orchestrator"
    );
    systems.orchestrator.kill().await;
    signal("CONT", point_pid)?;
    let restarted = Instant::now();
    systems.orchestrator.start().await;
    let serving = restarted.elapsed();
    let mut pause = Duration::from_millis(5);
    let mut terminal_within_10s = None;
    let mut progress_logged = Instant::now();
    let counts = loop {
        let counts = count_sagas(systems).await?;
        let unfinished = counts.running + counts.compensating;
        if terminal_within_10s.is_none() && restarted.elapsed() >= Duration::from_secs(10) {
            terminal_within_10s = Some(in_flight - unfinished);
        }
        if progress_logged.elapsed() >= Duration::from_secs(1) {
            progress_logged = Instant::now();
            tracing::info!(
                secs = restarted.elapsed().as_secs_f64(),
                unfinished,
                "recovery: sagas still in flight"
            );
        }
        if unfinished == 0 {
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
    figures.insert("accepted".into(), accepted as f64);
    figures.insert("send_secs".into(), send_secs);
    figures.insert("send_calls_retried".into(), retried as f64);
    figures.insert("in_flight_at_kill".into(), in_flight as f64);
    figures.insert("restart_to_serving_secs".into(), serving.as_secs_f64());
    figures.insert("recovery_secs".into(), recovery.as_secs_f64());
    figures.insert(
        "terminal_within_10s_of_restart".into(),
        terminal_within_10s.unwrap_or(in_flight) as f64,
    );
    figures.insert("confirmed".into(), confirmed as f64);
    let reconciled = reconcile_saga(systems, &shop, None).await?;
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
                "every order placed and in flight at the kill".into(),
                in_flight as usize == plan.recovery_sagas,
            ),
            (
                "every saga in flight at the kill confirmed".into(),
                confirmed == in_flight as u64,
            ),
        ]
        .into_iter()
        .chain(reconciled)
        .collect(),
    })
}

/// Call timeout and recovery interval of the orchestrator while the
/// recovery scenario's sagas pile up (ms): longer than the pile-up takes.
const PILE_UP_PATIENCE_MS: &str = "300000";

/// Clients placing the recovery scenario's orders at once.
const RECOVERY_SENDERS: usize = 1_000;
/// Deadline of each of those calls: the orchestrator answers PENDING just
/// before it, the saga recorded and in flight.
const RECOVERY_SEND_DEADLINE: Duration = Duration::from_secs(2);

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
