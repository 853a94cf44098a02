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
use commerce_platform::db::{PreparedExt, ScopedFutureExt, padded};
use commerce_platform::{SagaCall, SagaId, ServiceError, time};
use diesel::mysql::Mysql;
use diesel::prelude::*;
use diesel::query_builder::{AstPass, QueryFragment, QueryId};
use diesel::sql_types::{BigInt, Datetime};
use diesel_async::{AsyncMysqlConnection, RunQueryDsl};

use super::ProductStore;
use super::models::{ReservationRow, SnapshotRow, StockRow, snapshot_from_row};
use super::schema::{brands, product_stock, products, reservations};
use crate::domain::{
    OrderId, ReleaseOutcome, Reservation, ReservationState, ReserveOrder, ReservedLine, Stock,
    StockMove, plan_reservation,
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
    // One read of every product's snapshot and stock, without a lock: the
    // guarded UPDATE below is what decides, and the plan only explains a
    // refusal early. The `IN` list is padded to a power of two (repeating
    // an id changes no result), so a handful of statements cover every
    // order and each stays prepared.
    let rows = products::table
        .inner_join(brands::table)
        .inner_join(product_stock::table)
        .filter(products::id.eq_any(padded(order.product_ids())))
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
        .prepared()
        .load::<(SnapshotRow, StockRow)>(c)
        .await?;
    let mut stock = Vec::with_capacity(rows.len());
    let mut snapshots = Vec::with_capacity(rows.len());
    for (snapshot, row) in rows {
        snapshots.push(snapshot_from_row(snapshot)?);
        stock.push(Stock::from(row));
    }
    let plan = plan_reservation(order, &stock, &snapshots)?;

    let now = time::now();
    let moves: Vec<(i64, i64)> = plan
        .iter()
        .map(|p| (p.line.product_id, p.line.quantity))
        .collect();
    if !stock_apply(c, &moves, StockMove::AvailableToReserved, now).await? {
        // The domain found enough units in the rows it read, a guard did
        // not: refuse from the rows as they are (the whole reservation rolls
        // back with this error).
        for planned in &plan {
            let line = &planned.line;
            let current = stock_read(c, line.product_id).await?;
            if current
                .moved(StockMove::AvailableToReserved, line.quantity)
                .is_none()
            {
                return Err(current.reserve_refusal(&line.product_name, line.quantity));
            }
        }
        return Err(ServiceError::internal(
            "a stock guard refused a reservation that every row allows",
        ));
    }
    // The plan is in product-id order, as the lines are stored.
    let lines: Vec<ReservedLine> = plan.into_iter().map(|planned| planned.line).collect();
    diesel::insert_into(reservations::table)
        .values((
            reservations::saga_id.eq(order.saga.as_str()),
            reservations::state.eq(ReservationState::Reserved.as_str()),
            // Both always bound (NULL when absent), never DEFAULT: one SQL
            // text, so the statement stays cached.
            reservations::order_id.eq(order.order_id.as_ref().map(OrderId::as_str)),
            reservations::ordered_at.eq(Some(order.ordered_at.unwrap_or(now))),
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

/// Moves every `(product id, quantity)` of `moves` (distinct products) with
/// one guarded relative UPDATE; for `AvailableToReserved`:
///
/// ```sql
/// UPDATE product_stock SET available = available - CASE product_id WHEN ? THEN ? .. END,
///   reserved = reserved + CASE .. END, updated_at = ?
/// WHERE product_id IN (..) AND available >= CASE .. END
///   AND reserved <= 9223372036854775807 - CASE .. END
/// ```
///
/// (the bounds of [`StockMove::bounds`]). One statement instead of one per
/// line, and its row locks are taken in primary-key order like every other
/// transaction's. False when a guard matched fewer rows than there are
/// products: the caller refuses, and its transaction rolls back the rows
/// that did move.
async fn stock_apply(
    c: &mut AsyncMysqlConnection,
    moves: &[(i64, i64)],
    step: StockMove,
    now: chrono::NaiveDateTime,
) -> Result<bool, ServiceError> {
    if let Some((product_id, quantity)) = moves.iter().find(|(_, q)| step.bounds(*q).is_none()) {
        return Err(ServiceError::internal(format!(
            "cannot move {quantity} units of product {product_id}"
        )));
    }
    let matched = StockMoves::new(step, moves, now).execute(c).await?;
    match matched.cmp(&moves.len()) {
        std::cmp::Ordering::Less => Ok(false),
        std::cmp::Ordering::Equal => Ok(true),
        std::cmp::Ordering::Greater => Err(ServiceError::internal(format!(
            "stock update of {} products matched {matched} rows",
            moves.len()
        ))),
    }
}

/// The statement of [`stock_apply`]. Its list of moves is padded to a power
/// of two by repeating the last move (a repeated `WHEN` and `IN` entry change
/// nothing), so a few statements serve every order and each is prepared once
/// per connection (cached by its SQL text).
struct StockMoves {
    from: &'static str,
    to: &'static str,
    moves: Vec<(i64, i64)>,
    now: chrono::NaiveDateTime,
}

impl StockMoves {
    fn new(step: StockMove, moves: &[(i64, i64)], now: chrono::NaiveDateTime) -> Self {
        let (from, to) = match step {
            StockMove::AvailableToReserved => ("available", "reserved"),
            StockMove::ReservedToSold => ("reserved", "sold"),
            StockMove::ReservedToAvailable => ("reserved", "available"),
            StockMove::SoldToAvailable => ("sold", "available"),
        };
        Self {
            from,
            to,
            moves: padded(moves.to_vec()),
            now,
        }
    }

    /// `CASE product_id WHEN ? THEN ? .. END`: each move's quantity.
    fn quantities<'b>(&'b self, out: &mut AstPass<'_, 'b, Mysql>) -> QueryResult<()> {
        out.push_sql("CASE `product_id`");
        for (product_id, quantity) in &self.moves {
            out.push_sql(" WHEN ");
            out.push_bind_param::<BigInt, _>(product_id)?;
            out.push_sql(" THEN ");
            out.push_bind_param::<BigInt, _>(quantity)?;
        }
        out.push_sql(" END");
        Ok(())
    }
}

impl QueryFragment<Mysql> for StockMoves {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Mysql>) -> QueryResult<()> {
        let (from, to) = (self.from, self.to);
        out.push_sql("UPDATE `product_stock` SET ");
        out.push_identifier(from)?;
        out.push_sql(" = ");
        out.push_identifier(from)?;
        out.push_sql(" - ");
        self.quantities(&mut out)?;
        out.push_sql(", ");
        out.push_identifier(to)?;
        out.push_sql(" = ");
        out.push_identifier(to)?;
        out.push_sql(" + ");
        self.quantities(&mut out)?;
        out.push_sql(", `updated_at` = ");
        out.push_bind_param::<Datetime, _>(&self.now)?;
        out.push_sql(" WHERE `product_id` IN (");
        for (k, (product_id, _)) in self.moves.iter().enumerate() {
            if k > 0 {
                out.push_sql(", ");
            }
            out.push_bind_param::<BigInt, _>(product_id)?;
        }
        out.push_sql(") AND ");
        out.push_identifier(from)?;
        out.push_sql(" >= ");
        self.quantities(&mut out)?;
        out.push_sql(" AND ");
        out.push_identifier(to)?;
        out.push_sql(&format!(" <= {} - ", i64::MAX));
        self.quantities(&mut out)?;
        Ok(())
    }

    fn is_safe_to_cache_prepared(&self, _: &Mysql) -> QueryResult<bool> {
        Ok(true)
    }
}

impl QueryId for StockMoves {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
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
    let moves: Vec<(i64, i64)> = lines.iter().map(|l| (l.product_id, l.quantity)).collect();
    if stock_apply(c, &moves, step, now).await? {
        return Ok(());
    }
    for line in lines {
        let current = stock_read(c, line.product_id).await?;
        if current.moved(step, line.quantity).is_none() {
            return Err(current.held_move_refusal(step, line.quantity));
        }
    }
    Err(ServiceError::internal(format!(
        "a stock guard refused a {step:?} move that every row allows"
    )))
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

    use commerce_platform::db::ScopedFutureExt;
    use commerce_platform::{Application, ServerConfig};
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
                async move { stock_apply(c, &[(product_id, quantity)], step, time::now()).await }
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

    /// A store on a database of its own with brand "Acme" and one ON_SALE
    /// product per `(name, stock)` at 1,000 KRW; their ids in that order.
    async fn shop(
        label: &str,
        products: &[(&str, i64)],
    ) -> (TestDatabase, Application, ProductStore, Vec<i64>) {
        let db = TestDatabase::create(label).await.unwrap();
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
        let mut ids = Vec::new();
        for &(name, stock) in products {
            let product = store
                .product_create(&NewProduct {
                    brand_id: brand.id,
                    name: ProductName::parse("name", name).unwrap(),
                    price: Price::parse("price", 1_000).unwrap(),
                    status: ProductStatus::OnSale,
                    stock: StockUnits::parse("stock", stock).unwrap(),
                })
                .await
                .unwrap();
            ids.push(product.id);
        }
        (db, app, store, ids)
    }

    #[tokio::test]
    async fn the_sql_guard_refuses_moves_the_stock_cannot_take_and_writes_nothing() {
        let (db, app, store, ids) = shop("product_guard", &[("Shoe", 5)]).await;
        let id = ids[0];
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

    /// Several products move in one statement (three, padded to four):
    /// all of them, or with one guard short, a refusal that the saga step
    /// turns into a rollback of every row.
    #[tokio::test]
    async fn one_statement_moves_every_line_or_the_step_refuses_them_all() {
        let (db, app, store, ids) =
            shop("product_moves", &[("Hat", 5), ("Scarf", 5), ("Glove", 2)]).await;
        let (hat, scarf, glove) = (ids[0], ids[1], ids[2]);
        let moves = |store: &ProductStore, moves: Vec<(i64, i64)>, step| {
            let store = store.clone();
            async move {
                store
                    .db
                    .transaction(|c| {
                        let moves = &moves;
                        async move { stock_apply(c, moves, step, time::now()).await }.scope_boxed()
                    })
                    .await
                    .unwrap()
            }
        };
        use StockMove::*;
        assert!(
            moves(
                &store,
                vec![(hat, 1), (scarf, 2), (glove, 2)],
                AvailableToReserved
            )
            .await
        );
        assert_eq!(levels(&store, hat).await, (4, 1, 0));
        assert_eq!(levels(&store, scarf).await, (3, 2, 0));
        assert_eq!(levels(&store, glove).await, (0, 2, 0));
        // The glove has nothing left: fewer rows match than products.
        assert!(
            !moves(
                &store,
                vec![(hat, 1), (scarf, 1), (glove, 1)],
                AvailableToReserved
            )
            .await
        );
        assert!(moves(&store, vec![(hat, 1), (glove, 2)], ReservedToSold).await);
        assert_eq!(levels(&store, glove).await, (0, 0, 2));

        // Through the saga step: the short glove refuses the whole
        // reservation with its own reason, and the other rows roll back.
        let before = [
            levels(&store, hat).await,
            levels(&store, scarf).await,
            levels(&store, glove).await,
        ];
        stage(&store, glove, 1, 0).await;
        let saga = SagaId::parse("saga_id", &uuid::Uuid::new_v4().to_string()).unwrap();
        let order =
            ReserveOrder::parse(saga.as_str(), &[(hat, 1), (scarf, 1), (glove, 2)]).unwrap();
        let refused = store.reservation_create(&order, 0).await.unwrap_err();
        assert_eq!(refused.reason(), "STOCK_INSUFFICIENT");
        assert_eq!(levels(&store, hat).await, before[0]);
        assert_eq!(levels(&store, scarf).await, before[1]);
        let saga = SagaId::parse("saga_id", &uuid::Uuid::new_v4().to_string()).unwrap();
        let order =
            ReserveOrder::parse(saga.as_str(), &[(hat, 1), (scarf, 1), (glove, 1)]).unwrap();
        let reserved = store.reservation_create(&order, 0).await.unwrap();
        assert_eq!(reserved.lines.len(), 3);
        assert_eq!(levels(&store, glove).await, (0, 1, 2));

        drop(app);
        db.drop_database().await.unwrap();
    }
}
