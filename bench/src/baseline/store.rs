//! The baseline's storage: [`BaselineStore`] places an order in one
//! transaction and reads orders back.
//!
//! Placing claims the idempotency key first (the order row, PENDING), then
//! locks and checks, stage by stage as the saga meets them: the stock rows
//! with their products (one statement, in product-id order), the user's
//! coupon, the point account. Only when every check has passed are the
//! effects written; a rejection writes nothing but the REJECTED order and
//! its lines. Every transaction takes its locks in that same order (order
//! key, stock by product id, coupon, account), so two orders cannot
//! deadlock on them; a lost lock race is run again by [`Database::transaction`].

use chrono::NaiveDateTime;
use commerce_platform::db::{ScopedFutureExt, is_unique_violation};
use commerce_platform::time::now;
use commerce_platform::{Database, ServiceError, UserId};
use diesel::prelude::*;
use diesel_async::{AsyncMysqlConnection, RunQueryDsl};
use order_orchestrator::domain::order::{
    OrderState, PlaceOrder, Pricing, SnapshotLine, reason::IDEMPOTENCY_KEY_REUSED,
};

use super::checkout::{self, COUPON_USED, Coupon, ProductStock, Rejection};
use super::orders::{OrderLineRow, OrderRecord, OrderRow, load_order};
use super::schema::{
    coupon_templates, order_lines, orders, point_accounts, point_ledger, product_stock, products,
    user_coupons,
};

/// Ledger kind of the points an order pays (as the point service spells it).
const LEDGER_USE: &str = "USE";

/// What the checks decided, before anything but the claim is written.
enum Decision {
    Confirmed {
        lines: Vec<SnapshotLine>,
        pricing: Pricing,
        /// The balance after paying; `None` when there is nothing to pay
        /// (the account is then neither locked nor written, as in the saga).
        balance_after: Option<i64>,
    },
    Rejected {
        rejection: Rejection,
        /// The snapshot and amounts, when the order was priced before its
        /// rejection (the saga records them too once stock was reserved).
        priced: Option<(Vec<SnapshotLine>, Pricing)>,
    },
}

/// Orders of the baseline database.
#[derive(Debug, Clone)]
pub struct BaselineStore {
    db: Database,
}

impl BaselineStore {
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    /// Places `order` in one transaction: CONFIRMED with all its effects, or
    /// REJECTED with none. The same user and key give the stored order again
    /// (ALREADY_EXISTS when the request differs).
    #[tracing::instrument(skip_all, fields(user_id = %order.user))]
    pub async fn order_place(&self, order: &PlaceOrder) -> Result<OrderRecord, ServiceError> {
        let fingerprint = order.fingerprint();
        let fingerprint = &fingerprint;
        self.db
            .transaction(|c| place(c, order, fingerprint).scope_boxed())
            .await
    }

    #[tracing::instrument(skip(self))]
    pub async fn order_get(&self, order_id: &str) -> Result<OrderRecord, ServiceError> {
        self.db
            .read(|c| {
                async move {
                    let order = orders::table
                        .find(order_id)
                        .select(OrderRow::as_select())
                        .first(c)
                        .await
                        .optional()?
                        .ok_or_else(|| ServiceError::not_found("order", order_id))?;
                    load_order(c, order).await
                }
                .scope_boxed()
            })
            .await
    }
}

/// The body of the placing transaction.
async fn place(
    c: &mut AsyncMysqlConnection,
    order: &PlaceOrder,
    fingerprint: &str,
) -> Result<OrderRecord, ServiceError> {
    let at = now();
    let id = uuid::Uuid::now_v7().hyphenated().to_string();
    let pending = OrderRow::pending(&id, order, fingerprint);
    // The key's unique index makes a concurrent twin wait here until this
    // transaction ends, then see the finished order.
    match diesel::insert_into(orders::table)
        .values(&pending)
        .execute(c)
        .await
    {
        Ok(_) => {}
        Err(e) if is_unique_violation(&e) => return order_replay(c, order, fingerprint).await,
        Err(e) => return Err(e.into()),
    }
    let decision = decide(c, order, at).await?;
    order_finish(c, order, pending, decision, at).await
}

