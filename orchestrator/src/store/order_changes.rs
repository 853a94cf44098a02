//! What a saga's write changes on its order, applied in the same
//! transaction as the write.

use commerce_platform::error::ServiceError;
use commerce_platform::time::now;
use diesel::prelude::*;
use diesel_async::{AsyncMysqlConnection, RunQueryDsl};

use super::rows::OrderLineRow;
use super::rows::schema::{order_lines, orders};
use crate::domain::order::{OrderState, Pricing, SnapshotLine};
use crate::domain::saga::Rejection;

/// A change to the order made with a saga write.
#[derive(Debug, Clone)]
pub enum OrderChange {
    /// The stock is reserved: record the snapshot, the subtotal and the
    /// quoted discount (points are recorded once deducted).
    Priced {
        lines: Vec<SnapshotLine>,
        pricing: Pricing,
    },
    /// The points the point service deducted for the order (0 once
    /// refunded by the order's compensation).
    PointsPaid(i64),
    /// Every step was undone: nothing paid, no coupon applied.
    Undone,
    /// From one state to the next (the write fails unless the order is in
    /// `from`), with the rejection that decided it.
    Transition {
        from: OrderState,
        to: OrderState,
        reason: Option<Rejection>,
    },
}

pub(super) async fn order_apply(
    c: &mut AsyncMysqlConnection,
    order_id: &str,
    change: &OrderChange,
) -> Result<(), ServiceError> {
    match change {
        OrderChange::Priced { lines, pricing } => {
            let rows: Vec<OrderLineRow> = lines
                .iter()
                .map(|line| OrderLineRow::snapshot(order_id, line))
                .collect();
            // The reservation merges lines per product as the order did, so
            // this replaces each requested line by its snapshot.
            diesel::replace_into(order_lines::table)
                .values(&rows)
                .execute(c)
                .await?;
            diesel::update(orders::table.find(order_id))
                .set((
                    orders::subtotal.eq(pricing.subtotal),
                    orders::discount.eq(pricing.discount),
                    orders::updated_at.eq(now()),
                ))
                .execute(c)
                .await?;
        }
        OrderChange::PointsPaid(amount) => {
            diesel::update(orders::table.find(order_id))
                .set((
                    orders::points_paid.eq(*amount),
                    orders::updated_at.eq(now()),
                ))
                .execute(c)
                .await?;
        }
        OrderChange::Undone => {
            diesel::update(orders::table.find(order_id))
                .set((
                    orders::discount.eq(0),
                    orders::points_paid.eq(0),
                    orders::updated_at.eq(now()),
                ))
                .execute(c)
                .await?;
        }
        OrderChange::Transition { from, to, reason } => {
            let (code, message) = reason
                .as_ref()
                .map_or(("", ""), |r| (r.reason.as_str(), r.message.as_str()));
            let matched = diesel::update(
                orders::table
                    .filter(orders::id.eq(order_id))
                    .filter(orders::state.eq(from.as_str())),
            )
            .set((
                orders::state.eq(to.as_str()),
                orders::reason.eq(code),
                orders::reason_message.eq(message.chars().take(500).collect::<String>()),
                orders::updated_at.eq(now()),
            ))
            .execute(c)
            .await?;
            if matched == 0 {
                return Err(ServiceError::internal(format!(
                    "order {order_id} is not {} as its saga expects",
                    from.as_str()
                )));
            }
        }
    }
    Ok(())
}
