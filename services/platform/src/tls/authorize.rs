//! Per-method authorization, in front of every handler: a policy table says
//! which identities may call which methods, and anything it does not name is
//! refused (default deny).
//!
//! Methods of a service the table does not mention at all go on to the
//! router, which answers UNIMPLEMENTED: the service is not served here (a
//! server will not start with a served method its table does not name).
//!
//! The layer decides on the caller's certificate only (see
//! [`super::Identity`]); a handler that must scope data to a user (the BFF
//! vouches for users) reads the identity from the request's extensions.
//!
//! On a connection without TLS there is no identity to judge, and the layer
//! lets every request through: a plaintext server (development only, logged
//! at start) is as open as it was before this layer existed.

use std::task::{Context, Poll};

use futures::future::{Either, Ready, ready};
use tonic::Status;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic_types::{ErrorDetails, StatusExt as _};
use tower::{Layer, Service};

use super::identity::Identity;
use crate::error::ERROR_DOMAIN;

/// `ErrorInfo.reason` of a refusal.
pub const CALLER_NOT_ALLOWED: &str = "CALLER_NOT_ALLOWED";

/// Who may call the methods a [`Rule`] covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Callers {
    /// Any peer that completed the mutual TLS handshake, whether or not its
    /// certificate names an identity (health checks).
    AnyPeer,
    /// Only these identities.
    Only(&'static [&'static str]),
}

/// One line of a policy table.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    /// A full method (`/commerce.point.v1.PointService/Charge`) or a whole
    /// service (`/grpc.health.v1.Health/`, ending in `/`).
    pub method: &'static str,
    pub callers: Callers,
}

/// The rule for a method: the one naming it exactly, else the one for its
/// service. None means no rule: refused.
pub fn rule_for<'a>(policy: &'a [Rule], method: &str) -> Option<&'a Rule> {
    policy
        .iter()
        .find(|rule| rule.method == method && !rule.method.ends_with('/'))
        .or_else(|| {
            policy.iter().find(|rule| {
                // One method of the service: `/Health/../Other/Charge`
                // is not a health call.
                rule.method.ends_with('/')
                    && method
                        .strip_prefix(rule.method)
                        .is_some_and(|name| !name.is_empty() && !name.contains('/'))
            })
        })
}

/// Whether `caller` (None: a certificate that names no one) may call
/// `method` under `policy`.
pub fn is_allowed(policy: &[Rule], caller: Option<&Identity>, method: &str) -> bool {
    match rule_for(policy, method).map(|rule| rule.callers) {
        Some(Callers::AnyPeer) => true,
        Some(Callers::Only(names)) => caller.is_some_and(|caller| names.contains(&caller.as_str())),
        None => false,
    }
}

/// Whether `policy` has any rule for `method`'s service. A server refuses to
/// start with a served method its table does not name, so a service the
/// table does not mention at all is not served here.
pub fn names_service(policy: &[Rule], method: &str) -> bool {
    let Some((service, _)) = method.rsplit_once('/') else {
        return false;
    };
    // Every request passes here: compare in place, no allocation.
    policy.iter().any(|rule| {
        rule.method
            .strip_prefix(service)
            .is_some_and(|rest| rest.starts_with('/'))
    })
}

/// The refusal of `method` to `caller`: PERMISSION_DENIED with an
/// `ErrorInfo` naming both, in the mesh's error domain.
pub fn refusal(caller: Option<&Identity>, method: &str) -> Status {
    let caller = caller.map_or("(no identity)", Identity::as_str);
    let details = ErrorDetails::with_error_info(
        CALLER_NOT_ALLOWED,
        ERROR_DOMAIN,
        [
            ("caller".to_owned(), caller.to_owned()),
            ("method".to_owned(), method.to_owned()),
        ],
    );
    Status::with_error_details(
        tonic::Code::PermissionDenied,
        format!("{caller} may not call {method}"),
        details,
    )
}

/// Applies a policy table to every request of a server.
#[derive(Debug, Clone, Copy)]
pub struct AuthorizeLayer {
    policy: &'static [Rule],
}

