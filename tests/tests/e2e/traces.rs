//! One order, one trace: the mesh exports its spans over OTLP to a
//! collector the test runs, and the spans of all four servers share the
//! caller's trace and nest as the saga ran (the caller, PlaceOrder, the
//! saga, each step, the participant's request, its database time). A saga
//! resumed after the orchestrator crashed goes on in the trace it started
//! in. Log lines (JSON) carry the trace id and the saga id.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use commerce_proto::order::v1::OrderState;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;

use crate::harness::Mesh;
use crate::shop;

/// The forward steps of an order with a coupon, in order.
const FORWARD: [&str; 4] = [
    "reserve_stock",
    "deduct_points",
    "use_coupon",
    "confirm_order",
];

/// The servers of the mesh, as they name themselves.
const SERVERS: [&str; 4] = ["orchestrator", "product", "point", "coupon"];

/// How long the test waits for the spans it expects.
const PATIENCE: Duration = Duration::from_secs(60);

/// One span as a collector received it, with its server's name.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    span: Span,
}

impl Received {
    fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }

    fn id(&self) -> String {
        hex(&self.span.span_id)
    }

    fn parent_id(&self) -> String {
        hex(&self.span.parent_span_id)
    }

    fn name(&self) -> &str {
        &self.span.name
    }

    fn attribute(&self, key: &str) -> Option<String> {
        value(&self.span.attributes, key)
    }
}

/// An OTLP/gRPC collector on a loopback port, keeping every span it is sent.
struct Collector {
    endpoint: String,
    spans: Arc<Mutex<Vec<Received>>>,
    task: JoinHandle<()>,
}

