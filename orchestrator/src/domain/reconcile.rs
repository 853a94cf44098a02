//! Reconciliation as pure rules: what a settled order's participants must
//! hold for it, judged against what they do hold. Every participant keys an
//! order's rows by the saga that placed it (the cancel saga's calls carry
//! that id too), and writes a barrier row in the same transaction as each
//! effect, so the rows are the effects' evidence:
//!
//! - a CONFIRMED, SHIPPED or DELIVERED order keeps its reservation
//!   (confirmed), its points (when it paid any) and its coupon use: each
//!   action APPLIED, no undo APPLIED;
//! - a REJECTED or CANCELLED order keeps nothing: every APPLIED action has
//!   its undo APPLIED, and no reservation still holds stock;
//! - every barrier row belongs to a saga this orchestrator ran.
//!
//! A finding is reported with its evidence; nothing is repaired here.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use serde::Serialize;

use super::order::OrderState;
use super::saga::Step;

/// The services that hold an order's effects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Participant {
    Product,
    Point,
    Coupon,
}

impl Participant {
    pub const ALL: [Participant; 3] = [Self::Product, Self::Point, Self::Coupon];

    pub fn name(self) -> &'static str {
        match self {
            Self::Product => "product",
            Self::Point => "point",
            Self::Coupon => "coupon",
        }
    }

    /// The barrier operations of the effect this participant holds for an
    /// order: the action and its undo (the step names, which the
    /// participants' barriers use).
    fn pair(self) -> (Step, Step) {
        match self {
            Self::Product => (Step::ReserveStock, Step::ReleaseStock),
            Self::Point => (Step::DeductPoints, Step::RefundPoints),
            Self::Coupon => (Step::UseCoupon, Step::RestoreCoupon),
        }
    }
}

/// One barrier row, as read from a participant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BarrierFact {
    pub operation: String,
    /// APPLIED (the effect ran) rather than BLOCKED (an undo came first).
    pub applied: bool,
}

/// The product service's reservation of an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReservationFact {
    Reserved,
    Confirmed,
    Released,
    Missing,
}

/// What the participants hold for one order.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Holdings {
    pub barriers: BTreeMap<Participant, Vec<BarrierFact>>,
    pub reservation: Option<ReservationFact>,
}

impl Holdings {
    fn applied(&self, participant: Participant, step: Step) -> bool {
        self.barriers.get(&participant).is_some_and(|rows| {
            rows.iter()
                .any(|row| row.applied && row.operation == step.name())
        })
    }
}

/// A settled order, as the orchestrator recorded it.
#[derive(Debug, Clone, Serialize)]
pub struct SettledOrder {
    pub order_id: String,
    pub saga_id: String,
    #[serde(serialize_with = "as_debug")]
    pub state: OrderState,
    pub points_paid: i64,
    pub user_coupon_id: Option<i64>,
}

fn as_debug<T: fmt::Debug, S: serde::Serializer>(value: &T, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{value:?}").to_uppercase())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriftKind {
    /// An effect a kept order must hold is absent (or was undone).
    EffectMissing,
    /// An effect of a rejected or cancelled order was not undone.
    EffectLeftBehind,
    /// The reservation's state contradicts the order's.
    ReservationMismatch,
    /// A barrier row of a saga the orchestrator never ran.
    OrphanBarrier,
}

impl DriftKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::EffectMissing => "EFFECT_MISSING",
            Self::EffectLeftBehind => "EFFECT_LEFT_BEHIND",
            Self::ReservationMismatch => "RESERVATION_MISMATCH",
            Self::OrphanBarrier => "ORPHAN_BARRIER",
        }
    }
}

/// One disagreement between the log and a participant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub kind: DriftKind,
    pub participant: Participant,
    pub detail: String,
}

/// Whether the order is settled, and if so whether it keeps its effects.
fn keeps_effects(state: OrderState) -> Option<bool> {
    match state {
        OrderState::Confirmed | OrderState::Shipped | OrderState::Delivered => Some(true),
        OrderState::Rejected | OrderState::Cancelled => Some(false),
        OrderState::Pending | OrderState::Cancelling => None,
    }
}

/// The participants an order involves: the coupon service only with a coupon.
pub fn participants_of(order: &SettledOrder) -> Vec<Participant> {
    Participant::ALL
        .into_iter()
        .filter(|p| *p != Participant::Coupon || order.user_coupon_id.is_some())
        .collect()
}

/// Everything `holdings` contradicts in `order`'s settled state.
pub fn judge(order: &SettledOrder, holdings: &Holdings) -> Vec<Finding> {
    let Some(keeps) = keeps_effects(order.state) else {
        return Vec::new();
    };
    let mut findings = Vec::new();
    let mut find = |kind, participant, detail: String| {
        findings.push(Finding {
            kind,
            participant,
            detail,
        })
    };
    for participant in participants_of(order) {
        let (action, undo) = participant.pair();
        let (done, undone) = (
            holdings.applied(participant, action),
            holdings.applied(participant, undo),
        );
        let state = format!("{:?}", order.state).to_uppercase();
        if keeps {
            // An order paid entirely by its coupon deducts no points.
            let expected = participant != Participant::Point || order.points_paid > 0;
            if expected && !done {
                find(
                    DriftKind::EffectMissing,
                    participant,
                    format!(
                        "the order is {state} but {} was never applied",
                        action.name()
                    ),
                );
            }
            if undone {
                find(
                    DriftKind::EffectMissing,
                    participant,
                    format!("the order is {state} but {} was applied", undo.name()),
                );
            }
        } else if done && !undone {
            find(
                DriftKind::EffectLeftBehind,
                participant,
                format!(
                    "the order is {state} but {} was applied and {} never was",
                    action.name(),
                    undo.name()
                ),
            );
        }
    }
    let reservation = holdings.reservation.unwrap_or(ReservationFact::Missing);
    let reservation_ok = if keeps {
        reservation == ReservationFact::Confirmed
    } else {
        matches!(
            reservation,
            ReservationFact::Released | ReservationFact::Missing
        )
    };
    if !reservation_ok {
        find(
            DriftKind::ReservationMismatch,
            Participant::Product,
            format!(
                "the order is {} but its reservation is {reservation:?}",
                format!("{:?}", order.state).to_uppercase()
            ),
        );
    }
    findings
}

