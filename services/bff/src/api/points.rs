//! The shopper's points: balance, ledger and charges, always the token's
//! user's.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use commerce_proto::point::v1 as pb;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{PageQuery, in_range, time};
use crate::AppState;
use crate::auth::Shopper;
use crate::extract::{ApiJson, ApiQuery, IdempotencyKey};
use crate::mesh::Deadline;
use crate::problem::{Errors, Problem};

/// The point service's ceiling of one charge (`point_service::domain::MAX_CHARGE`).
pub const MAX_CHARGE: i64 = 10_000_000;

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Balance {
    /// Points (1 point = 1 KRW).
    pub balance: i64,
}

#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LedgerKind {
    Charge,
    Use,
    Refund,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LedgerEntry {
    pub id: i64,
    pub kind: Option<LedgerKind>,
    /// Signed: a use is negative.
    pub amount: i64,
    pub balance_after: i64,
    /// The charge's key or the order's saga.
    pub reference: String,
    pub created_at: Option<DateTime<Utc>>,
}

impl From<pb::LedgerEntry> for LedgerEntry {
    fn from(e: pb::LedgerEntry) -> Self {
        Self {
            id: e.id,
            kind: match pb::LedgerKind::try_from(e.kind) {
                Ok(pb::LedgerKind::Charge) => Some(LedgerKind::Charge),
                Ok(pb::LedgerKind::Use) => Some(LedgerKind::Use),
                Ok(pb::LedgerKind::Refund) => Some(LedgerKind::Refund),
                _ => None,
            },
            amount: e.amount,
            balance_after: e.balance_after,
            reference: e.reference,
            created_at: time(e.created_at),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LedgerPage {
    pub items: Vec<LedgerEntry>,
    pub page: i32,
    pub size: i32,
    pub total: i64,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ChargeRequest {
    /// Points to add, 1 to 10,000,000.
    #[schema(minimum = 1, maximum = 10000000)]
    pub amount: i64,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Charge {
    pub entry: Option<LedgerEntry>,
    pub balance: i64,
}

/// The token's user's balance.
#[utoipa::path(
    get, path = "/api/v1/me/points", tag = "points",
    security(("bearer" = [])),
    responses((status = 200, body = Balance), Errors)
)]
pub async fn balance(
    State(state): State<Arc<AppState>>,
    shopper: Shopper,
    deadline: Deadline,
) -> Result<Json<Balance>, Problem> {
    let mut client = state.mesh.points.clone();
    let balance = deadline
        .call(
            pb::GetBalanceRequest {
                user_id: shopper.id(),
            },
            |r| async move { client.get_balance(r).await },
        )
        .await?;
    Ok(Json(Balance {
        balance: balance.balance,
    }))
}

/// The token's user's ledger, newest first.
#[utoipa::path(
    get, path = "/api/v1/me/points/ledger", tag = "points",
    params(PageQuery),
    security(("bearer" = [])),
    responses((status = 200, body = LedgerPage), Errors)
)]
pub async fn ledger(
    State(state): State<Arc<AppState>>,
    shopper: Shopper,
    deadline: Deadline,
    ApiQuery(page): ApiQuery<PageQuery>,
) -> Result<Json<LedgerPage>, Problem> {
    let (page, size) = page.checked()?;
    let request = pb::ListLedgerRequest {
        user_id: shopper.id(),
        page,
        size,
    };
    let mut client = state.mesh.points.clone();
    let listed = deadline
        .call(request, |r| async move { client.list_ledger(r).await })
        .await?;
    Ok(Json(LedgerPage {
        items: listed.entries.into_iter().map(LedgerEntry::from).collect(),
        page: listed.page,
        size: listed.size,
        total: listed.total,
    }))
}

/// Charges the token's user's points. The `Idempotency-Key` makes a repeat
/// (a retry after a lost answer) return the first charge instead of a second.
#[utoipa::path(
    post, path = "/api/v1/me/points/charges", tag = "points",
    params(("Idempotency-Key" = String, Header, description = "Unique per charge; a repeat returns the first answer")),
    request_body = ChargeRequest,
    security(("bearer" = [])),
    responses((status = 201, body = Charge), Errors)
)]
pub async fn charge(
    State(state): State<Arc<AppState>>,
    shopper: Shopper,
    deadline: Deadline,
    IdempotencyKey(key): IdempotencyKey,
    ApiJson(body): ApiJson<ChargeRequest>,
) -> Result<(StatusCode, Json<Charge>), Problem> {
    let amount = in_range("amount", body.amount, 1, MAX_CHARGE)?;
    let request = pb::ChargeRequest {
        user_id: shopper.id(),
        amount,
        idempotency_key: key,
    };
    let mut client = state.mesh.points.clone();
    let charged = deadline
        .call(request, |r| async move { client.charge(r).await })
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(Charge {
            entry: charged.entry.map(LedgerEntry::from),
            balance: charged.balance,
        }),
    ))
}
