//! OTLP collectors the tests run on loopback ports, keeping every span the
//! mesh's servers export to them: over gRPC (plaintext, or TLS when given
//! a server configuration; gzip accepted) or over HTTP (protobuf or JSON,
//! gzip or not, at `/v1/traces` as the spec places it; decoded as the trace
//! viewer does; over mutual TLS when given certificates), and the trace
//! context a test sends as the caller of an
//! order.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use commerce_platform::tls::TlsFiles;
use commerce_proto::order::v1::{Order, OrderState};
use commerce_traces::otlp::decode_body;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tonic::codec::CompressionEncoding;
use tonic::transport::ServerTlsConfig;
use tonic::transport::server::TcpIncoming;

use crate::harness::Mesh;
use crate::shop;

/// How long a test waits for the spans it expects.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// One span as a collector received it, with its server's name.
#[derive(Debug, Clone)]
pub struct Received {
    pub service: String,
    pub span: Span,
}

impl Received {
    pub fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }

    pub fn id(&self) -> String {
        hex(&self.span.span_id)
    }

    pub fn parent_id(&self) -> String {
        hex(&self.span.parent_span_id)
    }

    pub fn name(&self) -> &str {
        &self.span.name
    }

    pub fn attribute(&self, key: &str) -> Option<String> {
        value(&self.span.attributes, key)
    }
}

/// What a collector was sent.
#[derive(Debug, Default)]
struct Inbox {
    spans: Vec<Received>,
    /// The content type and encoding of each export request
    /// (`application/grpc` and its `grpc-encoding`, or `Content-Type` and
    /// `Content-Encoding`; `identity` when none).
    formats: Vec<(String, String)>,
}

impl Inbox {
    fn keep(
        &mut self,
        request: ExportTraceServiceRequest,
        content_type: &str,
        encoding: Option<&str>,
    ) {
        self.formats.push((
            content_type.to_owned(),
            encoding.unwrap_or("identity").to_owned(),
        ));
        for resource_spans in request.resource_spans {
            let service = resource_spans
                .resource
                .as_ref()
                .and_then(|r| value(&r.attributes, "service.name"))
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                self.spans
                    .extend(scope.spans.into_iter().map(|span| Received {
                        service: service.clone(),
                        span,
                    }));
            }
        }
    }
}

/// An OTLP collector on a loopback port.
pub struct Collector {
    /// What a server is given as `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub endpoint: String,
    inbox: Arc<Mutex<Inbox>>,
    task: JoinHandle<()>,
}