impl AuthorizeLayer {
    pub fn new(policy: &'static [Rule]) -> Self {
        Self { policy }
    }
}

impl<S> Layer<S> for AuthorizeLayer {
    type Service = Authorize<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authorize {
            inner,
            policy: self.policy,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Authorize<S> {
    inner: S,
    policy: &'static [Rule],
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Authorize<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    ResBody: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<Ready<Result<Self::Response, Self::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        let Some(connection) = request.extensions().get::<TlsConnectInfo<TcpConnectInfo>>() else {
            // Plaintext: nobody to judge (see the module docs).
            return Either::Right(self.inner.call(request));
        };
        let caller = connection
            .peer_certs()
            .and_then(|certificates| Identity::of_peer(&certificates));
        let method = request.uri().path();
        if !names_service(self.policy, method) {
            // Not served here: the router answers UNIMPLEMENTED, as any
            // gRPC server does for a service it does not have.
            return Either::Right(self.inner.call(request));
        }
        if !is_allowed(self.policy, caller.as_ref(), method) {
            tracing::warn!(
                caller = caller.as_ref().map(Identity::as_str),
                method,
                "refused: caller not allowed"
            );
            let response = refusal(caller.as_ref(), method).into_http();
            return Either::Left(ready(Ok(response)));
        }
        if let Some(caller) = caller {
            request.extensions_mut().insert(caller);
        }
        Either::Right(self.inner.call(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &[Rule] = &[
        Rule {
            method: "/grpc.health.v1.Health/",
            callers: Callers::AnyPeer,
        },
        Rule {
            method: "/demo.Service/",
            callers: Callers::Only(&["operator"]),
        },
        Rule {
            method: "/demo.Service/Read",
            callers: Callers::Only(&["bff", "operator"]),
        },
    ];

    fn id(name: &str) -> Identity {
        Identity::parse(name).unwrap()
    }

    #[test]
    fn the_exact_method_rule_wins_over_its_service_rule() {
        assert!(is_allowed(POLICY, Some(&id("bff")), "/demo.Service/Read"));
        assert!(!is_allowed(POLICY, Some(&id("bff")), "/demo.Service/Write"));
        assert!(is_allowed(
            POLICY,
            Some(&id("operator")),
            "/demo.Service/Write"
        ));
    }

    #[test]
    fn what_no_rule_names_is_refused_to_everyone() {
        assert!(!is_allowed(
            POLICY,
            Some(&id("operator")),
            "/other.Service/Read"
        ));
        // A service rule covers one method name, nothing below it.
        assert!(!is_allowed(
            POLICY,
            Some(&id("operator")),
            "/grpc.health.v1.Health/../demo.Service/Write"
        ));
        assert!(rule_for(POLICY, "/grpc.health.v1.Health/").is_none());
        // A prefix only matches whole service names.
        assert!(!is_allowed(
            POLICY,
            Some(&id("operator")),
            "/demo.ServiceX/Read"
        ));
    }

    #[test]
    fn a_service_the_table_does_not_mention_is_not_served_here() {
        assert!(names_service(POLICY, "/demo.Service/Anything"));
        assert!(names_service(POLICY, "/grpc.health.v1.Health/Check"));
        assert!(!names_service(POLICY, "/other.Service/Read"));
        assert!(!names_service(POLICY, "/demo.ServiceX/Read"));
        assert!(!names_service(POLICY, "garbage"));
    }

    #[test]
    fn health_is_open_even_to_a_certificate_that_names_no_one() {
        assert!(is_allowed(POLICY, None, "/grpc.health.v1.Health/Check"));
        assert!(!is_allowed(POLICY, None, "/demo.Service/Read"));
    }

    #[test]
    fn a_refusal_names_caller_and_method() {
        let status = refusal(Some(&id("bff")), "/demo.Service/Write");
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        let info = status.get_details_error_info().unwrap();
        assert_eq!(info.reason, CALLER_NOT_ALLOWED);
        assert_eq!(info.domain, ERROR_DOMAIN);
        assert_eq!(info.metadata["caller"], "bff");
        assert_eq!(info.metadata["method"], "/demo.Service/Write");
    }
}
