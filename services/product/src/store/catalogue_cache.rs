//! Cache-aside for the catalogue reads (`GetProduct`, `ListProducts`) in
//! Redis, with a short TTL.
//!
//! What is cached is the answer without its stock: a cached product or page
//! has its stock read from MySQL on every hit (one primary-key read), so
//! stock is never served from the cache, to shoppers or anyone else, and the
//! saga's reservation path (which reads MySQL under row locks and never
//! calls these reads) changes nothing here. The cache saves the joins, the
//! sort and the count.
//!
//! Keys (`<prefix>:catalogue:...`):
//! - `version`: a counter raised by every catalogue write (INCR). Started
//!   from Redis' clock when missing, so a counter lost to a flush or an
//!   eviction never comes back to a value old pages were cached under.
//! - `list:<brand|all>:<sort>:<page>:<size>:v<version>`: a page; one INCR
//!   orphans every page at once (they expire with their TTL).
//! - `product:<id>`: a product; a write of that product deletes it.
//!
//! The classic cache-aside race (a read fetches the old row, a write commits
//! and invalidates, then the read fills the cache with the old row) is
//! closed by the version: a read takes the version before reading MySQL and
//! fills only if it is unchanged ([`FILL`]), while a write raises it after
//! its commit. What is left is a write whose invalidation never reaches
//! Redis (Redis down or slow at that moment, the caller gone between commit
//! and invalidation): its readers see the old answer until the TTL, never
//! longer. Redis off, down or slow: every read goes to MySQL, bounded by the
//! platform's timeout, with no error.

use std::sync::LazyLock;
use std::time::Duration;

use chrono::NaiveDateTime;
use commerce_platform::Redis;
use redis::Script;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::domain::{Product, ProductQuery, ProductSort, ProductStatus, Stock};

/// Flags of the catalogue cache (each also an environment variable).
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct CatalogueCacheArgs {
    /// Serve GetProduct and ListProducts through Redis (`false`: MySQL only).
    #[arg(long, env = "CATALOGUE_CACHE", default_value_t = true, action = clap::ArgAction::Set)]
    pub catalogue_cache: bool,
    /// How long a cached answer lives, in ms: the longest a read can lag a
    /// write whose invalidation Redis missed.
    #[arg(long, env = "CATALOGUE_CACHE_TTL_MS", default_value_t = 3_000)]
    pub catalogue_cache_ttl_ms: u64,
}

impl CatalogueCacheArgs {
    /// From the environment alone (`CATALOGUE_CACHE`, `CATALOGUE_CACHE_TTL_MS`),
    /// for a server whose command line does not carry these flags.
    pub fn from_env() -> anyhow::Result<Self> {
        #[derive(clap::Parser)]
        struct EnvOnly {
            #[command(flatten)]
            cache: CatalogueCacheArgs,
        }
        let parsed = <EnvOnly as clap::Parser>::try_parse_from(["product"])?;
        Ok(parsed.cache)
    }

    pub fn settings(self) -> anyhow::Result<CatalogueCacheSettings> {
        anyhow::ensure!(
            self.catalogue_cache_ttl_ms > 0,
            "--catalogue-cache-ttl-ms must be positive"
        );
        Ok(CatalogueCacheSettings {
            enabled: self.catalogue_cache,
            ttl: Duration::from_millis(self.catalogue_cache_ttl_ms),
        })
    }
}

/// How the catalogue cache behaves.
#[derive(Debug, Clone, Copy)]
pub struct CatalogueCacheSettings {
    pub enabled: bool,
    pub ttl: Duration,
}

impl Default for CatalogueCacheSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            ttl: Duration::from_secs(3),
        }
    }
}

