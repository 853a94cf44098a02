//! The BFF in front of a test mesh: served in the test's runtime on a
//! loopback port, calling the mesh's real processes over mutual TLS as the
//! `bff` and `operator` identities, with tokens minted by the test.

use std::time::Duration;

use commerce_bff::auth::{Authenticator, OPERATOR_ROLE};
use commerce_bff::config::{BffConfig, Limits, MeshAddrs};
use commerce_bff::mesh::MeshTls;
use commerce_bff::user_limit::UserCeiling;
use commerce_platform::tls::TlsFiles;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::harness::Mesh;

pub const ISSUER: &str = "commerce";
pub const AUDIENCE: &str = "commerce-bff";

/// A BFF serving on `url` until dropped.
pub struct Bff {
    pub url: String,
    pub auth: Authenticator,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl Bff {
    /// A BFF in front of `mesh`, with the production limits but the given
    /// default deadline.
    pub async fn start(mesh: &Mesh) -> Self {
        Self::start_with(mesh, Duration::from_secs(10)).await
    }

    /// A BFF in front of `mesh`, with the point and product servers
    /// replaced by these addresses when given.
    pub async fn start_at(
        mesh: &Mesh,
        point: Option<&str>,
        product: Option<&str>,
        deadline: Duration,
    ) -> Self {
        let mut addrs = addrs(mesh);
        if let Some(point) = point {
            addrs.point = point.to_owned();
        }
        if let Some(product) = product {
            addrs.product = product.to_owned();
        }
        Self::serve(addrs, deadline, None).await
    }

    pub async fn start_with(mesh: &Mesh, deadline: Duration) -> Self {
        Self::serve(addrs(mesh), deadline, None).await
    }

    /// A BFF whose users each have `ceiling` (`<per_second>[/<burst>]`).
    pub async fn start_limited(mesh: &Mesh, ceiling: &str) -> Self {
        let ceiling = UserCeiling::parse(ceiling).unwrap();
        Self::serve(addrs(mesh), Duration::from_secs(10), ceiling).await
    }

    /// Tests call far faster than people: no per-user ceiling unless asked.
    async fn serve(mesh: MeshAddrs, deadline: Duration, per_user: Option<UserCeiling>) -> Self {
        let secret = uuid::Uuid::new_v4().simple().to_string().repeat(2);
        let auth = Authenticator::new(secret.as_bytes(), ISSUER, AUDIENCE).unwrap();
        let certs = commerce_platform::tls::certs::test_dir();
        let config = BffConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            metrics_listen: None,
            mesh,
            tls: MeshTls::Mutual {
                shopper: TlsFiles::in_dir(certs, "bff"),
                operator: TlsFiles::in_dir(certs, "operator"),
            },
            auth: auth.clone(),
            limits: Limits {
                default_deadline: deadline,
                max_deadline: Duration::from_secs(30),
                body_bytes: 64 * 1024,
                concurrency: 256,
                per_user,
            },
        };
        let app = commerce_bff::app(&config).unwrap();
        let listener = tokio::net::TcpListener::bind(config.listen).await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(commerce_bff::serve(listener, app, async move {
            let _ = stopped.await;
        }));
        Self {
            url,
            auth,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// A shopper's token.
    pub fn token(&self, user: &str) -> String {
        self.auth
            .mint(user, None, Duration::from_secs(3600))
            .unwrap()
    }

    /// An operator's token.
    pub fn operator_token(&self) -> String {
        self.auth
            .mint("ops", Some(OPERATOR_ROLE), Duration::from_secs(3600))
            .unwrap()
    }

    pub fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// Stops serving and waits for the requests in flight.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }
}

impl Drop for Bff {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

fn addrs(mesh: &Mesh) -> MeshAddrs {
    MeshAddrs {
        orchestrator: mesh.orchestrator().endpoint(),
        product: mesh.product.endpoint(),
        point: mesh.point.endpoint(),
        coupon: mesh.coupon.endpoint(),
    }
}

/// An HTTP client with a bound on every request.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}
