//! The shopper's orders: place (with an `Idempotency-Key`), read, list and
//! cancel, always the token's user's. Another user's order is 404, the same
//! answer as an unknown id, as the mesh gives.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use commerce_platform::SagaId;
use commerce_proto::order::v1 as pb;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{ApiPath, PageQuery, in_range, positive_id, problem_of, time};
use crate::AppState;
use crate::auth::Shopper;
use crate::extract::{ApiJson, ApiQuery, IdempotencyKey};
use crate::mesh::Deadline;
use crate::problem::{Errors, Problem};

/// The orchestrator's bounds (`order_orchestrator::domain::order`).
pub const MAX_LINES: usize = 100;
pub const MAX_QUANTITY: i64 = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OrderState {
    /// The saga is still running; poll the order's `Location`.
    Pending,
    Confirmed,
    /// Refused; `reason` says why. Nothing was taken.
    Rejected,
    Cancelling,
    Cancelled,
    Shipped,
    Delivered,
}

impl OrderState {
    fn from_proto(raw: i32) -> Option<Self> {
        Some(match pb::OrderState::try_from(raw).ok()? {
            pb::OrderState::Pending => Self::Pending,
            pb::OrderState::Confirmed => Self::Confirmed,
            pb::OrderState::Rejected => Self::Rejected,
            pb::OrderState::Cancelling => Self::Cancelling,
            pb::OrderState::Cancelled => Self::Cancelled,
            pb::OrderState::Shipped => Self::Shipped,
            pb::OrderState::Delivered => Self::Delivered,
            pb::OrderState::Unspecified => return None,
        })
    }
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderLine {
    pub product_id: i64,
    pub quantity: i64,
    pub product_name: String,
    pub brand_id: i64,
    pub brand_name: String,
    /// KRW, as priced when the order was placed.
    pub unit_price: i64,
    pub line_total: i64,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Order {
    pub order_id: String,
    pub state: Option<OrderState>,
    pub lines: Vec<OrderLine>,
    pub user_coupon_id: Option<i64>,
    pub subtotal: i64,
    pub discount: i64,
    pub points_paid: i64,
    /// Why a REJECTED order was refused (`INSUFFICIENT_STOCK`, ...); empty otherwise.
    pub reason: String,
    pub reason_message: String,
    /// The saga that runs it (for support).
    pub saga_id: String,
    pub created_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
}

impl From<pb::Order> for Order {
    fn from(o: pb::Order) -> Self {
        Self {
            order_id: o.order_id,
            state: OrderState::from_proto(o.state),
            lines: o
                .lines
                .into_iter()
                .map(|l| OrderLine {
                    product_id: l.product_id,
                    quantity: l.quantity,
                    product_name: l.product_name,
                    brand_id: l.brand_id,
                    brand_name: l.brand_name,
                    unit_price: l.unit_price,
                    line_total: l.line_total,
                })
                .collect(),
            user_coupon_id: o.user_coupon_id,
            subtotal: o.subtotal,
            discount: o.discount,
            points_paid: o.points_paid,
            reason: o.reason,
            reason_message: o.reason_message,
            saga_id: o.saga_id,
            created_at: time(o.created_at),
            updated_at: time(o.updated_at),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderPage {
    pub items: Vec<Order>,
    pub page: i32,
    pub size: i32,
    pub total: i64,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LineRequest {
    #[schema(minimum = 1)]
    pub product_id: i64,
    #[schema(minimum = 1, maximum = 1000)]
    pub quantity: i64,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PlaceRequest {
    /// 1 to 100 lines; lines of one product add up to at most 1000 units.
    #[schema(min_items = 1, max_items = 100)]
    pub lines: Vec<LineRequest>,
    /// One of the shopper's available coupons.
    #[schema(minimum = 1)]
    pub user_coupon_id: Option<i64>,
}

impl PlaceRequest {
    /// The orchestrator's rules (`PlaceOrder::parse`), checked at the edge.
    fn check(&self) -> Result<(), Problem> {
        if self.lines.is_empty() {
            return Err(Problem::invalid("lines", "at least one line is required"));
        }
        if self.lines.len() > MAX_LINES {
            return Err(Problem::invalid(
                "lines",
                format!("at most {MAX_LINES} lines"),
            ));
        }
        let mut merged = BTreeMap::<i64, i64>::new();
        for (i, line) in self.lines.iter().enumerate() {
            let product_id = positive_id(&format!("lines[{i}].productId"), line.product_id)?;
            let field = format!("lines[{i}].quantity");
            let quantity = in_range(&field, line.quantity, 1, MAX_QUANTITY)?;
            let total = merged.entry(product_id).or_default();
            *total += quantity;
            if *total > MAX_QUANTITY {
                return Err(Problem::invalid(
                    field,
                    format!(
                        "lines of product {product_id} add up to more than {MAX_QUANTITY} units"
                    ),
                ));
            }
        }
        if let Some(coupon) = self.user_coupon_id {
            positive_id("userCouponId", coupon)?;
        }
        Ok(())
    }
}

fn location(order_id: &str) -> HeaderValue {
    HeaderValue::from_str(&format!("/api/v1/orders/{order_id}"))
        .unwrap_or_else(|_| HeaderValue::from_static("/api/v1/orders"))
}

/// 202 with `Location` while the order's saga still runs, else `settled`.
fn answer(order: pb::Order, settled: StatusCode) -> Response {
    let running = matches!(
        pb::OrderState::try_from(order.state),
        Ok(pb::OrderState::Pending | pb::OrderState::Cancelling)
    );
    let status = if running {
        StatusCode::ACCEPTED
    } else {
        settled
    };
    let location = location(&order.order_id);
    let mut response = (status, Json(Order::from(order))).into_response();
    response.headers_mut().insert(header::LOCATION, location);
    response
}

/// Places an order for the token's user. Its saga reserves stock, deducts
/// the points and uses the coupon; a refused order is a normal answer
/// (`state: rejected` with its `reason`). The same `Idempotency-Key` returns
/// the same order, whatever state it has reached.
#[utoipa::path(
    post, path = "/api/v1/orders", tag = "orders",
    params(("Idempotency-Key" = String, Header, description = "Unique per order; a repeat returns the same order")),
    request_body = PlaceRequest,
    security(("bearer" = [])),
    responses(
        (status = 201, body = Order, description = "Confirmed or rejected",
            headers(("Location" = String, description = "The order"))),
        (status = 202, body = Order, description = "Still pending: poll `Location`",
            headers(("Location" = String, description = "The order"))),
        Errors
    )
)]
pub async fn place(
    State(state): State<Arc<AppState>>,
    shopper: Shopper,
    deadline: Deadline,
    IdempotencyKey(key): IdempotencyKey,
    ApiJson(body): ApiJson<PlaceRequest>,
) -> Result<Response, Problem> {
    body.check()?;
    let request = pb::PlaceOrderRequest {
        user_id: shopper.id(),
        lines: body
            .lines
            .iter()
            .map(|l| pb::OrderLineRequest {
                product_id: l.product_id,
                quantity: l.quantity,
            })
            .collect(),
        user_coupon_id: body.user_coupon_id,
        idempotency_key: key,
    };
    let mut client = state.mesh.orders.clone();
    let order = deadline
        .call(request, |r| async move { client.place_order(r).await })
        .await?;
    Ok(answer(order, StatusCode::CREATED))
}

/// The token's user's orders, newest first.
#[utoipa::path(
    get, path = "/api/v1/orders", tag = "orders",
    params(PageQuery),
    security(("bearer" = [])),
    responses((status = 200, body = OrderPage), Errors)
)]
pub async fn list_mine(
    State(state): State<Arc<AppState>>,
    shopper: Shopper,
    deadline: Deadline,
    ApiQuery(page): ApiQuery<PageQuery>,
) -> Result<Json<OrderPage>, Problem> {
    let (page, size) = page.checked()?;
    let request = pb::ListOrdersRequest {
        user_id: shopper.id(),
        page,
        size,
    };
    let mut client = state.mesh.orders.clone();
    let listed = deadline
        .call(request, |r| async move { client.list_orders(r).await })
        .await?;
    Ok(Json(OrderPage {
        items: listed.orders.into_iter().map(Order::from).collect(),
        page: listed.page,
        size: listed.size,
        total: listed.total,
    }))
}

/// An order id from the path: a UUID.
pub fn order_id(raw: &str) -> Result<String, Problem> {
    SagaId::parse("orderId", raw)
        .map(|id| id.to_string())
        .map_err(problem_of)
}

/// One of the token's user's orders.
#[utoipa::path(
    get, path = "/api/v1/orders/{orderId}", tag = "orders",
    params(("orderId" = uuid::Uuid, Path)),
    security(("bearer" = [])),
    responses((status = 200, body = Order), Errors)
)]
pub async fn get(
    State(state): State<Arc<AppState>>,
    shopper: Shopper,
    deadline: Deadline,
    ApiPath(raw): ApiPath<String>,
) -> Result<Json<Order>, Problem> {
    let request = pb::GetOrderRequest {
        order_id: order_id(&raw)?,
        user_id: shopper.id(),
    };
    let mut client = state.mesh.orders.clone();
    let order = deadline
        .call(request, |r| async move { client.get_order(r).await })
        .await?;
    Ok(Json(order.into()))
}

/// Cancels one of the token's user's confirmed orders: a second saga gives
/// back the stock, the points and the coupon (202 while it runs).
#[utoipa::path(
    post, path = "/api/v1/orders/{orderId}/cancel", tag = "orders",
    params(("orderId" = uuid::Uuid, Path)),
    security(("bearer" = [])),
    responses(
        (status = 200, body = Order, description = "Cancelled (or already)"),
        (status = 202, body = Order, description = "Cancelling: poll `Location`",
            headers(("Location" = String, description = "The order"))),
        Errors
    )
)]
pub async fn cancel(
    State(state): State<Arc<AppState>>,
    shopper: Shopper,
    deadline: Deadline,
    ApiPath(raw): ApiPath<String>,
) -> Result<Response, Problem> {
    let request = pb::CancelOrderRequest {
        order_id: order_id(&raw)?,
        user_id: shopper.id(),
    };
    let mut client = state.mesh.orders.clone();
    let order = deadline
        .call(request, |r| async move { client.cancel_order(r).await })
        .await?;
    Ok(answer(order, StatusCode::OK))
}
