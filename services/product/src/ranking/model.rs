//! The ranking's own rules, free of Redis and SQL: windows, limits, what an
//! order contributes and how the best sellers are ranked.

use std::collections::{BTreeMap, HashMap};

use chrono::{Days, NaiveDate, NaiveDateTime};
use commerce_platform::ServiceError;

use crate::domain::{OrderId, Product, ReservationState};

/// The largest window, in days: no day older than this is ever asked for.
pub const MAX_WINDOW_DAYS: u32 = 30;

/// How long a day's counts (and its per-order states) are kept, counted from
/// the start of the day: the largest window and two days to spare, so that a
/// late event of an order placed just before midnight still finds its state.
pub const RETENTION_DAYS: u64 = MAX_WINDOW_DAYS as u64 + 2;

/// Days of sales a ranking covers, today (UTC) included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RankingWindow {
    Day,
    Week,
    Month,
}

impl RankingWindow {
    pub fn days(self) -> u32 {
        match self {
            Self::Day => 1,
            Self::Week => 7,
            Self::Month => MAX_WINDOW_DAYS,
        }
    }

    /// The window's days, `today` first.
    pub fn dates(self, today: NaiveDate) -> Vec<NaiveDate> {
        days_back(today, self.days())
    }
}

/// `count` days ending with `today`, `today` first.
fn days_back(today: NaiveDate, count: u32) -> Vec<NaiveDate> {
    (0..u64::from(count))
        .filter_map(|back| today.checked_sub_days(Days::new(back)))
        .collect()
}

/// How many best sellers a ranking lists: 1..=100.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PopularLimit(usize);

impl PopularLimit {
    pub const MAX: i32 = 100;

    pub fn parse(field: &str, raw: i32) -> Result<Self, ServiceError> {
        match usize::try_from(raw) {
            Ok(limit) if (1..=100).contains(&raw) => Ok(Self(limit)),
            _ => Err(ServiceError::invalid(
                field,
                format!("must be 1 to {}, got {raw}", Self::MAX),
            )),
        }
    }

    pub fn get(self) -> usize {
        self.0
    }
}

/// How many days a rebuild reads back, today included: 1..=30 (0: 30).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RebuildDays(u32);

impl RebuildDays {
    pub fn parse(field: &str, raw: i32) -> Result<Self, ServiceError> {
        match u32::try_from(raw) {
            Ok(0) => Ok(Self(MAX_WINDOW_DAYS)),
            Ok(days) if days <= MAX_WINDOW_DAYS => Ok(Self(days)),
            _ => Err(ServiceError::invalid(
                field,
                format!("must be 1 to {MAX_WINDOW_DAYS} (0: {MAX_WINDOW_DAYS}), got {raw}"),
            )),
        }
    }

    pub fn get(self) -> u32 {
        self.0
    }

    /// The first instant a rebuild reads: midnight (UTC) of its oldest day.
    pub fn since(self, today: NaiveDate) -> NaiveDateTime {
        days_back(today, self.0)
            .last()
            .copied()
            .unwrap_or(today)
            .and_time(chrono::NaiveTime::MIN)
    }
}

/// What happened to an order, as far as units sold are concerned. The
/// spelling is stored in Redis (the per-order state): never change it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// Its units count, unless the order was seen before.
    Confirmed,
    /// Whatever it counted is taken back; once seen, nothing counts.
    Cancelled,
    /// It never counts.
    Rejected,
}

impl ChangeKind {
    pub fn code(self) -> &'static str {
        match self {
            Self::Confirmed => "C",
            Self::Cancelled => "X",
            Self::Rejected => "R",
        }
    }
}

/// One change of one order, from an event or a reservation: what the
/// ranking's script applies, at most once per order and kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderChange {
    pub order_id: OrderId,
    /// The day (UTC) the order was placed: where its units count.
    pub day: NaiveDate,
    pub kind: ChangeKind,
    /// `(product id, units)`, one per product, units > 0. Only a
    /// confirmation's lines are counted; a cancellation takes back what
    /// the confirmation counted, whatever lines it carries.
    pub lines: Vec<(i64, i64)>,
    /// Where the change came from (an event id, or `rebuild`), kept with the
    /// order's state for whoever investigates a count.
    pub source: String,
}

