//! The channel tests call servers through: mutual TLS, each method as an
//! identity the server's own policy table allows (the first its rule
//! names), so the suite exercises the handlers over the same transport and
//! authorization as production. Tests of the trust boundary itself pick a
//! caller with `channel_as`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::task::{Context, Poll};

use commerce_platform::tls::certs::{CLIENTS, SERVERS};
use commerce_platform::tls::{Callers, Rule, TlsFiles, policy, rule_for};
use futures::future::BoxFuture;
use tonic::body::Body;
use tonic::transport::Channel;
use tower::ServiceExt as _;

/// The identity a method no rule names is called as (and refused).
pub const DEFAULT_CALLER: &str = "operator";

/// A lazily connecting channel per identity to one server, and the policy
/// that picks among them. Cheap to clone.
#[derive(Clone)]
pub struct TestChannel {
    policy: Option<&'static [Rule]>,
    by_identity: Arc<HashMap<&'static str, Channel>>,
    default: Channel,
}

impl TestChannel {
    /// Channels to `uri`, a server of `service` (its policy table picks the
    /// caller), with the identities of `certs` (None: one plaintext one).
    pub fn new(uri: &str, service: &str, certs: Option<&Path>) -> Self {
        let connect = |tls: Option<TlsFiles>| {
            commerce_platform::tls::endpoint(uri, tls.as_ref())
                .expect("the test certificates and a loopback address make an endpoint")
                .timeout(std::time::Duration::from_secs(30))
                .connect_lazy()
        };
        let by_identity: HashMap<&'static str, Channel> = match certs {
            Some(dir) => SERVERS
                .iter()
                .chain(CLIENTS)
                .map(|identity| (*identity, connect(Some(TlsFiles::in_dir(dir, identity)))))
                .collect(),
            None => HashMap::new(),
        };
        let default = by_identity
            .get(DEFAULT_CALLER)
            .cloned()
            .unwrap_or_else(|| connect(None));
        Self {
            policy: policy::for_server(service),
            by_identity: Arc::new(by_identity),
            default,
        }
    }

    fn for_method(&self, path: &str) -> &Channel {
        self.policy
            .and_then(|table| rule_for(table, path))
            .and_then(|rule| match rule.callers {
                Callers::Only(names) => names.first(),
                Callers::AnyPeer => None,
            })
            .and_then(|identity| self.by_identity.get(identity))
            .unwrap_or(&self.default)
    }
}

impl tower::Service<http::Request<Body>> for TestChannel {
    type Response = http::Response<Body>;
    type Error = tonic::transport::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readiness is awaited on the chosen channel, in the call.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let channel = self.for_method(request.uri().path()).clone();
        Box::pin(channel.oneshot(request))
    }
}
