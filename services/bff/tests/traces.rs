//! The BFF continues an app's trace: a request's W3C `traceparent` makes
//! the BFF's span its child, and the call the BFF makes to the mesh
//! carries that span's context on (seen by a stand-in orchestrator that
//! records what it is sent).

#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::http::{self, HeaderMap, Request, StatusCode, header};
use commerce_bff::auth::Authenticator;
use commerce_bff::config::{BffConfig, Limits, MeshAddrs};
use commerce_bff::mesh::MeshTls;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tower::ServiceExt as _;
use tracing::instrument::WithSubscriber as _;

const APP_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const APP_SPAN: &str = "00f067aa0ba902b7";

/// An orchestrator that keeps every call's headers and answers UNAVAILABLE.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<HeaderMap>>>);

impl tonic::server::NamedService for Recorder {
    const NAME: &'static str = "commerce.order.v1.OrderService";
}

impl tower::Service<http::Request<tonic::body::Body>> for Recorder {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        self.0.lock().unwrap().push(request.headers().clone());
        std::future::ready(Ok(tonic::Status::unavailable("recorded").into_http()))
    }
}

#[tokio::test]
async fn an_apps_traceparent_goes_on_to_the_mesh_from_the_bffs_span() {
    let recorder = Recorder::default();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mesh = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(recorder.clone())
            .serve_with_incoming(TcpIncoming::from(listener)),
    );
    let auth = Authenticator::new(&[7; 32], "commerce", "commerce-bff").unwrap();
    let app = commerce_bff::app(&BffConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        metrics_listen: None,
        mesh: MeshAddrs {
            orchestrator: mesh.clone(),
            product: mesh.clone(),
            point: mesh.clone(),
            coupon: mesh,
        },
        tls: MeshTls::Plaintext,
        auth: auth.clone(),
        limits: Limits {
            default_deadline: Duration::from_secs(5),
            max_deadline: Duration::from_secs(10),
            body_bytes: 64 * 1024,
            concurrency: 16,
            per_user: None,
        },
    })
    .unwrap();
    let token = auth.mint("tracy", None, Duration::from_secs(60)).unwrap();
    let order_id = uuid::Uuid::now_v7();
    let request = Request::get(format!("/api/v1/orders/{order_id}"))
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header("traceparent", format!("00-{APP_TRACE}-{APP_SPAN}-01"))
        .body(Body::empty())
        .unwrap();

    let response = app
        .oneshot(request)
        .with_subscriber(commerce_platform::telemetry::traced_dispatch())
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let calls = recorder.0.lock().unwrap().clone();
    assert_eq!(calls.len(), 1, "one call to the orchestrator");
    let sent = calls[0]["traceparent"].to_str().unwrap().to_owned();
    let parts: Vec<&str> = sent.split('-').collect();
    assert_eq!(parts[1], APP_TRACE, "the app's trace: {sent}");
    assert_ne!(parts[2], APP_SPAN, "the BFF's own span: {sent}");
}
