//! The orchestrator's storage: orders, sagas and the append-only step log in
//! its own MySQL database. Every write of saga progress is fenced by the
//! saga's lease, so an instance that lost its lease cannot overwrite the new
//! owner's progress.

use chrono::NaiveDateTime;
use commerce_platform::db::{ScopedFutureExt, is_unique_violation};
use commerce_platform::error::ServiceError;
use commerce_platform::paging::PageRequest;
use commerce_platform::time::now;
use commerce_platform::{Database, SagaId, UserId};
use diesel::prelude::*;
use diesel_async::{AsyncMysqlConnection, RunQueryDsl};

use crate::domain::order::{OrderEvent, OrderState, PlaceOrder, Pricing, SnapshotLine, reason};
use crate::domain::saga::{
    Direction, LogEntry, Outcome, SagaKind, SagaParams, SagaState, Step, StepOutput,
};

/// The orchestrator's tables (the benchmark's baseline stores its orders in
/// the same `orders` and `order_lines` shape).
pub mod schema {
    diesel::table! {
        orders (id) {
            id -> Char,
            user_id -> Varchar,
            idempotency_key -> Varchar,
            request_json -> Text,
            state -> Varchar,
            user_coupon_id -> Nullable<BigInt>,
            subtotal -> BigInt,
            discount -> BigInt,
            points_paid -> BigInt,
            reason -> Varchar,
            reason_message -> Varchar,
            saga_id -> Char,
            created_at -> Datetime,
            updated_at -> Datetime,
        }
    }

    diesel::table! {
        order_lines (order_id, product_id) {
            order_id -> Char,
            product_id -> BigInt,
            quantity -> BigInt,
            product_name -> Nullable<Varchar>,
            brand_id -> Nullable<BigInt>,
            brand_name -> Nullable<Varchar>,
            unit_price -> Nullable<BigInt>,
        }
    }

    diesel::table! {
        sagas (id) {
            id -> Char,
            kind -> Varchar,
            order_id -> Char,
            state -> Varchar,
            params_json -> Text,
            current_step -> Integer,
            attempts -> Integer,
            reason -> Varchar,
            next_attempt_at -> Datetime,
            lease_owner -> Nullable<Varchar>,
            lease_expires_at -> Nullable<Datetime>,
            fence -> BigInt,
            created_at -> Datetime,
            updated_at -> Datetime,
        }
    }

    diesel::table! {
        saga_log (seq) {
            seq -> BigInt,
            saga_id -> Char,
            step -> Integer,
            step_name -> Varchar,
            direction -> Varchar,
            attempt -> Integer,
            outcome -> Varchar,
            response_json -> Nullable<Text>,
            error -> Nullable<Varchar>,
            created_at -> Datetime,
        }
    }
}

use schema::{order_lines, orders, saga_log, sagas};

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = orders)]
pub struct OrderRow {
    pub id: String,
    pub user_id: String,
    pub idempotency_key: String,
    pub request_json: String,
    pub state: String,
    pub user_coupon_id: Option<i64>,
    pub subtotal: i64,
    pub discount: i64,
    pub points_paid: i64,
    pub reason: String,
    pub reason_message: String,
    pub saga_id: String,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = order_lines)]
pub struct OrderLineRow {
    pub order_id: String,
    pub product_id: i64,
    pub quantity: i64,
    pub product_name: Option<String>,
    pub brand_id: Option<i64>,
    pub brand_name: Option<String>,
    pub unit_price: Option<i64>,
}

impl OrderRow {
    /// A new order, PENDING until its saga (`saga_id`, empty when there is
    /// none) decides it.
    pub fn pending(order_id: &str, request: &PlaceOrder, fingerprint: &str, saga_id: &str) -> Self {
        let at = now();
        Self {
            id: order_id.to_owned(),
            user_id: request.user.to_string(),
            idempotency_key: request.idempotency_key.as_str().to_owned(),
            request_json: fingerprint.to_owned(),
            state: OrderState::Pending.as_str().to_owned(),
            user_coupon_id: request.user_coupon_id,
            subtotal: 0,
            discount: 0,
            points_paid: 0,
            reason: String::new(),
            reason_message: String::new(),
            saga_id: saga_id.to_owned(),
            created_at: at,
            updated_at: at,
        }
    }
}

