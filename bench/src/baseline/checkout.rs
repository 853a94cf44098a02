//! The rules of one order, decided from the rows its transaction locked. Pure,
//! so every branch is unit-tested below. They are the product, coupon and
//! point services' checks, met in the order the saga meets them: the lines
//! (known, on sale, in stock), then the coupon, then the points.

use chrono::NaiveDateTime;
use commerce_platform::UserId;
use diesel::Queryable;
use order_orchestrator::domain::order::{PlaceOrder, SnapshotLine};

/// Reasons of business rejections, spelled as the services spell them, so an
/// order rejected here reads like one the saga rejected.
pub mod reason {
    pub const PRODUCT_NOT_FOUND: &str = "PRODUCT_NOT_FOUND";
    pub const PRODUCT_NOT_ON_SALE: &str = "PRODUCT_NOT_ON_SALE";
    pub const STOCK_INSUFFICIENT: &str = "STOCK_INSUFFICIENT";
    pub const USER_COUPON_NOT_FOUND: &str = "USER_COUPON_NOT_FOUND";
    pub const COUPON_ALREADY_USED: &str = "COUPON_ALREADY_USED";
    pub const COUPON_NOT_ACTIVE: &str = "COUPON_NOT_ACTIVE";
    pub const COUPON_EXPIRED: &str = "COUPON_EXPIRED";
    pub const COUPON_MIN_ORDER_NOT_MET: &str = "COUPON_MIN_ORDER_NOT_MET";
    pub const POINT_INSUFFICIENT: &str = "POINT_INSUFFICIENT";
}

/// Stored spellings of a product that may be ordered and of a coupon's states.
pub const ON_SALE: &str = "ON_SALE";
pub const COUPON_AVAILABLE: &str = "AVAILABLE";
pub const COUPON_USED: &str = "USED";

/// Why an order is refused. Not an error: the order is recorded REJECTED
/// with it, as the saga records a participant's refusal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: &'static str,
    pub message: String,
}

impl Rejection {
    fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }
}

/// A product with its stock row, as locked for an order.
#[derive(Debug, Clone, PartialEq, Eq, Queryable)]
pub struct ProductStock {
    pub product_id: i64,
    pub name: String,
    pub brand_id: i64,
    pub brand_name: String,
    pub price: i64,
    pub status: String,
    pub available: i64,
}

/// A user coupon (locked) with its template's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Coupon {
    pub user_id: String,
    pub state: String,
    /// FIXED: KRW off, never more than the order.
    pub amount: i64,
    pub min_order_amount: i64,
    pub valid_from: NaiveDateTime,
    /// Exclusive: the coupon has expired at this instant.
    pub valid_until: NaiveDateTime,
}

/// The snapshot of every line of `order` (merged, in product-id order),
/// or why the lines cannot be sold.
pub fn lines_price(
    order: &PlaceOrder,
    stock: &[ProductStock],
) -> Result<Vec<SnapshotLine>, Rejection> {
    order
        .lines
        .iter()
        .map(|line| {
            let Some(product) = stock.iter().find(|s| s.product_id == line.product_id) else {
                return Err(Rejection::new(
                    reason::PRODUCT_NOT_FOUND,
                    format!("product {} not found", line.product_id),
                ));
            };
            if product.status != ON_SALE {
                return Err(Rejection::new(
                    reason::PRODUCT_NOT_ON_SALE,
                    format!(
                        "product {} ({:?}) is {} and cannot be ordered",
                        product.product_id, product.name, product.status
                    ),
                ));
            }
            if product.available < line.quantity {
                return Err(Rejection::new(
                    reason::STOCK_INSUFFICIENT,
                    format!(
                        "product {} ({:?}) has {} units available, {} requested",
                        product.product_id, product.name, product.available, line.quantity
                    ),
                ));
            }
            Ok(SnapshotLine {
                product_id: line.product_id,
                quantity: line.quantity,
                product_name: product.name.clone(),
                brand_id: product.brand_id,
                brand_name: product.brand_name.clone(),
                unit_price: product.price,
            })
        })
        .collect()
}

/// What coupon `coupon_id` (its row, if it exists) takes off `subtotal` for
/// `user` at `now`. Another user's coupon is treated as not found; then the
/// checks run in the coupon service's order: used, not yet active, expired,
/// below the minimum order amount.
pub fn coupon_discount(
    user: &UserId,
    coupon_id: i64,
    coupon: Option<&Coupon>,
    subtotal: i64,
    now: NaiveDateTime,
) -> Result<i64, Rejection> {
    let Some(coupon) = coupon.filter(|c| c.user_id == user.as_str()) else {
        return Err(Rejection::new(
            reason::USER_COUPON_NOT_FOUND,
            format!("user_coupon {coupon_id} not found"),
        ));
    };
    if coupon.state != COUPON_AVAILABLE {
        return Err(Rejection::new(
            reason::COUPON_ALREADY_USED,
            "the coupon has been used already",
        ));
    }
    if now < coupon.valid_from {
        return Err(Rejection::new(
            reason::COUPON_NOT_ACTIVE,
            format!("the coupon is valid only from {} UTC", coupon.valid_from),
        ));
    }
    if now >= coupon.valid_until {
        return Err(Rejection::new(
            reason::COUPON_EXPIRED,
            format!("the coupon expired at {} UTC", coupon.valid_until),
        ));
    }
    if subtotal < coupon.min_order_amount {
        return Err(Rejection::new(
            reason::COUPON_MIN_ORDER_NOT_MET,
            format!(
                "the coupon needs an order of at least {}, this one is {subtotal}",
                coupon.min_order_amount
            ),
        ));
    }
    Ok(coupon.amount.clamp(0, subtotal))
}

