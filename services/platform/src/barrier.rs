//! The saga barrier: each participant records, in its own database and in the
//! same local transaction as the effect, which saga operations it applied.
//!
//! With one insert per call keyed `(saga_id, operation)` this gives:
//! - a repeated action or compensation replays the first result and changes
//!   nothing again;
//! - a compensation that arrives before (or without) its action succeeds as a
//!   no-op and writes a BLOCKED row for the action, so a late action is
//!   refused instead of applied (no "hanging" reservation);
//! - a failed action rolls back with its barrier row, so its compensation
//!   finds nothing to undo.
//!
//! Concurrent calls for one saga serialise on the primary key: the second
//! insert waits for the first transaction and then sees its outcome.

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel_async::{AsyncMysqlConnection, RunQueryDsl};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::db::is_unique_violation;
use crate::error::{ServiceError, reason};
use crate::validate::SagaId;

diesel::table! {
    saga_barrier (saga_id, operation) {
        saga_id -> Char,
        operation -> Varchar,
        state -> Varchar,
        response_json -> Nullable<Mediumtext>,
        created_at -> Datetime,
    }
}

/// An action and the compensation that undoes it. The names are persisted:
/// never rename one that a barrier row may hold.
#[derive(Debug, Clone, Copy)]
pub struct SagaPair {
    pub action: &'static str,
    pub compensation: &'static str,
}

const APPLIED: &str = "APPLIED";
const BLOCKED: &str = "BLOCKED";

/// One barrier row, for operators.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = saga_barrier)]
pub struct BarrierRow {
    pub saga_id: String,
    pub operation: String,
    pub state: String,
    pub response_json: Option<String>,
    pub created_at: NaiveDateTime,
}

impl BarrierRow {
    pub fn is_blocked(&self) -> bool {
        self.state == BLOCKED
    }
}

/// Runs a saga action at most once. Call inside the transaction of the
/// effect: `effect` runs only on the first call, and its result is stored and
/// replayed to every repeat. An action whose compensation already ran is
/// refused with `SAGA_ALREADY_COMPENSATED`.
pub async fn run_action<T, F>(
    conn: &mut AsyncMysqlConnection,
    saga: &SagaId,
    action: &'static str,
    effect: F,
) -> Result<T, ServiceError>
where
    T: Serialize + DeserializeOwned,
    F: AsyncFnOnce(&mut AsyncMysqlConnection) -> Result<T, ServiceError>,
{
    if !try_insert(conn, saga, action, APPLIED).await? {
        let row = load(conn, saga, action).await?;
        if row.is_blocked() {
            return Err(ServiceError::rejected(
                reason::SAGA_ALREADY_COMPENSATED,
                format!("saga {saga} was compensated before `{action}` arrived; refused"),
            ));
        }
        return replay(&row);
    }
    let outcome = effect(conn).await?;
    record(conn, saga, action, &outcome).await?;
    Ok(outcome)
}

/// Runs a saga compensation at most once. Call inside the transaction of the
/// undo: `undo` runs only when the action was applied; when it was not,
/// `nothing_applied` gives the result and the action is blocked for good.
pub async fn run_compensation<T, F>(
    conn: &mut AsyncMysqlConnection,
    saga: &SagaId,
    pair: SagaPair,
    nothing_applied: impl FnOnce() -> T,
    undo: F,
) -> Result<T, ServiceError>
where
    T: Serialize + DeserializeOwned,
    F: AsyncFnOnce(&mut AsyncMysqlConnection) -> Result<T, ServiceError>,
{
    if !try_insert(conn, saga, pair.compensation, APPLIED).await? {
        return replay(&load(conn, saga, pair.compensation).await?);
    }
    let outcome = if try_insert(conn, saga, pair.action, BLOCKED).await? {
        nothing_applied()
    } else {
        undo(conn).await?
    };
    record(conn, saga, pair.compensation, &outcome).await?;
    Ok(outcome)
}

/// The barrier rows of one saga, oldest first.
pub async fn list(
    conn: &mut AsyncMysqlConnection,
    saga: &SagaId,
) -> Result<Vec<BarrierRow>, ServiceError> {
    Ok(saga_barrier::table
        .filter(saga_barrier::saga_id.eq(saga.as_str()))
        .order((saga_barrier::created_at, saga_barrier::operation))
        .select(BarrierRow::as_select())
        .load(conn)
        .await?)
}

/// Deletes up to `limit` rows written before `cutoff`; returns how many.
pub async fn purge(
    conn: &mut AsyncMysqlConnection,
    cutoff: NaiveDateTime,
    limit: i64,
) -> Result<u64, ServiceError> {
    // MySQL cannot LIMIT a multi-column-key DELETE through diesel's DSL.
    let deleted = diesel::sql_query(
        "DELETE FROM saga_barrier WHERE created_at < ? ORDER BY created_at LIMIT ?",
    )
    .bind::<diesel::sql_types::Datetime, _>(cutoff)
    .bind::<diesel::sql_types::BigInt, _>(limit)
    .execute(conn)
    .await?;
    Ok(deleted as u64)
}

/// Inserts a row; false when the key exists already.
async fn try_insert(
    conn: &mut AsyncMysqlConnection,
    saga: &SagaId,
    operation: &str,
    state: &str,
) -> Result<bool, ServiceError> {
    let inserted = diesel::insert_into(saga_barrier::table)
        .values((
            saga_barrier::saga_id.eq(saga.as_str()),
            saga_barrier::operation.eq(operation),
            saga_barrier::state.eq(state),
            saga_barrier::created_at.eq(crate::time::now()),
        ))
        .execute(conn)
        .await;
    match inserted {
        Ok(_) => Ok(true),
        // MySQL rolls back only the failed statement, not the transaction.
        Err(e) if is_unique_violation(&e) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

async fn load(
    conn: &mut AsyncMysqlConnection,
    saga: &SagaId,
    operation: &str,
) -> Result<BarrierRow, ServiceError> {
    // The failed insert waited for the row's writer to commit, and READ
    // COMMITTED reads the latest commit. No locking read: concurrent repeats
    // all hold shared locks from their duplicate-key checks, and upgrading
    // them would deadlock.
    Ok(saga_barrier::table
        .find((saga.as_str(), operation))
        .select(BarrierRow::as_select())
        .first(conn)
        .await?)
}

async fn record<T: Serialize>(
    conn: &mut AsyncMysqlConnection,
    saga: &SagaId,
    operation: &str,
    outcome: &T,
) -> Result<(), ServiceError> {
    let json = serde_json::to_string(outcome)?;
    diesel::update(saga_barrier::table.find((saga.as_str(), operation)))
        .set(saga_barrier::response_json.eq(json))
        .execute(conn)
        .await?;
    Ok(())
}

fn replay<T: DeserializeOwned>(row: &BarrierRow) -> Result<T, ServiceError> {
    let json = row.response_json.as_deref().ok_or_else(|| {
        ServiceError::internal(format!(
            "barrier row {}/{} has no recorded result",
            row.saga_id, row.operation
        ))
    })?;
    Ok(serde_json::from_str(json)?)
}
