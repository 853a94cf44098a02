//! The BFF's view of the mesh: one lazily connected channel per server, as
//! the `bff` identity for shoppers' calls and as `operator` for operator
//! routes, and the request's deadline and trace context carried onto every
//! call.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::HeaderValue;
use axum::http::request::Parts;
use commerce_platform::tls::{self, TlsFiles};
use commerce_platform::trace_context::{TracedChannel, traced};
use commerce_proto::coupon::v1::coupon_admin_service_client::CouponAdminServiceClient;
use commerce_proto::coupon::v1::coupon_service_client::CouponServiceClient;
use commerce_proto::order::v1::order_service_client::OrderServiceClient;
use commerce_proto::order::v1::saga_admin_service_client::SagaAdminServiceClient;
use commerce_proto::point::v1::point_service_client::PointServiceClient;
use commerce_proto::product::v1::catalog_service_client::CatalogServiceClient;
use commerce_proto::product::v1::product_admin_service_client::ProductAdminServiceClient;
use tonic::{Response, Status};

use crate::AppState;
use crate::config::MeshAddrs;
use crate::problem::Problem;

/// Clients of every service the BFF fronts, each call carrying the HTTP
/// request's trace context. Cloning is cheap (channels are shared handles).
#[derive(Clone)]
pub struct Mesh {
    pub orders: OrderServiceClient<TracedChannel>,
    pub catalog: CatalogServiceClient<TracedChannel>,
    pub points: PointServiceClient<TracedChannel>,
    pub coupons: CouponServiceClient<TracedChannel>,
    /// As the operator: any user's order, shipping states.
    pub orders_admin: OrderServiceClient<TracedChannel>,
    pub sagas: SagaAdminServiceClient<TracedChannel>,
    pub product_admin: ProductAdminServiceClient<TracedChannel>,
    pub coupon_admin: CouponAdminServiceClient<TracedChannel>,
}

/// How the BFF proves who it is to the mesh.
#[derive(Debug, Clone)]
pub enum MeshTls {
    /// Mutual TLS: the `bff` identity for shoppers, `operator` for operators.
    Mutual {
        shopper: TlsFiles,
        operator: TlsFiles,
    },
    /// Development only (`--insecure-plaintext`).
    Plaintext,
}

impl Mesh {
    /// Channels connect on first use, so the BFF starts (and answers 503)
    /// while a server is still down.
    pub fn connect(addrs: &MeshAddrs, tls: &MeshTls) -> anyhow::Result<Self> {
        let (shopper, operator) = match tls {
            MeshTls::Mutual { shopper, operator } => (Some(shopper), Some(operator)),
            MeshTls::Plaintext => (None, None),
        };
        let channel = |uri: &str, files: Option<&TlsFiles>| -> anyhow::Result<TracedChannel> {
            Ok(traced(
                tls::endpoint(uri, files)?
                    .connect_timeout(Duration::from_secs(2))
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(Duration::from_secs(30))
                    .connect_lazy(),
            ))
        };
        Ok(Self {
            orders: OrderServiceClient::new(channel(&addrs.orchestrator, shopper)?),
            catalog: CatalogServiceClient::new(channel(&addrs.product, shopper)?),
            points: PointServiceClient::new(channel(&addrs.point, shopper)?),
            coupons: CouponServiceClient::new(channel(&addrs.coupon, shopper)?),
            orders_admin: OrderServiceClient::new(channel(&addrs.orchestrator, operator)?),
            sagas: SagaAdminServiceClient::new(channel(&addrs.orchestrator, operator)?),
            product_admin: ProductAdminServiceClient::new(channel(&addrs.product, operator)?),
            coupon_admin: CouponAdminServiceClient::new(channel(&addrs.coupon, operator)?),
        })
    }
}

/// How long the mesh may take for one request: the BFF's default, or less
/// when the client says so with `Prefer: wait=<seconds>` (RFC 7240), never
/// more than the BFF's ceiling.
#[derive(Debug, Clone, Copy)]
pub struct Deadline(pub Duration);

/// Extra time the BFF waits past the deadline it sent, so the mesh's own
/// answer to an expired deadline (a PENDING order, DEADLINE_EXCEEDED) gets
/// back instead of the BFF's 504.
const ANSWER_GRACE: Duration = Duration::from_millis(500);

impl Deadline {
    fn from_prefer(header: Option<&HeaderValue>, default: Duration, max: Duration) -> Self {
        let asked = header
            .and_then(|h| h.to_str().ok())
            .and_then(|h| {
                h.split([',', ';'])
                    .filter_map(|p| p.trim().strip_prefix("wait="))
                    .find_map(|v| v.trim().parse::<u64>().ok())
            })
            .map(Duration::from_secs);
        Self(asked.unwrap_or(default).clamp(Duration::from_secs(1), max))
    }

    /// Runs one gRPC call with this deadline sent as its `grpc-timeout`.
    /// Past the deadline (and a short grace) the call is dropped, which
    /// resets its stream: the mesh sees a cancelled call, which its handlers
    /// are built to survive.
    pub async fn call<Q, T, F>(
        self,
        request: Q,
        call: impl FnOnce(tonic::Request<Q>) -> F,
    ) -> Result<T, Problem>
    where
        F: Future<Output = Result<Response<T>, Status>>,
    {
        let mut request = tonic::Request::new(request);
        request.set_timeout(self.0);
        match tokio::time::timeout(self.0 + ANSWER_GRACE, call(request)).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(Problem::from(status)),
            Err(_) => Err(Problem::deadline(self.0)),
        }
    }
}

impl FromRequestParts<Arc<AppState>> for Deadline {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        Ok(Self::from_prefer(
            parts.headers.get("prefer"),
            state.limits.default_deadline,
            state.limits.max_deadline,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefer_wait_shortens_the_deadline_within_bounds() {
        let (default, max) = (Duration::from_secs(10), Duration::from_secs(30));
        let at = |h: &'static str| {
            Deadline::from_prefer(Some(&HeaderValue::from_static(h)), default, max).0
        };
        assert_eq!(at("wait=3"), Duration::from_secs(3));
        assert_eq!(at("respond-async, wait=5"), Duration::from_secs(5));
        assert_eq!(at("wait=999"), max);
        assert_eq!(at("wait=0"), Duration::from_secs(1));
        assert_eq!(at("wait=soon"), default);
        assert_eq!(Deadline::from_prefer(None, default, max).0, default);
    }
}
