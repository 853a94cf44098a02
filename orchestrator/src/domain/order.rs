//! Orders: the validated request, pricing and the one state machine.

use std::collections::BTreeMap;

use commerce_platform::UserId;
use commerce_platform::error::ServiceError;
use commerce_platform::validate::{IdempotencyKey, id, in_range};
use serde::{Deserialize, Serialize};

pub const MAX_LINES: usize = 100;
pub const MAX_QUANTITY: i64 = 1000;
/// The most points a balance may hold (DOMAIN.md, points).
pub const MAX_POINT_BALANCE: i64 = 1_000_000_000;

/// The events the world is told about an order: one per state an order
/// enters that others act on (PENDING and CANCELLING are internal).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderEventKind {
    Confirmed,
    Rejected,
    Cancelled,
    Shipped,
    Delivered,
}

impl OrderEventKind {
    /// The event of entering `state`, if it has one.
    pub fn on_entering(state: OrderState) -> Option<Self> {
        match state {
            OrderState::Confirmed => Some(Self::Confirmed),
            OrderState::Rejected => Some(Self::Rejected),
            OrderState::Cancelled => Some(Self::Cancelled),
            OrderState::Shipped => Some(Self::Shipped),
            OrderState::Delivered => Some(Self::Delivered),
            OrderState::Pending | OrderState::Cancelling => None,
        }
    }

    /// The event's message name: stored in the outbox and sent as the
    /// stream entry's `type`. Persisted: never rename.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Confirmed => "OrderConfirmed",
            Self::Rejected => "OrderRejected",
            Self::Cancelled => "OrderCancelled",
            Self::Shipped => "OrderShipped",
            Self::Delivered => "OrderDelivered",
        }
    }

    pub fn parse(stored: &str) -> Result<Self, ServiceError> {
        [
            Self::Confirmed,
            Self::Rejected,
            Self::Cancelled,
            Self::Shipped,
            Self::Delivered,
        ]
        .into_iter()
        .find(|k| k.as_str() == stored)
        .ok_or_else(|| ServiceError::internal(format!("unknown order event kind {stored:?}")))
    }
}

/// When an order was placed, read from its id (a UUIDv7 made at placement):
/// the day its sales count on. Derived, not stored, so that the product
/// service's reservation, every event of the order and a saga resumed from
/// an old log all agree on it. `None` for an id that is not a UUIDv7.
pub fn ordered_at(order_id: &str) -> Option<chrono::NaiveDateTime> {
    let (secs, nanos) = uuid::Uuid::parse_str(order_id)
        .ok()?
        .get_timestamp()?
        .to_unix();
    chrono::DateTime::from_timestamp(i64::try_from(secs).ok()?, nanos).map(|t| t.naive_utc())
}

/// Reasons this service gives itself (participants give the others).
pub mod reason {
    pub const IDEMPOTENCY_KEY_REUSED: &str = "IDEMPOTENCY_KEY_REUSED";
    pub const ORDER_STATE_CONFLICT: &str = "ORDER_STATE_CONFLICT";
    /// A forward step kept failing transiently past its retry bound.
    pub const STEP_RETRIES_EXHAUSTED: &str = "STEP_RETRIES_EXHAUSTED";
    /// An operator forced the saga to compensate.
    pub const OPERATOR_ABORTED: &str = "OPERATOR_ABORTED";
    pub const SAGA_FINISHED: &str = "SAGA_FINISHED";
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OrderState {
    Pending,
    Confirmed,
    Rejected,
    Cancelling,
    Cancelled,
    Shipped,
    Delivered,
}

/// What can happen to an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderEvent {
    Confirm,
    Reject,
    BeginCancel,
    FinishCancel,
    Ship,
    Deliver,
}

impl OrderState {
    pub const ALL: [OrderState; 7] = [
        Self::Pending,
        Self::Confirmed,
        Self::Rejected,
        Self::Cancelling,
        Self::Cancelled,
        Self::Shipped,
        Self::Delivered,
    ];

