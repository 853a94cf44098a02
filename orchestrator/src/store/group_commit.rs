//! Group commit of saga progress: one writer task takes every saga write
//! waiting at that moment (up to [`MAX_BATCH`]) and commits them in one
//! transaction, so concurrent sagas share a BEGIN, a COMMIT and its flush
//! to disk; each caller waits only until its own write is durable.
//!
//! Every write in a batch stays fenced on its own: a saga whose lease is no
//! longer current writes nothing and is answered `false`, the others are
//! written. A batch that fails as a whole (a write that breaks an invariant,
//! a lost connection) is rolled back and its writes are committed one by
//! one, so one bad write fails only its own saga.
//!
//! Cancellation: a caller dropped while it waits does not stop its write,
//! which the writer task finishes; a fenced, idempotent write of progress
//! the saga made is as harmless to land as to miss (the saga is resumed
//! from whatever the log holds).

use commerce_platform::db::ScopedFutureExt;
use commerce_platform::error::ServiceError;
use commerce_platform::{Database, SagaId};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument as _;

use super::order_changes::OrderChange;
use super::sagas::saga_write_in;
use crate::domain::saga::{Lease, SagaWrite};

/// Writes committed together at most. Enough to take every saga in flight
/// at the benchmark's highest level; a batch's statements run one after
/// another, so a much larger one would only make its first writer wait.
const MAX_BATCH: usize = 64;

/// Writes queued at most; a caller past that waits for room.
const QUEUE: usize = 4096;

/// A handle on the writer task.
#[derive(Clone)]
pub struct LogWriter {
    jobs: mpsc::Sender<Job>,
}

struct Job {
    saga_id: SagaId,
    order_id: String,
    lease: Lease,
    write: SagaWrite<OrderChange>,
    done: oneshot::Sender<Result<bool, ServiceError>>,
}

impl LogWriter {
    /// Starts the writer task; it stops when the last handle is dropped.
    pub fn start(db: Database) -> Self {
        let (jobs, queue) = mpsc::channel(QUEUE);
        tokio::spawn(run(db, queue));
        Self { jobs }
    }

    /// Writes saga progress with the next batch; `Ok(false)` when `lease`
    /// is no longer current (nothing written).
    pub async fn write(
        &self,
        saga_id: &SagaId,
        order_id: &str,
        lease: &Lease,
        write: &SagaWrite<OrderChange>,
    ) -> Result<bool, ServiceError> {
        let (done, answer) = oneshot::channel();
        let job = Job {
            saga_id: saga_id.clone(),
            order_id: order_id.to_owned(),
            lease: lease.clone(),
            write: write.clone(),
            done,
        };
        let stopped = || ServiceError::internal("the saga log writer has stopped");
        // The saga's wait for its write (queue, batch, commit), in its trace.
        let span = tracing::info_span!("saga_log.write", entries = write.entries.len() as i64);
        async {
            self.jobs.send(job).await.map_err(|_| stopped())?;
            answer.await.map_err(|_| stopped())?
        }
        .instrument(span)
        .await
    }
}

async fn run(db: Database, mut queue: mpsc::Receiver<Job>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        commit(&db, &mut batch).await;
    }
}

/// Commits `batch` (emptied) and answers every job in it.
async fn commit(db: &Database, batch: &mut Vec<Job>) {
    let jobs: &[Job] = batch;
    let together = db
        .transaction(|c| {
            async move {
                let mut written = Vec::with_capacity(jobs.len());
                for job in jobs {
                    written.push(
                        saga_write_in(c, &job.saga_id, &job.order_id, &job.lease, &job.write)
                            .await?,
                    );
                }
                Ok(written)
            }
            .scope_boxed()
        })
        .await;
    match together {
        Ok(written) => {
            for (job, written) in batch.drain(..).zip(written) {
                // A caller that went away no longer needs its answer.
                let _ = job.done.send(Ok(written));
            }
        }
        Err(error) if batch.len() == 1 => {
            if let Some(job) = batch.pop() {
                let _ = job.done.send(Err(error));
            }
        }
        Err(error) => {
            tracing::debug!(%error, writes = batch.len(), "batch rolled back: writing one by one");
            for job in batch.drain(..) {
                let alone = db
                    .transaction(|c| {
                        saga_write_in(c, &job.saga_id, &job.order_id, &job.lease, &job.write)
                            .scope_boxed()
                    })
                    .await;
                let _ = job.done.send(alone);
            }
        }
    }
}
