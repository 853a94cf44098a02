//! The mesh as real processes: four servers (product, point, coupon and one
//! or more orchestrators) started from the `commerce-mesh` binary on free
//! loopback ports, each with its own fresh database, and killable (SIGKILL)
//! and restartable one by one.

use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use commerce_proto::coupon::v1::coupon_admin_service_client::CouponAdminServiceClient;
use commerce_proto::coupon::v1::coupon_service_client::CouponServiceClient;
use commerce_proto::order::v1::order_service_client::OrderServiceClient;
use commerce_proto::order::v1::saga_admin_service_client::SagaAdminServiceClient;
use commerce_proto::point::v1::point_service_client::PointServiceClient;
use commerce_proto::product::v1::catalog_service_client::CatalogServiceClient;
use commerce_proto::product::v1::product_admin_service_client::ProductAdminServiceClient;
use commerce_proto::product::v1::stock_service_client::StockServiceClient;
use commerce_testkit::TestDatabase;
use tokio::process::{Child, Command};
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const BINARY: &str = env!("CARGO_BIN_EXE_commerce-mesh");

/// How long a server may take to answer health checks after it starts.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// One server process.
pub struct Node {
    pub service: &'static str,
    pub port: u16,
    args: Vec<String>,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
}

impl Node {
    fn new(
        service: &'static str,
        database_url: &str,
        extra: Vec<String>,
        log_dir: &std::path::Path,
        name: &str,
    ) -> Self {
        let port = free_port();
        let mut args = vec![
            service.to_owned(),
            "--listen".to_owned(),
            format!("127.0.0.1:{port}"),
            "--database-url".to_owned(),
            database_url.to_owned(),
            "--db-pool-size".to_owned(),
            "8".to_owned(),
        ];
        args.extend(extra);
        Self {
            service,
            port,
            args,
            env: Vec::new(),
            log: log_dir.join(format!("{name}.log")),
            child: None,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn channel(&self) -> Channel {
        Endpoint::from_shared(self.endpoint())
            .expect("loopback endpoint")
            .timeout(Duration::from_secs(30))
            .connect_lazy()
    }

    /// Starts the process (with `env` set) and waits until it serves.
    pub async fn start_with(&mut self, env: &[(&str, &str)]) {
        assert!(self.child.is_none(), "{} already running", self.service);
        self.env = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open log file");
        let child = Command::new(BINARY)
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env(
                "RUST_LOG",
                std::env::var("E2E_LOG").unwrap_or_else(|_| "info".to_owned()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn commerce-mesh");
        self.child = Some(child);
        self.wait_ready().await;
    }

    pub async fn start(&mut self) {
        self.start_with(&[]).await;
    }

    /// Starts the process without waiting for it to serve (it may be armed
    /// to crash before it gets the chance to answer a test's call).
    async fn wait_ready(&mut self) {
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        let mut pause = Duration::from_millis(10);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "{} exited during start-up ({status}); log: {}",
                    self.service,
                    self.log.display()
                );
            }
            let mut health = HealthClient::new(self.channel());
            if let Ok(response) = health
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
                && response.into_inner().status == ServingStatus::Serving as i32
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} not serving after {READY_TIMEOUT:?}; log: {}",
                self.service,
                self.log.display()
            );
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }

    /// SIGKILL, as a crash: no shutdown, no draining.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }

    /// Waits for the process to end by itself (an armed fault aborting it).
    pub async fn wait_exit(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("process running");
        tokio::time::timeout(Duration::from_secs(60), child.wait())
            .await
            .unwrap_or_else(|_| {
                panic!("{} did not exit; log: {}", self.service, self.log.display())
            })
            .expect("wait for process")
    }

    pub async fn restart(&mut self) {
        self.kill().await;
        self.start().await;
    }
}

/// Ports handed to children: below Linux's ephemeral range (32768 and up),
/// so neither an outgoing connection nor another `bind(0)` takes one between
/// the check here and the child's bind (with ports from `bind(0)`, servers of
/// tests running in parallel failed with "Address already in use").
const PORTS: std::ops::Range<u32> = 20_000..32_000;

/// A loopback port for a child to listen on: each call of this process gives
/// another one (from a start that differs between processes), checked free.
fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let span = PORTS.end - PORTS.start;
    let start = std::process::id().wrapping_mul(7_919) % span;
    for _ in 0..span {
        let offset = (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
        let port = u16::try_from(PORTS.start + offset).expect("port fits u16");
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {PORTS:?}");
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
}

/// Orchestrator flags for tests: short leases and backoffs so recovery and
/// retries happen within a test's patience, never relied on for ordering.
fn orchestrator_args(mesh_ports: (&Node, &Node, &Node), instance: &str) -> Vec<String> {
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
        "--forward-attempts",
        "400",
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
        let log_dir =
            std::env::temp_dir().join(format!("commerce-e2e-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&log_dir).expect("log dir");
        let product_db = TestDatabase::create("product").await.expect("product db");
        let point_db = TestDatabase::create("point").await.expect("point db");
        let coupon_db = TestDatabase::create("coupon").await.expect("coupon db");
        let order_db = TestDatabase::create("order").await.expect("order db");
        let mut product = Node::new("product", &product_db.url, vec![], &log_dir, "product");
        let mut point = Node::new("point", &point_db.url, vec![], &log_dir, "point");
        let mut coupon = Node::new("coupon", &coupon_db.url, vec![], &log_dir, "coupon");
        tokio::join!(product.start(), point.start(), coupon.start());
        let mut nodes: Vec<Node> = (0..orchestrators)
            .map(|i| {
                let instance = format!("orchestrator-{i}");
                Node::new(
                    "orchestrator",
                    &order_db.url,
                    orchestrator_args((&product, &point, &coupon), &instance),
                    &log_dir,
                    &instance,
                )
            })
            .collect();
        for node in &mut nodes {
            node.start().await;
        }
        Self {
            product,
            point,
            coupon,
            orchestrators: nodes,
            order_db: order_db.clone(),
            databases: vec![product_db, point_db, coupon_db, order_db],
            log_dir,
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
