//! The consumer of the order event stream: applies every order event to the
//! ranking, and acknowledges an entry only once it is applied.
//!
//! One Redis consumer group, [`GROUP`], shared by every product server, so
//! each entry is applied by one of them (and again, harmlessly, after a
//! crash: application is idempotent per order, see `apply.lua`). Entries a
//! consumer read and never acknowledged (it died, or Redis failed between
//! the apply and the ack) stay pending in the group: this consumer first
//! re-reads its own pending entries after every failure, and every
//! `claim_every` takes over entries idle longer than `claim_min_idle`
//! (`XAUTOCLAIM`), whoever held them. After each full sweep, other
//! consumers that hold nothing and have been idle that long are removed from
//! the group (`forget.lua`), so dead processes' names do not pile up.
//!
//! The loop never ends and never fails: while Redis is down it retries
//! with capped exponential backoff, warning once per outage. Dropping it at
//! any await loses nothing: an entry is acknowledged after it is applied,
//! so an interrupted one is pending and claimed later.

use std::time::Duration;

use commerce_platform::{Redis, RedisDown, RedisSettings};
use redis::AsyncCommands;
use redis::streams::{
    StreamAutoClaimOptions, StreamAutoClaimReply, StreamId, StreamInfoConsumersReply,
    StreamReadOptions, StreamReadReply,
};
use tokio::time::Instant;

use super::event::change_from_event;
use super::tally::SalesTally;

/// Removes a consumer that holds nothing and is idle (see `forget.lua`).
static FORGET: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(include_str!("forget.lua")));

/// The consumer group of the product servers. Persisted in Redis: renaming
/// it makes the servers read the stream again from its start.
pub const GROUP: &str = "product-ranking";
/// The stream the orchestrator publishes order events to (under the prefix).
pub const STREAM: &str = "events:orders";

/// Tuning of the consumer (flags `--ranking-*`).
#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    /// How long one read waits for new entries.
    pub block: Duration,
    /// Entries pending this long are taken over from their consumer.
    pub claim_min_idle: Duration,
    /// How often pending entries are looked for.
    pub claim_every: Duration,
    /// Entries read or claimed at once.
    pub batch: usize,
    /// First and largest pause after a failure.
    pub backoff_first: Duration,
    pub backoff_max: Duration,
}

impl Default for ConsumerSettings {
    fn default() -> Self {
        Self {
            block: Duration::from_secs(1),
            claim_min_idle: Duration::from_secs(30),
            claim_every: Duration::from_secs(5),
            batch: 64,
            backoff_first: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
        }
    }
}

/// One consumer of the group; see the module documentation.
pub struct OrderEventConsumer {
    /// A connection of its own: a blocking read holds its connection, and
    /// must hold no other caller's request behind it.
    stream: Redis,
    tally: SalesTally,
    key: String,
    /// Unique per process: two processes sharing a name would share pending
    /// entries, and a restarted one would not know what it held.
    name: String,
    settings: ConsumerSettings,
    /// Entries that were not order events, acknowledged and skipped.
    malformed: u64,
}

/// Where the loop stands between rounds.
struct Progress {
    group_ready: bool,
    /// Our own pending entries (after a failure) come before new ones.
    own_pending: bool,
    /// Next `XAUTOCLAIM` start, and when the next sweep is due.
    claim_cursor: String,
    claim_due: Instant,
}

