//! Saga reservations of stock: reserve (action), confirm (action) and release
//! (compensation), each in one transaction with its barrier row.
//!
//! The guard is the check: every move is one relative `UPDATE` guarded in
//! its `WHERE` clause by the bounds the domain checks ([`StockMove::bounds`]),
//! and a guard that matches no row is the domain's refusal, explained from
//! the row as it then is. A reservation reads each product's snapshot and
//! stock once, unlocked, so that the domain refuses what it can see early;
//! no stock level is ever written from a read, so a stale read can never
//! write a wrong quantity (see [`stock_apply`]). Moves go in product-id
//! order, so row locks are always taken in the same order.

use commerce_platform::barrier::{self, SagaPair};
use commerce_platform::db::{PreparedExt, ScopedFutureExt};
use commerce_platform::{SagaCall, SagaId, ServiceError, time};
use diesel::prelude::*;
use diesel_async::{AsyncMysqlConnection, RunQueryDsl};

use super::ProductStore;
use super::models::{ReservationRow, SnapshotRow, StockRow, snapshot_from_row};
use super::schema::{brands, product_stock, products, reservations};
use crate::domain::{
    ReleaseOutcome, Reservation, ReservationState, ReserveOrder, ReservedLine, Stock, StockMove,
    plan_reservation,
};

/// Applies a move of `$quantity` units from the `$from` to the `$to` column
/// of one stock row, relatively and guarded: evaluates to the number of
/// matched rows (diesel-async on MySQL counts matched, not changed, rows;
/// the guard is in WHERE, so a match is an applied move).
macro_rules! stock_move_sql {
    ($c:expr, $product_id:expr, $quantity:expr, $bounds:expr, $now:expr, $from:ident -> $to:ident) => {
        diesel::update(
            product_stock::table
                .find($product_id)
                .filter(product_stock::$from.ge($bounds.min_source))
                .filter(product_stock::$to.le($bounds.max_target)),
        )
        .set((
            product_stock::$from.eq(product_stock::$from - $quantity),
            product_stock::$to.eq(product_stock::$to + $quantity),
            product_stock::updated_at.eq($now),
        ))
        .prepared()
        .execute($c)
        .await
    };
}

/// Barrier operation of `ReserveStock`. Persisted: never rename.
pub const RESERVE_STOCK: &str = "reserve_stock";
/// Barrier operation of `ConfirmReservation`. Persisted: never rename.
pub const CONFIRM_RESERVATION: &str = "confirm_reservation";
/// `ReserveStock` and its compensation `ReleaseReservation`. Persisted.
pub const STOCK_PAIR: SagaPair = SagaPair {
    action: RESERVE_STOCK,
    compensation: "release_stock",
};

impl ProductStore {
    /// Reserves every line of the order or none, once per saga.
    pub async fn reservation_create(
        &self,
        order: &ReserveOrder,
        fence: i64,
    ) -> Result<Reservation, ServiceError> {
        let call = &SagaCall {
            saga: order.saga.clone(),
            fence,
        };
        self.db
            .transaction(|c| {
                async move {
                    barrier::run_action(
                        c,
                        call,
                        RESERVE_STOCK,
                        async |c: &mut AsyncMysqlConnection| reserve(c, order).await,
                    )
                    .await
                }
                .scope_boxed()
            })
            .await
    }

    /// Turns the saga's reservation into sold units, once.
    pub async fn reservation_confirm(&self, call: &SagaCall) -> Result<Reservation, ServiceError> {
        let saga = &call.saga;
        self.db
            .transaction(|c| {
                async move {
                    barrier::run_action(
                        c,
                        call,
                        CONFIRM_RESERVATION,
                        async |c: &mut AsyncMysqlConnection| confirm(c, saga).await,
                    )
                    .await
                }
                .scope_boxed()
            })
            .await
    }

    /// Gives the saga's reserved or sold units back to `available`, once; a
    /// no-op (that blocks a late reserve) when nothing was reserved.
    pub async fn reservation_release(
        &self,
        call: &SagaCall,
    ) -> Result<ReleaseOutcome, ServiceError> {
        let saga = &call.saga;
        self.db
            .transaction(|c| {
                async move {
                    barrier::run_compensation(
                        c,
                        call,
                        STOCK_PAIR,
                        || ReleaseOutcome::nothing_reserved(saga),
                        async |c: &mut AsyncMysqlConnection| release(c, saga).await,
                    )
                    .await
                }
                .scope_boxed()
            })
            .await
    }