/// The version (started from Redis' clock when missing) and, when present,
/// the cached value of `ARGV[1]` (with `:v<version>` appended if `ARGV[2]`
/// is `1`).
static LOOKUP: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        local v = redis.call('GET', KEYS[1])
        if not v then
            local t = redis.call('TIME')
            v = t[1] .. string.format('%06d', tonumber(t[2]))
            redis.call('SET', KEYS[1], v)
        end
        local key = ARGV[1]
        if ARGV[2] == '1' then key = key .. ':v' .. v end
        local cached = redis.call('GET', key)
        if cached then return {v, cached} end
        return {v}
        ",
    )
});

/// Caches `ARGV[2]` under `KEYS[2]` for `ARGV[3]` ms, only if the version
/// is still `ARGV[1]` (no write committed since the value was read).
static FILL: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
        redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
        return 1
        ",
    )
});

/// Raises the version (orphaning every page, refusing in-flight fills) and
/// deletes the products `KEYS[2..]`.
static INVALIDATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        if redis.call('EXISTS', KEYS[1]) == 0 then
            local t = redis.call('TIME')
            redis.call('SET', KEYS[1], t[1] .. string.format('%06d', tonumber(t[2])))
        end
        redis.call('INCR', KEYS[1])
        for i = 2, #KEYS do redis.call('DEL', KEYS[i]) end
        return 1
        ",
    )
});

/// What a read is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheKey {
    Product(i64),
    List(String),
}

impl CacheKey {
    pub fn product(product_id: i64) -> Self {
        Self::Product(product_id)
    }

    pub fn list(query: &ProductQuery) -> Self {
        let brand = query
            .brand_id
            .map_or_else(|| "all".to_owned(), |id| id.to_string());
        let sort = match query.sort {
            ProductSort::Latest => "latest",
            ProductSort::PriceAsc => "price_asc",
            ProductSort::LikesDesc => "likes_desc",
        };
        Self::List(format!(
            "{brand}:{sort}:{}:{}",
            query.page.page, query.page.size
        ))
    }
}

/// The answer of a lookup.
#[derive(Debug)]
pub enum Lookup<T> {
    Hit(T),
    /// Not cached: read MySQL, then [`CatalogueCache::fill`] with `version`.
    Miss {
        version: String,
    },
    /// Cache off or Redis unavailable: read MySQL, cache nothing.
    Off,
}

/// The catalogue cache of one server; every method is a no-op (or
/// [`Lookup::Off`]) when it is off or Redis does not answer.
#[derive(Debug, Clone)]
pub struct CatalogueCache {
    redis: Redis,
    settings: CatalogueCacheSettings,
}

impl CatalogueCache {
    pub fn new(redis: Redis, settings: CatalogueCacheSettings) -> Self {
        Self { redis, settings }
    }

    /// A cache that never answers (stores built without Redis).
    pub fn off() -> Self {
        Self::new(
            Redis::disabled("catalogue"),
            CatalogueCacheSettings {
                enabled: false,
                ..CatalogueCacheSettings::default()
            },
        )
    }

    fn active(&self) -> bool {
        self.settings.enabled && self.redis.is_enabled()
    }

    fn version_key(&self) -> String {
        self.redis.key("catalogue:version")
    }

    /// The Redis key of a product (tests plant and observe entries by it).
    pub fn product_key(&self, product_id: i64) -> String {
        self.redis.key(format!("catalogue:product:{product_id}"))
    }

    /// The key of a list page at `version`.
    pub fn list_key(&self, list: &str, version: &str) -> String {
        self.redis.key(format!("catalogue:list:{list}:v{version}"))
    }

    /// The key without the version (the script appends it).
    fn base_key(&self, key: &CacheKey) -> (String, bool) {
        match key {
            CacheKey::Product(id) => (self.product_key(*id), false),
            CacheKey::List(list) => (self.redis.key(format!("catalogue:list:{list}")), true),
        }
    }

