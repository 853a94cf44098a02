//! Reconciliation after every scenario: the orders a system recorded set
//! against the stock, points and coupons of the shop the scenario seeded,
//! so that a benchmark run that lost or doubled anything fails.
//!
//! The saga mesh is read through its public gRPC reads (`ListOrders`,
//! `GetProduct`, `GetBalance`, `ListLedger`, `ListUserCoupons`,
//! `CountSagas`), the baseline from its own tables. Both end up as the same
//! [`Books`], checked by one set of rules:
//!
//! - **orders**: every order placed is recorded, none is left PENDING (nor
//!   any saga running, compensating or STUCK); a CONFIRMED order's
//!   subtotal is its lines at the seeded prices, its discount the coupon's
//!   amount (at most the subtotal), its points paid subtotal - discount; a
//!   REJECTED order pays nothing.
//! - **stock**, per product: seeded = available + reserved + sold, sold =
//!   the units of the CONFIRMED orders, reserved = the units of PENDING
//!   orders (none once settled), nothing negative.
//! - **points**, per user: balance = seeded - points paid by CONFIRMED
//!   orders = the sum of the user's ledger; the ledger entries of each
//!   order (by saga id, or order id for the baseline) net to -points paid
//!   (CONFIRMED) or 0 (REJECTED).
//! - **coupons**: each of the shop's coupons is USED, by its order, iff a
//!   CONFIRMED order used it, else AVAILABLE; no coupon used by two
//!   CONFIRMED orders.
//! - **events** (saga, uniform scenario): every CONFIRMED or REJECTED order
//!   has at least one event in the order event stream
//!   ([`events_published`]).
//!
//! Other coordinators of the same participants (a peer system) add their
//! orders to the saga's list ([`Books::orders`]) before [`check`], so that
//! the participants' books include them.

use std::collections::{BTreeMap, HashMap, HashSet};

use anyhow::Context;
use commerce_proto::coupon::v1 as coupon;
use commerce_proto::order::v1 as order;
use commerce_proto::point::v1 as point;
use commerce_proto::product::v1 as product;
use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Nullable, Text};
use diesel_async::{AsyncConnection, AsyncMysqlConnection, RunQueryDsl};
use futures::{StreamExt, TryStreamExt, stream};

use crate::mesh::Systems;
use crate::model::{ScenarioResult, Shop};

/// Reads in flight while reconciling.
const READS: usize = 32;
/// Page size of the list reads (the services' maximum).
const PAGE: i32 = 100;
/// Violations quoted in a failed check.
const SAMPLES: usize = 5;

/// An order's state, as the rules need it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Pending,
    Confirmed,
    Rejected,
    /// Any other state (cancelling, cancelled, shipped, ...): the benchmark
    /// places orders only, so any is a violation.
    Other,
}

/// An order as recorded by the system that took it.
#[derive(Debug, Clone)]
pub struct SettledOrder {
    pub order_id: String,
    pub user_id: String,
    pub state: State,
    /// (product id, quantity).
    pub lines: Vec<(i64, i64)>,
    pub user_coupon_id: Option<i64>,
    pub subtotal: i64,
    pub discount: i64,
    pub points_paid: i64,
    /// What the point ledger and the coupon name the order by: its saga id
    /// (saga), its order id (baseline).
    pub reference: String,
}

/// A product's stock as stored.
#[derive(Debug, Clone, Copy, Default)]
pub struct StockLevel {
    pub available: i64,
    pub reserved: i64,
    pub sold: i64,
}

/// A user's points as stored.
#[derive(Debug, Clone, Default)]
pub struct Account {
    pub balance: i64,
    /// Sum of the user's ledger.
    pub ledger_sum: i64,
    /// Ledger sum by reference (saga or order id).
    pub by_reference: HashMap<String, i64>,
}

/// A coupon as stored.
#[derive(Debug, Clone)]
pub struct CouponState {
    pub used: bool,
    /// The saga (or order) that used it, empty when not used.
    pub used_by: String,
}

/// What one system's databases hold for one shop.
#[derive(Debug, Clone, Default)]
pub struct Books {
    pub orders: Vec<SettledOrder>,
    /// Sagas (or the like) still running, compensating or STUCK.
    pub unfinished: i64,
    pub stock: BTreeMap<i64, StockLevel>,
    pub accounts: BTreeMap<String, Account>,
    pub coupons: BTreeMap<i64, CouponState>,
}

