//! The coupon service of the commerce mesh: coupon templates, first-come
//! issuance that never over-issues, discount quotes, and coupon use as a saga
//! step (`use_coupon`, compensated by `restore_coupon`) behind the saga
//! barrier. It owns the `commerce_coupon` database.
//!
//! Layers: [`domain`] holds the pure rules, [`store`] the database, [`grpc`]
//! the thin handlers of `commerce.coupon.v1`.

use commerce_platform::{Application, ServerConfig, ServiceSpec};
use commerce_proto::coupon::v1::coupon_admin_service_server::CouponAdminServiceServer;
use commerce_proto::coupon::v1::coupon_service_server::CouponServiceServer;
use diesel_migrations::{EmbeddedMigrations, embed_migrations};

pub mod domain;
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

/// Migrates, binds and wires both gRPC services of `commerce.coupon.v1`.
pub async fn build(config: ServerConfig) -> anyhow::Result<Application> {
    let app = Application::build(&SPEC, config).await?;
    let store = store::CouponStore::new(app.database().clone());
    Ok(app
        .add_service(CouponAdminServiceServer::new(grpc::CouponAdminApi::new(
            store.clone(),
        )))
        .add_service(CouponServiceServer::new(grpc::CouponApi::new(store))))
}
