//! The saga machinery as pure rules. A saga is an ordered list of steps,
//! each an action and (maybe) its undo ([`StepDef`]; the sagas themselves
//! are declared in `crate::sagas`); the append-only step log says what
//! happened, [`next_move`] reads it to decide what comes next, and
//! [`judge`] turns a step's answer into its log event and what follows. The
//! same functions drive a live saga and resume one after a crash.

use std::time::Duration;

use chrono::NaiveDateTime;
use commerce_platform::error::ServiceError;
use commerce_platform::{SagaId, UserId};
use rand::Rng;
use serde::{Deserialize, Serialize};

pub use super::order::reason::STEP_RETRIES_EXHAUSTED;
use super::order::{LineRequest, Pricing, SnapshotLine};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SagaKind {
    PlaceOrder,
    CancelOrder,
}

impl SagaKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PlaceOrder => "PLACE_ORDER",
            Self::CancelOrder => "CANCEL_ORDER",
        }
    }

    pub fn parse(stored: &str) -> Result<Self, ServiceError> {
        match stored {
            "PLACE_ORDER" => Ok(Self::PlaceOrder),
            "CANCEL_ORDER" => Ok(Self::CancelOrder),
            other => Err(ServiceError::internal(format!("unknown saga kind {other}"))),
        }
    }
}

/// Every step the orchestrator knows. The names are persisted in the step
/// log: never rename one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Step {
    /// Reserve the lines' stock, then quote the coupon on the snapshot prices.
    ReserveStock,
    DeductPoints,
    UseCoupon,
    /// Confirm the reservation; the order becomes CONFIRMED with the log write.
    ConfirmOrder,
    ReleaseStock,
    RefundPoints,
    RestoreCoupon,
    /// Cancellation done; the order becomes CANCELLED with the log write.
    FinishCancel,
}

impl Step {
    pub fn name(self) -> &'static str {
        match self {
            Self::ReserveStock => "reserve_stock",
            Self::DeductPoints => "deduct_points",
            Self::UseCoupon => "use_coupon",
            Self::ConfirmOrder => "confirm_order",
            Self::ReleaseStock => "release_stock",
            Self::RefundPoints => "refund_points",
            Self::RestoreCoupon => "restore_coupon",
            Self::FinishCancel => "finish_cancel",
        }
    }
}

/// One step of a saga: its action and the undo that reverses it, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepDef {
    pub action: Step,
    pub undo: Option<Step>,
}

impl StepDef {
    pub const fn new(action: Step, undo: Option<Step>) -> Self {
        Self { action, undo }
    }

    /// What runs in `direction`: the action, or the undo.
    pub fn call(&self, direction: Direction) -> Option<Step> {
        match direction {
            Direction::Forward => Some(self.action),
            Direction::Compensate => self.undo,
        }
    }
}

/// Inputs of a saga, fixed when it is created and stored with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SagaParams {
    PlaceOrder {
        order_id: String,
        user: UserId,
        lines: Vec<LineRequest>,
        user_coupon_id: Option<i64>,
    },
    CancelOrder {
        order_id: String,
        user: UserId,
        /// The saga that placed the order: its participants' barrier rows
        /// are keyed by it, so the undo calls carry it.
        placed_by: SagaId,
        user_coupon_id: Option<i64>,
    },
}

impl SagaParams {
    pub fn kind(&self) -> SagaKind {
        match self {
            Self::PlaceOrder { .. } => SagaKind::PlaceOrder,
            Self::CancelOrder { .. } => SagaKind::CancelOrder,
        }
    }

    pub fn order_id(&self) -> &str {
        match self {
            Self::PlaceOrder { order_id, .. } | Self::CancelOrder { order_id, .. } => order_id,
        }
    }

    /// The id of what the saga is about (its order), for logs.
    pub fn subject(&self) -> &str {
        self.order_id()
    }
}

