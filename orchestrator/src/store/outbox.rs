//! The order event outbox: rows written with the order's state change, and
//! what the relay needs to publish them (claim, mark, count, purge).
//!
//! A row only points at its order (event id, kind, time): an order's lines
//! and amounts are final once it leaves PENDING, so the order row read at
//! publish time says what the event must say.

use chrono::NaiveDateTime;
use commerce_platform::db::{PreparedExt, ScopedFutureExt, padded};
use commerce_platform::error::ServiceError;
use commerce_platform::time::now;
use diesel::dsl::{exists, not};
use diesel::prelude::*;
use diesel_async::{AsyncMysqlConnection, RunQueryDsl};

use super::OrderStore;
use super::rows::OrderRow;
use super::rows::schema::{orders, outbox};
use crate::domain::order::{OrderEventKind, OrderState};

/// One outbox row, as the relay reads it.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = outbox)]
pub struct OutboxRow {
    pub id: i64,
    pub event_id: String,
    pub order_id: String,
    pub kind: String,
    pub occurred_at: NaiveDateTime,
}

/// An event ready to publish: its row and its order as committed.
#[derive(Debug, Clone)]
pub struct PendingEvent {
    pub row: OutboxRow,
    pub order: OrderRow,
}

/// What operators see of the outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxCounts {
    pub pending: i64,
    pub oldest_pending_at: Option<NaiveDateTime>,
    pub published_kept: i64,
}

/// Records the event of the order entering `state`, if it has one, in the
/// caller's transaction (the one that changes the state). True when a row
/// was written.
pub(super) async fn outbox_record(
    c: &mut AsyncMysqlConnection,
    order_id: &str,
    state: OrderState,
) -> Result<bool, ServiceError> {
    let Some(kind) = OrderEventKind::on_entering(state) else {
        return Ok(false);
    };
    diesel::insert_into(outbox::table)
        .values((
            outbox::event_id.eq(uuid::Uuid::now_v7().hyphenated().to_string()),
            outbox::order_id.eq(order_id),
            outbox::kind.eq(kind.as_str()),
            outbox::occurred_at.eq(now()),
        ))
        .prepared()
        .execute(c)
        .await?;
    Ok(true)
}

impl OrderStore {
    /// Claims up to `limit` unpublished events for `owner` until `until`:
    /// the oldest first, skipping rows another relay holds (its claim not
    /// yet expired) and any row whose order has an earlier unpublished
    /// event, so one order's events go out in the order they committed.
    /// `owner`'s own unexpired claims are taken again (a retry after a
    /// failed publish).
    pub async fn outbox_claim(
        &self,
        owner: &str,
        until: NaiveDateTime,
        limit: i64,
    ) -> Result<Vec<PendingEvent>, ServiceError> {
        let ids = self
            .db
            .transaction(|c| {
                async move {
                    let earlier = diesel::alias!(outbox as earlier);
                    let at = now();
                    let ids: Vec<i64> = outbox::table
                        .filter(outbox::published_at.is_null())
                        .filter(
                            outbox::claim_until
                                .is_null()
                                .or(outbox::claim_until.lt(at))
                                .or(outbox::claimed_by.eq(owner)),
                        )
                        .filter(not(exists(
                            earlier
                                .filter(earlier.field(outbox::order_id).eq(outbox::order_id))
                                .filter(earlier.field(outbox::published_at).is_null())
                                .filter(earlier.field(outbox::id).lt(outbox::id)),
                        )))
                        .order(outbox::id)
                        .limit(limit)
                        .select(outbox::id)
                        .for_update()
                        .skip_locked()
                        .prepared()
                        .load(c)
                        .await?;
                    if !ids.is_empty() {
                        diesel::update(outbox::table.filter(outbox::id.eq_any(&ids)))
                            .set((outbox::claimed_by.eq(owner), outbox::claim_until.eq(until)))
                            .execute(c)
                            .await?;
                    }
                    Ok(ids)
                }
                .scope_boxed()
            })
            .await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<(OutboxRow, OrderRow)> = self
            .db
            .read(|c| {
                let ids = padded(ids.clone());
                async move {
                    Ok(outbox::table
                        .inner_join(orders::table)
                        .filter(outbox::id.eq_any(ids))
                        .order(outbox::id)
                        .select((OutboxRow::as_select(), OrderRow::as_select()))
                        .prepared()
                        .load(c)
                        .await?)
                }
                .scope_boxed()
            })
            .await?;
        Ok(rows
            .into_iter()
            .map(|(row, order)| PendingEvent { row, order })
            .collect())
    }

    /// Marks `ids` published (those still claimed by `owner`).
    pub async fn outbox_published(&self, owner: &str, ids: &[i64]) -> Result<(), ServiceError> {
        if ids.is_empty() {
            return Ok(());
        }
        self.db
            .transaction(|c| {
                async move {
                    diesel::update(
                        outbox::table
                            .filter(outbox::id.eq_any(padded(ids.to_vec())))
                            .filter(outbox::claimed_by.eq(owner)),
                    )
                    .set(outbox::published_at.eq(now()))
                    .prepared()
                    .execute(c)
                    .await?;
                    Ok(())
                }
                .scope_boxed()
            })
            .await
    }

    /// Pending and kept events, and the oldest pending one's time.
    pub async fn outbox_counts(&self) -> Result<OutboxCounts, ServiceError> {
        self.db
            .read(|c| {
                async move {
                    let (pending, oldest_pending_at) = outbox::table
                        .filter(outbox::published_at.is_null())
                        .select((
                            diesel::dsl::count_star(),
                            diesel::dsl::min(outbox::occurred_at),
                        ))
                        .first::<(i64, Option<NaiveDateTime>)>(c)
                        .await?;
                    let published_kept = outbox::table
                        .filter(outbox::published_at.is_not_null())
                        .count()
                        .get_result(c)
                        .await?;
                    Ok(OutboxCounts {
                        pending,
                        oldest_pending_at,
                        published_kept,
                    })
                }
                .scope_boxed()
            })
            .await
    }

    /// Deletes up to `limit` events published before `before`; how many.
    pub async fn outbox_purge(
        &self,
        before: NaiveDateTime,
        limit: i64,
    ) -> Result<usize, ServiceError> {
        self.db
            .transaction(|c| {
                async move {
                    let ids: Vec<i64> = outbox::table
                        .filter(outbox::published_at.lt(before))
                        .order(outbox::id)
                        .limit(limit)
                        .select(outbox::id)
                        .load(c)
                        .await?;
                    if ids.is_empty() {
                        return Ok(0);
                    }
                    Ok(
                        diesel::delete(outbox::table.filter(outbox::id.eq_any(&ids)))
                            .execute(c)
                            .await?,
                    )
                }
                .scope_boxed()
            })
            .await
    }
}
