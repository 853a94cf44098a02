//! Prometheus metrics of every server: the process-wide recorder, the
//! `/metrics` endpoint on a port of its own (`--metrics-listen`), the
//! standard `process_*` metrics, and a tower layer that counts and times
//! every gRPC request by service, method and status code.
//!
//! Code records through the `metrics` facade (`metrics::counter!` and
//! friends). Until [`install`] runs (only when the server is asked to serve
//! metrics) the facade has no recorder and every record is a no-op, so a
//! server without `--metrics-listen` pays nothing but a branch. The
//! recorder keeps what was recorded in memory; Prometheus reads it by
//! scraping, nothing is pushed.
//!
//! Names follow Prometheus' conventions: `commerce_` first, base units
//! (`_seconds`), `_total` for counters. Histograms of seconds share one set
//! of buckets ([`SECONDS_BUCKETS`]), from half a millisecond (a pooled
//! connection handed out at once) to 30 s (past every deadline of the mesh).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, LazyLock, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use commerce_proto::prost::Message as _;
use http_body::{Body, Frame, SizeHint};
use metrics::SharedString;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tonic::Code;
use tower::{Layer, Service};

/// gRPC requests answered, by `service`, `method` and `code`.
pub const GRPC_REQUESTS: &str = "commerce_grpc_server_requests_total";
/// Time from a gRPC request's arrival to its status, by `service` and
/// `method` (the wait for a concurrency slot included).
pub const GRPC_DURATION: &str = "commerce_grpc_server_request_duration_seconds";
/// Pooled database connections, by `state` (`in_use`, `idle`).
pub const DB_POOL_CONNECTIONS: &str = "commerce_db_pool_connections";
/// The pool's bound (`--db-pool-size`).
pub const DB_POOL_MAX: &str = "commerce_db_pool_max_connections";
/// Requests waiting for a connection now.
pub const DB_POOL_WAITING: &str = "commerce_db_pool_waiting";
/// Time a request waited for a pooled connection (0 when one was idle).
pub const DB_POOL_WAIT: &str = "commerce_db_pool_wait_seconds";
/// Connections handed out, by `result`: `direct` (one was idle), `waited`,
/// `timed_out` (the request failed UNAVAILABLE).
pub const DB_POOL_ACQUIRES: &str = "commerce_db_pool_acquires_total";
/// Connections the pool closed, by `reason`: `broken` (an operation was
/// interrupted, see `crate::db`) or `invalid` (failed its checkout test).
pub const DB_POOL_CLOSED: &str = "commerce_db_pool_connections_closed_total";
/// Saga barrier rows written, by `operation` and `state` (`APPLIED`,
/// `BLOCKED`), on saga participants.
pub const BARRIER_ROWS: &str = "commerce_barrier_rows_inserted_total";
/// Saga barrier rows purged after their retention.
pub const BARRIER_PURGED: &str = "commerce_barrier_rows_purged_total";

/// Buckets of every `_seconds` histogram.
pub const SECONDS_BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// How often histograms' samples are folded into their buckets when nobody
/// scrapes (a scrape folds them too), so memory stays bounded.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// The Prometheus text format's content type.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The process-wide recorder, once installed.
static RECORDER: OnceLock<Recorder> = OnceLock::new();

struct Recorder {
    handle: PrometheusHandle,
    process: metrics_process::Collector,
}

/// Installs the process-wide Prometheus recorder, if none is yet (a test
/// process runs many servers; they share it).
pub fn install() -> anyhow::Result<()> {
    if RECORDER.get().is_some() {
        return Ok(());
    }
    let builder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), &SECONDS_BUCKETS)?;
    let recorder = builder.build_recorder();
    let handle = recorder.handle();
    // Another thread may have won the race: its recorder stays.
    if metrics::set_global_recorder(recorder).is_ok() {
        let process = metrics_process::Collector::default();
        process.describe();
        describe();
        let _ = RECORDER.set(Recorder { handle, process });
    }
    Ok(())
}

/// Whether a recorder is installed (whether metrics are served at all):
/// jobs that only exist to refresh gauges check it before querying.
pub fn enabled() -> bool {
    RECORDER.get().is_some()
}