    /// The saga's reservation as it stands now, or NOT_FOUND.
    pub async fn reservation_get(&self, saga: &SagaId) -> Result<Reservation, ServiceError> {
        self.db
            .read(|c| {
                async move {
                    let row = reservations::table
                        .find(saga.as_str())
                        .select(ReservationRow::as_select())
                        .first(c)
                        .await
                        .optional()?
                        .ok_or_else(|| ServiceError::not_found("reservation", saga))?;
                    row.into_reservation()
                }
                .scope_boxed()
            })
            .await
    }
}

/// The effect of `reserve_stock`: locks the stock rows in product-id order,
/// reads the snapshot in the same transaction, and applies the plan.
async fn reserve(
    c: &mut AsyncMysqlConnection,
    order: &ReserveOrder,
) -> Result<Reservation, ServiceError> {
    // One cached read per product of its snapshot and stock, without a
    // lock: the guarded UPDATE below is what decides, and the plan only
    // explains a refusal early. (An `IN` list is prepared and closed at
    // every call, which costs more round trips than an order's few lines.)
    let mut stock = Vec::with_capacity(order.lines.len());
    let mut snapshots = Vec::with_capacity(order.lines.len());
    for id in order.product_ids() {
        let row = products::table
            .inner_join(brands::table)
            .inner_join(product_stock::table)
            .filter(products::id.eq(id))
            .select((
                (
                    products::id,
                    products::name,
                    products::brand_id,
                    brands::name,
                    products::price,
                    products::status,
                ),
                StockRow::as_select(),
            ))
            .first::<(SnapshotRow, StockRow)>(c)
            .await
            .optional()?;
        if let Some((snapshot, row)) = row {
            snapshots.push(snapshot_from_row(snapshot)?);
            stock.push(Stock::from(row));
        }
    }
    let plan = plan_reservation(order, &stock, &snapshots)?;

    let now = time::now();
    for planned in &plan {
        let line = &planned.line;
        let step = StockMove::AvailableToReserved;
        if !stock_apply(c, line.product_id, step, line.quantity, now).await? {
            // The domain found enough units in the row it read, the guard
            // did not: refuse from the row as it is (the whole reservation
            // rolls back with this error).
            let current = stock_read(c, line.product_id).await?;
            return Err(current.reserve_refusal(&line.product_name, line.quantity));
        }
    }
    // The plan is in product-id order, as the lines are stored.
    let lines: Vec<ReservedLine> = plan.into_iter().map(|planned| planned.line).collect();
    diesel::insert_into(reservations::table)
        .values((
            reservations::saga_id.eq(order.saga.as_str()),
            reservations::state.eq(ReservationState::Reserved.as_str()),
            reservations::lines_json.eq(serde_json::to_string(&lines)?),
            reservations::created_at.eq(now),
            reservations::updated_at.eq(now),
        ))
        .prepared()
        .execute(c)
        .await?;
    Ok(Reservation {
        saga_id: order.saga.to_string(),
        state: ReservationState::Reserved,
        lines,
        created_at: now,
        updated_at: now,
    })
}

/// The effect of `confirm_reservation`.
async fn confirm(c: &mut AsyncMysqlConnection, saga: &SagaId) -> Result<Reservation, ServiceError> {
    let row = reservation_lock(c, saga)
        .await?
        .ok_or_else(|| ServiceError::not_found("reservation", saga))?;
    let Some(step) = row.state()?.confirm(saga)? else {
        return row.into_reservation();
    };
    let now = time::now();
    stock_move(c, &row.lines()?, step, now).await?;
    state_store(c, saga, ReservationState::Confirmed, now).await?;
    Ok(Reservation {
        state: ReservationState::Confirmed,
        updated_at: now,
        ..row.into_reservation()?
    })
}

/// The undo of `reserve_stock` (and of a confirmation, for a cancelled order).
async fn release(
    c: &mut AsyncMysqlConnection,
    saga: &SagaId,
) -> Result<ReleaseOutcome, ServiceError> {
    // The barrier says `reserve_stock` was applied, and it inserted the
    // reservation in the same transaction: a missing row is corruption, and
    // the compensation fails loudly rather than dropping the reservation.
    let row = reservation_lock(c, saga).await?.ok_or_else(|| {
        ServiceError::internal(format!(
            "saga {saga}: `{RESERVE_STOCK}` is applied but no reservation exists"
        ))
    })?;
    let previous = row.state()?;
    let Some(step) = previous.release() else {
        return Ok(ReleaseOutcome {
            saga_id: saga.to_string(),
            released: false,
            previous_state: Some(previous),
            lines: Vec::new(),
        });
    };
    let lines = row.lines()?;
    let now = time::now();
    stock_move(c, &lines, step, now).await?;
    state_store(c, saga, ReservationState::Released, now).await?;
    Ok(ReleaseOutcome {
        saga_id: saga.to_string(),
        released: true,
        previous_state: Some(previous),
        lines,
    })
}

