//! The OTLP/gRPC receiver: every export's spans into the store.

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};

use crate::otlp;
use crate::store::SharedStore;

/// The largest export message accepted (an exporter's batch is far smaller).
const MAX_MESSAGE: usize = 32 * 1024 * 1024;

pub struct Receiver {
    store: SharedStore,
}

/// The gRPC service, ready to be served.
pub fn service(store: SharedStore) -> TraceServiceServer<Receiver> {
    TraceServiceServer::new(Receiver { store }).max_decoding_message_size(MAX_MESSAGE)
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let spans = otlp::spans_of(request.into_inner());
        crate::lock(&self.store).insert(spans);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}
