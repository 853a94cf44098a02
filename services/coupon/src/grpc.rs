//! Thin handlers of `commerce.coupon.v1`: parse the request into domain
//! types (errors name the proto field), call one store method, convert the
//! result. Errors become `tonic::Status` only through the platform's mapping.

use commerce_platform::paging::PageRequest;
use commerce_platform::{SagaCall, UserId, time, validate};
use commerce_proto::coupon::v1 as pb;
use commerce_proto::coupon::v1::coupon_admin_service_server::CouponAdminService;
use commerce_proto::coupon::v1::coupon_service_server::CouponService;
use tonic::{Request, Response, Status};

use crate::domain::{
    self, CouponState, CouponTemplate, DiscountKind, NewTemplate, OrderAmount, TemplateInput,
    UserCoupon,
};
use crate::gate::Issuance;
use crate::store::{CouponStore, CouponUseRequest};

/// `CouponAdminService`: template management.
pub struct CouponAdminApi {
    store: CouponStore,
}

impl CouponAdminApi {
    pub fn new(store: CouponStore) -> Self {
        Self { store }
    }
}

/// `CouponService`: issuance, listing, quotes and the saga operations.
pub struct CouponApi {
    store: CouponStore,
    /// IssueCoupon: the admission gate (when on) in front of the store.
    issuance: Issuance,
}

impl CouponApi {
    pub fn new(store: CouponStore, issuance: Issuance) -> Self {
        Self { store, issuance }
    }
}

#[tonic::async_trait]
impl CouponAdminService for CouponAdminApi {
    #[tracing::instrument(skip_all, fields(name = %request.get_ref().name))]
    async fn create_template(
        &self,
        request: Request<pb::CreateTemplateRequest>,
    ) -> Result<Response<pb::CouponTemplate>, Status> {
        let request = request.into_inner();
        let kind = match pb::DiscountKind::try_from(request.kind) {
            Ok(pb::DiscountKind::Fixed) => Some(DiscountKind::Fixed),
            Ok(pb::DiscountKind::Percent) => Some(DiscountKind::Percent),
            Ok(pb::DiscountKind::Unspecified) | Err(_) => None,
        };
        let new = NewTemplate::parse(TemplateInput {
            name: request.name,
            kind,
            value: request.value,
            max_discount: request.max_discount,
            min_order_amount: request.min_order_amount,
            valid_from: time::from_proto("valid_from", request.valid_from)?,
            valid_until: time::from_proto("valid_until", request.valid_until)?,
            total_quantity: request.total_quantity,
        })?;
        let template = self.store.template_create(&new).await?;
        Ok(Response::new(template_to_proto(template)))
    }

    #[tracing::instrument(skip_all, fields(template_id = request.get_ref().template_id))]
    async fn get_template(
        &self,
        request: Request<pb::GetTemplateRequest>,
    ) -> Result<Response<pb::CouponTemplate>, Status> {
        let template_id = validate::id("template_id", request.into_inner().template_id)?;
        let template = self.store.template_get(template_id).await?;
        Ok(Response::new(template_to_proto(template)))
    }
}

#[tonic::async_trait]
impl CouponService for CouponApi {
    #[tracing::instrument(skip_all, fields(template_id = request.get_ref().template_id))]
    async fn issue_coupon(
        &self,
        request: Request<pb::IssueCouponRequest>,
    ) -> Result<Response<pb::UserCoupon>, Status> {
        let request = request.into_inner();
        let template_id = validate::id("template_id", request.template_id)?;
        let user = UserId::parse("user_id", &request.user_id)?;
        let coupon = self.issuance.coupon_issue(template_id, &user).await?;
        Ok(Response::new(coupon_to_proto(coupon)))
    }

    #[tracing::instrument(skip_all)]
    async fn list_user_coupons(
        &self,
        request: Request<pb::ListUserCouponsRequest>,
    ) -> Result<Response<pb::ListUserCouponsResponse>, Status> {
        let request = request.into_inner();
        let user = UserId::parse("user_id", &request.user_id)?;
        let page = PageRequest::parse(request.page, request.size)?;
        let (coupons, total) = self.store.coupons_list(&user, page).await?;
        Ok(Response::new(pb::ListUserCouponsResponse {
            coupons: coupons.into_iter().map(coupon_to_proto).collect(),
            page: page.page,
            size: page.size,
            total,
        }))
    }

