//! The systems under test, as processes this binary starts by re-executing
//! itself (`commerce-bench serve <server>`): the four servers of the mesh and
//! the baseline, each with its own fresh database, serving mutual TLS with
//! the run's certificates (or plaintext, `--transport plaintext`); and the
//! harness's channels to them, each presenting the certificate of the
//! identity the server's policy expects for what the harness calls.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use commerce_e2e::node::Node;
use commerce_platform::tls::certs::{cert_path, ensure_dev_certs, key_path};
use commerce_proto::coupon::v1::coupon_admin_service_client::CouponAdminServiceClient;
use commerce_proto::coupon::v1::coupon_service_client::CouponServiceClient;
use commerce_proto::order::v1::order_service_client::OrderServiceClient;
use commerce_proto::order::v1::saga_admin_service_client::SagaAdminServiceClient;
use commerce_proto::point::v1::point_service_client::PointServiceClient;
use commerce_proto::product::v1::catalog_service_client::CatalogServiceClient;
use commerce_proto::product::v1::product_admin_service_client::ProductAdminServiceClient;
use diesel_async::{AsyncConnection, AsyncMysqlConnection, SimpleAsyncConnection};
use tonic::transport::Channel;

use crate::keyspace::RunRedis;
use crate::model::Transport;

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
    /// The run's certificates (None: every system in plaintext).
    certs: Option<PathBuf>,
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
    certs: Option<PathBuf>,
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

/// Pool size of each server: enough for 128 clients without queueing on
/// connections, within MariaDB's connection limit.
const POOL: &str = "32";

/// Flags of every server: its pool, and no ceiling for the operator, whom
/// the harness seeds and polls as at rates no operator sends (the other
/// callers keep the servers' default ceilings, far above the benchmark's
/// rates; in plaintext every caller is anonymous and unlimited).
fn server_args() -> Vec<String> {
    ["--db-pool-size", POOL, "--rate-limit", "operator=off"]
        .map(str::to_owned)
        .to_vec()
}

/// Whom the harness calls as: the identity whose certificate a channel
/// presents (see `commerce_platform::tls::policy`). Plaintext channels
/// present nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// User-facing calls (PlaceOrder, the catalogue, balances, coupons).
    Bff,
    /// Admin calls (seeding, GetOutbox, saga counts).
    Operator,
    /// Coupon quotes, which only the orchestrator may call: dtm's generator
    /// prices in the orchestrator's place (dtm's branch endpoints present
    /// the orchestrator's certificate too, see `dtm::server`).
    Orchestrator,
}

impl Caller {
    pub fn identity(self) -> &'static str {
        match self {
            Self::Bff => "bff",
            Self::Operator => "operator",
            Self::Orchestrator => "orchestrator",
        }
    }
}

/// The server whose certificate the baseline serves with: any server
/// certificate names 127.0.0.1, which is all the baseline's callers check.
const BASELINE_CERTIFICATE: &str = "product";

/// Makes sure `dir` holds the run's certificates: the mesh's development CA
/// and every identity's (kept while valid, see `ensure_dev_certs`), and the
/// baseline's, a copy of [`BASELINE_CERTIFICATE`]'s under the baseline's
/// name so that its `--tls-dir` finds them.
pub fn ensure_certs(dir: &Path) -> anyhow::Result<()> {
    let made = ensure_dev_certs(dir)
        .with_context(|| format!("making the run's certificates in {}", dir.display()))?;
    tracing::info!(
        dir = %dir.display(),
        issued = ?made.issued,
        kept = ?made.kept,
        "the run's certificates"
    );
    for path in [cert_path, key_path] {
        let (from, to) = (path(dir, BASELINE_CERTIFICATE), path(dir, "baseline"));
        std::fs::copy(&from, &to)
            .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    }
    Ok(())
}

