//! Thin gRPC handlers: wire types in, one engine or store call, wire types
//! out. Errors convert to `tonic::Status` in the platform's single mapping.

use std::sync::Arc;
use std::time::Duration;

use commerce_platform::error::ServiceError;
use commerce_platform::paging::PageRequest;
use commerce_platform::time::{now, to_proto};
use commerce_platform::tls::Identity;
use commerce_platform::validate::in_range;
use commerce_platform::{SagaId, UserId};
use commerce_proto::order::v1 as pb;
use commerce_proto::order::v1::order_service_server::OrderService;
use commerce_proto::order::v1::saga_admin_service_server::SagaAdminService;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

use crate::domain::order::{OrderEvent, OrderState, PlaceOrder, ReadScope, Reader};
use crate::domain::saga::{Direction, Outcome, SagaKind, SagaState};
use crate::engine::Engine;
use crate::reconcile::Reconciler;
use crate::store::{LogRow, OrderRecord, Saga};

/// Answers are sent this long before the caller's deadline.
const DEADLINE_MARGIN: Duration = Duration::from_millis(50);

#[derive(Clone)]
pub struct OrderApi {
    engine: Arc<Engine>,
    /// How long PlaceOrder/CancelOrder wait for the outcome when the caller
    /// sets no deadline.
    default_wait: Duration,
}

impl OrderApi {
    pub fn new(engine: Arc<Engine>, default_wait: Duration) -> Self {
        Self {
            engine,
            default_wait,
        }
    }

    /// Within the caller's deadline (`grpc-timeout`), never past ours.
    fn wait(&self, metadata: &MetadataMap) -> Duration {
        caller_timeout(metadata)
            .map(|t| t.saturating_sub(DEADLINE_MARGIN))
            .map_or(self.default_wait, |t| t.min(self.default_wait))
    }
}