/// The balance left after paying `payable` points out of `balance`.
pub fn points_deduct(balance: i64, payable: i64) -> Result<i64, Rejection> {
    if payable > balance {
        return Err(Rejection::new(
            reason::POINT_INSUFFICIENT,
            format!("deducting {payable} points needs more than the balance of {balance}"),
        ));
    }
    Ok(balance - payable)
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Duration};

    use super::*;

    fn at(secs: i64) -> NaiveDateTime {
        DateTime::from_timestamp(secs, 0).unwrap().naive_utc()
    }

    fn product(id: i64, available: i64) -> ProductStock {
        ProductStock {
            product_id: id,
            name: format!("p{id}"),
            brand_id: 1,
            brand_name: "b".into(),
            price: 100 * id,
            status: ON_SALE.into(),
            available,
        }
    }

    fn order(lines: &[(i64, i64)]) -> PlaceOrder {
        PlaceOrder::parse("u1", lines.iter().copied(), None, "k").unwrap()
    }

    fn coupon() -> Coupon {
        Coupon {
            user_id: "u1".into(),
            state: COUPON_AVAILABLE.into(),
            amount: 3_000,
            min_order_amount: 5_000,
            valid_from: at(1_000),
            valid_until: at(2_000),
        }
    }

    #[test]
    fn lines_are_priced_from_the_products_merged_in_product_order() {
        let lines = lines_price(
            &order(&[(2, 1), (1, 3), (2, 4)]),
            &[product(1, 3), product(2, 5)],
        )
        .unwrap();
        let got: Vec<_> = lines
            .iter()
            .map(|l| (l.product_id, l.quantity, l.unit_price))
            .collect();
        assert_eq!(got, vec![(1, 3, 100), (2, 5, 200)]);
        assert_eq!(lines[0].product_name, "p1");
    }

    #[test]
    fn the_first_line_that_cannot_be_sold_names_the_reason() {
        let stock = [product(1, 3), product(2, 5)];
        let reason_of = |lines: &[(i64, i64)], stock: &[ProductStock]| {
            lines_price(&order(lines), stock).unwrap_err().reason
        };
        assert_eq!(
            reason_of(&[(1, 1), (9, 1)], &stock),
            reason::PRODUCT_NOT_FOUND
        );
        assert_eq!(
            reason_of(&[(1, 4), (2, 1)], &stock),
            reason::STOCK_INSUFFICIENT
        );
        let mut suspended = product(2, 5);
        suspended.status = "SUSPENDED".into();
        assert_eq!(
            reason_of(&[(2, 1)], &[suspended]),
            reason::PRODUCT_NOT_ON_SALE
        );
    }

    #[test]
    fn coupon_checks_run_in_the_coupon_services_order() {
        let user = UserId::parse("user_id", "u1").unwrap();
        let c = coupon();
        let discount = |c: &Coupon, subtotal, now| {
            coupon_discount(&user, 7, Some(c), subtotal, now).map_err(|r| r.reason)
        };
        assert_eq!(discount(&c, 10_000, at(1_500)), Ok(3_000));
        assert_eq!(discount(&c, 10_000, at(1_000)), Ok(3_000));
        assert_eq!(
            discount(&c, 4_999, at(1_500)),
            Err(reason::COUPON_MIN_ORDER_NOT_MET)
        );
        assert_eq!(
            discount(&c, 10_000, at(1_000) - Duration::microseconds(1)),
            Err(reason::COUPON_NOT_ACTIVE)
        );
        assert_eq!(discount(&c, 10, at(2_000)), Err(reason::COUPON_EXPIRED));
        let used = Coupon {
            state: COUPON_USED.into(),
            ..c.clone()
        };
        assert_eq!(discount(&used, 10, at(0)), Err(reason::COUPON_ALREADY_USED));
        let theirs = Coupon {
            user_id: "u2".into(),
            ..c.clone()
        };
        assert_eq!(
            discount(&theirs, 10_000, at(1_500)),
            Err(reason::USER_COUPON_NOT_FOUND)
        );
        assert_eq!(
            coupon_discount(&user, 7, None, 10_000, at(1_500)).map_err(|r| r.reason),
            Err(reason::USER_COUPON_NOT_FOUND)
        );
        let free = Coupon {
            min_order_amount: 0,
            ..c
        };
        assert_eq!(discount(&free, 1_000, at(1_500)), Ok(1_000));
    }

    #[test]
    fn points_never_go_negative() {
        assert_eq!(points_deduct(500, 500), Ok(0));
        assert_eq!(
            points_deduct(499, 500).unwrap_err().reason,
            reason::POINT_INSUFFICIENT
        );
    }
}
