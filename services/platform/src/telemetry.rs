//! Tracing setup: log lines (human-readable for developers, JSON for log
//! shippers) and OpenTelemetry spans.
//!
//! - The log filter comes from `RUST_LOG` (default `info`); it filters log
//!   lines only: spans at INFO and above are traced whatever it says.
//! - Every log line in a trace carries its `trace_id`, and every line in a
//!   saga's scope its `saga_id` (top-level keys in JSON; the trace id
//!   appended to a human line, whose span prefix already names the saga).
//! - Spans are exported over OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//!   `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, with the standard
//!   `OTEL_*` variables honoured by the SDK and the exporter (`OTEL_SERVICE_NAME`,
//!   default the server's name; `OTEL_RESOURCE_ATTRIBUTES`; `OTEL_TRACES_SAMPLER`;
//!   `OTEL_BSP_*`; the exporter's protocol, endpoint, TLS files, compression,
//!   headers and timeout: see [`otlp`]), and `OTEL_SDK_DISABLED=true` or
//!   `OTEL_TRACES_EXPORTER=none` turn it off.
//!   Unset, no exporter is installed: spans still get ids, so trace context
//!   travels on ([`crate::trace_context`]) and log lines still correlate, but
//!   nothing is buffered or sent.

mod otlp;

use std::fmt;
use std::sync::{Arc, OnceLock};

use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::dispatcher::WeakDispatch;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{Format, JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::layer::{Context, SubscriberExt as _};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer, filter::LevelFilter};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

/// The field that names a saga in spans and log lines.
pub const SAGA_ID_FIELD: &str = "saga_id";

/// The installed pipeline; dropping it flushes and stops the exporter (keep
/// it until the server has stopped, and drop it inside the runtime's life).
#[must_use = "dropping it stops the span exporter"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(error) = provider.shutdown()
        {
            eprintln!("flushing spans at exit failed: {error}");
        }
    }
}

/// Installs the global subscriber for `service` (its default OTLP service
/// name); a second call (as in tests) installs nothing and exports nothing.
/// Call it inside a tokio runtime when spans may be exported: the OTLP/gRPC
/// exporter's channel lives on it.
pub fn init(format: LogFormat, service: &'static str) -> Telemetry {
    let export = export_wanted();
    let (provider, exporter) = tracer_provider(service, export);
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let dispatch = dispatch(format, &provider, filter, std::io::stderr, ansi);
    if dispatch.try_init().is_err() {
        return Telemetry { provider: None };
    }
    let exporting = matches!(exporter, Some(Ok(_)));
    match exporter {
        Some(Err(error)) => tracing::error!(%error, "spans are not exported"),
        Some(Ok(plan)) => tracing::info!(
            service,
            protocol = %plan.protocol,
            endpoint = %plan.endpoint,
            tls = plan.tls.is_some(),
            gzip = plan.gzip,
            "exporting spans over OTLP"
        ),
        None => {}
    }
    Telemetry {
        provider: exporting.then_some(provider),
    }
}

/// The subscriber: spans to `provider`'s tracer (INFO and above), lines
/// that `filter` lets through to `writer`.
fn dispatch<W>(
    format: LogFormat,
    provider: &SdkTracerProvider,
    filter: EnvFilter,
    writer: W,
    ansi: bool,
) -> tracing::Dispatch
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let spans = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("commerce"))
        .with_location(false)
        .with_target(false)
        .with_threads(false)
        .with_tracked_inactivity(false)
        .with_filter(LevelFilter::INFO);
    // Set once the subscriber exists: lines read span ids through it.
    let subscriber_of_lines = Arc::new(OnceLock::new());
    let lines = match format {
        LogFormat::Human => tracing_subscriber::fmt::layer()
            .with_ansi(ansi)
            .with_writer(writer)
            .event_format(LogLine {
                inner: Format::default().with_ansi(ansi),
                json: false,
                dispatch: Arc::clone(&subscriber_of_lines),
            })
            .with_filter(filter)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .fmt_fields(JsonFields::new())
            .event_format(LogLine {
                inner: Format::default().json().flatten_event(true),
                json: true,
                dispatch: Arc::clone(&subscriber_of_lines),
            })
            .with_filter(filter)
            .boxed(),
    };
    let dispatch = tracing::Dispatch::new(
        tracing_subscriber::registry()
            .with(spans)
            .with(SagaScope)
            .with(lines),
    );
    let _ = subscriber_of_lines.set(dispatch.downgrade());
    dispatch
}