/// Violations found, by check.
#[derive(Default)]
struct Found(Vec<String>);

impl Found {
    fn add(&mut self, what: String) {
        self.0.push(what);
    }

    /// The check as the report shows it: its rule, and when it failed how
    /// many violations and the first few.
    fn check(self, rule: &str) -> (String, bool) {
        if self.0.is_empty() {
            return (rule.to_owned(), true);
        }
        let samples = self
            .0
            .iter()
            .take(SAMPLES)
            .cloned()
            .collect::<Vec<_>>()
            .join("; ");
        (
            format!("{rule}: {} violation(s), e.g. {samples}", self.0.len()),
            false,
        )
    }
}

/// Checks `books` against `shop`; `placed` is how many orders were sent
/// (when every one must have been recorded). `label` names the system and
/// scenario in the result (`reconcile saga uniform`).
pub fn check(label: &str, shop: &Shop, books: &Books, placed: Option<usize>) -> ScenarioResult {
    let prices: HashMap<i64, i64> = shop.products.iter().map(|p| (p.id, p.price)).collect();
    let template_amount: HashMap<i64, i64> =
        shop.templates.iter().map(|t| (t.id, t.amount)).collect();
    let coupon_amount: HashMap<i64, i64> = shop
        .coupons
        .iter()
        .map(|c| {
            let amount = template_amount.get(&c.template_id).copied().unwrap_or(0);
            (c.id, amount)
        })
        .collect();

    let mut checks = Vec::new();

    // Orders.
    let mut found = Found::default();
    if let Some(placed) = placed
        && books.orders.len() != placed
    {
        found.add(format!(
            "{placed} orders placed, {} recorded",
            books.orders.len()
        ));
    }
    if books.unfinished != 0 {
        found.add(format!(
            "{} sagas running, compensating or stuck",
            books.unfinished
        ));
    }
    for o in &books.orders {
        match o.state {
            State::Confirmed => {
                let subtotal: i64 = o
                    .lines
                    .iter()
                    .map(|(p, q)| prices.get(p).copied().unwrap_or(i64::MIN / 4) * q)
                    .sum();
                let discount = o
                    .user_coupon_id
                    .map_or(0, |c| coupon_amount.get(&c).copied().unwrap_or(0))
                    .clamp(0, subtotal.max(0));
                if o.subtotal != subtotal
                    || o.discount != discount
                    || o.points_paid != subtotal - discount
                {
                    found.add(format!(
                        "order {} CONFIRMED with subtotal {} discount {} points {} \
                         (expected {subtotal}, {discount}, {})",
                        o.order_id,
                        o.subtotal,
                        o.discount,
                        o.points_paid,
                        subtotal - discount
                    ));
                }
            }
            State::Rejected => {
                if o.discount != 0 || o.points_paid != 0 {
                    found.add(format!(
                        "order {} REJECTED but discount {} points paid {}",
                        o.order_id, o.discount, o.points_paid
                    ));
                }
            }
            State::Pending => found.add(format!("order {} still PENDING", o.order_id)),
            State::Other => found.add(format!("order {} in an unexpected state", o.order_id)),
        }
    }
    checks.push(found.check(
        "orders: every order recorded and terminal, nothing running or stuck; confirmed \
         ones priced from the catalogue (points paid = subtotal - discount), rejected ones \
         pay nothing",
    ));

    // Stock.
    let mut sold: HashMap<i64, i64> = HashMap::new();
    let mut reserved: HashMap<i64, i64> = HashMap::new();
    for o in &books.orders {
        let into = match o.state {
            State::Confirmed => &mut sold,
            State::Pending => &mut reserved,
            _ => continue,
        };
        for (p, q) in &o.lines {
            *into.entry(*p).or_default() += q;
        }
    }
    let mut found = Found::default();
    for p in &shop.products {
        let Some(s) = books.stock.get(&p.id) else {
            found.add(format!("product {}: no stock found", p.id));
            continue;
        };
        let want_sold = sold.get(&p.id).copied().unwrap_or(0);
        let want_reserved = reserved.get(&p.id).copied().unwrap_or(0);
        if s.available + s.reserved + s.sold != p.stock
            || s.available < 0
            || s.sold != want_sold
            || s.reserved != want_reserved
        {
            found.add(format!(
                "product {}: available {} reserved {} sold {} (seeded {}, confirmed units \
                 {want_sold}, pending units {want_reserved})",
                p.id, s.available, s.reserved, s.sold, p.stock
            ));
        }
    }
    checks.push(found.check(
        "stock: per product seeded = available + reserved + sold, sold = units of confirmed \
         orders, reserved = units of pending orders, none negative",
    ));

    // Points.
    let mut paid: HashMap<&str, i64> = HashMap::new();
    for o in &books.orders {
        if o.state == State::Confirmed {
            *paid.entry(o.user_id.as_str()).or_default() += o.points_paid;
        }
    }
    let mut found = Found::default();
    for u in &shop.users {
        let account = books.accounts.get(&u.user_id).cloned().unwrap_or_default();
        let want = u.points - paid.get(u.user_id.as_str()).copied().unwrap_or(0);
        if account.balance != want || account.ledger_sum != account.balance || want < 0 {
            found.add(format!(
                "{}: balance {}, ledger sum {}, expected {want}",
                u.user_id, account.balance, account.ledger_sum
            ));
        }
    }
    for o in &books.orders {
        let net = books
            .accounts
            .get(&o.user_id)
            .and_then(|a| a.by_reference.get(&o.reference))
            .copied()
            .unwrap_or(0);
        let want = match o.state {
            State::Confirmed => -o.points_paid,
            _ => 0,
        };
        if net != want {
            found.add(format!(
                "order {} ({}): ledger nets {net}, expected {want}",
                o.order_id, o.reference
            ));
        }
    }
    checks.push(found.check(
        "points: per user balance = seeded - points paid by confirmed orders = ledger sum; \
         each order's ledger entries net to -points paid (confirmed) or 0",
    ));

    // Coupons.
    let mut used_by: HashMap<i64, Vec<&str>> = HashMap::new();
    for o in &books.orders {
        if o.state == State::Confirmed
            && let Some(c) = o.user_coupon_id
        {
            used_by.entry(c).or_default().push(o.reference.as_str());
        }
    }
    let mut found = Found::default();
    for c in &shop.coupons {
        let users = used_by.get(&c.id).map_or(&[][..], Vec::as_slice);
        let Some(stored) = books.coupons.get(&c.id) else {
            found.add(format!("coupon {}: not found", c.id));
            continue;
        };
        let ok = match users {
            [] => !stored.used,
            [one] => stored.used && stored.used_by == *one,
            _ => false,
        };
        if !ok {
            found.add(format!(
                "coupon {}: used {} by {:?}, confirmed orders using it {users:?}",
                c.id, stored.used, stored.used_by
            ));
        }
    }
    checks.push(found.check(
        "coupons: each coupon used (by its order) iff a confirmed order used it, never twice",
    ));

    let count = |state: State| books.orders.iter().filter(|o| o.state == state).count() as f64;
    let mut figures = BTreeMap::new();
    figures.insert("orders".into(), books.orders.len() as f64);
    figures.insert("confirmed".into(), count(State::Confirmed));
    figures.insert("rejected".into(), count(State::Rejected));
    figures.insert("products".into(), shop.products.len() as f64);
    figures.insert("users".into(), shop.users.len() as f64);
    figures.insert("coupons".into(), shop.coupons.len() as f64);
    ScenarioResult {
        name: label.to_owned(),
        description: "orders, stock, points and coupons of the scenario's shop reconciled \
                      after the scenario (see bench/src/reconcile.rs for the rules)"
            .into(),
        figures,
        checks,
    }
}

