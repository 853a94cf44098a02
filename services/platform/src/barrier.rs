//! The saga barrier: each participant records, in its own database and in the
//! same local transaction as the effect, which saga operations it applied.
//!
//! One row per `(saga_id, operation)`, written after the effect with its
//! result, gives:
//! - a repeated action or compensation replays the first result and changes
//!   nothing again;
//! - a compensation that arrives before (or without) its action succeeds as a
//!   no-op and writes a BLOCKED row for the action, so a late action is
//!   refused instead of applied (no "hanging" reservation);
//! - a failed action rolls back with its effect, so its compensation finds
//!   nothing to undo;
//! - fencing: each row keeps the lease fence its call came with, and a call
//!   whose fence is lower than the highest one recorded for its saga is
//!   refused (`SAGA_FENCE_STALE`), so an orchestrator instance that lost the
//!   saga to another cannot change this participant once the new holder's
//!   call has been seen here.
//!
//! A call costs one read of the saga's rows (replay, BLOCKED, fence) and one
//! insert after the effect. Two concurrent calls of one operation both miss
//! in the read; the second insert waits on the first's key, fails as a
//! duplicate once it commits, and the whole transaction is rolled back and
//! run again ([`ServiceError::Conflict`]), finding the first result to
//! replay. An effect that fails because a concurrent duplicate committed
//! first (a duplicate key of its own, or a refusal for what the duplicate
//! took), action or compensation, is rolled back and run again the same way.

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel_async::{AsyncMysqlConnection, RunQueryDsl};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::db::is_unique_violation;
use crate::error::{ServiceError, reason};
use crate::validate::{SagaCall, SagaId};