impl OrderLineRow {
    /// A line as requested, before its stock is reserved.
    pub fn requested(order_id: &str, product_id: i64, quantity: i64) -> Self {
        Self {
            order_id: order_id.to_owned(),
            product_id,
            quantity,
            product_name: None,
            brand_id: None,
            brand_name: None,
            unit_price: None,
        }
    }

    /// A line with the snapshot of its reservation.
    pub fn snapshot(order_id: &str, line: &SnapshotLine) -> Self {
        Self {
            order_id: order_id.to_owned(),
            product_id: line.product_id,
            quantity: line.quantity,
            product_name: Some(line.product_name.clone()),
            brand_id: Some(line.brand_id),
            brand_name: Some(line.brand_name.clone()),
            unit_price: Some(line.unit_price),
        }
    }
}

/// An order with its lines.
#[derive(Debug, Clone)]
pub struct OrderRecord {
    pub order: OrderRow,
    pub lines: Vec<OrderLineRow>,
}

impl OrderRecord {
    pub fn state(&self) -> Result<OrderState, ServiceError> {
        OrderState::parse(&self.order.state)
    }
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = sagas)]
pub struct SagaRow {
    pub id: String,
    pub kind: String,
    pub order_id: String,
    pub state: String,
    pub params_json: String,
    pub current_step: i32,
    pub attempts: i32,
    pub reason: String,
    pub next_attempt_at: NaiveDateTime,
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<NaiveDateTime>,
    pub fence: i64,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = saga_log)]
pub struct LogRow {
    pub seq: i64,
    pub saga_id: String,
    pub step: i32,
    pub step_name: String,
    pub direction: String,
    pub attempt: i32,
    pub outcome: String,
    pub response_json: Option<String>,
    pub error: Option<String>,
    pub created_at: NaiveDateTime,
}

/// A saga, its inputs and its log.
#[derive(Debug, Clone)]
pub struct SagaRecord {
    pub row: SagaRow,
    pub params: SagaParams,
    pub log: Vec<LogEntry>,
    pub raw_log: Vec<LogRow>,
}

/// The right to drive a saga: held by `owner` while `fence` is current.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub owner: String,
    pub fence: i64,
}

/// What placing an order found.
#[derive(Debug)]
pub enum Placed {
    /// A new order; its saga is leased to the caller.
    Created(Lease),
    /// The same user and key placed this order before.
    Existing(Box<OrderRecord>),
}

/// A change to the order made with a saga write.
#[derive(Debug, Clone)]
pub enum OrderChange {
    /// The stock is reserved: record the snapshot, the subtotal and the
    /// quoted discount (points are recorded once deducted).
    Priced {
        lines: Vec<SnapshotLine>,
        pricing: Pricing,
    },
    /// The points the point service deducted for the order (0 once
    /// refunded by the order's compensation).
    PointsPaid(i64),
    /// Through the state machine. REJECTED also clears the discount and the
    /// points paid: a rejected order's saga undid both.
    Transition {
        event: OrderEvent,
        reason: Option<(String, String)>,
    },
}

/// One fenced write of saga progress: log events, the saga row, the order.
#[derive(Debug, Clone)]
pub struct SagaWrite {
    pub entries: Vec<(Step, LogEntry)>,
    pub state: SagaState,
    pub current_step: usize,
    pub attempts: u32,
    pub reason: Option<String>,
    pub next_attempt_at: NaiveDateTime,
    /// Lease renewal; `None` gives the lease up.
    pub lease_until: Option<NaiveDateTime>,
    /// Changes to the saga's order, applied in order.
    pub order: Vec<OrderChange>,
}

