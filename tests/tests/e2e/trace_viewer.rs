//! The trace viewer (`commerce-traces`) as an operator uses it: a mesh
//! exports its spans to a viewer running in the test, and one order with a
//! coupon is one tree there (the saga, its four steps, each participant's
//! request under the step that called it) in the JSON API, the terminal
//! view `show` prints and the trace's page, whether the mesh exports over
//! OTLP/gRPC or OTLP/HTTP (gzipped JSON). An OTLP/HTTP protobuf body is
//! found there too.

use std::collections::HashMap;
use std::time::Duration;

use commerce_proto::order::v1::OrderState;
use commerce_traces::model::{SpanRecord, Trace};
use commerce_traces::show::{self, Client, Target};
use commerce_traces::{ServeArgs, Viewer};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message as _;
use tokio::task::JoinHandle;

use crate::harness::{Mesh, SERVERS};
use crate::shop::{self, FORWARD};

/// How the mesh sends its spans to the viewer.
#[derive(Debug, Clone, Copy)]
enum Protocol {
    /// OTLP/gRPC to the viewer's OTLP port.
    Grpc,
    /// OTLP/HTTP with gzipped JSON bodies to the viewer's HTTP port.
    HttpJsonGzip,
}

/// A viewer serving on free loopback ports for the test's life.
struct RunningViewer {
    otlp_endpoint: String,
    http_url: String,
    task: JoinHandle<anyhow::Result<()>>,
}

impl RunningViewer {
    async fn start() -> Self {
        let viewer = Viewer::bind(&ServeArgs {
            otlp_listen: "127.0.0.1:0".parse().unwrap(),
            http_listen: "127.0.0.1:0".parse().unwrap(),
            max_spans: 200_000,
            log_format: commerce_platform::telemetry::LogFormat::Human,
        })
        .await
        .unwrap();
        let otlp_endpoint = format!("http://{}", viewer.otlp_addr());
        let http_url = format!("http://{}", viewer.http_addr());
        let task = tokio::spawn(viewer.run_until_stopped(std::future::pending()));
        Self {
            otlp_endpoint,
            http_url,
            task,
        }
    }

    /// What a server needs to export here at once with `protocol` (the
    /// batch exporter's delay made short: it still batches).
    fn env(&self, protocol: Protocol) -> Vec<(&str, &str)> {
        let mut env = vec![("OTEL_BSP_SCHEDULE_DELAY", "100")];
        match protocol {
            Protocol::Grpc => {
                env.push(("OTEL_EXPORTER_OTLP_ENDPOINT", self.otlp_endpoint.as_str()));
            }
            Protocol::HttpJsonGzip => env.extend([
                // The exporter appends /v1/traces.
                ("OTEL_EXPORTER_OTLP_ENDPOINT", self.http_url.as_str()),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
                ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
            ]),
        }
        env
    }

    fn client(&self) -> Client {
        Client::new(&self.http_url)
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        reqwest::get(format!("{}{path}", self.http_url))
            .await
            .unwrap()
    }
}

impl Drop for RunningViewer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The one span of `spans` (fails, naming `what`, unless exactly one).
fn only<'a>(spans: &[&'a SpanRecord], what: &str) -> &'a SpanRecord {
    assert_eq!(spans.len(), 1, "{what}: {spans:#?}");
    spans[0]
}

/// Whether the trace holds the saga, each forward step under it and a
/// participant's request under each step, from all four servers.
fn complete(trace: &Trace) -> bool {
    let by_id: HashMap<&str, &SpanRecord> = trace
        .spans
        .iter()
        .map(|s| (s.span_id.as_str(), s))
        .collect();
    let called_by = |step: &SpanRecord| {
        trace
            .spans
            .iter()
            .any(|s| s.service != "orchestrator" && s.parent_span_id == step.span_id)
    };
    SERVERS
        .iter()
        .all(|server| trace.spans.iter().any(|s| s.service == *server))
        && FORWARD.iter().all(|name| {
            trace.spans.iter().any(|s| {
                s.attribute("step") == Some(*name)
                    && by_id.contains_key(s.parent_span_id.as_str())
                    && called_by(s)
            })
        })
}

