//! The shopper's coupons: issue one from a template (first come, first
//! served) and list their own.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use commerce_proto::coupon::v1 as pb;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{PageQuery, positive_id, time};
use crate::AppState;
use crate::auth::Shopper;
use crate::extract::{ApiJson, ApiQuery};
use crate::mesh::Deadline;
use crate::problem::{Errors, Problem};

#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DiscountKind {
    /// `value` KRW off.
    Fixed,
    /// `value` percent off, up to `maxDiscount`.
    Percent,
}

impl DiscountKind {
    pub fn from_proto(raw: i32) -> Option<Self> {
        match pb::DiscountKind::try_from(raw).ok()? {
            pb::DiscountKind::Fixed => Some(Self::Fixed),
            pb::DiscountKind::Percent => Some(Self::Percent),
            pb::DiscountKind::Unspecified => None,
        }
    }

    pub fn to_proto(self) -> pb::DiscountKind {
        match self {
            Self::Fixed => pb::DiscountKind::Fixed,
            Self::Percent => pb::DiscountKind::Percent,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CouponTemplate {
    pub id: i64,
    pub name: String,
    pub kind: Option<DiscountKind>,
    pub value: i64,
    pub max_discount: Option<i64>,
    pub min_order_amount: i64,
    pub valid_from: Option<DateTime<Utc>>,
    pub valid_until: Option<DateTime<Utc>>,
    pub total_quantity: i64,
    pub issued_quantity: i64,
    pub created_at: Option<DateTime<Utc>>,
}

impl From<pb::CouponTemplate> for CouponTemplate {
    fn from(t: pb::CouponTemplate) -> Self {
        Self {
            id: t.id,
            name: t.name,
            kind: DiscountKind::from_proto(t.kind),
            value: t.value,
            max_discount: t.max_discount,
            min_order_amount: t.min_order_amount,
            valid_from: time(t.valid_from),
            valid_until: time(t.valid_until),
            total_quantity: t.total_quantity,
            issued_quantity: t.issued_quantity,
            created_at: time(t.created_at),
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CouponState {
    Available,
    Used,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Coupon {
    pub id: i64,
    pub state: Option<CouponState>,
    pub issued_at: Option<DateTime<Utc>>,
    pub used_at: Option<DateTime<Utc>>,
    pub template: Option<CouponTemplate>,
}

impl From<pb::UserCoupon> for Coupon {
    fn from(c: pb::UserCoupon) -> Self {
        Self {
            id: c.id,
            state: match pb::UserCouponState::try_from(c.state) {
                Ok(pb::UserCouponState::Available) => Some(CouponState::Available),
                Ok(pb::UserCouponState::Used) => Some(CouponState::Used),
                _ => None,
            },
            issued_at: time(c.issued_at),
            used_at: time(c.used_at),
            template: c.template.map(CouponTemplate::from),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CouponPage {
    pub items: Vec<Coupon>,
    pub page: i32,
    pub size: i32,
    pub total: i64,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IssueRequest {
    /// The template to take a coupon of.
    #[schema(minimum = 1)]
    pub template_id: i64,
}

/// Issues the token's user a coupon of a template: one per user, while the
/// template's quantity lasts (409 `COUPON_ALREADY_ISSUED`, `COUPON_SOLD_OUT`, ...).
#[utoipa::path(
    post, path = "/api/v1/me/coupons", tag = "coupons",
    request_body = IssueRequest,
    security(("bearer" = [])),
    responses((status = 201, body = Coupon), Errors)
)]
pub async fn issue(
    State(state): State<Arc<AppState>>,
    shopper: Shopper,
    deadline: Deadline,
    ApiJson(body): ApiJson<IssueRequest>,
) -> Result<(StatusCode, Json<Coupon>), Problem> {
    let request = pb::IssueCouponRequest {
        template_id: positive_id("templateId", body.template_id)?,
        user_id: shopper.id(),
    };
    let mut client = state.mesh.coupons.clone();
    let coupon = deadline
        .call(request, |r| async move { client.issue_coupon(r).await })
        .await?;
    Ok((StatusCode::CREATED, Json(coupon.into())))
}

/// The token's user's coupons.
#[utoipa::path(
    get, path = "/api/v1/me/coupons", tag = "coupons",
    params(PageQuery),
    security(("bearer" = [])),
    responses((status = 200, body = CouponPage), Errors)
)]
pub async fn list_mine(
    State(state): State<Arc<AppState>>,
    shopper: Shopper,
    deadline: Deadline,
    ApiQuery(page): ApiQuery<PageQuery>,
) -> Result<Json<CouponPage>, Problem> {
    let (page, size) = page.checked()?;
    let request = pb::ListUserCouponsRequest {
        user_id: shopper.id(),
        page,
        size,
    };
    let mut client = state.mesh.coupons.clone();
    let listed = deadline
        .call(
            request,
            |r| async move { client.list_user_coupons(r).await },
        )
        .await?;
    Ok(Json(CouponPage {
        items: listed.coupons.into_iter().map(Coupon::from).collect(),
        page: listed.page,
        size: listed.size,
        total: listed.total,
    }))
}
