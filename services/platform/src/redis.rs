//! Redis: the mesh's speed and event layer, never the only holder of the
//! truth.
//!
//! Every server gets one [`Redis`] handle: a lazily connected, multiplexed
//! connection (`redis::aio::ConnectionManager`, which reconnects by itself)
//! under a key prefix. Nothing waits for Redis at start-up, and every call
//! is bounded by a short timeout ([`Redis::run`]): a Redis that is down or
//! hangs makes a fast path fall back to MySQL at once, never blocks or fails
//! what MySQL alone can do.
//!
//! Keys: `<prefix>:<name>`; the prefix (`REDIS_PREFIX`, default `commerce`)
//! lets several meshes, or every test, share one Redis.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// How a server reaches Redis.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// `redis://host:port[/db]`; `None` turns every Redis path off.
    pub url: Option<String>,
    /// Prefix of every key and stream name.
    pub prefix: String,
    /// Bound of one call (connecting included).
    pub timeout: Duration,
}

impl RedisSettings {
    /// From the `--redis-url` flag: empty or `off` disables Redis.
    pub fn new(url: &str, prefix: &str, timeout: Duration) -> anyhow::Result<Self> {
        let url = url.trim();
        let url = (!url.is_empty() && !url.eq_ignore_ascii_case("off")).then(|| url.to_owned());
        if let Some(url) = &url {
            redis::Client::open(url.as_str())
                .map_err(|e| anyhow::anyhow!("--redis-url {url:?}: {e}"))?;
        }
        anyhow::ensure!(
            !prefix.is_empty() && !prefix.contains(char::is_whitespace),
            "--redis-prefix must be a non-empty word"
        );
        Ok(Self {
            url,
            prefix: prefix.to_owned(),
            timeout,
        })
    }

    /// For tests: `COMMERCE_TEST_REDIS_URL` (default the local Redis) under a
    /// prefix of the test's own.
    pub fn for_tests(prefix: impl Into<String>) -> Self {
        Self {
            url: Some(
                std::env::var("COMMERCE_TEST_REDIS_URL")
                    .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned()),
            ),
            prefix: prefix.into(),
            timeout: Duration::from_secs(2),
        }
    }
}

/// Why a Redis call gave no answer. Callers fall back; none of these is an
/// error of the request that tried the fast path.
#[derive(Debug, thiserror::Error)]
pub enum RedisDown {
    #[error("Redis is turned off (--redis-url off)")]
    Disabled,
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("Redis failed: {0}")]
    Failed(#[from] redis::RedisError),
}

/// A server's Redis: cheap to clone, shared by every task.
#[derive(Clone)]
pub struct Redis {
    manager: Option<ConnectionManager>,
    prefix: Arc<str>,
    timeout: Duration,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("enabled", &self.manager.is_some())
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Redis {
    /// A handle that connects on first use and reconnects after failures;
    /// returns at once whether or not Redis is up.
    pub fn connect(settings: &RedisSettings) -> anyhow::Result<Self> {
        let manager = match &settings.url {
            None => None,
            Some(url) => {
                let client = redis::Client::open(url.as_str())?;
                // One quick reconnect attempt per failed call: while Redis is
                // away, calls fail fast instead of queueing behind retries.
                let config = ConnectionManagerConfig::new()
                    .set_number_of_retries(1)
                    .set_min_delay(Duration::from_millis(10))
                    .set_max_delay(Duration::from_millis(200))
                    .set_connection_timeout(Some(settings.timeout))
                    .set_response_timeout(Some(settings.timeout));
                Some(ConnectionManager::new_lazy_with_config(client, config)?)
            }
        };
        Ok(Self {
            manager,
            prefix: settings.prefix.as_str().into(),
            timeout: settings.timeout,
        })
    }

    /// A handle with every call answering [`RedisDown::Disabled`].
    pub fn disabled(prefix: &str) -> Self {
        Self {
            manager: None,
            prefix: prefix.into(),
            timeout: Duration::ZERO,
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.manager.is_some()
    }

    /// `<prefix>:<name>`.
    pub fn key(&self, name: impl std::fmt::Display) -> String {
        format!("{}:{name}", self.prefix)
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Runs `op` on the shared connection, bounded by the timeout. Dropping
    /// the returned future at any point is harmless: the multiplexed
    /// connection discards the answer of a command nobody waits for.
    pub async fn run<T, F, Fut>(&self, op: F) -> Result<T, RedisDown>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        self.run_for(self.timeout, op).await
    }

    /// [`Self::run`] with a bound of its own (blocking reads of a stream).
    pub async fn run_for<T, F, Fut>(&self, bound: Duration, op: F) -> Result<T, RedisDown>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let manager = self.manager.clone().ok_or(RedisDown::Disabled)?;
        match tokio::time::timeout(bound, op(manager)).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(RedisDown::Timeout(bound)),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[tokio::test]
    async fn a_redis_that_is_not_there_fails_fast_and_never_blocks_start() {
        // Nothing listens on port 1 of loopback.
        let settings =
            RedisSettings::new("redis://127.0.0.1:1", "t", Duration::from_millis(300)).unwrap();
        let redis = Redis::connect(&settings).unwrap();
        let down = redis
            .run(|mut c| async move { redis::cmd("PING").query_async::<String>(&mut c).await })
            .await
            .unwrap_err();
        assert!(
            matches!(down, RedisDown::Failed(_) | RedisDown::Timeout(_)),
            "{down}"
        );
        assert!(matches!(
            Redis::disabled("t").run(|_| async { Ok(()) }).await,
            Err(RedisDown::Disabled)
        ));
    }

    #[test]
    fn settings_name_the_flag() {
        assert!(
            RedisSettings::new("off", "p", Duration::ZERO)
                .unwrap()
                .url
                .is_none()
        );
        assert!(
            RedisSettings::new("", "p", Duration::ZERO)
                .unwrap()
                .url
                .is_none()
        );
        let bad = RedisSettings::new("nope://x", "p", Duration::ZERO).unwrap_err();
        assert!(bad.to_string().contains("--redis-url"), "{bad}");
        let bad = RedisSettings::new("off", "", Duration::ZERO).unwrap_err();
        assert!(bad.to_string().contains("--redis-prefix"), "{bad}");
    }
}
