//! The orchestrator's tables as Diesel sees them, their rows, and the
//! typed values read from them. No queries here.

use chrono::NaiveDateTime;
use commerce_platform::error::ServiceError;
use commerce_platform::time::now;
use commerce_platform::trace_context::TraceHeaders;
use diesel::prelude::*;

use crate::domain::order::{OrderState, PlaceOrder, SnapshotLine};
use crate::domain::saga::{
    Direction, LogEntry, Outcome, Rejection, SagaParams, SagaState, Step, StepOutput,
};

/// The orchestrator's tables.
pub mod schema {
    diesel::table! {
        orders (id) {
            id -> Char,
            user_id -> Varchar,
            idempotency_key -> Varchar,
            request_json -> Text,
            state -> Varchar,
            user_coupon_id -> Nullable<BigInt>,
            lines_json -> Mediumtext,
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
            traceparent -> Nullable<Varchar>,
            tracestate -> Nullable<Varchar>,
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

    diesel::table! {
        outbox (id) {
            id -> BigInt,
            event_id -> Char,
            order_id -> Char,
            kind -> Varchar,
            occurred_at -> Datetime,
            published_at -> Nullable<Datetime>,
            claimed_by -> Nullable<Varchar>,
            claim_until -> Nullable<Datetime>,
        }
    }

    diesel::joinable!(outbox -> orders (order_id));
    diesel::allow_tables_to_appear_in_same_query!(orders, outbox);
}

use schema::{orders, saga_log, sagas};

// None is written as NULL, not DEFAULT: an insert that may write DEFAULT is
// never a cached prepared statement.
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = orders, treat_none_as_default_value = false)]
pub struct OrderRow {
    pub id: String,
    pub user_id: String,
    pub idempotency_key: String,
    pub request_json: String,
    pub state: String,
    pub user_coupon_id: Option<i64>,
    /// The lines ([`OrderLineRow`]s) as one JSON array.
    pub lines_json: String,
    pub subtotal: i64,
    pub discount: i64,
    pub points_paid: i64,
    pub reason: String,
    pub reason_message: String,
    pub saga_id: String,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
}

/// One line of an order, as stored in its row's `lines_json`: as requested,
/// then with the snapshot of its reservation.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OrderLineRow {
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
    pub fn pending(
        order_id: &str,
        request: &PlaceOrder,
        fingerprint: &str,
        saga_id: &str,
    ) -> Result<Self, ServiceError> {
        let at = now();
        let lines: Vec<OrderLineRow> = request
            .lines
            .iter()
            .map(|l| OrderLineRow::requested(l.product_id, l.quantity))
            .collect();
        Ok(Self {
            id: order_id.to_owned(),
            user_id: request.user.to_string(),
            idempotency_key: request.idempotency_key.as_str().to_owned(),
            request_json: fingerprint.to_owned(),
            state: OrderState::Pending.as_str().to_owned(),
            user_coupon_id: request.user_coupon_id,
            lines_json: OrderLineRow::to_json(&lines)?,
            subtotal: 0,
            discount: 0,
            points_paid: 0,
            reason: String::new(),
            reason_message: String::new(),
            saga_id: saga_id.to_owned(),
            created_at: at,
            updated_at: at,
        })
    }
}

impl OrderLineRow {
    /// A line as requested, before its stock is reserved.
    pub fn requested(product_id: i64, quantity: i64) -> Self {
        Self {
            product_id,
            quantity,
            product_name: None,
            brand_id: None,
            brand_name: None,
            unit_price: None,
        }
    }

    /// A line with the snapshot of its reservation.
    pub fn snapshot(line: &SnapshotLine) -> Self {
        Self {
            product_id: line.product_id,
            quantity: line.quantity,
            product_name: Some(line.product_name.clone()),
            brand_id: Some(line.brand_id),
            brand_name: Some(line.brand_name.clone()),
            unit_price: Some(line.unit_price),
        }
    }
}

impl OrderLineRow {
    /// Lines as stored, in product-id order.
    pub fn to_json(lines: &[OrderLineRow]) -> Result<String, ServiceError> {
        let mut lines = lines.to_vec();
        lines.sort_by_key(|l| l.product_id);
        Ok(serde_json::to_string(&lines)?)
    }
}

/// An order with its lines.
#[derive(Debug, Clone)]
pub struct OrderRecord {
    pub order: OrderRow,
    pub lines: Vec<OrderLineRow>,
}

