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

use commerce_platform::{Application, ServerConfig, ServiceSpec};
use commerce_proto::order::v1::order_service_server::OrderServiceServer;
use commerce_proto::order::v1::saga_admin_service_server::SagaAdminServiceServer;
use diesel_migrations::{EmbeddedMigrations, embed_migrations};

#[cfg(test)]
mod db_tests;
pub mod domain;
pub mod engine;
pub mod executor;
pub mod fault;
pub mod grpc;
pub mod participants;
pub mod sagas;
pub mod store;

use domain::saga::RetryPolicy;
use engine::{Engine, EngineConfig};
use participants::{GrpcParticipants, ParticipantConfig};

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
    /// Product service.
    #[arg(long, env = "PRODUCT_ADDR", default_value = "http://127.0.0.1:50052")]
    pub product_addr: String,
    /// Point service.
    #[arg(long, env = "POINT_ADDR", default_value = "http://127.0.0.1:50053")]
    pub point_addr: String,
    /// Coupon service.
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
    let participants = GrpcParticipants::new(&ParticipantConfig {
        product: args.product_addr.clone(),
        point: args.point_addr.clone(),
        coupon: args.coupon_addr.clone(),
        call_timeout: Duration::from_millis(args.call_timeout_ms),
    })?;
    let engine = Arc::new(Engine::new(
        store::OrderStore::new(app.database().clone()),
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
    ));
    // The answer must leave before the server's own request timeout cuts
    // the call: PENDING is a better answer than CANCELLED.
    let wait = Duration::from_millis(args.place_order_wait_ms).min(
        app.config()
            .request_timeout
            .saturating_sub(Duration::from_millis(500)),
    );
    let orders = grpc::OrderApi::new(Arc::clone(&engine), wait);
    let admin = grpc::SagaAdminApi::new(Arc::clone(&engine));
    Ok(app
        .add_service(OrderServiceServer::new(orders))
        .add_service(SagaAdminServiceServer::new(admin))
        .spawn_job(engine.recover_forever()))
}
