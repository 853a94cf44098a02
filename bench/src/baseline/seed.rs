//! Filling, emptying and summing the baseline database for the benchmark.
//! The shop is copied with the saga mesh's ids, so one order list fits both
//! systems, in multi-row batches inside one transaction.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use chrono::TimeDelta;
use commerce_platform::migrate;
use commerce_platform::time::now;
use diesel::prelude::*;
use diesel::sql_types::BigInt;
use diesel_async::{AsyncConnection, AsyncMysqlConnection, RunQueryDsl, SimpleAsyncConnection};
use serde::{Deserialize, Serialize};

use super::MIGRATIONS;
use super::checkout::{COUPON_AVAILABLE, ON_SALE};
use super::schema::{
    brands, coupon_templates, point_accounts, point_ledger, product_stock, products, user_coupons,
};
use crate::model::Shop;

/// How long seeding waits for the database server to accept connections.
const DB_WAIT: Duration = Duration::from_secs(30);
/// Rows per INSERT: far below MySQL's placeholder and packet limits.
const BATCH_ROWS: usize = 1_000;
/// Reference of the CHARGE ledger entry that gives each user their points.
const SEED_REFERENCE: &str = "seed";
/// Every table, children first.
const TABLES: [&str; 9] = [
    "order_lines",
    "orders",
    "point_ledger",
    "point_accounts",
    "user_coupons",
    "coupon_templates",
    "product_stock",
    "products",
    "brands",
];

/// Sums over the whole baseline database, for the benchmark's invariant
/// checks. The comments say what each must equal when nothing was lost or
/// sold twice.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaselineTotals {
    /// `available + sold` per product id: the product's seeded stock.
    pub stock_by_product: BTreeMap<i64, i64>,
    /// Units sold over all products: `ordered_units`.
    pub sold: i64,
    /// Units on the lines of CONFIRMED orders.
    pub ordered_units: i64,
    /// Sum of the balances: the seeded points minus `points_paid`.
    pub points: i64,
    /// Sum of the ledger: `points`.
    pub ledger_points: i64,
    /// Points paid by CONFIRMED orders.
    pub points_paid: i64,
    pub confirmed_orders: i64,
    pub rejected_orders: i64,
    /// Coupons in state USED: the CONFIRMED orders with a coupon.
    pub used_coupons: i64,
}

/// Creates the database named by `database_url` when it does not exist (the
/// server's account must be allowed to).
async fn database_create(database_url: &str) -> anyhow::Result<()> {
    let (server_url, name) = split_database_url(database_url)?;
    let mut conn = AsyncMysqlConnection::establish(&server_url)
        .await
        .context("connecting to the database server")?;
    conn.batch_execute(&format!(
        "CREATE DATABASE IF NOT EXISTS `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
    ))
    .await
    .with_context(|| format!("creating database {name}"))?;
    Ok(())
}

/// Inserts `rows` into `table` in batches of [`BATCH_ROWS`].
macro_rules! insert_batches {
    ($conn:expr, $table:ident, $rows:expr) => {
        for batch in $rows.chunks(BATCH_ROWS) {
            diesel::insert_into($table::table)
                .values(batch)
                .execute($conn)
                .await
                .context(concat!("inserting into ", stringify!($table)))?;
        }
    };
}

