//! Operator routes (`operator` role): the saga admin service, the outbox,
//! catalogue and coupon administration, any user's order and shipping.
//! The BFF calls these as the mesh's `operator` identity.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use commerce_platform::SagaId;
use commerce_proto::coupon::v1 as coupon_pb;
use commerce_proto::order::v1 as pb;
use commerce_proto::product::v1 as product_pb;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::catalog::{Brand, Product, ProductStatus};
use super::coupons::{CouponTemplate, DiscountKind};
use super::orders::{Order, order_id};
use super::{ApiPath, PageQuery, in_range, path_id, problem_of, time, timestamp};
use crate::AppState;
use crate::auth::Operator;
use crate::extract::{ApiJson, ApiQuery};
use crate::mesh::Deadline;
use crate::problem::{Errors, Problem};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SagaState {
    Running,
    Compensating,
    Completed,
    Compensated,
    /// An undo failed too often: waits for an operator's retry or compensate.
    Stuck,
}

impl SagaState {
    fn from_proto(raw: i32) -> Option<Self> {
        Some(match pb::SagaState::try_from(raw).ok()? {
            pb::SagaState::Running => Self::Running,
            pb::SagaState::Compensating => Self::Compensating,
            pb::SagaState::Completed => Self::Completed,
            pb::SagaState::Compensated => Self::Compensated,
            pb::SagaState::Stuck => Self::Stuck,
            pb::SagaState::Unspecified => return None,
        })
    }

