//! Sagas and their append-only step log: recording, loading, fenced
//! progress writes, leases (claims by the recovery loop, an operator's
//! takeover) and the operators' listings.

use chrono::NaiveDateTime;
use commerce_platform::SagaId;
use commerce_platform::db::{PreparedExt, ScopedFutureExt};
use commerce_platform::error::ServiceError;
use commerce_platform::paging::PageRequest;
use commerce_platform::time::now;
use commerce_platform::trace_context::TraceHeaders;
use diesel::prelude::*;
use diesel_async::{AsyncMysqlConnection, RunQueryDsl};

use super::order_changes::{OrderChange, order_apply};
use super::rows::schema::{saga_log, sagas};
use super::rows::{LogRow, NewLogRow, Saga, SagaChanges, SagaRecord, SagaRow, to_i32};
use super::{Lease, OrderStore};
use crate::domain::saga::{LogEntry, SagaParams, SagaState, SagaWrite, Step};
use crate::executor::{Holder, SagaStore};

/// A saga to record, leased to its creator.
#[derive(Debug, Clone, Copy)]
pub struct NewSaga<'a> {
    pub id: &'a SagaId,
    pub params: &'a SagaParams,
    pub owner: &'a str,
    pub lease_until: NaiveDateTime,
    /// The trace of the request that starts it, continued by whoever
    /// drives it.
    pub trace: Option<&'a TraceHeaders>,
}

/// An operator's takeover of a saga, decided on the saga as it was read:
/// written only if the saga is still there (same state, step and attempts).
#[derive(Debug, Clone)]
pub struct TakeOver<'a> {
    pub saga_id: &'a SagaId,
    pub seen: &'a Saga,
    pub owner: &'a str,
    pub lease_until: NaiveDateTime,
    /// A forced turn-around: the event to log, and the saga's new state and
    /// reason.
    pub turn_around: Option<TurnAround>,
}

#[derive(Debug, Clone)]
pub struct TurnAround {
    pub entry: (Step, LogEntry),
    pub state: SagaState,
    pub reason: String,
}

/// The longest `tracestate` kept (its column); a longer one is dropped, as
/// W3C lets a hop do, never cut.
const TRACESTATE_MAX: usize = 512;

/// States a saga can still make progress from.
const UNFINISHED: [&str; 3] = ["RUNNING", "COMPENSATING", "STUCK"];