    #[tracing::instrument(skip_all, fields(user_coupon_id = request.get_ref().user_coupon_id))]
    async fn quote_discount(
        &self,
        request: Request<pb::QuoteDiscountRequest>,
    ) -> Result<Response<pb::DiscountQuote>, Status> {
        let request = request.into_inner();
        let user = UserId::parse("user_id", &request.user_id)?;
        let user_coupon_id = validate::id("user_coupon_id", request.user_coupon_id)?;
        let order = OrderAmount::parse("order_amount", request.order_amount)?;
        let quote = self
            .store
            .coupon_quote(&user, user_coupon_id, order)
            .await?;
        Ok(Response::new(pb::DiscountQuote {
            user_coupon_id,
            order_amount: quote.order_amount,
            discount: quote.discount,
            payable: quote.payable,
        }))
    }

    #[tracing::instrument(skip_all, fields(
        saga_id = %request.get_ref().saga_id,
        user_coupon_id = request.get_ref().user_coupon_id,
    ))]
    async fn use_coupon(
        &self,
        request: Request<pb::UseCouponRequest>,
    ) -> Result<Response<pb::UseCouponResponse>, Status> {
        let request = request.into_inner();
        let call = SagaCall::parse(&request.saga_id, request.saga_fence)?;
        let use_request = CouponUseRequest {
            user: UserId::parse("user_id", &request.user_id)?,
            user_coupon_id: validate::id("user_coupon_id", request.user_coupon_id)?,
            order_amount: OrderAmount::parse("order_amount", request.order_amount)?,
            expected_discount: domain::parse_expected_discount(
                "expected_discount",
                request.expected_discount,
            )?,
        };
        let used = self.store.coupon_use(&call, &use_request).await?;
        Ok(Response::new(pb::UseCouponResponse {
            saga_id: call.saga.to_string(),
            user_coupon_id: used.user_coupon_id,
            discount: used.discount,
        }))
    }

    #[tracing::instrument(skip_all, fields(saga_id = %request.get_ref().saga_id))]
    async fn restore_coupon(
        &self,
        request: Request<pb::RestoreCouponRequest>,
    ) -> Result<Response<pb::RestoreCouponResponse>, Status> {
        let request = request.into_inner();
        let call = SagaCall::parse(&request.saga_id, request.saga_fence)?;
        let restored = self.store.coupon_restore(&call).await?;
        Ok(Response::new(pb::RestoreCouponResponse {
            saga_id: call.saga.to_string(),
            restored: restored.restored,
            user_coupon_id: restored.user_coupon_id.unwrap_or_default(),
        }))
    }
}

fn template_to_proto(template: CouponTemplate) -> pb::CouponTemplate {
    let discount = template.terms.discount;
    let kind = match discount.kind() {
        DiscountKind::Fixed => pb::DiscountKind::Fixed,
        DiscountKind::Percent => pb::DiscountKind::Percent,
    };
    pb::CouponTemplate {
        id: template.id,
        name: template.name,
        kind: kind.into(),
        value: discount.value(),
        max_discount: discount.max_discount(),
        min_order_amount: template.terms.min_order_amount,
        valid_from: Some(time::to_proto(template.terms.valid_from)),
        valid_until: Some(time::to_proto(template.terms.valid_until)),
        total_quantity: template.total_quantity,
        issued_quantity: template.issued_quantity,
        created_at: Some(time::to_proto(template.created_at)),
    }
}

fn coupon_to_proto(coupon: UserCoupon) -> pb::UserCoupon {
    let state = match coupon.state {
        CouponState::Available => pb::UserCouponState::Available,
        CouponState::Used => pb::UserCouponState::Used,
    };
    pb::UserCoupon {
        id: coupon.id,
        user_id: coupon.user_id,
        state: state.into(),
        used_by_saga: coupon.used_by_saga.unwrap_or_default(),
        issued_at: Some(time::to_proto(coupon.issued_at)),
        used_at: coupon.used_at.map(time::to_proto),
        template: Some(template_to_proto(coupon.template)),
    }
}