/// What a fenced saga write changes (a `None` reason keeps the stored one).
#[derive(AsChangeset)]
#[diesel(table_name = sagas)]
struct SagaChanges<'a> {
    state: &'a str,
    current_step: i32,
    attempts: i32,
    reason: Option<&'a str>,
    next_attempt_at: NaiveDateTime,
    lease_expires_at: NaiveDateTime,
    updated_at: NaiveDateTime,
}

/// One log event as stored.
#[derive(Insertable)]
#[diesel(table_name = saga_log)]
struct NewLogRow<'a> {
    saga_id: &'a str,
    step: i32,
    step_name: &'a str,
    direction: &'a str,
    attempt: i32,
    outcome: &'a str,
    response_json: Option<String>,
    error: Option<String>,
    created_at: NaiveDateTime,
}

/// A saga to record, leased to its creator.
#[derive(Debug, Clone, Copy)]
pub struct NewSaga<'a> {
    pub id: &'a SagaId,
    pub params: &'a SagaParams,
    pub owner: &'a str,
    pub lease_until: NaiveDateTime,
}

/// States a saga can still make progress from.
const UNFINISHED: [&str; 3] = ["RUNNING", "COMPENSATING", "STUCK"];

#[derive(Clone)]
pub struct OrderStore {
    db: Database,
}

impl OrderStore {
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    /// Records a new order with its saga (leased to `owner`) and the STARTED
    /// event of its first step, or finds the order the same key placed.
    pub async fn order_place(
        &self,
        order_id: &str,
        request: &PlaceOrder,
        saga: &NewSaga<'_>,
    ) -> Result<Placed, ServiceError> {
        let NewSaga {
            id: saga_id,
            params,
            owner,
            lease_until,
        } = *saga;
        let first_step = params.steps()[0];
        let fingerprint = request.fingerprint();
        let params_json = serde_json::to_string(params)?;
        let (fingerprint, params_json) = (&fingerprint, &params_json);
        self.db
            .transaction(|c| {
                async move {
                    let pending =
                        OrderRow::pending(order_id, request, fingerprint, saga_id.as_str());
                    let inserted = diesel::insert_into(orders::table)
                        .values(&pending)
                        .execute(c)
                        .await;
                    match inserted {
                        Ok(_) => {}
                        Err(e) if is_unique_violation(&e) => {
                            let existing = orders::table
                                .filter(orders::user_id.eq(request.user.as_str()))
                                .filter(
                                    orders::idempotency_key.eq(request.idempotency_key.as_str()),
                                )
                                .select(OrderRow::as_select())
                                .first(c)
                                .await?;
                            if existing.request_json != *fingerprint {
                                return Err(ServiceError::already_exists(
                                    reason::IDEMPOTENCY_KEY_REUSED,
                                    "this idempotency key was used for a different order",
                                ));
                            }
                            return Ok(Placed::Existing(Box::new(load_order(c, existing).await?)));
                        }
                        Err(e) => return Err(e.into()),
                    }
                    let lines: Vec<OrderLineRow> = request
                        .lines
                        .iter()
                        .map(|l| OrderLineRow::requested(order_id, l.product_id, l.quantity))
                        .collect();
                    diesel::insert_into(order_lines::table)
                        .values(&lines)
                        .execute(c)
                        .await?;
                    let lease =
                        saga_insert(c, saga_id, params, params_json, owner, lease_until).await?;
                    log_insert(
                        c,
                        saga_id,
                        &[(first_step, started(0, Direction::Forward, 1))],
                    )
                    .await?;
                    Ok(Placed::Created(lease))
                }
                .scope_boxed()
            })
            .await
    }

    pub async fn order_get(&self, order_id: &str) -> Result<OrderRecord, ServiceError> {
        self.db
            .read(|c| {
                async move {
                    let order = orders::table
                        .find(order_id)
                        .select(OrderRow::as_select())
                        .first(c)
                        .await
                        .optional()?
                        .ok_or_else(|| ServiceError::not_found("order", order_id))?;
                    load_order(c, order).await
                }
                .scope_boxed()
            })
            .await
    }