    /// The stored name; persisted, never rename.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Confirmed => "CONFIRMED",
            Self::Rejected => "REJECTED",
            Self::Cancelling => "CANCELLING",
            Self::Cancelled => "CANCELLED",
            Self::Shipped => "SHIPPED",
            Self::Delivered => "DELIVERED",
        }
    }

    pub fn parse(stored: &str) -> Result<Self, ServiceError> {
        Self::ALL
            .into_iter()
            .find(|s| s.as_str() == stored)
            .ok_or_else(|| ServiceError::internal(format!("unknown stored order state {stored}")))
    }

    /// The order state machine: PENDING -> CONFIRMED | REJECTED;
    /// CONFIRMED -> CANCELLING -> CANCELLED; CONFIRMED -> SHIPPED -> DELIVERED.
    pub fn apply(self, event: OrderEvent) -> Result<OrderState, ServiceError> {
        use OrderEvent as E;
        use OrderState as S;
        match (self, event) {
            (S::Pending, E::Confirm) => Ok(S::Confirmed),
            (S::Pending, E::Reject) => Ok(S::Rejected),
            (S::Confirmed, E::BeginCancel) => Ok(S::Cancelling),
            (S::Cancelling, E::FinishCancel) => Ok(S::Cancelled),
            (S::Confirmed, E::Ship) => Ok(S::Shipped),
            (S::Shipped, E::Deliver) => Ok(S::Delivered),
            (state, event) => Err(ServiceError::rejected(
                reason::ORDER_STATE_CONFLICT,
                format!("an order in state {} cannot {event:?}", state.as_str()),
            )),
        }
    }
}

/// One requested product and quantity (merged per product).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineRequest {
    pub product_id: i64,
    pub quantity: i64,
}

/// A validated PlaceOrder request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlaceOrder {
    pub user: UserId,
    /// Merged per product, in product-id order.
    pub lines: Vec<LineRequest>,
    pub user_coupon_id: Option<i64>,
    pub idempotency_key: IdempotencyKey,
}

impl PlaceOrder {
    pub fn parse(
        user_id: &str,
        lines: impl ExactSizeIterator<Item = (i64, i64)>,
        user_coupon_id: Option<i64>,
        idempotency_key: &str,
    ) -> Result<Self, ServiceError> {
        let user = UserId::parse("user_id", user_id)?;
        let idempotency_key = IdempotencyKey::parse("idempotency_key", idempotency_key)?;
        if lines.len() == 0 {
            return Err(ServiceError::invalid(
                "lines",
                "at least one line is required",
            ));
        }
        if lines.len() > MAX_LINES {
            return Err(ServiceError::invalid(
                "lines",
                format!("at most {MAX_LINES} lines"),
            ));
        }
        let mut merged = BTreeMap::<i64, i64>::new();
        for (i, (product_id, quantity)) in lines.enumerate() {
            let product_id = id(&format!("lines[{i}].product_id"), product_id)?;
            let field = format!("lines[{i}].quantity");
            let quantity = in_range(&field, quantity, 1, MAX_QUANTITY)?;
            let total = merged.entry(product_id).or_default();
            *total += quantity;
            // The merged line is what the stock service reserves, and it
            // takes at most MAX_QUANTITY units per product.
            if *total > MAX_QUANTITY {
                return Err(ServiceError::invalid(
                    field,
                    format!(
                        "lines of product {product_id} add up to more than {MAX_QUANTITY} units"
                    ),
                ));
            }
        }
        let user_coupon_id = user_coupon_id
            .map(|c| id("user_coupon_id", c))
            .transpose()?;
        Ok(Self {
            user,
            lines: merged
                .into_iter()
                .map(|(product_id, quantity)| LineRequest {
                    product_id,
                    quantity,
                })
                .collect(),
            user_coupon_id,
            idempotency_key,
        })
    }

    /// The request as stored for idempotency: a reused key must match it.
    pub fn fingerprint(&self) -> String {
        serde_json::json!({
            "lines": self.lines,
            "user_coupon_id": self.user_coupon_id,
        })
        .to_string()
    }
}

/// Who reads orders, as far as scoping goes: operators may read anyone's;
/// every other caller (the BFF, which vouches for the user it reads for, or
/// anyone on a plaintext development server, where callers have no
/// identity) reads one user's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reader {
    Operator,
    ForUser,
}

