//! The point rules, free of storage and transport: validated amounts and
//! keys, balance arithmetic with its limits, ledger kinds, reason codes and
//! the results of each operation (serialisable, since saga results are
//! stored by the barrier and replayed to repeats).

use chrono::NaiveDateTime;
use commerce_platform::ServiceError;
pub use commerce_platform::validate::IdempotencyKey;
use commerce_platform::validate::in_range;
use serde::{Deserialize, Serialize};

/// Machine-readable reasons of the point service's business errors.
pub mod reason {
    /// A deduction needs more points than the balance holds.
    pub const POINT_INSUFFICIENT: &str = "POINT_INSUFFICIENT";
    /// A charge would take the balance above [`super::MAX_BALANCE`].
    pub const POINT_BALANCE_LIMIT: &str = "POINT_BALANCE_LIMIT";
    /// A charge key was used before with another amount.
    pub const IDEMPOTENCY_KEY_REUSED: &str = "IDEMPOTENCY_KEY_REUSED";
}

/// Largest number of points one charge may add.
pub const MAX_CHARGE: i64 = 10_000_000;
/// Largest balance a charge may produce. Refunds may exceed it: they restore
/// a state the account had before.
pub const MAX_BALANCE: i64 = 1_000_000_000;
/// Largest number of points one saga may deduct.
pub const MAX_DEDUCTION: i64 = MAX_BALANCE;

/// Points added by one charge: `1..=MAX_CHARGE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChargeAmount(i64);

impl ChargeAmount {
    pub fn parse(field: &str, raw: i64) -> Result<Self, ServiceError> {
        in_range(field, raw, 1, MAX_CHARGE).map(Self)
    }

    pub fn get(self) -> i64 {
        self.0
    }
}

/// Points taken by one saga: `1..=MAX_DEDUCTION`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeductAmount(i64);

impl DeductAmount {
    pub fn parse(field: &str, raw: i64) -> Result<Self, ServiceError> {
        in_range(field, raw, 1, MAX_DEDUCTION).map(Self)
    }

    pub fn get(self) -> i64 {
        self.0
    }
}

/// A balance: never negative.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Balance(i64);

impl Balance {
    pub const ZERO: Self = Self(0);

    /// A balance read from storage; a negative one means a broken invariant.
    pub fn from_stored(raw: i64) -> Result<Self, ServiceError> {
        if raw < 0 {
            return Err(ServiceError::internal(format!(
                "stored balance {raw} is negative"
            )));
        }
        Ok(Self(raw))
    }

    pub fn get(self) -> i64 {
        self.0
    }

    /// The balance after a charge, refused above [`MAX_BALANCE`].
    pub fn charge(self, amount: ChargeAmount) -> Result<Self, ServiceError> {
        self.apply(BalanceChange::charge(amount))
    }

    /// The balance after a deduction, refused when it would go negative.
    pub fn deduct(self, amount: DeductAmount) -> Result<Self, ServiceError> {
        self.apply(BalanceChange::deduct(amount))
    }

    /// The balance after giving back `amount` previously deducted points. No
    /// cap: it restores a state the account had.
    pub fn refund(self, amount: i64) -> Result<Self, ServiceError> {
        self.apply(BalanceChange::refund(amount)?)
    }

    /// The balance after `change`, or the change's refusal when this balance
    /// is outside the bounds the change admits.
    pub fn apply(self, change: BalanceChange) -> Result<Self, ServiceError> {
        if !change.admits(self) {
            return Err(change.refusal(self));
        }
        // In bounds, so the sum neither overflows nor goes negative.
        Ok(Self(self.0 + change.amount()))
    }
}

/// One change of a balance, as the domain checks it and as the store writes
/// it: a relative `balance = balance + amount` guarded in SQL by the same
/// bounds [`Balance::apply`] checks (`min_before() <= balance <=
/// max_before()`), so a balance read wrongly can never make the store write a
/// wrong amount: it refuses instead, with [`BalanceChange::refusal`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BalanceChange {
    kind: LedgerKind,
    /// Signed, as in the ledger: negative for a USE.
    amount: i64,
}

