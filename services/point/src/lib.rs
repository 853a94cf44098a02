//! The point service: balances in points (one point is one KRW), charges
//! made idempotent by a client key, and the order saga's `deduct_points` step
//! with its `refund_points` compensation. Every change is a ledger entry
//! written in the same transaction as the balance, so the balance always
//! equals the sum of the ledger. Owns the `commerce_point` database.

pub mod domain;
pub mod grpc;
pub mod store;

use commerce_platform::{Application, ServerConfig, ServiceSpec};
use diesel_migrations::{EmbeddedMigrations, embed_migrations};

pub static MIGRATIONS: EmbeddedMigrations = embed_migrations!("../../migrations/point");

pub const SPEC: ServiceSpec = ServiceSpec {
    name: "point",
    default_listen: "127.0.0.1:50053",
    default_database_url: "mysql://commerce:commerce@127.0.0.1:3306/commerce_point",
    migrations: &MIGRATIONS,
    saga_participant: true,
};

/// Migrates, binds and wires the point service; run it with
/// [`Application::run_until_stopped`].
pub async fn build(config: ServerConfig) -> anyhow::Result<Application> {
    let app = Application::build(&SPEC, config).await?;
    let store = store::PointStore::new(app.database().clone());
    Ok(app.add_service(grpc::PointApi::new(store).into_server()))
}
