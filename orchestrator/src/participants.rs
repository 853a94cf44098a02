//! Calls to the participant services, one per saga step, each with a
//! deadline and the saga id, and the classification of their answers.

use std::time::Duration;

use commerce_platform::SagaId;
use commerce_proto::coupon::v1 as coupon;
use commerce_proto::coupon::v1::coupon_service_client::CouponServiceClient;
use commerce_proto::point::v1 as point;
use commerce_proto::point::v1::point_service_client::PointServiceClient;
use commerce_proto::product::v1 as product;
use commerce_proto::product::v1::stock_service_client::StockServiceClient;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};
use tonic_types::StatusExt;

use crate::domain::order::{Pricing, SnapshotLine};
use crate::domain::saga::{LogEntry, SagaParams, Step, StepOutput, output_of};

/// How a step failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepError {
    /// The participant refused for a business reason: compensate.
    Rejected { reason: String, message: String },
    /// Unavailable, timed out, conflict, lost connection, or an outcome we
    /// cannot know: try the same step again.
    Transient(String),
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
                Self::Rejected {
                    reason,
                    message: status.message().to_owned(),
                }
            }
            code => Self::Transient(format!("{code:?}: {}", status.message())),
        }
    }
}

/// Addresses and deadline of the participants.
#[derive(Debug, Clone)]
pub struct ParticipantConfig {
    pub product: String,
    pub point: String,
    pub coupon: String,
    pub call_timeout: Duration,
}

#[derive(Clone)]
pub struct Participants {
    stock: StockServiceClient<Channel>,
    points: PointServiceClient<Channel>,
    coupons: CouponServiceClient<Channel>,
    call_timeout: Duration,
}

