//! The load generator: sends a list of PlaceOrder calls (or any other
//! calls, [`drive_calls`]) with a fixed number of clients in flight and
//! records each call's latency and outcome.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use commerce_proto::order::v1 as pb;
use commerce_proto::order::v1::order_service_client::OrderServiceClient;
use hdrhistogram::Histogram;
use tonic::transport::Channel;

use crate::model::{Latency, OrderSpec};

/// What a run of calls found.
pub struct Outcome {
    pub confirmed: u64,
    pub rejected: u64,
    /// Answered PENDING: the saga was still running at the deadline.
    pub pending: Vec<String>,
    /// Errors (status codes), by code.
    pub errors: BTreeMap<String, u64>,
    /// Rejection reasons, by reason.
    pub reasons: BTreeMap<String, u64>,
    /// Latency of every answered call, in microseconds.
    pub latencies: Histogram<u64>,
    pub elapsed: Duration,
}

impl Outcome {
    pub fn answered(&self) -> u64 {
        self.confirmed + self.rejected + self.pending.len() as u64
    }

    pub fn failed(&self) -> u64 {
        self.errors.values().sum::<u64>() + self.pending.len() as u64
    }

    pub fn latency(&self) -> Latency {
        latency_of(&self.latencies)
    }

    /// (percentile, ms) points for the chart, denser in the tail.
    pub fn curve(&self) -> Vec<(f64, f64)> {
        const POINTS: [f64; 14] = [
            0.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 97.5, 99.0, 99.5, 99.9, 99.95, 99.99, 100.0,
        ];
        POINTS
            .iter()
            .map(|p| {
                let micros = self.latencies.value_at_quantile(p / 100.0);
                (*p, micros as f64 / 1000.0)
            })
            .collect()
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid histogram bounds")
}

/// Sends `orders` through `clients` (round robin), `concurrency` at a time;
/// each call waits at most `deadline` (then the answer is PENDING).
pub async fn drive(
    clients: &[OrderServiceClient<Channel>],
    orders: Arc<Vec<OrderSpec>>,
    concurrency: usize,
    deadline: Duration,
) -> Outcome {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency.max(1))
        .map(|w| {
            let client = clients[w % clients.len()].clone();
            let orders = Arc::clone(&orders);
            let next = Arc::clone(&next);
            tokio::spawn(async move { worker(client, &orders, &next, deadline).await })
        })
        .collect();
    let mut total = Outcome {
        confirmed: 0,
        rejected: 0,
        pending: Vec::new(),
        errors: BTreeMap::new(),
        reasons: BTreeMap::new(),
        latencies: histogram(),
        elapsed: Duration::ZERO,
    };
    for worker in workers {
        let Ok(part) = worker.await else { continue };
        total.confirmed += part.confirmed;
        total.rejected += part.rejected;
        total.pending.extend(part.pending);
        for (k, v) in part.errors {
            *total.errors.entry(k).or_default() += v;
        }
        for (k, v) in part.reasons {
            *total.reasons.entry(k).or_default() += v;
        }
        let _ = total.latencies.add(&part.latencies);
    }
    total.elapsed = started.elapsed();
    total
}