/// Moves `quantity` units of one product with one guarded relative UPDATE
/// (for `AvailableToReserved`: `SET available = available - q, reserved =
/// reserved + q WHERE product_id = ? AND available >= q AND reserved <=
/// i64::MAX - q`). False when the guard matched no row: nothing was written
/// and the caller refuses.
async fn stock_apply(
    c: &mut AsyncMysqlConnection,
    product_id: i64,
    step: StockMove,
    quantity: i64,
    now: chrono::NaiveDateTime,
) -> Result<bool, ServiceError> {
    let bounds = step.bounds(quantity).ok_or_else(|| {
        ServiceError::internal(format!(
            "cannot move {quantity} units of product {product_id}"
        ))
    })?;
    let matched = match step {
        StockMove::AvailableToReserved => {
            stock_move_sql!(c, product_id, quantity, bounds, now, available -> reserved)
        }
        StockMove::ReservedToSold => {
            stock_move_sql!(c, product_id, quantity, bounds, now, reserved -> sold)
        }
        StockMove::ReservedToAvailable => {
            stock_move_sql!(c, product_id, quantity, bounds, now, reserved -> available)
        }
        StockMove::SoldToAvailable => {
            stock_move_sql!(c, product_id, quantity, bounds, now, sold -> available)
        }
    }?;
    match matched {
        0 => Ok(false),
        1 => Ok(true),
        n => Err(ServiceError::internal(format!(
            "stock update of product {product_id} matched {n} rows"
        ))),
    }
}

/// One stock row as it is now (locked: it explains a refusal).
async fn stock_read(c: &mut AsyncMysqlConnection, product_id: i64) -> Result<Stock, ServiceError> {
    product_stock::table
        .find(product_id)
        .select(StockRow::as_select())
        .for_update()
        .first::<StockRow>(c)
        .await
        .optional()?
        .map(Stock::from)
        .ok_or_else(|| ServiceError::internal(format!("product {product_id} has no stock row")))
}

/// Moves every line's units of a held reservation (`lines` in product-id
/// order, the order every transaction takes stock rows in): each move is one
/// relative, guarded UPDATE. Held units always cover their move, so a guard
/// that matches nothing is corrupt state, explained from the row as it is.
async fn stock_move(
    c: &mut AsyncMysqlConnection,
    lines: &[ReservedLine],
    step: StockMove,
    now: chrono::NaiveDateTime,
) -> Result<(), ServiceError> {
    for line in lines {
        if !stock_apply(c, line.product_id, step, line.quantity, now).await? {
            let current = stock_read(c, line.product_id).await?;
            return Err(current.held_move_refusal(step, line.quantity));
        }
    }
    Ok(())
}

async fn reservation_lock(
    c: &mut AsyncMysqlConnection,
    saga: &SagaId,
) -> Result<Option<ReservationRow>, ServiceError> {
    Ok(reservations::table
        .find(saga.as_str())
        .select(ReservationRow::as_select())
        .for_update()
        .first(c)
        .await
        .optional()?)
}