/// A subscriber whose spans are in traces as the servers' are (their
/// context continues a caller's and travels on), writing and exporting
/// nothing: for tests of trace propagation.
pub fn traced_dispatch() -> tracing::Dispatch {
    let provider = SdkTracerProvider::builder().build();
    tracing::Dispatch::new(
        tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test"))),
    )
}

/// Whether the environment asks for span export.
fn export_wanted() -> bool {
    let set = |name: &str| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
    let is = |name: &str, value: &str| {
        std::env::var(name).is_ok_and(|v| v.trim().eq_ignore_ascii_case(value))
    };
    (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
        && !is("OTEL_SDK_DISABLED", "true")
        && !is("OTEL_TRACES_EXPORTER", "none")
}

/// The tracer provider: with a batch OTLP exporter when `export`, with none
/// otherwise (spans get ids and are dropped when they end). Besides it, when
/// `export`: how spans are exported, or why an export that was asked for
/// could not be set up.
fn tracer_provider(
    service: &'static str,
    export: bool,
) -> (SdkTracerProvider, Option<Result<otlp::ExportPlan, String>>) {
    let builder = SdkTracerProvider::builder().with_resource(resource(service));
    if !export {
        return (builder.build(), None);
    }
    let exporter = otlp::plan(|name| std::env::var(name).ok())
        .map_err(|refusal| refusal.to_string())
        .and_then(|plan| Ok((otlp::exporter(&plan)?, plan)));
    match exporter {
        Ok((exporter, plan)) => (
            builder.with_batch_exporter(exporter).build(),
            Some(Ok(plan)),
        ),
        Err(error) => (builder.build(), Some(Err(error))),
    }
}

/// The SDK's resource (`OTEL_RESOURCE_ATTRIBUTES`, `OTEL_SERVICE_NAME`),
/// named after the server unless those name it.
fn resource(service: &'static str) -> Resource {
    let detected = Resource::builder().build();
    let named = detected
        .get(&opentelemetry::Key::from_static_str("service.name"))
        .is_some_and(|name| !name.as_str().starts_with("unknown_service"));
    if named {
        detected
    } else {
        Resource::builder().with_service_name(service).build()
    }
}

/// A saga id found on a span, kept with it for the log lines in its scope.
struct SagaIdOf(String);

/// Keeps the `saga_id` field of every span that has one (see [`LogLine`]).
struct SagaScope;

impl<S> Layer<S> for SagaScope
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if attrs.metadata().fields().field(SAGA_ID_FIELD).is_none() {
            return;
        }
        let mut found = SagaIdVisitor(None);
        attrs.record(&mut found);
        if let (Some(saga_id), Some(span)) = (found.0, ctx.span(id)) {
            span.extensions_mut().replace(SagaIdOf(saga_id));
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let mut found = SagaIdVisitor(None);
        values.record(&mut found);
        if let (Some(saga_id), Some(span)) = (found.0, ctx.span(id)) {
            span.extensions_mut().replace(SagaIdOf(saga_id));
        }
    }
}

struct SagaIdVisitor(Option<String>);

impl Visit for SagaIdVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == SAGA_ID_FIELD {
            self.0 = Some(value.to_owned());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == SAGA_ID_FIELD {
            self.0 = Some(format!("{value:?}"));
        }
    }
}

/// A log line with the trace and saga it belongs to: `inner` formats the
/// line, then the trace id (and, in JSON, the saga id of the nearest span
/// naming one) is added to it.
struct LogLine<F> {
    inner: F,
    json: bool,
    /// The subscriber this formats for: a callback of the subscriber cannot
    /// ask for the current dispatcher, and span ids are read through it.
    dispatch: Arc<OnceLock<WeakDispatch>>,
}

