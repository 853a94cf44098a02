//! What the benchmark plans and measures: the shop it seeds, the orders it
//! sends, and the results it reports. Shared by the generator, the baseline
//! and the report writer.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The shop both systems are seeded with, with the ids the saga mesh gave
/// (the baseline stores the same ids, so one order list fits both).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Shop {
    pub brand: SeededBrand,
    pub products: Vec<SeededProduct>,
    pub users: Vec<SeededUser>,
    pub templates: Vec<SeededTemplate>,
    /// Issued coupons, each usable by one order.
    pub coupons: Vec<SeededCoupon>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SeededBrand {
    pub id: i64,
    pub name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SeededProduct {
    pub id: i64,
    pub name: String,
    pub price: i64,
    pub stock: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SeededUser {
    pub user_id: String,
    pub points: i64,
}

/// A FIXED coupon template, valid for the whole run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SeededTemplate {
    pub id: i64,
    pub amount: i64,
    pub min_order_amount: i64,
    pub total_quantity: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SeededCoupon {
    pub id: i64,
    pub template_id: i64,
    pub user_id: String,
}

/// One PlaceOrder to send.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OrderSpec {
    pub user_id: String,
    pub lines: Vec<(i64, i64)>,
    pub user_coupon_id: Option<i64>,
    pub idempotency_key: String,
}

/// Which implementation served the orders.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum System {
    /// The orchestrator and the three services, four steps over gRPC.
    Saga,
    /// One MySQL transaction in one server (the seed write-ups' design).
    Baseline,
    /// The same saga coordinated by dtmrs over the same services (see
    /// `bench/src/dtm`).
    Dtm,
}

impl System {
    pub fn label(self) -> &'static str {
        match self {
            Self::Saga => "saga",
            Self::Baseline => "baseline",
            Self::Dtm => "dtm",
        }
    }
}

/// How the systems' gRPC calls travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    /// Mutual TLS on every gRPC call, each caller presenting its identity's
    /// certificate and every method authorized, as deployed.
    Tls,
    /// No TLS and no identities (`--insecure-plaintext`, development only).
    Plaintext,
}

impl Transport {
    pub fn label(self) -> &'static str {
        match self {
            Self::Tls => "tls",
            Self::Plaintext => "plaintext",
        }
    }
}

/// Reports from before the mesh served mutual TLS ran in plaintext.
fn plaintext() -> Transport {
    Transport::Plaintext
}

/// Latency percentiles, in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Latency {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

/// One system at one concurrency level of one scenario.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LevelResult {
    pub scenario: String,
    pub system: System,
    pub concurrency: usize,
    pub orders: u64,
    pub confirmed: u64,
    pub rejected: u64,
    /// Errors and orders left PENDING.
    pub failed: u64,
    pub elapsed_secs: f64,
    /// Answered orders per second.
    pub throughput: f64,
    pub latency: Latency,
    /// (percentile 0..=100, latency ms) points of the latency distribution,
    /// for the chart.
    pub latency_curve: Vec<(f64, f64)>,
    /// MySQL `Com_commit` (all databases) per order.
    pub commits_per_order: f64,
    /// CPU seconds per order of each process (`orchestrator`, `product`,
    /// `point`, `coupon`, `baseline`, `mariadb`, `generator`; with several
    /// orchestrator instances `orchestrator-2`, ...).
    pub cpu_secs_per_order: BTreeMap<String, f64>,
    /// MariaDB's global status counters per order (all databases, the
    /// harness's own readings left out), by the server's names:
    /// `Questions`, `Com_stmt_prepare`, `Com_stmt_close`,
    /// `Com_stmt_execute`, `Com_select`, `Com_insert`, `Com_update`,
    /// `Com_delete`, `Com_replace`, `Com_begin`, `Com_commit`,
    /// `Com_rollback`, `Bytes_received` (to the database), `Bytes_sent`
    /// (from it). See docs/benchmarks.md for what each counts.
    #[serde(default)]
    pub db_per_order: BTreeMap<String, f64>,
    /// Server instances taking the orders (several only in the `instances`
    /// scenario, where that many orchestrators share one database).
    #[serde(default = "one")]
    pub instances: usize,
    /// How the system's gRPC calls travelled.
    #[serde(default = "plaintext")]
    pub transport: Transport,
}

