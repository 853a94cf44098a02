//! The coupon rules, free of storage and transport: validated template terms,
//! discount arithmetic, and the decisions whether a coupon may be issued or
//! used. Everything here is pure, so every branch is unit-tested below.

use std::fmt;

use chrono::{NaiveDateTime, Timelike};
use commerce_platform::ServiceError;
use commerce_platform::validate::{in_range, text};
use serde::{Deserialize, Serialize};

/// Reasons (`google.rpc.ErrorInfo.reason`) of the coupon service's refusals.
pub mod reason {
    /// Every coupon of the template has been issued.
    pub const COUPON_SOLD_OUT: &str = "COUPON_SOLD_OUT";
    /// The user already holds a coupon of this template (`ALREADY_EXISTS`).
    pub const COUPON_ALREADY_ISSUED: &str = "COUPON_ALREADY_ISSUED";
    /// The order amount is below the template's minimum.
    pub const COUPON_MIN_ORDER_NOT_MET: &str = "COUPON_MIN_ORDER_NOT_MET";
    /// The validity window has not started yet.
    pub const COUPON_NOT_ACTIVE: &str = "COUPON_NOT_ACTIVE";
    /// The validity window is over.
    pub const COUPON_EXPIRED: &str = "COUPON_EXPIRED";
    /// The coupon was used already (by some saga).
    pub const COUPON_ALREADY_USED: &str = "COUPON_ALREADY_USED";
    /// The discount computed at use differs from the caller's expectation.
    pub const COUPON_DISCOUNT_CHANGED: &str = "COUPON_DISCOUNT_CHANGED";
}

/// Largest amount a FIXED coupon takes off, in KRW.
pub const MAX_FIXED_DISCOUNT: i64 = 100_000_000;
/// Largest order amount a coupon is quoted or used on, in KRW.
pub const MAX_ORDER_AMOUNT: i64 = 100_000_000_000;
/// Largest number of coupons one template may issue.
pub const MAX_TOTAL_QUANTITY: i64 = 10_000_000;
/// Longest template name, in characters.
pub const MAX_NAME_CHARS: usize = 100;

/// Entity names of `NOT_FOUND` errors (reasons `COUPON_TEMPLATE_NOT_FOUND`,
/// `USER_COUPON_NOT_FOUND`).
pub const TEMPLATE_ENTITY: &str = "coupon_template";
pub const USER_COUPON_ENTITY: &str = "user_coupon";

/// How a template computes its discount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiscountKind {
    Fixed,
    Percent,
}

impl DiscountKind {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fixed => "FIXED",
            Self::Percent => "PERCENT",
        }
    }

    pub fn from_stored(raw: &str) -> Option<Self> {
        match raw {
            "FIXED" => Some(Self::Fixed),
            "PERCENT" => Some(Self::Percent),
            _ => None,
        }
    }
}

/// What a coupon takes off an order. Built by [`Discount::parse`], so its
/// values are always within the template limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Discount {
    /// `amount` KRW off (1..=100,000,000), never more than the order.
    Fixed { amount: i64 },
    /// `percent` off (1..=100), rounded down, capped by `max_discount`.
    Percent {
        percent: i64,
        max_discount: Option<i64>,
    },
}

impl Discount {
    /// Validates the wire fields `kind`, `value` and `max_discount`; `None`
    /// is an unspecified kind.
    pub fn parse(
        kind: Option<DiscountKind>,
        value: i64,
        max_discount: Option<i64>,
    ) -> Result<Self, ServiceError> {
        match kind {
            None => Err(ServiceError::invalid("kind", "must be FIXED or PERCENT")),
            Some(DiscountKind::Fixed) => {
                let amount = in_range("value", value, 1, MAX_FIXED_DISCOUNT)?;
                if max_discount.is_some() {
                    return Err(ServiceError::invalid(
                        "max_discount",
                        "is only allowed for PERCENT templates",
                    ));
                }
                Ok(Self::Fixed { amount })
            }
            Some(DiscountKind::Percent) => {
                let percent = in_range("value", value, 1, 100)?;
                let max_discount = max_discount
                    .map(|max| in_range("max_discount", max, 1, MAX_ORDER_AMOUNT))
                    .transpose()?;
                Ok(Self::Percent {
                    percent,
                    max_discount,
                })
            }
        }
    }

