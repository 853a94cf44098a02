//! The orchestrator's Prometheus metrics (served with the platform's, see
//! `commerce_platform::metrics`): sagas started and ended, each step's
//! calls, retries and log writes, STUCK sagas, recovery, lost leases and the
//! outbox. Label values are lower case (`place_order`, `forward`,
//! `succeeded`); step names are the step log's.
//!
//! Counters are counted where things happen, by the instance that did
//! them: sum them over instances. The gauges read from the database
//! ([`SAGAS_UNFINISHED`], [`OUTBOX_PENDING`], [`OUTBOX_OLDEST_AGE`]) are the
//! whole mesh's, the same from every instance: take their `max`.

use std::time::Duration;

use commerce_platform::time::now;
use metrics::{Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge};

use crate::domain::saga::{Direction, Outcome, SagaKind, SagaState, Step};
use crate::store::OrderStore;

/// Sagas started, by `kind`.
pub const SAGA_STARTED: &str = "commerce_saga_started_total";
/// Sagas ended, by `kind` and `outcome` (`completed`, `compensated`).
pub const SAGA_FINISHED: &str = "commerce_saga_finished_total";
/// Sagas marked STUCK (a step that must succeed kept failing), by `kind`;
/// each failed slow retry of a STUCK saga marks it again (the current
/// number is [`SAGAS_UNFINISHED`]'s `stuck`).
pub const SAGA_STUCK: &str = "commerce_saga_stuck_total";
/// Unfinished sagas now, by `state` (`running`, `compensating`, `stuck`).
pub const SAGAS_UNFINISHED: &str = "commerce_sagas_unfinished";
/// One attempt of a step's call to its participant, by `step`, `direction`
/// (`forward`, `compensate`) and `outcome` (`succeeded`, `rejected`,
/// `failed`, `fenced`); its `_count` is the attempts.
pub const STEP_DURATION: &str = "commerce_saga_step_duration_seconds";
/// Failed attempts that will be tried again, by `step` and `direction`.
pub const STEP_RETRIES: &str = "commerce_saga_step_retries_total";
/// The step log write that follows a step (`step`), or that records a new
/// order with its saga (`place_order`): the orchestrator's database time.
pub const LOG_WRITE_DURATION: &str = "commerce_saga_log_write_duration_seconds";
/// Sagas the recovery loop claimed (whose lease had expired, or this
/// instance's own after a restart).
pub const RECOVERY_CLAIMS: &str = "commerce_saga_recovery_claims_total";
/// Sagas this instance was driving and lost to another holder.
pub const LEASES_LOST: &str = "commerce_saga_leases_lost_total";
/// Order events in the outbox not yet published.
pub const OUTBOX_PENDING: &str = "commerce_outbox_pending";
/// Age of the oldest unpublished order event (0 when none waits).
pub const OUTBOX_OLDEST_AGE: &str = "commerce_outbox_oldest_pending_age_seconds";
/// Order events published to the stream by this instance.
pub const OUTBOX_PUBLISHED: &str = "commerce_outbox_published_total";
/// Relay rounds that failed (Redis or MySQL away).
pub const OUTBOX_FAILURES: &str = "commerce_outbox_relay_failures_total";

/// How often the gauges read from the database are refreshed.
const GAUGE_INTERVAL: Duration = Duration::from_secs(5);

/// Every call a saga makes, as (step, direction): the series of
/// [`STEP_RETRIES`] exported from the start.
const CALLS: [(Step, Direction); 11] = [
    (Step::ReserveStock, Direction::Forward),
    (Step::DeductPoints, Direction::Forward),
    (Step::UseCoupon, Direction::Forward),
    (Step::ConfirmOrder, Direction::Forward),
    (Step::ReleaseStock, Direction::Compensate),
    (Step::RefundPoints, Direction::Compensate),
    (Step::RestoreCoupon, Direction::Compensate),
    (Step::ReleaseStock, Direction::Forward),
    (Step::RefundPoints, Direction::Forward),
    (Step::RestoreCoupon, Direction::Forward),
    (Step::FinishCancel, Direction::Forward),
];

