//! The run's own corner of Redis: every server the harness starts gets the
//! key prefix `bench-<run id>`, so that a run never reads or writes the keys
//! of a `deploy/up.sh` mesh or of another run on the same Redis, and the
//! harness deletes the run's keys at its end (best effort, bounded).

use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;

/// The Redis of one run.
#[derive(Debug, Clone)]
pub struct RunRedis {
    /// The servers' `--redis-url`, and where the harness reads the stream.
    pub url: String,
    /// `bench-<run id>`: the servers' `--redis-prefix`.
    pub prefix: String,
}

/// Keys SCAN returns per call while deleting.
const SCAN_COUNT: usize = 1_000;
/// The longest the deletion of the run's keys may take.
const DELETE_PATIENCE: Duration = Duration::from_secs(30);

impl RunRedis {
    /// A fresh prefix for a run on the Redis at `url`.
    pub fn new(url: &str) -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        Self {
            url: url.to_owned(),
            prefix: format!("bench-{}", &id[..12]),
        }
    }

    /// The flags of a server with this Redis.
    pub fn server_args(&self) -> [String; 4] {
        [
            "--redis-url".to_owned(),
            self.url.clone(),
            "--redis-prefix".to_owned(),
            self.prefix.clone(),
        ]
    }

    /// The flags of a server without Redis (every Redis path off), under
    /// the same prefix should anything still name a key.
    pub fn server_args_without(&self) -> [String; 4] {
        [
            "--redis-url".to_owned(),
            "off".to_owned(),
            "--redis-prefix".to_owned(),
            self.prefix.clone(),
        ]
    }

    /// The order event stream of the run's orchestrator.
    pub fn events_stream(&self) -> String {
        format!("{}:events:orders", self.prefix)
    }

    pub async fn connect(&self) -> anyhow::Result<MultiplexedConnection> {
        let client = redis::Client::open(self.url.as_str())?;
        let conn = tokio::time::timeout(
            Duration::from_secs(5),
            client.get_multiplexed_async_connection(),
        )
        .await
        .map_err(|_| anyhow::anyhow!("Redis at {} did not answer within 5 s", self.url))??;
        Ok(conn)
    }

    /// Deletes every key under the run's prefix (`SCAN MATCH <prefix>:*`
    /// and `UNLINK`), for at most [`DELETE_PATIENCE`]; returns how many.
    pub async fn delete_keys(&self) -> anyhow::Result<u64> {
        let mut conn = self.connect().await?;
        let pattern = format!("{}:*", self.prefix);
        let started = Instant::now();
        let mut cursor: u64 = 0;
        let mut deleted = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(SCAN_COUNT)
                .query_async(&mut conn)
                .await?;
            if !keys.is_empty() {
                let unlinked: u64 = redis::cmd("UNLINK")
                    .arg(&keys)
                    .query_async(&mut conn)
                    .await?;
                deleted += unlinked;
            }
            cursor = next;
            if cursor == 0 {
                return Ok(deleted);
            }
            anyhow::ensure!(
                started.elapsed() < DELETE_PATIENCE,
                "{deleted} keys of {pattern} deleted, more left after {DELETE_PATIENCE:?}"
            );
        }
    }
}