impl OrderEventConsumer {
    pub fn new(
        redis: &RedisSettings,
        tally: SalesTally,
        settings: ConsumerSettings,
    ) -> anyhow::Result<Self> {
        // Every call on this connection may wait for a blocking read.
        let own = RedisSettings {
            timeout: redis.timeout + settings.block,
            ..redis.clone()
        };
        let stream = Redis::connect(&own)?;
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "product".to_owned());
        let name = format!(
            "{host}-{}-{}",
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        Ok(Self {
            key: stream.key(STREAM),
            stream,
            tally,
            name,
            settings,
            malformed: 0,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Follows the stream for as long as the server runs.
    pub async fn run(mut self) {
        tracing::info!(stream = %self.key, group = GROUP, consumer = %self.name, "following order events for the sales ranking");
        let mut progress = Progress {
            group_ready: false,
            own_pending: true,
            claim_cursor: "0-0".to_owned(),
            claim_due: Instant::now(),
        };
        let mut backoff = self.settings.backoff_first;
        let mut outage = false;
        loop {
            match self.round(&mut progress).await {
                Ok(()) => {
                    if outage {
                        tracing::info!(stream = %self.key, "Redis is back: the sales ranking follows order events again");
                    }
                    outage = false;
                    backoff = self.settings.backoff_first;
                }
                Err(down) => {
                    if is_missing_group(&down) {
                        // The stream or group was deleted: create it again.
                        progress.group_ready = false;
                    }
                    if !outage {
                        tracing::warn!(stream = %self.key, error = %down, "the sales ranking cannot follow order events; retrying until Redis answers");
                    } else {
                        tracing::debug!(error = %down, "Redis still unavailable");
                    }
                    outage = true;
                    progress.own_pending = true;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.settings.backoff_max);
                }
            }
        }
    }

    /// One bounded step: make sure the group exists, take over stale
    /// entries when due, then read and apply one batch.
    async fn round(&mut self, progress: &mut Progress) -> Result<(), RedisDown> {
        if !progress.group_ready {
            self.create_group().await?;
            progress.group_ready = true;
        }
        if Instant::now() >= progress.claim_due {
            let (next, entries) = self.claim(&progress.claim_cursor).await?;
            self.apply_all(entries).await?;
            if next == "0-0" {
                // A whole sweep done: what dead consumers held is ours now.
                self.forget_idle_consumers().await?;
                progress.claim_due = Instant::now() + self.settings.claim_every;
            }
            progress.claim_cursor = next;
        }
        let entries = if progress.own_pending {
            let entries = self.read("0", None).await?;
            progress.own_pending = !entries.is_empty();
            entries
        } else {
            self.read(">", Some(self.settings.block)).await?
        };
        self.apply_all(entries).await
    }

    /// Creates the group when missing, from the stream's start (`0`): events
    /// published before any product server started are counted too.
    async fn create_group(&self) -> Result<(), RedisDown> {
        let key = &self.key;
        let created = self
            .stream
            .run(|mut c| async move {
                c.xgroup_create_mkstream::<_, _, _, ()>(key, GROUP, "0")
                    .await
            })
            .await;
        match created {
            Ok(()) => Ok(()),
            Err(RedisDown::Failed(e)) if e.code() == Some("BUSYGROUP") => Ok(()),
            Err(down) => Err(down),
        }
    }

    /// `XREADGROUP` from `id` (`>`: new entries; `0`: our own pending ones).
    async fn read(&self, id: &str, block: Option<Duration>) -> Result<Vec<StreamId>, RedisDown> {
        let mut options = StreamReadOptions::default()
            .group(GROUP, &self.name)
            .count(self.settings.batch);
        if let Some(block) = block {
            options = options.block(usize::try_from(block.as_millis()).unwrap_or(usize::MAX));
        }
        let (key, options) = (&self.key, &options);
        let reply: Option<StreamReadReply> = self
            .stream
            .run(|mut c| async move { c.xread_options(&[key], &[id], options).await })
            .await?;
        Ok(reply
            .into_iter()
            .flat_map(|reply| reply.keys)
            .flat_map(|key| key.ids)
            .collect())
    }

    /// `XAUTOCLAIM` from `cursor`: the next cursor and the claimed entries.
    async fn claim(&self, cursor: &str) -> Result<(String, Vec<StreamId>), RedisDown> {
        let (key, name) = (&self.key, &self.name);
        let min_idle = u64::try_from(self.settings.claim_min_idle.as_millis()).unwrap_or(u64::MAX);
        let options = StreamAutoClaimOptions::default().count(self.settings.batch);
        let reply: StreamAutoClaimReply = self
            .stream
            .run(|mut c| async move {
                c.xautoclaim_options(key, GROUP, name, min_idle, cursor, options)
                    .await
            })
            .await?;
        if !reply.claimed.is_empty() {
            tracing::info!(
                claimed = reply.claimed.len(),
                "took over order events another consumer left pending"
            );
        }
        Ok((reply.next_stream_id, reply.claimed))
    }

    /// Removes from the group the other consumers that hold nothing and
    /// have been idle for `claim_min_idle`: the names of dead processes
    /// would otherwise pile up in the group forever (every process takes a
    /// new one). Harmless to a consumer that is only quiet: its next read
    /// adds it back.
    async fn forget_idle_consumers(&self) -> Result<(), RedisDown> {
        let key = &self.key;
        let min_idle = self.settings.claim_min_idle.as_millis();
        let consumers: StreamInfoConsumersReply = self
            .stream
            .run(|mut c| async move { c.xinfo_consumers(key, GROUP).await })
            .await?;
        for consumer in consumers.consumers {
            if consumer.name == self.name
                || consumer.pending > 0
                || (consumer.idle as u128) < min_idle
            {
                continue;
            }
            // Looked at again and removed in one script: it may have read
            // something since.
            let mut invocation = FORGET.prepare_invoke();
            invocation
                .key(key)
                .arg(GROUP)
                .arg(&consumer.name)
                .arg(u64::try_from(min_idle).unwrap_or(u64::MAX));
            let invocation = &invocation;
            let removed: i64 = self
                .stream
                .run(|mut c| async move { invocation.invoke_async(&mut c).await })
                .await?;
            if removed == 1 {
                tracing::info!(consumer = %consumer.name, "forgot an idle consumer of the order event stream");
            }
        }
        Ok(())
    }

    /// Applies the entries' changes in one script call, then acknowledges
    /// them all. When Redis fails on the way none is acknowledged: they stay
    /// pending and come back, and applying them again changes nothing.
    async fn apply_all(&mut self, entries: Vec<StreamId>) -> Result<(), RedisDown> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut changes = Vec::with_capacity(entries.len());
        for entry in &entries {
            let change = entry
                .get::<Vec<u8>>("event")
                .ok_or_else(|| super::event::MalformedEvent("no `event` field".to_owned()))
                .and_then(|encoded| change_from_event(&encoded));
            match change {
                Ok(Some(change)) => changes.push(change),
                Ok(None) => {}
                Err(why) => {
                    // Acknowledged with the rest: no retry can read it, and
                    // it must not hold back the events behind it.
                    self.malformed += 1;
                    tracing::error!(
                        stream = %self.key,
                        entry = %entry.id,
                        malformed_so_far = self.malformed,
                        error = %why,
                        "skipping an unreadable order event"
                    );
                }
            }
        }
        if !changes.is_empty() {
            let applied = self.tally.apply_all(&changes).await?;
            tracing::debug!(events = changes.len(), ?applied, "order events applied");
        }
        let done: Vec<&str> = entries.iter().map(|entry| entry.id.as_str()).collect();
        let (key, done) = (&self.key, &done);
        self.stream
            .run(|mut c| async move { c.xack::<_, _, _, i64>(key, GROUP, done).await })
            .await?;
        Ok(())
    }
}

fn is_missing_group(down: &RedisDown) -> bool {
    matches!(down, RedisDown::Failed(e) if e.code() == Some("NOGROUP"))
}