/// The order stored under the request's key, if it is the same request.
async fn order_replay(
    c: &mut AsyncMysqlConnection,
    order: &PlaceOrder,
    fingerprint: &str,
) -> Result<OrderRecord, ServiceError> {
    let existing = orders::table
        .filter(orders::user_id.eq(order.user.as_str()))
        .filter(orders::idempotency_key.eq(order.idempotency_key.as_str()))
        .select(OrderRow::as_select())
        .first(c)
        .await?;
    if existing.request_json != fingerprint {
        return Err(ServiceError::already_exists(
            IDEMPOTENCY_KEY_REUSED,
            "this idempotency key was used for a different order",
        ));
    }
    load_order(c, existing).await
}

/// Locks what the order needs, stage by stage, and decides. Writes nothing.
async fn decide(
    c: &mut AsyncMysqlConnection,
    order: &PlaceOrder,
    at: NaiveDateTime,
) -> Result<Decision, ServiceError> {
    let rejected = |rejection, priced| Ok(Decision::Rejected { rejection, priced });
    let stock = stock_lock(c, order).await?;
    let lines = match checkout::lines_price(order, &stock) {
        Ok(lines) => lines,
        Err(rejection) => return rejected(rejection, None),
    };
    let subtotal = Pricing::subtotal(&lines);
    let discount = match order.user_coupon_id {
        None => 0,
        Some(coupon_id) => {
            let coupon = coupon_lock(c, coupon_id).await?;
            match checkout::coupon_discount(&order.user, coupon_id, coupon.as_ref(), subtotal, at) {
                Ok(discount) => discount,
                Err(rejection) => return rejected(rejection, None),
            }
        }
    };
    let pricing = Pricing::new(subtotal, discount);
    let balance_after = if pricing.payable == 0 {
        None
    } else {
        // A user never seen holds 0 points.
        let balance = account_lock(c, &order.user).await?.unwrap_or(0);
        match checkout::points_deduct(balance, pricing.payable) {
            Ok(after) => Some(after),
            Err(rejection) => return rejected(rejection, Some((lines, pricing))),
        }
    };
    Ok(Decision::Confirmed {
        lines,
        pricing,
        balance_after,
    })
}

/// Writes the decision: the effects of a confirmed order, then the lines and
/// the order's final state.
async fn order_finish(
    c: &mut AsyncMysqlConnection,
    order: &PlaceOrder,
    mut row: OrderRow,
    decision: Decision,
    at: NaiveDateTime,
) -> Result<OrderRecord, ServiceError> {
    let (snapshot, subtotal) = match decision {
        Decision::Confirmed {
            lines,
            pricing,
            balance_after,
        } => {
            stock_take(c, &lines, at).await?;
            if let Some(coupon_id) = order.user_coupon_id {
                coupon_use(c, coupon_id, &row.id, at).await?;
            }
            if let Some(after) = balance_after {
                points_pay(c, &order.user, pricing.payable, after, &row.id, at).await?;
            }
            row.state = OrderState::Confirmed.as_str().to_owned();
            row.discount = pricing.discount;
            row.points_paid = pricing.payable;
            (Some(lines), Some(pricing.subtotal))
        }
        Decision::Rejected { rejection, priced } => {
            row.state = OrderState::Rejected.as_str().to_owned();
            row.reason = rejection.reason.to_owned();
            row.reason_message = rejection.message;
            // Like the saga's: a rejected order keeps what was asked and
            // its subtotal, and pays nothing.
            priced.map_or((None, None), |(lines, pricing)| {
                (Some(lines), Some(pricing.subtotal))
            })
        }
    };
    if let Some(subtotal) = subtotal {
        row.subtotal = subtotal;
    }
    let lines: Vec<OrderLineRow> = match snapshot {
        Some(lines) => lines
            .into_iter()
            .map(|line| OrderLineRow::snapshot(&row.id, &line))
            .collect(),
        None => order
            .lines
            .iter()
            .map(|line| OrderLineRow::requested(&row.id, line.product_id, line.quantity))
            .collect(),
    };
    diesel::insert_into(order_lines::table)
        .values(&lines)
        .execute(c)
        .await?;
    diesel::update(orders::table.find(&row.id))
        .set((
            orders::state.eq(&row.state),
            orders::subtotal.eq(row.subtotal),
            orders::discount.eq(row.discount),
            orders::points_paid.eq(row.points_paid),
            orders::reason.eq(&row.reason),
            orders::reason_message.eq(&row.reason_message),
        ))
        .execute(c)
        .await?;
    Ok(OrderRecord { order: row, lines })
}