fn one() -> usize {
    1
}

/// A scenario's own findings (hot product, flash coupon, recovery), as
/// named figures and a verdict on its invariants.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScenarioResult {
    pub name: String,
    pub description: String,
    /// Named figures, e.g. "confirmed" -> 100, "drain_secs" -> 1.8.
    pub figures: BTreeMap<String, f64>,
    /// Invariant checks and whether each held.
    pub checks: Vec<(String, bool)>,
}

/// The machine and the run, recorded with the figures.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunInfo {
    pub command: String,
    pub started_at: String,
    pub cpus: usize,
    pub cpu_model: String,
    pub memory_gib: f64,
    pub database: String,
    pub profile: String,
    /// Prefix of every Redis key and stream of the run's servers
    /// (`bench-<run id>`), deleted at the end of the run.
    #[serde(default)]
    pub redis_prefix: String,
    /// How the systems' gRPC calls travelled (`--transport`), in words.
    #[serde(default)]
    pub transport: String,
}

/// Everything one run found.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    pub run: RunInfo,
    pub levels: Vec<LevelResult>,
    pub scenarios: Vec<ScenarioResult>,
    /// How far the order event stream lagged the orders of each uniform
    /// level of the saga.
    #[serde(default)]
    pub outbox_lag: Vec<OutboxLag>,
    /// Workloads run against a server with its Redis fast path and without
    /// it (`flash_coupon`, `catalogue`).
    #[serde(default)]
    pub fast_paths: Vec<FastPathComparison>,
    /// The uniform levels run again with every system in plaintext
    /// (`--transport both`), to set against the TLS ones of `levels`.
    #[serde(default)]
    pub plaintext_levels: Vec<LevelResult>,
}

/// The outbox relay under one uniform level of the saga: what was left to
/// publish when the load ended, how long publishing it took, and the lag of
/// each published event (its stream entry's time minus its commit time).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct OutboxLag {
    pub concurrency: usize,
    /// Orders of the level.
    pub orders: u64,
    /// `GetOutbox.pending` right after the last answer of the level.
    pub pending_after_load: i64,
    /// From the last answer until `pending` was 0 (or the wait gave up).
    pub drain_secs: f64,
    /// Whether `pending` reached 0 within the wait.
    pub drained: bool,
    /// Stream entries the level added.
    pub events: u64,
    /// Lag percentiles of those entries, in milliseconds: entry id's
    /// millisecond part (Redis' clock at XADD) minus the event's
    /// `occurred_at` (the orchestrator's clock at the commit).
    pub lag_p50_ms: f64,
    pub lag_p99_ms: f64,
    pub lag_max_ms: f64,
}

/// One workload against one server, with its Redis fast path and without
/// it (a second process of the same server on the same database, started
/// with `--redis-url off`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FastPathComparison {
    pub name: String,
    pub description: String,
    /// What one call is, for the column titles ("request", "read").
    pub unit: String,
    pub rows: Vec<FastPathRow>,
}

/// One side of a [`FastPathComparison`] at one concurrency.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FastPathRow {
    /// Whether the server had Redis.
    pub redis: bool,
    pub concurrency: usize,
    pub calls: u64,
    /// Calls answered with an error status the workload does not expect.
    pub errors: u64,
    pub elapsed_secs: f64,
    /// Calls per second.
    pub throughput: f64,
    /// Of every call, answered with a result or an expected refusal.
    pub latency: Latency,
    /// MariaDB's global status counters per call (see
    /// [`LevelResult::db_per_order`]).
    pub db_per_call: BTreeMap<String, f64>,
    /// CPU seconds per call of the server under test, `mariadb`, `redis`
    /// and the `generator`.
    pub cpu_secs_per_call: BTreeMap<String, f64>,
}
