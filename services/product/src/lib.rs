//! The product service of the commerce mesh: brands, the catalogue, likes,
//! and stock with saga reservations, over its own `commerce_product` database.
//!
//! Layers: [`grpc`] parses wire requests into [`domain`] types and calls one
//! [`store::ProductStore`] method; the store keeps every write in one
//! transaction, with the saga barrier for reservation steps.

pub mod domain;
pub mod grpc;
pub mod store;

use commerce_platform::{Application, ServerConfig, ServiceSpec};
use diesel_migrations::{EmbeddedMigrations, embed_migrations};

use crate::store::ProductStore;

pub static MIGRATIONS: EmbeddedMigrations = embed_migrations!("../../migrations/product");

pub const SPEC: ServiceSpec = ServiceSpec {
    name: "product",
    default_listen: "127.0.0.1:50052",
    default_database_url: "mysql://commerce:commerce@127.0.0.1:3306/commerce_product",
    migrations: &MIGRATIONS,
    saga_participant: true,
};

/// Migrates the database, binds the listener and registers the catalogue,
/// admin and stock services.
pub async fn build(config: ServerConfig) -> anyhow::Result<Application> {
    let app = Application::build(&SPEC, config).await?;
    let store = ProductStore::new(app.database().clone());
    Ok(app
        .add_service(grpc::catalogue_server(store.clone()))
        .add_service(grpc::admin_server(store.clone()))
        .add_service(grpc::stock_server(store)))
}