impl OrderStore {
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
                    let log = raw_log
                        .iter()
                        .map(LogEntry::try_from)
                        .collect::<Result<_, _>>()?;
                    Ok(SagaRecord {
                        saga: Saga::try_from(row)?,
                        log,
                        raw_log,
                    })
                }
                .scope_boxed()
            })
            .await
    }

    /// The saga alone (who holds it, in which state).
    pub async fn saga_get(&self, saga_id: &SagaId) -> Result<Saga, ServiceError> {
        self.db
            .read(|c| {
                async move {
                    sagas::table
                        .find(saga_id.as_str())
                        .select(SagaRow::as_select())
                        .first(c)
                        .await
                        .optional()?
                        .ok_or_else(|| ServiceError::not_found("saga", saga_id))?
                        .try_into()
                }
                .scope_boxed()
            })
            .await
    }

    /// Writes saga progress if `lease` is still current; `Ok(false)` when it
    /// is not. One transaction of its own, for tests of the fenced write;
    /// the executor's writes go through the group commit
    /// ([`super::group_commit`]).
    #[cfg(test)]
    pub async fn saga_write(
        &self,
        saga_id: &SagaId,
        order_id: &str,
        lease: &Lease,
        write: &SagaWrite<OrderChange>,
    ) -> Result<bool, ServiceError> {
        self.db
            .transaction(|c| saga_write_in(c, saga_id, order_id, lease, write).scope_boxed())
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

    /// Takes a saga for its new owner at once, whoever holds it, makes it
    /// due now (operator's retry), and logs a forced turn-around if one is
    /// given; the old holder's writes fail. `None` (nothing written) when
    /// the saga moved since `seen` was read.
    pub async fn saga_take_over(&self, take: &TakeOver<'_>) -> Result<Option<Lease>, ServiceError> {
        let saga_id = take.saga_id;
        self.db
            .transaction(|c| {
                async move {
                    let (state, current_step, attempts): (String, i32, i32) = sagas::table
                        .find(saga_id.as_str())
                        .select((sagas::state, sagas::current_step, sagas::attempts))
                        .for_update()
                        .first(c)
                        .await
                        .optional()?
                        .ok_or_else(|| ServiceError::not_found("saga", saga_id))?;
                    let seen = take.seen;
                    if (state.as_str(), current_step, attempts)
                        != (seen.state.as_str(), seen.current_step, seen.attempts)
                    {
                        return Ok(None);
                    }
                    if let Some(turn) = &take.turn_around {
                        log_insert(c, saga_id, std::slice::from_ref(&turn.entry)).await?;
                        diesel::update(sagas::table.find(saga_id.as_str()))
                            .set((
                                sagas::state.eq(turn.state.as_str()),
                                sagas::reason.eq(&turn.reason),
                            ))
                            .execute(c)
                            .await?;
                    }
                    diesel::update(sagas::table.find(saga_id.as_str()))
                        .set((sagas::next_attempt_at.eq(now()), sagas::attempts.eq(0)))
                        .execute(c)
                        .await?;
                    let mut leases = lease_take(
                        c,
                        &[saga_id.as_str().to_owned()],
                        take.owner,
                        take.lease_until,
                    )
                    .await?;
                    leases
                        .pop()
                        .map(|(_, lease)| Some(lease))
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
    ) -> Result<Vec<Saga>, ServiceError> {
        let states: Vec<&str> = states.iter().map(|s| s.as_str()).collect();
        self.db
            .read(|c| {
                async move {
                    let rows: Vec<SagaRow> = sagas::table
                        .filter(sagas::state.eq_any(states))
                        .filter(sagas::created_at.le(created_before))
                        .order((sagas::created_at, sagas::id))
                        .limit(page.limit())
                        .offset(page.offset())
                        .select(SagaRow::as_select())
                        .load(c)
                        .await?;
                    rows.into_iter().map(Saga::try_from).collect()
                }
                .scope_boxed()
            })
            .await
    }

    /// Number of unfinished sagas (RUNNING, COMPENSATING, STUCK) per state:
    /// a range of the state index, whatever the number of finished ones.
    pub async fn sagas_unfinished_counts(&self) -> Result<Vec<(SagaState, i64)>, ServiceError> {
        let unfinished = SagaState::ALL
            .into_iter()
            .filter(|s| !s.is_finished())
            .map(SagaState::as_str)
            .collect::<Vec<_>>();
        self.db
            .read(|c| {
                async move {
                    let rows: Vec<(String, i64)> = sagas::table
                        .filter(sagas::state.eq_any(unfinished))
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

/// One fenced write of saga progress inside the caller's transaction:
/// `Ok(false)`, with nothing written, when `lease` is no longer current.
pub(super) async fn saga_write_in(
    c: &mut AsyncMysqlConnection,
    saga_id: &SagaId,
    order_id: &str,
    lease: &Lease,
    write: &SagaWrite<OrderChange>,
) -> Result<bool, ServiceError> {
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
        .prepared()
        .execute(c)
        .await?;
    if matched == 0 {
        return Ok(false);
    }
    log_insert(c, saga_id, &write.entries).await?;
    order_apply(c, order_id, &write.changes).await?;
    Ok(true)
}

/// Records a new saga, RUNNING and leased to its creator.
pub(super) async fn saga_insert(
    c: &mut AsyncMysqlConnection,
    saga: &NewSaga<'_>,
) -> Result<Lease, ServiceError> {
    let NewSaga {
        id: saga_id,
        params,
        owner,
        lease_until,
        trace,
    } = *saga;
    let params_json = serde_json::to_string(params)?;
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
            sagas::traceparent.eq(trace.map(|t| t.traceparent.as_str())),
            sagas::tracestate.eq(trace
                .and_then(|t| t.tracestate.as_deref())
                .filter(|state| state.len() <= TRACESTATE_MAX)),
        ))
        .execute(c)
        .await?;
    Ok(Lease {
        owner: owner.to_owned(),
        fence: 1,
    })
}

/// Appends log events; an event already logged is kept as it was (the
/// unique key makes a retried write harmless). A multi-row insert of varying
/// size is prepared and closed at every call, so the rows go in chunks of 8,
/// 4, 2 or 1, a short chunk padded with repeats of its smallest row (which
/// the unique key ignores): a handful of statement shapes, each prepared once
/// per connection, and one statement for a saga's last write of six events.
async fn log_insert(
    c: &mut AsyncMysqlConnection,
    saga_id: &SagaId,
    entries: &[(Step, LogEntry)],
) -> Result<(), ServiceError> {
    let mut rows = entries
        .iter()
        .map(|(step, entry)| NewLogRow::new(saga_id.as_str(), *step, entry))
        .collect::<Result<Vec<_>, ServiceError>>()?;
    while !rows.is_empty() {
        let real = rows.len().min(8);
        let size = real.next_power_of_two();
        if let Some(filler) = rows[..real].iter().min_by_key(|r| r.payload_len()).cloned() {
            rows.splice(real..real, std::iter::repeat_n(filler, size - real));
        }
        match size {
            8 => log_chunk::<8>(c, &mut rows).await?,
            4 => log_chunk::<4>(c, &mut rows).await?,
            2 => log_chunk::<2>(c, &mut rows).await?,
            _ => log_chunk::<1>(c, &mut rows).await?,
        }
    }
    Ok(())
}

/// Inserts the first `N` of `rows` with one cacheable statement (an array
/// has a static shape) and removes them.
async fn log_chunk<const N: usize>(
    c: &mut AsyncMysqlConnection,
    rows: &mut Vec<NewLogRow>,
) -> Result<(), ServiceError> {
    let chunk: [NewLogRow; N] = rows
        .drain(..N)
        .collect::<Vec<_>>()
        .try_into()
        .map_err(|_| ServiceError::internal("log chunk of the wrong size"))?;
    diesel::insert_or_ignore_into(saga_log::table)
        .values(chunk)
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

/// The executor's view of the store.
impl SagaStore<OrderChange> for OrderStore {
    async fn saga_log(&self, saga: &SagaId) -> Result<(SagaParams, Vec<LogEntry>), ServiceError> {
        let record = self.saga_load(saga).await?;
        Ok((record.saga.params, record.log))
    }

    async fn saga_progress(
        &self,
        saga: &SagaId,
        params: &SagaParams,
        lease: &Lease,
        write: &SagaWrite<OrderChange>,
    ) -> Result<bool, ServiceError> {
        let written = self
            .log_writer
            .write(saga, params.order_id(), lease, write)
            .await?;
        if written
            && write
                .changes
                .iter()
                .any(|c| matches!(c, OrderChange::Transition { .. }))
        {
            self.outbox_written.notify_one();
        }
        Ok(written)
    }

    async fn saga_holder(&self, saga: &SagaId) -> Result<Holder, ServiceError> {
        let saga = self.saga_get(saga).await?;
        Ok(Holder {
            owner: saga.lease_owner.unwrap_or_default(),
            fence: saga.fence,
            state: saga.state.as_str(),
        })
    }
}
