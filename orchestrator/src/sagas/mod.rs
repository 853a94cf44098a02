//! The sagas the orchestrator runs, one declaration per file:
//! [`place_order`] and [`cancel_order`]. Each declares its steps (action
//! and undo side by side), the participant call each makes with its inputs,
//! and what each changes on the order; [`crate::executor`] runs any of them
//! from its log.

pub mod cancel_order;
pub mod place_order;

use crate::domain::saga::{Rejection, SagaKind, SagaParams, Step, StepDef, StepOutput};
use crate::executor::{SagaProgram, StepInput};
use crate::participants::{Participants, Reply, StepError};
use crate::store::OrderChange;

/// The steps a saga with these parameters runs, in order.
pub fn steps(params: &SagaParams) -> Vec<StepDef> {
    match params {
        SagaParams::PlaceOrder { .. } => place_order::steps(params),
        SagaParams::CancelOrder { .. } => cancel_order::steps(params),
    }
}

/// Both sagas over the participants `P`: what the executor runs.
pub struct OrderSagas<P> {
    participants: P,
}

impl<P> OrderSagas<P> {
    pub fn new(participants: P) -> Self {
        Self { participants }
    }

    pub fn participants(&self) -> &P {
        &self.participants
    }
}

impl<P: Participants> SagaProgram for OrderSagas<P> {
    type Change = OrderChange;

    fn steps(&self, params: &SagaParams) -> Vec<StepDef> {
        steps(params)
    }

    fn checkpoint(&self, params: &SagaParams, step: Step) -> bool {
        match params.kind() {
            SagaKind::PlaceOrder => place_order::checkpoint(params, step),
            SagaKind::CancelOrder => false,
        }
    }

    fn must_succeed(&self, params: &SagaParams) -> bool {
        params.kind() == SagaKind::CancelOrder
    }

    async fn run(&self, step: Step, input: StepInput<'_>) -> Reply<StepOutput> {
        match input.params.kind() {
            SagaKind::PlaceOrder => place_order::run(&self.participants, step, input).await,
            SagaKind::CancelOrder => cancel_order::run(&self.participants, step, input).await,
        }
    }

    fn changes(&self, params: &SagaParams, step: Step, output: &StepOutput) -> Vec<OrderChange> {
        match params.kind() {
            SagaKind::PlaceOrder => place_order::changes(step, output),
            SagaKind::CancelOrder => Vec::new(),
        }
    }

    fn finish(
        &self,
        params: &SagaParams,
        completed: bool,
        rejection: Option<&Rejection>,
    ) -> Vec<OrderChange> {
        match params.kind() {
            SagaKind::PlaceOrder => place_order::finish(completed, rejection),
            SagaKind::CancelOrder => cancel_order::finish(),
        }
    }
}

/// A step run against parameters of another saga (a corrupt log).
fn misplaced(step: Step, params: &SagaParams) -> StepError {
    StepError::Transient(format!(
        "step {} does not belong to a {:?} saga",
        step.name(),
        params.kind()
    ))
}

#[cfg(test)]
mod tests;
