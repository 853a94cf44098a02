//! The systems under test, as processes this binary starts by re-executing
//! itself (`commerce-bench serve <server>`): the four servers of the mesh and
//! the baseline, each with its own fresh database.

use std::path::Path;

use commerce_e2e::node::Node;
use commerce_proto::coupon::v1::coupon_admin_service_client::CouponAdminServiceClient;
use commerce_proto::coupon::v1::coupon_service_client::CouponServiceClient;
use commerce_proto::order::v1::order_service_client::OrderServiceClient;
use commerce_proto::order::v1::saga_admin_service_client::SagaAdminServiceClient;
use commerce_proto::point::v1::point_service_client::PointServiceClient;
use commerce_proto::product::v1::catalog_service_client::CatalogServiceClient;
use commerce_proto::product::v1::product_admin_service_client::ProductAdminServiceClient;
use diesel_async::{AsyncConnection, AsyncMysqlConnection, SimpleAsyncConnection};
use tonic::transport::{Channel, Endpoint};

/// Databases of one run, `<prefix>_<server>`, dropped and created anew.
pub struct Databases {
    server_url: String,
    prefix: String,
}

/// Every server with a database of its own.
pub const SERVERS: [&str; 5] = ["product", "point", "coupon", "orchestrator", "baseline"];

impl Databases {
    pub fn new(server_url: &str, prefix: &str) -> Self {
        Self {
            server_url: server_url.trim_end_matches('/').to_owned(),
            prefix: prefix.to_owned(),
        }
    }

    fn name(&self, server: &str) -> String {
        format!("{}_{server}", self.prefix)
    }

    pub fn url(&self, server: &str) -> String {
        format!("{}/{}", self.server_url, self.name(server))
    }

    /// Drops and creates the database of every server.
    pub async fn recreate(&self) -> anyhow::Result<()> {
        let mut conn = AsyncMysqlConnection::establish(&self.server_url).await?;
        for server in SERVERS {
            let name = self.name(server);
            conn.batch_execute(&format!("DROP DATABASE IF EXISTS `{name}`"))
                .await?;
            conn.batch_execute(&format!(
                "CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
            ))
            .await?;
        }
        Ok(())
    }

    pub async fn drop_all(&self) -> anyhow::Result<()> {
        let mut conn = AsyncMysqlConnection::establish(&self.server_url).await?;
        for server in SERVERS {
            conn.batch_execute(&format!("DROP DATABASE IF EXISTS `{}`", self.name(server)))
                .await?;
        }
        Ok(())
    }

    pub fn server_url(&self) -> &str {
        &self.server_url
    }
}

/// Every process under test.
pub struct Systems {
    pub product: Node,
    pub point: Node,
    pub coupon: Node,
    pub orchestrator: Node,
    pub baseline: Node,
}

/// Pool size of each server: enough for 128 clients without queueing on
/// connections, within MariaDB's connection limit.
const POOL: &str = "32";

impl Systems {
    pub async fn start(databases: &Databases, log_dir: &Path) -> anyhow::Result<Self> {
        let program = std::env::current_exe()?;
        let node = |service: &'static str, extra: Vec<String>| {
            let mut args = vec!["--db-pool-size".to_owned(), POOL.to_owned()];
            args.extend(extra);
            Node::new(
                &program,
                &["serve"],
                service,
                &databases.url(service),
                args,
                log_dir,
                service,
            )
        };
        let mut product = node("product", vec![]);
        let mut point = node("point", vec![]);
        let mut coupon = node("coupon", vec![]);
        let mut baseline = node("baseline", vec![]);
        tokio::join!(
            product.start(),
            point.start(),
            coupon.start(),
            baseline.start()
        );
        let mut orchestrator = node(
            "orchestrator",
            vec![
                "--product-addr".into(),
                product.endpoint(),
                "--point-addr".into(),
                point.endpoint(),
                "--coupon-addr".into(),
                coupon.endpoint(),
                "--instance-id".into(),
                "bench-orchestrator".into(),
                "--max-recovering".into(),
                "1024".into(),
                "--concurrency-limit".into(),
                "2048".into(),
                "--log-format".into(),
                "json".into(),
            ],
        );
        // The per-step timing events feed the latency breakdown.
        orchestrator
            .start_with(&[("RUST_LOG", "info,saga_timing=debug")])
            .await;
        Ok(Self {
            product,
            point,
            coupon,
            orchestrator,
            baseline,
        })
    }

    /// (name, pid) of every running process under test.
    pub fn pids(&self) -> Vec<(&'static str, u32)> {
        [
            &self.orchestrator,
            &self.product,
            &self.point,
            &self.coupon,
            &self.baseline,
        ]
        .into_iter()
        .filter_map(|n| n.pid().map(|pid| (n.service, pid)))
        .collect()
    }

    pub async fn stop(mut self) {
        for node in [
            &mut self.orchestrator,
            &mut self.product,
            &mut self.point,
            &mut self.coupon,
            &mut self.baseline,
        ] {
            node.kill().await;
        }
    }

    pub fn orders(&self) -> OrderServiceClient<Channel> {
        OrderServiceClient::new(channel(&self.orchestrator))
    }

    pub fn sagas(&self) -> SagaAdminServiceClient<Channel> {
        SagaAdminServiceClient::new(channel(&self.orchestrator))
    }

    pub fn catalog(&self) -> CatalogServiceClient<Channel> {
        CatalogServiceClient::new(channel(&self.product))
    }

    pub fn product_admin(&self) -> ProductAdminServiceClient<Channel> {
        ProductAdminServiceClient::new(channel(&self.product))
    }

    pub fn points(&self) -> PointServiceClient<Channel> {
        PointServiceClient::new(channel(&self.point))
    }

    pub fn coupons(&self) -> CouponServiceClient<Channel> {
        CouponServiceClient::new(channel(&self.coupon))
    }

    pub fn coupon_admin(&self) -> CouponAdminServiceClient<Channel> {
        CouponAdminServiceClient::new(channel(&self.coupon))
    }
}

/// A fresh HTTP/2 connection to `node` (callers open several to spread load).
pub fn channel(node: &Node) -> Channel {
    Endpoint::from_shared(node.endpoint())
        .expect("loopback endpoint")
        .tcp_nodelay(true)
        .connect_lazy()
}
