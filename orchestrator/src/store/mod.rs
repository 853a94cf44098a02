//! The orchestrator's storage in its own MySQL database, one file per
//! resource: `orders` (orders and their lines), `sagas` (sagas, their
//! append-only step log and leases), `order_changes` (what a saga write
//! changes on its order) and `rows` (the tables and their rows).
//! It persists what the application decided; every write of saga progress
//! is fenced by the saga's lease, so an instance that lost its lease cannot
//! overwrite the new owner's progress.

mod group_commit;
mod order_changes;
mod orders;
mod outbox;
mod reconcile;
mod rows;
mod sagas;

use std::sync::Arc;

use commerce_platform::Database;
use tokio::sync::Notify;

pub use order_changes::OrderChange;
pub use orders::Placed;
pub use outbox::{OutboxCounts, OutboxRow, PendingEvent};
pub use rows::{LogRow, OrderLineRow, OrderRecord, OrderRow, Saga, SagaRecord};
pub use sagas::{NewSaga, TakeOver, TurnAround};

pub use crate::domain::saga::{Lease, SagaWrite};

/// Orders, sagas and the step log.
#[derive(Clone)]
pub struct OrderStore {
    db: Database,
    log_writer: group_commit::LogWriter,
    /// Woken after a write that may have added outbox rows, so the relay
    /// publishes at once instead of at its next poll.
    outbox_written: Arc<Notify>,
}

impl OrderStore {
    /// The store, with its group-commit writer running on the current tokio
    /// runtime.
    pub fn new(db: Database) -> Self {
        Self {
            log_writer: group_commit::LogWriter::start(db.clone()),
            db,
            outbox_written: Arc::new(Notify::new()),
        }
    }

    /// Notified after writes that may have added outbox rows.
    pub fn outbox_signal(&self) -> Arc<Notify> {
        Arc::clone(&self.outbox_written)
    }
}