#[derive(Clone)]
struct Sink(Arc<Mutex<Inbox>>);

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let encoding = request
            .metadata()
            .get("grpc-encoding")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        self.0.lock().unwrap().keep(
            request.into_inner(),
            "application/grpc",
            encoding.as_deref(),
        );
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// The OTLP/HTTP receiver: an `ExportTraceServiceRequest` in (protobuf or
/// JSON, gzip or not), an empty response out in the same encoding.
async fn http_export(
    State(inbox): State<Arc<Mutex<Inbox>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<([(header::HeaderName, &'static str); 1], Vec<u8>), (StatusCode, String)> {
    let text = |name| headers.get(name).and_then(|v| v.to_str().ok());
    let (content_type, encoding) = (text(header::CONTENT_TYPE), text(header::CONTENT_ENCODING));
    let (request, answer_in) = decode_body(content_type, encoding, &body)
        .map_err(|error| (StatusCode::BAD_REQUEST, error.to_string()))?;
    inbox
        .lock()
        .unwrap()
        .keep(request, answer_in.content_type(), encoding);
    Ok((
        [(header::CONTENT_TYPE, answer_in.content_type())],
        answer_in.success(),
    ))
}

impl Collector {
    /// A plaintext OTLP/gRPC collector.
    pub async fn start() -> Self {
        Self::grpc(None).await
    }

    /// An OTLP/gRPC collector, over TLS as `tls` says when given (its
    /// endpoint then `https://127.0.0.1:port`); it accepts gzip.
    pub async fn grpc(tls: Option<ServerTlsConfig>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let endpoint = format!("{scheme}://{}", listener.local_addr().unwrap());
        let inbox = Arc::new(Mutex::new(Inbox::default()));
        let sink = Sink(Arc::clone(&inbox));
        let task = tokio::spawn(async move {
            let mut server = tonic::transport::Server::builder();
            if let Some(tls) = tls {
                server = server.tls_config(tls).unwrap();
            }
            server
                .add_service(
                    TraceServiceServer::new(sink).accept_compressed(CompressionEncoding::Gzip),
                )
                .serve_with_incoming(TcpIncoming::from(listener))
                .await
                .unwrap();
        });
        Self {
            endpoint,
            inbox,
            task,
        }
    }

    /// An OTLP/HTTP collector taking protobuf or JSON at `/v1/traces` (its
    /// endpoint is the base URL, as a server is given it): plaintext, or
    /// HTTPS serving `tls`'s certificate to clients with one of its CA.
    pub async fn http(tls: Option<&TlsFiles>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let endpoint = format!("{scheme}://{}", listener.local_addr().unwrap());
        let inbox = Arc::new(Mutex::new(Inbox::default()));
        let app = axum::Router::new()
            .route("/v1/traces", axum::routing::post(http_export))
            .with_state(Arc::clone(&inbox));
        let task = match tls {
            None => tokio::spawn(async move { axum::serve(listener, app).await.unwrap() }),
            Some(files) => {
                let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(mutual_tls(files)));
                let listener = TlsListener { listener, acceptor };
                tokio::spawn(async move { axum::serve(listener, app).await.unwrap() })
            }
        };
        Self {
            endpoint,
            inbox,
            task,
        }
    }

    /// What a server needs to export here at once: the batch exporter's
    /// delay made short (it still batches), and JSON log lines.
    pub fn env(&self) -> Vec<(&str, &str)> {
        vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT", self.endpoint.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("LOG_FORMAT", "json"),
        ]
    }

    /// The content type and encoding of each export request received so
    /// far.
    pub fn formats(&self) -> Vec<(String, String)> {
        self.inbox.lock().unwrap().formats.clone()
    }

    /// The spans of `trace_id` once `complete` says they are all there;
    /// panics after [`PATIENCE`] with what came.
    pub async fn trace(
        &self,
        trace_id: &str,
        complete: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let spans: Vec<Received> = self
                .inbox
                .lock()
                .unwrap()
                .spans
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

/// Serves `files`' certificate to clients presenting one of its CA.
fn mutual_tls(files: &TlsFiles) -> rustls::ServerConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(&files.ca).unwrap() {
        roots.add(ca.unwrap()).unwrap();
    }
    let clients =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider.clone())
            .build()
            .unwrap();
    let chain = CertificateDer::pem_file_iter(&files.cert)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(&files.key).unwrap();
    rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(clients)
        .with_single_cert(chain, key)
        .unwrap()
}

/// TLS over a TCP listener: a connection whose handshake fails is dropped.
struct TlsListener {
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, SocketAddr) {
        loop {
            let (tcp, addr) = axum::serve::Listener::accept(&mut self.listener).await;
            if let Ok(tls) = self.acceptor.accept(tcp).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
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
pub fn caller() -> (String, String, String) {
    let trace_id = uuid::Uuid::new_v4().simple().to_string();
    let span_id = uuid::Uuid::new_v4().simple().to_string()[..16].to_owned();
    let traceparent = format!("00-{trace_id}-{span_id}-01");
    (trace_id, span_id, traceparent)
}

/// `request` sent with `traceparent` in its metadata.
pub fn with_trace<T>(request: T, traceparent: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(request);
    request
        .metadata_mut()
        .insert("traceparent", traceparent.parse().unwrap());
    request
}

/// Places an order of `lines` (and `coupon`) for `user` as a caller in a
/// trace of the test's own, and waits until it is confirmed: the trace id,
/// the caller's span id and the order.
pub async fn confirmed_in_a_trace(
    mesh: &Mesh,
    user: &str,
    lines: &[(i64, i64)],
    coupon: Option<i64>,
) -> (String, String, Order) {
    let (trace_id, caller_span, traceparent) = caller();
    let key = uuid::Uuid::new_v4().to_string();
    let request = shop::request(user, lines, coupon, &key);
    let placed = mesh
        .orders()
        .place_order(with_trace(request, &traceparent))
        .await
        .unwrap()
        .into_inner();
    let order = shop::settled(mesh, user, &placed.order_id).await;
    assert_eq!(shop::state(&order), OrderState::Confirmed, "{order:?}");
    (trace_id, caller_span, order)
}