    /// A user's orders, newest first, and how many there are.
    pub async fn orders_list(
        &self,
        user: &UserId,
        page: PageRequest,
    ) -> Result<(Vec<OrderRecord>, i64), ServiceError> {
        self.db
            .read(|c| {
                async move {
                    let total = orders::table
                        .filter(orders::user_id.eq(user.as_str()))
                        .count()
                        .get_result::<i64>(c)
                        .await?;
                    let rows = orders::table
                        .filter(orders::user_id.eq(user.as_str()))
                        .order((orders::created_at.desc(), orders::id.desc()))
                        .limit(page.limit())
                        .offset(page.offset())
                        .select(OrderRow::as_select())
                        .load(c)
                        .await?;
                    let ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
                    let mut lines = order_lines::table
                        .filter(order_lines::order_id.eq_any(&ids))
                        .order((order_lines::order_id, order_lines::product_id))
                        .select(OrderLineRow::as_select())
                        .load(c)
                        .await?;
                    let records = rows
                        .into_iter()
                        .map(|order| {
                            let (mine, rest): (Vec<_>, Vec<_>) =
                                lines.drain(..).partition(|l| l.order_id == order.id);
                            lines = rest;
                            OrderRecord { order, lines: mine }
                        })
                        .collect();
                    Ok((records, total))
                }
                .scope_boxed()
            })
            .await
    }

    /// Applies a fulfilment event (ship, deliver) through the state machine.
    pub async fn order_transition(
        &self,
        order_id: &str,
        event: OrderEvent,
    ) -> Result<OrderRecord, ServiceError> {
        self.db
            .transaction(|c| {
                async move {
                    let order = order_lock(c, order_id).await?;
                    let next = OrderState::parse(&order.state)?.apply(event)?;
                    order_set_state(c, order_id, next, None).await?;
                    let order = order_lock(c, order_id).await?;
                    load_order(c, order).await
                }
                .scope_boxed()
            })
            .await
    }

    /// Starts cancelling a CONFIRMED order of `user`: the order becomes
    /// CANCELLING and a cancel saga (leased to `owner`) is recorded. An order
    /// already cancelling or cancelled is returned as it is (no new saga).
    pub async fn order_cancel_begin(
        &self,
        order_id: &str,
        user: &UserId,
        cancel_saga: &SagaId,
        owner: &str,
        lease_until: NaiveDateTime,
    ) -> Result<(OrderRecord, Option<Lease>), ServiceError> {
        self.db
            .transaction(|c| {
                async move {
                    let order = order_lock(c, order_id).await?;
                    if order.user_id != user.as_str() {
                        return Err(ServiceError::not_found("order", order_id));
                    }
                    let state = OrderState::parse(&order.state)?;
                    if matches!(state, OrderState::Cancelling | OrderState::Cancelled) {
                        return Ok((load_order(c, order).await?, None));
                    }
                    let next = state.apply(OrderEvent::BeginCancel)?;
                    let params = SagaParams::CancelOrder {
                        order_id: order_id.to_owned(),
                        user: user.clone(),
                        placed_by: SagaId::parse("saga_id", &order.saga_id)?,
                        user_coupon_id: order.user_coupon_id,
                    };
                    let params_json = serde_json::to_string(&params)?;
                    let lease =
                        saga_insert(c, cancel_saga, &params, &params_json, owner, lease_until)
                            .await?;
                    let first = params.steps()[0];
                    log_insert(
                        c,
                        cancel_saga,
                        &[(first, started(0, Direction::Forward, 1))],
                    )
                    .await?;
                    order_set_state(c, order_id, next, None).await?;
                    let order = order_lock(c, order_id).await?;
                    Ok((load_order(c, order).await?, Some(lease)))
                }
                .scope_boxed()
            })
            .await
    }

