//! What a saga's write changes on its order, applied in the same
//! transaction as the write.

use commerce_platform::db::PreparedExt;
use commerce_platform::error::ServiceError;
use commerce_platform::time::now;
use diesel::prelude::*;
use diesel_async::{AsyncMysqlConnection, RunQueryDsl};

use super::outbox::outbox_record;
use super::rows::OrderLineRow;
use super::rows::schema::orders;
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

/// The columns a saga write changes on its order, folded from its changes
/// (later ones win), so that one UPDATE applies them all.
#[derive(Debug, Default, AsChangeset)]
#[diesel(table_name = orders)]
struct OrderPatch {
    lines_json: Option<String>,
    subtotal: Option<i64>,
    discount: Option<i64>,
    points_paid: Option<i64>,
    state: Option<&'static str>,
    reason: Option<String>,
    reason_message: Option<String>,
    updated_at: Option<chrono::NaiveDateTime>,
}

/// Applies a write's changes to its order with one UPDATE (its lines are a
/// column of it), guarded by the state a transition expects.
pub(super) async fn order_apply(
    c: &mut AsyncMysqlConnection,
    order_id: &str,
    changes: &[OrderChange],
) -> Result<(), ServiceError> {
    let mut patch = OrderPatch::default();
    let mut expected = None;
    let mut entered = None;
    for change in changes {
        match change {
            OrderChange::Priced { lines, pricing } => {
                // The reservation merges lines per product as the order
                // did: its snapshot lines replace the requested ones.
                let lines: Vec<OrderLineRow> = lines.iter().map(OrderLineRow::snapshot).collect();
                patch.lines_json = Some(OrderLineRow::to_json(&lines)?);
                patch.subtotal = Some(pricing.subtotal);
                patch.discount = Some(pricing.discount);
            }
            OrderChange::PointsPaid(amount) => patch.points_paid = Some(*amount),
            OrderChange::Undone => {
                patch.discount = Some(0);
                patch.points_paid = Some(0);
            }
            OrderChange::Transition { from, to, reason } => {
                let (code, message) = reason
                    .as_ref()
                    .map_or(("", ""), |r| (r.reason.as_str(), r.message.as_str()));
                expected = Some(*from);
                entered = Some(*to);
                patch.state = Some(to.as_str());
                patch.reason = Some(code.to_owned());
                patch.reason_message = Some(message.chars().take(500).collect());
            }
        }
    }
    if changes.is_empty() {
        return Ok(());
    }
    patch.updated_at = Some(now());
    let Some(from) = expected else {
        diesel::update(orders::table.find(order_id))
            .set(&patch)
            .prepared()
            .execute(c)
            .await?;
        return Ok(());
    };
    let matched = diesel::update(
        orders::table
            .filter(orders::id.eq(order_id))
            .filter(orders::state.eq(from.as_str())),
    )
    .set(&patch)
    .prepared()
    .execute(c)
    .await?;
    if matched == 0 {
        return Err(ServiceError::internal(format!(
            "order {order_id} is not {} as its saga expects",
            from.as_str()
        )));
    }
    if let Some(to) = entered {
        outbox_record(c, order_id, to).await?;
    }
    Ok(())
}