/// What a step returned, kept in the log so later steps (and recovery) can
/// use it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "output", rename_all = "snake_case")]
pub enum StepOutput {
    Reserved {
        lines: Vec<SnapshotLine>,
        pricing: Pricing,
    },
    PointsDeducted {
        amount: i64,
    },
    CouponUsed {
        discount: i64,
    },
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Direction {
    Forward,
    Compensate,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Forward => "FORWARD",
            Self::Compensate => "COMPENSATE",
        }
    }

    pub fn parse(stored: &str) -> Result<Self, ServiceError> {
        match stored {
            "FORWARD" => Ok(Self::Forward),
            "COMPENSATE" => Ok(Self::Compensate),
            other => Err(ServiceError::internal(format!("unknown direction {other}"))),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Written before the participant is called.
    Started,
    Succeeded,
    /// A business rejection (forward only): the saga compensates.
    Rejected,
    /// Transient or unknown: the step is tried again.
    Failed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Started => "STARTED",
            Self::Succeeded => "SUCCEEDED",
            Self::Rejected => "REJECTED",
            Self::Failed => "FAILED",
        }
    }

    pub fn parse(stored: &str) -> Result<Self, ServiceError> {
        match stored {
            "STARTED" => Ok(Self::Started),
            "SUCCEEDED" => Ok(Self::Succeeded),
            "REJECTED" => Ok(Self::Rejected),
            "FAILED" => Ok(Self::Failed),
            other => Err(ServiceError::internal(format!("unknown outcome {other}"))),
        }
    }
}

/// A business refusal: the participant's `ErrorInfo` reason code and its
/// message (or one this service gives itself, as
/// `STEP_RETRIES_EXHAUSTED`). It travels typed from the participant's
/// answer to the order's `reason` / `reason_message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: String,
    pub message: String,
}

impl Rejection {
    pub fn new(reason: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            message: message.into(),
        }
    }

    /// A rejection whose code is all there is to say (an operator's forced
    /// compensation): the code is its own message, and it is stored alone.
    pub fn bare(reason: &str) -> Self {
        Self::new(reason, reason)
    }

    /// The step log's `error` text: `"REASON: message"`, or the bare code.
    pub fn to_stored(&self) -> String {
        if self.message == self.reason {
            self.reason.clone()
        } else {
            format!("{}: {}", self.reason, self.message)
        }
    }

    /// Reads [`Self::to_stored`]'s text back, as every row ever written
    /// holds it: the code before the first `:`, the message after it; a text
    /// without `:` is a bare code, its own message.
    pub fn from_stored(text: &str) -> Self {
        match text.split_once(':') {
            Some((reason, message)) => Self::new(reason.trim(), message.trim()),
            None => Self::bare(text),
        }
    }
}

/// One event of the step log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// Index into [`SagaParams::steps`].
    pub step: usize,
    pub direction: Direction,
    pub attempt: u32,
    pub outcome: Outcome,
    /// The step's output (JSON) when it succeeded.
    pub output: Option<StepOutput>,
    /// Why a REJECTED step was refused.
    pub rejection: Option<Rejection>,
    /// Why a FAILED attempt failed (status code and message).
    pub error: Option<String>,
    /// When the event was logged (`saga_log.created_at`): the forward retry
    /// budget counts from a step's first STARTED, so it survives a restart.
    pub at: NaiveDateTime,
}

impl LogEntry {
    /// An event without output, rejection or error (a STARTED, say).
    pub fn new(
        step: usize,
        direction: Direction,
        attempt: u32,
        outcome: Outcome,
        at: NaiveDateTime,
    ) -> Self {
        Self {
            step,
            direction,
            attempt,
            outcome,
            output: None,
            rejection: None,
            error: None,
            at,
        }
    }
}

/// Where a saga stands, as stored on its row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SagaState {
    Running,
    Compensating,
    Completed,
    Compensated,
    Stuck,
}