/// Every CONFIRMED or REJECTED order of `books` has at least one event
/// among the order ids `published` (the run's order event stream).
pub fn events_published(books: &Books, published: &HashSet<String>) -> (String, bool) {
    let mut found = Found::default();
    for o in &books.orders {
        if matches!(o.state, State::Confirmed | State::Rejected) && !published.contains(&o.order_id)
        {
            found.add(format!("order {} has no event in the stream", o.order_id));
        }
    }
    found.check("events: every confirmed or rejected order has an event in the stream")
}

// ------------------------------------------------------------- saga mesh

fn state_of(state: i32) -> State {
    match order::OrderState::try_from(state) {
        Ok(order::OrderState::Pending) => State::Pending,
        Ok(order::OrderState::Confirmed) => State::Confirmed,
        Ok(order::OrderState::Rejected) => State::Rejected,
        _ => State::Other,
    }
}

/// The mesh's books for `shop`: the orchestrator's orders of the shop's
/// users, and what the participants hold for its products, users and
/// coupons.
pub async fn mesh_books(systems: &Systems, shop: &Shop) -> anyhow::Result<Books> {
    let orders: Vec<Vec<SettledOrder>> = stream::iter(shop.users.iter())
        .map(|u| user_orders(systems, &u.user_id))
        .buffer_unordered(READS)
        .try_collect()
        .await?;
    let counts = systems
        .sagas()
        .count_sagas(order::CountSagasRequest {})
        .await?
        .into_inner();
    let stock: Vec<(i64, StockLevel)> = stream::iter(shop.products.iter().map(|p| p.id))
        .map(|product_id| {
            let mut catalog = systems.catalog();
            async move {
                let stock = catalog
                    .get_product(product::GetProductRequest { product_id })
                    .await
                    .with_context(|| format!("reading product {product_id}"))?
                    .into_inner()
                    .stock
                    .unwrap_or_default();
                anyhow::Ok((
                    product_id,
                    StockLevel {
                        available: stock.available,
                        reserved: stock.reserved,
                        sold: stock.sold,
                    },
                ))
            }
        })
        .buffer_unordered(READS)
        .try_collect()
        .await?;
    let accounts: Vec<(String, Account)> = stream::iter(shop.users.iter())
        .map(|u| user_account(systems, &u.user_id))
        .buffer_unordered(READS)
        .try_collect()
        .await?;
    let coupons: Vec<Vec<(i64, CouponState)>> = stream::iter(shop.users.iter())
        .map(|u| user_coupons(systems, &u.user_id))
        .buffer_unordered(READS)
        .try_collect()
        .await?;
    Ok(Books {
        orders: orders.into_iter().flatten().collect(),
        unfinished: counts.running + counts.compensating + counts.stuck,
        stock: stock.into_iter().collect(),
        accounts: accounts.into_iter().collect(),
        coupons: coupons.into_iter().flatten().collect(),
    })
}

