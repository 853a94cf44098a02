//! The place-order saga: reserve the stock (and quote the coupon on the
//! snapshot prices), deduct the points, use the coupon, confirm. The order
//! is PENDING throughout; it becomes CONFIRMED when every step succeeded,
//! or REJECTED (paying nothing) once a refusal's compensations are done.
//!
//! | step            | undo             | call                          | inputs                         | on the order              |
//! |-----------------|------------------|-------------------------------|--------------------------------|---------------------------|
//! | `reserve_stock` | `release_stock`  | product: ReserveStock, then coupon: QuoteDiscount | lines; user and coupon | lines' snapshot, subtotal, discount |
//! | `deduct_points` | `refund_points`  | point: DeductPoints           | user; reserve's payable        | points paid (0 once refunded) |
//! | `use_coupon`    | `restore_coupon` | coupon: UseCoupon (with a coupon only) | user, coupon; reserve's pricing | -                 |
//! | `confirm_order` | -                | product: ConfirmReservation   | -                              | CONFIRMED (at the end)    |
//!
//! Step names are persisted in the step log: never rename one.

use crate::domain::order::{OrderState, PlaceOrder, Pricing};
use crate::domain::saga::{Rejection, SagaParams, Step, StepDef, StepOutput, output_of};
use crate::participants::{Participants, Reply, StepError};
use crate::store::OrderChange;

use super::misplaced;
use crate::executor::StepInput;

/// The parameters of the saga that places `request` as order `order_id`.
pub fn params(order_id: &str, request: &PlaceOrder) -> SagaParams {
    SagaParams::PlaceOrder {
        order_id: order_id.to_owned(),
        user: request.user.clone(),
        lines: request.lines.clone(),
        user_coupon_id: request.user_coupon_id,
    }
}

/// The steps, in order; the coupon step only with a coupon.
pub fn steps(params: &SagaParams) -> Vec<StepDef> {
    let with_coupon = with_coupon(params);
    [
        StepDef::new(Step::ReserveStock, Some(Step::ReleaseStock)),
        StepDef::new(Step::DeductPoints, Some(Step::RefundPoints)),
        StepDef::new(Step::UseCoupon, Some(Step::RestoreCoupon)),
        StepDef::new(Step::ConfirmOrder, None),
    ]
    .into_iter()
    .filter(|s| with_coupon || s.action != Step::UseCoupon)
    .collect()
}

/// Whether `step`'s success is written before the next call. With a
/// coupon, `reserve_stock` quotes the discount, a read no barrier replays
/// (the coupon may expire or change before a repeat), and the points to
/// deduct follow from it: the quote is durable before any point moves.
/// Without one, every input of a later step is the reservation's answer,
/// which the product service's barrier replays as it was.
pub fn checkpoint(params: &SagaParams, step: Step) -> bool {
    step == Step::ReserveStock && with_coupon(params)
}

fn with_coupon(params: &SagaParams) -> bool {
    matches!(
        params,
        SagaParams::PlaceOrder {
            user_coupon_id: Some(_),
            ..
        }
    )
}