fn channel(uri: &str, timeout: Duration) -> anyhow::Result<Channel> {
    Ok(Endpoint::from_shared(uri.to_owned())?
        .connect_timeout(timeout)
        .timeout(timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .connect_lazy())
}

impl Participants {
    pub fn new(config: &ParticipantConfig) -> anyhow::Result<Self> {
        Ok(Self {
            stock: StockServiceClient::new(channel(&config.product, config.call_timeout)?),
            points: PointServiceClient::new(channel(&config.point, config.call_timeout)?),
            coupons: CouponServiceClient::new(channel(&config.coupon, config.call_timeout)?),
            call_timeout: config.call_timeout,
        })
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(self.call_timeout);
        request
    }

    /// Runs one step of saga `saga` (forward or undo). `log` holds the
    /// outputs of earlier steps.
    pub async fn run(
        &self,
        saga: &SagaId,
        params: &SagaParams,
        steps: &[Step],
        log: &[LogEntry],
        step: Step,
    ) -> Result<StepOutput, StepError> {
        match (step, params) {
            (
                Step::ReserveStock,
                SagaParams::PlaceOrder {
                    lines,
                    user,
                    user_coupon_id,
                    ..
                },
            ) => {
                let reservation = self
                    .stock
                    .clone()
                    .reserve_stock(
                        self.request(product::ReserveStockRequest {
                            saga_id: saga.to_string(),
                            lines: lines
                                .iter()
                                .map(|l| product::ReserveLine {
                                    product_id: l.product_id,
                                    quantity: l.quantity,
                                })
                                .collect(),
                        }),
                    )
                    .await
                    .map_err(|s| StepError::classify(&s))?
                    .into_inner();
                let lines: Vec<SnapshotLine> = reservation
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
                    .collect();
                let subtotal = Pricing::subtotal(&lines);
                let discount = match user_coupon_id {
                    Some(coupon_id) => {
                        self.coupons
                            .clone()
                            .quote_discount(self.request(coupon::QuoteDiscountRequest {
                                user_id: user.to_string(),
                                user_coupon_id: *coupon_id,
                                order_amount: subtotal,
                            }))
                            .await
                            .map_err(|s| StepError::classify(&s))?
                            .into_inner()
                            .discount
                    }
                    None => 0,
                };
                Ok(StepOutput::Reserved {
                    lines,
                    pricing: Pricing::new(subtotal, discount),
                })
            }
            (Step::DeductPoints, SagaParams::PlaceOrder { user, .. }) => {
                let pricing = reserved_pricing(steps, log)?;
                if pricing.payable == 0 {
                    // Nothing to pay: no call, and so nothing to refund.
                    return Ok(StepOutput::PointsDeducted { amount: 0 });
                }
                if let Some(message) = pricing.beyond_any_balance() {
                    // The point service would refuse the amount as an
                    // invalid field; for the order it is a business refusal.
                    return Err(StepError::Rejected {
                        reason: "POINT_INSUFFICIENT".to_owned(),
                        message,
                    });
                }
                let deducted = self
                    .points
                    .clone()
                    .deduct_points(self.request(point::DeductPointsRequest {
                        saga_id: saga.to_string(),
                        user_id: user.to_string(),
                        amount: pricing.payable,
                    }))
                    .await
                    .map_err(|s| StepError::classify(&s))?
                    .into_inner();
                Ok(StepOutput::PointsDeducted {
                    amount: deducted.deducted,
                })
            }
            (
                Step::UseCoupon,
                SagaParams::PlaceOrder {
                    user,
                    user_coupon_id: Some(coupon_id),
                    ..
                },
            ) => {
                let pricing = reserved_pricing(steps, log)?;
                let used = self
                    .coupons
                    .clone()
                    .use_coupon(self.request(coupon::UseCouponRequest {
                        saga_id: saga.to_string(),
                        user_id: user.to_string(),
                        user_coupon_id: *coupon_id,
                        order_amount: pricing.subtotal,
                        expected_discount: Some(pricing.discount),
                    }))
                    .await
                    .map_err(|s| StepError::classify(&s))?
                    .into_inner();
                Ok(StepOutput::CouponUsed {
                    discount: used.discount,
                })
            }
            (Step::ConfirmOrder, _) => {
                self.stock
                    .clone()
                    .confirm_reservation(self.request(product::SagaRequest {
                        saga_id: saga.to_string(),
                    }))
                    .await
                    .map_err(|s| StepError::classify(&s))?;
                Ok(StepOutput::Done)
            }
            (Step::ReleaseStock, _) => {
                self.stock
                    .clone()
                    .release_reservation(self.request(product::SagaRequest {
                        saga_id: undo_target(saga, params).to_string(),
                    }))
                    .await
                    .map_err(|s| StepError::classify(&s))?;
                Ok(StepOutput::Done)
            }
            (Step::RefundPoints, _) => {
                self.points
                    .clone()
                    .refund_points(self.request(point::RefundPointsRequest {
                        saga_id: undo_target(saga, params).to_string(),
                    }))
                    .await
                    .map_err(|s| StepError::classify(&s))?;
                Ok(StepOutput::Done)
            }
            (Step::RestoreCoupon, _) => {
                self.coupons
                    .clone()
                    .restore_coupon(self.request(coupon::RestoreCouponRequest {
                        saga_id: undo_target(saga, params).to_string(),
                    }))
                    .await
                    .map_err(|s| StepError::classify(&s))?;
                Ok(StepOutput::Done)
            }
            (Step::FinishCancel, _) => Ok(StepOutput::Done),
            (step, params) => Err(StepError::Transient(format!(
                "step {} does not belong to a {:?} saga",
                step.name(),
                params.kind()
            ))),
        }
    }
}

/// The saga whose effects an undo call targets: a cancellation undoes the
/// saga that placed the order.
fn undo_target<'a>(saga: &'a SagaId, params: &'a SagaParams) -> &'a SagaId {
    match params {
        SagaParams::CancelOrder { placed_by, .. } => placed_by,
        SagaParams::PlaceOrder { .. } => saga,
    }
}

fn reserved_pricing(steps: &[Step], log: &[LogEntry]) -> Result<Pricing, StepError> {
    let reserve = steps
        .iter()
        .position(|s| *s == Step::ReserveStock)
        .and_then(|i| output_of(log, i));
    match reserve {
        Some(StepOutput::Reserved { pricing, .. }) => Ok(*pricing),
        _ => Err(StepError::Transient(
            "the reservation's pricing is missing from the log".to_owned(),
        )),
    }
}
