//! The saga engine: drives a saga step by step, writing the step log before
//! and after every participant call, retrying transient failures with
//! backoff, compensating after rejections, and resuming unfinished sagas
//! (its own after a restart, or any whose lease expired) from their logs.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::NaiveDateTime;
use commerce_platform::error::ServiceError;
use commerce_platform::time::now;
use commerce_platform::{SagaId, UserId};
use tokio::sync::Semaphore;

use crate::domain::order::{OrderEvent, OrderState, PlaceOrder, reason};
use crate::domain::saga::{
    Direction, ForwardRetry, LogEntry, Move, Outcome, RetryPolicy, SagaKind, SagaParams, SagaState,
    Step, StepOutput, first_started, next_move, rejection,
};
use crate::fault::{Faults, Phase};
use crate::participants::{Participants, StepError};
use crate::store::{Lease, NewSaga, OrderChange, OrderRecord, OrderStore, Placed, SagaWrite};

/// Target of the per-step timing events (enable with
/// `RUST_LOG=info,saga_timing=debug`).
pub const TIMING_TARGET: &str = "saga_timing";

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

/// Settings of the engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// This instance's name in leases; stable across restarts so a restarted
    /// instance resumes its own sagas at once.
    pub owner: String,
    pub lease: Duration,
    pub retry: RetryPolicy,
    /// How often unfinished sagas are looked for.
    pub recovery_interval: Duration,
    /// Sagas claimed per look.
    pub recovery_batch: i64,
    /// Sagas driven at once by the recovery loop.
    pub max_recovering: usize,
}

pub struct Engine {
    store: OrderStore,
    participants: Participants,
    config: EngineConfig,
    faults: Faults,
    /// Fenced writes refused since this process started: each one a saga
    /// this instance was driving and another instance (or an operator's
    /// takeover) had claimed meanwhile.
    leases_lost: AtomicU64,
}

impl Engine {
    pub fn new(
        store: OrderStore,
        participants: Participants,
        config: EngineConfig,
        faults: Faults,
    ) -> Self {
        Self {
            store,
            participants,
            config,
            faults,
            leases_lost: AtomicU64::new(0),
        }
    }

    pub fn store(&self) -> &OrderStore {
        &self.store
    }

    /// How many sagas this instance lost to another holder since it started
    /// (each a refused fenced write; each also logged at WARN).
    pub fn leases_lost(&self) -> u64 {
        self.leases_lost.load(Ordering::Relaxed)
    }

    /// One fenced write of saga progress. `Ok(false)`: the lease is no
    /// longer ours, nothing was written, and the caller stops driving the
    /// saga; that is logged (WARN, with the saga and who holds it now) and
    /// counted here, whether the drive came from a request or from recovery.
    async fn write(
        &self,
        saga_id: &SagaId,
        params: &SagaParams,
        lease: &Lease,
        write: &SagaWrite,
    ) -> Result<bool, ServiceError> {
        if self
            .store
            .saga_write(saga_id, params.order_id(), lease, write)
            .await?
        {
            return Ok(true);
        }
        let leases_lost = self.leases_lost.fetch_add(1, Ordering::Relaxed) + 1;
        // Best effort: who holds the saga now, for the operator.
        let (holder, holder_fence, saga_state) = match self.store.saga_row(saga_id).await {
            Ok(row) => (row.lease_owner.unwrap_or_default(), row.fence, row.state),
            Err(_) => (String::new(), 0, String::new()),
        };
        let step = write.entries.first().map_or("", |(step, _)| step.name());
        tracing::warn!(
            %saga_id,
            order_id = params.order_id(),
            step,
            owner = %lease.owner,
            fence = lease.fence,
            holder = %holder,
            holder_fence,
            saga_state = %saga_state,
            leases_lost,
            "saga lease lost: fenced write refused, nothing written; no longer driving this saga"
        );
        Ok(false)
    }

    fn lease_until(&self, extra: Duration) -> NaiveDateTime {
        now()
            + chrono::Duration::from_std(self.config.lease + extra).unwrap_or(chrono::Duration::MAX)
    }