impl BalanceChange {
    /// A charge: the balance after it may not exceed [`MAX_BALANCE`].
    pub fn charge(amount: ChargeAmount) -> Self {
        Self {
            kind: LedgerKind::Charge,
            amount: amount.get(),
        }
    }

    /// A saga's deduction: the balance may not go negative.
    pub fn deduct(amount: DeductAmount) -> Self {
        Self {
            kind: LedgerKind::Use,
            amount: -amount.get(),
        }
    }

    /// Giving back `amount` (> 0) deducted points; only overflow bounds it.
    pub fn refund(amount: i64) -> Result<Self, ServiceError> {
        if amount <= 0 {
            return Err(ServiceError::internal(format!(
                "refund of {amount} points is not positive"
            )));
        }
        Ok(Self {
            kind: LedgerKind::Refund,
            amount,
        })
    }

    /// The ledger kind this change is recorded as.
    pub fn kind(self) -> LedgerKind {
        self.kind
    }

    /// The signed amount added to the balance (and written to the ledger).
    pub fn amount(self) -> i64 {
        self.amount
    }

    /// The smallest balance this change may apply to.
    pub fn min_before(self) -> i64 {
        match self.kind {
            // Never below zero after a deduction.
            LedgerKind::Use => -self.amount,
            LedgerKind::Charge | LedgerKind::Refund => 0,
        }
    }

    /// The largest balance this change may apply to.
    pub fn max_before(self) -> i64 {
        match self.kind {
            // Never above the limit after a charge.
            LedgerKind::Charge => MAX_BALANCE - self.amount,
            // Refunds may pass the limit (they restore a past state), not overflow.
            LedgerKind::Refund => i64::MAX - self.amount,
            LedgerKind::Use => i64::MAX,
        }
    }

    /// Whether the change may apply to `before`.
    pub fn admits(self, before: Balance) -> bool {
        (self.min_before()..=self.max_before()).contains(&before.get())
    }

    /// Why the change cannot apply to `balance`: the business refusal of its
    /// kind. The store answers with it too when its SQL guard matched no row.
    pub fn refusal(self, balance: Balance) -> ServiceError {
        match self.kind {
            LedgerKind::Use => ServiceError::rejected(
                reason::POINT_INSUFFICIENT,
                format!(
                    "deducting {} points needs more than the balance of {}",
                    -self.amount,
                    balance.get()
                ),
            ),
            LedgerKind::Charge => ServiceError::rejected(
                reason::POINT_BALANCE_LIMIT,
                format!(
                    "charging {} points to a balance of {} would exceed the limit of {MAX_BALANCE}",
                    self.amount,
                    balance.get()
                ),
            ),
            LedgerKind::Refund => ServiceError::internal(format!(
                "balance overflow on refunding {} points to a balance of {}",
                self.amount,
                balance.get()
            )),
        }
    }
}

/// What a ledger entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LedgerKind {
    Charge,
    Use,
    Refund,
}

impl LedgerKind {
    /// The stored name; persisted, never rename.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Charge => "CHARGE",
            Self::Use => "USE",
            Self::Refund => "REFUND",
        }
    }

    pub fn from_stored(raw: &str) -> Result<Self, ServiceError> {
        match raw {
            "CHARGE" => Ok(Self::Charge),
            "USE" => Ok(Self::Use),
            "REFUND" => Ok(Self::Refund),
            other => Err(ServiceError::internal(format!(
                "unknown ledger kind {other:?}"
            ))),
        }
    }
}

/// One change of a balance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerEntry {
    pub id: i64,
    pub user_id: String,
    pub kind: LedgerKind,
    /// Signed: positive for CHARGE and REFUND, negative for USE.
    pub amount: i64,
    pub balance_after: i64,
    /// The charge's idempotency key, or the saga id.
    pub reference: String,
    pub created_at: NaiveDateTime,
}

/// What a charge did: its ledger entry and the balance right after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChargeOutcome {
    pub entry: LedgerEntry,
    pub balance: i64,
}

