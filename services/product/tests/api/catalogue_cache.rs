//! The catalogue cache: GetProduct and ListProducts read through Redis,
//! every catalogue write shows on the next read, stock is never cached, a
//! stale entry lives no longer than its TTL, and Redis off changes nothing
//! but speed. Each server has a Redis prefix of its own.

use std::time::Duration;

use commerce_platform::ServerConfig;
use commerce_proto::product::v1 as pb;
use commerce_proto::saga::v1::saga_barrier_service_client::SagaBarrierServiceClient;
use commerce_testkit::{TestDatabase, TestServer};
use pb::catalog_service_client::CatalogServiceClient;
use pb::product_admin_service_client::ProductAdminServiceClient;
use pb::stock_service_client::StockServiceClient;
use product_service::store::catalogue_cache::CatalogueCacheSettings;
use redis::AsyncCommands;

use crate::support::{TestApp, saga};

struct CachedApp {
    app: TestApp,
    prefix: String,
    redis: Option<redis::aio::MultiplexedConnection>,
}

async fn spawn_cached(redis_on: bool, cache: CatalogueCacheSettings) -> CachedApp {
    let db = TestDatabase::create("product").await.unwrap();
    let mut config = ServerConfig::for_tests("product", db.url.clone());
    let prefix = config.redis.prefix.clone();
    let url = config.redis.url.clone().unwrap();
    let redis = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    if !redis_on {
        config.redis.url = None;
    }
    let app = product_service::build_with_cache(config, cache)
        .await
        .unwrap();
    let server = TestServer::start(app);
    let channel = server.channel();
    CachedApp {
        app: TestApp {
            db,
            catalog: CatalogServiceClient::new(channel.clone()),
            admin: ProductAdminServiceClient::new(channel.clone()),
            stock: StockServiceClient::new(channel.clone()),
            barrier: SagaBarrierServiceClient::new(channel),
            server,
        },
        prefix,
        redis: Some(redis),
    }
}

fn ttl(ms: u64) -> CatalogueCacheSettings {
    CatalogueCacheSettings {
        enabled: true,
        ttl: Duration::from_millis(ms),
    }
}

impl CachedApp {
    fn redis(&self) -> redis::aio::MultiplexedConnection {
        self.redis.clone().unwrap()
    }

    fn product_key(&self, product_id: i64) -> String {
        format!("{}:catalogue:product:{product_id}", self.prefix)
    }

    async fn cached_keys(&self, kind: &str) -> Vec<String> {
        let pattern = format!("{}:catalogue:{kind}:*", self.prefix);
        self.redis().keys(pattern).await.unwrap()
    }

    async fn list(&self) -> Vec<pb::Product> {
        self.app
            .catalog
            .clone()
            .list_products(pb::ListProductsRequest {
                brand_id: None,
                sort: pb::ProductSort::Latest.into(),
                page: 0,
                size: 20,
            })
            .await
            .unwrap()
            .into_inner()
            .products
    }

    async fn set_price(&self, product_id: i64, price: i64) {
        self.app
            .admin
            .clone()
            .update_product(pb::UpdateProductRequest {
                product_id,
                name: None,
                price: Some(price),
                status: None,
            })
            .await
            .unwrap();
    }

    /// Replaces the cached product by one with `price`, living `ttl_ms`.
    async fn plant_price(&self, product_id: i64, price: i64, ttl_ms: u64) {
        let key = self.product_key(product_id);
        let mut redis = self.redis();
        let cached: String = redis.get(&key).await.unwrap();
        let mut entry: serde_json::Value = serde_json::from_str(&cached).unwrap();
        entry["price"] = price.into();
        let () = redis
            .pset_ex(&key, entry.to_string(), ttl_ms)
            .await
            .unwrap();
    }

    async fn stop(self) {
        self.app.stop().await;
    }
}

