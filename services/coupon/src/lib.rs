//! The coupon service of the commerce mesh: coupon templates, first-come
//! issuance that never over-issues, discount quotes, and coupon use as a saga
//! step (`use_coupon`, compensated by `restore_coupon`) behind the saga
//! barrier. It owns the `commerce_coupon` database.
//!
//! Layers: [`domain`] holds the pure rules, [`store`] the database, [`gate`]
//! the Redis admission gate in front of issuance, [`grpc`] the thin handlers
//! of `commerce.coupon.v1`.

use commerce_platform::{Application, Redis, ServerConfig, ServiceSpec};
use commerce_proto::coupon::v1::coupon_admin_service_server::CouponAdminServiceServer;
use commerce_proto::coupon::v1::coupon_service_server::CouponServiceServer;
use diesel_migrations::{EmbeddedMigrations, embed_migrations};

pub mod domain;
pub mod gate;
pub mod grpc;
pub mod store;

/// The service's own tables (the barrier's come from the platform).
pub static MIGRATIONS: EmbeddedMigrations = embed_migrations!("../../migrations/coupon");

pub const SPEC: ServiceSpec = ServiceSpec {
    name: "coupon",
    default_listen: "127.0.0.1:50054",
    default_database_url: "mysql://commerce:commerce@127.0.0.1:3306/commerce_coupon",
    migrations: &MIGRATIONS,
    saga_participant: true,
};

/// Flags of the coupon service (each also an environment variable).
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct CouponArgs {
    /// Turn first-come losers away in Redis before MySQL (`false`: every
    /// IssueCoupon goes to MySQL, e.g. for the benchmark's comparison).
    #[arg(long, env = "COUPON_ISSUE_GATE", default_value_t = true, action = clap::ArgAction::Set)]
    pub issue_gate: bool,
}

impl Default for CouponArgs {
    fn default() -> Self {
        Self { issue_gate: true }
    }
}

/// [`build_with`] the default flags.
pub async fn build(config: ServerConfig) -> anyhow::Result<Application> {
    build_with(config, CouponArgs::default()).await
}

/// Migrates, binds and wires both gRPC services of `commerce.coupon.v1`.
pub async fn build_with(config: ServerConfig, args: CouponArgs) -> anyhow::Result<Application> {
    let redis = Redis::connect(&config.redis)?;
    let app = Application::build(&SPEC, config).await?;
    let store = store::CouponStore::new(app.database().clone());
    let gate = args.issue_gate.then(|| gate::IssueGate::new(redis));
    let issuance = gate::Issuance::new(store.clone(), gate);
    Ok(app
        .add_service(CouponAdminServiceServer::new(grpc::CouponAdminApi::new(
            store.clone(),
        )))
        .add_service(CouponServiceServer::new(grpc::CouponApi::new(
            store, issuance,
        ))))
}