impl OrderChange {
    /// Unix time (seconds) when the day's counts expire.
    pub fn expires_at(&self) -> i64 {
        self.day
            .checked_add_days(Days::new(RETENTION_DAYS))
            .unwrap_or(NaiveDate::MAX)
            .and_time(chrono::NaiveTime::MIN)
            .and_utc()
            .timestamp()
    }

    /// False for an order placed too long ago to be in any window: applying
    /// it would write keys that expire at once.
    pub fn is_retained(&self, now: NaiveDateTime) -> bool {
        self.expires_at() > now.and_utc().timestamp()
    }
}

/// `lines` merged by product, in product-id order.
pub fn merge_lines(lines: impl IntoIterator<Item = (i64, i64)>) -> Vec<(i64, i64)> {
    let mut merged = BTreeMap::<i64, i64>::new();
    for (product_id, quantity) in lines {
        let units = merged.entry(product_id).or_default();
        *units = units.saturating_add(quantity);
    }
    merged.into_iter().collect()
}

/// A reservation that reached its end, as a rebuild reads it.
#[derive(Debug, Clone)]
pub struct SettledReservation {
    pub order_id: Option<String>,
    /// When its order was placed (its creation time for rows from before
    /// reservations recorded it).
    pub ordered_at: NaiveDateTime,
    pub state: ReservationState,
    pub lines: Vec<(i64, i64)>,
}

impl SettledReservation {
    /// The change it stands for: a confirmed reservation is a confirmed
    /// order; a released one an order that ended without a sale (rejected,
    /// or cancelled after its confirmation). `None` without an order id (the
    /// ranking counts orders, and events name them) or while still reserved.
    pub fn change(&self) -> Option<OrderChange> {
        let kind = match self.state {
            ReservationState::Confirmed => ChangeKind::Confirmed,
            ReservationState::Released => ChangeKind::Cancelled,
            ReservationState::Reserved => return None,
        };
        let order_id = OrderId::parse("order_id", self.order_id.as_deref()?).ok()?;
        Some(OrderChange {
            order_id,
            day: self.ordered_at.date(),
            kind,
            lines: merge_lines(self.lines.iter().copied()),
            source: "rebuild".to_owned(),
        })
    }
}

/// What a rebuild did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RebuildReport {
    /// Confirmed reservations applied.
    pub orders_counted: i64,
    /// Released reservations applied.
    pub orders_cancelled: i64,
    /// Reservations without an order id, which no event could name.
    pub orders_without_id: i64,
    pub days: u32,
}

/// One best seller.
#[derive(Debug, Clone)]
pub struct PopularProduct {
    /// 1 for the best seller.
    pub rank: u32,
    pub units_sold: i64,
    pub product: Product,
}