/// Makes the database hold exactly `shop`, with the same ids: creates and
/// migrates it if needed, empties it (see [`reset`]), then copies the shop.
pub async fn seed(database_url: &str, shop: &Shop) -> anyhow::Result<()> {
    reset(database_url).await?;
    let at = now();
    let valid_from = at - TimeDelta::days(1);
    let valid_until = at + TimeDelta::days(365);
    let brand = &shop.brand;
    let mut issued = BTreeMap::<i64, i64>::new();
    for coupon in &shop.coupons {
        *issued.entry(coupon.template_id).or_default() += 1;
    }
    for template in &shop.templates {
        let count = issued.get(&template.id).copied().unwrap_or(0);
        anyhow::ensure!(
            count <= template.total_quantity,
            "template {} issues {count} coupons, more than its total {}",
            template.id,
            template.total_quantity
        );
    }

    let product_rows: Vec<_> = shop
        .products
        .iter()
        .map(|p| {
            (
                products::id.eq(p.id),
                products::brand_id.eq(brand.id),
                products::brand_name.eq(&brand.name),
                products::name.eq(&p.name),
                products::price.eq(p.price),
                products::status.eq(ON_SALE),
                products::created_at.eq(at),
                products::updated_at.eq(at),
            )
        })
        .collect();
    let stock_rows: Vec<_> = shop
        .products
        .iter()
        .map(|p| {
            (
                product_stock::product_id.eq(p.id),
                product_stock::available.eq(p.stock),
                product_stock::updated_at.eq(at),
            )
        })
        .collect();
    let account_rows: Vec<_> = shop
        .users
        .iter()
        .map(|u| {
            (
                point_accounts::user_id.eq(&u.user_id),
                point_accounts::balance.eq(u.points),
                point_accounts::created_at.eq(at),
                point_accounts::updated_at.eq(at),
            )
        })
        .collect();
    let ledger_rows: Vec<_> = shop
        .users
        .iter()
        .filter(|u| u.points > 0)
        .map(|u| {
            (
                point_ledger::user_id.eq(&u.user_id),
                point_ledger::kind.eq("CHARGE"),
                point_ledger::amount.eq(u.points),
                point_ledger::balance_after.eq(u.points),
                point_ledger::reference.eq(SEED_REFERENCE),
                point_ledger::created_at.eq(at),
            )
        })
        .collect();
    let template_rows: Vec<_> = shop
        .templates
        .iter()
        .map(|t| {
            (
                coupon_templates::id.eq(t.id),
                coupon_templates::amount.eq(t.amount),
                coupon_templates::min_order_amount.eq(t.min_order_amount),
                coupon_templates::valid_from.eq(valid_from),
                coupon_templates::valid_until.eq(valid_until),
                coupon_templates::total_quantity.eq(t.total_quantity),
                coupon_templates::issued_quantity.eq(issued.get(&t.id).copied().unwrap_or(0)),
                coupon_templates::created_at.eq(at),
            )
        })
        .collect();
    let coupon_rows: Vec<_> = shop
        .coupons
        .iter()
        .map(|c| {
            (
                user_coupons::id.eq(c.id),
                user_coupons::template_id.eq(c.template_id),
                user_coupons::user_id.eq(&c.user_id),
                user_coupons::state.eq(COUPON_AVAILABLE),
                user_coupons::issued_at.eq(at),
            )
        })
        .collect();

    let mut conn = connect(database_url).await?;
    conn.transaction(async |c| {
        diesel::insert_into(brands::table)
            .values((
                brands::id.eq(brand.id),
                brands::name.eq(&brand.name),
                brands::created_at.eq(at),
            ))
            .execute(c)
            .await
            .context("inserting the brand")?;
        insert_batches!(c, products, product_rows);
        insert_batches!(c, product_stock, stock_rows);
        insert_batches!(c, point_accounts, account_rows);
        insert_batches!(c, point_ledger, ledger_rows);
        insert_batches!(c, coupon_templates, template_rows);
        insert_batches!(c, user_coupons, coupon_rows);
        Ok::<_, anyhow::Error>(())
    })
    .await
}

/// Empties every table (creating and migrating the database if needed), for
/// the next scenario's [`seed`].
pub async fn reset(database_url: &str) -> anyhow::Result<()> {
    prepare(database_url).await?;
    let mut conn = connect(database_url).await?;
    // TRUNCATE (fast, and restarts the ledger's ids) refuses tables that
    // foreign keys reference unless their checks are off for the session.
    conn.batch_execute("SET FOREIGN_KEY_CHECKS = 0").await?;
    for table in TABLES {
        conn.batch_execute(&format!("TRUNCATE TABLE {table}"))
            .await
            .with_context(|| format!("emptying {table}"))?;
    }
    conn.batch_execute("SET FOREIGN_KEY_CHECKS = 1").await?;
    Ok(())
}

#[derive(QueryableByName)]
struct ProductUnits {
    #[diesel(sql_type = BigInt)]
    product_id: i64,
    #[diesel(sql_type = BigInt)]
    units: i64,
}

#[derive(QueryableByName)]
struct Sums {
    #[diesel(sql_type = BigInt)]
    sold: i64,
    #[diesel(sql_type = BigInt)]
    ordered_units: i64,
    #[diesel(sql_type = BigInt)]
    points: i64,
    #[diesel(sql_type = BigInt)]
    ledger_points: i64,
    #[diesel(sql_type = BigInt)]
    points_paid: i64,
    #[diesel(sql_type = BigInt)]
    confirmed_orders: i64,
    #[diesel(sql_type = BigInt)]
    rejected_orders: i64,
    #[diesel(sql_type = BigInt)]
    used_coupons: i64,
}

