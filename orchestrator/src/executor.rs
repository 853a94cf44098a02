//! The saga executor: runs any declared saga from its log. Given a
//! declaration ([`SagaProgram`]) and the saga's log, it decides the next
//! move, writes the STARTED event, makes the step's call, judges the answer
//! (success, refusal, retry, stuck), writes the outcome with the changes the
//! declaration asks for, and loops, until the saga finishes, gets stuck or
//! its lease is lost. It reaches the store and the participants only through
//! [`SagaStore`] and the declaration, so sagas run in process in tests.
//!
//! At-least-once: a step whose outcome was not logged runs again, and the
//! participants' barriers make that harmless. Every write is fenced by the
//! saga's lease.

use std::fmt::Debug;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::NaiveDateTime;
use commerce_platform::error::ServiceError;
use commerce_platform::time::now;
use commerce_platform::{SagaCall, SagaId};
use tracing::Instrument as _;

use crate::domain::saga::{
    Answer, Attempt, Direction, Lease, LogEntry, Move, Outcome, Rejection, RetryPolicy,
    STEP_RETRIES_EXHAUSTED, SagaParams, SagaState, SagaWrite, Step, StepDef, StepOutput, Verdict,
    judge, next_move, rejection,
};
use crate::fault::{Faults, Phase};
use crate::metrics;
use crate::participants::{Reply, StepError};

/// What a step's call may read: the saga, its parameters and the log (the
/// outputs of earlier steps).
#[derive(Debug, Clone, Copy)]
pub struct StepInput<'a> {
    /// The saga and the fence of the lease the call is made under
    /// (participants refuse a call older than one they have seen).
    pub call: &'a SagaCall,
    pub params: &'a SagaParams,
    pub steps: &'a [StepDef],
    pub log: &'a [LogEntry],
}

/// A saga declaration as the executor reads it.
pub trait SagaProgram: Send + Sync + 'static {
    /// A change the saga makes to what it is about, written with its log.
    type Change: Debug + Clone + Send + Sync;

    /// The steps of a saga with these parameters, in order.
    fn steps(&self, params: &SagaParams) -> Vec<StepDef>;
    /// Whether every step must succeed (no refusal turns the saga around).
    fn must_succeed(&self, params: &SagaParams) -> bool;
    /// Whether `step`'s success must be durable before the saga's next
    /// call: when a later call's input comes from its answer and a repeat
    /// of the step might answer differently (a read no barrier replays).
    fn checkpoint(&self, params: &SagaParams, step: Step) -> bool;
    /// Makes `step`'s call (an action or an undo).
    fn run(
        &self,
        step: Step,
        input: StepInput<'_>,
    ) -> impl Future<Output = Reply<StepOutput>> + Send;
    /// The changes logged with `step`'s success.
    fn changes(&self, params: &SagaParams, step: Step, output: &StepOutput) -> Vec<Self::Change>;
    /// The changes logged with the saga's end: completed, or compensated
    /// after `rejection`.
    fn finish(
        &self,
        params: &SagaParams,
        completed: bool,
        rejection: Option<&Rejection>,
    ) -> Vec<Self::Change>;
}

/// Who holds a saga now (for the lost-lease warning).
#[derive(Debug, Clone, Default)]
pub struct Holder {
    pub owner: String,
    pub fence: i64,
    pub state: &'static str,
}

/// The saga log as the executor reads and writes it.
pub trait SagaStore<C>: Send + Sync + 'static {
    /// A saga's parameters and log.
    fn saga_log(
        &self,
        saga: &SagaId,
    ) -> impl Future<Output = Result<(SagaParams, Vec<LogEntry>), ServiceError>> + Send;
    /// Writes progress if `lease` is still current; `Ok(false)` (nothing
    /// written) when it is not.
    fn saga_progress(
        &self,
        saga: &SagaId,
        params: &SagaParams,
        lease: &Lease,
        write: &SagaWrite<C>,
    ) -> impl Future<Output = Result<bool, ServiceError>> + Send;
    fn saga_holder(
        &self,
        saga: &SagaId,
    ) -> impl Future<Output = Result<Holder, ServiceError>> + Send;
}

/// How a drive ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driven {
    /// COMPLETED or COMPENSATED.
    Finished(SagaState),
    /// STUCK: handed back to the recovery loop's slow retry and to operators.
    Stuck,
    /// Another instance holds the saga now.
    LeaseLost,
}

pub struct Executor<S, G> {
    store: S,
    program: G,
    lease: Duration,
    retry: RetryPolicy,
    faults: Faults,
    /// Fenced writes refused since this process started: each one a saga
    /// this instance was driving and another instance (or an operator's
    /// takeover) had claimed meanwhile.
    leases_lost: AtomicU64,
}

