//! The order orchestrator: takes `PlaceOrder` and drives each order through a
//! saga (reserve stock, deduct points, use the coupon, confirm) over the
//! product, point and coupon services, with a durable step log in its own
//! database and recovery of every unfinished saga after a crash.
//!
//! Layers: `domain` (rules, the order state machine, the saga planner),
//! `sagas` (each saga declared in one file), `executor` (runs any declared
//! saga from its log), `participants` (the services' saga calls, over
//! gRPC), `store` (MySQL), `engine` (the application: places and cancels
//! orders, operators' takeovers, recovery), `grpc` (thin handlers).

use std::sync::Arc;
use std::time::Duration;

use commerce_platform::{Application, Redis, ServerConfig, ServiceSpec};
use commerce_proto::order::v1::order_service_server::OrderServiceServer;
use commerce_proto::order::v1::saga_admin_service_server::SagaAdminServiceServer;
use diesel_migrations::{EmbeddedMigrations, embed_migrations};

#[cfg(test)]
mod db_tests;
pub mod domain;
pub mod engine;
pub mod events;
pub mod evidence;
pub mod executor;
pub mod fault;
pub mod grpc;
pub mod metrics;
pub mod participants;
pub mod place_gate;
pub mod reconcile;
pub mod relay;
pub mod sagas;
pub mod store;

use domain::saga::RetryPolicy;
use engine::{Engine, EngineConfig};
use participants::{GrpcParticipants, ParticipantConfig};
use relay::{Relay, RelayConfig};

pub static MIGRATIONS: EmbeddedMigrations = embed_migrations!("../migrations/order");

pub const SPEC: ServiceSpec = ServiceSpec {
    name: "orchestrator",
    default_listen: "127.0.0.1:50051",
    default_database_url: "mysql://commerce:commerce@127.0.0.1:3306/commerce_order",
    migrations: &MIGRATIONS,
    saga_participant: false,
};

/// Flags of the orchestrator (each also an environment variable).
#[derive(Debug, Clone, clap::Args)]
pub struct OrchestratorArgs {
    /// Product service (called as `https://` when the orchestrator has TLS
    /// files).
    #[arg(long, env = "PRODUCT_ADDR", default_value = "http://127.0.0.1:50052")]
    pub product_addr: String,
    /// Point service (called as `https://` when the orchestrator has TLS
    /// files).
    #[arg(long, env = "POINT_ADDR", default_value = "http://127.0.0.1:50053")]
    pub point_addr: String,
    /// Coupon service (called as `https://` when the orchestrator has TLS
    /// files).
    #[arg(long, env = "COUPON_ADDR", default_value = "http://127.0.0.1:50054")]
    pub coupon_addr: String,
    /// This instance's name in saga leases; keep it stable across restarts
    /// [default: a random id].
    #[arg(long, env = "INSTANCE_ID")]
    pub instance_id: Option<String>,
    /// How long a saga stays leased to its driver without progress, in ms.
    #[arg(long, env = "SAGA_LEASE_MS", default_value_t = 10_000)]
    pub lease_ms: u64,
    /// Deadline of every participant call, in ms.
    #[arg(long, env = "CALL_TIMEOUT_MS", default_value_t = 3_000)]
    pub call_timeout_ms: u64,
    /// First retry backoff, in ms.
    #[arg(long, env = "RETRY_BASE_MS", default_value_t = 100)]
    pub retry_base_ms: u64,
    /// Largest retry backoff, in ms.
    #[arg(long, env = "RETRY_MAX_MS", default_value_t = 5_000)]
    pub retry_max_ms: u64,
    /// How long a failing forward step is retried, in ms, counted from its
    /// first STARTED in the step log (so a restart does not reset it); then
    /// the saga compensates (STEP_RETRIES_EXHAUSTED).
    #[arg(long, env = "FORWARD_RETRY_BUDGET_MS", default_value_t = 300_000)]
    pub forward_retry_budget_ms: u64,
    /// Attempts of a compensation before the saga is marked STUCK.
    #[arg(long, env = "STUCK_AFTER", default_value_t = 30)]
    pub stuck_after: u32,
    /// How often a STUCK saga is still retried, in seconds.
    #[arg(long, env = "STUCK_RETRY_SECS", default_value_t = 60)]
    pub stuck_retry_secs: u64,
    /// How often unfinished sagas with an expired lease are looked for, in ms.
    #[arg(long, env = "RECOVERY_INTERVAL_MS", default_value_t = 1_000)]
    pub recovery_interval_ms: u64,
    /// Sagas the recovery loop drives at once.
    #[arg(long, env = "MAX_RECOVERING", default_value_t = 256)]
    pub max_recovering: usize,
    /// How long PlaceOrder waits for the outcome when the caller sets no
    /// deadline, in ms (kept below the request timeout).
    #[arg(long, env = "PLACE_ORDER_WAIT_MS", default_value_t = 5_000)]
    pub place_order_wait_ms: u64,
    /// Order events the outbox relay publishes per round.
    #[arg(long, env = "OUTBOX_BATCH", default_value_t = 128)]
    pub outbox_batch: i64,
    /// How long the relay's claim on outbox rows holds, in ms (then another
    /// instance may publish them).
    #[arg(long, env = "OUTBOX_CLAIM_MS", default_value_t = 30_000)]
    pub outbox_claim_ms: u64,
    /// Longest wait of an idle relay before it looks for rows other
    /// instances wrote, in ms.
    #[arg(long, env = "OUTBOX_POLL_MS", default_value_t = 500)]
    pub outbox_poll_ms: u64,
    /// Before each round that follows a partial one (or a wake-up), how
    /// long the relay lets events accumulate, in ms: lag traded for fewer
    /// statements per event.
    #[arg(long, env = "OUTBOX_LINGER_MS", default_value_t = 50)]
    pub outbox_linger_ms: u64,
    /// Published outbox rows are purged after this many hours.
    #[arg(long, env = "OUTBOX_RETENTION_HOURS", default_value_t = 24)]
    pub outbox_retention_hours: u64,
    /// Approximate length bound of the order event stream (XADD MAXLEN ~).
    #[arg(long, env = "EVENTS_STREAM_MAXLEN", default_value_t = 1_000_000)]
    pub events_stream_maxlen: usize,
    /// How often settled orders are reconciled with what the participants
    /// hold, in seconds (0: only when an operator asks).
    #[arg(long, env = "RECONCILE_EVERY_SECS", default_value_t = 300)]
    pub reconcile_every_secs: u64,
    /// How far back each periodic reconciliation looks, in seconds (longer
    /// than the period, so a run that failed is covered by the next).
    #[arg(long, env = "RECONCILE_WINDOW_SECS", default_value_t = 3_600)]
    pub reconcile_window_secs: u64,
}