/// Whose orders a read may see: one user's, or anyone's (an operator who
/// names no user).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadScope(Option<UserId>);

impl ReadScope {
    /// From a request's `user_id`: required of every reader but an
    /// operator, who may leave it empty to read any order.
    pub fn parse(reader: Reader, user_id: &str) -> Result<Self, ServiceError> {
        if reader == Reader::Operator && user_id.is_empty() {
            return Ok(Self(None));
        }
        Ok(Self(Some(UserId::parse("user_id", user_id)?)))
    }

    /// Lets order `order_id` of `owner` through, or answers NOT_FOUND
    /// exactly as for an order that does not exist, so that another user's
    /// order ids cannot be told from unknown ones.
    pub fn admit(&self, order_id: &str, owner: &str) -> Result<(), ServiceError> {
        match &self.0 {
            Some(user) if user.as_str() != owner => Err(ServiceError::not_found("order", order_id)),
            _ => Ok(()),
        }
    }
}

/// A reserved line with its snapshot (from the product service).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotLine {
    pub product_id: i64,
    pub quantity: i64,
    pub product_name: String,
    pub brand_id: i64,
    pub brand_name: String,
    pub unit_price: i64,
}

impl SnapshotLine {
    pub fn total(&self) -> i64 {
        self.unit_price.saturating_mul(self.quantity)
    }
}

/// What the user pays: subtotal of the snapshots minus the coupon discount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pricing {
    pub subtotal: i64,
    pub discount: i64,
    pub payable: i64,
}

impl Pricing {
    pub fn subtotal(lines: &[SnapshotLine]) -> i64 {
        lines
            .iter()
            .map(SnapshotLine::total)
            .fold(0, i64::saturating_add)
    }

    /// Why no user can pay this order in points, when its payable amount is
    /// more than any balance may hold.
    pub fn beyond_any_balance(&self) -> Option<String> {
        (self.payable > MAX_POINT_BALANCE).then(|| {
            format!(
                "the order costs {} points, more than any balance may hold ({MAX_POINT_BALANCE})",
                self.payable
            )
        })
    }

