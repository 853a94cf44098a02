//! The outbox relay: publishes committed order events to the Redis stream
//! `<prefix>:events:orders`, at least once and in order per order.
//!
//! Each round claims a batch of outbox rows (like sagas are claimed: rows
//! another instance holds are skipped, and so is any row whose order has an
//! earlier unpublished event), adds them to the stream in one MULTI/EXEC
//! (`XADD ... MAXLEN ~ bound`), then marks them published. A crash or a
//! dropped future between the XADD and the mark publishes the batch again
//! after its claim expires: consumers see a repeat, never a gap. While
//! Redis is away the relay backs off exponentially; orders go on (the
//! outbox is written with them in MySQL) and the backlog drains when Redis
//! returns. Published rows are purged after a retention.

use std::sync::Arc;
use std::time::{Duration, Instant};

use commerce_platform::error::ServiceError;
use commerce_platform::redis::{Redis, RedisDown};
use commerce_platform::time::now;
use commerce_proto::prost::Message;
use tokio::sync::Notify;

use crate::events::{order_event, type_name};
use crate::store::OrderStore;

/// The stream's name under the Redis prefix.
pub const STREAM: &str = "events:orders";

#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Events claimed and published per round.
    pub batch: i64,
    /// How long a claim holds before another relay may take the rows.
    pub claim_for: Duration,
    /// Longest wait for new rows when idle (a local write wakes it sooner).
    pub idle_poll: Duration,
    /// After a round that found fewer rows than a batch, how long to let
    /// more accumulate: a few ms of lag buys rounds of many events (the
    /// statements of a round are shared by its events).
    pub linger: Duration,
    /// Cap of the backoff while Redis or MySQL fails.
    pub backoff_max: Duration,
    /// Published rows older than this are purged.
    pub retention: Duration,
    /// The stream's approximate length bound (`MAXLEN ~`).
    pub stream_max_len: usize,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            batch: 128,
            claim_for: Duration::from_secs(30),
            idle_poll: Duration::from_millis(500),
            linger: Duration::from_millis(50),
            backoff_max: Duration::from_secs(5),
            retention: Duration::from_secs(24 * 3600),
            stream_max_len: 1_000_000,
        }
    }
}

/// Why a round published nothing.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("database: {0}")]
    Database(#[from] ServiceError),
    #[error("{0}")]
    Redis(#[from] RedisDown),
}

pub struct Relay {
    store: OrderStore,
    redis: Redis,
    owner: String,
    config: RelayConfig,
    wake: Arc<Notify>,
}

impl Relay {
    pub fn new(store: OrderStore, redis: Redis, owner: String, config: RelayConfig) -> Self {
        let wake = store.outbox_signal();
        Self {
            store,
            redis,
            owner,
            config,
            wake,
        }
    }

    /// The stream's full key.
    pub fn stream(&self) -> String {
        self.redis.key(STREAM)
    }

    /// Publishes forever: drains the outbox, waits for new rows, backs off
    /// while anything fails, purges old rows now and then.
    pub async fn run_forever(self) {
        if !self.redis.is_enabled() {
            tracing::warn!(
                "Redis is off: order events stay in the outbox until a relay with Redis runs"
            );
            return;
        }
        let mut failing_since: Option<Instant> = None;
        let mut backoff = Duration::from_millis(50);
        let mut purged_at = Instant::now();
        loop {
            match self.relay_once().await {
                Ok(published) => {
                    if let Some(since) = failing_since.take() {
                        tracing::info!(
                            after_ms = since.elapsed().as_millis() as u64,
                            "outbox relay publishing again"
                        );
                    }
                    backoff = Duration::from_millis(50);
                    if published == 0 {
                        // Idle: a local write wakes us; other instances'
                        // rows and expired claims are found by the poll.
                        let _ =
                            tokio::time::timeout(self.config.idle_poll, self.wake.notified()).await;
                    }
                    if (published as i64) < self.config.batch {
                        // Let events accumulate: one round per event would
                        // cost its claim and mark statements per order.
                        tokio::time::sleep(self.config.linger).await;
                    }
                }
                Err(error) => {
                    crate::metrics::outbox_failed();
                    if failing_since.is_none() {
                        tracing::warn!(%error, "outbox relay cannot publish; backing off");
                        failing_since = Some(Instant::now());
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.config.backoff_max);
                }
            }
            if purged_at.elapsed() >= Duration::from_secs(60) {
                purged_at = Instant::now();
                self.purge().await;
            }
        }
    }

    /// One round: claims, publishes and marks a batch; how many were
    /// published.
    pub async fn relay_once(&self) -> Result<usize, RelayError> {
        let until = now()
            + chrono::Duration::from_std(self.config.claim_for)
                .unwrap_or(chrono::Duration::seconds(30));
        let pending = self
            .store
            .outbox_claim(&self.owner, until, self.config.batch)
            .await?;
        if pending.is_empty() {
            return Ok(0);
        }
        let stream = self.stream();
        let mut pipe = redis::pipe();
        pipe.atomic();
        for event in &pending {
            let message = order_event(event)?;
            pipe.cmd("XADD")
                .arg(&stream)
                .arg("MAXLEN")
                .arg("~")
                .arg(self.config.stream_max_len)
                .arg("*")
                .arg("event_id")
                .arg(&message.event_id)
                .arg("order_id")
                .arg(&message.order_id)
                .arg("type")
                .arg(type_name(&message))
                .arg("event")
                .arg(message.encode_to_vec())
                .ignore();
        }
        self.redis
            .run(|mut c| async move { pipe.query_async::<()>(&mut c).await })
            .await?;
        let ids: Vec<i64> = pending.iter().map(|e| e.row.id).collect();
        self.store.outbox_published(&self.owner, &ids).await?;
        crate::metrics::outbox_published(ids.len());
        Ok(ids.len())
    }

    async fn purge(&self) {
        let before = now()
            - chrono::Duration::from_std(self.config.retention)
                .unwrap_or(chrono::Duration::days(1));
        // Bounded: at most 100 rounds of 1,000 rows per purge.
        for _ in 0..100 {
            match self.store.outbox_purge(before, 1_000).await {
                Ok(1_000) => continue,
                Ok(_) => return,
                Err(error) => {
                    tracing::warn!(%error, "outbox purge failed; trying again later");
                    return;
                }
            }
        }
    }
}
