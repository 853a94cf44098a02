//! `commerce.product.v1.StockService`: the order saga's reservation steps.

use commerce_platform::{SagaCall, SagaId, time};
use commerce_proto::product::v1 as pb;
use pb::stock_service_server::StockService;
use tonic::{Request, Response, Status};

use super::{release_to_proto, reservation_to_proto};
use crate::domain::ReserveOrder;
use crate::store::ProductStore;

pub struct StockReservations {
    store: ProductStore,
}

impl StockReservations {
    pub fn new(store: ProductStore) -> Self {
        Self { store }
    }
}

#[tonic::async_trait]
impl StockService for StockReservations {
    #[tracing::instrument(
        skip_all,
        fields(saga_id = %request.get_ref().saga_id, lines = request.get_ref().lines.len())
    )]
    async fn reserve_stock(
        &self,
        request: Request<pb::ReserveStockRequest>,
    ) -> Result<Response<pb::Reservation>, Status> {
        let request = request.into_inner();
        let lines: Vec<(i64, i64)> = request
            .lines
            .iter()
            .map(|line| (line.product_id, line.quantity))
            .collect();
        let ordered_at = request
            .ordered_at
            .map(|t| time::from_proto("ordered_at", Some(t)))
            .transpose()?;
        let order = ReserveOrder::parse(&request.saga_id, &lines)?
            .for_order(&request.order_id, ordered_at)?;
        let fence = SagaCall::parse(&request.saga_id, request.saga_fence)?.fence;
        let reservation = self.store.reservation_create(&order, fence).await?;
        Ok(Response::new(reservation_to_proto(reservation)))
    }

    #[tracing::instrument(skip_all, fields(saga_id = %request.get_ref().saga_id))]
    async fn confirm_reservation(
        &self,
        request: Request<pb::SagaRequest>,
    ) -> Result<Response<pb::Reservation>, Status> {
        let request = request.into_inner();
        let call = SagaCall::parse(&request.saga_id, request.saga_fence)?;
        let reservation = self.store.reservation_confirm(&call).await?;
        Ok(Response::new(reservation_to_proto(reservation)))
    }

    #[tracing::instrument(skip_all, fields(saga_id = %request.get_ref().saga_id))]
    async fn release_reservation(
        &self,
        request: Request<pb::SagaRequest>,
    ) -> Result<Response<pb::ReleaseReservationResponse>, Status> {
        let request = request.into_inner();
        let call = SagaCall::parse(&request.saga_id, request.saga_fence)?;
        let outcome = self.store.reservation_release(&call).await?;
        Ok(Response::new(release_to_proto(outcome)))
    }

    #[tracing::instrument(skip_all, fields(saga_id = %request.get_ref().saga_id))]
    async fn get_reservation(
        &self,
        request: Request<pb::SagaRequest>,
    ) -> Result<Response<pb::Reservation>, Status> {
        let saga = SagaId::parse("saga_id", &request.into_inner().saga_id)?;
        let reservation = self.store.reservation_get(&saga).await?;
        Ok(Response::new(reservation_to_proto(reservation)))
    }
}