    pub fn kind(&self) -> DiscountKind {
        match self {
            Self::Fixed { .. } => DiscountKind::Fixed,
            Self::Percent { .. } => DiscountKind::Percent,
        }
    }

    /// The template's `value`: KRW for FIXED, percent for PERCENT.
    pub fn value(&self) -> i64 {
        match *self {
            Self::Fixed { amount } => amount,
            Self::Percent { percent, .. } => percent,
        }
    }

    pub fn max_discount(&self) -> Option<i64> {
        match *self {
            Self::Fixed { .. } => None,
            Self::Percent { max_discount, .. } => max_discount,
        }
    }

    /// The discount on `order`: FIXED gives min(amount, A); PERCENT gives
    /// floor(A * percent / 100) capped by `max_discount`. Never negative and
    /// never more than the order, whatever the values.
    pub fn on(&self, order: OrderAmount) -> i64 {
        let amount = order.get();
        let discount = match *self {
            Self::Fixed { amount: off } => off.min(amount),
            Self::Percent {
                percent,
                max_discount,
            } => {
                // i128: A * percent cannot overflow; both are non-negative,
                // so integer division is the floor.
                let raw = i128::from(amount) * i128::from(percent) / 100;
                let raw = i64::try_from(raw).unwrap_or(amount);
                max_discount.map_or(raw, |max| raw.min(max))
            }
        };
        discount.clamp(0, amount)
    }
}

/// An order amount in KRW, 0..=100,000,000,000.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrderAmount(i64);

impl OrderAmount {
    pub fn parse(field: &str, raw: i64) -> Result<Self, ServiceError> {
        in_range(field, raw, 0, MAX_ORDER_AMOUNT).map(Self)
    }

    pub fn get(self) -> i64 {
        self.0
    }
}

/// A discount the caller expects at use, 0..=100,000,000,000 when set.
pub fn parse_expected_discount(field: &str, raw: Option<i64>) -> Result<Option<i64>, ServiceError> {
    raw.map(|value| in_range(field, value, 0, MAX_ORDER_AMOUNT))
        .transpose()
}

/// Truncates a timestamp to the microseconds `DATETIME(6)` keeps (MySQL
/// would round instead), so what is validated is what is stored.
pub fn to_stored_precision(t: NaiveDateTime) -> NaiveDateTime {
    let micros = t.nanosecond() / 1_000 * 1_000;
    t.with_nanosecond(micros).unwrap_or(t)
}

/// What decides whether a coupon applies to an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CouponTerms {
    pub discount: Discount,
    /// Orders below this amount cannot use the coupon.
    pub min_order_amount: i64,
    /// First instant the coupon applies.
    pub valid_from: NaiveDateTime,
    /// First instant it no longer applies (exclusive end of the window).
    pub valid_until: NaiveDateTime,
}

impl CouponTerms {
    pub fn is_expired_at(&self, now: NaiveDateTime) -> bool {
        now >= self.valid_until
    }
}

/// The raw fields of a CreateTemplate request, timestamps already parsed.
#[derive(Debug, Clone)]
pub struct TemplateInput {
    pub name: String,
    pub kind: Option<DiscountKind>,
    pub value: i64,
    pub max_discount: Option<i64>,
    pub min_order_amount: i64,
    pub valid_from: NaiveDateTime,
    pub valid_until: NaiveDateTime,
    pub total_quantity: i64,
}

/// A validated template, ready to be stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTemplate {
    /// Trimmed, 1..=100 characters.
    pub name: String,
    pub terms: CouponTerms,
    /// 1..=10,000,000 coupons, issued first-come.
    pub total_quantity: i64,
}

