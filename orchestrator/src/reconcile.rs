//! Reconciliation: each settled order's saga log against what the
//! participants hold for it (`domain::reconcile` judges), and every recent
//! barrier row against the sagas this orchestrator ran. Served to operators
//! (`SagaAdminService/Reconcile`) and run periodically; drift is logged at
//! WARN with its evidence and counted, never repaired silently.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use chrono::NaiveDateTime;
use commerce_platform::error::ServiceError;
use commerce_platform::time::now;

use metrics::{counter, describe_counter, describe_gauge, gauge};

use crate::domain::order::OrderState;
use crate::domain::reconcile::{self, DriftKind, Finding, Participant, SettledOrder};
use crate::evidence::Evidence;
use crate::store::OrderStore;

/// Drift the last reconciliation run found, by `kind`: what the
/// `ReconciliationDrift` alert watches.
pub const DRIFTS: &str = "commerce_reconcile_drifts";
/// Reconciliation runs, by `outcome` (`ok`, `failed`).
pub const RUNS: &str = "commerce_reconcile_runs_total";
/// Orders reconciliation checked.
pub const ORDERS_CHECKED: &str = "commerce_reconcile_orders_checked_total";

const KINDS: [DriftKind; 4] = [
    DriftKind::EffectMissing,
    DriftKind::EffectLeftBehind,
    DriftKind::ReservationMismatch,
    DriftKind::OrphanBarrier,
];

/// Orders one periodic run checks at most.
pub const PERIODIC_LIMIT: i64 = 10_000;
/// Barrier rows read per page of a window listing.
const BARRIER_PAGE: i32 = 1000;
/// Pages read per participant per run, so one run stays bounded.
const MAX_BARRIER_PAGES: usize = 100;

/// One drift, with what was read.
#[derive(Debug, Clone)]
pub struct Drift {
    pub order_id: String,
    pub saga_id: String,
    pub finding: Finding,
    pub evidence_json: String,
}

#[derive(Debug, Clone, Default)]
pub struct Report {
    pub orders_checked: i64,
    pub orders_unreadable: i64,
    pub barriers_checked: i64,
    pub drifts: Vec<Drift>,
    pub checked_at: Option<NaiveDateTime>,
}

#[derive(Clone)]
pub struct Reconciler {
    store: OrderStore,
    evidence: Evidence,
}

impl Reconciler {
    pub fn new(store: OrderStore, evidence: Evidence) -> Self {
        describe_gauge!(DRIFTS, "Drift the last reconciliation run found, by kind");
        describe_counter!(RUNS, "Reconciliation runs, by outcome");
        describe_counter!(ORDERS_CHECKED, "Orders reconciliation checked");
        // Exported from the start, so dashboards and alerts see zeros.
        for kind in KINDS {
            gauge!(DRIFTS, "kind" => kind.name()).set(0.0);
        }
        for outcome in ["ok", "failed"] {
            counter!(RUNS, "outcome" => outcome).absolute(0);
        }
        counter!(ORDERS_CHECKED).absolute(0);
        Self { store, evidence }
    }

    /// [`Self::check`], counted in the metrics, as one `reconcile` span.
    #[tracing::instrument(name = "reconcile", skip_all, fields(window_secs = window.as_secs()))]
    pub async fn run(&self, window: Duration, limit: i64) -> Result<Report, ServiceError> {
        let report = self.check(window, limit).await;
        match &report {
            Ok(report) => {
                counter!(RUNS, "outcome" => "ok").increment(1);
                counter!(ORDERS_CHECKED).increment(report.orders_checked.unsigned_abs());
                for kind in KINDS {
                    let found = report
                        .drifts
                        .iter()
                        .filter(|d| d.finding.kind == kind)
                        .count();
                    gauge!(DRIFTS, "kind" => kind.name()).set(found as f64);
                }
            }
            Err(_) => counter!(RUNS, "outcome" => "failed").increment(1),
        }
        report
    }