impl ChargeOutcome {
    /// The outcome of a repeated charge: the first entry, if the request is
    /// the same; another amount under the same key is refused.
    pub fn replay(entry: LedgerEntry, amount: ChargeAmount) -> Result<Self, ServiceError> {
        if entry.kind != LedgerKind::Charge {
            return Err(ServiceError::internal(format!(
                "ledger entry {} is not a charge",
                entry.id
            )));
        }
        if entry.amount != amount.get() {
            return Err(ServiceError::already_exists(
                reason::IDEMPOTENCY_KEY_REUSED,
                format!(
                    "idempotency key {:?} was used for a charge of {} points, not {}",
                    entry.reference,
                    entry.amount,
                    amount.get()
                ),
            ));
        }
        Ok(Self {
            balance: entry.balance_after,
            entry,
        })
    }
}

/// What a saga's deduction did; stored by the barrier and replayed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeductOutcome {
    pub saga_id: String,
    pub user_id: String,
    pub deducted: i64,
    /// Balance right after the deduction.
    pub balance: i64,
}

/// What a saga's refund did; stored by the barrier and replayed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundOutcome {
    pub saga_id: String,
    /// False when the saga had deducted nothing.
    pub refunded: bool,
    pub user_id: String,
    pub amount: i64,
    /// Balance right after the refund; 0 when nothing was refunded.
    pub balance: i64,
}

