//! W3C trace context (`traceparent`, `tracestate`) across the mesh.
//!
//! - Servers: [`grpc_server_span`] makes each request's span a child of the
//!   caller's span named in the request's headers (a new trace when there
//!   is none); [`continue_from`] does the same for any span (the BFF's HTTP
//!   requests).
//! - Callers: [`PropagateTrace`] writes the current span's context into every
//!   outgoing gRPC call's metadata ([`traced`] wraps a channel with it).
//! - Records: [`TraceHeaders`] keeps a span's context as its two headers, to
//!   be stored with a saga and continued by whoever resumes it.
//!
//! The context is a header: it travels whether or not spans are exported
//! (see [`crate::telemetry`]).

use std::time::Duration;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator as _};
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tower_http::classify::GrpcFailureClass;
use tower_http::trace::OnFailure;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

/// The span of one gRPC request, continuing the caller's trace; none for
/// health checks, which probes make every few seconds and which would
/// each be a trace of their own.
pub fn grpc_server_span<B>(request: &http::Request<B>) -> Span {
    let path = request.uri().path();
    if path.starts_with("/grpc.health.v1.Health/") {
        return Span::none();
    }
    let name = path.trim_start_matches('/');
    let (service, method) = name.split_once('/').unwrap_or((name, ""));
    let span = tracing::info_span!(
        "grpc",
        otel.name = name,
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = method,
        rpc.grpc.status_code = tracing::field::Empty,
    );
    continue_from(&span, request.headers());
    span
}

/// Makes `span` (not yet entered) a child of the span `headers` name, if
/// they carry a valid `traceparent`.
pub fn continue_from(span: &Span, headers: &http::HeaderMap) {
    let parent = extract(&HeaderExtractor(headers));
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
}

/// The context `carrier` names; an empty one when it names none (never the
/// current context, which the propagator falls back to).
fn extract(carrier: &dyn Extractor) -> opentelemetry::Context {
    TraceContextPropagator::new().extract_with_context(&opentelemetry::Context::new(), carrier)
}

/// On a failed gRPC request: its status code on the span, an error status
/// for the codes that mean the server failed (not a refusal of the
/// request, which is the caller's business), and a DEBUG line as
/// tower-http's default.
#[derive(Debug, Clone, Copy, Default)]
pub struct RecordGrpcFailure;

impl OnFailure<GrpcFailureClass> for RecordGrpcFailure {
    fn on_failure(&mut self, failure: GrpcFailureClass, latency: Duration, span: &Span) {
        if let GrpcFailureClass::Code(code) = &failure {
            span.record("rpc.grpc.status_code", code.get());
            let code = tonic::Code::from_i32(code.get());
            if matches!(
                code,
                tonic::Code::Unknown
                    | tonic::Code::DeadlineExceeded
                    | tonic::Code::Unimplemented
                    | tonic::Code::Internal
                    | tonic::Code::Unavailable
                    | tonic::Code::DataLoss
            ) {
                span.record("otel.status_code", "error");
            }
        } else {
            span.record("otel.status_code", "error");
        }
        tracing::debug!(
            classification = %failure,
            latency = format_args!("{} ms", latency.as_millis()),
            "response failed"
        );
    }
}

/// Writes the current span's trace context into every call's metadata.
#[derive(Debug, Clone, Copy, Default)]
pub struct PropagateTrace;

impl tonic::service::Interceptor for PropagateTrace {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        let context = Span::current().context();
        if context.span().span_context().is_valid() {
            TraceContextPropagator::new()
                .inject_context(&context, &mut MetadataInjector(request.metadata_mut()));
        }
        Ok(request)
    }
}

/// A channel whose calls carry the caller's trace context.
pub type TracedChannel = InterceptedService<Channel, PropagateTrace>;

pub fn traced(channel: Channel) -> TracedChannel {
    InterceptedService::new(channel, PropagateTrace)
}

/// A span's trace context as its W3C headers, to keep with a record and
/// continue later, in another process or after a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceHeaders {
    pub traceparent: String,
    /// Vendors' state, kept as the caller sent it (None: none).
    pub tracestate: Option<String>,
}

impl TraceHeaders {
    /// The context of `span`, if it is in a trace.
    pub fn of(span: &Span) -> Option<Self> {
        let context = span.context();
        if !context.span().span_context().is_valid() {
            return None;
        }
        let mut headers = TraceHeaders {
            traceparent: String::new(),
            tracestate: None,
        };
        TraceContextPropagator::new().inject_context(&context, &mut headers);
        (!headers.traceparent.is_empty()).then_some(headers)
    }