    pub async fn saga_load(&self, saga_id: &SagaId) -> Result<SagaRecord, ServiceError> {
        self.db
            .read(|c| {
                async move {
                    let row = sagas::table
                        .find(saga_id.as_str())
                        .select(SagaRow::as_select())
                        .first(c)
                        .await
                        .optional()?
                        .ok_or_else(|| ServiceError::not_found("saga", saga_id))?;
                    let raw_log = saga_log::table
                        .filter(saga_log::saga_id.eq(saga_id.as_str()))
                        .order(saga_log::seq)
                        .select(LogRow::as_select())
                        .load(c)
                        .await?;
                    let params: SagaParams = serde_json::from_str(&row.params_json)?;
                    let log = raw_log.iter().map(to_entry).collect::<Result<_, _>>()?;
                    Ok(SagaRecord {
                        row,
                        params,
                        log,
                        raw_log,
                    })
                }
                .scope_boxed()
            })
            .await
    }

    /// The saga row alone (who holds it, in which state).
    pub async fn saga_row(&self, saga_id: &SagaId) -> Result<SagaRow, ServiceError> {
        self.db
            .read(|c| {
                async move {
                    sagas::table
                        .find(saga_id.as_str())
                        .select(SagaRow::as_select())
                        .first(c)
                        .await
                        .optional()?
                        .ok_or_else(|| ServiceError::not_found("saga", saga_id))
                }
                .scope_boxed()
            })
            .await
    }

    /// Writes saga progress if `lease` is still current; `Ok(false)` when it
    /// is not (another instance took the saga over: stop driving it).
    pub async fn saga_write(
        &self,
        saga_id: &SagaId,
        order_id: &str,
        lease: &Lease,
        write: &SagaWrite,
    ) -> Result<bool, ServiceError> {
        self.db
            .transaction(|c| {
                async move {
                    let at = now();
                    let fenced = sagas::table
                        .filter(sagas::id.eq(saga_id.as_str()))
                        .filter(sagas::lease_owner.eq(&lease.owner))
                        .filter(sagas::fence.eq(lease.fence));
                    let matched = diesel::update(fenced)
                        .set(&SagaChanges {
                            state: write.state.as_str(),
                            current_step: to_i32(write.current_step),
                            attempts: to_i32(write.attempts as usize),
                            reason: write.reason.as_deref(),
                            next_attempt_at: write.next_attempt_at,
                            lease_expires_at: write.lease_until.unwrap_or(at),
                            updated_at: at,
                        })
                        .execute(c)
                        .await?;
                    if matched == 0 {
                        return Ok(false);
                    }
                    log_insert(c, saga_id, &write.entries).await?;
                    for change in &write.order {
                        order_apply(c, order_id, change).await?;
                    }
                    Ok(true)
                }
                .scope_boxed()
            })
            .await
    }

    /// Claims up to `limit` unfinished sagas that are due and whose lease has
    /// expired, without waiting on rows other instances are claiming. With
    /// `own_before`, also `owner`'s own running sagas not touched since that
    /// time (those a previous run of this instance was driving when it
    /// stopped), at once, even those waiting out a backoff; STUCK ones keep
    /// their slow retry.
    pub async fn sagas_claim(
        &self,
        owner: &str,
        lease_until: NaiveDateTime,
        limit: i64,
        own_before: Option<NaiveDateTime>,
    ) -> Result<Vec<(SagaId, Lease)>, ServiceError> {
        self.db
            .transaction(|c| {
                async move {
                    let at = now();
                    // An owner name is never empty, so "" reclaims nothing.
                    let own = if own_before.is_some() { owner } else { "" };
                    let ids: Vec<String> = sagas::table
                        .filter(sagas::state.eq_any(UNFINISHED))
                        .filter(
                            sagas::next_attempt_at
                                .le(at)
                                .and(
                                    sagas::lease_expires_at
                                        .is_null()
                                        .or(sagas::lease_expires_at.lt(at)),
                                )
                                .or(sagas::lease_owner
                                    .eq(own)
                                    .and(sagas::updated_at.lt(own_before.unwrap_or(at)))
                                    .and(sagas::state.ne(SagaState::Stuck.as_str()))),
                        )
                        .order(sagas::next_attempt_at)
                        .limit(limit)
                        .select(sagas::id)
                        .for_update()
                        .skip_locked()
                        .load(c)
                        .await?;
                    lease_take(c, &ids, owner, lease_until).await
                }
                .scope_boxed()
            })
            .await
    }

