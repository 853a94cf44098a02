//! What the sales ranking reads from MySQL: settled reservations to rebuild
//! it from, and the details of the products it lists.

use chrono::NaiveDateTime;
use commerce_platform::ServiceError;
use commerce_platform::db::ScopedFutureExt;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use super::ProductStore;
use super::models::{ReservationRow, product_from_view, product_view, product_view_columns};
use super::schema::{products, reservations};
use crate::domain::{Product, ReservationState};
use crate::ranking::SettledReservation;

/// Reservations read per statement while rebuilding.
const SETTLED_PAGE: i64 = 500;

impl ProductStore {
    /// One page of the reservations that reached an end (confirmed or
    /// released) for orders placed at or after `since` (their creation time
    /// when they predate `ordered_at`), after saga id `after`, by saga id.
    /// The last saga id of the page is the next page's `after`.
    pub async fn reservations_settled_since(
        &self,
        since: NaiveDateTime,
        after: &str,
    ) -> Result<Vec<(String, SettledReservation)>, ServiceError> {
        self.db
            .read(|c| {
                async move {
                    let rows: Vec<(ReservationRow, Option<String>, Option<NaiveDateTime>)> =
                        reservations::table
                            .filter(reservations::state.eq_any([
                                ReservationState::Confirmed.as_str(),
                                ReservationState::Released.as_str(),
                            ]))
                            .filter(
                                reservations::ordered_at
                                    .ge(since)
                                    .or(reservations::ordered_at
                                        .is_null()
                                        .and(reservations::created_at.ge(since))),
                            )
                            .filter(reservations::saga_id.gt(after))
                            .order(reservations::saga_id)
                            .limit(SETTLED_PAGE)
                            .select((
                                ReservationRow::as_select(),
                                reservations::order_id,
                                reservations::ordered_at,
                            ))
                            .load(c)
                            .await?;
                    rows.into_iter()
                        .map(|(row, order_id, ordered_at)| {
                            let settled = SettledReservation {
                                order_id,
                                ordered_at: ordered_at.unwrap_or(row.created_at),
                                state: row.state()?,
                                lines: row
                                    .lines()?
                                    .iter()
                                    .map(|line| (line.product_id, line.quantity))
                                    .collect(),
                            };
                            Ok((row.saga_id, settled))
                        })
                        .collect()
                }
                .scope_boxed()
            })
            .await
    }

    /// The products of `ids` that exist, in no particular order, with one
    /// statement.
    pub async fn products_by_ids(&self, ids: &[i64]) -> Result<Vec<Product>, ServiceError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        self.db
            .read(|c| {
                async move {
                    product_view()
                        .filter(products::id.eq_any(ids))
                        .select(product_view_columns())
                        .load(c)
                        .await?
                        .into_iter()
                        .map(product_from_view)
                        .collect()
                }
                .scope_boxed()
            })
            .await
    }
}
