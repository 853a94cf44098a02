//! The application: places and cancels orders (recording each with its
//! saga, then driving it through the executor), reads them for their user,
//! lets operators take sagas over, and runs the recovery loop that resumes
//! unfinished sagas (its own after a restart, or any whose lease expired)
//! from their logs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use commerce_platform::error::ServiceError;
use commerce_platform::time::now;
use commerce_platform::trace_context::TraceHeaders;
use commerce_platform::{SagaId, UserId};
use tokio::sync::Semaphore;
use tracing::Instrument as _;

use crate::domain::order::{OrderEvent, OrderState, PlaceOrder, ReadScope, reason};
use crate::domain::saga::{
    Direction, Lease, LogEntry, Outcome, Rejection, RetryPolicy, SagaKind, SagaParams, SagaState,
};
pub use crate::executor::Driven;
use crate::executor::Executor;
use crate::fault::Faults;
use crate::metrics;
use crate::participants::GrpcParticipants;
use crate::place_gate::{Admission, PlaceGate};
use crate::sagas::{self, OrderSagas, cancel_order, place_order};
use crate::store::{NewSaga, OrderRecord, OrderStore, Placed, TakeOver, TurnAround};

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
    executor: Executor<OrderStore, OrderSagas<GrpcParticipants>>,
    config: EngineConfig,
    gate: Option<PlaceGate>,
}

impl Engine {
    pub fn new(
        store: OrderStore,
        participants: GrpcParticipants,
        config: EngineConfig,
        faults: Faults,
    ) -> Self {
        Self {
            executor: Executor::new(
                store,
                OrderSagas::new(participants),
                config.lease,
                config.retry.clone(),
                faults,
            ),
            config,
            gate: None,
        }
    }

    /// Turns concurrent duplicate `PlaceOrder` calls away before MySQL.
    pub fn with_place_gate(mut self, gate: PlaceGate) -> Self {
        self.gate = Some(gate);
        self
    }

    pub fn store(&self) -> &OrderStore {
        self.executor.store()
    }

    /// How many sagas this instance lost to another holder since it started
    /// (each a refused fenced write; each also logged at WARN).
    pub fn leases_lost(&self) -> u64 {
        self.executor.leases_lost()
    }

    fn lease_until(&self) -> chrono::NaiveDateTime {
        self.executor.lease_until(Duration::ZERO)
    }

