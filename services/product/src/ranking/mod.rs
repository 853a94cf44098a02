//! The sales ranking: units sold per product and day (UTC, the day each
//! order was placed), from confirmed orders with cancellations taken back.
//!
//! Why Redis, and why per order: the orchestrator owns orders; this service
//! learns of them from the order event stream, which delivers each event at
//! least once, in order per order but not across orders. Counting events
//! would count redeliveries, so each order's fate is recorded next to the
//! counts and one Lua script ([`tally`], `apply.lua`) moves both at once:
//! the first confirmation counts, a cancellation takes back what was counted,
//! anything else changes nothing. Redeliveries, a cancellation before its
//! confirmation, and a rebuild from reservations running among the events
//! all converge on the same counts.
//!
//! Redis is the only place the ranking lives: while it is down the ranking
//! answers UNAVAILABLE (nothing else in the service depends on it), and
//! [`Ranking::rebuild`] restores it from the reservations in MySQL.

mod consumer;
mod event;
mod model;
mod tally;

use std::time::Duration;

use commerce_platform::{RedisDown, ServiceError};

pub use consumer::{ConsumerSettings, GROUP, OrderEventConsumer, STREAM};
pub use event::{MalformedEvent, change_from_event};
pub use model::{
    ChangeKind, OrderChange, PopularLimit, PopularProduct, RankingWindow, RebuildDays,
    RebuildReport, SettledReservation,
};
pub use tally::{Applied, SalesTally};

use crate::store::ProductStore;

/// The ranking's operations: what the gRPC handlers call.
#[derive(Debug, Clone)]
pub struct Ranking {
    store: ProductStore,
    tally: SalesTally,
}

impl Ranking {
    pub fn new(store: ProductStore, tally: SalesTally) -> Self {
        Self { store, tally }
    }

    /// The `limit` best sellers of `window`, with their details; products
    /// no longer in the catalogue are left out.
    pub async fn popular(
        &self,
        window: RankingWindow,
        limit: PopularLimit,
    ) -> Result<Vec<PopularProduct>, ServiceError> {
        let today = commerce_platform::time::now().date();
        let units = self
            .tally
            .top(&window.dates(today), limit.get())
            .await
            .map_err(unavailable)?;
        let ids: Vec<i64> = units.iter().map(|(id, _)| *id).collect();
        let products = self.store.products_by_ids(&ids).await?;
        Ok(model::rank(&units, products))
    }

    /// Applies every settled reservation of the last `days` days through
    /// the same script as the events: a confirmed one as its order's
    /// confirmation, a released one as its order's end without a sale. Each
    /// order counts at most once whatever the events did or do meanwhile.
    pub async fn rebuild(&self, days: RebuildDays) -> Result<RebuildReport, ServiceError> {
        // Say so at once, even with nothing to apply.
        if !self.tally.redis().is_enabled() {
            return Err(unavailable(RedisDown::Disabled));
        }
        let since = days.since(commerce_platform::time::now().date());
        let mut report = RebuildReport {
            days: days.get(),
            ..RebuildReport::default()
        };
        let mut after = String::new();
        loop {
            let page = self.store.reservations_settled_since(since, &after).await?;
            let Some((last, _)) = page.last() else {
                break;
            };
            after = last.clone();
            let mut changes = Vec::with_capacity(page.len());
            for (_, settled) in &page {
                let Some(change) = settled.change() else {
                    report.orders_without_id += 1;
                    continue;
                };
                match change.kind {
                    ChangeKind::Confirmed => report.orders_counted += 1,
                    ChangeKind::Cancelled | ChangeKind::Rejected => report.orders_cancelled += 1,
                }
                changes.push(change);
            }
            // One script call per page.
            self.tally.apply_all(&changes).await.map_err(unavailable)?;
        }
        if report.orders_without_id > 0 {
            tracing::warn!(
                skipped = report.orders_without_id,
                "reservations without an order id were left out of the rebuilt ranking"
            );
        }
        tracing::info!(?report, "sales ranking rebuilt");
        Ok(report)
    }
}

fn unavailable(down: RedisDown) -> ServiceError {
    tracing::warn!(%down, "sales ranking unavailable");
    ServiceError::DependencyUnavailable {
        reason: commerce_platform::error::reason::REDIS_UNAVAILABLE,
        message: "the sales ranking lives in Redis, which cannot be reached now; retry later"
            .to_owned(),
    }
}

/// The consumer's flags (the `extra` flags of the product server).
#[derive(Debug, Clone, clap::Args)]
pub struct RankingArgs {
    /// How long one read of the order event stream waits for new events, in ms.
    #[arg(long, env = "RANKING_BLOCK_MS", default_value_t = 1_000)]
    pub ranking_block_ms: u64,
    /// Order events left unacknowledged this long by a consumer are taken
    /// over by another, in ms.
    #[arg(long, env = "RANKING_CLAIM_MIN_IDLE_MS", default_value_t = 30_000)]
    pub ranking_claim_min_idle_ms: u64,
    /// How often unacknowledged order events are looked for, in ms.
    #[arg(long, env = "RANKING_CLAIM_EVERY_MS", default_value_t = 5_000)]
    pub ranking_claim_every_ms: u64,
    /// Order events read at once (1..=1000).
    #[arg(long, env = "RANKING_BATCH", default_value_t = 64)]
    pub ranking_batch: usize,
}

impl RankingArgs {
    pub fn settings(&self) -> anyhow::Result<ConsumerSettings> {
        anyhow::ensure!(
            (1..=1_000).contains(&self.ranking_batch),
            "--ranking-batch must be 1 to 1000"
        );
        anyhow::ensure!(
            (1..=60_000).contains(&self.ranking_block_ms),
            "--ranking-block-ms must be 1 to 60000"
        );
        anyhow::ensure!(
            self.ranking_claim_every_ms > 0,
            "--ranking-claim-every-ms must be positive"
        );
        Ok(ConsumerSettings {
            block: Duration::from_millis(self.ranking_block_ms),
            claim_min_idle: Duration::from_millis(self.ranking_claim_min_idle_ms),
            claim_every: Duration::from_millis(self.ranking_claim_every_ms),
            batch: self.ranking_batch,
            ..ConsumerSettings::default()
        })
    }
}
