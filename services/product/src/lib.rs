//! The product service of the commerce mesh: brands, the catalogue, likes,
//! and stock with saga reservations, over its own `commerce_product` database.
//!
//! Layers: [`grpc`] parses wire requests into [`domain`] types and calls one
//! [`store::ProductStore`] method; the store keeps every write in one
//! transaction, with the saga barrier for reservation steps.

pub mod domain;
pub mod grpc;
pub mod ranking;
pub mod store;

use commerce_platform::{Application, Redis, ServerConfig, ServiceSpec};
use diesel_migrations::{EmbeddedMigrations, embed_migrations};

use crate::ranking::{ConsumerSettings, OrderEventConsumer, Ranking, SalesTally};
use crate::store::ProductStore;
use crate::store::catalogue_cache::{CatalogueCache, CatalogueCacheArgs, CatalogueCacheSettings};

pub static MIGRATIONS: EmbeddedMigrations = embed_migrations!("../../migrations/product");

pub const SPEC: ServiceSpec = ServiceSpec {
    name: "product",
    default_listen: "127.0.0.1:50052",
    default_database_url: "mysql://commerce:commerce@127.0.0.1:3306/commerce_product",
    migrations: &MIGRATIONS,
    saga_participant: true,
};

/// Migrates the database, binds the listener and registers the catalogue,
/// admin and stock services, with the ranking's consumer at its defaults.
pub async fn build(config: ServerConfig) -> anyhow::Result<Application> {
    build_with(config, ConsumerSettings::default()).await
}

/// [`build`] with the ranking's consumer tuned (`--ranking-*` flags, tests).
/// With Redis turned off there is no consumer, and the ranking answers
/// UNAVAILABLE.
pub async fn build_with(
    config: ServerConfig,
    consumer: ConsumerSettings,
) -> anyhow::Result<Application> {
    let cache = CatalogueCacheArgs::from_env()?.settings()?;
    build_configured(config, consumer, cache).await
}

/// [`build`] with the catalogue cache's settings given (tests), instead of
/// `CATALOGUE_CACHE` / `CATALOGUE_CACHE_TTL_MS`.
pub async fn build_with_cache(
    config: ServerConfig,
    cache: CatalogueCacheSettings,
) -> anyhow::Result<Application> {
    build_configured(config, ConsumerSettings::default(), cache).await
}

async fn build_configured(
    config: ServerConfig,
    consumer: ConsumerSettings,
    cache: CatalogueCacheSettings,
) -> anyhow::Result<Application> {
    let app = Application::build(&SPEC, config).await?;
    let redis = Redis::connect(&app.config().redis)?;
    let cache = CatalogueCache::new(redis.clone(), cache);
    let store = ProductStore::new(app.database().clone()).with_catalogue_cache(cache);
    let tally = SalesTally::new(redis.clone());
    let ranking = Ranking::new(store.clone(), tally.clone());
    let consumer = redis
        .is_enabled()
        .then(|| OrderEventConsumer::new(&app.config().redis, tally, consumer))
        .transpose()?;
    let mut app = app
        .add_service(grpc::catalogue_server(store.clone(), ranking.clone()))
        .add_service(grpc::admin_server(store.clone(), ranking))
        .add_service(grpc::stock_server(store));
    match consumer {
        Some(consumer) => app = app.spawn_job(consumer.run()),
        None => tracing::warn!("Redis is off: the sales ranking follows no order events"),
    }
    Ok(app)
}