diesel::table! {
    saga_barrier (saga_id, operation) {
        saga_id -> Char,
        operation -> Varchar,
        state -> Varchar,
        fence -> BigInt,
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
    pub fence: i64,
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
/// refused with `SAGA_ALREADY_COMPENSATED`, a stale fence with
/// `SAGA_FENCE_STALE`.
pub async fn run_action<T, F>(
    conn: &mut AsyncMysqlConnection,
    call: &SagaCall,
    action: &'static str,
    effect: F,
) -> Result<T, ServiceError>
where
    T: Serialize + DeserializeOwned,
    F: AsyncFnOnce(&mut AsyncMysqlConnection) -> Result<T, ServiceError>,
{
    let seen = Seen::read(conn, call).await?;
    if let Some(row) = seen.row(action) {
        return answer_action(row, call, action);
    }
    let outcome = match effect(conn).await {
        Ok(outcome) => outcome,
        Err(failed) => return Err(raced(conn, call, action, failed).await?),
    };
    insert(conn, call, action, APPLIED, Some(&outcome)).await?;
    Ok(outcome)
}

/// Runs a saga compensation at most once. Call inside the transaction of the
/// undo: `undo` runs only when the action was applied; when it was not,
/// `nothing_applied` gives the result and the action is blocked for good.
pub async fn run_compensation<T, F>(
    conn: &mut AsyncMysqlConnection,
    call: &SagaCall,
    pair: SagaPair,
    nothing_applied: impl FnOnce() -> T,
    undo: F,
) -> Result<T, ServiceError>
where
    T: Serialize + DeserializeOwned,
    F: AsyncFnOnce(&mut AsyncMysqlConnection) -> Result<T, ServiceError>,
{
    let seen = Seen::read(conn, call).await?;
    if let Some(row) = seen.row(pair.compensation) {
        return replay(row);
    }
    let outcome = match seen.row(pair.action) {
        Some(_) => match undo(conn).await {
            Ok(outcome) => outcome,
            Err(failed) => return Err(raced(conn, call, pair.compensation, failed).await?),
        },
        None => {
            // A concurrent action commits first (and this insert then fails
            // as a duplicate: run again, and undo it) or never applies.
            insert::<()>(conn, call, pair.action, BLOCKED, None).await?;
            nothing_applied()
        }
    };
    insert(conn, call, pair.compensation, APPLIED, Some(&outcome)).await?;
    Ok(outcome)
}

/// The error to answer when `operation`'s effect failed with `failed`. A
/// concurrent repeat may have applied the operation since this call's read:
/// its effect then clashes with this one (a duplicate key) or took what this
/// one needed (a refusal), and it committed before this effect could fail.
/// Part of this effect may be written, so the transaction is rolled back and
/// run again ([`ServiceError::Conflict`]), and answers from the repeat's row.
async fn raced(
    conn: &mut AsyncMysqlConnection,
    call: &SagaCall,
    operation: &str,
    failed: ServiceError,
) -> Result<ServiceError, ServiceError> {
    if matches!(failed, ServiceError::Conflict(_)) {
        // A lost lock race: the whole transaction runs again anyway.
        return Ok(failed);
    }
    Ok(match load(conn, call, operation).await? {
        Some(_) => ServiceError::Conflict(format!(
            "saga {} `{operation}` was applied by a concurrent call",
            call.saga
        )),
        None => failed,
    })
}

/// A saga's barrier rows as this call found them.
struct Seen(Vec<BarrierRow>);

impl Seen {
    /// Reads the saga's rows and refuses the call when its fence is lower
    /// than one recorded for the saga.
    async fn read(conn: &mut AsyncMysqlConnection, call: &SagaCall) -> Result<Self, ServiceError> {
        let rows = saga_barrier::table
            .filter(saga_barrier::saga_id.eq(call.saga.as_str()))
            .select(BarrierRow::as_select())
            .load(conn)
            .await?;
        if let Some(newer) = rows
            .iter()
            .map(|r| r.fence)
            .max()
            .filter(|&f| f > call.fence)
        {
            return Err(ServiceError::rejected(
                reason::SAGA_FENCE_STALE,
                format!(
                    "saga {} is driven under fence {newer} now; a call with fence {} is refused",
                    call.saga, call.fence
                ),
            ));
        }
        Ok(Self(rows))
    }

    fn row(&self, operation: &str) -> Option<&BarrierRow> {
        self.0.iter().find(|r| r.operation == operation)
    }
}

/// The answer to an action that has a row already.
fn answer_action<T: DeserializeOwned>(
    row: &BarrierRow,
    call: &SagaCall,
    action: &str,
) -> Result<T, ServiceError> {
    if row.is_blocked() {
        return Err(ServiceError::rejected(
            reason::SAGA_ALREADY_COMPENSATED,
            format!(
                "saga {} was compensated before `{action}` arrived; refused",
                call.saga
            ),
        ));
    }
    replay(row)
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

/// Every saga's rows written at or after `since`, oldest first, at most
/// `limit` (the orchestrator's reconciliation pages through them).
pub async fn list_since(
    conn: &mut AsyncMysqlConnection,
    since: NaiveDateTime,
    limit: i64,
) -> Result<Vec<BarrierRow>, ServiceError> {
    Ok(saga_barrier::table
        .filter(saga_barrier::created_at.ge(since))
        .order((
            saga_barrier::created_at,
            saga_barrier::saga_id,
            saga_barrier::operation,
        ))
        .limit(limit)
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

/// Inserts a row with its result. A duplicate key means a concurrent call
/// of the same operation committed first: the transaction is rolled back
/// and run again, and finds that call's row.
async fn insert<T: Serialize>(
    conn: &mut AsyncMysqlConnection,
    call: &SagaCall,
    operation: &str,
    state: &str,
    outcome: Option<&T>,
) -> Result<(), ServiceError> {
    let response = outcome.map(serde_json::to_string).transpose()?;
    let inserted = diesel::insert_into(saga_barrier::table)
        .values((
            saga_barrier::saga_id.eq(call.saga.as_str()),
            saga_barrier::operation.eq(operation),
            saga_barrier::state.eq(state),
            saga_barrier::fence.eq(call.fence),
            saga_barrier::response_json.eq(response),
            saga_barrier::created_at.eq(crate::time::now()),
        ))
        .execute(conn)
        .await;
    match inserted {
        Ok(_) => {
            // Counted once the row is in: only the commit is left, and an
            // effect that failed rolled back before reaching here.
            metrics::counter!(
                crate::metrics::BARRIER_ROWS,
                "operation" => operation.to_owned(),
                "state" => if state == BLOCKED { "blocked" } else { "applied" },
            )
            .increment(1);
            Ok(())
        }
        Err(e) if is_unique_violation(&e) => Err(ServiceError::Conflict(format!(
            "saga {} `{operation}` was recorded by a concurrent call",
            call.saga
        ))),
        Err(e) => Err(e.into()),
    }
}

async fn load(
    conn: &mut AsyncMysqlConnection,
    call: &SagaCall,
    operation: &str,
) -> Result<Option<BarrierRow>, ServiceError> {
    // READ COMMITTED reads the latest commit: a duplicate that held the
    // locks the refused effect waited for has committed by now.
    Ok(saga_barrier::table
        .find((call.saga.as_str(), operation))
        .select(BarrierRow::as_select())
        .first(conn)
        .await
        .optional()?)
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
