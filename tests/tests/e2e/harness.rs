//! The mesh as real processes: four servers (product, point, coupon and one
//! or more orchestrators) started from the `commerce-mesh` binary on free
//! loopback ports, each with its own fresh database, and killable (SIGKILL)
//! and restartable one by one.

use std::path::{Path, PathBuf};

use commerce_proto::coupon::v1::coupon_admin_service_client::CouponAdminServiceClient;
use commerce_proto::coupon::v1::coupon_service_client::CouponServiceClient;
use commerce_proto::order::v1::order_service_client::OrderServiceClient;
use commerce_proto::order::v1::saga_admin_service_client::SagaAdminServiceClient;
use commerce_proto::point::v1::point_service_client::PointServiceClient;
use commerce_proto::product::v1::catalog_service_client::CatalogServiceClient;
use commerce_proto::product::v1::product_admin_service_client::ProductAdminServiceClient;
use commerce_proto::product::v1::stock_service_client::StockServiceClient;
use commerce_testkit::TestChannel as Channel;
use commerce_testkit::TestDatabase;

pub use commerce_e2e::node::Node;

/// The servers of a mesh, as they name themselves (in logs and spans).
pub const SERVERS: [&str; 4] = ["orchestrator", "product", "point", "coupon"];

const BINARY: &str = env!("CARGO_BIN_EXE_commerce-mesh");

/// A server of this mesh, run from the `commerce-mesh` binary with the
/// tests' certificates (mutual TLS, as deployed).
pub fn node(
    service: &'static str,
    database_url: &str,
    redis_prefix: &str,
    extra: Vec<String>,
    log_dir: &Path,
    name: &str,
) -> Node {
    // Small pools: many test meshes share one database server; a Redis
    // prefix of the mesh's own: they share one Redis too.
    let mut args = vec![
        "--db-pool-size".to_owned(),
        "8".to_owned(),
        "--redis-prefix".to_owned(),
        redis_prefix.to_owned(),
        // The tests seed and inspect as the operator, far faster than a
        // person would; every other caller keeps its production ceiling.
        "--rate-limit".to_owned(),
        "operator=off".to_owned(),
    ];
    args.extend(extra);
    Node::new(
        Path::new(BINARY),
        &[],
        service,
        database_url,
        Some(commerce_platform::tls::certs::test_dir()),
        args,
        log_dir,
        name,
    )
    .with_metrics()
}

/// An orchestrator on the mesh's order database with the tests' flags,
/// `flags` replacing (or adding to) them. Not started.
pub fn orchestrator(mesh: &Mesh, instance: &str, flags: &[(&str, &str)]) -> Node {
    let mut args = orchestrator_args((&mesh.product, &mesh.point, &mesh.coupon), instance);
    for &(flag, value) in flags {
        match args.iter().position(|a| a == flag) {
            Some(i) => args[i + 1] = value.to_owned(),
            None => args.extend([flag.to_owned(), value.to_owned()]),
        }
    }
    node(
        "orchestrator",
        &mesh.order_db.url,
        &mesh.redis_prefix,
        args,
        &mesh.log_dir,
        instance,
    )
}

/// Adds to `mesh` an orchestrator whose forward retries give up after a
/// second and whose undos are STUCK after three attempts, then left alone for
/// an hour: only an operator's RetrySaga ends such a saga within a test.
pub async fn add_stuck_prone_orchestrator(mesh: &mut Mesh, instance: &str) {
    let mut node = orchestrator(
        mesh,
        instance,
        &[
            ("--forward-retry-budget-ms", "1000"),
            ("--stuck-after", "3"),
            ("--stuck-retry-secs", "3600"),
        ],
    );
    node.start().await;
    mesh.orchestrators.push(node);
}

/// The whole mesh, each server with its own database.
pub struct Mesh {
    pub product: Node,
    pub point: Node,
    pub coupon: Node,
    pub orchestrators: Vec<Node>,
    pub order_db: TestDatabase,
    databases: Vec<TestDatabase>,
    pub log_dir: PathBuf,
    /// Every key and stream of this mesh in Redis starts with it.
    pub redis_prefix: String,
}

