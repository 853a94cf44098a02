//! Span export beyond plaintext gRPC, as the standard OTLP exporter
//! variables ask: every server process of a mesh exports the spans of an
//! order to a collector the test runs, over OTLP/HTTP with protobuf, over
//! OTLP/HTTP with JSON compressed with gzip, over gRPC compressed with
//! gzip, and over gRPC with TLS to a collector whose
//! certificate only the CA file of `OTEL_EXPORTER_OTLP_CERTIFICATE` vouches
//! for and which asks for the client certificate of
//! `OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE` / `_CLIENT_KEY`, and over HTTPS
//! to such a collector.

use commerce_platform::tls::{TlsFiles, certs};

use crate::collector::{Collector, Received, confirmed_in_a_trace};
use crate::harness::Mesh;
use crate::shop;

/// The servers an order without a coupon goes through.
const SERVERS: [&str; 3] = ["orchestrator", "product", "point"];

/// Starts a mesh whose servers are given `env` on top of `collector`'s,
/// places an order as a caller in a trace of the test's own, and returns
/// the trace's spans once every server of the order has exported some of
/// them, the orchestrator its `PlaceOrder` request's.
async fn an_order_exported(collector: &Collector, env: &[(&str, &str)]) -> Vec<Received> {
    let mut env_of_servers = collector.env();
    env_of_servers.extend_from_slice(env);
    let mesh = Mesh::start_with(1, &env_of_servers).await;
    let brand = shop::brand(&mesh, "Exported").await;
    let item = shop::product(&mesh, brand, "Kite", 10_000, 5).await;
    shop::charge(&mesh, "otto", 50_000).await;

    let (trace_id, caller_span, _) = confirmed_in_a_trace(&mesh, "otto", &[(item, 1)], None).await;

    let spans = collector
        .trace(&trace_id, |spans| {
            SERVERS
                .iter()
                .all(|server| spans.iter().any(|s| s.service == *server))
                && spans
                    .iter()
                    .any(|s| s.name() == "commerce.order.v1.OrderService/PlaceOrder")
        })
        .await;
    let place_order = spans
        .iter()
        .find(|s| s.name() == "commerce.order.v1.OrderService/PlaceOrder")
        .unwrap();
    assert_eq!(place_order.service, "orchestrator");
    assert_eq!(place_order.parent_id(), caller_span);
    mesh.shutdown().await;
    spans
}

/// Every export request `collector` received was of `content_type`, in
/// `encoding`.
fn assert_every_request_is(collector: &Collector, content_type: &str, encoding: &str) {
    let formats = collector.formats();
    assert!(
        !formats.is_empty()
            && formats
                .iter()
                .all(|(t, e)| (t.as_str(), e.as_str()) == (content_type, encoding)),
        "every export request is {content_type} in {encoding}: {formats:?}"
    );
}

#[tokio::test]
async fn spans_go_over_http_with_protobuf() {
    // The generic endpoint is the collector's base URL: `/v1/traces` is
    // where the servers must send.
    let collector = Collector::http(None).await;
    an_order_exported(
        &collector,
        &[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")],
    )
    .await;
    assert_every_request_is(&collector, "application/x-protobuf", "identity");
}

#[tokio::test]
async fn spans_go_over_http_with_json_compressed_with_gzip() {
    let collector = Collector::http(None).await;
    an_order_exported(
        &collector,
        &[
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
        ],
    )
    .await;
    assert_every_request_is(&collector, "application/json", "gzip");
}

#[tokio::test]
async fn spans_go_over_grpc_compressed_with_gzip() {
    let collector = Collector::start().await;
    an_order_exported(&collector, &[("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")]).await;
    assert_every_request_is(&collector, "application/grpc", "gzip");
}

/// The variables that make a server trust only the tests' CA and present
/// a client certificate of it (the tests' certificates: files in the
/// temporary directory, trusted by no system).
fn tls_env() -> Vec<(&'static str, String)> {
    let dir = certs::test_dir();
    let path = |p: std::path::PathBuf| p.to_str().unwrap().to_owned();
    vec![
        ("OTEL_EXPORTER_OTLP_CERTIFICATE", path(certs::ca_path(dir))),
        (
            "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
            path(certs::cert_path(dir, "bff")),
        ),
        (
            "OTEL_EXPORTER_OTLP_CLIENT_KEY",
            path(certs::key_path(dir, "bff")),
        ),
    ]
}

/// The tests' certificate of a server (it names `127.0.0.1`), for a
/// collector.
fn collector_files() -> TlsFiles {
    TlsFiles::in_dir(certs::test_dir(), "orchestrator")
}

#[tokio::test]
async fn spans_go_over_grpc_with_tls_to_a_collector_trusted_by_its_ca_file() {
    let collector = Collector::grpc(Some(collector_files().server_config().unwrap())).await;
    assert!(collector.endpoint.starts_with("https://"));
    let env = tls_env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    an_order_exported(&collector, &env).await;
}

#[tokio::test]
async fn spans_go_over_https_to_a_collector_trusted_by_its_ca_file() {
    let collector = Collector::http(Some(&collector_files())).await;
    assert!(collector.endpoint.starts_with("https://"));
    let env = tls_env();
    let mut env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    env.push(("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"));
    an_order_exported(&collector, &env).await;
    assert_every_request_is(&collector, "application/x-protobuf", "identity");
}
