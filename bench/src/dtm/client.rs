//! The load generator's side of dtm: each order priced (catalogue prices,
//! the coupon's quote), submitted as a dtm saga over the TC's gRPC API and
//! followed until dtm finished it (`succeed`: confirmed; `failed`: every
//! step compensated, rejected). The latency of an order runs from the
//! first pricing call to the poll that saw the saga final.
//!
//! dtmrs's submit returns once the saga is stored (it has no "wait for the
//! result" option; its embedded API polls the store every 20 ms), so the
//! generator polls `Tc.Query`: first 1 ms after the submit, then every
//! quarter longer, at most every 20 ms. A finer poll would cost dtm more
//! store reads, a coarser one would add to its latency.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use commerce_e2e::node::Node;
use commerce_proto::coupon::v1 as coupon;
use commerce_proto::coupon::v1::coupon_service_client::CouponServiceClient;
use commerce_proto::product::v1 as product;
use commerce_proto::product::v1::catalog_service_client::CatalogServiceClient;
use dtmrs::server::grpc::pb;
use dtmrs::server::grpc::pb::tc_client::TcClient;
use hdrhistogram::Histogram;
use tonic::transport::Channel;

use super::adapter::{CouponPayload, DeductPayload, ReservePayload, paths};
use crate::load::Outcome;
use crate::mesh::{Caller, channel};
use crate::model::OrderSpec;

/// HTTP/2 connections the generator spreads its calls over, per service.
const CONNECTIONS: usize = 8;

/// How an order placed through dtm ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// dtm status `succeed`: every step done.
    Confirmed,
    /// dtm status `failed`: a step refused, every step compensated.
    Rejected,
    /// Refused while pricing (never submitted).
    RefusedBeforeSubmit,
    /// Not final at the deadline, or an error.
    Unfinished,
}

/// One order as dtm placed it, for the reconciliation.
#[derive(Debug, Clone)]
pub struct Placed {
    pub spec: OrderSpec,
    pub gid: String,
    /// The pricing: lines at catalogue prices, the coupon's quote, and the
    /// points the saga deducts (subtotal - discount).
    pub subtotal: i64,
    pub discount: i64,
    pub payable: i64,
    pub ending: Ending,
}

/// What placing one order found.
struct Attempt {
    gid: String,
    subtotal: i64,
    discount: i64,
    ending: Ending,
    /// Why it was rejected.
    reason: String,
}

/// The generator's connections to the dtm system, and the orders it placed
/// since the last [`Client::take_placed`].
pub struct Client {
    tc: Vec<TcClient<Channel>>,
    catalog: Vec<CatalogServiceClient<Channel>>,
    coupons: Vec<CouponServiceClient<Channel>>,
    adapter: String,
    placed: Mutex<Vec<Placed>>,
    polls: AtomicU64,
}

impl Client {
    /// Over TLS, the generator calls the TC and the catalogue as the BFF
    /// would, and quotes coupons as the orchestrator (QuoteDiscount is its
    /// alone; dtm's user prices in its place).
    pub fn new(tc: &Node, product: &Node, coupon: &Node, adapter: &str) -> Self {
        Self {
            tc: (0..CONNECTIONS)
                .map(|_| TcClient::new(channel(tc, Caller::Bff)))
                .collect(),
            catalog: (0..CONNECTIONS)
                .map(|_| CatalogServiceClient::new(channel(product, Caller::Bff)))
                .collect(),
            coupons: (0..CONNECTIONS)
                .map(|_| CouponServiceClient::new(channel(coupon, Caller::Orchestrator)))
                .collect(),
            adapter: adapter.to_owned(),
            placed: Mutex::new(Vec::new()),
            polls: AtomicU64::new(0),
        }
    }

    /// The orders placed since the last call, and the status polls spent.
    pub fn take_placed(&self) -> (Vec<Placed>, u64) {
        let placed = std::mem::take(&mut *self.placed.lock().unwrap_or_else(|e| e.into_inner()));
        (placed, self.polls.swap(0, Ordering::Relaxed))
    }