async fn user_orders(systems: &Systems, user_id: &str) -> anyhow::Result<Vec<SettledOrder>> {
    let mut client = systems.orders();
    let mut all = Vec::new();
    for page in 0.. {
        let listed = client
            .list_orders(order::ListOrdersRequest {
                user_id: user_id.to_owned(),
                page,
                size: PAGE,
            })
            .await
            .with_context(|| format!("listing the orders of {user_id}"))?
            .into_inner();
        let last = listed.orders.len() < PAGE as usize;
        all.extend(listed.orders.into_iter().map(|o| SettledOrder {
            state: state_of(o.state),
            lines: o.lines.iter().map(|l| (l.product_id, l.quantity)).collect(),
            user_coupon_id: o.user_coupon_id,
            subtotal: o.subtotal,
            discount: o.discount,
            points_paid: o.points_paid,
            reference: o.saga_id,
            user_id: o.user_id,
            order_id: o.order_id,
        }));
        if last {
            break;
        }
    }
    Ok(all)
}

async fn user_account(systems: &Systems, user_id: &str) -> anyhow::Result<(String, Account)> {
    let mut points = systems.points();
    let balance = points
        .get_balance(point::GetBalanceRequest {
            user_id: user_id.to_owned(),
        })
        .await
        .with_context(|| format!("reading the balance of {user_id}"))?
        .into_inner()
        .balance;
    let mut account = Account {
        balance,
        ..Account::default()
    };
    for page in 0.. {
        let listed = points
            .list_ledger(point::ListLedgerRequest {
                user_id: user_id.to_owned(),
                page,
                size: PAGE,
            })
            .await
            .with_context(|| format!("reading the ledger of {user_id}"))?
            .into_inner();
        let last = listed.entries.len() < PAGE as usize;
        for entry in listed.entries {
            account.ledger_sum += entry.amount;
            *account.by_reference.entry(entry.reference).or_default() += entry.amount;
        }
        if last {
            break;
        }
    }
    Ok((user_id.to_owned(), account))
}

async fn user_coupons(systems: &Systems, user_id: &str) -> anyhow::Result<Vec<(i64, CouponState)>> {
    let mut coupons = systems.coupons();
    let mut all = Vec::new();
    for page in 0.. {
        let listed = coupons
            .list_user_coupons(coupon::ListUserCouponsRequest {
                user_id: user_id.to_owned(),
                page,
                size: PAGE,
            })
            .await
            .with_context(|| format!("listing the coupons of {user_id}"))?
            .into_inner();
        let last = listed.coupons.len() < PAGE as usize;
        all.extend(listed.coupons.into_iter().map(|c| {
            (
                c.id,
                CouponState {
                    used: c.state == coupon::UserCouponState::Used as i32,
                    used_by: c.used_by_saga,
                },
            )
        }));
        if last {
            break;
        }
    }
    Ok(all)
}