    pub async fn lookup<T: DeserializeOwned>(&self, key: &CacheKey) -> Lookup<T> {
        if !self.active() {
            return Lookup::Off;
        }
        let (base, versioned) = self.base_key(key);
        let version_key = self.version_key();
        let reply = self
            .redis
            .run(|mut c| async move {
                LOOKUP
                    .key(version_key)
                    .arg(base)
                    .arg(if versioned { "1" } else { "0" })
                    .invoke_async::<Vec<String>>(&mut c)
                    .await
            })
            .await;
        let mut reply = match reply {
            Ok(reply) => reply.into_iter(),
            Err(down) => {
                tracing::debug!(%down, "catalogue cache unavailable; reading MySQL");
                return Lookup::Off;
            }
        };
        let Some(version) = reply.next() else {
            return Lookup::Off;
        };
        match reply
            .next()
            .map(|cached| serde_json::from_str::<T>(&cached))
        {
            Some(Ok(value)) => Lookup::Hit(value),
            Some(Err(error)) => {
                // A format from another build: read MySQL and overwrite it.
                tracing::debug!(%error, "catalogue cache entry unreadable");
                Lookup::Miss { version }
            }
            None => Lookup::Miss { version },
        }
    }

    /// Caches `value` read from MySQL after a [`Lookup::Miss`] at `version`.
    pub async fn fill<T: Serialize>(&self, key: &CacheKey, version: &str, value: &T) {
        let Ok(json) = serde_json::to_string(value) else {
            return;
        };
        let key = match key {
            CacheKey::Product(id) => self.product_key(*id),
            CacheKey::List(list) => self.list_key(list, version),
        };
        let version_key = self.version_key();
        let ttl = u64::try_from(self.settings.ttl.as_millis()).unwrap_or(u64::MAX);
        let filled = self
            .redis
            .run(|mut c| async move {
                FILL.key(version_key)
                    .key(key)
                    .arg(version)
                    .arg(json)
                    .arg(ttl)
                    .invoke_async::<i64>(&mut c)
                    .await
            })
            .await;
        if let Err(down) = filled {
            tracing::debug!(%down, "catalogue cache not filled");
        }
    }

    /// After a committed write: every page, and the products `changed`.
    pub async fn invalidate(&self, changed: &[i64]) {
        if !self.active() {
            return;
        }
        let mut keys = vec![self.version_key()];
        keys.extend(changed.iter().map(|&id| self.product_key(id)));
        let invalidated = self
            .redis
            .run(|mut c| async move {
                let mut invocation = INVALIDATE.prepare_invoke();
                for key in keys {
                    invocation.key(key);
                }
                invocation.invoke_async::<i64>(&mut c).await
            })
            .await;
        if let Err(down) = invalidated {
            // Bounded by the TTL: see the module documentation.
            tracing::warn!(%down, "catalogue cache not invalidated; stale reads until the TTL");
        }
    }
}

/// A product as cached: everything but its stock.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CachedProduct {
    id: i64,
    brand_id: i64,
    brand_name: String,
    name: String,
    price: i64,
    status: String,
    like_count: i64,
    created_at: NaiveDateTime,
    updated_at: NaiveDateTime,
}

impl CachedProduct {
    pub fn id(&self) -> i64 {
        self.id
    }

    /// The product with `stock` read now; `None` when the entry is not one
    /// this build wrote (then the caller reads MySQL).
    pub fn with_stock(self, stock: Stock) -> Option<Product> {
        Some(Product {
            status: ProductStatus::from_stored(&self.status).ok()?,
            id: self.id,
            brand_id: self.brand_id,
            brand_name: self.brand_name,
            name: self.name,
            price: self.price,
            like_count: self.like_count,
            stock,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

impl From<&Product> for CachedProduct {
    fn from(product: &Product) -> Self {
        Self {
            id: product.id,
            brand_id: product.brand_id,
            brand_name: product.brand_name.clone(),
            name: product.name.clone(),
            price: product.price,
            status: product.status.as_str().to_owned(),
            like_count: product.like_count,
            created_at: product.created_at,
            updated_at: product.updated_at,
        }
    }
}

/// A list page as cached.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CachedPage {
    pub products: Vec<CachedProduct>,
    pub total: i64,
}