impl<S, N, F> FormatEvent<S, N> for LogLine<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let leaf = ctx.event_scope().and_then(|mut scope| scope.next());
        let trace_id = leaf
            .as_ref()
            .and_then(|span| trace_id(self.dispatch.get()?, &span.id()));
        let saga_id = if !self.json || event.metadata().fields().field(SAGA_ID_FIELD).is_some() {
            None
        } else {
            ctx.event_scope().and_then(|scope| {
                scope
                    .into_iter()
                    .find_map(|span| span.extensions().get::<SagaIdOf>().map(|s| s.0.clone()))
            })
        };
        if trace_id.is_none() && saga_id.is_none() {
            return self.inner.format_event(ctx, writer, event);
        }
        let mut line = String::with_capacity(256);
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        if self.json {
            // The JSON formatter writes one object: the keys go first in it.
            let Some(body) = line.strip_prefix('{') else {
                return writer.write_str(&line);
            };
            writer.write_char('{')?;
            if let Some(trace_id) = &trace_id {
                write!(writer, "\"trace_id\":\"{trace_id}\",")?;
            }
            if let Some(saga_id) = &saga_id {
                let quoted = serde_json::to_string(saga_id).map_err(|_| fmt::Error)?;
                write!(writer, "\"{SAGA_ID_FIELD}\":{quoted},")?;
            }
            writer.write_str(body)
        } else {
            let body = line.strip_suffix('\n').unwrap_or(&line);
            match &trace_id {
                Some(trace_id) => writeln!(writer, "{body} trace_id={trace_id}"),
                None => writeln!(writer, "{body}"),
            }
        }
    }
}

/// The trace id of span `id`, if it is in a trace.
fn trace_id(dispatch: &WeakDispatch, id: &Id) -> Option<String> {
    let dispatch = dispatch.upgrade()?;
    let context = tracing_opentelemetry::get_otel_context(id, &dispatch)?;
    let span = context.span();
    let span_context = span.span_context();
    span_context
        .is_valid()
        .then(|| span_context.trace_id().to_string())
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::Mutex;

    use super::*;

    /// Log lines written to memory.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'w> MakeWriter<'w> for Lines {
        type Writer = Lines;

        fn make_writer(&'w self) -> Lines {
            self.clone()
        }
    }

    /// What `format` writes for a line outside spans, one in a request and
    /// one in a saga's step, each as logged.
    fn logged(format: LogFormat) -> (Vec<String>, String) {
        let lines = Lines::default();
        let provider = SdkTracerProvider::builder().build();
        let dispatch = dispatch(
            format,
            &provider,
            EnvFilter::new("info"),
            lines.clone(),
            false,
        );
        let mut trace_id = String::new();
        tracing::dispatcher::with_default(&dispatch, || {
            tracing::info!("outside");
            let request = tracing::info_span!("grpc");
            let _request = request.enter();
            trace_id = crate::trace_context::TraceHeaders::current()
                .and_then(|h| h.trace_id().map(str::to_owned))
                .unwrap();
            tracing::info!("in a request");
            let saga = tracing::info_span!("saga", saga_id = "0192-abc");
            let _saga = saga.enter();
            let step = tracing::info_span!("step", step = "reserve_stock");
            let _step = step.enter();
            tracing::info!(attempt = 1, "in a step");
        });
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        (text.lines().map(str::to_owned).collect(), trace_id)
    }

    #[test]
    fn json_lines_carry_the_trace_id_and_the_saga_in_scope() {
        let (lines, trace_id) = logged(LogFormat::Json);
        let lines: Vec<serde_json::Value> = lines
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert_eq!(lines[0]["message"], "outside");
        assert!(lines[0].get("trace_id").is_none(), "{}", lines[0]);
        assert_eq!(lines[1]["trace_id"], trace_id.as_str());
        assert!(lines[1].get("saga_id").is_none(), "{}", lines[1]);
        assert_eq!(lines[2]["trace_id"], trace_id.as_str());
        assert_eq!(lines[2]["saga_id"], "0192-abc");
        assert_eq!(lines[2]["attempt"], 1);
        assert_eq!(lines[2]["span"]["step"], "reserve_stock");
    }

    #[test]
    fn human_lines_end_with_the_trace_id() {
        let (lines, trace_id) = logged(LogFormat::Human);
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(!lines[0].contains("trace_id"), "{}", lines[0]);
        assert!(
            lines[1].ends_with(&format!(" trace_id={trace_id}")),
            "{}",
            lines[1]
        );
        assert!(
            lines[2].contains("saga{saga_id=\"0192-abc\"}"),
            "{}",
            lines[2]
        );
        assert!(
            lines[2].ends_with(&format!(" trace_id={trace_id}")),
            "{}",
            lines[2]
        );
    }
}