impl NewTemplate {
    /// Validates every field; the first invalid one (in proto order) is named.
    pub fn parse(input: TemplateInput) -> Result<Self, ServiceError> {
        let name = text("name", &input.name, 1, MAX_NAME_CHARS)?;
        let discount = Discount::parse(input.kind, input.value, input.max_discount)?;
        let min_order_amount = in_range(
            "min_order_amount",
            input.min_order_amount,
            0,
            MAX_ORDER_AMOUNT,
        )?;
        let valid_from = to_stored_precision(input.valid_from);
        let valid_until = to_stored_precision(input.valid_until);
        if valid_until <= valid_from {
            return Err(ServiceError::invalid(
                "valid_until",
                "must be after valid_from",
            ));
        }
        let total_quantity = in_range(
            "total_quantity",
            input.total_quantity,
            1,
            MAX_TOTAL_QUANTITY,
        )?;
        Ok(Self {
            name,
            terms: CouponTerms {
                discount,
                min_order_amount,
                valid_from,
                valid_until,
            },
            total_quantity,
        })
    }
}

/// A stored template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CouponTemplate {
    pub id: i64,
    pub name: String,
    pub terms: CouponTerms,
    pub total_quantity: i64,
    /// Coupons issued so far; never above `total_quantity`.
    pub issued_quantity: i64,
    pub created_at: NaiveDateTime,
}

/// Whether a user's coupon may still be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CouponState {
    Available,
    Used,
}

impl CouponState {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Available => "AVAILABLE",
            Self::Used => "USED",
        }
    }

    pub fn from_stored(raw: &str) -> Option<Self> {
        match raw {
            "AVAILABLE" => Some(Self::Available),
            "USED" => Some(Self::Used),
            _ => None,
        }
    }
}

/// A coupon issued to a user, with its template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserCoupon {
    pub id: i64,
    pub user_id: String,
    pub state: CouponState,
    /// The saga whose use_coupon applied, while USED.
    pub used_by_saga: Option<String>,
    pub used_at: Option<NaiveDateTime>,
    pub issued_at: NaiveDateTime,
    pub template: CouponTemplate,
}

/// Why a coupon cannot be issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssueRefusal {
    /// The user holds one of this template already (`ALREADY_EXISTS`).
    AlreadyIssued,
    /// The template's window is over.
    Expired,
    /// Every coupon of the template has been issued.
    SoldOut,
}

/// Why `template` cannot be issued to a user now, if it cannot: the user
/// holds one already, the window is over, or every coupon is out. The store
/// asks this before claiming (a cheap refusal that never queues on the
/// template's row lock) and to explain a failed claim; the claim itself, a
/// conditional increment, is what guarantees the quantity.
pub fn issue_refusal(
    template: &CouponTemplate,
    now: NaiveDateTime,
    already_issued: bool,
) -> Option<IssueRefusal> {
    if already_issued {
        Some(IssueRefusal::AlreadyIssued)
    } else if template.terms.is_expired_at(now) {
        Some(IssueRefusal::Expired)
    } else if template.issued_quantity >= template.total_quantity {
        Some(IssueRefusal::SoldOut)
    } else {
        None
    }
}

impl From<IssueRefusal> for ServiceError {
    fn from(refusal: IssueRefusal) -> Self {
        match refusal {
            IssueRefusal::AlreadyIssued => ServiceError::already_exists(
                reason::COUPON_ALREADY_ISSUED,
                "the user already holds a coupon of this template",
            ),
            IssueRefusal::Expired => {
                ServiceError::rejected(reason::COUPON_EXPIRED, "the coupon template has expired")
            }
            IssueRefusal::SoldOut => ServiceError::rejected(
                reason::COUPON_SOLD_OUT,
                "every coupon of this template has been issued",
            ),
        }
    }
}

/// Why a coupon does not apply to an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    AlreadyUsed,
    NotActive { valid_from: NaiveDateTime },
    Expired { valid_until: NaiveDateTime },
    MinOrderNotMet { minimum: i64, order_amount: i64 },
    DiscountChanged { expected: i64, actual: i64 },
}

