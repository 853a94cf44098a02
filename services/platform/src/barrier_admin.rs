//! `commerce.saga.v1.SagaBarrierService`: operators' view of the barrier,
//! served by every saga participant.

use std::time::Duration;

use commerce_proto::saga::v1 as pb;
use commerce_proto::saga::v1::saga_barrier_service_server::{
    SagaBarrierService, SagaBarrierServiceServer,
};
use tonic::{Request, Response, Status};

use crate::barrier::{self, BarrierRow};
use crate::db::{Database, ScopedFutureExt};
use crate::error::ServiceError;
use crate::validate::{SagaId, in_range};

pub struct BarrierAdmin {
    database: Database,
}

impl BarrierAdmin {
    pub const SERVICE_NAME: &'static str =
        <SagaBarrierServiceServer<BarrierAdmin> as tonic::server::NamedService>::NAME;

    pub fn new(database: Database) -> Self {
        Self { database }
    }

    pub fn into_server(self) -> SagaBarrierServiceServer<Self> {
        SagaBarrierServiceServer::new(self)
    }
}

/// The youngest barrier rows a purge may delete. A row is what stops a late
/// action (a call still in flight when its saga was compensated, or sent by
/// an orchestrator that lost its lease) from applying to a saga that was
/// already compensated, or a repeat from applying twice. Such calls arrive
/// within a call deadline plus a lease: seconds to minutes. A day is far
/// beyond that horizon, so purging younger rows is refused.
pub const MIN_RETENTION: Duration = Duration::from_secs(24 * 3600);

/// Rows one window listing returns at most.
const MAX_LISTED: i64 = 1000;

/// The oldest cutoff a purge accepts: a century, well inside DATETIME.
pub const MAX_RETENTION: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Deletes up to `limit` barrier rows older than `age`, which must lie in
/// `MIN_RETENTION..=MAX_RETENTION`.
pub async fn purge_older_than(
    database: &Database,
    age: Duration,
    limit: i64,
) -> Result<u64, ServiceError> {
    let age_secs = i64::try_from(age.as_secs()).unwrap_or(i64::MAX);
    let age = retention("older_than_seconds", age_secs)?;
    let cutoff = crate::time::now()
        .checked_sub_signed(age)
        .ok_or_else(|| ServiceError::invalid("older_than_seconds", "is too large"))?;
    let purged = database
        .read(|c| barrier::purge(c, cutoff, limit).scope_boxed())
        .await?;
    metrics::counter!(crate::metrics::BARRIER_PURGED).increment(purged);
    Ok(purged)
}

/// Checks a retention in seconds against [`MIN_RETENTION`] and
/// [`MAX_RETENTION`].
pub fn retention(field: &str, seconds: i64) -> Result<chrono::Duration, ServiceError> {
    let (min, max) = (MIN_RETENTION.as_secs(), MAX_RETENTION.as_secs());
    match u64::try_from(seconds) {
        Ok(s) if s < min => Err(ServiceError::invalid(
            field,
            format!(
                "must be at least {min} seconds: younger barrier rows may still have to stop a late saga call"
            ),
        )),
        Ok(s) if s <= max => Ok(chrono::Duration::seconds(seconds)),
        _ => Err(ServiceError::invalid(
            field,
            format!("must be between {min} and {max} seconds, got {seconds}"),
        )),
    }
}

fn to_proto(row: BarrierRow) -> pb::BarrierEntry {
    let state = if row.is_blocked() {
        pb::BarrierState::Blocked
    } else {
        pb::BarrierState::Applied
    };
    pb::BarrierEntry {
        saga_id: row.saga_id,
        operation: row.operation,
        state: state.into(),
        response_json: row.response_json.unwrap_or_default(),
        created_at: Some(crate::time::to_proto(row.created_at)),
    }
}

#[tonic::async_trait]
impl SagaBarrierService for BarrierAdmin {
    async fn list_barriers(
        &self,
        request: Request<pb::ListBarriersRequest>,
    ) -> Result<Response<pb::ListBarriersResponse>, Status> {
        let request = request.into_inner();
        let rows = if request.saga_id.is_empty() && request.created_after.is_some() {
            let since = crate::time::from_proto("created_after", request.created_after)?;
            let limit = in_range("limit", i64::from(request.limit), 1, MAX_LISTED)?;
            self.database
                .read(|c| barrier::list_since(c, since, limit).scope_boxed())
                .await?
        } else {
            let saga = SagaId::parse("saga_id", &request.saga_id)?;
            self.database
                .read(|c| barrier::list(c, &saga).scope_boxed())
                .await?
        };
        Ok(Response::new(pb::ListBarriersResponse {
            entries: rows.into_iter().map(to_proto).collect(),
        }))
    }

    async fn purge_barriers(
        &self,
        request: Request<pb::PurgeBarriersRequest>,
    ) -> Result<Response<pb::PurgeBarriersResponse>, Status> {
        let request = request.into_inner();
        retention("older_than_seconds", request.older_than_seconds)?;
        let limit = match request.limit {
            0 => 10_000,
            limit => in_range("limit", i64::from(limit), 1, 100_000)?,
        };
        let age = Duration::from_secs(request.older_than_seconds.unsigned_abs());
        let purged = purge_older_than(&self.database, age, limit).await?;
        Ok(Response::new(pb::PurgeBarriersResponse {
            purged: i64::try_from(purged).unwrap_or(i64::MAX),
        }))
    }
}