/// Help texts, and a zero for every counter series known in advance, so
/// that dashboards and alerts see each from the start rather than from its
/// first event (a rate over a series that appears at 1 reads nothing).
pub fn describe() {
    for kind in [SagaKind::PlaceOrder, SagaKind::CancelOrder] {
        counter!(SAGA_STARTED, "kind" => kind_label(kind)).absolute(0);
        counter!(SAGA_STUCK, "kind" => kind_label(kind)).absolute(0);
        for state in [SagaState::Completed, SagaState::Compensated] {
            counter!(SAGA_FINISHED, "kind" => kind_label(kind), "outcome" => state_label(state))
                .absolute(0);
        }
    }
    for (step, direction) in CALLS {
        counter!(STEP_RETRIES, "step" => step.name(), "direction" => direction_label(direction))
            .absolute(0);
    }
    for name in [
        RECOVERY_CLAIMS,
        LEASES_LOST,
        OUTBOX_PUBLISHED,
        OUTBOX_FAILURES,
    ] {
        counter!(name).absolute(0);
    }

    describe_counter!(SAGA_STARTED, "Sagas started, by kind");
    describe_counter!(SAGA_FINISHED, "Sagas ended, by kind and outcome");
    describe_counter!(SAGA_STUCK, "Sagas marked STUCK, by kind");
    describe_gauge!(SAGAS_UNFINISHED, "Unfinished sagas of the mesh, by state");
    describe_histogram!(
        STEP_DURATION,
        Unit::Seconds,
        "Saga step calls to participants, by step, direction and outcome"
    );
    describe_counter!(STEP_RETRIES, "Failed saga step attempts to be retried");
    describe_histogram!(
        LOG_WRITE_DURATION,
        Unit::Seconds,
        "Step log writes after a step, or of a new order with its saga"
    );
    describe_counter!(RECOVERY_CLAIMS, "Sagas claimed by the recovery loop");
    describe_counter!(LEASES_LOST, "Saga leases lost to another holder");
    describe_gauge!(OUTBOX_PENDING, "Order events waiting to be published");
    describe_gauge!(
        OUTBOX_OLDEST_AGE,
        Unit::Seconds,
        "Age of the oldest order event waiting to be published"
    );
    describe_counter!(OUTBOX_PUBLISHED, "Order events published");
    describe_counter!(OUTBOX_FAILURES, "Outbox relay rounds that failed");
}

fn kind_label(kind: SagaKind) -> &'static str {
    match kind {
        SagaKind::PlaceOrder => "place_order",
        SagaKind::CancelOrder => "cancel_order",
    }
}

fn direction_label(direction: Direction) -> &'static str {
    match direction {
        Direction::Forward => "forward",
        Direction::Compensate => "compensate",
    }
}

fn state_label(state: SagaState) -> &'static str {
    match state {
        SagaState::Running => "running",
        SagaState::Compensating => "compensating",
        SagaState::Completed => "completed",
        SagaState::Compensated => "compensated",
        SagaState::Stuck => "stuck",
    }
}

fn outcome_label(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Started => "started",
        Outcome::Succeeded => "succeeded",
        Outcome::Rejected => "rejected",
        Outcome::Failed => "failed",
    }
}

pub fn saga_started(kind: SagaKind) {
    counter!(SAGA_STARTED, "kind" => kind_label(kind)).increment(1);
}

pub fn saga_finished(kind: SagaKind, state: SagaState) {
    counter!(SAGA_FINISHED, "kind" => kind_label(kind), "outcome" => state_label(state))
        .increment(1);
}

pub fn saga_stuck(kind: SagaKind) {
    counter!(SAGA_STUCK, "kind" => kind_label(kind)).increment(1);
}

/// One attempt of `step`'s call, logged as `outcome` (None: refused for a
/// stale fence).
pub fn step_called(step: Step, direction: Direction, outcome: Option<Outcome>, took: Duration) {
    metrics::histogram!(
        STEP_DURATION,
        "step" => step.name(),
        "direction" => direction_label(direction),
        "outcome" => outcome.map_or("fenced", outcome_label),
    )
    .record(took);
}

pub fn step_retried(step: Step, direction: Direction) {
    counter!(STEP_RETRIES, "step" => step.name(), "direction" => direction_label(direction))
        .increment(1);
}

/// A log write after `step` (a step's name, or `place_order`).
pub fn log_written(step: &'static str, took: Duration) {
    metrics::histogram!(LOG_WRITE_DURATION, "step" => step).record(took);
}

pub fn recovery_claimed(sagas: usize) {
    counter!(RECOVERY_CLAIMS).increment(sagas as u64);
}

pub fn lease_lost() {
    counter!(LEASES_LOST).increment(1);
}

pub fn outbox_published(events: usize) {
    counter!(OUTBOX_PUBLISHED).increment(events as u64);
}

pub fn outbox_failed() {
    counter!(OUTBOX_FAILURES).increment(1);
}

/// Refreshes the gauges read from the database every few seconds, while
/// metrics are served (two indexed reads: unfinished sagas by state, and
/// the outbox's pending rows).
pub async fn refresh_gauges_forever(store: OrderStore) {
    if !commerce_platform::metrics::enabled() {
        return;
    }
    describe();
    let mut tick = tokio::time::interval(GAUGE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        refresh_gauges(&store).await;
    }
}

async fn refresh_gauges(store: &OrderStore) {
    match store.sagas_unfinished_counts().await {
        Ok(counts) => {
            for state in [
                SagaState::Running,
                SagaState::Compensating,
                SagaState::Stuck,
            ] {
                let n = counts
                    .iter()
                    .find_map(|(s, n)| (*s == state).then_some(*n))
                    .unwrap_or(0);
                gauge!(SAGAS_UNFINISHED, "state" => state_label(state)).set(n as f64);
            }
        }
        Err(error) => tracing::debug!(%error, "counting unfinished sagas for metrics failed"),
    }
    match store.outbox_backlog().await {
        Ok((pending, oldest)) => {
            gauge!(OUTBOX_PENDING).set(pending as f64);
            let age = oldest.map_or(0.0, |at| {
                (now() - at).num_milliseconds().max(0) as f64 / 1000.0
            });
            gauge!(OUTBOX_OLDEST_AGE).set(age);
        }
        Err(error) => tracing::debug!(%error, "reading the outbox backlog for metrics failed"),
    }
}