    /// Sends `orders`, `concurrency` at a time; each waits at most
    /// `deadline` for dtm to finish it.
    pub async fn drive(
        self: &Arc<Self>,
        orders: Arc<Vec<OrderSpec>>,
        concurrency: usize,
        deadline: Duration,
    ) -> Outcome {
        let next = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        let workers: Vec<_> = (0..concurrency.max(1))
            .map(|w| {
                let client = Arc::clone(self);
                let orders = Arc::clone(&orders);
                let next = Arc::clone(&next);
                tokio::spawn(async move { client.worker(w, &orders, &next, deadline).await })
            })
            .collect();
        let mut total = empty_outcome();
        for worker in workers {
            let Ok((part, placed)) = worker.await else {
                continue;
            };
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
            self.placed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(placed);
        }
        total.elapsed = started.elapsed();
        total
    }

    async fn worker(
        &self,
        w: usize,
        orders: &[OrderSpec],
        next: &AtomicUsize,
        deadline: Duration,
    ) -> (Outcome, Vec<Placed>) {
        let mut out = empty_outcome();
        let mut placed = Vec::new();
        let mut tc = self.tc[w % CONNECTIONS].clone();
        let mut catalog = self.catalog[w % CONNECTIONS].clone();
        let mut coupons = self.coupons[w % CONNECTIONS].clone();
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(spec) = orders.get(i) else { break };
            let sent = Instant::now();
            let attempt = match self
                .place(&mut tc, &mut catalog, &mut coupons, spec, sent + deadline)
                .await
            {
                Ok(attempt) => attempt,
                Err(code) => {
                    *out.errors.entry(code).or_default() += 1;
                    continue;
                }
            };
            let micros = u64::try_from(sent.elapsed().as_micros())
                .unwrap_or(u64::MAX)
                .max(1);
            match attempt.ending {
                Ending::Confirmed => {
                    out.confirmed += 1;
                    let _ = out.latencies.record(micros);
                }
                Ending::Rejected | Ending::RefusedBeforeSubmit => {
                    out.rejected += 1;
                    *out.reasons.entry(attempt.reason).or_default() += 1;
                    let _ = out.latencies.record(micros);
                }
                Ending::Unfinished => out.pending.push(attempt.gid.clone()),
            }
            placed.push(Placed {
                spec: spec.clone(),
                gid: attempt.gid,
                subtotal: attempt.subtotal,
                discount: attempt.discount,
                payable: attempt.subtotal - attempt.discount,
                ending: attempt.ending,
            });
        }
        (out, placed)
    }

    /// Prices, submits and follows one order.
    async fn place(
        &self,
        tc: &mut TcClient<Channel>,
        catalog: &mut CatalogServiceClient<Channel>,
        coupons: &mut CouponServiceClient<Channel>,
        spec: &OrderSpec,
        until: Instant,
    ) -> Result<Attempt, String> {
        let gid = uuid::Uuid::now_v7().hyphenated().to_string();
        let refused = |gid: String, reason: &str| Attempt {
            gid,
            subtotal: 0,
            discount: 0,
            ending: Ending::RefusedBeforeSubmit,
            reason: reason.to_owned(),
        };
        // Pricing, as a dtm user does before submitting: the steps cannot
        // hand the reservation's prices to the deduction.
        let mut subtotal = 0;
        for &(product_id, quantity) in &spec.lines {
            match catalog
                .get_product(product::GetProductRequest { product_id })
                .await
            {
                Ok(p) => subtotal += p.into_inner().price * quantity,
                Err(s) if refusal(s.code()) => {
                    return Ok(refused(gid, "PRICING_REFUSED"));
                }
                Err(s) => return Err(format!("{:?}", s.code())),
            }
        }
        let mut discount = 0;
        if let Some(user_coupon_id) = spec.user_coupon_id {
            match coupons
                .quote_discount(coupon::QuoteDiscountRequest {
                    user_id: spec.user_id.clone(),
                    user_coupon_id,
                    order_amount: subtotal,
                })
                .await
            {
                Ok(q) => discount = q.into_inner().discount,
                Err(s) if refusal(s.code()) => {
                    return Ok(refused(gid, "QUOTE_REFUSED"));
                }
                Err(s) => return Err(format!("{:?}", s.code())),
            }
        }
        let payable = subtotal - discount;
        let steps = self.steps(spec, subtotal, discount, payable);
        tc.submit(pb::SubmitRequest {
            gid: gid.clone(),
            trans_type: "saga".into(),
            steps,
        })
        .await
        .map_err(|s| format!("submit {:?}", s.code()))?;

        let (ending, reason) = self.follow(tc, &gid, until).await?;
        Ok(Attempt {
            gid,
            subtotal,
            discount,
            ending,
            reason,
        })
    }

    /// Polls the TC until the saga `gid` is final (or `until` passes).
    async fn follow(
        &self,
        tc: &mut TcClient<Channel>,
        gid: &str,
        until: Instant,
    ) -> Result<(Ending, String), String> {
        let mut pause = Duration::from_millis(1);
        loop {
            tokio::time::sleep(pause).await;
            self.polls.fetch_add(1, Ordering::Relaxed);
            let view = tc
                .query(pb::QueryRequest {
                    gid: gid.to_owned(),
                })
                .await
                .map_err(|s| format!("query {:?}", s.code()))?
                .into_inner();
            match view.status.as_str() {
                "succeed" => return Ok((Ending::Confirmed, String::new())),
                "failed" => return Ok((Ending::Rejected, refused_step(&view))),
                _ if Instant::now() >= until => return Ok((Ending::Unfinished, String::new())),
                _ => pause = (pause.mul_f64(1.25)).min(Duration::from_millis(20)),
            }
        }
    }

    /// Waits (at most `bound`) until dtm finished the sagas still unfinished
    /// in `placed`, and records how they ended.
    pub async fn settle(&self, placed: &mut [Placed], bound: Duration) -> anyhow::Result<()> {
        let until = Instant::now() + bound;
        let mut tc = self.tc[0].clone();
        for p in placed.iter_mut().filter(|p| p.ending == Ending::Unfinished) {
            let (ending, _) = self
                .follow(&mut tc, &p.gid, until)
                .await
                .map_err(anyhow::Error::msg)?;
            p.ending = ending;
        }
        Ok(())
    }

    /// The saga's steps: reserve, deduct (when there is something to pay),
    /// use the coupon (with one), confirm.
    fn steps(
        &self,
        spec: &OrderSpec,
        subtotal: i64,
        discount: i64,
        payable: i64,
    ) -> Vec<pb::SagaStep> {
        let url = |path: &str| format!("{}{path}", self.adapter);
        let mut steps = vec![pb::SagaStep {
            action: url(paths::RESERVE),
            compensate: url(paths::RELEASE),
            payload: json(&ReservePayload {
                lines: spec.lines.clone(),
            }),
        }];
        if payable > 0 {
            steps.push(pb::SagaStep {
                action: url(paths::DEDUCT),
                compensate: url(paths::REFUND),
                payload: json(&DeductPayload {
                    user_id: spec.user_id.clone(),
                    amount: payable,
                }),
            });
        }
        if let Some(user_coupon_id) = spec.user_coupon_id {
            steps.push(pb::SagaStep {
                action: url(paths::USE_COUPON),
                compensate: url(paths::RESTORE_COUPON),
                payload: json(&CouponPayload {
                    user_id: spec.user_id.clone(),
                    user_coupon_id,
                    order_amount: subtotal,
                    expected_discount: discount,
                }),
            });
        }
        steps.push(pb::SagaStep {
            action: url(paths::CONFIRM),
            compensate: url(paths::NOTHING),
            payload: String::new(),
        });
        steps
    }
}