/// One step's call (action or undo).
pub async fn run<P: Participants>(
    participants: &P,
    step: Step,
    input: StepInput<'_>,
) -> Reply<StepOutput> {
    let SagaParams::PlaceOrder {
        order_id,
        user,
        lines,
        user_coupon_id,
    } = input.params
    else {
        return Err(misplaced(step, input.params));
    };
    let saga = input.call;
    match step {
        Step::ReserveStock => {
            let lines = participants.reserve_stock(saga, order_id, lines).await?;
            let subtotal = Pricing::subtotal(&lines);
            let discount = match user_coupon_id {
                Some(coupon) => participants.quote_discount(user, *coupon, subtotal).await?,
                None => 0,
            };
            Ok(StepOutput::Reserved {
                lines,
                pricing: Pricing::new(subtotal, discount),
            })
        }
        Step::ReleaseStock => participants.release_reservation(saga).await.map(done),

        Step::DeductPoints => {
            let pricing = reserved_pricing(input)?;
            if pricing.payable == 0 {
                // Nothing to pay: no call, and so nothing to refund.
                return Ok(StepOutput::PointsDeducted { amount: 0 });
            }
            if let Some(message) = pricing.beyond_any_balance() {
                // The point service would refuse the amount as an invalid
                // field; for the order it is a business refusal.
                return Err(StepError::Rejected(Rejection::new(
                    "POINT_INSUFFICIENT",
                    message,
                )));
            }
            let amount = participants
                .deduct_points(saga, user, pricing.payable)
                .await?;
            Ok(StepOutput::PointsDeducted { amount })
        }
        Step::RefundPoints => participants.refund_points(saga).await.map(done),

        Step::UseCoupon => {
            let Some(coupon) = user_coupon_id else {
                return Err(misplaced(step, input.params));
            };
            let pricing = reserved_pricing(input)?;
            let discount = participants
                .use_coupon(saga, user, *coupon, pricing.subtotal, pricing.discount)
                .await?;
            Ok(StepOutput::CouponUsed { discount })
        }
        Step::RestoreCoupon => participants.restore_coupon(saga).await.map(done),

        Step::ConfirmOrder => participants.confirm_reservation(saga).await.map(done),

        Step::FinishCancel => Err(misplaced(step, input.params)),
    }
}

/// What a step that succeeded changes on the order: its amounts follow what
/// the participants did (the price once reserved, the points once deducted,
/// none once refunded).
pub fn changes(step: Step, output: &StepOutput) -> Vec<OrderChange> {
    match (step, output) {
        (_, StepOutput::Reserved { lines, pricing }) => vec![OrderChange::Priced {
            lines: lines.clone(),
            pricing: *pricing,
        }],
        (_, StepOutput::PointsDeducted { amount }) => vec![OrderChange::PointsPaid(*amount)],
        (Step::RefundPoints, _) => vec![OrderChange::PointsPaid(0)],
        _ => Vec::new(),
    }
}

/// The order's last change: CONFIRMED, or REJECTED with the refusal that
/// turned the saga around (every step undone: nothing paid, no discount).
pub fn finish(completed: bool, rejection: Option<&Rejection>) -> Vec<OrderChange> {
    if completed {
        return vec![OrderChange::Transition {
            from: OrderState::Pending,
            to: OrderState::Confirmed,
            reason: None,
        }];
    }
    vec![
        OrderChange::Undone,
        OrderChange::Transition {
            from: OrderState::Pending,
            to: OrderState::Rejected,
            reason: rejection.cloned(),
        },
    ]
}

fn done(_: ()) -> StepOutput {
    StepOutput::Done
}

/// The pricing `reserve_stock` left in the log.
fn reserved_pricing(input: StepInput<'_>) -> Reply<Pricing> {
    let reserve = input
        .steps
        .iter()
        .position(|s| s.action == Step::ReserveStock)
        .and_then(|i| output_of(input.log, i));
    match reserve {
        Some(StepOutput::Reserved { pricing, .. }) => Ok(*pricing),
        _ => Err(StepError::Transient(
            "the reservation's pricing is missing from the log".to_owned(),
        )),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use commerce_platform::UserId;

    use super::*;

    #[test]
    fn the_coupon_step_only_with_a_coupon() {
        let params = |coupon| SagaParams::PlaceOrder {
            order_id: "o".into(),
            user: UserId::parse("user_id", "u").unwrap(),
            lines: vec![],
            user_coupon_id: coupon,
        };
        let names = |p| {
            steps(&p)
                .iter()
                .map(|s| s.action.name())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names(params(None)),
            ["reserve_stock", "deduct_points", "confirm_order"]
        );
        assert_eq!(
            names(params(Some(1))),
            [
                "reserve_stock",
                "deduct_points",
                "use_coupon",
                "confirm_order"
            ]
        );
    }
}