#[tokio::test]
async fn an_order_is_one_tree_in_the_trace_viewer() {
    one_order_is_one_tree(Protocol::Grpc).await;
}

#[tokio::test]
async fn an_order_exported_over_otlp_http_json_is_one_tree_too() {
    one_order_is_one_tree(Protocol::HttpJsonGzip).await;
}

/// One order with a coupon, its spans sent with `protocol`: one trace in
/// the JSON API, the terminal view and the trace's page.
async fn one_order_is_one_tree(protocol: Protocol) {
    let viewer = RunningViewer::start().await;
    let mesh = Mesh::start_with(1, &viewer.env(protocol)).await;
    let (item, coupon_id) = shop::item_and_coupon(&mesh, "vera").await;
    let order = shop::place(&mesh, "vera", &[(item, 2)], Some(coupon_id)).await;
    assert_eq!(shop::state(&order), OrderState::Confirmed, "{order:?}");
    let saga_id = order.saga_id.clone();

    // The JSON API by saga id: one trace, once all its spans are in.
    let client = viewer.client();
    let saga = Target::Saga(saga_id.clone());
    let traces = shop::eventually(&mesh, "the saga's whole trace in the viewer", || async {
        let traces = client.fetch(&saga).await.ok()?;
        traces.iter().any(complete).then_some(traces)
    })
    .await;
    assert_eq!(traces.len(), 1, "one saga, one trace: {traces:#?}");
    let trace = &traces[0];
    let services: Vec<&str> = trace.spans.iter().map(|s| s.service.as_str()).collect();
    for server in SERVERS {
        assert!(services.contains(&server), "no span of {server}");
    }

    // Nested: saga span > step spans > participants' request spans.
    let spans: Vec<&SpanRecord> = trace.spans.iter().collect();
    let saga_span = only(
        &spans
            .iter()
            .copied()
            .filter(|s| s.attribute("saga.kind") == Some("PLACE_ORDER"))
            .collect::<Vec<_>>(),
        "the saga span",
    );
    assert_eq!(saga_span.saga_id(), Some(saga_id.as_str()));
    for (step, method, service) in [
        (
            "reserve_stock",
            "commerce.product.v1.StockService/ReserveStock",
            "product",
        ),
        (
            "deduct_points",
            "commerce.point.v1.PointService/DeductPoints",
            "point",
        ),
        (
            "use_coupon",
            "commerce.coupon.v1.CouponService/UseCoupon",
            "coupon",
        ),
        (
            "confirm_order",
            "commerce.product.v1.StockService/ConfirmReservation",
            "product",
        ),
    ] {
        let step_span = only(
            &spans
                .iter()
                .copied()
                .filter(|s| s.attribute("step") == Some(step))
                .collect::<Vec<_>>(),
            step,
        );
        assert_eq!(step_span.parent_span_id, saga_span.span_id, "{step}");
        assert_eq!(step_span.attribute("direction"), Some("FORWARD"), "{step}");
        assert_eq!(step_span.attribute("outcome"), Some("SUCCEEDED"), "{step}");
        let call = only(
            &spans
                .iter()
                .copied()
                .filter(|s| s.name == method)
                .collect::<Vec<_>>(),
            method,
        );
        assert_eq!(call.service, service, "{method}");
        assert_eq!(call.parent_span_id, step_span.span_id, "{method}");
    }

    // The terminal view, as `show` fetches and draws it: the four forward
    // steps in order, each with its attributes.
    let shown = client
        .wait_for(
            &Target::Trace(trace.trace_id.clone()),
            Duration::from_secs(10),
            // Past the servers' batch delay (100 ms here).
            Duration::from_millis(500),
        )
        .await
        .unwrap();
    let text = show::text(&shown);
    println!("{text}");
    let step_lines: Vec<(usize, &str)> = FORWARD
        .iter()
        .map(|step| {
            text.lines()
                .enumerate()
                .find(|(_, line)| {
                    line.contains(&format!("step={step} direction=FORWARD attempt=1"))
                })
                .unwrap_or_else(|| panic!("no line of step {step} in:\n{text}"))
        })
        .collect();
    assert!(
        step_lines.windows(2).all(|w| w[0].0 < w[1].0),
        "steps out of order: {step_lines:?}\n{text}"
    );
    for (_, line) in &step_lines {
        assert!(line.contains("outcome=SUCCEEDED"), "{line}");
    }
    assert!(
        text.lines().next().unwrap().contains(&saga_id),
        "the header names the saga:\n{text}"
    );

    // The trace's page, and the list and search that lead to it.
    let page = viewer.get(&format!("/traces/{}", trace.trace_id)).await;
    assert_eq!(page.status(), reqwest::StatusCode::OK);
    let page = page.text().await.unwrap();
    for step in FORWARD {
        assert!(page.contains(step), "the page shows step {step}");
    }
    assert!(page.contains(&saga_id), "the page shows the saga id");
    for path in ["/".to_owned(), format!("/?q={saga_id}")] {
        let list = viewer.get(&path).await.text().await.unwrap();
        assert!(
            list.contains(&format!("/traces/{}", trace.trace_id)),
            "{path} links the trace"
        );
    }

    mesh.shutdown().await;
}

