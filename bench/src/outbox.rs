//! The order event outbox under load: what the relay had left to publish
//! when a uniform level ended, how long it took to publish it, and how far
//! each event lagged its order's commit on the way to the Redis stream.
//!
//! Lag of one event = its stream entry id's millisecond part (Redis' clock
//! at the XADD) minus its `occurred_at` (the orchestrator's clock at the
//! commit of the order's change). Both clocks are this machine's.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use commerce_proto::events::v1::OrderEvent;
use commerce_proto::order::v1 as order;
use commerce_proto::prost::Message;
use redis::aio::MultiplexedConnection;
use redis::streams::StreamRangeReply;

use crate::keyspace::RunRedis;
use crate::mesh::Systems;
use crate::model::OutboxLag;

/// The longest wait for the outbox to drain after a level.
const DRAIN_PATIENCE: Duration = Duration::from_secs(30);
/// Stream entries per XRANGE.
const PAGE: usize = 1_000;
/// Stream entries read per level at most (the stream holds 1,000,000).
const READ_LIMIT: usize = 1_000_000;

/// The run's order event stream, read with plain XRANGE (no consumer group).
pub struct EventStream {
    conn: MultiplexedConnection,
    key: String,
}

/// One stream entry as the lag needs it.
pub struct Published {
    pub order_id: String,
    pub lag_ms: f64,
}

impl EventStream {
    pub async fn connect(redis: &RunRedis) -> anyhow::Result<Self> {
        Ok(Self {
            conn: redis.connect().await?,
            key: redis.events_stream(),
        })
    }

    /// Id of the newest entry (`0-0` when the stream is empty or absent):
    /// where to read a level's entries from.
    pub async fn last_id(&mut self) -> anyhow::Result<String> {
        let last: StreamRangeReply = redis::cmd("XREVRANGE")
            .arg(&self.key)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut self.conn)
            .await?;
        Ok(last
            .ids
            .first()
            .map_or_else(|| "0-0".to_owned(), |e| e.id.clone()))
    }

    /// Every entry after `from`, oldest first, in pages of [`PAGE`], at most
    /// [`READ_LIMIT`].
    pub async fn read_after(&mut self, from: &str) -> anyhow::Result<Vec<Published>> {
        let mut cursor = from.to_owned();
        let mut all = Vec::new();
        while all.len() < READ_LIMIT {
            let page: StreamRangeReply = redis::cmd("XRANGE")
                .arg(&self.key)
                .arg(format!("({cursor}"))
                .arg("+")
                .arg("COUNT")
                .arg(PAGE)
                .query_async(&mut self.conn)
                .await?;
            let Some(last) = page.ids.last() else { break };
            cursor = last.id.clone();
            let full = page.ids.len() == PAGE;
            for entry in &page.ids {
                all.push(published(entry)?);
            }
            if !full {
                break;
            }
        }
        Ok(all)
    }
}

fn published(entry: &redis::streams::StreamId) -> anyhow::Result<Published> {
    let bytes: Vec<u8> = entry
        .get("event")
        .ok_or_else(|| anyhow::anyhow!("stream entry {} has no `event` field", entry.id))?;
    let event = OrderEvent::decode(bytes.as_slice())?;
    let added_ms: f64 = entry
        .id
        .split_once('-')
        .and_then(|(ms, _)| ms.parse::<u64>().ok())
        .ok_or_else(|| anyhow::anyhow!("stream entry id {} is not <ms>-<seq>", entry.id))?
        as f64;
    let occurred = event
        .occurred_at
        .ok_or_else(|| anyhow::anyhow!("event {} has no occurred_at", event.event_id))?;
    let occurred_ms = occurred.seconds as f64 * 1000.0 + f64::from(occurred.nanos) / 1e6;
    Ok(Published {
        order_id: event.order_id,
        lag_ms: added_ms - occurred_ms,
    })
}

/// `GetOutbox.pending` now.
pub async fn pending(systems: &Systems) -> anyhow::Result<i64> {
    let mut request = tonic::Request::new(order::GetOutboxRequest {});
    request.set_timeout(Duration::from_secs(5));
    Ok(systems
        .sagas()
        .get_outbox(request)
        .await?
        .into_inner()
        .pending)
}

/// Polls `GetOutbox` until nothing is pending, for at most
/// [`DRAIN_PATIENCE`] from `since`; whether it drained.
pub async fn wait_drained(systems: &Systems, since: Instant) -> anyhow::Result<bool> {
    loop {
        if pending(systems).await? == 0 {
            return Ok(true);
        }
        if since.elapsed() >= DRAIN_PATIENCE {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What one level's outbox did, from its entries.
pub struct LevelEvents {
    pub concurrency: usize,
    pub orders: u64,
    pub pending_after_load: i64,
    pub drain: Duration,
    pub drained: bool,
}

impl LevelEvents {
    pub fn summary(&self, published: &[Published]) -> OutboxLag {
        let mut lags: Vec<f64> = published.iter().map(|p| p.lag_ms).collect();
        lags.sort_by(f64::total_cmp);
        OutboxLag {
            concurrency: self.concurrency,
            orders: self.orders,
            pending_after_load: self.pending_after_load,
            drain_secs: self.drain.as_secs_f64(),
            drained: self.drained,
            events: lags.len() as u64,
            lag_p50_ms: quantile(&lags, 0.50),
            lag_p99_ms: quantile(&lags, 0.99),
            lag_max_ms: lags.last().copied().unwrap_or_default(),
        }
    }
}

/// The `q` quantile of sorted `values` (nearest rank), 0 when empty.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Order ids with at least one event among `published`.
pub fn orders_with_events(published: &[Published]) -> HashSet<String> {
    published.iter().map(|p| p.order_id.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantile_takes_the_nearest_rank() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&values, 0.50), 50.0);
        assert_eq!(quantile(&values, 0.99), 99.0);
        assert_eq!(quantile(&values, 1.0), 100.0);
        assert_eq!(quantile(&[7.0], 0.99), 7.0);
        assert_eq!(quantile(&[], 0.5), 0.0);
    }
}