    /// A saga to record, leased to this instance (its log starts empty:
    /// nothing is written before its first call), in the trace of the
    /// request that starts it.
    fn new_saga<'a>(
        &'a self,
        id: &'a SagaId,
        params: &'a SagaParams,
        trace: Option<&'a TraceHeaders>,
    ) -> NewSaga<'a> {
        NewSaga {
            id,
            params,
            owner: &self.config.owner,
            lease_until: self.lease_until(),
            trace,
        }
    }

    /// Records the order and its saga, drives it, and answers within `wait`
    /// with the order as it then stands (PENDING when the saga goes on).
    pub async fn place_order(
        self: &Arc<Self>,
        request: PlaceOrder,
        wait: Duration,
    ) -> Result<OrderRecord, ServiceError> {
        let order_id = uuid::Uuid::now_v7().hyphenated().to_string();
        let key = request.idempotency_key.as_str();
        if let Some(gate) = &self.gate
            && let Admission::Duplicate(first) = gate.admit(&request.user, key, &order_id).await
            && let Some(record) = self.known_order(&first, wait).await?
        {
            if record.order.request_json != request.fingerprint() {
                return Err(ServiceError::already_exists(
                    reason::IDEMPOTENCY_KEY_REUSED,
                    "this idempotency key was used for a different order",
                ));
            }
            return self.settled(record, wait).await;
        }
        let saga_id = SagaId::generate();
        let params = place_order::params(&order_id, &request);
        let placing = Instant::now();
        let trace = TraceHeaders::current();
        let placed = self
            .store()
            .order_place(
                &order_id,
                &request,
                &self.new_saga(&saga_id, &params, trace.as_ref()),
            )
            .await;
        if let (Err(_), Some(gate)) = (&placed, &self.gate) {
            gate.release(&request.user, key, &order_id).await;
        }
        let placed = placed?;
        match placed {
            Placed::Created(lease) => {
                metrics::log_written("place_order", placing.elapsed());
                metrics::saga_started(SagaKind::PlaceOrder);
                self.drive_and_wait(saga_id, lease, Some((params, Vec::new())), wait)
                    .await;
                self.store().order_get(&order_id).await
            }
            Placed::Existing(record) => {
                // An earlier call placed it: the gate must not name the id
                // this call made up.
                if let Some(gate) = &self.gate {
                    gate.release(&request.user, key, &order_id).await;
                }
                self.settled(*record, wait).await
            }
        }
    }

    /// The order, if `scope` may see it: another user's order is NOT_FOUND,
    /// as one that does not exist.
    pub async fn get_order(
        &self,
        order_id: &str,
        scope: &ReadScope,
    ) -> Result<OrderRecord, ServiceError> {
        let record = self.store().order_get(order_id).await?;
        scope.admit(order_id, &record.order.user_id)?;
        Ok(record)
    }

    /// Starts cancelling a CONFIRMED order; answers like [`Self::place_order`].
    pub async fn cancel_order(
        self: &Arc<Self>,
        order_id: &str,
        user: &UserId,
        wait: Duration,
    ) -> Result<OrderRecord, ServiceError> {
        let mut record = self.store().order_get(order_id).await?;
        loop {
            let order = &record.order;
            if order.user_id != user.as_str() {
                return Err(ServiceError::not_found("order", order_id));
            }
            let state = record.state()?;
            if matches!(state, OrderState::Cancelling | OrderState::Cancelled) {
                // Already under way (or done): no new saga.
                return self.settled(record, wait).await;
            }
            let next = state.apply(OrderEvent::BeginCancel)?;
            let saga_id = SagaId::generate();
            let params = cancel_order::params(&record, user)?;
            let trace = TraceHeaders::current();
            let begun = self
                .store()
                .order_cancel_begin(
                    order_id,
                    (state, next),
                    &self.new_saga(&saga_id, &params, trace.as_ref()),
                )
                .await?;
            let Some(lease) = begun else {
                // The order moved since it was read: decide again.
                record = self.store().order_get(order_id).await?;
                continue;
            };
            metrics::saga_started(SagaKind::CancelOrder);
            self.drive_and_wait(saga_id, lease, Some((params, Vec::new())), wait)
                .await;
            return self.store().order_get(order_id).await;
        }
    }

    /// Operator: takes the saga over now (optionally forcing compensation)
    /// and drives it in the background.
    pub async fn take_over(
        self: &Arc<Self>,
        saga_id: &SagaId,
        force_compensation: bool,
    ) -> Result<(), ServiceError> {
        let lease = loop {
            let seen = self.store().saga_get(saga_id).await?;
            if seen.state.is_finished() {
                return Err(ServiceError::rejected(
                    reason::SAGA_FINISHED,
                    format!("saga {saga_id} is {}; nothing to do", seen.state.as_str()),
                ));
            }
            let turn_around = if force_compensation {
                if seen.params.kind() == SagaKind::CancelOrder {
                    return Err(ServiceError::rejected(
                        reason::SAGA_FINISHED,
                        "a cancellation saga has nothing to compensate; retry it instead",
                    ));
                }
                // A running saga is turned around by a rejection of the step
                // it is at, as if its participant had refused.
                (seen.state == SagaState::Running).then(|| {
                    let steps = sagas::steps(&seen.params);
                    let index = usize::try_from(seen.current_step).unwrap_or(0);
                    let mut aborted = LogEntry::new(
                        index,
                        Direction::Forward,
                        seen.attempts.max(1) as u32,
                        Outcome::Rejected,
                        now(),
                    );
                    aborted.rejection = Some(Rejection::bare(reason::OPERATOR_ABORTED));
                    TurnAround {
                        entry: (steps[index.min(steps.len() - 1)].action, aborted),
                        state: SagaState::Compensating,
                        reason: reason::OPERATOR_ABORTED.to_owned(),
                    }
                })
            } else {
                None
            };
            let taken = self
                .store()
                .saga_take_over(&TakeOver {
                    saga_id,
                    seen: &seen,
                    owner: &self.config.owner,
                    lease_until: self.lease_until(),
                    turn_around,
                })
                .await?;
            // `None`: the saga moved since it was read; decide again.
            if let Some(lease) = taken {
                break lease;
            }
        };
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
    /// caller just wrote them (saves reading them back), in the trace of the
    /// request it was just recorded in.
    fn spawn_drive(
        self: &Arc<Self>,
        saga_id: SagaId,
        lease: Lease,
        start: Option<(SagaParams, Vec<LogEntry>)>,
    ) -> tokio::task::JoinHandle<()> {
        let engine = Arc::clone(self);
        // The request asking for this drive: placing, cancelling, an
        // operator's retry.
        let asked_by = TraceHeaders::current();
        tokio::spawn(async move {
            let driven = match start {
                Some((params, log)) => {
                    let span = saga_span(&saga_id, &params, &lease, asked_by.as_ref(), None);
                    engine.drive_in(span, &saga_id, lease, params, log).await
                }
                None => engine.resume(&saga_id, lease, asked_by.as_ref()).await,
            };
            match driven {
                Ok(driven) => tracing::debug!(%saga_id, ?driven, "saga drive ended"),
                // The lease expires and recovery resumes the saga.
                Err(error) => tracing::warn!(%saga_id, %error, "saga drive interrupted"),
            }
        })
    }

    /// The order a concurrent first call is recording, once it is readable
    /// (bounded by `wait`); `None` when it never appeared (that call failed
    /// or died): the caller then places through MySQL, which decides.
    async fn known_order(
        &self,
        order_id: &str,
        wait: Duration,
    ) -> Result<Option<OrderRecord>, ServiceError> {
        let deadline = tokio::time::Instant::now() + wait.min(Duration::from_secs(2));
        let mut pause = Duration::from_millis(5);
        loop {
            match self.store().order_get(order_id).await {
                Ok(record) => return Ok(Some(record)),
                Err(ServiceError::NotFound { .. }) => {}
                Err(other) => return Err(other),
            }
            if tokio::time::Instant::now() + pause >= deadline {
                return Ok(None);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(100));
        }
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
            record = self.store().order_get(&record.order.id).await?;
        }
        Ok(record)
    }

    /// Drives a saga from its log until it finishes, gets stuck or loses its
    /// lease.
    pub async fn drive(&self, saga_id: &SagaId, lease: Lease) -> Result<Driven, ServiceError> {
        self.resume(saga_id, lease, None).await
    }

    /// [`Self::drive`] in the trace the saga started in, linked to the
    /// request that asked for this drive (`asked_by`), if another.
    async fn resume(
        &self,
        saga_id: &SagaId,
        lease: Lease,
        asked_by: Option<&TraceHeaders>,
    ) -> Result<Driven, ServiceError> {
        let record = self.store().saga_load(saga_id).await?;
        let saga = record.saga;
        let span = saga_span(saga_id, &saga.params, &lease, saga.trace.as_ref(), asked_by);
        self.drive_in(span, saga_id, lease, saga.params, record.log)
            .await
    }

    /// One drive of a saga in its `span` (see [`saga_span`]), which says how
    /// it ended.
    async fn drive_in(
        &self,
        span: tracing::Span,
        saga_id: &SagaId,
        lease: Lease,
        params: SagaParams,
        log: Vec<LogEntry>,
    ) -> Result<Driven, ServiceError> {
        let driven = self
            .executor
            .drive_from(saga_id, lease, params, log)
            .instrument(span.clone())
            .await;
        match &driven {
            Ok(driven) => span.record("driven", tracing::field::debug(driven)),
            Err(_) => span.record("otel.status_code", "error"),
        };
        driven
    }

    /// The recovery loop: at start it resumes this instance's own unfinished
    /// sagas at once, then, on a timer, any saga whose lease expired.
    pub async fn recover_forever(self: Arc<Self>) {
        let permits = Arc::new(Semaphore::new(self.config.max_recovering));
        // Own sagas untouched since this process started were being driven
        // by its previous run: take them back at once, batch after batch.
        let mut reclaim_own = Some(now());
        loop {
            if permits.available_permits() == 0 {
                // Every slot is driving a saga: wait for one to end rather
                // than claim nothing (and, while reclaiming, conclude that
                // none of our own sagas is left).
                let Ok(slot) = Arc::clone(&permits).acquire_owned().await else {
                    return;
                };
                drop(slot);
            }
            let wanted = (permits.available_permits() as i64).min(self.config.recovery_batch);
            let claimed = self
                .store()
                .sagas_claim(&self.config.owner, self.lease_until(), wanted, reclaim_own)
                .await;
            match claimed {
                Ok(claimed) => {
                    if !claimed.is_empty() {
                        metrics::recovery_claimed(claimed.len());
                        tracing::info!(sagas = claimed.len(), "resuming unfinished sagas");
                    }
                    // A short batch: no due saga is left, our own included.
                    let full_batch = claimed.len() as i64 == wanted;
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

/// The span of one drive of a saga, whose steps are its children: a child
/// of the span the saga started in (`started_in`, stored with it), so that
/// every drive (the first, a recovery's after a crash, another instance's,
/// an operator's) is in that one trace; linked to the request that asked
/// for this drive (`asked_by`) when that is another.
fn saga_span(
    saga_id: &SagaId,
    params: &SagaParams,
    lease: &Lease,
    started_in: Option<&TraceHeaders>,
    asked_by: Option<&TraceHeaders>,
) -> tracing::Span {
    let kind = params.kind().as_str();
    let span = tracing::info_span!(
        parent: None,
        "saga",
        otel.name = %format_args!("saga {kind}"),
        saga_id = %saga_id,
        saga.kind = kind,
        owner = %lease.owner,
        fence = lease.fence,
        driven = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    if let Some(started_in) = started_in {
        started_in.continue_in(&span);
    }
    if let Some(asked_by) = asked_by.filter(|asked| Some(*asked) != started_in) {
        asked_by.link_from(&span);
    }
    span
}
