//! The baseline's orders as it stores and answers them: its own copy of the
//! orchestrator's `orders` / `order_lines` row shape (the two databases are
//! separate; only the wire contract is shared) and their wire form.

use chrono::NaiveDateTime;
use commerce_platform::ServiceError;
use commerce_platform::time::{now, to_proto};
use commerce_proto::order::v1 as pb;
use diesel::prelude::*;
use diesel_async::{AsyncMysqlConnection, RunQueryDsl};
use order_orchestrator::domain::order::{OrderState, PlaceOrder, SnapshotLine};

use super::schema::{order_lines, orders};

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = orders)]
pub struct OrderRow {
    pub id: String,
    pub user_id: String,
    pub idempotency_key: String,
    pub request_json: String,
    pub state: String,
    pub user_coupon_id: Option<i64>,
    pub subtotal: i64,
    pub discount: i64,
    pub points_paid: i64,
    pub reason: String,
    pub reason_message: String,
    /// Always empty: the baseline has no saga.
    pub saga_id: String,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = order_lines)]
pub struct OrderLineRow {
    pub order_id: String,
    pub product_id: i64,
    pub quantity: i64,
    pub product_name: Option<String>,
    pub brand_id: Option<i64>,
    pub brand_name: Option<String>,
    pub unit_price: Option<i64>,
}

impl OrderRow {
    /// A new order, PENDING until the transaction decides it.
    pub fn pending(order_id: &str, request: &PlaceOrder, fingerprint: &str) -> Self {
        let at = now();
        Self {
            id: order_id.to_owned(),
            user_id: request.user.to_string(),
            idempotency_key: request.idempotency_key.as_str().to_owned(),
            request_json: fingerprint.to_owned(),
            state: OrderState::Pending.as_str().to_owned(),
            user_coupon_id: request.user_coupon_id,
            subtotal: 0,
            discount: 0,
            points_paid: 0,
            reason: String::new(),
            reason_message: String::new(),
            saga_id: String::new(),
            created_at: at,
            updated_at: at,
        }
    }
}

impl OrderLineRow {
    /// A line as requested (a rejected order that was never priced).
    pub fn requested(order_id: &str, product_id: i64, quantity: i64) -> Self {
        Self {
            order_id: order_id.to_owned(),
            product_id,
            quantity,
            product_name: None,
            brand_id: None,
            brand_name: None,
            unit_price: None,
        }
    }

    /// A line with its priced snapshot.
    pub fn snapshot(order_id: &str, line: &SnapshotLine) -> Self {
        Self {
            order_id: order_id.to_owned(),
            product_id: line.product_id,
            quantity: line.quantity,
            product_name: Some(line.product_name.clone()),
            brand_id: Some(line.brand_id),
            brand_name: Some(line.brand_name.clone()),
            unit_price: Some(line.unit_price),
        }
    }
}

/// An order with its lines.
#[derive(Debug, Clone)]
pub struct OrderRecord {
    pub order: OrderRow,
    pub lines: Vec<OrderLineRow>,
}

/// An order row with its lines, in product-id order.
pub async fn load_order(
    c: &mut AsyncMysqlConnection,
    order: OrderRow,
) -> Result<OrderRecord, ServiceError> {
    let lines = order_lines::table
        .filter(order_lines::order_id.eq(&order.id))
        .order(order_lines::product_id)
        .select(OrderLineRow::as_select())
        .load(c)
        .await?;
    Ok(OrderRecord { order, lines })
}

fn order_state(state: OrderState) -> pb::OrderState {
    match state {
        OrderState::Pending => pb::OrderState::Pending,
        OrderState::Confirmed => pb::OrderState::Confirmed,
        OrderState::Rejected => pb::OrderState::Rejected,
        OrderState::Cancelling => pb::OrderState::Cancelling,
        OrderState::Cancelled => pb::OrderState::Cancelled,
        OrderState::Shipped => pb::OrderState::Shipped,
        OrderState::Delivered => pb::OrderState::Delivered,
    }
}

impl OrderRecord {
    /// The wire form, as the orchestrator answers it.
    pub fn into_proto(self) -> Result<pb::Order, ServiceError> {
        let o = self.order;
        let state = OrderState::parse(&o.state)?;
        Ok(pb::Order {
            order_id: o.id,
            user_id: o.user_id,
            state: order_state(state).into(),
            lines: self
                .lines
                .into_iter()
                .map(|l| {
                    let unit_price = l.unit_price.unwrap_or(0);
                    pb::OrderLine {
                        product_id: l.product_id,
                        quantity: l.quantity,
                        product_name: l.product_name.unwrap_or_default(),
                        brand_id: l.brand_id.unwrap_or(0),
                        brand_name: l.brand_name.unwrap_or_default(),
                        unit_price,
                        line_total: unit_price.saturating_mul(l.quantity),
                    }
                })
                .collect(),
            user_coupon_id: o.user_coupon_id,
            subtotal: o.subtotal,
            discount: o.discount,
            points_paid: o.points_paid,
            reason: o.reason,
            reason_message: o.reason_message,
            saga_id: o.saga_id,
            created_at: Some(to_proto(o.created_at)),
            updated_at: Some(to_proto(o.updated_at)),
        })
    }
}