/// A step's payload, as dtm hands it to the branch.
fn json(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

/// Which step's refusal turned a failed saga around, from the branches'
/// final states (the action dtm recorded `failed`).
fn refused_step(view: &pb::TransView) -> String {
    view.branches
        .iter()
        .find(|b| b.op == "action" && b.status == "failed")
        .and_then(|b| {
            let url = b.url.as_str();
            [
                (paths::RESERVE, "RESERVE_STOCK_REFUSED"),
                (paths::DEDUCT, "DEDUCT_POINTS_REFUSED"),
                (paths::USE_COUPON, "USE_COUPON_REFUSED"),
                (paths::CONFIRM, "CONFIRM_REFUSED"),
            ]
            .into_iter()
            .find(|(path, _)| url.ends_with(path))
            .map(|(_, reason)| reason.to_owned())
        })
        .unwrap_or_else(|| "REFUSED".to_owned())
}

/// The codes our orchestrator treats as a refusal.
fn refusal(code: tonic::Code) -> bool {
    use tonic::Code;
    matches!(
        code,
        Code::FailedPrecondition | Code::InvalidArgument | Code::NotFound | Code::AlreadyExists
    )
}

fn empty_outcome() -> Outcome {
    Outcome {
        confirmed: 0,
        rejected: 0,
        pending: Vec::new(),
        errors: BTreeMap::new(),
        reasons: BTreeMap::new(),
        latencies: Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid histogram bounds"),
        elapsed: Duration::ZERO,
    }
}