async fn worker(
    mut client: OrderServiceClient<Channel>,
    orders: &[OrderSpec],
    next: &AtomicUsize,
    deadline: Duration,
) -> Outcome {
    let mut out = Outcome {
        confirmed: 0,
        rejected: 0,
        pending: Vec::new(),
        errors: BTreeMap::new(),
        reasons: BTreeMap::new(),
        latencies: histogram(),
        elapsed: Duration::ZERO,
    };
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        let Some(spec) = orders.get(i) else { break };
        let mut request = tonic::Request::new(pb::PlaceOrderRequest {
            user_id: spec.user_id.clone(),
            lines: spec
                .lines
                .iter()
                .map(|&(product_id, quantity)| pb::OrderLineRequest {
                    product_id,
                    quantity,
                })
                .collect(),
            user_coupon_id: spec.user_coupon_id,
            idempotency_key: spec.idempotency_key.clone(),
        });
        request.set_timeout(deadline);
        let sent = Instant::now();
        let answer = client.place_order(request).await;
        let micros = u64::try_from(sent.elapsed().as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        match answer {
            Ok(order) => {
                let _ = out.latencies.record(micros);
                let order = order.into_inner();
                match pb::OrderState::try_from(order.state) {
                    Ok(pb::OrderState::Confirmed) => out.confirmed += 1,
                    Ok(pb::OrderState::Rejected) => {
                        out.rejected += 1;
                        *out.reasons.entry(order.reason).or_default() += 1;
                    }
                    _ => out.pending.push(order.order_id),
                }
            }
            Err(status) => {
                *out.errors
                    .entry(format!("{:?}", status.code()))
                    .or_default() += 1;
            }
        }
    }
    out
}

/// What a run of calls of one kind (not PlaceOrder) found: the catalogue
/// reads, the flash coupon's issuance.
pub struct CallOutcome {
    /// Answers with a result.
    pub ok: u64,
    /// Answers with an error status, by code (`FailedPrecondition`, ...).
    pub errors: BTreeMap<String, u64>,
    /// Latency of every answered call, result or error, in microseconds.
    pub latencies: Histogram<u64>,
    pub elapsed: Duration,
}

impl CallOutcome {
    pub fn calls(&self) -> u64 {
        self.ok + self.errors.values().sum::<u64>()
    }

    /// Error answers of `code` (`tonic::Code`'s `Debug` name).
    pub fn errors_of(&self, code: tonic::Code) -> u64 {
        self.errors.get(&format!("{code:?}")).copied().unwrap_or(0)
    }

    pub fn latency(&self) -> Latency {
        latency_of(&self.latencies)
    }
}

fn latency_of(h: &Histogram<u64>) -> Latency {
    let ms = |micros: u64| micros as f64 / 1000.0;
    Latency {
        p50: ms(h.value_at_quantile(0.50)),
        p95: ms(h.value_at_quantile(0.95)),
        p99: ms(h.value_at_quantile(0.99)),
        max: ms(h.max()),
        mean: h.mean() / 1000.0,
    }
}

/// Makes calls `call(0)` .. `call(count - 1)`, `concurrency` in flight
/// (each worker takes the next index when its call is answered).
pub async fn drive_calls<F, Fut>(count: usize, concurrency: usize, call: F) -> CallOutcome
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), tonic::Status>> + Send,
{
    let call = Arc::new(call);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency.clamp(1, count.max(1)))
        .map(|_| {
            let call = Arc::clone(&call);
            let next = Arc::clone(&next);
            tokio::spawn(async move {
                let mut out = CallOutcome {
                    ok: 0,
                    errors: BTreeMap::new(),
                    latencies: histogram(),
                    elapsed: Duration::ZERO,
                };
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        break;
                    }
                    let sent = Instant::now();
                    let answer = call(i).await;
                    let micros = u64::try_from(sent.elapsed().as_micros())
                        .unwrap_or(u64::MAX)
                        .max(1);
                    let _ = out.latencies.record(micros);
                    match answer {
                        Ok(()) => out.ok += 1,
                        Err(status) => {
                            *out.errors
                                .entry(format!("{:?}", status.code()))
                                .or_default() += 1;
                        }
                    }
                }
                out
            })
        })
        .collect();
    let mut total = CallOutcome {
        ok: 0,
        errors: BTreeMap::new(),
        latencies: histogram(),
        elapsed: Duration::ZERO,
    };
    for worker in workers {
        let Ok(part) = worker.await else { continue };
        total.ok += part.ok;
        for (k, v) in part.errors {
            *total.errors.entry(k).or_default() += v;
        }
        let _ = total.latencies.add(&part.latencies);
    }
    total.elapsed = started.elapsed();
    total
}