/// Builds the orchestrator: migrations, engine, gRPC services and the
/// recovery loop.
pub async fn build(config: ServerConfig, args: OrchestratorArgs) -> anyhow::Result<Application> {
    let app = Application::build(&SPEC, config).await?;
    let owner = args
        .instance_id
        .clone()
        .unwrap_or_else(|| format!("orchestrator-{}", uuid::Uuid::new_v4().simple()));
    anyhow::ensure!(
        owner.len() <= 64,
        "--instance-id must be at most 64 characters"
    );
    let participant_config = ParticipantConfig {
        product: args.product_addr.clone(),
        point: args.point_addr.clone(),
        coupon: args.coupon_addr.clone(),
        call_timeout: Duration::from_millis(args.call_timeout_ms),
        tls: app.config().tls.clone(),
    };
    let participants = GrpcParticipants::new(&participant_config)?;
    let evidence = evidence::Evidence::new(&participant_config)?;
    let redis = Redis::connect(&app.config().redis)?;
    let store = store::OrderStore::new(app.database().clone());
    anyhow::ensure!(args.outbox_batch > 0, "--outbox-batch must be positive");
    let relay = Relay::new(
        store.clone(),
        redis.clone(),
        owner.clone(),
        RelayConfig {
            batch: args.outbox_batch,
            claim_for: Duration::from_millis(args.outbox_claim_ms.max(1)),
            idle_poll: Duration::from_millis(args.outbox_poll_ms.max(1)),
            linger: Duration::from_millis(args.outbox_linger_ms),
            backoff_max: Duration::from_secs(5),
            retention: Duration::from_secs(args.outbox_retention_hours.max(1) * 3600),
            stream_max_len: args.events_stream_maxlen.max(1),
        },
    );
    let stream = relay.stream();
    let gate = place_gate::PlaceGate::new(redis.clone(), Duration::from_secs(60));
    let engine = Arc::new(
        Engine::new(
            store,
            participants,
            EngineConfig {
                owner,
                lease: Duration::from_millis(args.lease_ms),
                retry: RetryPolicy {
                    base: Duration::from_millis(args.retry_base_ms),
                    max: Duration::from_millis(args.retry_max_ms),
                    forward_budget: Duration::from_millis(args.forward_retry_budget_ms),
                    stuck_after: args.stuck_after.max(1),
                    stuck_retry: Duration::from_secs(args.stuck_retry_secs),
                },
                recovery_interval: Duration::from_millis(args.recovery_interval_ms),
                recovery_batch: 100,
                max_recovering: args.max_recovering.max(1),
            },
            fault::Faults::from_env(),
        )
        .with_place_gate(gate),
    );
    // The answer must leave before the server's own request timeout cuts
    // the call: PENDING is a better answer than CANCELLED.
    let wait = Duration::from_millis(args.place_order_wait_ms).min(
        app.config()
            .request_timeout
            .saturating_sub(Duration::from_millis(500)),
    );
    let orders = grpc::OrderApi::new(Arc::clone(&engine), wait);
    let gauges = engine.store().clone();
    let reconciler = reconcile::Reconciler::new(engine.store().clone(), evidence);
    let admin = grpc::SagaAdminApi::new(Arc::clone(&engine), stream, reconciler.clone());
    let app = match args.reconcile_every_secs {
        0 => app,
        every => app.spawn_job(reconciler.run_forever(
            Duration::from_secs(every),
            Duration::from_secs(args.reconcile_window_secs.max(every)),
            reconcile::PERIODIC_LIMIT,
        )),
    };
    Ok(app
        .add_service(OrderServiceServer::new(orders))
        .add_service(SagaAdminServiceServer::new(admin))
        .spawn_job(engine.recover_forever())
        .spawn_job(relay.run_forever())
        .spawn_job(metrics::refresh_gauges_forever(gauges)))
}