impl SagaState {
    pub const ALL: [SagaState; 5] = [
        Self::Running,
        Self::Compensating,
        Self::Completed,
        Self::Compensated,
        Self::Stuck,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "RUNNING",
            Self::Compensating => "COMPENSATING",
            Self::Completed => "COMPLETED",
            Self::Compensated => "COMPENSATED",
            Self::Stuck => "STUCK",
        }
    }

    pub fn parse(stored: &str) -> Result<Self, ServiceError> {
        Self::ALL
            .into_iter()
            .find(|s| s.as_str() == stored)
            .ok_or_else(|| ServiceError::internal(format!("unknown saga state {stored}")))
    }

    pub fn is_finished(self) -> bool {
        matches!(self, Self::Completed | Self::Compensated)
    }
}

/// The right to drive a saga: held by `owner` while `fence` is current.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub owner: String,
    pub fence: i64,
}

/// One fenced write of saga progress: log events, the saga's row, and the
/// changes the saga makes to what it is about (`C`), in order.
#[derive(Debug, Clone)]
pub struct SagaWrite<C> {
    pub entries: Vec<(Step, LogEntry)>,
    pub state: SagaState,
    pub current_step: usize,
    pub attempts: u32,
    /// A `None` reason keeps the stored one.
    pub reason: Option<String>,
    pub next_attempt_at: NaiveDateTime,
    /// Lease renewal; `None` gives the lease up.
    pub lease_until: Option<NaiveDateTime>,
    pub changes: Vec<C>,
}

/// What the saga does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Move {
    /// Run step `step`, attempt `attempt`; `started` when the log already
    /// holds its STARTED event (a crash came after it: run it again, the
    /// participant's barrier makes that harmless).
    Run {
        step: usize,
        direction: Direction,
        attempt: u32,
        started: bool,
    },
    Completed,
    Compensated,
}

impl Move {
    pub fn state(self) -> SagaState {
        match self {
            Self::Run {
                direction: Direction::Forward,
                ..
            } => SagaState::Running,
            Self::Run { .. } => SagaState::Compensating,
            Self::Completed => SagaState::Completed,
            Self::Compensated => SagaState::Compensated,
        }
    }
}

/// Reads the log and decides the next move.
///
/// Forward: the first step without a success. Once any forward step is
/// rejected, every step that was ever started is compensated, last first:
/// a started action may have applied even if its answer was lost, and a
/// compensation of one that never applied is a no-op that also blocks a late
/// arrival of the action at the participant.
pub fn next_move(steps: &[StepDef], log: &[LogEntry]) -> Move {
    let has = |step: usize, direction: Direction, outcome: Outcome| {
        log.iter()
            .any(|e| e.step == step && e.direction == direction && e.outcome == outcome)
    };
    let run = |step: usize, direction: Direction| {
        let attempts = log
            .iter()
            .filter(|e| e.step == step && e.direction == direction)
            .map(|e| e.attempt)
            .max()
            .unwrap_or(0);
        let finished = log.iter().any(|e| {
            e.step == step
                && e.direction == direction
                && e.attempt == attempts
                && e.outcome != Outcome::Started
        });
        if attempts > 0 && !finished {
            Move::Run {
                step,
                direction,
                attempt: attempts,
                started: true,
            }
        } else {
            Move::Run {
                step,
                direction,
                attempt: attempts + 1,
                started: false,
            }
        }
    };

    let compensating = log
        .iter()
        .any(|e| e.direction == Direction::Forward && e.outcome == Outcome::Rejected);
    if !compensating {
        return (0..steps.len())
            .find(|&s| !has(s, Direction::Forward, Outcome::Succeeded))
            .map_or(Move::Completed, |s| run(s, Direction::Forward));
    }
    (0..steps.len())
        .rev()
        .filter(|&s| steps[s].undo.is_some())
        .filter(|&s| has(s, Direction::Forward, Outcome::Started))
        .find(|&s| !has(s, Direction::Compensate, Outcome::Succeeded))
        .map_or(Move::Compensated, |s| run(s, Direction::Compensate))
}

/// The output a forward step left in the log.
pub fn output_of(log: &[LogEntry], step: usize) -> Option<&StepOutput> {
    log.iter()
        .find(|e| {
            e.step == step && e.direction == Direction::Forward && e.outcome == Outcome::Succeeded
        })
        .and_then(|e| e.output.as_ref())
}

