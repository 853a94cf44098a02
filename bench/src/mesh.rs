//! The systems under test, as processes this binary starts by re-executing
//! itself (`commerce-bench serve <server>`): the four servers of the mesh and
//! the baseline, each with its own fresh database.

use std::path::{Path, PathBuf};

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

use crate::keyspace::RunRedis;

/// Databases of one run, `<prefix>_<server>`, dropped and created anew.
#[derive(Debug, Clone)]
pub struct Databases {
    server_url: String,
    prefix: String,
}

/// Every server with a database of its own.
pub const SERVERS: [&str; 6] = [
    "product",
    "point",
    "coupon",
    "orchestrator",
    "baseline",
    "dtm",
];

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
    /// The dtm peer: the dtmrs TC with its branch endpoints (its own
    /// database), over the same product, point and coupon services.
    pub dtm: crate::dtm::Dtm,
    /// More orchestrator instances on the same database (the `instances`
    /// scenario), by process name: `orchestrator-2`, `orchestrator-3`, ...
    pub extra_orchestrators: Vec<(&'static str, Node)>,
    /// What it takes to start another orchestrator instance.
    orchestrator_spawn: OrchestratorSpawn,
    /// The run's Redis and key prefix (every server but dtm has it).
    pub redis: RunRedis,
    /// What it takes to start a server without Redis next to the mesh.
    program: PathBuf,
    databases: Databases,
    log_dir: PathBuf,
}

/// Program, database, participants and log directory of the orchestrator,
/// for starting more instances of it.
struct OrchestratorSpawn {
    program: PathBuf,
    database_url: String,
    /// Every argument but the instance id.
    args: Vec<String>,
    log_dir: PathBuf,
}

/// Process names of extra orchestrator instances (the first is
/// `orchestrator`).
const EXTRA_ORCHESTRATORS: [&str; 7] = [
    "orchestrator-2",
    "orchestrator-3",
    "orchestrator-4",
    "orchestrator-5",
    "orchestrator-6",
    "orchestrator-7",
    "orchestrator-8",
];

/// Log filter of every orchestrator instance: the per-step timing events
/// feed the latency breakdown.
const ORCHESTRATOR_LOG: [(&str, &str); 1] = [("RUST_LOG", "info,saga_timing=debug")];

/// Pool size of each server: enough for 128 clients without queueing on
/// connections, within MariaDB's connection limit.
const POOL: &str = "32";

impl Systems {
    pub async fn start(
        databases: &Databases,
        log_dir: &Path,
        redis: RunRedis,
    ) -> anyhow::Result<Self> {
        let program = std::env::current_exe()?;
        let node = |service: &'static str, extra: Vec<String>| {
            let mut args = vec!["--db-pool-size".to_owned(), POOL.to_owned()];
            args.extend(redis.server_args());
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
        let orchestrator_args: Vec<String> = vec![
            "--db-pool-size".into(),
            POOL.into(),
            "--product-addr".into(),
            product.endpoint(),
            "--point-addr".into(),
            point.endpoint(),
            "--coupon-addr".into(),
            coupon.endpoint(),
            "--max-recovering".into(),
            "1024".into(),
            "--concurrency-limit".into(),
            "2048".into(),
            "--log-format".into(),
            "json".into(),
        ];
        let orchestrator_args = redis
            .server_args()
            .into_iter()
            .chain(orchestrator_args)
            .collect();
        let orchestrator_spawn = OrchestratorSpawn {
            program: program.clone(),
            database_url: databases.url("orchestrator"),
            args: orchestrator_args,
            log_dir: log_dir.to_owned(),
        };
        let mut orchestrator = orchestrator_spawn.node("orchestrator", "bench-orchestrator");
        orchestrator.start_with(&ORCHESTRATOR_LOG).await;
        let mut dtm = crate::dtm::Dtm::new(
            &program,
            &databases.url("dtm"),
            log_dir,
            [&product, &point, &coupon],
        );
        dtm.start().await;
        Ok(Self {
            product,
            point,
            coupon,
            orchestrator,
            baseline,
            dtm,
            extra_orchestrators: Vec::new(),
            orchestrator_spawn,
            redis,
            program,
            databases: databases.clone(),
            log_dir: log_dir.to_owned(),
        })
    }

