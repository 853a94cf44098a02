//! `commerce.order.v1.OrderService`, as far as the benchmark needs it:
//! PlaceOrder and GetOrder; the fulfilment and listing RPCs are the saga
//! mesh's alone and answer UNIMPLEMENTED. Requests are validated and reads
//! scoped by the orchestrator's own rules, so both systems accept and refuse
//! the same input.

use commerce_platform::SagaId;
use commerce_proto::order::v1 as pb;
use commerce_proto::order::v1::order_service_server::{OrderService, OrderServiceServer};
use order_orchestrator::domain::order::{PlaceOrder, ReadScope};
use order_orchestrator::grpc::reader_of;
use tonic::{Request, Response, Status};

use super::store::BaselineStore;

pub struct BaselineOrderApi {
    store: BaselineStore,
}

impl BaselineOrderApi {
    pub fn new(store: BaselineStore) -> Self {
        Self { store }
    }

    pub fn into_server(self) -> OrderServiceServer<Self> {
        OrderServiceServer::new(self)
    }
}

fn unimplemented() -> Status {
    Status::unimplemented("the baseline only places and reads orders")
}

#[tonic::async_trait]
impl OrderService for BaselineOrderApi {
    #[tracing::instrument(skip_all, fields(user_id = %request.get_ref().user_id))]
    async fn place_order(
        &self,
        request: Request<pb::PlaceOrderRequest>,
    ) -> Result<Response<pb::Order>, Status> {
        let r = request.into_inner();
        let order = PlaceOrder::parse(
            &r.user_id,
            r.lines.iter().map(|l| (l.product_id, l.quantity)),
            r.user_coupon_id,
            &r.idempotency_key,
        )?;
        let record = self.store.order_place(&order).await?;
        Ok(Response::new(record.into_proto()?))
    }

    async fn get_order(
        &self,
        request: Request<pb::GetOrderRequest>,
    ) -> Result<Response<pb::Order>, Status> {
        let reader = reader_of(&request);
        let r = request.into_inner();
        // Order ids are UUIDs, as the orchestrator's.
        let id = SagaId::parse("order_id", &r.order_id)?;
        let scope = ReadScope::parse(reader, &r.user_id)?;
        let record = self.store.order_get(id.as_str()).await?;
        scope.admit(id.as_str(), &record.order.user_id)?;
        Ok(Response::new(record.into_proto()?))
    }

    async fn list_orders(
        &self,
        _request: Request<pb::ListOrdersRequest>,
    ) -> Result<Response<pb::ListOrdersResponse>, Status> {
        Err(unimplemented())
    }

    async fn cancel_order(
        &self,
        _request: Request<pb::CancelOrderRequest>,
    ) -> Result<Response<pb::Order>, Status> {
        Err(unimplemented())
    }

    async fn mark_shipped(
        &self,
        _request: Request<pb::OrderRef>,
    ) -> Result<Response<pb::Order>, Status> {
        Err(unimplemented())
    }

    async fn mark_delivered(
        &self,
        _request: Request<pb::OrderRef>,
    ) -> Result<Response<pb::Order>, Status> {
        Err(unimplemented())
    }
}