/// The help texts of the platform's metrics.
fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        GRPC_REQUESTS,
        "gRPC requests answered, by service, method and status code"
    );
    describe_histogram!(
        GRPC_DURATION,
        Unit::Seconds,
        "Time from a gRPC request's arrival to its status"
    );
    describe_gauge!(DB_POOL_CONNECTIONS, "Pooled database connections by state");
    describe_gauge!(DB_POOL_MAX, "Largest number of pooled database connections");
    describe_gauge!(
        DB_POOL_WAITING,
        "Requests waiting for a database connection"
    );
    describe_histogram!(
        DB_POOL_WAIT,
        Unit::Seconds,
        "Time a request waited for a pooled database connection"
    );
    describe_counter!(
        DB_POOL_ACQUIRES,
        "Database connections asked of the pool, by result"
    );
    describe_counter!(DB_POOL_CLOSED, "Database connections closed by the pool");
    describe_counter!(BARRIER_ROWS, "Saga barrier rows written");
    describe_counter!(BARRIER_PURGED, "Saga barrier rows purged");
}

/// A bound `/metrics` endpoint, to serve with [`MetricsEndpoint::serve`].
pub struct MetricsEndpoint {
    listener: TcpListener,
}

impl MetricsEndpoint {
    /// Installs the recorder and binds `addr` (port 0 picks a free port;
    /// see [`MetricsEndpoint::local_addr`]).
    pub async fn bind(addr: SocketAddr) -> anyhow::Result<Self> {
        install()?;
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding --metrics-listen {addr}"))?;
        Ok(Self { listener })
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// [`Self::serve`] on a task of its own, whose failure is logged; the
    /// caller aborts it with its server.
    pub fn spawn(
        self,
        on_scrape: impl Fn() + Send + Sync + 'static,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            if let Err(error) = self.serve(on_scrape).await {
                tracing::warn!(error = format!("{error:#}"), "metrics endpoint stopped");
            }
        })
    }

    /// Serves `GET /metrics` for as long as the future is polled.
    /// `on_scrape` runs before each rendering, for gauges read at scrape
    /// time (the pool's state).
    pub async fn serve(self, on_scrape: impl Fn() + Send + Sync + 'static) -> anyhow::Result<()> {
        let recorder = RECORDER.get().context("no metrics recorder installed")?;
        let on_scrape = Arc::new(on_scrape);
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let on_scrape = Arc::clone(&on_scrape);
                async move {
                    recorder.process.collect();
                    on_scrape();
                    (
                        [(http::header::CONTENT_TYPE, CONTENT_TYPE)],
                        recorder.handle.render(),
                    )
                }
            }),
        );
        if let Ok(addr) = self.listener.local_addr() {
            tracing::info!(%addr, "serving Prometheus metrics on /metrics");
        }
        tokio::select! {
            served = axum::serve(self.listener, app) => served.context("serving /metrics"),
            never = upkeep(&recorder.handle) => match never {},
        }
    }
}

async fn upkeep(handle: &PrometheusHandle) -> Infallible {
    let mut tick = tokio::time::interval(UPKEEP_INTERVAL);
    loop {
        tick.tick().await;
        handle.run_upkeep();
    }
}

/// The labels of a request path: its service and method when the path is
/// one of the mesh's contracts, health or reflection; `unknown` for both
/// otherwise, so that made-up paths cannot grow the metrics without bound.
fn method_labels(path: &str) -> (SharedString, SharedString) {
    static KNOWN: LazyLock<HashMap<String, (SharedString, SharedString)>> =
        LazyLock::new(known_methods);
    match KNOWN.get(path) {
        Some((service, method)) => (service.clone(), method.clone()),
        None => (
            SharedString::const_str("unknown"),
            SharedString::const_str("unknown"),
        ),
    }
}

/// `/<package>.<Service>/<Method>` of every method the mesh's servers can
/// serve, from the descriptor sets its reflection serves.
fn known_methods() -> HashMap<String, (SharedString, SharedString)> {
    let sets = [
        commerce_proto::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ];
    let mut known = HashMap::new();
    for bytes in sets {
        // Compiled in and decoded by reflection at every start: a set that
        // does not decode only leaves its methods `unknown` here.
        let Ok(set) = prost_types::FileDescriptorSet::decode(bytes) else {
            continue;
        };
        for file in set.file {
            let package = file.package();
            for service in &file.service {
                let name: Arc<str> = if package.is_empty() {
                    service.name().into()
                } else {
                    format!("{package}.{}", service.name()).into()
                };
                for method in &service.method {
                    let method_name: Arc<str> = method.name().into();
                    known.insert(
                        format!("/{name}/{method_name}"),
                        (
                            SharedString::from(Arc::clone(&name)),
                            SharedString::from(method_name),
                        ),
                    );
                }
            }
        }
    }
    known
}

