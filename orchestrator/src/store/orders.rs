//! Orders and their lines: placing one (with its saga), reading them, and
//! the fulfilment transitions.

use commerce_platform::UserId;
use commerce_platform::db::{ScopedFutureExt, is_unique_violation};
use commerce_platform::error::ServiceError;
use commerce_platform::paging::PageRequest;
use commerce_platform::time::now;
use diesel::prelude::*;
use diesel_async::{AsyncMysqlConnection, RunQueryDsl};

use super::outbox::outbox_record;
use super::rows::schema::orders;
use super::rows::{OrderRecord, OrderRow};
use super::sagas::{NewSaga, saga_insert};
use super::{Lease, OrderStore};
use crate::domain::order::{OrderEvent, OrderState, PlaceOrder, reason};

/// What placing an order found.
#[derive(Debug)]
pub enum Placed {
    /// A new order; its saga is leased to the caller.
    Created(Lease),
    /// The same user and key placed this order before.
    Existing(Box<OrderRecord>),
}

impl OrderStore {
    /// Records a new order with its saga (leased to its creator) and the
    /// saga's first events, or finds the order the same key placed.
    pub async fn order_place(
        &self,
        order_id: &str,
        request: &PlaceOrder,
        saga: &NewSaga<'_>,
    ) -> Result<Placed, ServiceError> {
        let fingerprint = &request.fingerprint();
        self.db
            .transaction(|c| {
                async move {
                    let pending =
                        OrderRow::pending(order_id, request, fingerprint, saga.id.as_str())?;
                    let inserted = diesel::insert_into(orders::table)
                        .values(&pending)
                        .execute(c)
                        .await;
                    match inserted {
                        Ok(_) => {}
                        Err(e) if is_unique_violation(&e) => {
                            let existing = orders::table
                                .filter(orders::user_id.eq(request.user.as_str()))
                                .filter(
                                    orders::idempotency_key.eq(request.idempotency_key.as_str()),
                                )
                                .select(OrderRow::as_select())
                                .first(c)
                                .await?;
                            if existing.request_json != *fingerprint {
                                return Err(ServiceError::already_exists(
                                    reason::IDEMPOTENCY_KEY_REUSED,
                                    "this idempotency key was used for a different order",
                                ));
                            }
                            return Ok(Placed::Existing(Box::new(OrderRecord::from_row(
                                existing,
                            )?)));
                        }
                        Err(e) => return Err(e.into()),
                    }
                    Ok(Placed::Created(saga_insert(c, saga).await?))
                }
                .scope_boxed()
            })
            .await
    }

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
                    OrderRecord::from_row(order)
                }
                .scope_boxed()
            })
            .await
    }

    /// A user's orders, newest first, and how many there are.
    pub async fn orders_list(
        &self,
        user: &UserId,
        page: PageRequest,
    ) -> Result<(Vec<OrderRecord>, i64), ServiceError> {
        self.db
            .read(|c| {
                async move {
                    let total = orders::table
                        .filter(orders::user_id.eq(user.as_str()))
                        .count()
                        .get_result::<i64>(c)
                        .await?;
                    let rows = orders::table
                        .filter(orders::user_id.eq(user.as_str()))
                        .order((orders::created_at.desc(), orders::id.desc()))
                        .limit(page.limit())
                        .offset(page.offset())
                        .select(OrderRow::as_select())
                        .load(c)
                        .await?;
                    let records = rows
                        .into_iter()
                        .map(OrderRecord::from_row)
                        .collect::<Result<_, _>>()?;
                    Ok((records, total))
                }
                .scope_boxed()
            })
            .await
    }

    /// Applies a fulfilment event (ship, deliver) through the state machine.
    pub async fn order_transition(
        &self,
        order_id: &str,
        event: OrderEvent,
    ) -> Result<OrderRecord, ServiceError> {
        self.db
            .transaction(|c| {
                async move {
                    let order = order_lock(c, order_id).await?;
                    let next = OrderState::parse(&order.state)?.apply(event)?;
                    order_set_state(c, order_id, next).await?;
                    let order = order_lock(c, order_id).await?;
                    OrderRecord::from_row(order)
                }
                .scope_boxed()
            })
            .await
            .inspect(|_| self.outbox_written.notify_one())
    }

    /// Moves the order from `from` to `to` and records its cancel saga
    /// (leased to its creator) with the saga's first events, if the order is
    /// still in `from`; `None` (nothing written) when it is not.
    pub async fn order_cancel_begin(
        &self,
        order_id: &str,
        (from, to): (OrderState, OrderState),
        saga: &NewSaga<'_>,
    ) -> Result<Option<Lease>, ServiceError> {
        self.db
            .transaction(|c| {
                async move {
                    let order = order_lock(c, order_id).await?;
                    if order.state != from.as_str() {
                        return Ok(None);
                    }
                    let lease = saga_insert(c, saga).await?;
                    order_set_state(c, order_id, to).await?;
                    Ok(Some(lease))
                }
                .scope_boxed()
            })
            .await
    }
}

async fn order_lock(
    c: &mut AsyncMysqlConnection,
    order_id: &str,
) -> Result<OrderRow, ServiceError> {
    orders::table
        .find(order_id)
        .select(OrderRow::as_select())
        .for_update()
        .first(c)
        .await
        .optional()?
        .ok_or_else(|| ServiceError::not_found("order", order_id))
}

async fn order_set_state(
    c: &mut AsyncMysqlConnection,
    order_id: &str,
    state: OrderState,
) -> Result<(), ServiceError> {
    diesel::update(orders::table.find(order_id))
        .set((
            orders::state.eq(state.as_str()),
            orders::updated_at.eq(now()),
        ))
        .execute(c)
        .await?;
    outbox_record(c, order_id, state).await?;
    Ok(())
}