// -------------------------------------------------------------- baseline

#[derive(QueryableByName)]
struct OrderRow {
    #[diesel(sql_type = Text)]
    id: String,
    #[diesel(sql_type = Text)]
    user_id: String,
    #[diesel(sql_type = Text)]
    state: String,
    #[diesel(sql_type = Nullable<BigInt>)]
    user_coupon_id: Option<i64>,
    #[diesel(sql_type = BigInt)]
    subtotal: i64,
    #[diesel(sql_type = BigInt)]
    discount: i64,
    #[diesel(sql_type = BigInt)]
    points_paid: i64,
}

#[derive(QueryableByName)]
struct LineRow {
    #[diesel(sql_type = Text)]
    order_id: String,
    #[diesel(sql_type = BigInt)]
    product_id: i64,
    #[diesel(sql_type = BigInt)]
    quantity: i64,
}

#[derive(QueryableByName)]
struct StockRow {
    #[diesel(sql_type = BigInt)]
    product_id: i64,
    #[diesel(sql_type = BigInt)]
    available: i64,
    #[diesel(sql_type = BigInt)]
    reserved: i64,
    #[diesel(sql_type = BigInt)]
    sold: i64,
}

#[derive(QueryableByName)]
struct BalanceRow {
    #[diesel(sql_type = Text)]
    user_id: String,
    #[diesel(sql_type = BigInt)]
    balance: i64,
}

#[derive(QueryableByName)]
struct LedgerRow {
    #[diesel(sql_type = Text)]
    user_id: String,
    #[diesel(sql_type = Text)]
    reference: String,
    #[diesel(sql_type = BigInt)]
    amount: i64,
}

#[derive(QueryableByName)]
struct CouponRow {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Text)]
    state: String,
    #[diesel(sql_type = Nullable<Text>)]
    used_by_order: Option<String>,
}