impl RefundOutcome {
    /// The refund of a saga that deducted nothing.
    pub fn nothing(saga_id: &str) -> Self {
        Self {
            saga_id: saga_id.to_owned(),
            refunded: false,
            user_id: String::new(),
            amount: 0,
            balance: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn reason_of(error: &ServiceError) -> String {
        error.reason()
    }

    #[test]
    fn charge_amount_bounds_name_the_field() {
        assert_eq!(ChargeAmount::parse("amount", 1).unwrap().get(), 1);
        assert_eq!(
            ChargeAmount::parse("amount", MAX_CHARGE).unwrap().get(),
            MAX_CHARGE
        );
        for bad in [0, -1, MAX_CHARGE + 1, i64::MIN, i64::MAX] {
            let error = ChargeAmount::parse("amount", bad).unwrap_err();
            assert!(
                matches!(&error, ServiceError::InvalidArgument { field, .. } if field == "amount")
            );
        }
    }

    #[test]
    fn deduct_amount_bounds() {
        assert!(DeductAmount::parse("amount", 1).is_ok());
        assert!(DeductAmount::parse("amount", MAX_DEDUCTION).is_ok());
        assert!(DeductAmount::parse("amount", 0).is_err());
        assert!(DeductAmount::parse("amount", -5).is_err());
        assert!(DeductAmount::parse("amount", MAX_DEDUCTION + 1).is_err());
    }

    #[test]
    fn charge_respects_the_balance_cap() {
        let amount = ChargeAmount::parse("amount", MAX_CHARGE).unwrap();
        let near = Balance::from_stored(MAX_BALANCE - MAX_CHARGE).unwrap();
        assert_eq!(near.charge(amount).unwrap().get(), MAX_BALANCE);
        let just_over = Balance::from_stored(MAX_BALANCE - MAX_CHARGE + 1).unwrap();
        let error = just_over.charge(amount).unwrap_err();
        assert_eq!(reason_of(&error), reason::POINT_BALANCE_LIMIT);
        let full = Balance::from_stored(MAX_BALANCE).unwrap();
        let error = full
            .charge(ChargeAmount::parse("amount", 1).unwrap())
            .unwrap_err();
        assert_eq!(reason_of(&error), reason::POINT_BALANCE_LIMIT);
    }

    #[test]
    fn deduct_never_goes_negative() {
        let balance = Balance::from_stored(100).unwrap();
        let exact = DeductAmount::parse("amount", 100).unwrap();
        assert_eq!(balance.deduct(exact).unwrap(), Balance::ZERO);
        let error = balance
            .deduct(DeductAmount::parse("amount", 101).unwrap())
            .unwrap_err();
        assert_eq!(reason_of(&error), reason::POINT_INSUFFICIENT);
        assert!(Balance::from_stored(-1).is_err());
    }

    #[test]
    fn refund_ignores_the_cap_but_not_overflow() {
        let full = Balance::from_stored(MAX_BALANCE).unwrap();
        assert_eq!(full.refund(5).unwrap().get(), MAX_BALANCE + 5);
        assert!(full.refund(0).is_err());
        assert!(Balance::from_stored(i64::MAX).unwrap().refund(1).is_err());
    }

    #[test]
    fn balance_changes_admit_exactly_what_the_balance_rules_allow() {
        let charge = BalanceChange::charge(ChargeAmount::parse("a", 500).unwrap());
        assert_eq!((charge.kind(), charge.amount()), (LedgerKind::Charge, 500));
        assert_eq!(
            (charge.min_before(), charge.max_before()),
            (0, MAX_BALANCE - 500)
        );
        let deduct = BalanceChange::deduct(DeductAmount::parse("a", 300).unwrap());
        assert_eq!((deduct.kind(), deduct.amount()), (LedgerKind::Use, -300));
        assert_eq!((deduct.min_before(), deduct.max_before()), (300, i64::MAX));
        let refund = BalanceChange::refund(300).unwrap();
        assert_eq!((refund.kind(), refund.amount()), (LedgerKind::Refund, 300));
        assert_eq!(
            (refund.min_before(), refund.max_before()),
            (0, i64::MAX - 300)
        );
        assert!(BalanceChange::refund(0).is_err());
        assert!(BalanceChange::refund(-3).is_err());

        // The guard's bounds and the typed checks agree at every edge.
        for raw in [
            0,
            1,
            299,
            300,
            301,
            MAX_BALANCE - 501,
            MAX_BALANCE - 500,
            MAX_BALANCE - 499,
            MAX_BALANCE,
            i64::MAX - 300,
            i64::MAX - 299,
            i64::MAX,
        ] {
            let balance = Balance::from_stored(raw).unwrap();
            for change in [charge, deduct, refund] {
                let applied = balance.apply(change);
                assert_eq!(
                    applied.is_ok(),
                    change.admits(balance),
                    "{change:?} on {raw}"
                );
                if let Ok(after) = applied {
                    assert_eq!(after.get(), raw + change.amount());
                    assert!(after.get() >= 0);
                }
            }
        }
        let error = Balance::from_stored(299)
            .unwrap()
            .apply(deduct)
            .unwrap_err();
        assert_eq!(reason_of(&error), reason::POINT_INSUFFICIENT);
        assert_eq!(
            error.to_string(),
            deduct
                .refusal(Balance::from_stored(299).unwrap())
                .to_string()
        );
        let full = Balance::from_stored(MAX_BALANCE).unwrap();
        assert_eq!(
            reason_of(&full.apply(charge).unwrap_err()),
            reason::POINT_BALANCE_LIMIT
        );
    }

    #[test]
    fn ledger_kind_round_trips() {
        for kind in [LedgerKind::Charge, LedgerKind::Use, LedgerKind::Refund] {
            assert_eq!(LedgerKind::from_stored(kind.as_str()).unwrap(), kind);
        }
        assert!(LedgerKind::from_stored("BONUS").is_err());
    }

    #[test]
    fn charge_replay_checks_the_amount() {
        let entry = LedgerEntry {
            id: 7,
            user_id: "u".to_owned(),
            kind: LedgerKind::Charge,
            amount: 500,
            balance_after: 1_500,
            reference: "key".to_owned(),
            created_at: chrono::DateTime::from_timestamp(0, 0).unwrap().naive_utc(),
        };
        let same = ChargeOutcome::replay(entry.clone(), ChargeAmount::parse("a", 500).unwrap());
        assert_eq!(same.unwrap().balance, 1_500);
        let other = ChargeOutcome::replay(entry, ChargeAmount::parse("a", 501).unwrap());
        assert_eq!(
            reason_of(&other.unwrap_err()),
            reason::IDEMPOTENCY_KEY_REUSED
        );
    }

    #[test]
    fn saga_outcomes_round_trip_through_json() {
        let deduct = DeductOutcome {
            saga_id: "s".to_owned(),
            user_id: "u".to_owned(),
            deducted: 3,
            balance: 4,
        };
        let json = serde_json::to_string(&deduct).unwrap();
        assert_eq!(
            serde_json::from_str::<DeductOutcome>(&json).unwrap(),
            deduct
        );
        let refund = RefundOutcome::nothing("s");
        let json = serde_json::to_string(&refund).unwrap();
        assert_eq!(
            serde_json::from_str::<RefundOutcome>(&json).unwrap(),
            refund
        );
    }
}
