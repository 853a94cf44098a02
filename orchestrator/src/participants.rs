//! The participant services as the sagas see them: one typed call per
//! saga operation ([`Participants`]), and its implementation over gRPC
//! ([`GrpcParticipants`]), each call with a deadline, the saga id and the
//! trace context of the step's span, and the classification of its answers.

use std::future::Future;
use std::time::Duration;

use commerce_platform::error::reason as error_reason;
use commerce_platform::tls::TlsFiles;
use commerce_platform::trace_context::{TracedChannel, traced};
use commerce_platform::{SagaCall, UserId};
use commerce_proto::coupon::v1 as coupon;
use commerce_proto::coupon::v1::coupon_service_client::CouponServiceClient;
use commerce_proto::point::v1 as point;
use commerce_proto::point::v1::point_service_client::PointServiceClient;
use commerce_proto::product::v1 as product;
use commerce_proto::product::v1::stock_service_client::StockServiceClient;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_types::StatusExt;

use crate::domain::order::{LineRequest, SnapshotLine};
use crate::domain::saga::Rejection;

/// How a step failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepError {
    /// The participant refused for a business reason: compensate.
    Rejected(Rejection),
    /// Unavailable, timed out, conflict, lost connection, or an outcome we
    /// cannot know: try the same step again.
    Transient(String),
    /// The participant has seen a newer lease fence for the saga: another
    /// instance drives it now, and this one must stop.
    Fenced(String),
}

impl StepError {
    /// Business rejections are FAILED_PRECONDITION, INVALID_ARGUMENT,
    /// NOT_FOUND (and ALREADY_EXISTS); everything else may succeed on retry.
    pub fn classify(status: &Status) -> Self {
        match status.code() {
            Code::FailedPrecondition
            | Code::InvalidArgument
            | Code::NotFound
            | Code::AlreadyExists => {
                let reason = status
                    .get_details_error_info()
                    .map(|info| info.reason)
                    .unwrap_or_else(|| format!("{:?}", status.code()).to_uppercase());
                if reason == error_reason::SAGA_FENCE_STALE {
                    return Self::Fenced(status.message().to_owned());
                }
                Self::Rejected(Rejection::new(reason, status.message()))
            }
            code => Self::Transient(format!("{code:?}: {}", status.message())),
        }
    }
}

/// A participant's answer.
pub type Reply<T> = Result<T, StepError>;

/// The saga operations of the product, point and coupon services. Every
/// effect is keyed by the saga id and guarded by the participant's barrier:
/// an action runs at most once, an undo after its action (or instead of a
/// late one) at most once.
pub trait Participants: Send + Sync + 'static {
    /// Reserves every line of the order or none; answers each line's
    /// snapshot.
    fn reserve_stock(
        &self,
        saga: &SagaCall,
        order_id: &str,
        lines: &[LineRequest],
    ) -> impl Future<Output = Reply<Vec<SnapshotLine>>> + Send;
    fn confirm_reservation(&self, saga: &SagaCall) -> impl Future<Output = Reply<()>> + Send;
    fn release_reservation(&self, saga: &SagaCall) -> impl Future<Output = Reply<()>> + Send;
    /// The discount the coupon gives on `amount` (no effect).
    fn quote_discount(
        &self,
        user: &UserId,
        user_coupon_id: i64,
        amount: i64,
    ) -> impl Future<Output = Reply<i64>> + Send;
    /// Answers the points deducted.
    fn deduct_points(
        &self,
        saga: &SagaCall,
        user: &UserId,
        amount: i64,
    ) -> impl Future<Output = Reply<i64>> + Send;
    fn refund_points(&self, saga: &SagaCall) -> impl Future<Output = Reply<()>> + Send;
    /// Answers the discount applied.
    fn use_coupon(
        &self,
        saga: &SagaCall,
        user: &UserId,
        user_coupon_id: i64,
        amount: i64,
        expected_discount: i64,
    ) -> impl Future<Output = Reply<i64>> + Send;
    fn restore_coupon(&self, saga: &SagaCall) -> impl Future<Output = Reply<()>> + Send;
}

/// Addresses and deadline of the participants.
#[derive(Debug, Clone)]
pub struct ParticipantConfig {
    pub product: String,
    pub point: String,
    pub coupon: String,
    pub call_timeout: Duration,
    /// The orchestrator's own certificate, presented to every participant
    /// (None: plaintext, a development mesh).
    pub tls: Option<TlsFiles>,
}

#[derive(Clone)]
pub struct GrpcParticipants {
    stock: StockServiceClient<TracedChannel>,
    points: PointServiceClient<TracedChannel>,
    coupons: CouponServiceClient<TracedChannel>,
    call_timeout: Duration,
}