/// Locks the stock rows of the order's products, in product-id order, with
/// their product rows (read for the snapshot in the same statement; only
/// orders lock them, always with their stock row, so this adds no waits).
/// A product without a row is unknown.
async fn stock_lock(
    c: &mut AsyncMysqlConnection,
    order: &PlaceOrder,
) -> Result<Vec<ProductStock>, ServiceError> {
    let ids: Vec<i64> = order.lines.iter().map(|line| line.product_id).collect();
    Ok(product_stock::table
        .inner_join(products::table)
        .filter(product_stock::product_id.eq_any(&ids))
        .order(product_stock::product_id.asc())
        .select((
            products::id,
            products::name,
            products::brand_id,
            products::brand_name,
            products::price,
            products::status,
            product_stock::available,
        ))
        .for_update()
        .load::<ProductStock>(c)
        .await?)
}

/// Locks the user coupon and reads its template's terms. The template row is
/// read without a lock: every coupon of a template shares it, and it never
/// changes during a run.
async fn coupon_lock(
    c: &mut AsyncMysqlConnection,
    coupon_id: i64,
) -> Result<Option<Coupon>, ServiceError> {
    let Some((user_id, state, template_id)) = user_coupons::table
        .find(coupon_id)
        .select((
            user_coupons::user_id,
            user_coupons::state,
            user_coupons::template_id,
        ))
        .for_update()
        .first::<(String, String, i64)>(c)
        .await
        .optional()?
    else {
        return Ok(None);
    };
    let (amount, min_order_amount, valid_from, valid_until) = coupon_templates::table
        .find(template_id)
        .select((
            coupon_templates::amount,
            coupon_templates::min_order_amount,
            coupon_templates::valid_from,
            coupon_templates::valid_until,
        ))
        .first::<(i64, i64, NaiveDateTime, NaiveDateTime)>(c)
        .await?;
    Ok(Some(Coupon {
        user_id,
        state,
        amount,
        min_order_amount,
        valid_from,
        valid_until,
    }))
}

/// The user's balance, the account row locked; `None` for a user never seen.
async fn account_lock(
    c: &mut AsyncMysqlConnection,
    user: &UserId,
) -> Result<Option<i64>, ServiceError> {
    Ok(point_accounts::table
        .find(user.as_str())
        .select(point_accounts::balance)
        .for_update()
        .first::<i64>(c)
        .await
        .optional()?)
}

/// Moves each line's units from `available` to `sold` (rows locked).
async fn stock_take(
    c: &mut AsyncMysqlConnection,
    lines: &[SnapshotLine],
    at: NaiveDateTime,
) -> Result<(), ServiceError> {
    for line in lines {
        diesel::update(product_stock::table.find(line.product_id))
            .set((
                product_stock::available.eq(product_stock::available - line.quantity),
                product_stock::sold.eq(product_stock::sold + line.quantity),
                product_stock::updated_at.eq(at),
            ))
            .execute(c)
            .await?;
    }
    Ok(())
}

/// Marks the (locked, available) coupon used by the order.
async fn coupon_use(
    c: &mut AsyncMysqlConnection,
    coupon_id: i64,
    order_id: &str,
    at: NaiveDateTime,
) -> Result<(), ServiceError> {
    diesel::update(user_coupons::table.find(coupon_id))
        .set((
            user_coupons::state.eq(COUPON_USED),
            user_coupons::used_by_order.eq(order_id),
            user_coupons::used_at.eq(at),
        ))
        .execute(c)
        .await?;
    Ok(())
}

/// Writes the order's USE ledger entry and the (locked) account's new balance.
async fn points_pay(
    c: &mut AsyncMysqlConnection,
    user: &UserId,
    payable: i64,
    balance_after: i64,
    order_id: &str,
    at: NaiveDateTime,
) -> Result<(), ServiceError> {
    diesel::insert_into(point_ledger::table)
        .values((
            point_ledger::user_id.eq(user.as_str()),
            point_ledger::kind.eq(LEDGER_USE),
            point_ledger::amount.eq(-payable),
            point_ledger::balance_after.eq(balance_after),
            point_ledger::reference.eq(order_id),
            point_ledger::created_at.eq(at),
        ))
        .execute(c)
        .await?;
    diesel::update(point_accounts::table.find(user.as_str()))
        .set((
            point_accounts::balance.eq(balance_after),
            point_accounts::updated_at.eq(at),
        ))
        .execute(c)
        .await?;
    Ok(())
}