/// The canonical name of a gRPC status code, as the mesh's errors and
/// grpcurl print it.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The `grpc-status` of a header or trailer map, if it has one.
fn grpc_status(headers: &http::HeaderMap) -> Option<Code> {
    let value = headers.get("grpc-status")?.to_str().ok()?;
    Some(Code::from_i32(value.trim().parse().ok()?))
}

/// Counts and times every gRPC request ([`GRPC_REQUESTS`],
/// [`GRPC_DURATION`]). The status is read where gRPC puts it: in the
/// response headers of a trailers-only answer (every error of a unary
/// call), else in the trailers at the end of the body. A request dropped
/// before its status (its deadline passed, its client went away) counts as
/// CANCELLED; a body that ends without a status as UNKNOWN.
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcMetricsLayer;

impl<S> Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetrics { inner }
    }
}

#[derive(Debug, Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for GrpcMetrics<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
{
    type Response = http::Response<MeteredBody<ResBody>>;
    type Error = S::Error;
    type Future = MeteredFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        // Before the inner call: a refusal answered at once is timed too.
        let call = Call::new(request.uri().path());
        MeteredFuture {
            inner: self.inner.call(request),
            call: Some(call),
        }
    }
}

/// One request on its way to a status; records when dropped unanswered.
struct Call {
    service: SharedString,
    method: SharedString,
    started: Instant,
    recorded: bool,
}

impl Call {
    fn new(path: &str) -> Self {
        let (service, method) = method_labels(path);
        Self {
            service,
            method,
            started: Instant::now(),
            recorded: false,
        }
    }

    fn record(&mut self, code: Code) {
        if std::mem::replace(&mut self.recorded, true) {
            return;
        }
        metrics::counter!(
            GRPC_REQUESTS,
            "service" => self.service.clone(),
            "method" => self.method.clone(),
            "code" => code_name(code),
        )
        .increment(1);
        metrics::histogram!(
            GRPC_DURATION,
            "service" => self.service.clone(),
            "method" => self.method.clone(),
        )
        .record(self.started.elapsed());
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.record(Code::Cancelled);
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`GrpcMetrics`].
    pub struct MeteredFuture<F> {
        #[pin]
        inner: F,
        call: Option<Call>,
    }
}

impl<F, ResBody, E> Future for MeteredFuture<F>
where
    F: Future<Output = Result<http::Response<ResBody>, E>>,
{
    type Output = Result<http::Response<MeteredBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        let mut call = this.call.take();
        Poll::Ready(match result {
            Ok(response) => {
                if let (Some(code), Some(call)) = (grpc_status(response.headers()), &mut call) {
                    // Trailers-only: the status is already known.
                    call.record(code);
                }
                Ok(response.map(|inner| MeteredBody { inner, call }))
            }
            Err(error) => {
                if let Some(call) = &mut call {
                    call.record(Code::Unknown);
                }
                Err(error)
            }
        })
    }
}

pin_project_lite::pin_project! {
    /// A response body that records its request's status from the
    /// trailers.
    pub struct MeteredBody<B> {
        #[pin]
        inner: B,
        call: Option<Call>,
    }
}

impl<B: Body> Body for MeteredBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = std::task::ready!(this.inner.poll_frame(cx));
        if let Some(call) = this.call {
            match &frame {
                Some(Ok(frame)) => {
                    if let Some(code) = frame.trailers_ref().and_then(grpc_status) {
                        call.record(code);
                    }
                }
                Some(Err(_)) | None => call.record(Code::Unknown),
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_mesh_s_own_methods_are_labelled_by_name() {
        let (service, method) = method_labels("/grpc.health.v1.Health/Check");
        assert_eq!((&*service, &*method), ("grpc.health.v1.Health", "Check"));
        let (service, method) = method_labels("/commerce.order.v1.OrderService/PlaceOrder");
        assert_eq!(
            (&*service, &*method),
            ("commerce.order.v1.OrderService", "PlaceOrder")
        );
        for made_up in [
            "/commerce.order.v1.OrderService/Nope",
            "/Health/../Point/Charge",
            "/",
        ] {
            let (service, method) = method_labels(made_up);
            assert_eq!((&*service, &*method), ("unknown", "unknown"), "{made_up}");
        }
    }

    #[test]
    fn the_status_is_read_from_grpc_status() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(grpc_status(&headers), None);
        headers.insert("grpc-status", http::HeaderValue::from_static("5"));
        assert_eq!(grpc_status(&headers).map(code_name), Some("NOT_FOUND"));
        headers.insert("grpc-status", http::HeaderValue::from_static("0"));
        assert_eq!(grpc_status(&headers).map(code_name), Some("OK"));
    }
}