impl<S, G> Executor<S, G>
where
    G: SagaProgram,
    S: SagaStore<G::Change>,
{
    pub fn new(store: S, program: G, lease: Duration, retry: RetryPolicy, faults: Faults) -> Self {
        Self {
            store,
            program,
            lease,
            retry,
            faults,
            leases_lost: AtomicU64::new(0),
        }
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    pub fn program(&self) -> &G {
        &self.program
    }

    /// How many sagas this instance lost to another holder since it started
    /// (each a refused fenced write; each also logged at WARN).
    pub fn leases_lost(&self) -> u64 {
        self.leases_lost.load(Ordering::Relaxed)
    }

    /// When a lease taken now (and held `extra` longer) expires.
    pub fn lease_until(&self, extra: Duration) -> NaiveDateTime {
        now() + chrono::Duration::from_std(self.lease + extra).unwrap_or(chrono::Duration::MAX)
    }

    /// Drives a saga from its stored log until it finishes, gets stuck or
    /// loses its lease.
    pub async fn drive(&self, saga_id: &SagaId, lease: Lease) -> Result<Driven, ServiceError> {
        let (params, log) = self.store.saga_log(saga_id).await?;
        self.drive_from(saga_id, lease, params, log).await
    }

    /// [`Self::drive`] from parameters and a log already in hand.
    ///
    /// The log is written only where recovery needs it (the step log
    /// section of the README): a step's events and the order's changes are
    /// kept in memory and written with the next checkpoint, which is a
    /// refusal that turns the saga around, a step the declaration marks as
    /// a checkpoint, a retry, STUCK, the end, or a lease renewal. A crash
    /// before a checkpoint replays the unwritten steps, and the
    /// participants' barriers answer them as the first time.
    pub async fn drive_from(
        &self,
        saga_id: &SagaId,
        lease: Lease,
        params: SagaParams,
        mut log: Vec<LogEntry>,
    ) -> Result<Driven, ServiceError> {
        let steps = self.program.steps(&params);
        let must_succeed_all = self.program.must_succeed(&params);
        let call = SagaCall {
            saga: saga_id.clone(),
            fence: lease.fence,
        };
        let mut unwritten = Unwritten::default();
        let mut written_at = Instant::now();
        let mut next = next_move(&steps, &log);
        loop {
            let Move::Run {
                step: index,
                direction,
                attempt,
                started: logged,
            } = next
            else {
                // Reached only when a saga was turned around without a step
                // outcome (an operator's forced compensation).
                let write = self.finish_write(&params, &log, next, unwritten);
                if !self.write(saga_id, &params, &lease, &write).await? {
                    return Ok(Driven::LeaseLost);
                }
                metrics::saga_finished(params.kind(), next.state());
                return Ok(Driven::Finished(next.state()));
            };
            let step = call_of(&steps, index, direction)?;
            if !logged {
                let entry = started(index, direction, attempt);
                log.push(entry.clone());
                unwritten.entries.push((step, entry));
            }
            if written_at.elapsed() >= self.lease / 2 {
                // A long run renews its lease before the next call.
                let write = unwritten.take(SagaWrite {
                    state: next.state(),
                    current_step: index,
                    attempts: attempt,
                    reason: None,
                    next_attempt_at: now(),
                    lease_until: Some(self.lease_until(Duration::ZERO)),
                    entries: Vec::new(),
                    changes: Vec::new(),
                });
                if !self.write(saga_id, &params, &lease, &write).await? {
                    return Ok(Driven::LeaseLost);
                }
                written_at = Instant::now();
            }

            self.faults.check(Phase::Before, step);
            let called = Instant::now();
            let input = StepInput {
                call: &call,
                params: &params,
                steps: &steps,
                log: &log,
            };
            let step_span = step_span(saga_id, step, direction, attempt);
            let answer = match self
                .program
                .run(step, input)
                .instrument(step_span.clone())
                .await
            {
                Ok(output) => Answer::Succeeded(output),
                Err(StepError::Rejected(rejection)) => Answer::Refused(rejection),
                Err(StepError::Transient(detail)) => Answer::Failed(detail),
                Err(StepError::Fenced(detail)) => {
                    // A participant saw a newer lease of this saga: another
                    // instance drives it now.
                    step_span.record("outcome", "FENCED");
                    metrics::step_called(step, direction, None, called.elapsed());
                    self.lease_lost(saga_id, &params, &lease, Some(step), &detail)
                        .await;
                    return Ok(Driven::LeaseLost);
                }
            };
            let call = called.elapsed();
            self.faults.check(Phase::After, step);

            let run = Attempt {
                step: index,
                direction,
                attempt,
                name: step.name(),
                must_succeed: must_succeed_all || direction == Direction::Compensate,
            };
            let (outcome, verdict) = judge(&self.retry, &log, run, answer, now());
            metrics::step_called(step, direction, Some(outcome.outcome), call);
            record_outcome(&step_span, &outcome);
            drop(step_span);
            self.trace(step, attempt, &outcome, verdict);
            if let Some(output) = &outcome.output {
                unwritten
                    .changes
                    .extend(self.program.changes(&params, step, output));
            }
            let reason = outcome.rejection.as_ref().map(|r| r.reason.clone());
            let succeeded = outcome.outcome == Outcome::Succeeded;
            log.push(outcome.clone());
            unwritten.entries.push((step, outcome));

            let (state, wait) = match verdict {
                Verdict::Proceed => (None, None),
                Verdict::Retry(wait) => {
                    metrics::step_retried(step, direction);
                    (Some(next_move(&steps, &log).state()), Some(wait))
                }
                Verdict::Stuck(wait) => (Some(SagaState::Stuck), Some(wait)),
            };
            if let (Some(state), Some(wait)) = (state, wait) {
                let stuck = state == SagaState::Stuck;
                let write = unwritten.take(SagaWrite {
                    state,
                    current_step: index,
                    attempts: attempt,
                    reason: None,
                    next_attempt_at: now() + chrono::Duration::from_std(wait).unwrap_or_default(),
                    lease_until: (!stuck).then(|| self.lease_until(wait)),
                    entries: Vec::new(),
                    changes: Vec::new(),
                });
                if !self.write(saga_id, &params, &lease, &write).await? {
                    return Ok(Driven::LeaseLost);
                }
                written_at = Instant::now();
                if stuck {
                    metrics::saga_stuck(params.kind());
                    return Ok(Driven::Stuck);
                }
                tokio::time::sleep(wait).await;
                next = next_move(&steps, &log);
                continue;
            }

            next = next_move(&steps, &log);
            let written = Instant::now();
            let write = match next {
                Move::Run {
                    step: next_index,
                    direction: next_direction,
                    attempt: next_attempt,
                    started: false,
                } => {
                    // Turning around, or a step whose answer a repeat might
                    // not give again: durable before the next call.
                    let checkpoint = next_direction != direction
                        || (succeeded && self.program.checkpoint(&params, step));
                    if !checkpoint {
                        continue;
                    }
                    unwritten.take(SagaWrite {
                        state: next.state(),
                        current_step: next_index,
                        attempts: next_attempt,
                        reason,
                        next_attempt_at: now(),
                        lease_until: Some(self.lease_until(Duration::ZERO)),
                        entries: Vec::new(),
                        changes: Vec::new(),
                    })
                }
                Move::Run { .. } => {
                    return Err(ServiceError::internal("the step log went backwards"));
                }
                terminal => {
                    self.finish_write(&params, &log, terminal, std::mem::take(&mut unwritten))
                }
            };
            if !self.write(saga_id, &params, &lease, &write).await? {
                return Ok(Driven::LeaseLost);
            }
            written_at = Instant::now();
            // With the call's time (above), where a step's time goes: the
            // benchmark breaks a saga's latency down from these.
            metrics::log_written(step.name(), written.elapsed());
            if matches!(next, Move::Completed | Move::Compensated) {
                metrics::saga_finished(params.kind(), next.state());
                tracing::info!(state = next.state().as_str(), "saga finished");
                return Ok(Driven::Finished(next.state()));
            }
        }
    }

    /// The write that ends a saga: its unwritten events and changes, then
    /// the declaration's final changes.
    fn finish_write(
        &self,
        params: &SagaParams,
        log: &[LogEntry],
        terminal: Move,
        mut unwritten: Unwritten<G::Change>,
    ) -> SagaWrite<G::Change> {
        let rejected = rejection(log);
        unwritten.changes.extend(self.program.finish(
            params,
            terminal == Move::Completed,
            rejected,
        ));
        SagaWrite {
            entries: unwritten.entries,
            state: terminal.state(),
            current_step: log.last().map_or(0, |e| e.step),
            attempts: 0,
            reason: rejected.map(|r| r.reason.clone()),
            next_attempt_at: now(),
            lease_until: None,
            changes: unwritten.changes,
        }
    }

    /// One fenced write of saga progress. `Ok(false)`: the lease is no
    /// longer ours, nothing was written, and the caller stops driving the
    /// saga.
    async fn write(
        &self,
        saga_id: &SagaId,
        params: &SagaParams,
        lease: &Lease,
        write: &SagaWrite<G::Change>,
    ) -> Result<bool, ServiceError> {
        if self
            .store
            .saga_progress(saga_id, params, lease, write)
            .await?
        {
            return Ok(true);
        }
        let step = write.entries.first().map(|(s, _)| *s);
        self.lease_lost(
            saga_id,
            params,
            lease,
            step,
            "fenced write refused, nothing written",
        )
        .await;
        Ok(false)
    }

    /// A lost lease (a refused fenced write, or a participant that saw a
    /// newer fence) is logged at WARN, with the saga and who holds it now,
    /// and counted, whether the drive came from a request or from recovery.
    async fn lease_lost(
        &self,
        saga_id: &SagaId,
        params: &SagaParams,
        lease: &Lease,
        step: Option<Step>,
        detail: &str,
    ) {
        let leases_lost = self.leases_lost.fetch_add(1, Ordering::Relaxed) + 1;
        metrics::lease_lost();
        // Best effort: who holds the saga now, for the operator.
        let holder = self.store.saga_holder(saga_id).await.unwrap_or_default();
        tracing::warn!(
            %saga_id,
            subject = params.subject(),
            step = step.map_or("", Step::name),
            owner = %lease.owner,
            fence = lease.fence,
            holder = %holder.owner,
            holder_fence = holder.fence,
            saga_state = holder.state,
            leases_lost,
            detail,
            "saga lease lost: no longer driving this saga"
        );
    }

    fn trace(&self, step: Step, attempt: u32, outcome: &LogEntry, verdict: Verdict) {
        let name = step.name();
        match (verdict, &outcome.rejection, &outcome.error) {
            (Verdict::Proceed, Some(r), _) if r.reason == STEP_RETRIES_EXHAUSTED => {
                tracing::warn!(step = name, attempt, message = %r.message, "forward retry budget spent: compensating");
            }
            (Verdict::Proceed, Some(r), _) => {
                tracing::info!(step = name, reason = %r.reason, message = %r.message, "step rejected: compensating");
            }
            (Verdict::Retry(_), _, Some(detail)) => {
                tracing::info!(step = name, attempt, %detail, "step failed: will retry");
            }
            (Verdict::Stuck(_), _, _) => {
                tracing::error!(step = name, attempt, "saga STUCK: needs an operator");
            }
            _ => {}
        }
    }
}

/// The span of one step's call, an action or an undo (its participant's
/// server span is a child): a saga's trace is its steps, each attempt
/// apart. The saga's own span (the driver's) is its parent.
fn step_span(saga_id: &SagaId, step: Step, direction: Direction, attempt: u32) -> tracing::Span {
    tracing::info_span!(
        "step",
        otel.name = step.name(),
        otel.status_code = tracing::field::Empty,
        saga_id = %saga_id,
        step = step.name(),
        direction = direction.as_str(),
        attempt = i64::from(attempt),
        outcome = tracing::field::Empty,
        reason = tracing::field::Empty,
        error = tracing::field::Empty,
    )
}

/// How the step's call ended, on its span: a failure (to retry) is an
/// error, a participant's refusal is an answer.
fn record_outcome(span: &tracing::Span, outcome: &LogEntry) {
    span.record("outcome", outcome.outcome.as_str());
    if let Some(rejection) = &outcome.rejection {
        span.record("reason", rejection.reason.as_str());
    }
    if let Some(error) = &outcome.error {
        span.record("error", error.as_str());
        span.record("otel.status_code", "error");
    }
}

/// The call step `index` makes in `direction`.
fn call_of(steps: &[StepDef], index: usize, direction: Direction) -> Result<Step, ServiceError> {
    steps
        .get(index)
        .and_then(|s| s.call(direction))
        .ok_or_else(|| ServiceError::internal("no such step in this saga (or no undo)"))
}

/// Events and order changes kept in memory until the next checkpoint.
struct Unwritten<C> {
    entries: Vec<(Step, LogEntry)>,
    changes: Vec<C>,
}

impl<C> Default for Unwritten<C> {
    fn default() -> Self {
        Self {
            entries: Vec::new(),
            changes: Vec::new(),
        }
    }
}

impl<C> Unwritten<C> {
    /// `write` (made with no events or changes) carrying everything kept
    /// so far, which is then no longer unwritten.
    fn take(&mut self, mut write: SagaWrite<C>) -> SagaWrite<C> {
        write.entries = std::mem::take(&mut self.entries);
        write.changes = std::mem::take(&mut self.changes);
        write
    }
}

fn started(step: usize, direction: Direction, attempt: u32) -> LogEntry {
    LogEntry::new(step, direction, attempt, Outcome::Started, now())
}