/// Sums for the invariant checks, read in one consistent snapshot.
pub async fn totals(database_url: &str) -> anyhow::Result<BaselineTotals> {
    let mut conn = connect(database_url).await?;
    // One REPEATABLE READ snapshot for both queries, should orders still run.
    conn.batch_execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        .await?;
    conn.transaction(async |c| {
        let stock = diesel::sql_query(
            "SELECT product_id, available + sold AS units FROM product_stock ORDER BY product_id",
        )
        .load::<ProductUnits>(c)
        .await
        .context("summing stock")?;
        let sums = diesel::sql_query(
            "SELECT \
               (SELECT CAST(COALESCE(SUM(sold), 0) AS SIGNED) FROM product_stock) AS sold, \
               (SELECT CAST(COALESCE(SUM(l.quantity), 0) AS SIGNED) \
                  FROM order_lines l JOIN orders o ON o.id = l.order_id \
                  WHERE o.state = 'CONFIRMED') AS ordered_units, \
               (SELECT CAST(COALESCE(SUM(balance), 0) AS SIGNED) FROM point_accounts) AS points, \
               (SELECT CAST(COALESCE(SUM(amount), 0) AS SIGNED) FROM point_ledger) AS ledger_points, \
               (SELECT CAST(COALESCE(SUM(points_paid), 0) AS SIGNED) FROM orders \
                  WHERE state = 'CONFIRMED') AS points_paid, \
               (SELECT COUNT(*) FROM orders WHERE state = 'CONFIRMED') AS confirmed_orders, \
               (SELECT COUNT(*) FROM orders WHERE state = 'REJECTED') AS rejected_orders, \
               (SELECT COUNT(*) FROM user_coupons WHERE state = 'USED') AS used_coupons",
        )
        .get_result::<Sums>(c)
        .await
        .context("summing orders, points and coupons")?;
        Ok::<_, anyhow::Error>(BaselineTotals {
            stock_by_product: stock.into_iter().map(|p| (p.product_id, p.units)).collect(),
            sold: sums.sold,
            ordered_units: sums.ordered_units,
            points: sums.points,
            ledger_points: sums.ledger_points,
            points_paid: sums.points_paid,
            confirmed_orders: sums.confirmed_orders,
            rejected_orders: sums.rejected_orders,
            used_coupons: sums.used_coupons,
        })
    })
    .await
}

/// Creates the database if needed and applies pending migrations.
async fn prepare(database_url: &str) -> anyhow::Result<()> {
    database_create(database_url).await?;
    migrate::run(database_url, &[&MIGRATIONS], DB_WAIT).await?;
    Ok(())
}

async fn connect(database_url: &str) -> anyhow::Result<AsyncMysqlConnection> {
    AsyncMysqlConnection::establish(database_url)
        .await
        .context("connecting to the baseline database")
}

/// `mysql://user:pass@host:port/name?options` into the server's URL (same
/// options, no database) and the database name.
fn split_database_url(url: &str) -> anyhow::Result<(String, String)> {
    let (scheme, rest) = url
        .split_once("://")
        .context("the database URL has no scheme")?;
    let (authority, path) = rest
        .split_once('/')
        .context("the database URL names no database")?;
    let (name, options) = match path.split_once('?') {
        Some((name, options)) => (name, Some(options)),
        None => (path, None),
    };
    anyhow::ensure!(
        !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
        "database name {name:?} must be letters, digits and underscores"
    );
    let server = match options {
        Some(options) => format!("{scheme}://{authority}?{options}"),
        None => format!("{scheme}://{authority}"),
    };
    Ok((server, name.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::split_database_url;

    #[test]
    fn database_urls_split_into_server_and_name() {
        assert_eq!(
            split_database_url("mysql://u:p@127.0.0.1:3306/commerce_bench_baseline").unwrap(),
            (
                "mysql://u:p@127.0.0.1:3306".to_owned(),
                "commerce_bench_baseline".to_owned()
            )
        );
        assert_eq!(
            split_database_url("mysql://u:p@h:1/db?prefer_socket=false").unwrap(),
            (
                "mysql://u:p@h:1?prefer_socket=false".to_owned(),
                "db".to_owned()
            )
        );
        assert!(split_database_url("mysql://u:p@h:1").is_err());
        assert!(split_database_url("mysql://u:p@h:1/a`b").is_err());
    }
}