    fn to_proto(self) -> pb::SagaState {
        match self {
            Self::Running => pb::SagaState::Running,
            Self::Compensating => pb::SagaState::Compensating,
            Self::Completed => pb::SagaState::Completed,
            Self::Compensated => pb::SagaState::Compensated,
            Self::Stuck => pb::SagaState::Stuck,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SagaKind {
    PlaceOrder,
    CancelOrder,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Saga {
    pub saga_id: String,
    pub kind: Option<SagaKind>,
    pub order_id: String,
    pub state: Option<SagaState>,
    pub current_step: i32,
    pub current_step_name: String,
    pub reason: String,
    pub lease_owner: String,
    pub lease_expires_at: Option<DateTime<Utc>>,
    pub attempts: i32,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub created_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
}

impl From<pb::Saga> for Saga {
    fn from(s: pb::Saga) -> Self {
        Self {
            saga_id: s.saga_id,
            kind: match pb::SagaKind::try_from(s.kind) {
                Ok(pb::SagaKind::PlaceOrder) => Some(SagaKind::PlaceOrder),
                Ok(pb::SagaKind::CancelOrder) => Some(SagaKind::CancelOrder),
                _ => None,
            },
            order_id: s.order_id,
            state: SagaState::from_proto(s.state),
            current_step: s.current_step,
            current_step_name: s.current_step_name,
            reason: s.reason,
            lease_owner: s.lease_owner,
            lease_expires_at: time(s.lease_expires_at),
            attempts: s.attempts,
            next_attempt_at: time(s.next_attempt_at),
            created_at: time(s.created_at),
            updated_at: time(s.updated_at),
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StepDirection {
    Forward,
    Compensate,
}

#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StepOutcome {
    Started,
    Succeeded,
    Rejected,
    Failed,
}

/// One event of a saga's step log.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LogEntry {
    pub seq: i64,
    pub step: i32,
    pub step_name: String,
    pub direction: Option<StepDirection>,
    pub attempt: i32,
    pub outcome: Option<StepOutcome>,
    /// The participant's answer: any JSON value (null when none; a string
    /// when what was stored is not JSON).
    pub response: serde_json::Value,
    pub error: String,
    pub created_at: Option<DateTime<Utc>>,
}

impl From<pb::StepLogEntry> for LogEntry {
    fn from(e: pb::StepLogEntry) -> Self {
        let response = match e.response_json.as_str() {
            "" => serde_json::Value::Null,
            raw => serde_json::from_str(raw).unwrap_or(serde_json::Value::String(e.response_json)),
        };
        Self {
            seq: e.seq,
            step: e.step,
            step_name: e.step_name,
            direction: match pb::StepDirection::try_from(e.direction) {
                Ok(pb::StepDirection::Forward) => Some(StepDirection::Forward),
                Ok(pb::StepDirection::Compensate) => Some(StepDirection::Compensate),
                _ => None,
            },
            attempt: e.attempt,
            outcome: match pb::StepOutcome::try_from(e.outcome) {
                Ok(pb::StepOutcome::Started) => Some(StepOutcome::Started),
                Ok(pb::StepOutcome::Succeeded) => Some(StepOutcome::Succeeded),
                Ok(pb::StepOutcome::Rejected) => Some(StepOutcome::Rejected),
                Ok(pb::StepOutcome::Failed) => Some(StepOutcome::Failed),
                _ => None,
            },
            response,
            error: e.error,
            created_at: time(e.created_at),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SagaDetail {
    pub saga: Option<Saga>,
    pub log: Vec<LogEntry>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SagaPage {
    pub items: Vec<Saga>,
    pub page: i32,
    pub size: i32,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SagaCounts {
    pub running: i64,
    pub compensating: i64,
    pub completed: i64,
    pub compensated: i64,
    pub stuck: i64,
    /// Sagas another instance took over since start (all instances).
    pub leases_lost: i64,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Outbox {
    /// Events not yet on the stream.
    pub pending: i64,
    pub oldest_pending_at: Option<DateTime<Utc>>,
    pub oldest_pending_age_ms: i64,
    /// Published events still kept in MySQL.
    pub published_kept: i64,
    /// The Redis stream the relay publishes to.
    pub stream: String,
}

/// Longest age filter: the orchestrator's bound.
const MAX_AGE_SECONDS: i64 = 10 * 365 * 86_400;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase")]
pub struct SagaQuery {
    /// Only sagas in this state [default: every unfinished state: running,
    /// compensating, stuck].
    #[param(inline)]
    pub state: Option<SagaState>,
    /// Only sagas created at least this many seconds ago.
    #[param(minimum = 0, maximum = 315360000)]
    pub min_age_seconds: Option<i64>,
}

/// Sagas by state and age, oldest first.
#[utoipa::path(
    get, path = "/api/v1/admin/sagas", tag = "admin",
    params(SagaQuery, PageQuery),
    security(("bearer" = [])),
    responses((status = 200, body = SagaPage), Errors)
)]
pub async fn list_sagas(
    State(state): State<Arc<AppState>>,
    _operator: Operator,
    deadline: Deadline,
    ApiQuery(query): ApiQuery<SagaQuery>,
    ApiQuery(page): ApiQuery<PageQuery>,
) -> Result<Json<SagaPage>, Problem> {
    let min_age = in_range(
        "minAgeSeconds",
        query.min_age_seconds.unwrap_or(0),
        0,
        MAX_AGE_SECONDS,
    )?;
    let (page, size) = page.checked()?;
    let request = pb::ListSagasRequest {
        state: query
            .state
            .map_or(pb::SagaState::Unspecified, SagaState::to_proto) as i32,
        min_age_seconds: min_age,
        page,
        size,
    };
    let mut client = state.mesh.sagas.clone();
    let listed = deadline
        .call(request, |r| async move { client.list_sagas(r).await })
        .await?;
    Ok(Json(SagaPage {
        items: listed.sagas.into_iter().map(Saga::from).collect(),
        page: listed.page,
        size: listed.size,
    }))
}

/// How many sagas are in each state.
#[utoipa::path(
    get, path = "/api/v1/admin/sagas/counts", tag = "admin",
    security(("bearer" = [])),
    responses((status = 200, body = SagaCounts), Errors)
)]
pub async fn saga_counts(
    State(state): State<Arc<AppState>>,
    _operator: Operator,
    deadline: Deadline,
) -> Result<Json<SagaCounts>, Problem> {
    let mut client = state.mesh.sagas.clone();
    let c = deadline
        .call(pb::CountSagasRequest {}, |r| async move {
            client.count_sagas(r).await
        })
        .await?;
    Ok(Json(SagaCounts {
        running: c.running,
        compensating: c.compensating,
        completed: c.completed,
        compensated: c.compensated,
        stuck: c.stuck,
        leases_lost: c.leases_lost,
    }))
}

fn saga_id(raw: &str) -> Result<String, Problem> {
    SagaId::parse("sagaId", raw)
        .map(|id| id.to_string())
        .map_err(problem_of)
}

/// One saga and its whole step log.
#[utoipa::path(
    get, path = "/api/v1/admin/sagas/{sagaId}", tag = "admin",
    params(("sagaId" = uuid::Uuid, Path)),
    security(("bearer" = [])),
    responses((status = 200, body = SagaDetail), Errors)
)]
pub async fn get_saga(
    State(state): State<Arc<AppState>>,
    _operator: Operator,
    deadline: Deadline,
    ApiPath(raw): ApiPath<String>,
) -> Result<Json<SagaDetail>, Problem> {
    let saga_id = saga_id(&raw)?;
    let mut client = state.mesh.sagas.clone();
    let detail = deadline
        .call(pb::SagaRef { saga_id }, |r| async move {
            client.get_saga(r).await
        })
        .await?;
    Ok(Json(SagaDetail {
        saga: detail.saga.map(Saga::from),
        log: detail.log.into_iter().map(LogEntry::from).collect(),
    }))
}

/// Runs a STUCK saga's step again (after the participant is back).
#[utoipa::path(
    post, path = "/api/v1/admin/sagas/{sagaId}/retry", tag = "admin",
    params(("sagaId" = uuid::Uuid, Path)),
    security(("bearer" = [])),
    responses((status = 200, body = Saga), Errors)
)]
pub async fn retry_saga(
    State(state): State<Arc<AppState>>,
    _operator: Operator,
    deadline: Deadline,
    ApiPath(raw): ApiPath<String>,
) -> Result<Json<Saga>, Problem> {
    let saga_id = saga_id(&raw)?;
    let mut client = state.mesh.sagas.clone();
    let saga = deadline
        .call(pb::SagaRef { saga_id }, |r| async move {
            client.retry_saga(r).await
        })
        .await?;
    Ok(Json(saga.into()))
}

/// Undoes every completed step of a STUCK saga.
#[utoipa::path(
    post, path = "/api/v1/admin/sagas/{sagaId}/compensate", tag = "admin",
    params(("sagaId" = uuid::Uuid, Path)),
    security(("bearer" = [])),
    responses((status = 200, body = Saga), Errors)
)]
pub async fn compensate_saga(
    State(state): State<Arc<AppState>>,
    _operator: Operator,
    deadline: Deadline,
    ApiPath(raw): ApiPath<String>,
) -> Result<Json<Saga>, Problem> {
    let saga_id = saga_id(&raw)?;
    let mut client = state.mesh.sagas.clone();
    let saga = deadline
        .call(pb::SagaRef { saga_id }, |r| async move {
            client.compensate_saga(r).await
        })
        .await?;
    Ok(Json(saga.into()))
}

/// The outbox's backlog: events waiting for the relay.
#[utoipa::path(
    get, path = "/api/v1/admin/outbox", tag = "admin",
    security(("bearer" = [])),
    responses((status = 200, body = Outbox), Errors)
)]
pub async fn outbox(
    State(state): State<Arc<AppState>>,
    _operator: Operator,
    deadline: Deadline,
) -> Result<Json<Outbox>, Problem> {
    let mut client = state.mesh.sagas.clone();
    let o = deadline
        .call(pb::GetOutboxRequest {}, |r| async move {
            client.get_outbox(r).await
        })
        .await?;
    Ok(Json(Outbox {
        pending: o.pending,
        oldest_pending_at: time(o.oldest_pending_at),
        oldest_pending_age_ms: o.oldest_pending_age_ms,
        published_kept: o.published_kept,
        stream: o.stream,
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewBrand {
    #[schema(min_length = 1, max_length = 100)]
    pub name: String,
    #[serde(default)]
    #[schema(max_length = 2000)]
    pub description: String,
}

/// Creates a brand.
#[utoipa::path(
    post, path = "/api/v1/admin/brands", tag = "admin",
    request_body = NewBrand,
    security(("bearer" = [])),
    responses((status = 201, body = Brand), Errors)
)]
pub async fn create_brand(
    State(state): State<Arc<AppState>>,
    _operator: Operator,
    deadline: Deadline,
    ApiJson(body): ApiJson<NewBrand>,
) -> Result<(StatusCode, Json<Brand>), Problem> {
    let request = product_pb::CreateBrandRequest {
        name: body.name,
        description: body.description,
    };
    let mut client = state.mesh.product_admin.clone();
    let brand = deadline
        .call(request, |r| async move { client.create_brand(r).await })
        .await?;
    Ok((StatusCode::CREATED, Json(brand.into())))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BrandChange {
    #[schema(min_length = 1, max_length = 100)]
    pub name: Option<String>,
    #[schema(max_length = 2000)]
    pub description: Option<String>,
}

/// Changes a brand's name or description (fields left out stay).
#[utoipa::path(
    patch, path = "/api/v1/admin/brands/{brandId}", tag = "admin",
    params(("brandId" = i64, Path, minimum = 1)),
    request_body = BrandChange,
    security(("bearer" = [])),
    responses((status = 200, body = Brand), Errors)
)]
pub async fn update_brand(
    State(state): State<Arc<AppState>>,
    _operator: Operator,
    deadline: Deadline,
    ApiPath(raw): ApiPath<String>,
    ApiJson(body): ApiJson<BrandChange>,
) -> Result<Json<Brand>, Problem> {
    let request = product_pb::UpdateBrandRequest {
        brand_id: path_id("brandId", &raw)?,
        name: body.name,
        description: body.description,
    };
    let mut client = state.mesh.product_admin.clone();
    let brand = deadline
        .call(request, |r| async move { client.update_brand(r).await })
        .await?;
    Ok(Json(brand.into()))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewProduct {
    #[schema(minimum = 1)]
    pub brand_id: i64,
    #[schema(min_length = 1, max_length = 200)]
    pub name: String,
    /// KRW.
    #[schema(minimum = 0, maximum = 1000000000)]
    pub price: i64,
    pub status: ProductStatus,
    /// Units available at start.
    #[schema(minimum = 0, maximum = 1000000000)]
    pub stock: i64,
}

/// Creates a product with its stock.
#[utoipa::path(
    post, path = "/api/v1/admin/products", tag = "admin",
    request_body = NewProduct,
    security(("bearer" = [])),
    responses((status = 201, body = Product), Errors)
)]
pub async fn create_product(
    State(state): State<Arc<AppState>>,
    _operator: Operator,
    deadline: Deadline,
    ApiJson(body): ApiJson<NewProduct>,
) -> Result<(StatusCode, Json<Product>), Problem> {
    let request = product_pb::CreateProductRequest {
        brand_id: body.brand_id,
        name: body.name,
        price: body.price,
        status: body.status.to_proto() as i32,
        stock: body.stock,
    };
    let mut client = state.mesh.product_admin.clone();
    let product = deadline
        .call(request, |r| async move { client.create_product(r).await })
        .await?;
    Ok((StatusCode::CREATED, Json(product.into())))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProductChange {
    #[schema(min_length = 1, max_length = 200)]
    pub name: Option<String>,
    #[schema(minimum = 0, maximum = 1000000000)]
    pub price: Option<i64>,
    pub status: Option<ProductStatus>,
}

/// Changes a product's name, price or status (fields left out stay).
#[utoipa::path(
    patch, path = "/api/v1/admin/products/{productId}", tag = "admin",
    params(("productId" = i64, Path, minimum = 1)),
    request_body = ProductChange,
    security(("bearer" = [])),
    responses((status = 200, body = Product), Errors)
)]
pub async fn update_product(
    State(state): State<Arc<AppState>>,
    _operator: Operator,
    deadline: Deadline,
    ApiPath(raw): ApiPath<String>,
    ApiJson(body): ApiJson<ProductChange>,
) -> Result<Json<Product>, Problem> {
    let request = product_pb::UpdateProductRequest {
        product_id: path_id("productId", &raw)?,
        name: body.name,
        price: body.price,
        status: body.status.map(|s| s.to_proto() as i32),
    };
    let mut client = state.mesh.product_admin.clone();
    let product = deadline
        .call(request, |r| async move { client.update_product(r).await })
        .await?;
    Ok(Json(product.into()))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StockLevel {
    /// Units available for new orders (reserved units are kept apart).
    #[schema(minimum = 0, maximum = 1000000000)]
    pub available: i64,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StockView {
    pub product_id: i64,
    pub available: i64,
    pub reserved: i64,
    pub sold: i64,
}

/// Sets a product's available stock.
#[utoipa::path(
    put, path = "/api/v1/admin/products/{productId}/stock", tag = "admin",
    params(("productId" = i64, Path, minimum = 1)),
    request_body = StockLevel,
    security(("bearer" = [])),
    responses((status = 200, body = StockView), Errors)
)]
pub async fn set_stock(
    State(state): State<Arc<AppState>>,
    _operator: Operator,
    deadline: Deadline,
    ApiPath(raw): ApiPath<String>,
    ApiJson(body): ApiJson<StockLevel>,
) -> Result<Json<StockView>, Problem> {
    let request = product_pb::SetStockRequest {
        product_id: path_id("productId", &raw)?,
        available: body.available,
    };
    let mut client = state.mesh.product_admin.clone();
    let stock = deadline
        .call(request, |r| async move { client.set_stock(r).await })
        .await?;
    Ok(Json(StockView {
        product_id: stock.product_id,
        available: stock.available,
        reserved: stock.reserved,
        sold: stock.sold,
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RankingRebuild {
    /// Days of orders to count again, ending today.
    #[schema(minimum = 1, maximum = 30)]
    pub days: i32,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RankingRebuilt {
    pub orders_counted: i64,
    pub orders_cancelled: i64,
    pub days: i32,
}

/// Rebuilds the sales ranking from the product service's reservations.
#[utoipa::path(
    post, path = "/api/v1/admin/ranking/rebuild", tag = "admin",
    request_body = RankingRebuild,
    security(("bearer" = [])),
    responses((status = 200, body = RankingRebuilt), Errors)
)]
pub async fn rebuild_ranking(
    State(state): State<Arc<AppState>>,
    _operator: Operator,
    deadline: Deadline,
    ApiJson(body): ApiJson<RankingRebuild>,
) -> Result<Json<RankingRebuilt>, Problem> {
    let mut client = state.mesh.product_admin.clone();
    let rebuilt = deadline
        .call(
            product_pb::RebuildRankingRequest { days: body.days },
            |r| async move { client.rebuild_ranking(r).await },
        )
        .await?;
    Ok(Json(RankingRebuilt {
        orders_counted: rebuilt.orders_counted,
        orders_cancelled: rebuilt.orders_cancelled,
        days: rebuilt.days,
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewCouponTemplate {
    #[schema(min_length = 1, max_length = 100)]
    pub name: String,
    pub kind: DiscountKind,
    /// KRW off (fixed, 1 to 100,000,000) or percent off (1 to 100).
    #[schema(minimum = 1)]
    pub value: i64,
    /// Ceiling of a percent discount, KRW.
    #[schema(minimum = 1)]
    pub max_discount: Option<i64>,
    /// Smallest order the coupon applies to, KRW.
    #[serde(default)]
    #[schema(minimum = 0)]
    pub min_order_amount: i64,
    pub valid_from: DateTime<Utc>,
    pub valid_until: DateTime<Utc>,
    /// How many coupons may be issued, first come first served.
    #[schema(minimum = 1, maximum = 10000000)]
    pub total_quantity: i64,
}

/// Creates a coupon template.
#[utoipa::path(
    post, path = "/api/v1/admin/coupon-templates", tag = "admin",
    request_body = NewCouponTemplate,
    security(("bearer" = [])),
    responses((status = 201, body = CouponTemplate), Errors)
)]
pub async fn create_coupon_template(
    State(state): State<Arc<AppState>>,
    _operator: Operator,
    deadline: Deadline,
    ApiJson(body): ApiJson<NewCouponTemplate>,
) -> Result<(StatusCode, Json<CouponTemplate>), Problem> {
    let request = coupon_pb::CreateTemplateRequest {
        name: body.name,
        kind: body.kind.to_proto() as i32,
        value: body.value,
        max_discount: body.max_discount,
        min_order_amount: body.min_order_amount,
        valid_from: Some(timestamp(body.valid_from)),
        valid_until: Some(timestamp(body.valid_until)),
        total_quantity: body.total_quantity,
    };
    let mut client = state.mesh.coupon_admin.clone();
    let template = deadline
        .call(request, |r| async move { client.create_template(r).await })
        .await?;
    Ok((StatusCode::CREATED, Json(template.into())))
}

/// One coupon template with its issued count.
#[utoipa::path(
    get, path = "/api/v1/admin/coupon-templates/{templateId}", tag = "admin",
    params(("templateId" = i64, Path, minimum = 1)),
    security(("bearer" = [])),
    responses((status = 200, body = CouponTemplate), Errors)
)]
pub async fn get_coupon_template(
    State(state): State<Arc<AppState>>,
    _operator: Operator,
    deadline: Deadline,
    ApiPath(raw): ApiPath<String>,
) -> Result<Json<CouponTemplate>, Problem> {
    let template_id = path_id("templateId", &raw)?;
    let mut client = state.mesh.coupon_admin.clone();
    let template = deadline
        .call(
            coupon_pb::GetTemplateRequest { template_id },
            |r| async move { client.get_template(r).await },
        )
        .await?;
    Ok(Json(template.into()))
}

/// Any user's order.
#[utoipa::path(
    get, path = "/api/v1/admin/orders/{orderId}", tag = "admin",
    params(("orderId" = uuid::Uuid, Path)),
    security(("bearer" = [])),
    responses((status = 200, body = Order), Errors)
)]
pub async fn get_order(
    State(state): State<Arc<AppState>>,
    _operator: Operator,
    deadline: Deadline,
    ApiPath(raw): ApiPath<String>,
) -> Result<Json<Order>, Problem> {
    let request = pb::GetOrderRequest {
        order_id: order_id(&raw)?,
        user_id: String::new(),
    };
    let mut client = state.mesh.orders_admin.clone();
    let order = deadline
        .call(request, |r| async move { client.get_order(r).await })
        .await?;
    Ok(Json(order.into()))
}

/// Marks a confirmed order shipped.
#[utoipa::path(
    post, path = "/api/v1/admin/orders/{orderId}/ship", tag = "admin",
    params(("orderId" = uuid::Uuid, Path)),
    security(("bearer" = [])),
    responses((status = 200, body = Order), Errors)
)]
pub async fn mark_shipped(
    State(state): State<Arc<AppState>>,
    _operator: Operator,
    deadline: Deadline,
    ApiPath(raw): ApiPath<String>,
) -> Result<Json<Order>, Problem> {
    let request = pb::OrderRef {
        order_id: order_id(&raw)?,
    };
    let mut client = state.mesh.orders_admin.clone();
    let order = deadline
        .call(request, |r| async move { client.mark_shipped(r).await })
        .await?;
    Ok(Json(order.into()))
}