/// The rejection that turned the saga around, if any.
pub fn rejection(log: &[LogEntry]) -> Option<&Rejection> {
    log.iter()
        .find(|e| e.direction == Direction::Forward && e.outcome == Outcome::Rejected)
        .and_then(|e| e.rejection.as_ref())
}

/// When `step` was first STARTED in `direction`, as logged.
pub fn first_started(log: &[LogEntry], step: usize, direction: Direction) -> Option<NaiveDateTime> {
    log.iter()
        .filter(|e| e.step == step && e.direction == direction && e.outcome == Outcome::Started)
        .map(|e| e.at)
        .min()
}

/// What follows a transient failure of a forward step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardRetry {
    /// Try again after this backoff.
    After(Duration),
    /// The step has been retried for its whole budget: compensate.
    Exhausted { elapsed: Duration },
}

/// Retry bounds and backoff.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub base: Duration,
    pub max: Duration,
    /// How long a forward step is retried, counted from its first STARTED
    /// in the step log, before the saga compensates.
    pub forward_budget: Duration,
    /// Attempts of a step that must succeed (a compensation, a cancel step)
    /// before the saga is marked STUCK for operators.
    pub stuck_after: u32,
    /// How often a STUCK saga is still retried.
    pub stuck_retry: Duration,
}

impl RetryPolicy {
    /// Exponential backoff with full jitter: uniform in [base, base * 2^(n-1)],
    /// capped.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
            .min(self.max);
        let low = self.base.min(exp);
        let spread = exp.saturating_sub(low).as_millis() as u64;
        low + Duration::from_millis(rand::rng().random_range(0..=spread))
    }

    /// After attempt `attempt` of a forward step first STARTED at
    /// `first_started` failed at `now`: wait and try again while the budget
    /// lasts (the last wait ends with the budget, so one attempt is made at
    /// its very end), then give up. A clock that went backwards counts as no
    /// time spent.
    pub fn forward_retry(
        &self,
        attempt: u32,
        first_started: NaiveDateTime,
        now: NaiveDateTime,
    ) -> ForwardRetry {
        let elapsed = (now - first_started).to_std().unwrap_or_default();
        match self.forward_budget.checked_sub(elapsed) {
            Some(left) if !left.is_zero() => ForwardRetry::After(self.backoff(attempt).min(left)),
            _ => ForwardRetry::Exhausted { elapsed },
        }
    }
}

/// A participant's answer to one attempt, as the saga sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Succeeded(StepOutput),
    /// A business refusal.
    Refused(Rejection),
    /// Transient or unknown.
    Failed(String),
}

/// What follows an attempt's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Log the outcome and go on to the log's next move.
    Proceed,
    /// Log the failure and try again after this backoff.
    Retry(Duration),
    /// Log the failure: the saga is STUCK (tried again after this long, and
    /// by operators).
    Stuck(Duration),
}

/// One attempt as the executor ran it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    pub step: usize,
    pub direction: Direction,
    pub attempt: u32,
    /// The name of what ran (for messages).
    pub name: &'static str,
    /// Whether the step must succeed: an undo, or any step of a saga that
    /// cannot turn around. Its refusals are retried like failures.
    pub must_succeed: bool,
}