/// Orchestrator flags for tests: short leases and backoffs so recovery and
/// retries happen within a test's patience, never relied on for ordering;
/// a forward retry budget longer than any outage a test stages. Tests that
/// need other values start an orchestrator of their own from these.
pub fn orchestrator_args(mesh_ports: (&Node, &Node, &Node), instance: &str) -> Vec<String> {
    let (product, point, coupon) = mesh_ports;
    [
        "--product-addr",
        &product.endpoint(),
        "--point-addr",
        &point.endpoint(),
        "--coupon-addr",
        &coupon.endpoint(),
        "--instance-id",
        instance,
        "--lease-ms",
        "2000",
        "--call-timeout-ms",
        "2000",
        "--retry-base-ms",
        "20",
        "--retry-max-ms",
        "300",
        "--forward-retry-budget-ms",
        "120000",
        "--stuck-after",
        "1000",
        "--recovery-interval-ms",
        "200",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

impl Mesh {
    /// Starts product, point and coupon, and `orchestrators` orchestrators
    /// sharing one database.
    pub async fn start(orchestrators: usize) -> Self {
        Self::start_with(orchestrators, &[]).await
    }

    /// [`Self::start`] with `env` set for every server.
    pub async fn start_with(orchestrators: usize, env: &[(&str, &str)]) -> Self {
        let log_dir =
            std::env::temp_dir().join(format!("commerce-e2e-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&log_dir).expect("log dir");
        let product_db = TestDatabase::create("product").await.expect("product db");
        let point_db = TestDatabase::create("point").await.expect("point db");
        let coupon_db = TestDatabase::create("coupon").await.expect("coupon db");
        let order_db = TestDatabase::create("order").await.expect("order db");
        let prefix = format!("e2e:{}", uuid::Uuid::new_v4().simple());
        let mut product = node(
            "product",
            &product_db.url,
            &prefix,
            vec![],
            &log_dir,
            "product",
        );
        let mut point = node("point", &point_db.url, &prefix, vec![], &log_dir, "point");
        let mut coupon = node(
            "coupon",
            &coupon_db.url,
            &prefix,
            vec![],
            &log_dir,
            "coupon",
        );
        tokio::join!(
            product.start_with(env),
            point.start_with(env),
            coupon.start_with(env)
        );
        let mut nodes: Vec<Node> = (0..orchestrators)
            .map(|i| {
                let instance = format!("orchestrator-{i}");
                node(
                    "orchestrator",
                    &order_db.url,
                    &prefix,
                    orchestrator_args((&product, &point, &coupon), &instance),
                    &log_dir,
                    &instance,
                )
            })
            .collect();
        for node in &mut nodes {
            node.start_with(env).await;
        }
        Self {
            product,
            point,
            coupon,
            orchestrators: nodes,
            order_db: order_db.clone(),
            databases: vec![product_db, point_db, coupon_db, order_db],
            log_dir,
            redis_prefix: prefix,
        }
    }

    pub fn orchestrator(&self) -> &Node {
        &self.orchestrators[0]
    }

    pub fn orders(&self) -> OrderServiceClient<Channel> {
        OrderServiceClient::new(self.orchestrator().channel())
    }

    pub fn orders_at(&self, i: usize) -> OrderServiceClient<Channel> {
        OrderServiceClient::new(self.orchestrators[i].channel())
    }

    pub fn sagas(&self) -> SagaAdminServiceClient<Channel> {
        SagaAdminServiceClient::new(self.orchestrator().channel())
    }

    pub fn catalog(&self) -> CatalogServiceClient<Channel> {
        CatalogServiceClient::new(self.product.channel())
    }

    pub fn product_admin(&self) -> ProductAdminServiceClient<Channel> {
        ProductAdminServiceClient::new(self.product.channel())
    }

    pub fn stock(&self) -> StockServiceClient<Channel> {
        StockServiceClient::new(self.product.channel())
    }

    pub fn points(&self) -> PointServiceClient<Channel> {
        PointServiceClient::new(self.point.channel())
    }

    pub fn coupons(&self) -> CouponServiceClient<Channel> {
        CouponServiceClient::new(self.coupon.channel())
    }

    pub fn coupon_admin(&self) -> CouponAdminServiceClient<Channel> {
        CouponAdminServiceClient::new(self.coupon.channel())
    }

    /// The database of `service` ("product", "point", "coupon" or "order"),
    /// to stage a state no API can reach (a coupon that expired after it was
    /// issued).
    pub fn database(&self, service: &str) -> &TestDatabase {
        let suffix = format!("_{service}");
        self.databases
            .iter()
            .find(|db| db.name.ends_with(&suffix))
            .unwrap_or_else(|| panic!("no database for {service}"))
    }

    /// Stops every process and drops the databases (kept, with the logs,
    /// when the test failed: this runs only on success).
    pub async fn shutdown(mut self) {
        for node in self.orchestrators.iter_mut().chain([
            &mut self.product,
            &mut self.point,
            &mut self.coupon,
        ]) {
            node.kill().await;
        }
        for db in self.databases {
            let _ = db.drop_database().await;
        }
        let _ = std::fs::remove_dir_all(&self.log_dir);
    }
}