/// Ranks `units` (product id, units sold) by units, most first (ties: lower
/// id first), keeping products that are still in the catalogue.
pub fn rank(units: &[(i64, i64)], products: Vec<Product>) -> Vec<PopularProduct> {
    let mut products: HashMap<i64, Product> = products.into_iter().map(|p| (p.id, p)).collect();
    let mut units = units.to_vec();
    units.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    units
        .into_iter()
        .filter(|&(_, sold)| sold > 0)
        .filter_map(|(id, sold)| products.remove(&id).map(|product| (sold, product)))
        .zip(1..)
        .map(|((units_sold, product), rank)| PopularProduct {
            rank,
            units_sold,
            product,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::domain::{ProductStatus, Stock};

    fn date(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    fn product(id: i64) -> Product {
        let now = commerce_platform::time::now();
        Product {
            id,
            brand_id: 1,
            brand_name: "b".to_owned(),
            name: format!("p{id}"),
            price: 1,
            status: ProductStatus::OnSale,
            like_count: 0,
            stock: Stock {
                product_id: id,
                available: 0,
                reserved: 0,
                sold: 0,
            },
            created_at: now,
            updated_at: now,
        }
    }

    #[test]
    fn windows_end_today_and_reach_back_their_days() {
        let today = date("2026-03-02");
        assert_eq!(RankingWindow::Day.dates(today), vec![today]);
        let week = RankingWindow::Week.dates(today);
        assert_eq!(week.len(), 7);
        assert_eq!(week.last(), Some(&date("2026-02-24")));
        assert_eq!(RankingWindow::Month.dates(today).len(), 30);
    }

    #[test]
    fn limits_and_days_name_their_field() {
        assert_eq!(PopularLimit::parse("limit", 1).unwrap().get(), 1);
        assert_eq!(PopularLimit::parse("limit", 100).unwrap().get(), 100);
        for bad in [0, -1, 101] {
            let ServiceError::InvalidArgument { field, .. } =
                PopularLimit::parse("limit", bad).unwrap_err()
            else {
                panic!("{bad}");
            };
            assert_eq!(field, "limit");
        }
        assert_eq!(RebuildDays::parse("days", 0).unwrap().get(), 30);
        assert_eq!(RebuildDays::parse("days", 7).unwrap().get(), 7);
        assert!(RebuildDays::parse("days", 31).is_err());
        assert!(RebuildDays::parse("days", -1).is_err());
        let since = RebuildDays::parse("days", 2)
            .unwrap()
            .since(date("2026-03-02"));
        assert_eq!(since, date("2026-03-01").and_time(chrono::NaiveTime::MIN));
    }

    #[test]
    fn settled_reservations_become_changes_of_their_order() {
        let placed = date("2026-03-01").and_hms_opt(23, 59, 59).unwrap();
        let order = "6f9619ff-8b86-d011-b42d-00c04fc964ff";
        let settled = |state, order_id: Option<&str>| SettledReservation {
            order_id: order_id.map(str::to_owned),
            ordered_at: placed,
            state,
            lines: vec![(2, 1), (1, 3), (2, 4)],
        };
        let confirmed = settled(ReservationState::Confirmed, Some(order))
            .change()
            .unwrap();
        assert_eq!(confirmed.kind, ChangeKind::Confirmed);
        assert_eq!(confirmed.day, date("2026-03-01"));
        assert_eq!(confirmed.lines, vec![(1, 3), (2, 5)]);
        let released = settled(ReservationState::Released, Some(order))
            .change()
            .unwrap();
        assert_eq!(released.kind, ChangeKind::Cancelled);
        assert!(
            settled(ReservationState::Reserved, Some(order))
                .change()
                .is_none()
        );
        assert!(
            settled(ReservationState::Confirmed, None)
                .change()
                .is_none()
        );
    }

    #[test]
    fn changes_of_days_out_of_every_window_are_not_retained() {
        let change = OrderChange {
            order_id: OrderId::parse("o", "6f9619ff-8b86-d011-b42d-00c04fc964ff").unwrap(),
            day: date("2026-03-01"),
            kind: ChangeKind::Confirmed,
            lines: vec![(1, 1)],
            source: "e".to_owned(),
        };
        let at = |d: &str| date(d).and_hms_opt(12, 0, 0).unwrap();
        assert!(change.is_retained(at("2026-03-01")));
        assert!(change.is_retained(at("2026-04-01")));
        assert!(!change.is_retained(at("2026-04-02")));
    }

    #[test]
    fn ranking_orders_by_units_then_id_and_skips_unknown_products() {
        let ranked = rank(
            &[(5, 2), (3, 9), (4, 2), (7, 100), (8, 0)],
            vec![product(3), product(4), product(5), product(8)],
        );
        let got: Vec<(u32, i64, i64)> = ranked
            .iter()
            .map(|p| (p.rank, p.product.id, p.units_sold))
            .collect();
        assert_eq!(got, vec![(1, 3, 9), (2, 4, 2), (3, 5, 2)]);
    }
}