    /// Checks orders settled in the last `window` (at most `limit`) and
    /// every barrier row written in it.
    async fn check(&self, window: Duration, limit: i64) -> Result<Report, ServiceError> {
        let checked_at = now();
        let window = chrono::Duration::from_std(window)
            .map_err(|_| ServiceError::invalid("window_seconds", "is too large"))?;
        // No settling time is needed: an order is settled only once its
        // saga's calls are done, and a saga's row is committed before its
        // first call, so no barrier row can precede its saga.
        let (since, until) = (checked_at - window, checked_at);
        let mut report = Report {
            checked_at: Some(checked_at),
            ..Report::default()
        };
        for row in self
            .store
            .orders_settled_between(since, until, limit)
            .await?
        {
            let order = SettledOrder {
                state: OrderState::parse(&row.state)?,
                order_id: row.id,
                saga_id: row.saga_id,
                points_paid: row.points_paid,
                user_coupon_id: row.user_coupon_id,
            };
            let participants = reconcile::participants_of(&order);
            let holdings = match self.evidence.holdings(&order.saga_id, &participants).await {
                Ok(holdings) => holdings,
                Err(status) => {
                    tracing::warn!(order_id = %order.order_id, code = ?status.code(), message = status.message(),
                        "reconciliation could not read a participant; the order is left for the next run");
                    report.orders_unreadable += 1;
                    continue;
                }
            };
            report.orders_checked += 1;
            for finding in reconcile::judge(&order, &holdings) {
                let evidence = serde_json::json!({"order": &order, "holdings": &holdings});
                report.drifts.push(Drift {
                    order_id: order.order_id.clone(),
                    saga_id: order.saga_id.clone(),
                    finding,
                    evidence_json: evidence.to_string(),
                });
            }
        }
        self.orphans(since, until, &mut report).await?;
        for drift in &report.drifts {
            tracing::warn!(
                order_id = %drift.order_id,
                saga_id = %drift.saga_id,
                kind = drift.finding.kind.name(),
                participant = drift.finding.participant.name(),
                evidence = %drift.evidence_json,
                "reconciliation drift: {}", drift.finding.detail
            );
        }
        Ok(report)
    }

    /// Barrier rows of `since..until` whose saga this orchestrator never ran.
    async fn orphans(
        &self,
        since: NaiveDateTime,
        until: NaiveDateTime,
        report: &mut Report,
    ) -> Result<(), ServiceError> {
        for participant in Participant::ALL {
            let mut from = since;
            let mut seen = HashSet::<(String, String)>::new();
            for _ in 0..MAX_BARRIER_PAGES {
                let rows = match self
                    .evidence
                    .barriers_since(participant, from, BARRIER_PAGE)
                    .await
                {
                    Ok(rows) => rows,
                    Err(status) => {
                        tracing::warn!(participant = participant.name(), code = ?status.code(),
                            message = status.message(), "reconciliation could not list barrier rows");
                        break;
                    }
                };
                let full = rows.len() == BARRIER_PAGE as usize;
                let fresh: Vec<_> = rows
                    .into_iter()
                    .filter(|r| r.created_at.is_none_or(|at| at < until))
                    .filter(|r| seen.insert((r.saga_id.clone(), r.operation.clone())))
                    .collect();
                report.barriers_checked += fresh.len() as i64;
                let ids: Vec<String> = fresh.iter().map(|r| r.saga_id.clone()).collect();
                let known = self.store.sagas_known(&ids).await?;
                let found = reconcile::orphans(
                    participant,
                    fresh
                        .iter()
                        .map(|r| (r.saga_id.as_str(), r.operation.as_str())),
                    &known,
                );
                for (saga_id, finding) in found {
                    let rows: BTreeMap<_, _> = fresh
                        .iter()
                        .filter(|r| r.saga_id == saga_id)
                        .map(|r| (r.operation.clone(), r.created_at.map(|t| t.to_string())))
                        .collect();
                    report.drifts.push(Drift {
                        order_id: String::new(),
                        evidence_json:
                            serde_json::json!({"participant": participant, "rows": rows})
                                .to_string(),
                        saga_id,
                        finding,
                    });
                }
                // Rows sharing the last timestamp are read again from it;
                // `seen` skips them.
                match fresh.last().and_then(|r| r.created_at) {
                    Some(last) if full && last > from => from = last,
                    _ => break,
                }
            }
        }
        Ok(())
    }

    /// Runs every `every`, over the last `window`, until the process ends.
    pub async fn run_forever(self, every: Duration, window: Duration, limit: i64) {
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            ticker.tick().await;
            match self.run(window, limit).await {
                Ok(report) => tracing::info!(
                    orders = report.orders_checked,
                    barriers = report.barriers_checked,
                    drifts = report.drifts.len(),
                    unreadable = report.orders_unreadable,
                    "reconciliation run"
                ),
                Err(error) => tracing::warn!(%error, "reconciliation run failed"),
            }
        }
    }
}