    /// Takes one unfinished saga for `owner` at once, whoever holds it, and
    /// makes it due now (operator's retry); the old holder's writes fail.
    pub async fn saga_take_over(
        &self,
        saga_id: &SagaId,
        owner: &str,
        lease_until: NaiveDateTime,
        force_compensation: bool,
    ) -> Result<Lease, ServiceError> {
        self.db
            .transaction(|c| {
                async move {
                    let row = sagas::table
                        .find(saga_id.as_str())
                        .select(SagaRow::as_select())
                        .for_update()
                        .first(c)
                        .await
                        .optional()?
                        .ok_or_else(|| ServiceError::not_found("saga", saga_id))?;
                    if SagaState::parse(&row.state)?.is_finished() {
                        return Err(ServiceError::rejected(
                            reason::SAGA_FINISHED,
                            format!("saga {saga_id} is {}; nothing to do", row.state),
                        ));
                    }
                    if force_compensation {
                        let params: SagaParams = serde_json::from_str(&row.params_json)?;
                        if params.kind() == SagaKind::CancelOrder {
                            return Err(ServiceError::rejected(
                                reason::SAGA_FINISHED,
                                "a cancellation saga has nothing to compensate; retry it instead",
                            ));
                        }
                        if row.state == SagaState::Running.as_str() {
                            let steps = params.steps();
                            let step = usize::try_from(row.current_step).unwrap_or(0);
                            let mut entry =
                                started(step, Direction::Forward, row.attempts.max(1) as u32);
                            entry.outcome = Outcome::Rejected;
                            entry.error = Some(reason::OPERATOR_ABORTED.to_owned());
                            log_insert(c, saga_id, &[(steps[step.min(steps.len() - 1)], entry)])
                                .await?;
                            diesel::update(sagas::table.find(saga_id.as_str()))
                                .set((
                                    sagas::state.eq(SagaState::Compensating.as_str()),
                                    sagas::reason.eq(reason::OPERATOR_ABORTED),
                                ))
                                .execute(c)
                                .await?;
                        }
                    }
                    diesel::update(sagas::table.find(saga_id.as_str()))
                        .set((sagas::next_attempt_at.eq(now()), sagas::attempts.eq(0)))
                        .execute(c)
                        .await?;
                    let mut leases =
                        lease_take(c, &[saga_id.as_str().to_owned()], owner, lease_until).await?;
                    leases
                        .pop()
                        .map(|(_, lease)| lease)
                        .ok_or_else(|| ServiceError::internal("saga vanished while taken over"))
                }
                .scope_boxed()
            })
            .await
    }

    /// Sagas in `states`, at least `min_age` old, oldest first.
    pub async fn sagas_list(
        &self,
        states: &[SagaState],
        created_before: NaiveDateTime,
        page: PageRequest,
    ) -> Result<Vec<SagaRow>, ServiceError> {
        let states: Vec<&str> = states.iter().map(|s| s.as_str()).collect();
        self.db
            .read(|c| {
                async move {
                    Ok(sagas::table
                        .filter(sagas::state.eq_any(states))
                        .filter(sagas::created_at.le(created_before))
                        .order((sagas::created_at, sagas::id))
                        .limit(page.limit())
                        .offset(page.offset())
                        .select(SagaRow::as_select())
                        .load(c)
                        .await?)
                }
                .scope_boxed()
            })
            .await
    }

    /// Number of sagas per state.
    pub async fn saga_counts(&self) -> Result<Vec<(SagaState, i64)>, ServiceError> {
        self.db
            .read(|c| {
                async move {
                    let rows: Vec<(String, i64)> = sagas::table
                        .group_by(sagas::state)
                        .select((sagas::state, diesel::dsl::count_star()))
                        .load(c)
                        .await?;
                    rows.into_iter()
                        .map(|(state, n)| Ok((SagaState::parse(&state)?, n)))
                        .collect()
                }
                .scope_boxed()
            })
            .await
    }
}

