//! The ranking's storage: per-day sorted sets of units sold and per-day
//! hashes of order states in Redis, written only by `apply.lua`.
//!
//! Keys (under the server's prefix):
//! - `ranking:day:<YYYY-MM-DD>`: product id -> units sold that day (UTC);
//! - `ranking:orders:<YYYY-MM-DD>`: order id -> its state, for the orders
//!   placed that day; it expires with the day's units, and an order's events
//!   all carry the same placement day, so they all find it.

use chrono::NaiveDate;
use commerce_platform::{Redis, RedisDown};
use redis::Script;

use super::model::OrderChange;

/// What applying a change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// A confirmation's units were counted.
    Counted,
    /// A cancellation took back what the confirmation counted.
    Subtracted,
    /// The order ended without a sale before anything counted: a later
    /// confirmation counts nothing.
    Closed,
    /// The order's state already decided: a repeat, or a change that comes
    /// too late to matter.
    Unchanged,
    /// The order's day is out of every window: nothing was written.
    Expired,
}

/// The ranking in Redis. Cheap to clone.
#[derive(Clone)]
pub struct SalesTally {
    redis: Redis,
    apply: Script,
    top: Script,
}

impl std::fmt::Debug for SalesTally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SalesTally")
            .field("redis", &self.redis)
            .finish()
    }
}

impl SalesTally {
    pub fn new(redis: Redis) -> Self {
        Self {
            redis,
            apply: Script::new(include_str!("apply.lua")),
            top: Script::new(include_str!("top.lua")),
        }
    }

    pub fn redis(&self) -> &Redis {
        &self.redis
    }

    /// The sorted set of a day's units sold.
    pub fn day_key(&self, day: NaiveDate) -> String {
        self.redis.key(format_args!("ranking:day:{day}"))
    }

    /// The hash of the states of the orders placed on a day.
    pub fn orders_key(&self, day: NaiveDate) -> String {
        self.redis.key(format_args!("ranking:orders:{day}"))
    }

    /// Applies one change of one order, atomically and at most once per
    /// order (see `apply.lua`).
    pub async fn apply(&self, change: &OrderChange) -> Result<Applied, RedisDown> {
        let applied = self.apply_all(std::slice::from_ref(change)).await?;
        Ok(applied.first().copied().unwrap_or(Applied::Unchanged))
    }

    /// Applies `changes` in order, each at most once per order, in one
    /// script call (one round trip for a whole read of the stream); what
    /// each did, in the same order.
    pub async fn apply_all(&self, changes: &[OrderChange]) -> Result<Vec<Applied>, RedisDown> {
        let now = commerce_platform::time::now();
        let mut invocation = self.apply.prepare_invoke();
        let mut sent = Vec::with_capacity(changes.len());
        for (index, change) in changes.iter().enumerate() {
            if !change.is_retained(now) {
                continue;
            }
            sent.push(index);
            let lines = change
                .lines
                .iter()
                .filter(|(product, units)| *product > 0 && *units > 0)
                .map(|(product, units)| format!("{product}:{units}"))
                .collect::<Vec<_>>()
                .join(",");
            // The source is only a note; keep it from breaking the state's
            // `|`-separated format.
            let source: String = change
                .source
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || "-_:.".contains(*c))
                .take(64)
                .collect();
            invocation
                .key(self.orders_key(change.day))
                .key(self.day_key(change.day))
                .arg(change.order_id.as_str())
                .arg(change.kind.code())
                .arg(change.expires_at())
                .arg(source)
                .arg(lines);
        }
        let mut applied = vec![Applied::Expired; changes.len()];
        if sent.is_empty() {
            return Ok(applied);
        }
        let invocation = &invocation;
        let outcomes: Vec<String> = self
            .redis
            .run(|mut c| async move { invocation.invoke_async(&mut c).await })
            .await?;
        for (index, outcome) in sent.into_iter().zip(outcomes) {
            applied[index] = match outcome.as_str() {
                "counted" => Applied::Counted,
                "subtracted" => Applied::Subtracted,
                "closed" => Applied::Closed,
                _ => Applied::Unchanged,
            };
        }
        Ok(applied)
    }

    /// The `limit` best sellers over `days`: `(product id, units)`, most
    /// units first.
    pub async fn top(
        &self,
        days: &[NaiveDate],
        limit: usize,
    ) -> Result<Vec<(i64, i64)>, RedisDown> {
        let mut invocation = self.top.prepare_invoke();
        invocation.key(self.redis.key(format_args!(
            "ranking:scratch:{}",
            uuid::Uuid::new_v4().simple()
        )));
        for day in days {
            invocation.key(self.day_key(*day));
        }
        invocation.arg(limit);
        let invocation = &invocation;
        let flat: Vec<String> = self
            .redis
            .run(|mut c| async move { invocation.invoke_async(&mut c).await })
            .await?;
        Ok(flat
            .chunks_exact(2)
            .filter_map(|pair| {
                let product = pair[0].parse::<i64>().ok()?;
                // Scores are sums of integers, exact in a double.
                #[allow(clippy::cast_possible_truncation)]
                let units = pair[1].parse::<f64>().ok()?.round() as i64;
                Some((product, units))
            })
            .collect())
    }
}