fn attribute(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(Value::StringValue(value.to_owned())),
        }),
        ..Default::default()
    }
}

#[tokio::test]
async fn an_otlp_http_protobuf_export_is_found_in_the_viewer() {
    let viewer = RunningViewer::start().await;
    let trace_id = uuid::Uuid::new_v4().as_bytes().to_vec();
    let saga_id = uuid::Uuid::new_v4().to_string();
    let span = |id: u8, parent: Option<u8>, name: &str, start: u64| Span {
        trace_id: trace_id.clone(),
        span_id: vec![id; 8],
        parent_span_id: parent.map(|p| vec![p; 8]).unwrap_or_default(),
        name: name.to_owned(),
        start_time_unix_nano: start,
        end_time_unix_nano: start + 5_000_000,
        attributes: vec![attribute("saga_id", &saga_id)],
        ..Default::default()
    };
    // The child before its parent, as batches from several servers come.
    let body = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![attribute("service.name", "http-exporter")],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans: vec![
                    span(2, Some(1), "child", 1_700_000_000_002_000_000),
                    span(1, None, "parent", 1_700_000_000_000_000_000),
                ],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec();
    let response = reqwest::Client::new()
        .post(format!("{}/v1/traces", viewer.http_url))
        .header("content-type", "application/x-protobuf")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/x-protobuf");
    ExportTraceServiceResponse::decode(response.bytes().await.unwrap()).unwrap();

    // Kept as the answer came: no waiting needed.
    let traces = viewer
        .client()
        .fetch(&Target::Saga(saga_id.clone()))
        .await
        .unwrap();
    assert_eq!(traces.len(), 1, "{traces:#?}");
    let text = show::text(&traces);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[1].starts_with("parent "), "{text}");
    assert!(lines[2].starts_with("└ child "), "{text}");
    assert!(lines[2].contains("http-exporter"), "{text}");

    let hex_id = &traces[0].trace_id;
    let one = viewer.get(&format!("/api/traces/{hex_id}")).await;
    assert_eq!(one.status(), reqwest::StatusCode::OK);
    let missing = viewer
        .get(&format!("/api/traces/{}", "0".repeat(31) + "1"))
        .await;
    assert_eq!(missing.status(), reqwest::StatusCode::NOT_FOUND);
    let refused = reqwest::Client::new()
        .post(format!("{}/v1/traces", viewer.http_url))
        .header("content-type", "text/plain")
        .body("spans")
        .send()
        .await
        .unwrap();
    assert_eq!(
        refused.status(),
        reqwest::StatusCode::UNSUPPORTED_MEDIA_TYPE
    );
}