/// The baseline's books, from its own tables (it holds one shop at a time:
/// each scenario seeds it anew).
pub async fn baseline_books(database_url: &str) -> anyhow::Result<Books> {
    let mut conn = AsyncMysqlConnection::establish(database_url)
        .await
        .context("connecting to the baseline database")?;
    let orders: Vec<OrderRow> = diesel::sql_query(
        "SELECT id, user_id, state, user_coupon_id, subtotal, discount, points_paid FROM orders",
    )
    .load(&mut conn)
    .await
    .context("reading the baseline's orders")?;
    let lines: Vec<LineRow> =
        diesel::sql_query("SELECT order_id, product_id, quantity FROM order_lines")
            .load(&mut conn)
            .await
            .context("reading the baseline's order lines")?;
    let stock: Vec<StockRow> =
        diesel::sql_query("SELECT product_id, available, reserved, sold FROM product_stock")
            .load(&mut conn)
            .await
            .context("reading the baseline's stock")?;
    let balances: Vec<BalanceRow> =
        diesel::sql_query("SELECT user_id, balance FROM point_accounts")
            .load(&mut conn)
            .await
            .context("reading the baseline's balances")?;
    let ledger: Vec<LedgerRow> = diesel::sql_query(
        "SELECT user_id, reference, CAST(SUM(amount) AS SIGNED) AS amount FROM point_ledger \
         GROUP BY user_id, reference",
    )
    .load(&mut conn)
    .await
    .context("reading the baseline's ledger")?;
    let coupons: Vec<CouponRow> =
        diesel::sql_query("SELECT id, state, used_by_order FROM user_coupons")
            .load(&mut conn)
            .await
            .context("reading the baseline's coupons")?;

    let mut by_order: HashMap<String, Vec<(i64, i64)>> = HashMap::new();
    for l in lines {
        by_order
            .entry(l.order_id)
            .or_default()
            .push((l.product_id, l.quantity));
    }
    let mut accounts: BTreeMap<String, Account> = balances
        .into_iter()
        .map(|b| {
            (
                b.user_id,
                Account {
                    balance: b.balance,
                    ..Account::default()
                },
            )
        })
        .collect();
    for l in ledger {
        let account = accounts.entry(l.user_id).or_default();
        account.ledger_sum += l.amount;
        *account.by_reference.entry(l.reference).or_default() += l.amount;
    }
    let orders: Vec<SettledOrder> = orders
        .into_iter()
        .map(|o| SettledOrder {
            state: match o.state.as_str() {
                "PENDING" => State::Pending,
                "CONFIRMED" => State::Confirmed,
                "REJECTED" => State::Rejected,
                _ => State::Other,
            },
            lines: by_order.remove(&o.id).unwrap_or_default(),
            user_coupon_id: o.user_coupon_id,
            subtotal: o.subtotal,
            discount: o.discount,
            points_paid: o.points_paid,
            reference: o.id.clone(),
            user_id: o.user_id,
            order_id: o.id,
        })
        .collect();
    Ok(Books {
        unfinished: 0,
        orders,
        stock: stock
            .into_iter()
            .map(|s| {
                (
                    s.product_id,
                    StockLevel {
                        available: s.available,
                        reserved: s.reserved,
                        sold: s.sold,
                    },
                )
            })
            .collect(),
        accounts,
        coupons: coupons
            .into_iter()
            .map(|c| {
                (
                    c.id,
                    CouponState {
                        used: c.state == "USED",
                        used_by: c.used_by_order.unwrap_or_default(),
                    },
                )
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{SeededCoupon, SeededProduct, SeededTemplate, SeededUser};

    fn shop() -> Shop {
        Shop {
            products: vec![SeededProduct {
                id: 1,
                name: "p".into(),
                price: 2_000,
                stock: 10,
            }],
            users: vec![SeededUser {
                user_id: "u".into(),
                points: 100_000,
            }],
            templates: vec![SeededTemplate {
                id: 7,
                amount: 1_000,
                min_order_amount: 0,
                total_quantity: 1,
            }],
            coupons: vec![SeededCoupon {
                id: 70,
                template_id: 7,
                user_id: "u".into(),
            }],
            ..Shop::default()
        }
    }

    fn order(state: State, points_paid: i64) -> SettledOrder {
        SettledOrder {
            order_id: "o1".into(),
            user_id: "u".into(),
            state,
            lines: vec![(1, 2)],
            user_coupon_id: Some(70),
            subtotal: 4_000,
            discount: if state == State::Confirmed { 1_000 } else { 0 },
            points_paid,
            reference: "s1".into(),
        }
    }

    fn books(o: SettledOrder, sold: i64, balance: i64, used: bool) -> Books {
        let mut account = Account {
            balance,
            ledger_sum: balance,
            ..Account::default()
        };
        if balance != 100_000 {
            account.by_reference.insert("s1".into(), balance - 100_000);
        }
        Books {
            orders: vec![o],
            unfinished: 0,
            stock: BTreeMap::from([(
                1,
                StockLevel {
                    available: 10 - sold,
                    reserved: 0,
                    sold,
                },
            )]),
            accounts: BTreeMap::from([("u".into(), account)]),
            coupons: BTreeMap::from([(
                70,
                CouponState {
                    used,
                    used_by: if used { "s1".into() } else { String::new() },
                },
            )]),
        }
    }

    #[test]
    fn consistent_books_pass_every_check() {
        let confirmed = books(order(State::Confirmed, 3_000), 2, 97_000, true);
        let result = check("t", &shop(), &confirmed, Some(1));
        assert!(
            result.checks.iter().all(|(_, ok)| *ok),
            "{:?}",
            result.checks
        );
        let rejected = books(order(State::Rejected, 0), 0, 100_000, false);
        let result = check("t", &shop(), &rejected, Some(1));
        assert!(
            result.checks.iter().all(|(_, ok)| *ok),
            "{:?}",
            result.checks
        );
    }

    #[test]
    fn each_kind_of_loss_fails_its_check() {
        // Stock sold but the order rejected; coupon used by nobody's order;
        // points kept; an order missing.
        let bad = books(order(State::Rejected, 0), 2, 97_000, true);
        let result = check("t", &shop(), &bad, Some(2));
        let failed: Vec<_> = result
            .checks
            .iter()
            .filter(|(_, ok)| !ok)
            .map(|(c, _)| c.split(':').next().unwrap_or_default().to_owned())
            .collect();
        assert_eq!(failed, ["orders", "stock", "points", "coupons"]);
    }
}