/// Parses the `grpc-timeout` header ("100m", "5S", ...).
fn caller_timeout(metadata: &MetadataMap) -> Option<Duration> {
    let raw = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = raw.split_at(raw.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

fn order_id(raw: &str) -> Result<String, ServiceError> {
    // Order ids share the saga id format (a UUID).
    Ok(SagaId::parse("order_id", raw)?.to_string())
}

/// The identity the operators' certificates name.
const OPERATOR: &str = "operator";

/// Who reads, from the caller's identity (put in the request's extensions
/// by the authorization layer): an operator, or anyone else. A plaintext
/// server has no identities, so its callers all read for a user.
pub fn reader_of<T>(request: &Request<T>) -> Reader {
    match request.extensions().get::<Identity>() {
        Some(caller) if caller.as_str() == OPERATOR => Reader::Operator,
        _ => Reader::ForUser,
    }
}

fn order_state(state: OrderState) -> pb::OrderState {
    match state {
        OrderState::Pending => pb::OrderState::Pending,
        OrderState::Confirmed => pb::OrderState::Confirmed,
        OrderState::Rejected => pb::OrderState::Rejected,
        OrderState::Cancelling => pb::OrderState::Cancelling,
        OrderState::Cancelled => pb::OrderState::Cancelled,
        OrderState::Shipped => pb::OrderState::Shipped,
        OrderState::Delivered => pb::OrderState::Delivered,
    }
}

/// The wire form of an order and its lines.
fn order_to_proto(record: OrderRecord) -> Result<pb::Order, ServiceError> {
    let state = record.state()?;
    let o = record.order;
    Ok(pb::Order {
        order_id: o.id,
        user_id: o.user_id,
        state: order_state(state).into(),
        lines: record
            .lines
            .into_iter()
            .map(|l| {
                let unit_price = l.unit_price.unwrap_or(0);
                pb::OrderLine {
                    product_id: l.product_id,
                    quantity: l.quantity,
                    product_name: l.product_name.unwrap_or_default(),
                    brand_id: l.brand_id.unwrap_or(0),
                    brand_name: l.brand_name.unwrap_or_default(),
                    unit_price,
                    line_total: unit_price.saturating_mul(l.quantity),
                }
            })
            .collect(),
        user_coupon_id: o.user_coupon_id,
        subtotal: o.subtotal,
        discount: o.discount,
        points_paid: o.points_paid,
        reason: o.reason,
        reason_message: o.reason_message,
        saga_id: o.saga_id,
        created_at: Some(to_proto(o.created_at)),
        updated_at: Some(to_proto(o.updated_at)),
    })
}

#[tonic::async_trait]
impl OrderService for OrderApi {
    #[tracing::instrument(skip_all, fields(user_id = %request.get_ref().user_id))]
    async fn place_order(
        &self,
        request: Request<pb::PlaceOrderRequest>,
    ) -> Result<Response<pb::Order>, Status> {
        let wait = self.wait(request.metadata());
        let r = request.into_inner();
        let order = PlaceOrder::parse(
            &r.user_id,
            r.lines.iter().map(|l| (l.product_id, l.quantity)),
            r.user_coupon_id,
            &r.idempotency_key,
        )?;
        let record = self.engine.place_order(order, wait).await?;
        Ok(Response::new(order_to_proto(record)?))
    }

    async fn get_order(
        &self,
        request: Request<pb::GetOrderRequest>,
    ) -> Result<Response<pb::Order>, Status> {
        let reader = reader_of(&request);
        let r = request.into_inner();
        let id = order_id(&r.order_id)?;
        let scope = ReadScope::parse(reader, &r.user_id)?;
        let record = self.engine.get_order(&id, &scope).await?;
        Ok(Response::new(order_to_proto(record)?))
    }

    async fn list_orders(
        &self,
        request: Request<pb::ListOrdersRequest>,
    ) -> Result<Response<pb::ListOrdersResponse>, Status> {
        let r = request.into_inner();
        let user = UserId::parse("user_id", &r.user_id)?;
        let page = PageRequest::parse(r.page, r.size)?;
        let (records, total) = self.engine.store().orders_list(&user, page).await?;
        Ok(Response::new(pb::ListOrdersResponse {
            orders: records
                .into_iter()
                .map(order_to_proto)
                .collect::<Result<_, _>>()?,
            page: page.page,
            size: page.size,
            total,
        }))
    }

    #[tracing::instrument(skip_all, fields(order_id = %request.get_ref().order_id))]
    async fn cancel_order(
        &self,
        request: Request<pb::CancelOrderRequest>,
    ) -> Result<Response<pb::Order>, Status> {
        let wait = self.wait(request.metadata());
        let r = request.into_inner();
        let id = order_id(&r.order_id)?;
        let user = UserId::parse("user_id", &r.user_id)?;
        let record = self.engine.cancel_order(&id, &user, wait).await?;
        Ok(Response::new(order_to_proto(record)?))
    }

    async fn mark_shipped(
        &self,
        request: Request<pb::OrderRef>,
    ) -> Result<Response<pb::Order>, Status> {
        let id = order_id(&request.into_inner().order_id)?;
        let record = self
            .engine
            .store()
            .order_transition(&id, OrderEvent::Ship)
            .await?;
        Ok(Response::new(order_to_proto(record)?))
    }

    async fn mark_delivered(
        &self,
        request: Request<pb::OrderRef>,
    ) -> Result<Response<pb::Order>, Status> {
        let id = order_id(&request.into_inner().order_id)?;
        let record = self
            .engine
            .store()
            .order_transition(&id, OrderEvent::Deliver)
            .await?;
        Ok(Response::new(order_to_proto(record)?))
    }
}

/// The operators' service.
#[derive(Clone)]
pub struct SagaAdminApi {
    engine: Arc<Engine>,
    /// The order event stream the relay publishes to (for GetOutbox).
    stream: String,
    reconciler: Reconciler,
}

impl SagaAdminApi {
    pub fn new(engine: Arc<Engine>, stream: String, reconciler: Reconciler) -> Self {
        Self {
            engine,
            stream,
            reconciler,
        }
    }

    async fn saga(&self, saga_id: &SagaId) -> Result<pb::Saga, ServiceError> {
        saga_to_proto(self.engine.store().saga_get(saga_id).await?)
    }
}

fn saga_state(state: SagaState) -> pb::SagaState {
    match state {
        SagaState::Running => pb::SagaState::Running,
        SagaState::Compensating => pb::SagaState::Compensating,
        SagaState::Completed => pb::SagaState::Completed,
        SagaState::Compensated => pb::SagaState::Compensated,
        SagaState::Stuck => pb::SagaState::Stuck,
    }
}

fn saga_to_proto(saga: Saga) -> Result<pb::Saga, ServiceError> {
    let kind = match saga.params.kind() {
        SagaKind::PlaceOrder => pb::SagaKind::PlaceOrder,
        SagaKind::CancelOrder => pb::SagaKind::CancelOrder,
    };
    Ok(pb::Saga {
        kind: kind.into(),
        order_id: saga.params.order_id().to_owned(),
        state: saga_state(saga.state).into(),
        current_step_name: saga
            .current()
            .map(|s| s.name().to_owned())
            .unwrap_or_default(),
        current_step: saga.current_step,
        saga_id: saga.id,
        reason: saga.reason,
        lease_owner: saga.lease_owner.unwrap_or_default(),
        lease_expires_at: saga.lease_expires_at.map(to_proto),
        attempts: saga.attempts,
        next_attempt_at: Some(to_proto(saga.next_attempt_at)),
        created_at: Some(to_proto(saga.created_at)),
        updated_at: Some(to_proto(saga.updated_at)),
    })
}

fn log_to_proto(row: LogRow) -> Result<pb::StepLogEntry, ServiceError> {
    let direction = match Direction::parse(&row.direction)? {
        Direction::Forward => pb::StepDirection::Forward,
        Direction::Compensate => pb::StepDirection::Compensate,
    };
    let outcome = match Outcome::parse(&row.outcome)? {
        Outcome::Started => pb::StepOutcome::Started,
        Outcome::Succeeded => pb::StepOutcome::Succeeded,
        Outcome::Rejected => pb::StepOutcome::Rejected,
        Outcome::Failed => pb::StepOutcome::Failed,
    };
    Ok(pb::StepLogEntry {
        seq: row.seq,
        step: row.step,
        step_name: row.step_name,
        direction: direction.into(),
        attempt: row.attempt,
        outcome: outcome.into(),
        response_json: row.response_json.unwrap_or_default(),
        error: row.error.unwrap_or_default(),
        created_at: Some(to_proto(row.created_at)),
    })
}

#[tonic::async_trait]
impl SagaAdminService for SagaAdminApi {
    async fn list_sagas(
        &self,
        request: Request<pb::ListSagasRequest>,
    ) -> Result<Response<pb::ListSagasResponse>, Status> {
        let r = request.into_inner();
        let states = match pb::SagaState::try_from(r.state) {
            Ok(pb::SagaState::Unspecified) => {
                vec![
                    SagaState::Running,
                    SagaState::Compensating,
                    SagaState::Stuck,
                ]
            }
            Ok(pb::SagaState::Running) => vec![SagaState::Running],
            Ok(pb::SagaState::Compensating) => vec![SagaState::Compensating],
            Ok(pb::SagaState::Completed) => vec![SagaState::Completed],
            Ok(pb::SagaState::Compensated) => vec![SagaState::Compensated],
            Ok(pb::SagaState::Stuck) => vec![SagaState::Stuck],
            Err(_) => return Err(ServiceError::invalid("state", "unknown saga state").into()),
        };
        let min_age = in_range("min_age_seconds", r.min_age_seconds, 0, 10 * 365 * 86_400)?;
        let page = PageRequest::parse(r.page, r.size)?;
        let created_before = now() - chrono::Duration::seconds(min_age);
        let rows = self
            .engine
            .store()
            .sagas_list(&states, created_before, page)
            .await?;
        Ok(Response::new(pb::ListSagasResponse {
            sagas: rows
                .into_iter()
                .map(saga_to_proto)
                .collect::<Result<_, _>>()?,
            page: page.page,
            size: page.size,
        }))
    }

    async fn get_saga(
        &self,
        request: Request<pb::SagaRef>,
    ) -> Result<Response<pb::SagaDetail>, Status> {
        let saga_id = SagaId::parse("saga_id", &request.into_inner().saga_id)?;
        let record = self.engine.store().saga_load(&saga_id).await?;
        Ok(Response::new(pb::SagaDetail {
            saga: Some(saga_to_proto(record.saga)?),
            log: record
                .raw_log
                .into_iter()
                .map(log_to_proto)
                .collect::<Result<_, _>>()?,
        }))
    }

    async fn retry_saga(
        &self,
        request: Request<pb::SagaRef>,
    ) -> Result<Response<pb::Saga>, Status> {
        let saga_id = SagaId::parse("saga_id", &request.into_inner().saga_id)?;
        self.engine.take_over(&saga_id, false).await?;
        Ok(Response::new(self.saga(&saga_id).await?))
    }

    async fn compensate_saga(
        &self,
        request: Request<pb::SagaRef>,
    ) -> Result<Response<pb::Saga>, Status> {
        let saga_id = SagaId::parse("saga_id", &request.into_inner().saga_id)?;
        self.engine.take_over(&saga_id, true).await?;
        Ok(Response::new(self.saga(&saga_id).await?))
    }

    async fn count_sagas(
        &self,
        _request: Request<pb::CountSagasRequest>,
    ) -> Result<Response<pb::CountSagasResponse>, Status> {
        let mut counts = pb::CountSagasResponse {
            leases_lost: i64::try_from(self.engine.leases_lost()).unwrap_or(i64::MAX),
            ..Default::default()
        };
        for (state, n) in self.engine.store().saga_counts().await? {
            match state {
                SagaState::Running => counts.running = n,
                SagaState::Compensating => counts.compensating = n,
                SagaState::Completed => counts.completed = n,
                SagaState::Compensated => counts.compensated = n,
                SagaState::Stuck => counts.stuck = n,
            }
        }
        Ok(Response::new(counts))
    }

    async fn reconcile(
        &self,
        request: Request<pb::ReconcileRequest>,
    ) -> Result<Response<pb::ReconcileReport>, Status> {
        let r = request.into_inner();
        let window = match r.window_seconds {
            0 => 3_600,
            seconds => in_range("window_seconds", seconds, 1, 30 * 86_400)?,
        };
        let limit = match r.limit {
            0 => 1_000,
            limit => in_range("limit", i64::from(limit), 1, 10_000)?,
        };
        let report = self
            .reconciler
            .run(Duration::from_secs(window.unsigned_abs()), limit)
            .await?;
        Ok(Response::new(pb::ReconcileReport {
            orders_checked: report.orders_checked,
            barriers_checked: report.barriers_checked,
            orders_unreadable: report.orders_unreadable,
            checked_at: report.checked_at.map(to_proto),
            drifts: report
                .drifts
                .into_iter()
                .map(|d| pb::Drift {
                    order_id: d.order_id,
                    saga_id: d.saga_id,
                    kind: d.finding.kind.name().to_owned(),
                    participant: d.finding.participant.name().to_owned(),
                    detail: d.finding.detail,
                    evidence_json: d.evidence_json,
                })
                .collect(),
        }))
    }

    async fn get_outbox(
        &self,
        _request: Request<pb::GetOutboxRequest>,
    ) -> Result<Response<pb::OutboxStats>, Status> {
        let counts = self.engine.store().outbox_counts().await?;
        let age_ms = counts.oldest_pending_at.map_or(0, |at| {
            (commerce_platform::time::now() - at)
                .num_milliseconds()
                .max(0)
        });
        Ok(Response::new(pb::OutboxStats {
            pending: counts.pending,
            oldest_pending_at: counts.oldest_pending_at.map(to_proto),
            oldest_pending_age_ms: age_ms,
            published_kept: counts.published_kept,
            stream: self.stream.clone(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn as_caller(name: Option<&str>) -> Request<pb::GetOrderRequest> {
        let mut request = Request::new(pb::GetOrderRequest::default());
        if let Some(name) = name {
            let identity = Identity::parse(name).expect("a well-formed identity");
            request.extensions_mut().insert(identity);
        }
        request
    }

    #[test]
    fn only_an_operator_identity_reads_as_an_operator() {
        assert_eq!(reader_of(&as_caller(Some("operator"))), Reader::Operator);
        for caller in [Some("bff"), Some("fulfilment"), Some("orchestrator"), None] {
            assert_eq!(reader_of(&as_caller(caller)), Reader::ForUser, "{caller:?}");
        }
    }
}