/// Barrier rows whose saga is none of `known`: one finding per saga.
pub fn orphans<'a>(
    participant: Participant,
    rows: impl IntoIterator<Item = (&'a str, &'a str)>,
    known: &HashSet<String>,
) -> BTreeMap<String, Finding> {
    let mut found = BTreeMap::new();
    for (saga_id, operation) in rows {
        if known.contains(saga_id) {
            continue;
        }
        found.entry(saga_id.to_owned()).or_insert_with(|| Finding {
            kind: DriftKind::OrphanBarrier,
            participant,
            detail: format!(
                "{} holds {operation} for saga {saga_id}, which the orchestrator never ran",
                participant.name()
            ),
        });
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(state: OrderState, points_paid: i64, coupon: bool) -> SettledOrder {
        SettledOrder {
            order_id: "o".into(),
            saga_id: "s".into(),
            state,
            points_paid,
            user_coupon_id: coupon.then_some(7),
        }
    }

    fn rows(ops: &[(&str, bool)]) -> Vec<BarrierFact> {
        ops.iter()
            .map(|(op, applied)| BarrierFact {
                operation: (*op).to_owned(),
                applied: *applied,
            })
            .collect()
    }

    fn holdings(
        product: &[(&str, bool)],
        point: &[(&str, bool)],
        coupon: &[(&str, bool)],
        reservation: ReservationFact,
    ) -> Holdings {
        Holdings {
            barriers: BTreeMap::from([
                (Participant::Product, rows(product)),
                (Participant::Point, rows(point)),
                (Participant::Coupon, rows(coupon)),
            ]),
            reservation: Some(reservation),
        }
    }

    fn kinds(findings: &[Finding]) -> Vec<(DriftKind, Participant)> {
        findings.iter().map(|f| (f.kind, f.participant)).collect()
    }

    #[test]
    fn a_confirmed_order_holding_everything_agrees() {
        let held = holdings(
            &[("reserve_stock", true)],
            &[("deduct_points", true)],
            &[("use_coupon", true)],
            ReservationFact::Confirmed,
        );
        assert_eq!(judge(&order(OrderState::Confirmed, 100, true), &held), []);
        // Paid entirely by the coupon: no points to hold.
        let held = holdings(
            &[("reserve_stock", true)],
            &[],
            &[("use_coupon", true)],
            ReservationFact::Confirmed,
        );
        assert_eq!(judge(&order(OrderState::Shipped, 0, true), &held), []);
    }

    #[test]
    fn a_kept_order_missing_or_undone_effects_is_reported() {
        let held = holdings(
            &[("reserve_stock", true), ("release_stock", true)],
            &[],
            &[],
            ReservationFact::Released,
        );
        assert_eq!(
            kinds(&judge(&order(OrderState::Confirmed, 100, true), &held)),
            [
                (DriftKind::EffectMissing, Participant::Product),
                (DriftKind::EffectMissing, Participant::Point),
                (DriftKind::EffectMissing, Participant::Coupon),
                (DriftKind::ReservationMismatch, Participant::Product),
            ]
        );
    }

    #[test]
    fn an_undone_order_must_have_every_effect_undone() {
        // Rejected at the points: stock released, the deduction blocked.
        let clean = holdings(
            &[("reserve_stock", true), ("release_stock", true)],
            &[("refund_points", true), ("deduct_points", false)],
            &[],
            ReservationFact::Released,
        );
        assert_eq!(judge(&order(OrderState::Rejected, 0, false), &clean), []);
        let left = holdings(
            &[("reserve_stock", true), ("release_stock", true)],
            &[("deduct_points", true)],
            &[("use_coupon", true), ("restore_coupon", true)],
            ReservationFact::Reserved,
        );
        assert_eq!(
            kinds(&judge(&order(OrderState::Cancelled, 0, true), &left)),
            [
                (DriftKind::EffectLeftBehind, Participant::Point),
                (DriftKind::ReservationMismatch, Participant::Product),
            ]
        );
    }

    #[test]
    fn orders_in_flight_are_not_judged() {
        let empty = Holdings::default();
        assert_eq!(judge(&order(OrderState::Pending, 100, true), &empty), []);
        assert_eq!(judge(&order(OrderState::Cancelling, 100, true), &empty), []);
    }

    #[test]
    fn rows_of_unknown_sagas_are_orphans_once_per_saga() {
        let known = HashSet::from(["a".to_owned()]);
        let found = orphans(
            Participant::Point,
            [
                ("a", "deduct_points"),
                ("b", "deduct_points"),
                ("b", "refund_points"),
            ],
            &known,
        );
        assert_eq!(found.keys().collect::<Vec<_>>(), ["b"]);
        assert_eq!(found["b"].kind, DriftKind::OrphanBarrier);
    }
}