impl Systems {
    /// Starts every system, serving mutual TLS with the certificates in
    /// `certs` (made by [`ensure_certs`]), or plaintext when None.
    pub async fn start(
        databases: &Databases,
        log_dir: &Path,
        redis: RunRedis,
        certs: Option<&Path>,
    ) -> anyhow::Result<Self> {
        let program = std::env::current_exe()?;
        let node = |service: &'static str, extra: Vec<String>| {
            let mut args = server_args();
            args.extend(redis.server_args());
            args.extend(extra);
            Node::new(
                &program,
                &["serve"],
                service,
                &databases.url(service),
                certs,
                args,
                log_dir,
                service,
            )
        };
        // The mesh's servers serve their metrics, as deployed (the latency
        // breakdown reads the orchestrator's); the baseline does not.
        let mesh_node = |service: &'static str| with_metrics(node(service, vec![]));
        let mut product = mesh_node("product");
        let mut point = mesh_node("point");
        let mut coupon = mesh_node("coupon");
        let mut baseline = node("baseline", vec![]);
        tokio::join!(
            product.start(),
            point.start(),
            coupon.start(),
            baseline.start()
        );
        // The participants' addresses stay http://: with TLS the orchestrator
        // calls them as https://, presenting its certificate.
        let orchestrator_args: Vec<String> = vec![
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
        let orchestrator_args = server_args()
            .into_iter()
            .chain(redis.server_args())
            .chain(orchestrator_args)
            .collect();
        let orchestrator_spawn = OrchestratorSpawn {
            program: program.clone(),
            database_url: databases.url("orchestrator"),
            certs: certs.map(Path::to_path_buf),
            args: orchestrator_args,
            log_dir: log_dir.to_owned(),
        };
        let mut orchestrator = orchestrator_spawn.node("orchestrator", "bench-orchestrator");
        orchestrator.start().await;
        let mut dtm = crate::dtm::Dtm::new(
            &program,
            &databases.url("dtm"),
            certs,
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
            certs: certs.map(Path::to_path_buf),
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
        let mut args = server_args();
        args.extend(self.redis.server_args_without());
        let mut node = Node::new(
            &self.program,
            &["serve"],
            service,
            &self.databases.url(service),
            self.certs.as_deref(),
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
            node.start().await;
            self.extra_orchestrators.push((name, node));
        }
        Ok(())
    }

    /// Kills the first orchestrator instance (SIGKILL) and starts it again,
    /// same instance id, with `env` added to its environment (its flags'
    /// `env` names, e.g. `CALL_TIMEOUT_MS`).
    pub async fn restart_orchestrator_with(&mut self, env: &[(&str, &str)]) {
        self.orchestrator.kill().await;
        self.orchestrator.start_with(env).await;
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

    /// How the systems' calls travel.
    pub fn transport(&self) -> Transport {
        match self.certs {
            Some(_) => Transport::Tls,
            None => Transport::Plaintext,
        }
    }

    pub fn orders(&self) -> OrderServiceClient<Channel> {
        OrderServiceClient::new(channel(&self.orchestrator, Caller::Bff))
    }

    pub fn sagas(&self) -> SagaAdminServiceClient<Channel> {
        SagaAdminServiceClient::new(channel(&self.orchestrator, Caller::Operator))
    }

    pub fn catalog(&self) -> CatalogServiceClient<Channel> {
        CatalogServiceClient::new(channel(&self.product, Caller::Bff))
    }

    pub fn product_admin(&self) -> ProductAdminServiceClient<Channel> {
        ProductAdminServiceClient::new(channel(&self.product, Caller::Operator))
    }

    pub fn points(&self) -> PointServiceClient<Channel> {
        PointServiceClient::new(channel(&self.point, Caller::Bff))
    }

    pub fn coupons(&self) -> CouponServiceClient<Channel> {
        CouponServiceClient::new(channel(&self.coupon, Caller::Bff))
    }

    pub fn coupon_admin(&self) -> CouponAdminServiceClient<Channel> {
        CouponAdminServiceClient::new(channel(&self.coupon, Caller::Operator))
    }
}

impl OrchestratorSpawn {
    fn node(&self, name: &str, instance_id: &str) -> Node {
        let mut args = self.args.clone();
        args.extend(["--instance-id".to_owned(), instance_id.to_owned()]);
        let node = Node::new(
            &self.program,
            &["serve"],
            "orchestrator",
            &self.database_url,
            self.certs.as_deref(),
            args,
            &self.log_dir,
            name,
        );
        with_metrics(node)
    }
}

/// `node` serving its metrics, unless `BENCH_METRICS=off`: a run without
/// them measures what they cost (its latency breakdown has no step
/// timings).
fn with_metrics(node: Node) -> Node {
    if std::env::var("BENCH_METRICS").is_ok_and(|v| v == "off") {
        node
    } else {
        node.with_metrics()
    }
}

/// A fresh HTTP/2 connection to `node` as `caller` (callers open several to
/// spread load): mutual TLS with `caller`'s certificate when the node serves
/// TLS, plaintext otherwise.
pub fn channel(node: &Node, caller: Caller) -> Channel {
    let tls = node.tls_files(caller.identity());
    commerce_platform::tls::endpoint(&node.endpoint(), tls.as_ref())
        // The node started with these files, so they exist and parse.
        .expect("a running node's certificates and loopback address make an endpoint")
        .tcp_nodelay(true)
        .connect_lazy()
}
