//! Saga reservations of stock: reserve (action), confirm (action) and release
//! (compensation), each in one transaction with its barrier row.

use commerce_platform::barrier::{self, SagaPair};
use commerce_platform::db::ScopedFutureExt;
use commerce_platform::{SagaId, ServiceError, time};
use diesel::prelude::*;
use diesel_async::{AsyncMysqlConnection, RunQueryDsl};

use super::ProductStore;
use super::models::{ReservationLineRow, ReservationRow, SnapshotRow, StockRow, snapshot_from_row};
use super::schema::{brands, product_stock, products, reservation_lines, reservations};
use crate::domain::{
    ReleaseOutcome, Reservation, ReservationState, ReserveOrder, ReservedLine, Stock, StockMove,
    plan_reservation,
};

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
    ) -> Result<Reservation, ServiceError> {
        self.db
            .transaction(|c| {
                async move {
                    barrier::run_action(
                        c,
                        &order.saga,
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
    pub async fn reservation_confirm(&self, saga: &SagaId) -> Result<Reservation, ServiceError> {
        self.db
            .transaction(|c| {
                async move {
                    barrier::run_action(
                        c,
                        saga,
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
    pub async fn reservation_release(&self, saga: &SagaId) -> Result<ReleaseOutcome, ServiceError> {
        self.db
            .transaction(|c| {
                async move {
                    barrier::run_compensation(
                        c,
                        saga,
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
                    let lines = lines_load(c, saga).await?;
                    row.into_reservation(lines)
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
    let ids = order.product_ids();
    let stock = stock_lock(c, &ids).await?;
    let snapshots = products::table
        .inner_join(brands::table)
        .filter(products::id.eq_any(&ids))
        .select((
            products::id,
            products::name,
            products::brand_id,
            brands::name,
            products::price,
            products::status,
        ))
        .load::<SnapshotRow>(c)
        .await?
        .into_iter()
        .map(snapshot_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    let plan = plan_reservation(order, &stock, &snapshots)?;

    let now = time::now();
    for planned in &plan {
        stock_store(c, &planned.stock_after, now).await?;
    }
    diesel::insert_into(reservations::table)
        .values((
            reservations::saga_id.eq(order.saga.as_str()),
            reservations::state.eq(ReservationState::Reserved.as_str()),
            reservations::created_at.eq(now),
            reservations::updated_at.eq(now),
        ))
        .execute(c)
        .await?;
    let lines: Vec<ReservedLine> = plan.into_iter().map(|planned| planned.line).collect();
    let rows: Vec<ReservationLineRow> = lines
        .iter()
        .map(|line| ReservationLineRow::new(order.saga.as_str(), line))
        .collect();
    diesel::insert_into(reservation_lines::table)
        .values(&rows)
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
    let lines = lines_load(c, saga).await?;
    let Some(step) = row.state()?.confirm(saga)? else {
        return row.into_reservation(lines);
    };
    let now = time::now();
    stock_move(c, &lines, step, now).await?;
    state_store(c, saga, ReservationState::Confirmed, now).await?;
    Ok(Reservation {
        state: ReservationState::Confirmed,
        updated_at: now,
        ..row.into_reservation(lines)?
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
    let lines = lines_load(c, saga).await?;
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

/// Locks the stock rows of `product_ids` with one statement, in product-id
/// order: every transaction takes them in the same order, so none deadlock.
async fn stock_lock(
    c: &mut AsyncMysqlConnection,
    product_ids: &[i64],
) -> Result<Vec<Stock>, ServiceError> {
    Ok(product_stock::table
        .filter(product_stock::product_id.eq_any(product_ids))
        .order(product_stock::product_id.asc())
        .select(StockRow::as_select())
        .for_update()
        .load::<StockRow>(c)
        .await?
        .into_iter()
        .map(Stock::from)
        .collect())
}

async fn stock_store(
    c: &mut AsyncMysqlConnection,
    stock: &Stock,
    now: chrono::NaiveDateTime,
) -> Result<(), ServiceError> {
    diesel::update(product_stock::table.find(stock.product_id))
        .set((
            product_stock::available.eq(stock.available),
            product_stock::reserved.eq(stock.reserved),
            product_stock::sold.eq(stock.sold),
            product_stock::updated_at.eq(now),
        ))
        .execute(c)
        .await?;
    Ok(())
}

/// Moves every line's units of a held reservation (`lines` in product-id order).
async fn stock_move(
    c: &mut AsyncMysqlConnection,
    lines: &[ReservedLine],
    step: StockMove,
    now: chrono::NaiveDateTime,
) -> Result<(), ServiceError> {
    let ids: Vec<i64> = lines.iter().map(|line| line.product_id).collect();
    let stock = stock_lock(c, &ids).await?;
    for line in lines {
        let current = stock
            .iter()
            .find(|s| s.product_id == line.product_id)
            .ok_or_else(|| {
                ServiceError::internal(format!(
                    "reserved product {} has no stock row",
                    line.product_id
                ))
            })?;
        stock_store(c, &current.moved_held(step, line.quantity)?, now).await?;
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

async fn lines_load(
    c: &mut AsyncMysqlConnection,
    saga: &SagaId,
) -> Result<Vec<ReservedLine>, ServiceError> {
    Ok(reservation_lines::table
        .filter(reservation_lines::saga_id.eq(saga.as_str()))
        .order(reservation_lines::product_id.asc())
        .select(ReservationLineRow::as_select())
        .load(c)
        .await?
        .into_iter()
        .map(ReservedLine::from)
        .collect())
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
        .execute(c)
        .await?;
    Ok(())
}
