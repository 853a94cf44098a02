//! The third system of the benchmark: the same order saga coordinated by
//! [dtmrs](https://crates.io/crates/dtmrs) (a Rust implementation of dtm's
//! transaction coordinator, "TC"), driving the same product, point and
//! coupon services as our orchestrator.
//!
//! - `commerce-bench serve dtm` ([`server`]) is one process: the dtmrs TC
//!   as a production user embeds it (its MySQL store on its own database,
//!   its leased background driver, inline driving of submitted sagas, its
//!   gRPC API `dtmrs.v1.Tc`), plus the branch endpoints dtm calls, over
//!   HTTP ([`adapter`]): each translates one branch action or compensation
//!   into our participant RPC, with the dtm global transaction id as the
//!   saga id the participants' barriers key on, and our refusals into dtm's
//!   failure (HTTP 409), everything else into "unknown, retry".
//! - The load generator ([`client`]) prices each order first (catalogue
//!   prices and the coupon quote, as dtm users do: dtm's steps cannot pass
//!   one step's output to the next), submits it as a dtm saga and polls the
//!   TC until the saga is final, so its latency is end to end like ours.
//! - [`check`] reconciles the participants with the sagas dtm finished.
//!
//! Over mutual TLS (the harness's default) dtm takes the orchestrator's
//! place: the TC serves its gRPC API with the orchestrator's certificate,
//! its branch endpoints call the participants' saga steps presenting it,
//! and the generator prices as the orchestrator does (the coupon quote is
//! the orchestrator's alone). The TC's calls to its own branch endpoints
//! stay plain HTTP on loopback, inside the one process.
//!
//! HTTP branches rather than gRPC ones: dtmrs calls a gRPC branch with an
//! empty request body (only gid / branch id / op in metadata), so a branch
//! cannot receive the order's lines or amounts that way; over HTTP each
//! step's payload is the request body.

pub mod adapter;
pub mod check;
pub mod client;
pub mod report;
pub mod server;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use commerce_e2e::node::{Node, free_port};

/// The dtm system: the TC process (with its branch endpoints) and the
/// generator's client of it.
pub struct Dtm {
    pub node: Node,
    pub client: Arc<client::Client>,
    /// Status polls per order of each measured run, in order.
    polls_per_order: Mutex<Vec<f64>>,
}

/// Environment of the TC, as its operator would set it (dtmrs reads these
/// itself; see `Driver::from_env` and `Store::open`).
const ENV: [(&str, &str); 6] = [
    // Submitted sagas are driven inline (a task each); the 16 background
    // workers (the default) pick up retries and take over expired leases.
    // 32 store connections, like each of our servers' pools.
    ("DTMRS_WORKERS", "16"),
    ("DTMRS_DB_POOL", "32"),
    // Retry a branch whose outcome is unknown after 1 s (the default 10 s
    // would only lengthen a rare retry).
    ("DTMRS_RETRY_INTERVAL", "1"),
    ("DTMRS_RETRY_MAX_INTERVAL", "10"),
    // The TC logs every branch call at info; our servers log no call.
    ("RUST_LOG", "warn"),
    // Leases: the default 30 s (a crashed instance's sagas are taken over
    // after that); the idle poll every second.
    ("DTMRS_TICK_MS", "1000"),
];

impl Dtm {
    /// The TC process for `database_url`, its branch endpoints calling the
    /// participants at the given gRPC endpoints.
    /// With `certs`, the TC serves its API over mutual TLS and the branch
    /// endpoints call the participants, both with the orchestrator's
    /// certificate (see [`server`]); without, everything is plaintext.
    pub fn new(
        program: &Path,
        database_url: &str,
        certs: Option<&Path>,
        log_dir: &Path,
        [product, point, coupon]: [&Node; 3],
    ) -> Self {
        let adapter_port = free_port();
        // Base URL of the branch endpoints, as the sagas name them.
        let adapter = format!("http://127.0.0.1:{adapter_port}");
        let node = Node::new(
            program,
            &["serve"],
            "dtm",
            database_url,
            certs,
            vec![
                "--adapter-listen".into(),
                format!("127.0.0.1:{adapter_port}"),
                "--product-addr".into(),
                product.endpoint(),
                "--point-addr".into(),
                point.endpoint(),
                "--coupon-addr".into(),
                coupon.endpoint(),
                "--owner".into(),
                "bench-dtm-1".into(),
            ],
            log_dir,
            "dtm",
        );
        let client = Arc::new(client::Client::new(&node, product, coupon, &adapter));
        Self {
            node,
            client,
            polls_per_order: Mutex::new(Vec::new()),
        }
    }

    pub async fn start(&mut self) {
        self.node.start_with(&ENV).await;
    }

    /// The orders of the run just measured, each final (an order the
    /// generator stopped waiting for is followed until dtm finished it, at
    /// most 120 s).
    pub async fn settle(&self) -> anyhow::Result<Vec<client::Placed>> {
        let (mut placed, polls) = self.client.take_placed();
        self.polls_per_order
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(polls as f64 / placed.len().max(1) as f64);
        self.client
            .settle(&mut placed, Duration::from_secs(120))
            .await?;
        Ok(placed)
    }

    /// Status polls per order of each measured run, in order.
    pub fn polls_per_order(&self) -> Vec<f64> {
        self.polls_per_order
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}