    /// Records the order and its saga, drives it, and answers within `wait`
    /// with the order as it then stands (PENDING when the saga goes on).
    pub async fn place_order(
        self: &Arc<Self>,
        request: PlaceOrder,
        wait: Duration,
    ) -> Result<OrderRecord, ServiceError> {
        let order_id = uuid::Uuid::now_v7().hyphenated().to_string();
        let saga_id = SagaId::generate();
        let params = SagaParams::PlaceOrder {
            order_id: order_id.clone(),
            user: request.user.clone(),
            lines: request.lines.clone(),
            user_coupon_id: request.user_coupon_id,
        };
        let placing = Instant::now();
        let placed = self
            .store
            .order_place(
                &order_id,
                &request,
                &NewSaga {
                    id: &saga_id,
                    params: &params,
                    owner: &self.config.owner,
                    lease_until: self.lease_until(Duration::ZERO),
                },
            )
            .await?;
        tracing::debug!(
            target: TIMING_TARGET,
            step = "place_order",
            call_us = 0u64,
            write_us = placing.elapsed().as_micros() as u64,
        );
        match placed {
            Placed::Created(lease) => {
                let start = started_log(params);
                self.drive_and_wait(saga_id, lease, Some(start), wait).await;
                self.store.order_get(&order_id).await
            }
            Placed::Existing(record) => self.settled(*record, wait).await,
        }
    }

    /// Starts cancelling a CONFIRMED order; answers like [`Self::place_order`].
    pub async fn cancel_order(
        self: &Arc<Self>,
        order_id: &str,
        user: &UserId,
        wait: Duration,
    ) -> Result<OrderRecord, ServiceError> {
        let saga_id = SagaId::generate();
        let (record, lease) = self
            .store
            .order_cancel_begin(
                order_id,
                user,
                &saga_id,
                &self.config.owner,
                self.lease_until(Duration::ZERO),
            )
            .await?;
        match lease {
            Some(lease) => {
                self.drive_and_wait(saga_id, lease, None, wait).await;
                self.store.order_get(order_id).await
            }
            None => self.settled(record, wait).await,
        }
    }

    /// Operator: takes the saga over now (optionally forcing compensation)
    /// and drives it in the background.
    pub async fn take_over(
        self: &Arc<Self>,
        saga_id: &SagaId,
        force_compensation: bool,
    ) -> Result<(), ServiceError> {
        let lease = self
            .store
            .saga_take_over(
                saga_id,
                &self.config.owner,
                self.lease_until(Duration::ZERO),
                force_compensation,
            )
            .await?;
        self.spawn_drive(saga_id.clone(), lease, None);
        Ok(())
    }

    /// Drives in the background; waits for the end at most `wait`.
    async fn drive_and_wait(
        self: &Arc<Self>,
        saga_id: SagaId,
        lease: Lease,
        start: Option<(SagaParams, Vec<LogEntry>)>,
        wait: Duration,
    ) {
        let handle = self.spawn_drive(saga_id, lease, start);
        // On timeout the drive goes on: the caller gets PENDING.
        let _ = tokio::time::timeout(wait, handle).await;
    }

    /// Drives a saga on its own task; `start` is its inputs and log when the
    /// caller just wrote them (saves reading them back).
    fn spawn_drive(
        self: &Arc<Self>,
        saga_id: SagaId,
        lease: Lease,
        start: Option<(SagaParams, Vec<LogEntry>)>,
    ) -> tokio::task::JoinHandle<()> {
        let engine = Arc::clone(self);
        tokio::spawn(async move {
            let driven = match start {
                Some((params, log)) => engine.drive_from(&saga_id, lease, params, log).await,
                None => engine.drive(&saga_id, lease).await,
            };
            match driven {
                Ok(driven) => tracing::debug!(%saga_id, ?driven, "saga drive ended"),
                // The lease expires and recovery resumes the saga.
                Err(error) => tracing::warn!(%saga_id, %error, "saga drive interrupted"),
            }
        })
    }