impl Refusal {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::AlreadyUsed => reason::COUPON_ALREADY_USED,
            Self::NotActive { .. } => reason::COUPON_NOT_ACTIVE,
            Self::Expired { .. } => reason::COUPON_EXPIRED,
            Self::MinOrderNotMet { .. } => reason::COUPON_MIN_ORDER_NOT_MET,
            Self::DiscountChanged { .. } => reason::COUPON_DISCOUNT_CHANGED,
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AlreadyUsed => write!(f, "the coupon has been used already"),
            Self::NotActive { valid_from } => {
                write!(f, "the coupon is valid only from {valid_from} UTC")
            }
            Self::Expired { valid_until } => write!(f, "the coupon expired at {valid_until} UTC"),
            Self::MinOrderNotMet {
                minimum,
                order_amount,
            } => write!(
                f,
                "the coupon needs an order of at least {minimum} KRW, got {order_amount}"
            ),
            Self::DiscountChanged { expected, actual } => write!(
                f,
                "the coupon now gives {actual} KRW off, not the expected {expected}"
            ),
        }
    }
}

impl From<Refusal> for ServiceError {
    fn from(refusal: Refusal) -> Self {
        ServiceError::rejected(refusal.reason(), refusal.to_string())
    }
}

/// The discount a coupon gives on an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quote {
    pub order_amount: i64,
    pub discount: i64,
    /// `order_amount - discount`, never negative.
    pub payable: i64,
}

/// Decides whether a coupon in `state` applies to `order` at `now` and, if
/// so, what it takes off. Checked in this order: used, not yet active,
/// expired, below the minimum order amount.
pub fn quote(
    terms: &CouponTerms,
    state: CouponState,
    now: NaiveDateTime,
    order: OrderAmount,
) -> Result<Quote, Refusal> {
    if state == CouponState::Used {
        return Err(Refusal::AlreadyUsed);
    }
    if now < terms.valid_from {
        return Err(Refusal::NotActive {
            valid_from: terms.valid_from,
        });
    }
    if terms.is_expired_at(now) {
        return Err(Refusal::Expired {
            valid_until: terms.valid_until,
        });
    }
    if order.get() < terms.min_order_amount {
        return Err(Refusal::MinOrderNotMet {
            minimum: terms.min_order_amount,
            order_amount: order.get(),
        });
    }
    let discount = terms.discount.on(order);
    Ok(Quote {
        order_amount: order.get(),
        discount,
        payable: order.get() - discount,
    })
}

/// Refuses a use whose discount differs from what the caller was quoted.
pub fn check_expected_discount(quote: &Quote, expected: Option<i64>) -> Result<(), Refusal> {
    match expected {
        Some(expected) if expected != quote.discount => Err(Refusal::DiscountChanged {
            expected,
            actual: quote.discount,
        }),
        _ => Ok(()),
    }
}

/// The result of the `use_coupon` saga action, stored by the barrier and
/// replayed to repeats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CouponUse {
    pub user_coupon_id: i64,
    pub discount: i64,
}

/// The result of the `restore_coupon` compensation, stored by the barrier and
/// replayed to repeats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CouponRestore {
    /// False when the saga had used no coupon.
    pub restored: bool,
    pub user_coupon_id: Option<i64>,
}