#[tokio::test]
async fn reads_fill_the_cache_and_every_write_shows_on_the_next_read() {
    let cached = spawn_cached(true, ttl(60_000)).await;
    let app = &cached.app;
    let brand = app.brand("Acme").await;
    let hat = app.product(brand.id, "hat", 1_000, 5).await;

    // Read-through: the answer lands in Redis.
    assert_eq!(app.get_product(hat.id).await, hat);
    let exists: bool = cached
        .redis()
        .exists(cached.product_key(hat.id))
        .await
        .unwrap();
    assert!(exists, "GetProduct did not fill the cache");
    assert_eq!(cached.list().await, vec![hat.clone()]);
    assert_eq!(cached.cached_keys("list").await.len(), 1);
    // A cached answer is served (a planted price shows)...
    cached.plant_price(hat.id, 1, 60_000).await;
    assert_eq!(app.get_product(hat.id).await.price, 1);

    // ...until a write: a price change shows at once, in both reads.
    cached.set_price(hat.id, 2_000).await;
    assert_eq!(app.get_product(hat.id).await.price, 2_000);
    assert_eq!(cached.list().await[0].price, 2_000);

    // A like, and an unlike.
    let like = pb::LikeProductRequest {
        user_id: "ann".to_owned(),
        product_id: hat.id,
    };
    app.catalog
        .clone()
        .like_product(like.clone())
        .await
        .unwrap();
    assert_eq!(app.get_product(hat.id).await.like_count, 1);
    assert_eq!(cached.list().await[0].like_count, 1);
    app.catalog.clone().unlike_product(like).await.unwrap();
    assert_eq!(app.get_product(hat.id).await.like_count, 0);
    assert_eq!(cached.list().await[0].like_count, 0);

    // A brand's new name reaches its cached products.
    app.admin
        .clone()
        .update_brand(pb::UpdateBrandRequest {
            brand_id: brand.id,
            name: Some("Acme Two".to_owned()),
            description: None,
        })
        .await
        .unwrap();
    assert_eq!(app.get_product(hat.id).await.brand_name, "Acme Two");
    assert_eq!(cached.list().await[0].brand_name, "Acme Two");

    // A new product shows in the cached list.
    let scarf = app.product(brand.id, "scarf", 500, 1).await;
    assert_eq!(cached.list().await.len(), 2);

    // Stock is never cached: a reservation shows on the next read.
    app.reserve(&saga(), &[(hat.id, 2)]).await.unwrap();
    assert_eq!(app.stock_of(hat.id).await, (3, 2, 0));
    let listed = cached.list().await;
    let hat_listed = listed.iter().find(|p| p.id == hat.id).unwrap();
    assert_eq!(hat_listed.stock.unwrap().available, 3);
    assert_eq!(app.get_product(scarf.id).await, scarf);
    cached.stop().await;
}

#[tokio::test]
async fn without_redis_or_with_the_cache_off_answers_are_the_same() {
    for (redis_on, enabled) in [(false, true), (true, false)] {
        let cached = spawn_cached(
            redis_on,
            CatalogueCacheSettings {
                enabled,
                ..ttl(60_000)
            },
        )
        .await;
        let app = &cached.app;
        let brand = app.brand("Acme").await;
        let hat = app.product(brand.id, "hat", 1_000, 5).await;
        assert_eq!(app.get_product(hat.id).await, hat);
        assert_eq!(cached.list().await, vec![hat.clone()]);
        cached.set_price(hat.id, 2_000).await;
        assert_eq!(app.get_product(hat.id).await.price, 2_000);
        assert_eq!(cached.list().await[0].price, 2_000);
        assert!(cached.cached_keys("product").await.is_empty());
        assert!(cached.cached_keys("list").await.is_empty());
        cached.stop().await;
    }
}

#[tokio::test]
async fn a_stale_entry_lives_no_longer_than_its_ttl() {
    let cached = spawn_cached(true, ttl(200)).await;
    let app = &cached.app;
    let brand = app.brand("Acme").await;
    let hat = app.product(brand.id, "hat", 1_000, 5).await;
    app.get_product(hat.id).await;

    // An entry a missed invalidation left behind, with the cache's TTL.
    cached.plant_price(hat.id, 1, 200).await;
    let mut price = 1;
    for _ in 0..200 {
        price = app.get_product(hat.id).await.price;
        if price == 1_000 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(price, 1_000, "the stale entry never expired");
    // Entries the server writes expire too.
    let ttl_left: i64 = cached
        .redis()
        .pttl(cached.product_key(hat.id))
        .await
        .unwrap();
    assert!(
        (0..=200).contains(&ttl_left) || ttl_left == -2,
        "PTTL {ttl_left}"
    );
    cached.stop().await;
}
