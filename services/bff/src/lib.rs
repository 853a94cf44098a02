//! The BFF: the mesh's REST front door for shoppers' apps and operators.
//!
//! - [`auth`]: bearer JWTs; the subject is the user every shopper route
//!   acts for, the `operator` role opens the operator routes;
//! - [`problem`]: every error as RFC 9457 problem+json, and the one table
//!   from gRPC codes to HTTP statuses;
//! - [`mesh`]: the mesh's clients, called as the `bff` identity (shoppers)
//!   or `operator` (operator routes), with the request's deadline;
//! - [`api`]: the routes, one module per resource, and `/openapi.json`;
//! - `console`: the operator console at `/console`.

// A `Problem` is built on the error path only, which answers a request at
// once: its size costs nothing worth boxing.
#![allow(clippy::result_large_err)]

pub mod api;
pub mod auth;
pub mod config;
mod console;
pub mod extract;
pub mod mesh;
pub mod metrics;
pub mod problem;
pub mod user_limit;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath};
use axum::http::StatusCode;
use axum::routing::get;
use tower::limit::GlobalConcurrencyLimitLayer;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;

pub use config::{BffArgs, BffConfig, Cli, Command};

use crate::auth::Authenticator;
use crate::config::Limits;
use crate::mesh::Mesh;
use crate::problem::{Problem, reason};

/// What every handler reads.
pub struct AppState {
    pub mesh: Mesh,
    pub auth: Authenticator,
    pub limits: Limits,
    pub users: user_limit::UserLimiter,
}

/// The whole HTTP application: API, OpenAPI document, console, health.
pub fn app(config: &BffConfig) -> anyhow::Result<Router> {
    let state = Arc::new(AppState {
        mesh: Mesh::connect(&config.mesh, &config.tls)?,
        auth: config.auth.clone(),
        limits: config.limits,
        users: user_limit::UserLimiter::new(config.limits.per_user),
    });
    let (api, _) = api::router();
    Ok(api
        .merge(console::router())
        .route("/healthz", get(|| async { "ok" }))
        .fallback(|| async {
            Problem::new(
                StatusCode::NOT_FOUND,
                reason::ROUTE_NOT_FOUND,
                "no such route",
            )
        })
        .method_not_allowed_fallback(|| async {
            Problem::new(
                StatusCode::METHOD_NOT_ALLOWED,
                reason::METHOD_NOT_ALLOWED,
                "this route does not take that method",
            )
        })
        .with_state(state)
        .layer(DefaultBodyLimit::max(config.limits.body_bytes))
        .layer(GlobalConcurrencyLimitLayer::new(config.limits.concurrency))
        .layer(CatchPanicLayer::custom(|_| {
            axum::response::IntoResponse::into_response(Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "INTERNAL",
                "the BFF failed; this is a bug",
            ))
        }))
        // Outside the panic guard, which answers a panic with a 500 to count.
        .layer(axum::middleware::from_fn(metrics::measure))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(http_span)
                .on_response(record_status),
        ))
}

/// The span of one HTTP request, a child of the caller's span when it
/// sends a W3C `traceparent`; none for `/healthz`, which probes call every
/// few seconds.
fn http_span(request: &axum::http::Request<axum::body::Body>) -> tracing::Span {
    let path = request.uri().path();
    if path == "/healthz" {
        return tracing::Span::none();
    }
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or(path, MatchedPath::as_str);
    let method = request.method().as_str();
    let span = tracing::info_span!(
        "http",
        otel.name = %format_args!("{method} {route}"),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        http.request.method = method,
        http.route = route,
        url.path = path,
        http.response.status_code = tracing::field::Empty,
    );
    commerce_platform::trace_context::continue_from(&span, request.headers());
    span
}

/// The answer's status on the request's span; a 5xx is an error of ours.
fn record_status<B>(
    response: &axum::http::Response<B>,
    _latency: std::time::Duration,
    span: &tracing::Span,
) {
    let status = response.status();
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "error");
    }
}

/// Serves `app` on `listener` until `shutdown` resolves, then lets the
/// requests in flight finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
