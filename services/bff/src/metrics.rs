//! The BFF's HTTP metrics: every answer counted by route (the route's
//! pattern, never the raw path), method and status, and timed. Served with
//! the process's other metrics on `--metrics-listen` (see
//! `commerce_platform::metrics`).

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;

/// HTTP requests answered, by `route`, `method` and `status`.
pub const HTTP_REQUESTS: &str = "commerce_http_server_requests_total";
/// Time from a request's arrival to its answer's head, by `route` and
/// `method`.
pub const HTTP_DURATION: &str = "commerce_http_server_request_duration_seconds";

/// Help texts, once the recorder is installed.
pub fn describe() {
    metrics::describe_counter!(
        HTTP_REQUESTS,
        "HTTP requests answered by the BFF, by route, method and status"
    );
    metrics::describe_histogram!(
        HTTP_DURATION,
        metrics::Unit::Seconds,
        "Time from an HTTP request's arrival to its answer"
    );
}

/// Middleware (`axum::middleware::from_fn`) that counts and times a
/// request. A path no route matched is `unmatched`, so that made-up paths
/// cannot grow the metrics without bound.
pub async fn measure(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = standard_method(request.method());
    let response = next.run(request).await;
    metrics::counter!(
        HTTP_REQUESTS,
        "route" => route.clone(),
        "method" => method,
        "status" => response.status().as_str().to_owned(),
    )
    .increment(1);
    metrics::histogram!(HTTP_DURATION, "route" => route, "method" => method)
        .record(started.elapsed());
    response
}

/// The method's name if it is one of HTTP's own, `other` for any a client
/// made up.
fn standard_method(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}