/// The log event an attempt's answer makes, and what follows it: a success
/// or a refusal is logged and the saga goes on (a refusal turns it around);
/// a failure is retried, a forward step's for its time budget (counted from
/// its first STARTED in `log`, then it is refused as
/// `STEP_RETRIES_EXHAUSTED`), a step that must succeed until
/// `stuck_after` attempts, then the saga is STUCK.
pub fn judge(
    policy: &RetryPolicy,
    log: &[LogEntry],
    run: Attempt,
    answer: Answer,
    now: NaiveDateTime,
) -> (LogEntry, Verdict) {
    let mut event = LogEntry::new(
        run.step,
        run.direction,
        run.attempt,
        Outcome::Succeeded,
        now,
    );
    let detail = match answer {
        Answer::Succeeded(output) => {
            event.output = Some(output);
            return (event, Verdict::Proceed);
        }
        Answer::Refused(rejection) if !run.must_succeed => {
            event.outcome = Outcome::Rejected;
            event.rejection = Some(rejection);
            return (event, Verdict::Proceed);
        }
        Answer::Refused(Rejection { reason, message }) => format!("{reason}: {message}"),
        Answer::Failed(detail) => detail,
    };
    let attempt = run.attempt;
    if run.must_succeed {
        event.outcome = Outcome::Failed;
        event.error = Some(detail);
        let verdict = if attempt >= policy.stuck_after {
            Verdict::Stuck(policy.stuck_retry)
        } else {
            Verdict::Retry(policy.backoff(attempt))
        };
        return (event, verdict);
    }
    let since = first_started(log, run.step, run.direction).unwrap_or(now);
    match policy.forward_retry(attempt, since, now) {
        ForwardRetry::Exhausted { elapsed } => {
            event.outcome = Outcome::Rejected;
            event.rejection = Some(Rejection::new(
                STEP_RETRIES_EXHAUSTED,
                format!(
                    "{} kept failing for {} s (attempts: {attempt}); last: {detail}",
                    run.name,
                    elapsed.as_secs(),
                ),
            ));
            (event, Verdict::Proceed)
        }
        ForwardRetry::After(wait) => {
            event.outcome = Outcome::Failed;
            event.error = Some(detail);
            (event, Verdict::Retry(wait))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STEPS: [StepDef; 4] = [
        StepDef::new(Step::ReserveStock, Some(Step::ReleaseStock)),
        StepDef::new(Step::DeductPoints, Some(Step::RefundPoints)),
        StepDef::new(Step::UseCoupon, Some(Step::RestoreCoupon)),
        StepDef::new(Step::ConfirmOrder, None),
    ];

    fn entry(step: usize, direction: Direction, attempt: u32, outcome: Outcome) -> LogEntry {
        LogEntry::new(step, direction, attempt, outcome, NaiveDateTime::default())
    }

    use Direction::{Compensate as C, Forward as F};
    use Outcome::{Failed, Rejected, Started, Succeeded};

    #[test]
    fn rejections_read_back_as_stored_old_rows_included() {
        let typed = Rejection::new("POINT_INSUFFICIENT", "balance 3 < 7: short");
        assert_eq!(
            typed.to_stored(),
            "POINT_INSUFFICIENT: balance 3 < 7: short"
        );
        assert_eq!(Rejection::from_stored(&typed.to_stored()), typed);
        let bare = Rejection::bare("OPERATOR_ABORTED");
        assert_eq!(bare.to_stored(), "OPERATOR_ABORTED");
        assert_eq!(Rejection::from_stored("OPERATOR_ABORTED"), bare);
        assert_eq!(
            Rejection::from_stored("COUPON_ALREADY_USED:  used "),
            Rejection::new("COUPON_ALREADY_USED", "used")
        );
    }

    #[test]
    fn fresh_saga_starts_with_the_first_step() {
        assert_eq!(
            next_move(&STEPS, &[]),
            Move::Run {
                step: 0,
                direction: F,
                attempt: 1,
                started: false
            }
        );
    }

    #[test]
    fn started_without_outcome_is_run_again_as_the_same_attempt() {
        let log = [
            entry(0, F, 1, Started),
            entry(0, F, 1, Succeeded),
            entry(1, F, 1, Started),
        ];
        assert_eq!(
            next_move(&STEPS, &log),
            Move::Run {
                step: 1,
                direction: F,
                attempt: 1,
                started: true
            }
        );
    }

    #[test]
    fn failed_attempt_is_followed_by_a_new_attempt() {
        let log = [entry(0, F, 1, Started), entry(0, F, 1, Failed)];
        assert_eq!(
            next_move(&STEPS, &log),
            Move::Run {
                step: 0,
                direction: F,
                attempt: 2,
                started: false
            }
        );
    }

    #[test]
    fn all_succeeded_is_completed() {
        let log: Vec<_> = (0..4)
            .flat_map(|s| [entry(s, F, 1, Started), entry(s, F, 1, Succeeded)])
            .collect();
        assert_eq!(next_move(&STEPS, &log), Move::Completed);
    }

    #[test]
    fn rejection_compensates_started_steps_in_reverse() {
        let mut log = vec![
            entry(0, F, 1, Started),
            entry(0, F, 1, Succeeded),
            entry(1, F, 1, Started),
            entry(1, F, 1, Succeeded),
            entry(2, F, 1, Started),
            entry(2, F, 1, Rejected),
        ];
        // The rejected step itself is compensated first (a no-op that blocks
        // a late duplicate at the participant).
        assert_eq!(
            next_move(&STEPS, &log),
            Move::Run {
                step: 2,
                direction: C,
                attempt: 1,
                started: false
            }
        );
        log.push(entry(2, C, 1, Started));
        log.push(entry(2, C, 1, Succeeded));
        assert_eq!(
            next_move(&STEPS, &log),
            Move::Run {
                step: 1,
                direction: C,
                attempt: 1,
                started: false
            }
        );
        log.push(entry(1, C, 1, Started));
        log.push(entry(1, C, 1, Failed));
        assert_eq!(
            next_move(&STEPS, &log),
            Move::Run {
                step: 1,
                direction: C,
                attempt: 2,
                started: false
            }
        );
        log.push(entry(1, C, 2, Started));
        log.push(entry(1, C, 2, Succeeded));
        log.push(entry(0, C, 1, Started));
        log.push(entry(0, C, 1, Succeeded));
        assert_eq!(next_move(&STEPS, &log), Move::Compensated);
    }

    #[test]
    fn steps_never_started_are_not_compensated() {
        let log = [entry(0, F, 1, Started), entry(0, F, 1, Rejected)];
        assert_eq!(
            next_move(&STEPS, &log),
            Move::Run {
                step: 0,
                direction: C,
                attempt: 1,
                started: false
            }
        );
        let log = [
            entry(0, F, 1, Started),
            entry(0, F, 1, Rejected),
            entry(0, C, 1, Started),
            entry(0, C, 1, Succeeded),
        ];
        assert_eq!(next_move(&STEPS, &log), Move::Compensated);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let policy = RetryPolicy {
            base: Duration::from_millis(10),
            max: Duration::from_millis(100),
            forward_budget: Duration::from_secs(60),
            stuck_after: 5,
            stuck_retry: Duration::from_secs(60),
        };
        for attempt in 1..40 {
            let d = policy.backoff(attempt);
            assert!(
                d >= Duration::from_millis(10) && d <= Duration::from_millis(100),
                "{d:?}"
            );
        }
    }

    #[test]
    fn forward_retries_are_bounded_by_time_not_attempts() {
        let policy = RetryPolicy {
            base: Duration::from_millis(100),
            max: Duration::from_secs(5),
            forward_budget: Duration::from_secs(300),
            stuck_after: 5,
            stuck_retry: Duration::from_secs(60),
        };
        let t0 = NaiveDateTime::default();
        let after = |ms: i64| t0 + chrono::Duration::milliseconds(ms);
        // Many attempts, still within the budget: retried, backoff capped.
        for attempt in [1, 12, 400, u32::MAX] {
            match policy.forward_retry(attempt, t0, after(15_000)) {
                ForwardRetry::After(d) => assert!(d <= Duration::from_secs(5), "{d:?}"),
                other => panic!("attempt {attempt}: {other:?}"),
            }
        }
        // The last wait ends with the budget.
        assert_eq!(
            policy.forward_retry(30, t0, after(299_990)),
            ForwardRetry::After(Duration::from_millis(10))
        );
        // Past it: compensate.
        assert_eq!(
            policy.forward_retry(2, t0, after(300_000)),
            ForwardRetry::Exhausted {
                elapsed: Duration::from_secs(300)
            }
        );
        // A clock that went backwards spends nothing.
        assert!(matches!(
            policy.forward_retry(1, after(1_000), t0),
            ForwardRetry::After(_)
        ));
    }

    #[test]
    fn the_budget_counts_from_the_first_started_of_the_step() {
        let at = |ms: i64, mut e: LogEntry| {
            e.at = NaiveDateTime::default() + chrono::Duration::milliseconds(ms);
            e
        };
        let log = [
            at(0, entry(0, F, 1, Started)),
            at(5, entry(0, F, 1, Succeeded)),
            at(10, entry(1, F, 1, Started)),
            at(20, entry(1, F, 1, Failed)),
            at(900, entry(1, F, 2, Started)),
            at(950, entry(1, F, 2, Failed)),
        ];
        assert_eq!(
            first_started(&log, 1, F),
            Some(NaiveDateTime::default() + chrono::Duration::milliseconds(10))
        );
        assert_eq!(first_started(&log, 2, F), None);
        assert_eq!(first_started(&log, 1, C), None);
    }

    fn policy() -> RetryPolicy {
        RetryPolicy {
            base: Duration::from_millis(10),
            max: Duration::from_millis(100),
            forward_budget: Duration::from_secs(60),
            stuck_after: 3,
            stuck_retry: Duration::from_secs(30),
        }
    }

    fn attempt(direction: Direction, attempt: u32, must_succeed: bool) -> Attempt {
        Attempt {
            step: 1,
            direction,
            attempt,
            name: "deduct_points",
            must_succeed,
        }
    }

    #[test]
    fn a_refusal_turns_the_saga_around_unless_the_step_must_succeed() {
        let t0 = NaiveDateTime::default();
        let refusal = || Answer::Refused(Rejection::new("POINT_INSUFFICIENT", "short"));
        let (event, verdict) = judge(&policy(), &[], attempt(F, 1, false), refusal(), t0);
        assert_eq!((event.outcome, verdict), (Rejected, Verdict::Proceed));
        assert_eq!(event.rejection.unwrap().reason, "POINT_INSUFFICIENT");

        let (event, verdict) = judge(&policy(), &[], attempt(C, 1, true), refusal(), t0);
        assert_eq!(event.outcome, Failed);
        assert_eq!(event.error.as_deref(), Some("POINT_INSUFFICIENT: short"));
        assert!(matches!(verdict, Verdict::Retry(_)));
        let (_, verdict) = judge(&policy(), &[], attempt(C, 3, true), refusal(), t0);
        assert_eq!(verdict, Verdict::Stuck(Duration::from_secs(30)));
    }

    #[test]
    fn a_failing_forward_step_is_refused_once_its_budget_is_spent() {
        let t0 = NaiveDateTime::default();
        let log = [entry(1, F, 1, Started)];
        let failed = || Answer::Failed("Unavailable: down".into());
        let (event, verdict) = judge(&policy(), &log, attempt(F, 1, false), failed(), t0);
        assert_eq!(event.outcome, Failed);
        assert!(matches!(verdict, Verdict::Retry(_)));
        let later = t0 + chrono::Duration::seconds(61);
        let (event, verdict) = judge(&policy(), &log, attempt(F, 9, false), failed(), later);
        assert_eq!((event.outcome, verdict), (Rejected, Verdict::Proceed));
        assert_eq!(
            event.rejection.unwrap().to_stored(),
            "STEP_RETRIES_EXHAUSTED: deduct_points kept failing for 61 s (attempts: 9); \
             last: Unavailable: down"
        );
    }

    #[test]
    fn a_success_carries_its_output() {
        let answer = Answer::Succeeded(StepOutput::PointsDeducted { amount: 5 });
        let (event, verdict) = judge(
            &policy(),
            &[],
            attempt(F, 2, false),
            answer,
            NaiveDateTime::default(),
        );
        assert_eq!((event.outcome, verdict), (Succeeded, Verdict::Proceed));
        assert_eq!(event.output, Some(StepOutput::PointsDeducted { amount: 5 }));
        assert_eq!((event.step, event.attempt), (1, 2));
    }
}