fn started(step: usize, direction: Direction, attempt: u32) -> LogEntry {
    LogEntry {
        step,
        direction,
        attempt,
        outcome: Outcome::Started,
        output: None,
        error: None,
        at: now(),
    }
}

fn to_i32(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

fn to_entry(row: &LogRow) -> Result<LogEntry, ServiceError> {
    Ok(LogEntry {
        step: usize::try_from(row.step).map_err(|_| ServiceError::internal("negative step"))?,
        direction: Direction::parse(&row.direction)?,
        attempt: u32::try_from(row.attempt)
            .map_err(|_| ServiceError::internal("negative attempt"))?,
        outcome: Outcome::parse(&row.outcome)?,
        output: row
            .response_json
            .as_deref()
            .map(serde_json::from_str::<StepOutput>)
            .transpose()?,
        error: row.error.clone(),
        at: row.created_at,
    })
}

async fn saga_insert(
    c: &mut AsyncMysqlConnection,
    saga_id: &SagaId,
    params: &SagaParams,
    params_json: &str,
    owner: &str,
    lease_until: NaiveDateTime,
) -> Result<Lease, ServiceError> {
    let at = now();
    diesel::insert_into(sagas::table)
        .values((
            sagas::id.eq(saga_id.as_str()),
            sagas::kind.eq(params.kind().as_str()),
            sagas::order_id.eq(params.order_id()),
            sagas::state.eq(SagaState::Running.as_str()),
            sagas::params_json.eq(params_json),
            sagas::attempts.eq(1),
            sagas::next_attempt_at.eq(at),
            sagas::lease_owner.eq(owner),
            sagas::lease_expires_at.eq(lease_until),
            sagas::fence.eq(1),
            sagas::created_at.eq(at),
            sagas::updated_at.eq(at),
        ))
        .execute(c)
        .await?;
    Ok(Lease {
        owner: owner.to_owned(),
        fence: 1,
    })
}

/// Appends log events in one statement; an event already logged is kept as
/// it was (the unique key makes a retried write harmless).
async fn log_insert(
    c: &mut AsyncMysqlConnection,
    saga_id: &SagaId,
    entries: &[(Step, LogEntry)],
) -> Result<(), ServiceError> {
    if entries.is_empty() {
        return Ok(());
    }
    let rows = entries
        .iter()
        .map(|(step, entry)| {
            Ok(NewLogRow {
                saga_id: saga_id.as_str(),
                step: to_i32(entry.step),
                step_name: step.name(),
                direction: entry.direction.as_str(),
                attempt: to_i32(entry.attempt as usize),
                outcome: entry.outcome.as_str(),
                response_json: entry
                    .output
                    .as_ref()
                    .map(serde_json::to_string)
                    .transpose()?,
                error: entry
                    .error
                    .as_ref()
                    .map(|e| e.chars().take(1000).collect::<String>()),
                // As the engine saw it: the retry budget reads it back.
                created_at: entry.at,
            })
        })
        .collect::<Result<Vec<_>, ServiceError>>()?;
    diesel::insert_or_ignore_into(saga_log::table)
        .values(&rows)
        .execute(c)
        .await?;
    Ok(())
}

async fn lease_take(
    c: &mut AsyncMysqlConnection,
    ids: &[String],
    owner: &str,
    lease_until: NaiveDateTime,
) -> Result<Vec<(SagaId, Lease)>, ServiceError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    diesel::update(sagas::table.filter(sagas::id.eq_any(ids)))
        .set((
            sagas::lease_owner.eq(owner),
            sagas::lease_expires_at.eq(lease_until),
            sagas::fence.eq(sagas::fence + 1),
            sagas::updated_at.eq(now()),
        ))
        .execute(c)
        .await?;
    let rows: Vec<(String, i64)> = sagas::table
        .filter(sagas::id.eq_any(ids))
        .select((sagas::id, sagas::fence))
        .load(c)
        .await?;
    rows.into_iter()
        .map(|(id, fence)| {
            Ok((
                SagaId::parse("saga_id", &id)?,
                Lease {
                    owner: owner.to_owned(),
                    fence,
                },
            ))
        })
        .collect()
}