    /// The discount never exceeds the subtotal (the coupon service ensures
    /// it; clamped here so the arithmetic can never go negative).
    pub fn new(subtotal: i64, discount: i64) -> Self {
        let discount = discount.clamp(0, subtotal);
        Self {
            subtotal,
            discount,
            payable: subtotal - discount,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_order_is_dated_by_its_uuid_v7() {
        let before = chrono::Utc::now().naive_utc() - chrono::Duration::milliseconds(1);
        let id = uuid::Uuid::now_v7().to_string();
        let at = ordered_at(&id).unwrap();
        assert!(at >= before && at <= chrono::Utc::now().naive_utc(), "{at}");
        assert_eq!(ordered_at(&uuid::Uuid::new_v4().to_string()), None);
        assert_eq!(ordered_at("nope"), None);
    }

    #[test]
    fn state_machine_allows_only_the_documented_transitions() {
        use OrderEvent as E;
        use OrderState as S;
        assert_eq!(S::Pending.apply(E::Confirm).unwrap(), S::Confirmed);
        assert_eq!(S::Pending.apply(E::Reject).unwrap(), S::Rejected);
        assert_eq!(S::Confirmed.apply(E::BeginCancel).unwrap(), S::Cancelling);
        assert_eq!(S::Cancelling.apply(E::FinishCancel).unwrap(), S::Cancelled);
        assert_eq!(S::Confirmed.apply(E::Ship).unwrap(), S::Shipped);
        assert_eq!(S::Shipped.apply(E::Deliver).unwrap(), S::Delivered);
        for refused in [
            (S::Shipped, E::BeginCancel),
            (S::Delivered, E::BeginCancel),
            (S::Pending, E::Ship),
            (S::Rejected, E::Confirm),
            (S::Cancelled, E::Ship),
            (S::Confirmed, E::Confirm),
            (S::Delivered, E::Deliver),
        ] {
            assert!(refused.0.apply(refused.1).is_err(), "{refused:?}");
        }
        for state in OrderState::ALL {
            assert_eq!(OrderState::parse(state.as_str()).unwrap(), state);
        }
    }

    #[test]
    fn place_order_validates_and_merges() {
        let order =
            PlaceOrder::parse("u1", [(2, 1), (1, 3), (2, 4)].into_iter(), None, "k").unwrap();
        assert_eq!(
            order.lines,
            vec![
                LineRequest {
                    product_id: 1,
                    quantity: 3
                },
                LineRequest {
                    product_id: 2,
                    quantity: 5
                }
            ]
        );
        let bad = PlaceOrder::parse("u1", [(1, 1), (2, 0)].into_iter(), None, "k").unwrap_err();
        assert!(bad.to_string().contains("lines[1].quantity"));
        let over = PlaceOrder::parse("u1", [(1, 600), (2, 1), (1, 401)].into_iter(), None, "k")
            .unwrap_err();
        assert!(over.to_string().contains("lines[2].quantity"), "{over}");
        assert!(PlaceOrder::parse("u1", [(1, 600), (1, 400)].into_iter(), None, "k").is_ok());
        assert!(PlaceOrder::parse("u1", std::iter::empty::<(i64, i64)>(), None, "k").is_err());
        assert!(PlaceOrder::parse("u1", [(1, 1)].into_iter(), None, "").is_err());
        assert!(PlaceOrder::parse("u1", [(1, 1)].into_iter(), Some(0), "k").is_err());
        assert!(PlaceOrder::parse("u 1", [(1, 1)].into_iter(), None, "k").is_err());
        let too_many = (1..=101).map(|p| (p, 1)).collect::<Vec<_>>();
        assert!(PlaceOrder::parse("u1", too_many.into_iter(), None, "k").is_err());
    }

    #[test]
    fn same_request_has_same_fingerprint() {
        let a = PlaceOrder::parse("u1", [(1, 1), (2, 2)].into_iter(), Some(5), "k").unwrap();
        let b = PlaceOrder::parse("u1", [(2, 2), (1, 1)].into_iter(), Some(5), "k").unwrap();
        let c = PlaceOrder::parse("u1", [(2, 2), (1, 1)].into_iter(), None, "k").unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_ne!(a.fingerprint(), c.fingerprint());
    }

    #[test]
    fn a_user_reads_only_its_own_orders_and_an_operator_any() {
        let order = "0190a6d0-0000-7000-8000-000000000001";
        let unknown = ServiceError::not_found("order", order).to_string();
        let carol = ReadScope::parse(Reader::ForUser, "carol").unwrap();
        assert!(carol.admit(order, "carol").is_ok());
        let refused = carol.admit(order, "mallory").unwrap_err();
        assert!(
            matches!(refused, ServiceError::NotFound { .. }),
            "{refused:?}"
        );
        assert_eq!(refused.to_string(), unknown, "the same answer as no order");

        // An operator naming no user reads any order; naming one, that
        // user's only.
        let any = ReadScope::parse(Reader::Operator, "").unwrap();
        assert!(any.admit(order, "carol").is_ok());
        assert!(any.admit(order, "mallory").is_ok());
        let operator_for_carol = ReadScope::parse(Reader::Operator, "carol").unwrap();
        assert_eq!(operator_for_carol, carol);
        assert!(operator_for_carol.admit(order, "mallory").is_err());

        // Every other reader must name a valid user.
        for (reader, user_id) in [
            (Reader::ForUser, ""),
            (Reader::ForUser, "no spaces"),
            (Reader::Operator, "no spaces"),
        ] {
            let refused = ReadScope::parse(reader, user_id).unwrap_err();
            assert!(
                matches!(&refused, ServiceError::InvalidArgument { field, .. } if field == "user_id"),
                "{reader:?} {user_id:?}: {refused:?}"
            );
        }
    }

    #[test]
    fn pricing_never_goes_negative() {
        let p = Pricing::new(10_000, 3_000);
        assert_eq!(p.payable, 7_000);
        assert_eq!(Pricing::new(1_000, 5_000).payable, 0);
        assert!(
            Pricing::new(MAX_POINT_BALANCE, 0)
                .beyond_any_balance()
                .is_none()
        );
        assert!(
            Pricing::new(MAX_POINT_BALANCE + 1, 0)
                .beyond_any_balance()
                .is_some()
        );
    }
}