pub(crate) fn channel(uri: &str, config: &ParticipantConfig) -> anyhow::Result<Channel> {
    let timeout = config.call_timeout;
    Ok(commerce_platform::tls::endpoint(uri, config.tls.as_ref())?
        .connect_timeout(timeout)
        .timeout(timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .connect_lazy())
}

impl GrpcParticipants {
    pub fn new(config: &ParticipantConfig) -> anyhow::Result<Self> {
        Ok(Self {
            stock: StockServiceClient::new(traced(channel(&config.product, config)?)),
            points: PointServiceClient::new(traced(channel(&config.point, config)?)),
            coupons: CouponServiceClient::new(traced(channel(&config.coupon, config)?)),
            call_timeout: config.call_timeout,
        })
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(self.call_timeout);
        request
    }

    /// A saga call's request, from the saga id and the lease fence.
    fn saga<T>(
        &self,
        saga: &SagaCall,
        message: impl FnOnce(String, i64) -> T,
    ) -> tonic::Request<T> {
        self.request(message(saga.saga.to_string(), saga.fence))
    }
}

fn answer<T>(result: Result<tonic::Response<T>, Status>) -> Reply<T> {
    result
        .map(tonic::Response::into_inner)
        .map_err(|s| StepError::classify(&s))
}

impl Participants for GrpcParticipants {
    async fn reserve_stock(
        &self,
        saga: &SagaCall,
        order_id: &str,
        lines: &[LineRequest],
    ) -> Reply<Vec<SnapshotLine>> {
        let ordered_at =
            crate::domain::order::ordered_at(order_id).map(commerce_platform::time::to_proto);
        let lines = lines
            .iter()
            .map(|l| product::ReserveLine {
                product_id: l.product_id,
                quantity: l.quantity,
            })
            .collect();
        let reservation = answer(
            self.stock
                .clone()
                .reserve_stock(self.saga(saga, |saga_id, saga_fence| {
                    product::ReserveStockRequest {
                        saga_id,
                        lines,
                        saga_fence,
                        order_id: order_id.to_owned(),
                        ordered_at,
                    }
                }))
                .await,
        )?;
        Ok(reservation
            .lines
            .into_iter()
            .map(|l| SnapshotLine {
                product_id: l.product_id,
                quantity: l.quantity,
                product_name: l.product_name,
                brand_id: l.brand_id,
                brand_name: l.brand_name,
                unit_price: l.unit_price,
            })
            .collect())
    }

    async fn confirm_reservation(&self, saga: &SagaCall) -> Reply<()> {
        let request = self.saga(saga, |saga_id, saga_fence| product::SagaRequest {
            saga_id,
            saga_fence,
        });
        answer(self.stock.clone().confirm_reservation(request).await).map(drop)
    }

    async fn release_reservation(&self, saga: &SagaCall) -> Reply<()> {
        let request = self.saga(saga, |saga_id, saga_fence| product::SagaRequest {
            saga_id,
            saga_fence,
        });
        answer(self.stock.clone().release_reservation(request).await).map(drop)
    }

    async fn quote_discount(&self, user: &UserId, user_coupon_id: i64, amount: i64) -> Reply<i64> {
        let request = self.request(coupon::QuoteDiscountRequest {
            user_id: user.to_string(),
            user_coupon_id,
            order_amount: amount,
        });
        Ok(answer(self.coupons.clone().quote_discount(request).await)?.discount)
    }

    async fn deduct_points(&self, saga: &SagaCall, user: &UserId, amount: i64) -> Reply<i64> {
        let request = self.saga(saga, |saga_id, saga_fence| point::DeductPointsRequest {
            saga_id,
            saga_fence,
            user_id: user.to_string(),
            amount,
        });
        Ok(answer(self.points.clone().deduct_points(request).await)?.deducted)
    }

    async fn refund_points(&self, saga: &SagaCall) -> Reply<()> {
        let request = self.saga(saga, |saga_id, saga_fence| point::RefundPointsRequest {
            saga_id,
            saga_fence,
        });
        answer(self.points.clone().refund_points(request).await).map(drop)
    }

    async fn use_coupon(
        &self,
        saga: &SagaCall,
        user: &UserId,
        user_coupon_id: i64,
        amount: i64,
        expected_discount: i64,
    ) -> Reply<i64> {
        let request = self.saga(saga, |saga_id, saga_fence| coupon::UseCouponRequest {
            saga_id,
            saga_fence,
            user_id: user.to_string(),
            user_coupon_id,
            order_amount: amount,
            expected_discount: Some(expected_discount),
        });
        Ok(answer(self.coupons.clone().use_coupon(request).await)?.discount)
    }

    async fn restore_coupon(&self, saga: &SagaCall) -> Reply<()> {
        let request = self.saga(saga, |saga_id, saga_fence| coupon::RestoreCouponRequest {
            saga_id,
            saga_fence,
        });
        answer(self.coupons.clone().restore_coupon(request).await).map(drop)
    }
}