/// Marks a shipped order delivered.
#[utoipa::path(
    post, path = "/api/v1/admin/orders/{orderId}/deliver", tag = "admin",
    params(("orderId" = uuid::Uuid, Path)),
    security(("bearer" = [])),
    responses((status = 200, body = Order), Errors)
)]
pub async fn mark_delivered(
    State(state): State<Arc<AppState>>,
    _operator: Operator,
    deadline: Deadline,
    ApiPath(raw): ApiPath<String>,
) -> Result<Json<Order>, Problem> {
    let request = pb::OrderRef {
        order_id: order_id(&raw)?,
    };
    let mut client = state.mesh.orders_admin.clone();
    let order = deadline
        .call(request, |r| async move { client.mark_delivered(r).await })
        .await?;
    Ok(Json(order.into()))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReconcileRequest {
    /// Orders settled, and barrier rows written, within this many seconds
    /// (1 to 2,592,000; one hour unless given).
    #[schema(minimum = 1, maximum = 2592000)]
    pub window_seconds: Option<i64>,
    /// Orders checked at most (1 to 10,000; 1,000 unless given).
    #[schema(minimum = 1, maximum = 10000)]
    pub limit: Option<i32>,
}

/// What a settled order's participants hold that its saga log does not
/// explain.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Drift {
    /// Empty for a barrier row of no saga.
    pub order_id: String,
    pub saga_id: String,
    /// `EFFECT_MISSING`, `EFFECT_LEFT_BEHIND`, `RESERVATION_MISMATCH` or
    /// `ORPHAN_BARRIER`.
    pub kind: String,
    /// `product`, `point` or `coupon`.
    pub participant: String,
    pub detail: String,
    /// What was read: the order as recorded and the participant's rows.
    pub evidence: serde_json::Value,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReconcileReport {
    pub orders_checked: i64,
    pub barriers_checked: i64,
    /// Orders left for a later run because a participant could not be read.
    pub orders_unreadable: i64,
    pub checked_at: Option<DateTime<Utc>>,
    pub drifts: Vec<Drift>,
}

/// Compares settled orders' saga logs with what the participants hold;
/// reports drift with its evidence and repairs nothing.
#[utoipa::path(
    post, path = "/api/v1/admin/reconcile", tag = "admin",
    request_body = ReconcileRequest,
    security(("bearer" = [])),
    responses((status = 200, body = ReconcileReport), Errors)
)]
pub async fn reconcile(
    State(state): State<Arc<AppState>>,
    _operator: Operator,
    deadline: Deadline,
    ApiJson(body): ApiJson<ReconcileRequest>,
) -> Result<Json<ReconcileReport>, Problem> {
    let window = in_range(
        "windowSeconds",
        body.window_seconds.unwrap_or(3600),
        1,
        30 * 86_400,
    )?;
    let limit = in_range("limit", i64::from(body.limit.unwrap_or(1000)), 1, 10_000)? as i32;
    let mut client = state.mesh.sagas.clone();
    let report = deadline
        .call(
            pb::ReconcileRequest {
                window_seconds: window,
                limit,
            },
            |r| async move { client.reconcile(r).await },
        )
        .await?;
    Ok(Json(ReconcileReport {
        orders_checked: report.orders_checked,
        barriers_checked: report.barriers_checked,
        orders_unreadable: report.orders_unreadable,
        checked_at: time(report.checked_at),
        drifts: report
            .drifts
            .into_iter()
            .map(|d| Drift {
                evidence: serde_json::from_str(&d.evidence_json)
                    .unwrap_or(serde_json::Value::String(d.evidence_json)),
                order_id: d.order_id,
                saga_id: d.saga_id,
                kind: d.kind,
                participant: d.participant,
                detail: d.detail,
            })
            .collect(),
    }))
}