#[derive(Clone)]
struct Sink(Arc<Mutex<Vec<Received>>>);

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut kept = self.0.lock().unwrap();
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .as_ref()
                .and_then(|r| value(&r.attributes, "service.name"))
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                kept.extend(scope.spans.into_iter().map(|span| Received {
                    service: service.clone(),
                    span,
                }));
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Collector {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let spans = Arc::new(Mutex::new(Vec::new()));
        let sink = Sink(Arc::clone(&spans));
        let task = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(sink))
                .serve_with_incoming(TcpIncoming::from(listener))
                .await
                .unwrap();
        });
        Self {
            endpoint,
            spans,
            task,
        }
    }

    /// What a server needs to export here at once: the batch exporter's
    /// delay made short (it still batches), and JSON log lines.
    fn env(&self) -> Vec<(&str, &str)> {
        vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT", self.endpoint.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("LOG_FORMAT", "json"),
        ]
    }

    /// The spans of `trace_id` once `complete` says they are all there;
    /// panics after [`PATIENCE`] with what came.
    async fn trace(&self, trace_id: &str, complete: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let spans: Vec<Received> = self
                .spans
                .lock()
                .unwrap()
                .iter()
                .filter(|s| s.trace_id() == trace_id)
                .cloned()
                .collect();
            if complete(&spans) {
                return spans;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "trace {trace_id} incomplete after {PATIENCE:?}: {:#?}",
                spans
                    .iter()
                    .map(|s| (s.service.as_str(), s.name(), s.id(), s.parent_id()))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn value(attributes: &[KeyValue], key: &str) -> Option<String> {
    let found = attributes.iter().find(|kv| kv.key == key)?;
    match found.value.as_ref()?.value.as_ref()? {
        Value::StringValue(s) => Some(s.clone()),
        Value::IntValue(i) => Some(i.to_string()),
        Value::BoolValue(b) => Some(b.to_string()),
        other => Some(format!("{other:?}")),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A caller's trace context: a trace id of the test's own and the span id
/// of its (imaginary) client span.
fn caller() -> (String, String, String) {
    let trace_id = uuid::Uuid::new_v4().simple().to_string();
    let span_id = uuid::Uuid::new_v4().simple().to_string()[..16].to_owned();
    let traceparent = format!("00-{trace_id}-{span_id}-01");
    (trace_id, span_id, traceparent)
}

/// `request` sent with `traceparent` in its metadata.
fn with_trace<T>(request: T, traceparent: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(request);
    request
        .metadata_mut()
        .insert("traceparent", traceparent.parse().unwrap());
    request
}

/// Whether `span`'s parent chain (as far as it was received) reaches span
/// `ancestor`.
fn descends_from(by_id: &HashMap<String, &Received>, span: &Received, ancestor: &str) -> bool {
    let mut parent = span.parent_id();
    while let Some(next) = by_id.get(&parent) {
        if parent == ancestor {
            return true;
        }
        parent = next.parent_id();
    }
    parent == ancestor
}

/// The step spans of a trace by step name (each step once, unless
/// retried).
fn steps(spans: &[Received]) -> HashMap<String, Vec<&Received>> {
    let mut steps: HashMap<String, Vec<&Received>> = HashMap::new();
    for span in spans.iter().filter(|s| s.attribute("direction").is_some()) {
        steps
            .entry(span.attribute("step").unwrap())
            .or_default()
            .push(span);
    }
    steps
}

/// The participants' server spans (a request's span, not the saga's).
fn participant_requests(spans: &[Received]) -> Vec<&Received> {
    spans
        .iter()
        .filter(|s| s.service != "orchestrator" && s.attribute("rpc.system").is_some())
        .collect()
}

/// The database spans under participant request `call`.
fn database_time<'a>(spans: &'a [Received], call: &Received) -> Vec<&'a Received> {
    let by_id: HashMap<String, &Received> = spans.iter().map(|s| (s.id(), s)).collect();
    spans
        .iter()
        .filter(|s| s.attribute("db.system.name").is_some())
        .filter(|s| descends_from(&by_id, s, &call.id()))
        .collect()
}

/// Every step of `names` has a span from the orchestrator, and each
/// participant request's span descendants holding its database time.
fn has_steps_and_their_calls(spans: &[Received], names: &[&str]) -> bool {
    let steps = steps(spans);
    let calls = participant_requests(spans);
    names.iter().all(|n| steps.contains_key(*n))
        && calls.len() >= names.len()
        && calls
            .iter()
            .all(|call| !database_time(spans, call).is_empty())
}

#[tokio::test]
async fn one_order_is_one_trace_across_the_mesh() {
    let collector = Collector::start().await;
    let mesh = Mesh::start_with(1, &collector.env()).await;
    let brand = shop::brand(&mesh, "Traced").await;
    let item = shop::product(&mesh, brand, "Lantern", 10_000, 5).await;
    shop::charge(&mesh, "tracy", 50_000).await;
    let template = shop::fixed_template(&mesh, 1_000, 5_000, 10, false).await;
    let coupon_id = shop::issue(&mesh, template, "tracy").await;

    let (trace_id, caller_span, traceparent) = caller();
    let key = uuid::Uuid::new_v4().to_string();
    let request = shop::request("tracy", &[(item, 2)], Some(coupon_id), &key);
    let placed = mesh
        .orders()
        .place_order(with_trace(request, &traceparent))
        .await
        .unwrap()
        .into_inner();
    let order = shop::settled(&mesh, "tracy", &placed.order_id).await;
    assert_eq!(shop::state(&order), OrderState::Confirmed, "{order:?}");

    let spans = collector
        .trace(&trace_id, |spans| {
            SERVERS
                .iter()
                .all(|server| spans.iter().any(|s| s.service == *server))
                && has_steps_and_their_calls(spans, &FORWARD)
        })
        .await;
    let by_id: HashMap<String, &Received> = spans.iter().map(|s| (s.id(), s)).collect();

    // The orchestrator's request continues the caller's span...
    let place_order = spans
        .iter()
        .find(|s| s.name() == "commerce.order.v1.OrderService/PlaceOrder")
        .expect("the PlaceOrder request's span");
    assert_eq!(place_order.service, "orchestrator");
    assert_eq!(place_order.parent_id(), caller_span);
    // ...the saga is its child...
    let saga = spans
        .iter()
        .find(|s| s.attribute("saga.kind").is_some())
        .expect("the saga's span");
    assert!(
        descends_from(&by_id, saga, &place_order.id()),
        "the saga runs in the PlaceOrder request"
    );
    assert_eq!(
        saga.attribute("saga_id").as_deref(),
        Some(order.saga_id.as_str())
    );
    // ...each step the saga's, with its saga, direction, attempt and outcome...
    let steps = steps(&spans);
    for name in FORWARD {
        let step = &steps[name];
        assert_eq!(step.len(), 1, "{name} ran once: {step:?}");
        let step = step[0];
        assert_eq!(step.service, "orchestrator");
        assert_eq!(step.parent_id(), saga.id(), "{name}");
        assert_eq!(
            (
                step.attribute("saga_id").as_deref(),
                step.attribute("direction").as_deref(),
                step.attribute("attempt").as_deref(),
                step.attribute("outcome").as_deref(),
            ),
            (
                Some(order.saga_id.as_str()),
                Some("FORWARD"),
                Some("1"),
                Some("SUCCEEDED")
            ),
            "{name}"
        );
    }
    // ...and each participant's request a child of the step that called it,
    // its database time a child of the request.
    let called_by = |call: &Received| -> String {
        by_id
            .get(&call.parent_id())
            .and_then(|step| step.attribute("step"))
            .unwrap_or_else(|| panic!("{} has no step for parent", call.name()))
    };
    for (method, service, step) in [
        (
            "commerce.product.v1.StockService/ReserveStock",
            "product",
            "reserve_stock",
        ),
        (
            "commerce.point.v1.PointService/DeductPoints",
            "point",
            "deduct_points",
        ),
        (
            "commerce.coupon.v1.CouponService/UseCoupon",
            "coupon",
            "use_coupon",
        ),
        (
            "commerce.product.v1.StockService/ConfirmReservation",
            "product",
            "confirm_order",
        ),
    ] {
        let call = spans
            .iter()
            .find(|s| s.name() == method)
            .unwrap_or_else(|| panic!("no span of {method}"));
        assert_eq!(call.service, service, "{method}");
        assert_eq!(called_by(call), step, "{method}");
        let database = database_time(&spans, call);
        assert!(!database.is_empty(), "no database span under {method}");
        assert!(database.iter().all(|d| d.service == service), "{method}");
    }
    for call in participant_requests(&spans) {
        called_by(call);
    }

    // The orchestrator's log lines in the saga carry both ids.
    let log = std::fs::read_to_string(mesh.orchestrator().log()).unwrap();
    let finished = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l["message"] == "saga finished" && l["saga_id"] == order.saga_id.as_str())
        .unwrap_or_else(|| panic!("no JSON 'saga finished' line for the saga in:\n{log}"));
    assert_eq!(finished["trace_id"], trace_id.as_str(), "{finished}");

    mesh.shutdown().await;
}

#[tokio::test]
async fn a_saga_resumed_after_a_crash_goes_on_in_its_trace() {
    let collector = Collector::start().await;
    let env = collector.env();
    let mut mesh = Mesh::start_with(1, &env).await;
    let brand = shop::brand(&mesh, "Traced").await;
    let item = shop::product(&mesh, brand, "Compass", 10_000, 5).await;
    shop::charge(&mesh, "resumed", 50_000).await;
    let template = shop::fixed_template(&mesh, 1_000, 5_000, 10, false).await;
    let coupon_id = shop::issue(&mesh, template, "resumed").await;

    // The orchestrator aborts right after deducting the points.
    let node = &mut mesh.orchestrators[0];
    node.kill().await;
    let mut armed = env.clone();
    armed.push(("ORCHESTRATOR_CRASH_AT", "after:deduct_points"));
    node.start_with(&armed).await;
    let (trace_id, _, traceparent) = caller();
    let key = uuid::Uuid::new_v4().to_string();
    let request = shop::request("resumed", &[(item, 1)], Some(coupon_id), &key);
    let call = mesh
        .orders()
        .place_order(with_trace(request, &traceparent))
        .await;
    assert!(call.is_err(), "the armed orchestrator answered {call:?}");
    let node = &mut mesh.orchestrators[0];
    assert!(!node.wait_exit().await.success());
    // Restarted, it resumes its own saga at once.
    node.start_with(&env).await;
    let order = shop::only_order_of(&mesh, "resumed").await;
    let order = shop::settled(&mesh, "resumed", &order.order_id).await;
    assert_eq!(shop::state(&order), OrderState::Confirmed, "{order:?}");

    // The steps after the crash ran in the trace the order was placed in.
    let spans = collector
        .trace(&trace_id, |spans| {
            has_steps_and_their_calls(spans, &["use_coupon", "confirm_order"])
        })
        .await;
    let by_id: HashMap<String, &Received> = spans.iter().map(|s| (s.id(), s)).collect();
    let steps = steps(&spans);
    for name in ["use_coupon", "confirm_order"] {
        let step = steps[name][0];
        assert_eq!(
            step.attribute("saga_id").as_deref(),
            Some(order.saga_id.as_str())
        );
        let saga = by_id
            .get(&step.parent_id())
            .unwrap_or_else(|| panic!("{name}: no saga span for parent"));
        assert_eq!(saga.attribute("saga.kind").as_deref(), Some("PLACE_ORDER"));
        // The resumed drive continues the PlaceOrder request it started in
        // (whose span died with the first process).
        assert!(!saga.parent_id().is_empty(), "{name}: a root saga span");
    }
    // The product's ReserveStock (before the crash) is in the same trace.
    assert!(
        spans
            .iter()
            .any(|s| s.name() == "commerce.product.v1.StockService/ReserveStock"),
        "the steps before the crash are in the trace too"
    );

    mesh.shutdown().await;
}
