//! What reconciliation reads from the orchestrator's own database: settled
//! orders by when they last changed, and which saga ids are known.

use std::collections::HashSet;

use chrono::NaiveDateTime;
use commerce_platform::db::ScopedFutureExt;
use commerce_platform::error::ServiceError;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use super::OrderStore;
use super::rows::OrderRow;
use super::rows::schema::{orders, sagas};
use crate::domain::order::OrderState;

/// Orders whose sagas have finished with them.
const SETTLED: [OrderState; 5] = [
    OrderState::Confirmed,
    OrderState::Shipped,
    OrderState::Delivered,
    OrderState::Rejected,
    OrderState::Cancelled,
];

impl OrderStore {
    /// Settled orders last changed in `since..until`, oldest change first,
    /// at most `limit`.
    pub async fn orders_settled_between(
        &self,
        since: NaiveDateTime,
        until: NaiveDateTime,
        limit: i64,
    ) -> Result<Vec<OrderRow>, ServiceError> {
        let states: Vec<&str> = SETTLED.iter().map(|s| s.as_str()).collect();
        self.db
            .read(|c| {
                async move {
                    Ok(orders::table
                        .filter(orders::updated_at.ge(since))
                        .filter(orders::updated_at.lt(until))
                        .filter(orders::state.eq_any(states))
                        .order((orders::updated_at, orders::id))
                        .limit(limit)
                        .select(OrderRow::as_select())
                        .load(c)
                        .await?)
                }
                .scope_boxed()
            })
            .await
    }

    /// Which of `ids` are sagas this orchestrator has run.
    pub async fn sagas_known(&self, ids: &[String]) -> Result<HashSet<String>, ServiceError> {
        if ids.is_empty() {
            return Ok(HashSet::new());
        }
        let ids = ids.to_vec();
        self.db
            .read(|c| {
                async move {
                    Ok(sagas::table
                        .filter(sagas::id.eq_any(ids))
                        .select(sagas::id)
                        .load::<String>(c)
                        .await?
                        .into_iter()
                        .collect())
                }
                .scope_boxed()
            })
            .await
    }
}