async fn order_lock(
    c: &mut AsyncMysqlConnection,
    order_id: &str,
) -> Result<OrderRow, ServiceError> {
    orders::table
        .find(order_id)
        .select(OrderRow::as_select())
        .for_update()
        .first(c)
        .await
        .optional()?
        .ok_or_else(|| ServiceError::not_found("order", order_id))
}

/// An order row with its lines, in product-id order.
pub async fn load_order(
    c: &mut AsyncMysqlConnection,
    order: OrderRow,
) -> Result<OrderRecord, ServiceError> {
    let lines = order_lines::table
        .filter(order_lines::order_id.eq(&order.id))
        .order(order_lines::product_id)
        .select(OrderLineRow::as_select())
        .load(c)
        .await?;
    Ok(OrderRecord { order, lines })
}

async fn order_set_state(
    c: &mut AsyncMysqlConnection,
    order_id: &str,
    state: OrderState,
    reason: Option<&(String, String)>,
) -> Result<(), ServiceError> {
    let at = now();
    match reason {
        Some((code, message)) => {
            diesel::update(orders::table.find(order_id))
                .set((
                    orders::state.eq(state.as_str()),
                    orders::reason.eq(code),
                    orders::reason_message.eq(message.chars().take(500).collect::<String>()),
                    orders::updated_at.eq(at),
                ))
                .execute(c)
                .await?
        }
        None => {
            diesel::update(orders::table.find(order_id))
                .set((orders::state.eq(state.as_str()), orders::updated_at.eq(at)))
                .execute(c)
                .await?
        }
    };
    Ok(())
}

async fn order_apply(
    c: &mut AsyncMysqlConnection,
    order_id: &str,
    change: &OrderChange,
) -> Result<(), ServiceError> {
    match change {
        OrderChange::Priced { lines, pricing } => {
            let rows: Vec<OrderLineRow> = lines
                .iter()
                .map(|line| OrderLineRow::snapshot(order_id, line))
                .collect();
            // The reservation merges lines per product as the order did, so
            // this replaces each requested line by its snapshot.
            diesel::replace_into(order_lines::table)
                .values(&rows)
                .execute(c)
                .await?;
            diesel::update(orders::table.find(order_id))
                .set((
                    orders::subtotal.eq(pricing.subtotal),
                    orders::discount.eq(pricing.discount),
                    orders::updated_at.eq(now()),
                ))
                .execute(c)
                .await?;
        }
        OrderChange::PointsPaid(amount) => {
            diesel::update(orders::table.find(order_id))
                .set((
                    orders::points_paid.eq(*amount),
                    orders::updated_at.eq(now()),
                ))
                .execute(c)
                .await?;
        }
        OrderChange::Transition { event, reason } => {
            // The state a saga event applies to, through the state machine.
            let (from, to) = OrderState::ALL
                .into_iter()
                .find_map(|s| s.apply(*event).ok().map(|next| (s, next)))
                .ok_or_else(|| ServiceError::internal(format!("no state accepts {event:?}")))?;
            let (code, message) = reason.clone().unwrap_or_default();
            let this_order = orders::table
                .filter(orders::id.eq(order_id))
                .filter(orders::state.eq(from.as_str()));
            let changes = (
                orders::state.eq(to.as_str()),
                orders::reason.eq(code),
                orders::reason_message.eq(message.chars().take(500).collect::<String>()),
                orders::updated_at.eq(now()),
            );
            let matched = if to == OrderState::Rejected {
                // Every step was undone: nothing paid, no coupon applied.
                diesel::update(this_order)
                    .set((changes, orders::discount.eq(0), orders::points_paid.eq(0)))
                    .execute(c)
                    .await?
            } else {
                diesel::update(this_order).set(changes).execute(c).await?
            };
            if matched == 0 {
                return Err(ServiceError::internal(format!(
                    "order {order_id} is not {} as its saga expects",
                    from.as_str()
                )));
            }
        }
    }
    Ok(())
}