impl OrderRecord {
    /// The order with its lines read from its row.
    pub fn from_row(order: OrderRow) -> Result<Self, ServiceError> {
        let mut lines: Vec<OrderLineRow> = serde_json::from_str(&order.lines_json)?;
        lines.sort_by_key(|l| l.product_id);
        Ok(Self { order, lines })
    }

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
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
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

/// A saga as stored, read into typed values (what the engine and the wire
/// conversion see; `params_json` is read here and nowhere else).
#[derive(Debug, Clone)]
pub struct Saga {
    pub id: String,
    pub params: SagaParams,
    pub state: SagaState,
    /// Index into the saga's steps of the step it is at.
    pub current_step: i32,
    pub attempts: i32,
    pub reason: String,
    pub next_attempt_at: NaiveDateTime,
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<NaiveDateTime>,
    pub fence: i64,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
    /// The trace the saga started in, continued by whoever drives it.
    pub trace: Option<TraceHeaders>,
}

impl TryFrom<SagaRow> for Saga {
    type Error = ServiceError;

    fn try_from(row: SagaRow) -> Result<Self, ServiceError> {
        Ok(Self {
            params: serde_json::from_str(&row.params_json)?,
            state: SagaState::parse(&row.state)?,
            id: row.id,
            current_step: row.current_step,
            attempts: row.attempts,
            reason: row.reason,
            next_attempt_at: row.next_attempt_at,
            lease_owner: row.lease_owner,
            lease_expires_at: row.lease_expires_at,
            fence: row.fence,
            created_at: row.created_at,
            updated_at: row.updated_at,
            trace: row.traceparent.map(|traceparent| TraceHeaders {
                traceparent,
                tracestate: row.tracestate,
            }),
        })
    }
}

impl Saga {
    /// The step the saga is at, if its index names one.
    pub fn current(&self) -> Option<Step> {
        usize::try_from(self.current_step)
            .ok()
            .and_then(|i| crate::sagas::steps(&self.params).get(i).map(|s| s.action))
    }
}

/// A saga and its log: typed for the engine, as stored for operators.
#[derive(Debug, Clone)]
pub struct SagaRecord {
    pub saga: Saga,
    pub log: Vec<LogEntry>,
    pub raw_log: Vec<LogRow>,
}

/// What a fenced saga write changes (a `None` reason keeps the stored one).
#[derive(AsChangeset)]
#[diesel(table_name = sagas)]
pub(super) struct SagaChanges<'a> {
    pub state: &'a str,
    pub current_step: i32,
    pub attempts: i32,
    pub reason: Option<&'a str>,
    pub next_attempt_at: NaiveDateTime,
    pub lease_expires_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
}

/// One log event as stored.
#[derive(Clone, Insertable)]
#[diesel(table_name = saga_log, treat_none_as_default_value = false)]
pub(super) struct NewLogRow {
    saga_id: String,
    step: i32,
    step_name: &'static str,
    direction: &'static str,
    attempt: i32,
    outcome: &'static str,
    response_json: Option<String>,
    error: Option<String>,
    created_at: NaiveDateTime,
}

impl NewLogRow {
    /// The bytes its text columns send.
    pub(super) fn payload_len(&self) -> usize {
        self.response_json.as_ref().map_or(0, String::len)
            + self.error.as_ref().map_or(0, String::len)
    }

    /// The row of one event: one `error` column holds a rejection as
    /// [`Rejection::to_stored`] writes it, or a failure's detail.
    pub fn new(saga_id: &str, step: Step, entry: &LogEntry) -> Result<Self, ServiceError> {
        Ok(Self {
            saga_id: saga_id.to_owned(),
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
                .rejection
                .as_ref()
                .map(Rejection::to_stored)
                .or_else(|| entry.error.clone())
                .map(|e| e.chars().take(1000).collect::<String>()),
            // As the engine saw it: the retry budget reads it back.
            created_at: entry.at,
        })
    }
}

impl TryFrom<&LogRow> for LogEntry {
    type Error = ServiceError;

    /// Reads any row ever written: a REJECTED row's `error` is its rejection.
    fn try_from(row: &LogRow) -> Result<Self, ServiceError> {
        let outcome = Outcome::parse(&row.outcome)?;
        let (rejection, error) = match outcome {
            Outcome::Rejected => (row.error.as_deref().map(Rejection::from_stored), None),
            _ => (None, row.error.clone()),
        };
        Ok(LogEntry {
            step: usize::try_from(row.step).map_err(|_| ServiceError::internal("negative step"))?,
            direction: Direction::parse(&row.direction)?,
            attempt: u32::try_from(row.attempt)
                .map_err(|_| ServiceError::internal("negative attempt"))?,
            outcome,
            output: row
                .response_json
                .as_deref()
                .map(serde_json::from_str::<StepOutput>)
                .transpose()?,
            rejection,
            error,
            at: row.created_at,
        })
    }
}

pub(super) fn to_i32(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}