    /// Waits (bounded by `wait`) for a saga driven elsewhere to settle the
    /// order, by reading it again with growing pauses.
    async fn settled(
        &self,
        mut record: OrderRecord,
        wait: Duration,
    ) -> Result<OrderRecord, ServiceError> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut pause = Duration::from_millis(10);
        while matches!(
            record.state()?,
            OrderState::Pending | OrderState::Cancelling
        ) && tokio::time::Instant::now() + pause < deadline
        {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(200));
            record = self.store.order_get(&record.order.id).await?;
        }
        Ok(record)
    }

    /// Drives a saga from its log until it finishes, gets stuck or loses its
    /// lease. At-least-once: a step whose outcome was not logged runs again,
    /// and the participants' barriers make that harmless.
    pub async fn drive(&self, saga_id: &SagaId, lease: Lease) -> Result<Driven, ServiceError> {
        let record = self.store.saga_load(saga_id).await?;
        self.drive_from(saga_id, lease, record.params, record.log)
            .await
    }

    /// [`Self::drive`] from inputs and a log already in hand.
    #[tracing::instrument(skip(self, lease, params, log), fields(fence = lease.fence))]
    async fn drive_from(
        &self,
        saga_id: &SagaId,
        lease: Lease,
        params: SagaParams,
        mut log: Vec<LogEntry>,
    ) -> Result<Driven, ServiceError> {
        let steps = params.steps();
        let must_succeed_all = params.kind() == SagaKind::CancelOrder;
        loop {
            let (index, direction, attempt, started) = match next_move(&steps, &log) {
                Move::Run {
                    step,
                    direction,
                    attempt,
                    started,
                } => (step, direction, attempt, started),
                terminal => {
                    // Reached only when a saga was turned around without a
                    // step outcome (an operator's forced compensation).
                    let write = self.finish_write(&params, &log, terminal, Vec::new());
                    if !self.write(saga_id, &params, &lease, &write).await? {
                        return Ok(Driven::LeaseLost);
                    }
                    return Ok(Driven::Finished(terminal.state()));
                }
            };
            let step = match direction {
                Direction::Forward => steps[index],
                Direction::Compensate => steps[index]
                    .compensation()
                    .ok_or_else(|| ServiceError::internal("compensating a step without undo"))?,
            };
            if !started {
                let entry = entry(index, direction, attempt, Outcome::Started);
                let write = SagaWrite {
                    entries: vec![(step, entry.clone())],
                    state: next_move(&steps, &log).state(),
                    current_step: index,
                    attempts: attempt,
                    reason: None,
                    next_attempt_at: now(),
                    lease_until: Some(self.lease_until(Duration::ZERO)),
                    order: Vec::new(),
                };
                if !self.write(saga_id, &params, &lease, &write).await? {
                    return Ok(Driven::LeaseLost);
                }
                log.push(entry);
            }

            self.faults.check(Phase::Before, step);
            let called = Instant::now();
            let result = self
                .participants
                .run(saga_id, &params, &steps, &log, step)
                .await;
            let call = called.elapsed();
            self.faults.check(Phase::After, step);

            let must_succeed = must_succeed_all || direction == Direction::Compensate;
            let mut outcome = entry(index, direction, attempt, Outcome::Succeeded);
            let mut order = Vec::new();
            let mut backoff = None;
            let mut reason_code = None;
            match result {
                Ok(output) => {
                    // The order's amounts follow what the participants did:
                    // the price once reserved, the points once deducted, and
                    // none once refunded (the REJECTED transition also
                    // clears the discount).
                    match (&output, step, params.kind()) {
                        (StepOutput::Reserved { lines, pricing }, _, _) => {
                            order.push(OrderChange::Priced {
                                lines: lines.clone(),
                                pricing: *pricing,
                            });
                        }
                        (StepOutput::PointsDeducted { amount }, _, SagaKind::PlaceOrder) => {
                            order.push(OrderChange::PointsPaid(*amount));
                        }
                        (_, Step::RefundPoints, SagaKind::PlaceOrder) => {
                            order.push(OrderChange::PointsPaid(0));
                        }
                        _ => {}
                    }
                    outcome.output = Some(output);
                }
                Err(StepError::Rejected { reason, message }) if !must_succeed => {
                    tracing::info!(step = step.name(), %reason, %message, "step rejected: compensating");
                    outcome.outcome = Outcome::Rejected;
                    outcome.error = Some(format!("{reason}: {message}"));
                    reason_code = Some(reason);
                }
                Err(error) => {
                    let detail = match error {
                        StepError::Rejected { reason, message } => format!("{reason}: {message}"),
                        StepError::Transient(detail) => detail,
                    };
                    // A step that must succeed is retried however long it
                    // takes (STUCK marks it for operators); a forward step
                    // for its time budget, counted from its first STARTED.
                    let retry = if must_succeed {
                        ForwardRetry::After(self.config.retry.backoff(attempt))
                    } else {
                        let since = first_started(&log, index, direction).unwrap_or_else(now);
                        self.config.retry.forward_retry(attempt, since, now())
                    };
                    match retry {
                        ForwardRetry::Exhausted { elapsed } => {
                            tracing::warn!(
                                step = step.name(),
                                attempt,
                                elapsed_ms = elapsed.as_millis() as u64,
                                budget_ms = self.config.retry.forward_budget.as_millis() as u64,
                                %detail,
                                "forward retry budget spent: compensating"
                            );
                            outcome.outcome = Outcome::Rejected;
                            outcome.error = Some(format!(
                                "{}: {} kept failing for {} s (attempts: {attempt}); last: {detail}",
                                reason::STEP_RETRIES_EXHAUSTED,
                                step.name(),
                                elapsed.as_secs(),
                            ));
                            reason_code = Some(reason::STEP_RETRIES_EXHAUSTED.to_owned());
                        }
                        ForwardRetry::After(wait) => {
                            tracing::info!(step = step.name(), attempt, %detail, "step failed: will retry");
                            outcome.outcome = Outcome::Failed;
                            outcome.error = Some(detail);
                            backoff = Some(wait);
                        }
                    }
                }
            }
            log.push(outcome.clone());
            let mut entries = vec![(step, outcome)];
            let next = next_move(&steps, &log);

            if let Some(backoff) = backoff {
                let stuck = must_succeed && attempt >= self.config.retry.stuck_after;
                let (state, wait, lease_until) = if stuck {
                    let wait = self.config.retry.stuck_retry;
                    tracing::error!(step = step.name(), attempt, "saga STUCK: needs an operator");
                    (SagaState::Stuck, wait, None)
                } else {
                    (next.state(), backoff, Some(self.lease_until(backoff)))
                };
                let write = SagaWrite {
                    entries,
                    state,
                    current_step: index,
                    attempts: attempt,
                    reason: None,
                    next_attempt_at: now() + chrono::Duration::from_std(wait).unwrap_or_default(),
                    lease_until,
                    order,
                };
                if !self.write(saga_id, &params, &lease, &write).await? {
                    return Ok(Driven::LeaseLost);
                }
                if stuck {
                    return Ok(Driven::Stuck);
                }
                tokio::time::sleep(backoff).await;
                continue;
            }

            let write = match next {
                Move::Run {
                    step: next_index,
                    direction: next_direction,
                    attempt: next_attempt,
                    started: false,
                } => {
                    // Merge the next step's STARTED into this write: one
                    // commit per step instead of two.
                    let next_step = match next_direction {
                        Direction::Forward => steps[next_index],
                        Direction::Compensate => steps[next_index]
                            .compensation()
                            .ok_or_else(|| ServiceError::internal("undo of a step without one"))?,
                    };
                    let started = entry(next_index, next_direction, next_attempt, Outcome::Started);
                    log.push(started.clone());
                    entries.push((next_step, started));
                    SagaWrite {
                        entries,
                        state: next.state(),
                        current_step: next_index,
                        attempts: next_attempt,
                        reason: reason_code,
                        next_attempt_at: now(),
                        lease_until: Some(self.lease_until(Duration::ZERO)),
                        order,
                    }
                }
                Move::Run { .. } => {
                    return Err(ServiceError::internal("the step log went backwards"));
                }
                terminal => {
                    let mut write = self.finish_write(&params, &log, terminal, entries);
                    write.order.splice(0..0, order);
                    write
                }
            };
            let finished = matches!(next, Move::Completed | Move::Compensated);
            let written = Instant::now();
            if !self.write(saga_id, &params, &lease, &write).await? {
                return Ok(Driven::LeaseLost);
            }
            // Where a step's time goes: the participant call (its network
            // and database) and the step log write (ours). The benchmark
            // reads these to break a saga's latency down.
            tracing::debug!(
                target: TIMING_TARGET,
                step = step.name(),
                call_us = call.as_micros() as u64,
                write_us = written.elapsed().as_micros() as u64,
            );
            if finished {
                tracing::info!(state = next.state().as_str(), "saga finished");
                return Ok(Driven::Finished(next.state()));
            }
        }
    }

    /// The write that ends a saga, with the order's final transition.
    fn finish_write(
        &self,
        params: &SagaParams,
        log: &[LogEntry],
        terminal: Move,
        entries: Vec<(Step, LogEntry)>,
    ) -> SagaWrite {
        let rejected = rejection(log);
        let reason = rejected
            .and_then(|e| e.error.as_deref())
            .map(|e| e.split(':').next().unwrap_or(e).trim().to_owned());
        let event = match (params.kind(), terminal) {
            (SagaKind::PlaceOrder, Move::Completed) => Some(OrderEvent::Confirm),
            (SagaKind::PlaceOrder, _) => Some(OrderEvent::Reject),
            (SagaKind::CancelOrder, _) => Some(OrderEvent::FinishCancel),
        };
        let order_reason = match (event, rejected) {
            (Some(OrderEvent::Reject), Some(entry)) => {
                let full = entry.error.clone().unwrap_or_default();
                let (code, message) = full
                    .split_once(':')
                    .map(|(c, m)| (c.trim().to_owned(), m.trim().to_owned()))
                    .unwrap_or((full.clone(), full.clone()));
                Some((code, message))
            }
            _ => None,
        };
        SagaWrite {
            entries,
            state: terminal.state(),
            current_step: log.last().map_or(0, |e| e.step),
            attempts: 0,
            reason,
            next_attempt_at: now(),
            lease_until: None,
            order: event
                .map(|event| OrderChange::Transition {
                    event,
                    reason: order_reason,
                })
                .into_iter()
                .collect(),
        }
    }

    /// The recovery loop: at start it resumes this instance's own unfinished
    /// sagas at once, then, on a timer, any saga whose lease expired.
    pub async fn recover_forever(self: Arc<Self>) {
        let permits = Arc::new(Semaphore::new(self.config.max_recovering));
        // Own sagas untouched since this process started were being driven
        // by its previous run: take them back at once, batch after batch.
        let mut reclaim_own = Some(now());
        loop {
            let available = permits.available_permits() as i64;
            let claimed = if available == 0 {
                Ok(Vec::new())
            } else {
                self.store
                    .sagas_claim(
                        &self.config.owner,
                        self.lease_until(Duration::ZERO),
                        available.min(self.config.recovery_batch),
                        reclaim_own,
                    )
                    .await
            };
            match claimed {
                Ok(claimed) => {
                    if !claimed.is_empty() {
                        tracing::info!(sagas = claimed.len(), "resuming unfinished sagas");
                    }
                    let full_batch = !claimed.is_empty()
                        && claimed.len() as i64 == available.min(self.config.recovery_batch);
                    if !full_batch {
                        reclaim_own = None;
                    }
                    for (saga_id, lease) in claimed {
                        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
                            return;
                        };
                        let engine = Arc::clone(&self);
                        tokio::spawn(async move {
                            let _permit = permit;
                            match engine.drive(&saga_id, lease).await {
                                // A lost lease was logged where the write
                                // was refused.
                                Ok(driven) => {
                                    tracing::debug!(%saga_id, ?driven, "resumed saga drive ended");
                                }
                                Err(error) => {
                                    tracing::warn!(%saga_id, %error, "resumed saga interrupted");
                                }
                            }
                        });
                    }
                    if full_batch {
                        continue;
                    }
                }
                Err(error) => tracing::warn!(%error, "looking for unfinished sagas failed"),
            }
            tokio::time::sleep(self.config.recovery_interval).await;
        }
    }
}

/// A new saga's inputs and its log: the first step STARTED, as recorded
/// with the saga.
fn started_log(params: SagaParams) -> (SagaParams, Vec<LogEntry>) {
    (
        params,
        vec![entry(0, Direction::Forward, 1, Outcome::Started)],
    )
}

fn entry(step: usize, direction: Direction, attempt: u32, outcome: Outcome) -> LogEntry {
    LogEntry {
        step,
        direction,
        attempt,
        outcome,
        output: None,
        error: None,
        at: now(),
    }
}