impl CouponRestore {
    pub const NOTHING: Self = Self {
        restored: false,
        user_coupon_id: None,
    };
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Duration};

    use super::*;

    fn at(seconds: i64) -> NaiveDateTime {
        DateTime::from_timestamp(seconds, 0).unwrap().naive_utc()
    }

    fn order(amount: i64) -> OrderAmount {
        OrderAmount::parse("order_amount", amount).unwrap()
    }

    fn fixed(amount: i64) -> Discount {
        Discount::parse(Some(DiscountKind::Fixed), amount, None).unwrap()
    }

    fn percent(pct: i64, max: Option<i64>) -> Discount {
        Discount::parse(Some(DiscountKind::Percent), pct, max).unwrap()
    }

    /// Valid from t=1000 until t=2000, minimum order 10,000.
    fn terms(discount: Discount) -> CouponTerms {
        CouponTerms {
            discount,
            min_order_amount: 10_000,
            valid_from: at(1_000),
            valid_until: at(2_000),
        }
    }

    fn input() -> TemplateInput {
        TemplateInput {
            name: "Welcome 10%".to_owned(),
            kind: Some(DiscountKind::Percent),
            value: 10,
            max_discount: Some(5_000),
            min_order_amount: 0,
            valid_from: at(1_000),
            valid_until: at(2_000),
            total_quantity: 100,
        }
    }

    fn invalid_field(error: ServiceError) -> String {
        match error {
            ServiceError::InvalidArgument { field, .. } => field,
            other => panic!("expected an invalid field, got {other:?}"),
        }
    }

    #[test]
    fn fixed_gives_its_amount_but_never_more_than_the_order() {
        assert_eq!(fixed(3_000).on(order(10_000)), 3_000);
        assert_eq!(fixed(3_000).on(order(3_000)), 3_000);
        assert_eq!(fixed(3_000).on(order(2_999)), 2_999);
        assert_eq!(fixed(3_000).on(order(0)), 0);
        assert_eq!(
            fixed(MAX_FIXED_DISCOUNT).on(order(MAX_ORDER_AMOUNT)),
            MAX_FIXED_DISCOUNT
        );
    }

    #[test]
    fn percent_rounds_down() {
        assert_eq!(percent(10, None).on(order(10_000)), 1_000);
        assert_eq!(percent(10, None).on(order(9_999)), 999);
        assert_eq!(percent(15, None).on(order(99)), 14);
        assert_eq!(percent(1, None).on(order(99)), 0);
        assert_eq!(percent(33, None).on(order(1)), 0);
        assert_eq!(percent(50, None).on(order(0)), 0);
    }

    #[test]
    fn percent_is_capped_by_max_discount() {
        assert_eq!(percent(10, Some(500)).on(order(10_000)), 500);
        assert_eq!(percent(10, Some(1_000)).on(order(10_000)), 1_000);
        assert_eq!(percent(10, Some(1_001)).on(order(10_000)), 1_000);
        assert_eq!(percent(100, Some(1)).on(order(10_000)), 1);
    }

    #[test]
    fn percent_of_hundred_takes_the_whole_order_and_no_more() {
        assert_eq!(percent(100, None).on(order(12_345)), 12_345);
        assert_eq!(
            percent(100, None).on(order(MAX_ORDER_AMOUNT)),
            MAX_ORDER_AMOUNT
        );
        assert_eq!(
            percent(99, None).on(order(MAX_ORDER_AMOUNT)),
            99_000_000_000
        );
        assert_eq!(percent(100, Some(MAX_ORDER_AMOUNT)).on(order(7)), 7);
    }

    #[test]
    fn out_of_range_values_are_clamped_even_if_constructed_directly() {
        let wild = Discount::Percent {
            percent: 250,
            max_discount: None,
        };
        assert_eq!(wild.on(order(1_000)), 1_000);
        let negative = Discount::Fixed { amount: -5 };
        assert_eq!(negative.on(order(1_000)), 0);
    }

    #[test]
    fn discount_parse_checks_each_kind_and_names_the_field() {
        assert_eq!(
            invalid_field(Discount::parse(None, 10, None).unwrap_err()),
            "kind"
        );
        let fixed_kind = Some(DiscountKind::Fixed);
        assert_eq!(
            invalid_field(Discount::parse(fixed_kind, 0, None).unwrap_err()),
            "value"
        );
        assert_eq!(
            invalid_field(Discount::parse(fixed_kind, -1, None).unwrap_err()),
            "value"
        );
        assert_eq!(
            invalid_field(Discount::parse(fixed_kind, MAX_FIXED_DISCOUNT + 1, None).unwrap_err()),
            "value"
        );
        assert_eq!(
            Discount::parse(fixed_kind, MAX_FIXED_DISCOUNT, None).unwrap(),
            Discount::Fixed {
                amount: MAX_FIXED_DISCOUNT
            }
        );
        assert_eq!(
            Discount::parse(fixed_kind, 1, None).unwrap(),
            Discount::Fixed { amount: 1 }
        );
        assert_eq!(
            invalid_field(Discount::parse(fixed_kind, 100, Some(10)).unwrap_err()),
            "max_discount"
        );

        let percent_kind = Some(DiscountKind::Percent);
        assert_eq!(
            invalid_field(Discount::parse(percent_kind, 0, None).unwrap_err()),
            "value"
        );
        assert_eq!(
            invalid_field(Discount::parse(percent_kind, 101, None).unwrap_err()),
            "value"
        );
        assert!(Discount::parse(percent_kind, 1, None).is_ok());
        assert!(Discount::parse(percent_kind, 100, None).is_ok());
        assert_eq!(
            invalid_field(Discount::parse(percent_kind, 10, Some(0)).unwrap_err()),
            "max_discount"
        );
        assert_eq!(
            invalid_field(Discount::parse(percent_kind, 10, Some(-3)).unwrap_err()),
            "max_discount"
        );
        let capped = Discount::parse(percent_kind, 10, Some(1)).unwrap();
        assert_eq!(capped.kind(), DiscountKind::Percent);
        assert_eq!(capped.value(), 10);
        assert_eq!(capped.max_discount(), Some(1));
    }

    #[test]
    fn order_amount_bounds() {
        assert_eq!(OrderAmount::parse("order_amount", 0).unwrap().get(), 0);
        assert!(OrderAmount::parse("order_amount", MAX_ORDER_AMOUNT).is_ok());
        assert_eq!(
            invalid_field(OrderAmount::parse("order_amount", MAX_ORDER_AMOUNT + 1).unwrap_err()),
            "order_amount"
        );
        assert_eq!(
            invalid_field(OrderAmount::parse("order_amount", -1).unwrap_err()),
            "order_amount"
        );
        assert_eq!(
            parse_expected_discount("expected_discount", None).unwrap(),
            None
        );
        assert_eq!(
            parse_expected_discount("expected_discount", Some(0)).unwrap(),
            Some(0)
        );
        assert!(parse_expected_discount("expected_discount", Some(-1)).is_err());
    }

    #[test]
    fn a_valid_template_parses_and_trims_its_name() {
        let template = NewTemplate::parse(TemplateInput {
            name: "  Welcome 10%  ".to_owned(),
            ..input()
        })
        .unwrap();
        assert_eq!(template.name, "Welcome 10%");
        assert_eq!(template.terms.discount, percent(10, Some(5_000)));
        assert_eq!(template.total_quantity, 100);
        assert!(
            NewTemplate::parse(TemplateInput {
                name: "x".repeat(MAX_NAME_CHARS),
                total_quantity: MAX_TOTAL_QUANTITY,
                ..input()
            })
            .is_ok()
        );
    }

    #[test]
    fn invalid_templates_name_the_field() {
        let cases: Vec<(TemplateInput, &str)> = vec![
            (
                TemplateInput {
                    name: "  ".into(),
                    ..input()
                },
                "name",
            ),
            (
                TemplateInput {
                    name: "x".repeat(MAX_NAME_CHARS + 1),
                    ..input()
                },
                "name",
            ),
            (
                TemplateInput {
                    kind: None,
                    ..input()
                },
                "kind",
            ),
            (
                TemplateInput {
                    value: 0,
                    ..input()
                },
                "value",
            ),
            (
                TemplateInput {
                    max_discount: Some(0),
                    ..input()
                },
                "max_discount",
            ),
            (
                TemplateInput {
                    kind: Some(DiscountKind::Fixed),
                    value: 1_000,
                    max_discount: Some(10),
                    ..input()
                },
                "max_discount",
            ),
            (
                TemplateInput {
                    min_order_amount: -1,
                    ..input()
                },
                "min_order_amount",
            ),
            (
                TemplateInput {
                    valid_until: at(1_000),
                    ..input()
                },
                "valid_until",
            ),
            (
                TemplateInput {
                    valid_until: at(999),
                    ..input()
                },
                "valid_until",
            ),
            (
                TemplateInput {
                    total_quantity: 0,
                    ..input()
                },
                "total_quantity",
            ),
            (
                TemplateInput {
                    total_quantity: MAX_TOTAL_QUANTITY + 1,
                    ..input()
                },
                "total_quantity",
            ),
        ];
        for (case, field) in cases {
            let error = NewTemplate::parse(case.clone()).unwrap_err();
            assert_eq!(invalid_field(error), field, "{case:?}");
        }
    }

    #[test]
    fn window_is_compared_at_stored_precision() {
        let from = at(1_000) + Duration::nanoseconds(100);
        let until = at(1_000) + Duration::nanoseconds(900);
        let error = NewTemplate::parse(TemplateInput {
            valid_from: from,
            valid_until: until,
            ..input()
        })
        .unwrap_err();
        assert_eq!(invalid_field(error), "valid_until");
        let t = at(5) + Duration::nanoseconds(1_234_567);
        assert_eq!(
            to_stored_precision(t),
            at(5) + Duration::microseconds(1_234)
        );
    }

    #[test]
    fn quote_applies_inside_the_window_at_or_above_the_minimum() {
        let terms = terms(fixed(3_000));
        let q = quote(&terms, CouponState::Available, at(1_500), order(10_000)).unwrap();
        assert_eq!(
            q,
            Quote {
                order_amount: 10_000,
                discount: 3_000,
                payable: 7_000
            }
        );
        // The window includes valid_from and excludes valid_until.
        assert!(quote(&terms, CouponState::Available, at(1_000), order(10_000)).is_ok());
        let last = at(2_000) - Duration::microseconds(1);
        assert!(quote(&terms, CouponState::Available, last, order(10_000)).is_ok());
    }

    #[test]
    fn quote_refuses_below_the_minimum_order() {
        let terms = terms(fixed(3_000));
        assert_eq!(
            quote(&terms, CouponState::Available, at(1_500), order(9_999)),
            Err(Refusal::MinOrderNotMet {
                minimum: 10_000,
                order_amount: 9_999
            })
        );
        let free = CouponTerms {
            min_order_amount: 0,
            ..terms
        };
        // A zero order with no minimum applies and takes nothing off.
        assert_eq!(
            quote(&free, CouponState::Available, at(1_500), order(0)).unwrap(),
            Quote {
                order_amount: 0,
                discount: 0,
                payable: 0
            }
        );
    }

    #[test]
    fn quote_refuses_before_and_after_the_window() {
        let terms = terms(percent(10, None));
        let early = at(1_000) - Duration::microseconds(1);
        assert_eq!(
            quote(&terms, CouponState::Available, early, order(10_000)),
            Err(Refusal::NotActive {
                valid_from: at(1_000)
            })
        );
        assert_eq!(
            quote(&terms, CouponState::Available, at(2_000), order(10_000)),
            Err(Refusal::Expired {
                valid_until: at(2_000)
            })
        );
        assert!(terms.is_expired_at(at(2_000)));
        assert!(!terms.is_expired_at(at(1_999)));
    }

    #[test]
    fn quote_refuses_a_used_coupon_before_anything_else() {
        let terms = terms(percent(10, None));
        for now in [at(0), at(1_500), at(3_000)] {
            assert_eq!(
                quote(&terms, CouponState::Used, now, order(1)),
                Err(Refusal::AlreadyUsed)
            );
        }
        // Window before minimum order.
        assert_eq!(
            quote(&terms, CouponState::Available, at(3_000), order(1)).unwrap_err(),
            Refusal::Expired {
                valid_until: at(2_000)
            }
        );
    }

    #[test]
    fn refusals_carry_their_reasons() {
        assert_eq!(Refusal::AlreadyUsed.reason(), reason::COUPON_ALREADY_USED);
        assert_eq!(
            Refusal::NotActive { valid_from: at(0) }.reason(),
            reason::COUPON_NOT_ACTIVE
        );
        assert_eq!(
            Refusal::Expired { valid_until: at(0) }.reason(),
            reason::COUPON_EXPIRED
        );
        let min = Refusal::MinOrderNotMet {
            minimum: 5,
            order_amount: 4,
        };
        assert_eq!(min.reason(), reason::COUPON_MIN_ORDER_NOT_MET);
        let error = ServiceError::from(min);
        assert!(matches!(
            error,
            ServiceError::Rejected { reason, .. } if reason == reason::COUPON_MIN_ORDER_NOT_MET
        ));
    }

    #[test]
    fn expected_discount_must_match_when_set() {
        let q = Quote {
            order_amount: 10_000,
            discount: 1_000,
            payable: 9_000,
        };
        assert_eq!(check_expected_discount(&q, None), Ok(()));
        assert_eq!(check_expected_discount(&q, Some(1_000)), Ok(()));
        let refusal = check_expected_discount(&q, Some(999)).unwrap_err();
        assert_eq!(
            refusal,
            Refusal::DiscountChanged {
                expected: 999,
                actual: 1_000
            }
        );
        assert_eq!(refusal.reason(), reason::COUPON_DISCOUNT_CHANGED);
    }

    fn template(issued_quantity: i64) -> CouponTemplate {
        CouponTemplate {
            id: 1,
            name: "t".to_owned(),
            terms: terms(fixed(1_000)),
            total_quantity: 10,
            issued_quantity,
            created_at: at(0),
        }
    }

    #[test]
    fn issue_refusal_names_the_most_specific_reason() {
        let open = template(9);
        let full = template(10);
        assert_eq!(issue_refusal(&open, at(1_500), false), None);
        // Before the window issuance is allowed.
        assert_eq!(issue_refusal(&open, at(0), false), None);
        assert_eq!(
            issue_refusal(&full, at(1_500), false),
            Some(IssueRefusal::SoldOut)
        );
        assert_eq!(
            issue_refusal(&open, at(2_000), false),
            Some(IssueRefusal::Expired)
        );
        assert_eq!(
            issue_refusal(&full, at(2_000), false),
            Some(IssueRefusal::Expired)
        );
        for t in [&open, &full] {
            for now in [at(0), at(1_500), at(2_000)] {
                assert_eq!(
                    issue_refusal(t, now, true),
                    Some(IssueRefusal::AlreadyIssued)
                );
            }
        }
    }

    #[test]
    fn issue_refusals_map_to_their_codes() {
        assert!(matches!(
            ServiceError::from(IssueRefusal::AlreadyIssued),
            ServiceError::AlreadyExists { reason, .. } if reason == reason::COUPON_ALREADY_ISSUED
        ));
        assert!(matches!(
            ServiceError::from(IssueRefusal::SoldOut),
            ServiceError::Rejected { reason, .. } if reason == reason::COUPON_SOLD_OUT
        ));
        assert!(matches!(
            ServiceError::from(IssueRefusal::Expired),
            ServiceError::Rejected { reason, .. } if reason == reason::COUPON_EXPIRED
        ));
    }

    #[test]
    fn stored_spellings_round_trip() {
        for kind in [DiscountKind::Fixed, DiscountKind::Percent] {
            assert_eq!(DiscountKind::from_stored(kind.as_str()), Some(kind));
        }
        for state in [CouponState::Available, CouponState::Used] {
            assert_eq!(CouponState::from_stored(state.as_str()), Some(state));
        }
        assert_eq!(DiscountKind::from_stored("fixed"), None);
        assert_eq!(CouponState::from_stored(""), None);
    }

    #[test]
    fn saga_results_round_trip_through_json() {
        let used = CouponUse {
            user_coupon_id: 7,
            discount: 1_000,
        };
        let json = serde_json::to_string(&used).unwrap();
        assert_eq!(serde_json::from_str::<CouponUse>(&json).unwrap(), used);
        let json = serde_json::to_string(&CouponRestore::NOTHING).unwrap();
        assert_eq!(
            serde_json::from_str::<CouponRestore>(&json).unwrap(),
            CouponRestore::NOTHING
        );
    }
}