async fn state_store(
    c: &mut AsyncMysqlConnection,
    saga: &SagaId,
    state: ReservationState,
    now: chrono::NaiveDateTime,
) -> Result<(), ServiceError> {
    diesel::update(reservations::table.find(saga.as_str()))
        .set((
            reservations::state.eq(state.as_str()),
            reservations::updated_at.eq(now),
        ))
        .prepared()
        .execute(c)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    //! The SQL guard of stock moves, on a real database, with the domain's
    //! check bypassed (as a wrong read of the stock row would bypass it).

    #![allow(clippy::unwrap_used)]

    use commerce_platform::ServerConfig;
    use commerce_platform::db::ScopedFutureExt;
    use commerce_testkit::TestDatabase;

    use super::*;
    use crate::domain::{
        BrandDescription, BrandName, NewBrand, NewProduct, Price, ProductName, ProductStatus,
        StockUnits,
    };

    /// Runs [`stock_apply`] in a transaction of its own.
    async fn try_apply(
        store: &ProductStore,
        product_id: i64,
        step: StockMove,
        quantity: i64,
    ) -> Result<bool, ServiceError> {
        store
            .db
            .transaction(|c| {
                async move { stock_apply(c, product_id, step, quantity, time::now()).await }
                    .scope_boxed()
            })
            .await
    }

    async fn apply(store: &ProductStore, product_id: i64, step: StockMove, quantity: i64) -> bool {
        try_apply(store, product_id, step, quantity).await.unwrap()
    }

    /// Sets a stock row directly, to stage states no call produces.
    async fn stage(store: &ProductStore, product_id: i64, available: i64, reserved: i64) {
        store
            .db
            .transaction(|c| {
                async move {
                    diesel::update(product_stock::table.find(product_id))
                        .set((
                            product_stock::available.eq(available),
                            product_stock::reserved.eq(reserved),
                        ))
                        .execute(c)
                        .await?;
                    Ok(())
                }
                .scope_boxed()
            })
            .await
            .unwrap();
    }

    async fn levels(store: &ProductStore, product_id: i64) -> (i64, i64, i64) {
        let stock = store.product_get(product_id).await.unwrap().stock;
        (stock.available, stock.reserved, stock.sold)
    }

    #[tokio::test]
    async fn the_sql_guard_refuses_moves_the_stock_cannot_take_and_writes_nothing() {
        let db = TestDatabase::create("product_guard").await.unwrap();
        let app = crate::build(ServerConfig::for_tests("product", db.url.clone()))
            .await
            .unwrap();
        let store = ProductStore::new(app.database().clone());
        let brand = store
            .brand_create(&NewBrand {
                name: BrandName::parse("name", "Acme").unwrap(),
                description: BrandDescription::parse("description", "").unwrap(),
            })
            .await
            .unwrap();
        let product = store
            .product_create(&NewProduct {
                brand_id: brand.id,
                name: ProductName::parse("name", "Shoe").unwrap(),
                price: Price::parse("price", 1_000).unwrap(),
                status: ProductStatus::OnSale,
                stock: StockUnits::parse("stock", 5).unwrap(),
            })
            .await
            .unwrap();
        let id = product.id;
        use StockMove::*;

        // 5 available: 3 reserved, then 1 of them sold.
        assert!(apply(&store, id, AvailableToReserved, 3).await);
        assert!(apply(&store, id, ReservedToSold, 1).await);
        assert_eq!(levels(&store, id).await, (2, 2, 1));

        // Each move of one unit more than its source holds (what a row read
        // too high would let the domain allow) is refused and writes nothing.
        for (step, quantity) in [
            (AvailableToReserved, 3),
            (ReservedToSold, 3),
            (ReservedToAvailable, 3),
            (SoldToAvailable, 2),
        ] {
            assert!(
                !apply(&store, id, step, quantity).await,
                "{step:?} {quantity}"
            );
            assert_eq!(levels(&store, id).await, (2, 2, 1), "{step:?} {quantity}");
        }
        // A negative quantity is a bug, never a move.
        assert!(try_apply(&store, id, SoldToAvailable, -1).await.is_err());
        // A target bucket that would overflow is refused too (MySQL would
        // fail the statement otherwise).
        stage(&store, id, 2, i64::MAX - 1).await;
        assert!(!apply(&store, id, AvailableToReserved, 2).await);
        assert!(apply(&store, id, AvailableToReserved, 1).await);
        assert_eq!(levels(&store, id).await, (1, i64::MAX, 1));
        stage(&store, id, 2, 2).await;
        // An unknown product matches no row.
        assert!(!apply(&store, id + 1_000, AvailableToReserved, 1).await);

        // Within bounds, the move is relative to the row as it is, whatever
        // was read: exactly the source bucket, down to zero.
        assert!(apply(&store, id, AvailableToReserved, 2).await);
        assert_eq!(levels(&store, id).await, (0, 4, 1));
        assert!(apply(&store, id, ReservedToAvailable, 4).await);
        assert!(apply(&store, id, SoldToAvailable, 1).await);
        assert_eq!(levels(&store, id).await, (5, 0, 0));

        // Through the saga step (domain check, then the guard): a reservation
        // of more than is available is STOCK_INSUFFICIENT and leaves nothing.
        let saga = SagaId::parse("saga_id", &uuid::Uuid::new_v4().to_string()).unwrap();
        let order = ReserveOrder::parse(saga.as_str(), &[(id, 6)]).unwrap();
        let refused = store.reservation_create(&order, 0).await.unwrap_err();
        assert_eq!(refused.reason(), "STOCK_INSUFFICIENT");
        assert_eq!(levels(&store, id).await, (5, 0, 0));

        drop(app);
        db.drop_database().await.unwrap();
    }
}