    /// Starts a second `service` (product or coupon) on the same database
    /// with every Redis path off (`--redis-url off`), logging to
    /// `<service>-no-redis.log`: the "without" side of a fast-path
    /// comparison. The caller kills it when done.
    pub async fn start_without_redis(&self, service: &'static str) -> Node {
        let mut args = vec!["--db-pool-size".to_owned(), POOL.to_owned()];
        args.extend(self.redis.server_args_without());
        let mut node = Node::new(
            &self.program,
            &["serve"],
            service,
            &self.databases.url(service),
            args,
            &self.log_dir,
            &format!("{service}-no-redis"),
        );
        node.start().await;
        node
    }

    /// Runs `count` orchestrator instances in all (the first one included):
    /// starts the missing ones (each its own process with its own instance
    /// id, on the same database and participants) or kills the surplus.
    pub async fn set_orchestrators(&mut self, count: usize) -> anyhow::Result<()> {
        let extra = count.saturating_sub(1);
        anyhow::ensure!(
            extra <= EXTRA_ORCHESTRATORS.len(),
            "at most {} orchestrator instances",
            EXTRA_ORCHESTRATORS.len() + 1
        );
        while self.extra_orchestrators.len() > extra {
            if let Some((_, mut node)) = self.extra_orchestrators.pop() {
                node.kill().await;
            }
        }
        while self.extra_orchestrators.len() < extra {
            let name = EXTRA_ORCHESTRATORS[self.extra_orchestrators.len()];
            let mut node = self.orchestrator_spawn.node(name, &format!("bench-{name}"));
            node.start_with(&ORCHESTRATOR_LOG).await;
            self.extra_orchestrators.push((name, node));
        }
        Ok(())
    }

    /// Kills the first orchestrator instance (SIGKILL) and starts it again,
    /// same instance id, with `env` added to its environment (its flags'
    /// `env` names, e.g. `CALL_TIMEOUT_MS`).
    pub async fn restart_orchestrator_with(&mut self, env: &[(&str, &str)]) {
        self.orchestrator.kill().await;
        let mut all = ORCHESTRATOR_LOG.to_vec();
        all.extend_from_slice(env);
        self.orchestrator.start_with(&all).await;
    }

    /// Every orchestrator instance running, the first one first.
    pub fn orchestrators(&self) -> Vec<&Node> {
        std::iter::once(&self.orchestrator)
            .chain(self.extra_orchestrators.iter().map(|(_, n)| n))
            .collect()
    }

    /// (name, pid) of every running process under test.
    pub fn pids(&self) -> Vec<(&'static str, u32)> {
        [
            &self.orchestrator,
            &self.product,
            &self.point,
            &self.coupon,
            &self.baseline,
            &self.dtm.node,
        ]
        .into_iter()
        .filter_map(|n| n.pid().map(|pid| (n.service, pid)))
        .chain(
            self.extra_orchestrators
                .iter()
                .filter_map(|(name, n)| n.pid().map(|pid| (*name, pid))),
        )
        .collect()
    }

    pub async fn stop(mut self) {
        for node in [
            &mut self.orchestrator,
            &mut self.product,
            &mut self.point,
            &mut self.coupon,
            &mut self.baseline,
            &mut self.dtm.node,
        ] {
            node.kill().await;
        }
        for (_, node) in &mut self.extra_orchestrators {
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

impl OrchestratorSpawn {
    fn node(&self, name: &str, instance_id: &str) -> Node {
        let mut args = self.args.clone();
        args.extend(["--instance-id".to_owned(), instance_id.to_owned()]);
        Node::new(
            &self.program,
            &["serve"],
            "orchestrator",
            &self.database_url,
            args,
            &self.log_dir,
            name,
        )
    }
}

/// A fresh HTTP/2 connection to `node` (callers open several to spread load).
pub fn channel(node: &Node) -> Channel {
    Endpoint::from_shared(node.endpoint())
        .expect("loopback endpoint")
        .tcp_nodelay(true)
        .connect_lazy()
}
