//! `commerce.point.v1.PointService`: each handler parses the request into
//! domain types (errors name the proto field), calls one store method and
//! converts the result to the wire type.

use commerce_platform::paging::PageRequest;
use commerce_platform::{SagaCall, UserId};
use commerce_proto::point::v1 as pb;
use commerce_proto::point::v1::point_service_server::{PointService, PointServiceServer};
use tonic::{Request, Response, Status};

use crate::domain::{
    ChargeAmount, DeductAmount, DeductOutcome, IdempotencyKey, LedgerEntry, LedgerKind,
    RefundOutcome,
};
use crate::store::PointStore;

pub struct PointApi {
    store: PointStore,
}

impl PointApi {
    pub fn new(store: PointStore) -> Self {
        Self { store }
    }

    pub fn into_server(self) -> PointServiceServer<Self> {
        PointServiceServer::new(self)
    }
}

#[tonic::async_trait]
impl PointService for PointApi {
    #[tracing::instrument(skip_all, fields(user_id = %request.get_ref().user_id))]
    async fn charge(
        &self,
        request: Request<pb::ChargeRequest>,
    ) -> Result<Response<pb::ChargeResponse>, Status> {
        let request = request.into_inner();
        let user = UserId::parse("user_id", &request.user_id)?;
        let amount = ChargeAmount::parse("amount", request.amount)?;
        let key = IdempotencyKey::parse("idempotency_key", &request.idempotency_key)?;
        let outcome = self.store.points_charge(&user, amount, &key).await?;
        Ok(Response::new(pb::ChargeResponse {
            entry: Some(entry_to_proto(outcome.entry)),
            balance: outcome.balance,
        }))
    }

    #[tracing::instrument(skip_all, fields(user_id = %request.get_ref().user_id))]
    async fn get_balance(
        &self,
        request: Request<pb::GetBalanceRequest>,
    ) -> Result<Response<pb::Balance>, Status> {
        let user = UserId::parse("user_id", &request.into_inner().user_id)?;
        let balance = self.store.balance_get(&user).await?;
        Ok(Response::new(pb::Balance {
            user_id: user.to_string(),
            balance: balance.get(),
        }))
    }

    #[tracing::instrument(skip_all, fields(user_id = %request.get_ref().user_id))]
    async fn list_ledger(
        &self,
        request: Request<pb::ListLedgerRequest>,
    ) -> Result<Response<pb::ListLedgerResponse>, Status> {
        let request = request.into_inner();
        let user = UserId::parse("user_id", &request.user_id)?;
        let page = PageRequest::parse(request.page, request.size)?;
        let listed = self.store.ledger_list(&user, page).await?;
        Ok(Response::new(pb::ListLedgerResponse {
            entries: listed.entries.into_iter().map(entry_to_proto).collect(),
            page: page.page,
            size: page.size,
            total: listed.total,
        }))
    }

    #[tracing::instrument(skip_all, fields(saga_id = %request.get_ref().saga_id))]
    async fn deduct_points(
        &self,
        request: Request<pb::DeductPointsRequest>,
    ) -> Result<Response<pb::DeductPointsResponse>, Status> {
        let request = request.into_inner();
        let call = SagaCall::parse(&request.saga_id, request.saga_fence)?;
        let user = UserId::parse("user_id", &request.user_id)?;
        let amount = DeductAmount::parse("amount", request.amount)?;
        let outcome = self.store.points_deduct(&call, &user, amount).await?;
        Ok(Response::new(deduct_to_proto(outcome)))
    }

    #[tracing::instrument(skip_all, fields(saga_id = %request.get_ref().saga_id))]
    async fn refund_points(
        &self,
        request: Request<pb::RefundPointsRequest>,
    ) -> Result<Response<pb::RefundPointsResponse>, Status> {
        let request = request.into_inner();
        let call = SagaCall::parse(&request.saga_id, request.saga_fence)?;
        let outcome = self.store.points_refund(&call).await?;
        Ok(Response::new(refund_to_proto(outcome)))
    }
}

fn kind_to_proto(kind: LedgerKind) -> pb::LedgerKind {
    match kind {
        LedgerKind::Charge => pb::LedgerKind::Charge,
        LedgerKind::Use => pb::LedgerKind::Use,
        LedgerKind::Refund => pb::LedgerKind::Refund,
    }
}

fn entry_to_proto(entry: LedgerEntry) -> pb::LedgerEntry {
    pb::LedgerEntry {
        id: entry.id,
        user_id: entry.user_id,
        kind: kind_to_proto(entry.kind).into(),
        amount: entry.amount,
        balance_after: entry.balance_after,
        reference: entry.reference,
        created_at: Some(commerce_platform::time::to_proto(entry.created_at)),
    }
}

fn deduct_to_proto(outcome: DeductOutcome) -> pb::DeductPointsResponse {
    pb::DeductPointsResponse {
        saga_id: outcome.saga_id,
        user_id: outcome.user_id,
        deducted: outcome.deducted,
        balance: outcome.balance,
    }
}

fn refund_to_proto(outcome: RefundOutcome) -> pb::RefundPointsResponse {
    pb::RefundPointsResponse {
        saga_id: outcome.saga_id,
        refunded: outcome.refunded,
        user_id: outcome.user_id,
        amount: outcome.amount,
        balance: outcome.balance,
    }
}
