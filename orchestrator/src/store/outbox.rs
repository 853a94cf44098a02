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
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Datetime, Text};
use diesel_async::{AsyncMysqlConnection, RunQueryDsl};

use super::OrderStore;
use super::rows::OrderRow;
use super::rows::schema::{orders, outbox};
use crate::domain::order::{OrderEventKind, OrderState};

/// The relay's claim (see [`OrderStore::outbox_claim`]). Diesel cannot say
/// `UPDATE ... ORDER BY ... LIMIT`; MariaDB lets the subquery read the
/// table the statement updates. Binds: owner, until, now, owner, limit.
const CLAIM: &str = "UPDATE outbox o SET o.claimed_by = ?, o.claim_until = ? \
     WHERE o.published_at IS NULL \
     AND (o.claim_until IS NULL OR o.claim_until < ? OR o.claimed_by = ?) \
     AND NOT EXISTS (SELECT 1 FROM outbox e WHERE e.order_id = o.order_id \
     AND e.published_at IS NULL AND e.id < o.id) \
     ORDER BY o.id LIMIT ?";

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
    ///
    /// Two statements, no transaction: one guarded UPDATE claims (at READ
    /// COMMITTED a row another relay is claiming is judged by its committed
    /// version, so two relays never wait on each other nor take the same
    /// row), then one read joins the rows claimed with `until` to their
    /// orders. A claim whose read is lost is simply retaken next round.
    pub async fn outbox_claim(
        &self,
        owner: &str,
        until: NaiveDateTime,
        limit: i64,
    ) -> Result<Vec<PendingEvent>, ServiceError> {
        let claimed = self
            .db
            .read(|c| {
                async move {
                    Ok(diesel::sql_query(CLAIM)
                        .bind::<Text, _>(owner)
                        .bind::<Datetime, _>(until)
                        .bind::<Datetime, _>(now())
                        .bind::<Text, _>(owner)
                        .bind::<BigInt, _>(limit)
                        .prepared()
                        .execute(c)
                        .await?)
                }
                .scope_boxed()
            })
            .await?;
        if claimed == 0 {
            return Ok(Vec::new());
        }
        let rows: Vec<(OutboxRow, OrderRow)> = self
            .db
            .read(|c| {
                async move {
                    Ok(outbox::table
                        .inner_join(orders::table)
                        .filter(outbox::published_at.is_null())
                        .filter(outbox::claimed_by.eq(owner))
                        .filter(outbox::claim_until.eq(until))
                        .order(outbox::id)
                        .limit(limit)
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

    /// Marks `ids` published (those still claimed by `owner`): one
    /// statement, no transaction.
    pub async fn outbox_published(&self, owner: &str, ids: &[i64]) -> Result<(), ServiceError> {
        if ids.is_empty() {
            return Ok(());
        }
        self.db
            .read(|c| {
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

    /// Pending events and the oldest one's time: a range of the pending
    /// index, however many published rows are kept.
    pub async fn outbox_backlog(&self) -> Result<(i64, Option<NaiveDateTime>), ServiceError> {
        self.db
            .read(|c| {
                async move {
                    Ok(outbox::table
                        .filter(outbox::published_at.is_null())
                        .select((
                            diesel::dsl::count_star(),
                            diesel::dsl::min(outbox::occurred_at),
                        ))
                        .first::<(i64, Option<NaiveDateTime>)>(c)
                        .await?)
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
