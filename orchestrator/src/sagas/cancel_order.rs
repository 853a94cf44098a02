//! The cancel-order saga: undo what the saga that placed a CONFIRMED order
//! did, then finish. The order is CANCELLING throughout (set when the saga
//! is recorded) and CANCELLED at the end. Every step must succeed: a refusal
//! is retried like a failure, and a step that keeps failing makes the saga
//! STUCK for operators. The calls carry the placing saga's id, which keys
//! the participants' barrier rows.
//!
//! | step             | undo | call                        | inputs             | on the order          |
//! |------------------|------|-----------------------------|--------------------|-----------------------|
//! | `release_stock`  | -    | product: ReleaseReservation | the placing saga   | -                     |
//! | `refund_points`  | -    | point: RefundPoints         | the placing saga   | -                     |
//! | `restore_coupon` | -    | coupon: RestoreCoupon (with a coupon only) | the placing saga | -     |
//! | `finish_cancel`  | -    | none                        | -                  | CANCELLED (at the end) |
//!
//! Step names are persisted in the step log: never rename one.

use commerce_platform::error::ServiceError;
use commerce_platform::{SagaCall, SagaId, UserId};

use crate::domain::order::OrderState;
use crate::domain::saga::{SagaParams, Step, StepDef, StepOutput};
use crate::participants::{Participants, Reply};
use crate::store::{OrderChange, OrderRecord};

use super::misplaced;
use crate::executor::StepInput;

/// The parameters of the saga that cancels `order` for `user`: it undoes
/// the saga that placed the order.
pub fn params(order: &OrderRecord, user: &UserId) -> Result<SagaParams, ServiceError> {
    Ok(SagaParams::CancelOrder {
        order_id: order.order.id.clone(),
        user: user.clone(),
        placed_by: SagaId::parse("saga_id", &order.order.saga_id)?,
        user_coupon_id: order.order.user_coupon_id,
    })
}

/// The steps, in order; the coupon step only with a coupon.
pub fn steps(params: &SagaParams) -> Vec<StepDef> {
    let with_coupon = matches!(
        params,
        SagaParams::CancelOrder {
            user_coupon_id: Some(_),
            ..
        }
    );
    [
        StepDef::new(Step::ReleaseStock, None),
        StepDef::new(Step::RefundPoints, None),
        StepDef::new(Step::RestoreCoupon, None),
        StepDef::new(Step::FinishCancel, None),
    ]
    .into_iter()
    .filter(|s| with_coupon || s.action != Step::RestoreCoupon)
    .collect()
}

/// The participants keep one fence per saga id, and this saga calls under
/// the placing saga's id: its fences start above any the placing saga can
/// have reached (one per takeover), so its calls are never taken for stale
/// ones, and any late call of the placing saga is refused.
const PLACED_FENCE_BASE: i64 = 1 << 32;

/// One step's call.
pub async fn run<P: Participants>(
    participants: &P,
    step: Step,
    input: StepInput<'_>,
) -> Reply<StepOutput> {
    let SagaParams::CancelOrder { placed_by, .. } = input.params else {
        return Err(misplaced(step, input.params));
    };
    let placed_by = &SagaCall {
        saga: placed_by.clone(),
        fence: PLACED_FENCE_BASE.saturating_add(input.call.fence),
    };
    match step {
        Step::ReleaseStock => participants.release_reservation(placed_by).await?,
        Step::RefundPoints => participants.refund_points(placed_by).await?,
        Step::RestoreCoupon => participants.restore_coupon(placed_by).await?,
        Step::FinishCancel => {}
        _ => return Err(misplaced(step, input.params)),
    }
    Ok(StepOutput::Done)
}

/// The order's last change.
pub fn finish() -> Vec<OrderChange> {
    vec![OrderChange::Transition {
        from: OrderState::Cancelling,
        to: OrderState::Cancelled,
        reason: None,
    }]
}