    /// The context of the current span, if it is in a trace.
    pub fn current() -> Option<Self> {
        Self::of(&Span::current())
    }

    /// Makes `span` (not yet entered) a child of the span these headers
    /// name; false when they name none (a malformed `traceparent`).
    pub fn continue_in(&self, span: &Span) -> bool {
        let parent = extract(self);
        parent.span().span_context().is_valid() && span.set_parent(parent).is_ok()
    }

    /// Links `span` to the span these headers name (a cause in another
    /// trace, or one not its parent).
    pub fn link_from(&self, span: &Span) {
        let linked = extract(self);
        span.add_link(linked.span().span_context().clone());
    }

    /// The trace id, as the `traceparent` names it.
    pub fn trace_id(&self) -> Option<&str> {
        self.traceparent.split('-').nth(1)
    }
}

impl Injector for TraceHeaders {
    fn set(&mut self, key: &str, value: String) {
        match key {
            TRACEPARENT => self.traceparent = value,
            TRACESTATE if !value.is_empty() => self.tracestate = Some(value),
            _ => {}
        }
    }
}

impl Extractor for TraceHeaders {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            TRACEPARENT => Some(&self.traceparent),
            TRACESTATE => self.tracestate.as_deref(),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT, TRACESTATE]
    }
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

struct MetadataInjector<'a>(&'a mut MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            MetadataKey::from_bytes(key.as_bytes()),
            MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(key, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CALLER: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn request(headers: &[(&'static str, &str)]) -> http::Request<()> {
        let mut request = http::Request::builder().uri("/commerce.point.v1.PointService/Charge");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.body(()).unwrap()
    }

    fn sent_traceparent() -> Option<String> {
        let request =
            tonic::service::Interceptor::call(&mut PropagateTrace, tonic::Request::new(()))
                .unwrap();
        request
            .metadata()
            .get(TRACEPARENT)
            .map(|v| v.to_str().unwrap().to_owned())
    }

    #[test]
    fn a_server_continues_its_callers_trace_and_passes_it_on() {
        tracing::dispatcher::with_default(&crate::telemetry::traced_dispatch(), || {
            let span = grpc_server_span(&request(&[(TRACEPARENT, CALLER), (TRACESTATE, "k=v")]));
            let _entered = span.enter();
            let sent = sent_traceparent().expect("a traceparent on the outgoing call");
            let parts: Vec<&str> = sent.split('-').collect();
            assert_eq!(parts[1], "4bf92f3577b34da6a3ce929d0e0e4736", "same trace");
            assert_ne!(
                parts[2], "00f067aa0ba902b7",
                "the server's span, not the caller's"
            );
            assert_eq!(parts[3], "01", "still sampled");
            let kept = TraceHeaders::current().unwrap();
            assert_eq!(kept.traceparent, sent);
            assert_eq!(kept.tracestate.as_deref(), Some("k=v"));
        });
    }

    #[test]
    fn a_call_without_context_starts_a_trace_and_health_checks_make_no_span() {
        tracing::dispatcher::with_default(&crate::telemetry::traced_dispatch(), || {
            assert_eq!(sent_traceparent(), None, "no span: nothing to send");
            let span = grpc_server_span(&request(&[(TRACEPARENT, "garbage")]));
            let _entered = span.enter();
            let sent = sent_traceparent().unwrap();
            assert!(!sent.contains("4bf92f3577b34da6a3ce929d0e0e4736"));
            let health = http::Request::builder()
                .uri("/grpc.health.v1.Health/Check")
                .body(())
                .unwrap();
            assert!(grpc_server_span(&health).is_none());
        });
    }

    #[test]
    fn stored_headers_continue_the_trace_in_a_new_span() {
        tracing::dispatcher::with_default(&crate::telemetry::traced_dispatch(), || {
            let stored = TraceHeaders {
                traceparent: CALLER.to_owned(),
                tracestate: None,
            };
            assert_eq!(stored.trace_id(), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
            let resumed = tracing::info_span!(parent: None, "saga");
            assert!(stored.continue_in(&resumed));
            let _entered = resumed.enter();
            let now = TraceHeaders::current().unwrap();
            assert_eq!(now.trace_id(), stored.trace_id());
            assert_ne!(now.traceparent, stored.traceparent);
            let malformed = TraceHeaders {
                traceparent: "00-zz".to_owned(),
                tracestate: None,
            };
            assert!(!malformed.continue_in(&tracing::info_span!(parent: None, "other")));
        });
    }
}
