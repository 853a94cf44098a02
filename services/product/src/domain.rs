//! The product domain: validated inputs, the catalogue's views, stock
//! arithmetic and the rules of saga reservations. Pure code: no SQL, no
//! transport. Wire values are parsed into these types at the gRPC edge, so
//! invalid values never reach the store.

use std::collections::BTreeMap;

use chrono::NaiveDateTime;
use commerce_platform::paging::PageRequest;
use commerce_platform::validate;
use commerce_platform::{SagaId, ServiceError};
use serde::{Deserialize, Serialize};

/// Business-rejection reasons of the product service (`ErrorInfo.reason`).
pub mod reason {
    /// A line names a product that is suspended or discontinued.
    pub const PRODUCT_NOT_ON_SALE: &str = "PRODUCT_NOT_ON_SALE";
    /// A line asks for more units than are available.
    pub const STOCK_INSUFFICIENT: &str = "STOCK_INSUFFICIENT";
    /// The saga's reservation was released and cannot be confirmed.
    pub const RESERVATION_RELEASED: &str = "RESERVATION_RELEASED";
}

/// Highest unit price, in KRW.
pub const MAX_PRICE: i64 = 1_000_000_000;
/// Highest number of available units one product may be given.
pub const MAX_STOCK: i64 = 1_000_000_000;
/// Units one order line may ask for.
pub const MAX_LINE_QUANTITY: i64 = 1_000;
/// Lines one reservation may hold.
pub const MAX_LINES: usize = 100;

/// A brand's name: 1..=100 characters, trimmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrandName(String);

impl BrandName {
    pub fn parse(field: &str, raw: &str) -> Result<Self, ServiceError> {
        validate::text(field, raw, 1, 100).map(Self)
    }

    pub fn into_inner(self) -> String {
        self.0
    }
}

/// A brand's description: up to 2000 characters, trimmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrandDescription(String);

impl BrandDescription {
    pub fn parse(field: &str, raw: &str) -> Result<Self, ServiceError> {
        validate::text(field, raw, 0, 2000).map(Self)
    }

    pub fn into_inner(self) -> String {
        self.0
    }
}

/// A product's name: 1..=200 characters, trimmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductName(String);

impl ProductName {
    pub fn parse(field: &str, raw: &str) -> Result<Self, ServiceError> {
        validate::text(field, raw, 1, 200).map(Self)
    }

    pub fn into_inner(self) -> String {
        self.0
    }
}

/// A unit price in KRW: 0..=1,000,000,000.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Price(i64);

impl Price {
    pub fn parse(field: &str, raw: i64) -> Result<Self, ServiceError> {
        validate::in_range(field, raw, 0, MAX_PRICE).map(Self)
    }

    pub fn get(self) -> i64 {
        self.0
    }
}

/// A number of available units an administrator sets: 0..=1,000,000,000.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StockUnits(i64);

impl StockUnits {
    pub fn parse(field: &str, raw: i64) -> Result<Self, ServiceError> {
        validate::in_range(field, raw, 0, MAX_STOCK).map(Self)
    }

    pub fn get(self) -> i64 {
        self.0
    }
}

/// Units one order line asks for: 1..=1000.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quantity(i64);

impl Quantity {
    pub fn parse(field: &str, raw: i64) -> Result<Self, ServiceError> {
        validate::in_range(field, raw, 1, MAX_LINE_QUANTITY).map(Self)
    }

    pub fn get(self) -> i64 {
        self.0
    }
}

/// Whether a product can be ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProductStatus {
    OnSale,
    Suspended,
    Discontinued,
}

impl ProductStatus {
    /// The stored spelling; a persisted contract.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OnSale => "ON_SALE",
            Self::Suspended => "SUSPENDED",
            Self::Discontinued => "DISCONTINUED",
        }
    }

    pub fn from_stored(raw: &str) -> Result<Self, ServiceError> {
        match raw {
            "ON_SALE" => Ok(Self::OnSale),
            "SUSPENDED" => Ok(Self::Suspended),
            "DISCONTINUED" => Ok(Self::Discontinued),
            other => Err(ServiceError::internal(format!(
                "unknown stored product status {other:?}"
            ))),
        }
    }
}

/// Order of a product list; `id` breaks ties so pages never overlap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProductSort {
    /// Newest first.
    Latest,
    /// Cheapest first.
    PriceAsc,
    /// Most liked first.
    LikesDesc,
}

/// A brand to create.
#[derive(Debug, Clone)]
pub struct NewBrand {
    pub name: BrandName,
    pub description: BrandDescription,
}

/// The brand fields to change; `None` keeps the stored value.
#[derive(Debug, Clone, Default)]
pub struct BrandChanges {
    pub name: Option<BrandName>,
    pub description: Option<BrandDescription>,
}

impl BrandChanges {
    pub fn is_empty(&self) -> bool {
        self.name.is_none() && self.description.is_none()
    }
}

/// A product to create, with its initial available units.
#[derive(Debug, Clone)]
pub struct NewProduct {
    pub brand_id: i64,
    pub name: ProductName,
    pub price: Price,
    pub status: ProductStatus,
    pub stock: StockUnits,
}

/// The product fields to change; `None` keeps the stored value.
#[derive(Debug, Clone, Default)]
pub struct ProductChanges {
    pub name: Option<ProductName>,
    pub price: Option<Price>,
    pub status: Option<ProductStatus>,
}

impl ProductChanges {
    pub fn is_empty(&self) -> bool {
        self.name.is_none() && self.price.is_none() && self.status.is_none()
    }
}

/// One page of the catalogue, optionally of one brand.
#[derive(Debug, Clone, Copy)]
pub struct ProductQuery {
    pub brand_id: Option<i64>,
    pub sort: ProductSort,
    pub page: PageRequest,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Brand {
    pub id: i64,
    pub name: String,
    pub description: String,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
}

/// A product as shoppers see it: with its brand's name and its stock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Product {
    pub id: i64,
    pub brand_id: i64,
    pub brand_name: String,
    pub name: String,
    pub price: i64,
    pub status: ProductStatus,
    pub like_count: i64,
    pub stock: Stock,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
}

/// A page of products and the number of products over all pages.
#[derive(Debug, Clone)]
pub struct ProductPage {
    pub products: Vec<Product>,
    pub total: i64,
}

/// The state of a user's like after a like or unlike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LikeOutcome {
    pub product_id: i64,
    pub liked: bool,
    pub like_count: i64,
}

/// A like count after one like row was added (`+1`) or removed (`-1`):
/// never below zero, whatever the stored count says.
pub fn like_count_after(current: i64, change: i64) -> i64 {
    current.saturating_add(change).max(0)
}

/// Units of one product. Only `SetStock` changes the total; reservations move
/// units between the three buckets, and none may go negative.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stock {
    pub product_id: i64,
    /// Units that can still be reserved.
    pub available: i64,
    /// Units held by sagas neither confirmed nor released.
    pub reserved: i64,
    /// Units of confirmed reservations.
    pub sold: i64,
}

/// How a reservation step moves a line's units between stock buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StockMove {
    /// Reserve: available -> reserved.
    AvailableToReserved,
    /// Confirm: reserved -> sold.
    ReservedToSold,
    /// Release before confirmation: reserved -> available.
    ReservedToAvailable,
    /// Release after confirmation (an order cancelled): sold -> available.
    SoldToAvailable,
}

/// What a move of `quantity` units needs of the stock it applies to: the
/// source bucket holds at least `min_source` units and the target bucket at
/// most `max_target` (so it cannot overflow). [`Stock::moved`] checks these
/// bounds, and the store guards its relative `UPDATE` with the same ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MoveBounds {
    pub min_source: i64,
    pub max_target: i64,
}

impl StockMove {
    /// The bounds of moving `quantity` units; `None` for a negative quantity.
    pub fn bounds(self, quantity: i64) -> Option<MoveBounds> {
        (quantity >= 0).then(|| MoveBounds {
            min_source: quantity,
            max_target: i64::MAX - quantity,
        })
    }
}

impl Stock {
    /// The stock after moving `quantity` units, or `None` when the source
    /// bucket holds fewer units (or a bucket would overflow).
    pub fn moved(&self, step: StockMove, quantity: i64) -> Option<Stock> {
        let bounds = step.bounds(quantity)?;
        let mut next = *self;
        let (from, to) = match step {
            StockMove::AvailableToReserved => (&mut next.available, &mut next.reserved),
            StockMove::ReservedToSold => (&mut next.reserved, &mut next.sold),
            StockMove::ReservedToAvailable => (&mut next.reserved, &mut next.available),
            StockMove::SoldToAvailable => (&mut next.sold, &mut next.available),
        };
        if *from < bounds.min_source || *to > bounds.max_target {
            return None;
        }
        *from -= quantity;
        *to += quantity;
        Some(next)
    }

    /// Why held units cannot move: the stored state is corrupt (INTERNAL).
    /// The store answers with it too when the guard of such a move matched
    /// no row.
    pub fn held_move_refusal(&self, step: StockMove, quantity: i64) -> ServiceError {
        ServiceError::internal(format!(
            "stock of product {} cannot take {step:?} of {quantity} units: {self:?}",
            self.product_id
        ))
    }

    /// Why `quantity` units of `product_name` cannot be reserved from this
    /// stock: STOCK_INSUFFICIENT naming the product. The store answers with it
    /// too when the guard of a reservation matched no row.
    pub fn reserve_refusal(&self, product_name: &str, quantity: i64) -> ServiceError {
        ServiceError::rejected(
            reason::STOCK_INSUFFICIENT,
            format!(
                "product {} ({product_name:?}) has {} units available, {quantity} requested",
                self.product_id, self.available
            ),
        )
    }

    /// The stock with `available` set by an administrator.
    pub fn with_available(&self, available: StockUnits) -> Stock {
        Stock {
            available: available.get(),
            ..*self
        }
    }
}

/// One merged, validated line of a reservation request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrderLine {
    pub product_id: i64,
    pub quantity: i64,
}

/// A validated `ReserveStock` request: lines merged by product, in product-id
/// order (the order rows are locked in).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReserveOrder {
    pub saga: SagaId,
    pub lines: Vec<OrderLine>,
    /// The order the stock is for; `None` from callers that predate it (the
    /// ranking's rebuild cannot count such a reservation).
    pub order_id: Option<OrderId>,
    /// When that order was placed (its sales count on this day); `None`: the
    /// reservation's own time.
    pub ordered_at: Option<NaiveDateTime>,
}

/// An order's id (a UUID, hyphenated lower case as the orchestrator writes
/// it): the key the sales ranking counts each order under, once.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OrderId(String);

impl OrderId {
    pub fn parse(field: &str, raw: &str) -> Result<Self, ServiceError> {
        let id = uuid::Uuid::try_parse(raw)
            .map_err(|_| ServiceError::invalid(field, "must be a UUID"))?;
        Ok(Self(id.hyphenated().to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for OrderId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl ReserveOrder {
    /// Validates the saga id and `(product_id, quantity)` lines; errors name
    /// the field (`lines[3].quantity`). Lines naming one product are merged.
    pub fn parse(saga_id: &str, lines: &[(i64, i64)]) -> Result<Self, ServiceError> {
        let saga = SagaId::parse("saga_id", saga_id)?;
        if lines.is_empty() {
            return Err(ServiceError::invalid(
                "lines",
                "must hold at least one line",
            ));
        }
        if lines.len() > MAX_LINES {
            return Err(ServiceError::invalid(
                "lines",
                format!("must hold at most {MAX_LINES} lines, got {}", lines.len()),
            ));
        }
        let mut merged = BTreeMap::<i64, i64>::new();
        for (i, &(product_id, quantity)) in lines.iter().enumerate() {
            let product_id = validate::id(&format!("lines[{i}].product_id"), product_id)?;
            let quantity = Quantity::parse(&format!("lines[{i}].quantity"), quantity)?;
            // At most 100 lines of 1000 units: the sum cannot overflow.
            *merged.entry(product_id).or_default() += quantity.get();
        }
        Ok(Self {
            saga,
            lines: merged
                .into_iter()
                .map(|(product_id, quantity)| OrderLine {
                    product_id,
                    quantity,
                })
                .collect(),
            order_id: None,
            ordered_at: None,
        })
    }

    /// The order the reservation is for: `order_id` (the `order_id` field;
    /// empty from callers that predate it) and when it was placed.
    pub fn for_order(
        self,
        order_id: &str,
        ordered_at: Option<NaiveDateTime>,
    ) -> Result<Self, ServiceError> {
        let order_id = (!order_id.is_empty())
            .then(|| OrderId::parse("order_id", order_id))
            .transpose()?;
        Ok(Self {
            order_id,
            ordered_at,
            ..self
        })
    }

    /// Product ids of the lines, ascending.
    pub fn product_ids(&self) -> Vec<i64> {
        self.lines.iter().map(|line| line.product_id).collect()
    }
}

/// What a reservation records of a product, read in the reserving
/// transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductSnapshot {
    pub product_id: i64,
    pub product_name: String,
    pub brand_id: i64,
    pub brand_name: String,
    pub unit_price: i64,
    pub status: ProductStatus,
}

/// A reserved line and the snapshot it was reserved at. Stored by the barrier
/// as JSON: field names are a persisted contract.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReservedLine {
    pub product_id: i64,
    pub quantity: i64,
    pub product_name: String,
    pub brand_id: i64,
    pub brand_name: String,
    pub unit_price: i64,
}

/// One line of a planned reservation: what to record and the stock after it
/// (the store applies the move relatively, guarded, and does not write this).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedLine {
    pub line: ReservedLine,
    pub stock_after: Stock,
}

/// Decides a reservation from the locked stock rows and the products'
/// snapshots: every line or an error, checked in product-id order. An
/// unknown product is NOT_FOUND, one not on sale PRODUCT_NOT_ON_SALE, short
/// stock STOCK_INSUFFICIENT naming the product.
pub fn plan_reservation(
    order: &ReserveOrder,
    stock: &[Stock],
    snapshots: &[ProductSnapshot],
) -> Result<Vec<PlannedLine>, ServiceError> {
    let stock: BTreeMap<i64, &Stock> = stock.iter().map(|s| (s.product_id, s)).collect();
    let snapshots: BTreeMap<i64, &ProductSnapshot> =
        snapshots.iter().map(|s| (s.product_id, s)).collect();
    order
        .lines
        .iter()
        .map(|line| {
            let (Some(stock), Some(snapshot)) =
                (stock.get(&line.product_id), snapshots.get(&line.product_id))
            else {
                return Err(ServiceError::not_found("product", line.product_id));
            };
            if snapshot.status != ProductStatus::OnSale {
                return Err(ServiceError::rejected(
                    reason::PRODUCT_NOT_ON_SALE,
                    format!(
                        "product {} ({:?}) is {} and cannot be ordered",
                        line.product_id,
                        snapshot.product_name,
                        snapshot.status.as_str()
                    ),
                ));
            }
            let stock_after = stock
                .moved(StockMove::AvailableToReserved, line.quantity)
                .ok_or_else(|| stock.reserve_refusal(&snapshot.product_name, line.quantity))?;
            Ok(PlannedLine {
                line: ReservedLine {
                    product_id: line.product_id,
                    quantity: line.quantity,
                    product_name: snapshot.product_name.clone(),
                    brand_id: snapshot.brand_id,
                    brand_name: snapshot.brand_name.clone(),
                    unit_price: snapshot.unit_price,
                },
                stock_after,
            })
        })
        .collect()
}

/// Where a saga's reservation stands. Stored spelling and JSON form are a
/// persisted contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ReservationState {
    Reserved,
    Confirmed,
    Released,
}

impl ReservationState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reserved => "RESERVED",
            Self::Confirmed => "CONFIRMED",
            Self::Released => "RELEASED",
        }
    }

    pub fn from_stored(raw: &str) -> Result<Self, ServiceError> {
        match raw {
            "RESERVED" => Ok(Self::Reserved),
            "CONFIRMED" => Ok(Self::Confirmed),
            "RELEASED" => Ok(Self::Released),
            other => Err(ServiceError::internal(format!(
                "unknown stored reservation state {other:?}"
            ))),
        }
    }

    /// The stock move confirming a reservation in this state; `None` when it
    /// is confirmed already. A released reservation cannot be confirmed.
    pub fn confirm(self, saga: &SagaId) -> Result<Option<StockMove>, ServiceError> {
        match self {
            Self::Reserved => Ok(Some(StockMove::ReservedToSold)),
            Self::Confirmed => Ok(None),
            Self::Released => Err(ServiceError::rejected(
                reason::RESERVATION_RELEASED,
                format!("the reservation of saga {saga} was released and cannot be confirmed"),
            )),
        }
    }

    /// The stock move releasing a reservation in this state; `None` when it
    /// is released already.
    pub fn release(self) -> Option<StockMove> {
        match self {
            Self::Reserved => Some(StockMove::ReservedToAvailable),
            Self::Confirmed => Some(StockMove::SoldToAvailable),
            Self::Released => None,
        }
    }
}

/// A saga's reservation, lines in product-id order. The result of the
/// reserve and confirm actions, replayed by the barrier from its JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    pub saga_id: String,
    pub state: ReservationState,
    pub lines: Vec<ReservedLine>,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
}

/// The result of the release compensation, replayed by the barrier.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseOutcome {
    pub saga_id: String,
    /// False when nothing was reserved (or it was released already).
    pub released: bool,
    /// The reservation's state before this release, when there was one.
    pub previous_state: Option<ReservationState>,
    /// Lines whose units went back to `available`.
    pub lines: Vec<ReservedLine>,
}

impl ReleaseOutcome {
    /// The release of a saga for which nothing was reserved.
    pub fn nothing_reserved(saga: &SagaId) -> Self {
        Self {
            saga_id: saga.to_string(),
            released: false,
            previous_state: None,
            lines: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const SAGA: &str = "5a1b6d1e-8c3f-4f7a-9b1e-2d3c4b5a6f70";

    fn field_of(error: ServiceError) -> String {
        match error {
            ServiceError::InvalidArgument { field, .. } => field,
            other => panic!("expected an invalid field, got {other:?}"),
        }
    }

    fn reason_of(error: &ServiceError) -> String {
        error.reason()
    }

    fn stock(product_id: i64, available: i64) -> Stock {
        Stock {
            product_id,
            available,
            reserved: 0,
            sold: 0,
        }
    }

    fn snapshot(product_id: i64, status: ProductStatus) -> ProductSnapshot {
        ProductSnapshot {
            product_id,
            product_name: format!("product {product_id}"),
            brand_id: 7,
            brand_name: "brand".to_owned(),
            unit_price: 1_000 * product_id,
            status,
        }
    }

    #[test]
    fn reserve_order_merges_duplicates_in_product_order() {
        let order = ReserveOrder::parse(SAGA, &[(9, 2), (3, 1), (9, 5)]).unwrap();
        assert_eq!(
            order.lines,
            vec![
                OrderLine {
                    product_id: 3,
                    quantity: 1
                },
                OrderLine {
                    product_id: 9,
                    quantity: 7
                },
            ]
        );
        assert_eq!(order.product_ids(), vec![3, 9]);
    }

    #[test]
    fn reserve_order_errors_name_the_field() {
        assert_eq!(
            field_of(ReserveOrder::parse("", &[(1, 1)]).unwrap_err()),
            "saga_id"
        );
        assert_eq!(
            field_of(ReserveOrder::parse("nope", &[(1, 1)]).unwrap_err()),
            "saga_id"
        );
        assert_eq!(
            field_of(ReserveOrder::parse(SAGA, &[]).unwrap_err()),
            "lines"
        );
        let too_many = vec![(1, 1); MAX_LINES + 1];
        assert_eq!(
            field_of(ReserveOrder::parse(SAGA, &too_many).unwrap_err()),
            "lines"
        );
        assert!(ReserveOrder::parse(SAGA, &vec![(1, 1000); MAX_LINES]).is_ok());
        for (lines, field) in [
            (vec![(1, 1), (0, 1)], "lines[1].product_id"),
            (vec![(-4, 1)], "lines[0].product_id"),
            (vec![(1, 1), (2, 2), (3, 0)], "lines[2].quantity"),
            (vec![(1, -1)], "lines[0].quantity"),
            (vec![(1, 1001)], "lines[0].quantity"),
        ] {
            assert_eq!(
                field_of(ReserveOrder::parse(SAGA, &lines).unwrap_err()),
                field
            );
        }
    }

    #[test]
    fn reserve_order_records_its_order_when_the_caller_names_one() {
        let order = ReserveOrder::parse(SAGA, &[(1, 1)]).unwrap();
        let placed = chrono::DateTime::from_timestamp(1_700_000_000, 0)
            .unwrap()
            .naive_utc();
        let unnamed = order.clone().for_order("", None).unwrap();
        assert_eq!((unnamed.order_id, unnamed.ordered_at), (None, None));
        let named = order
            .clone()
            .for_order("6F9619FF-8B86-D011-B42D-00C04FC964FF", Some(placed))
            .unwrap();
        assert_eq!(
            named.order_id.unwrap().as_str(),
            "6f9619ff-8b86-d011-b42d-00c04fc964ff"
        );
        assert_eq!(named.ordered_at, Some(placed));
        assert_eq!(
            field_of(order.for_order("order-1", None).unwrap_err()),
            "order_id"
        );
    }

    #[test]
    fn scalar_newtypes_check_their_ranges() {
        assert!(Price::parse("price", 0).is_ok());
        assert!(Price::parse("price", MAX_PRICE).is_ok());
        assert_eq!(field_of(Price::parse("price", -1).unwrap_err()), "price");
        assert!(Price::parse("price", MAX_PRICE + 1).is_err());
        assert!(StockUnits::parse("stock", 0).is_ok());
        assert!(StockUnits::parse("stock", -1).is_err());
        assert!(StockUnits::parse("stock", MAX_STOCK + 1).is_err());
        assert!(Quantity::parse("q", 0).is_err());
        assert_eq!(Quantity::parse("q", 1000).unwrap().get(), 1000);
        assert_eq!(
            ProductName::parse("name", "  Shoe ").unwrap().into_inner(),
            "Shoe"
        );
        assert!(ProductName::parse("name", "   ").is_err());
        assert!(ProductName::parse("name", &"x".repeat(201)).is_err());
        assert!(BrandName::parse("name", &"x".repeat(100)).is_ok());
        assert!(BrandName::parse("name", &"x".repeat(101)).is_err());
        assert!(BrandDescription::parse("description", "").is_ok());
        assert!(BrandDescription::parse("description", &"x".repeat(2001)).is_err());
    }

    #[test]
    fn stored_spellings_round_trip() {
        for status in [
            ProductStatus::OnSale,
            ProductStatus::Suspended,
            ProductStatus::Discontinued,
        ] {
            assert_eq!(ProductStatus::from_stored(status.as_str()).unwrap(), status);
        }
        for state in [
            ReservationState::Reserved,
            ReservationState::Confirmed,
            ReservationState::Released,
        ] {
            assert_eq!(
                ReservationState::from_stored(state.as_str()).unwrap(),
                state
            );
            let json = serde_json::to_string(&state).unwrap();
            assert_eq!(json, format!("\"{}\"", state.as_str()));
        }
        assert!(ProductStatus::from_stored("SOLD_OUT").is_err());
    }

    #[test]
    fn stock_moves_never_go_negative() {
        let s = stock(1, 5);
        let reserved = s.moved(StockMove::AvailableToReserved, 5).unwrap();
        assert_eq!((reserved.available, reserved.reserved), (0, 5));
        assert_eq!(s.moved(StockMove::AvailableToReserved, 6), None);
        let sold = reserved.moved(StockMove::ReservedToSold, 2).unwrap();
        assert_eq!((sold.available, sold.reserved, sold.sold), (0, 3, 2));
        let back = sold.moved(StockMove::SoldToAvailable, 2).unwrap();
        assert_eq!((back.available, back.reserved, back.sold), (2, 3, 0));
        let all_back = back.moved(StockMove::ReservedToAvailable, 3).unwrap();
        assert_eq!(all_back, s);
        assert_eq!(s.moved(StockMove::ReservedToSold, 1), None);
        assert_eq!(s.moved(StockMove::AvailableToReserved, -1), None);
        let topped = Stock {
            reserved: i64::MAX,
            ..s
        };
        assert_eq!(topped.moved(StockMove::AvailableToReserved, 1), None);
        assert_eq!(
            s.with_available(StockUnits::parse("available", 9).unwrap())
                .available,
            9
        );
    }

    #[test]
    fn move_bounds_agree_with_the_moves() {
        assert_eq!(StockMove::ReservedToSold.bounds(-1), None);
        assert_eq!(
            StockMove::AvailableToReserved.bounds(3),
            Some(MoveBounds {
                min_source: 3,
                max_target: i64::MAX - 3
            })
        );
        let steps = [
            StockMove::AvailableToReserved,
            StockMove::ReservedToSold,
            StockMove::ReservedToAvailable,
            StockMove::SoldToAvailable,
        ];
        for step in steps {
            for units in [0, 2, 3, 4, i64::MAX - 3, i64::MAX - 2, i64::MAX] {
                let s = Stock {
                    product_id: 1,
                    available: units,
                    reserved: units,
                    sold: units,
                };
                let bounds = step.bounds(3).unwrap();
                let admitted = units >= bounds.min_source && units <= bounds.max_target;
                let moved = s.moved(step, 3);
                assert_eq!(moved.is_some(), admitted, "{step:?} from {units}");
                if let Some(moved) = moved {
                    let total = |s: Stock| {
                        i128::from(s.available) + i128::from(s.reserved) + i128::from(s.sold)
                    };
                    assert_eq!(total(moved), total(s));
                }
            }
        }
        let short = stock(4, 2);
        let refusal = short.reserve_refusal("Shoe", 3);
        assert_eq!(reason_of(&refusal), reason::STOCK_INSUFFICIENT);
        assert!(refusal.to_string().contains("product 4"), "{refusal}");
        let held = short.held_move_refusal(StockMove::ReservedToSold, 1);
        assert_eq!(reason_of(&held), "INTERNAL");
    }

    #[test]
    fn plan_takes_every_line_with_its_snapshot() {
        let order = ReserveOrder::parse(SAGA, &[(2, 3), (1, 1)]).unwrap();
        let plan = plan_reservation(
            &order,
            &[stock(1, 1), stock(2, 10)],
            &[
                snapshot(2, ProductStatus::OnSale),
                snapshot(1, ProductStatus::OnSale),
            ],
        )
        .unwrap();
        assert_eq!(plan.len(), 2);
        assert_eq!(plan[0].line.product_id, 1);
        assert_eq!(plan[0].stock_after.available, 0);
        assert_eq!(plan[1].line.unit_price, 2_000);
        assert_eq!(plan[1].line.quantity, 3);
        assert_eq!(
            (plan[1].stock_after.available, plan[1].stock_after.reserved),
            (7, 3)
        );
    }

    #[test]
    fn plan_refuses_unknown_unsold_and_short_lines() {
        let order = ReserveOrder::parse(SAGA, &[(1, 1), (2, 3)]).unwrap();
        let on_sale = [
            snapshot(1, ProductStatus::OnSale),
            snapshot(2, ProductStatus::OnSale),
        ];
        let missing = plan_reservation(&order, &[stock(1, 9)], &on_sale[..1]).unwrap_err();
        assert_eq!(reason_of(&missing), "PRODUCT_NOT_FOUND");

        let suspended = [
            snapshot(1, ProductStatus::OnSale),
            snapshot(2, ProductStatus::Suspended),
        ];
        let unsold = plan_reservation(&order, &[stock(1, 9), stock(2, 9)], &suspended).unwrap_err();
        assert_eq!(reason_of(&unsold), reason::PRODUCT_NOT_ON_SALE);

        let short = plan_reservation(&order, &[stock(1, 9), stock(2, 2)], &on_sale).unwrap_err();
        assert_eq!(reason_of(&short), reason::STOCK_INSUFFICIENT);
        assert!(short.to_string().contains("product 2"), "{short}");
    }

    #[test]
    fn reservation_state_transitions() {
        let saga = SagaId::parse("saga_id", SAGA).unwrap();
        assert_eq!(
            ReservationState::Reserved.confirm(&saga).unwrap(),
            Some(StockMove::ReservedToSold)
        );
        assert_eq!(ReservationState::Confirmed.confirm(&saga).unwrap(), None);
        let refused = ReservationState::Released.confirm(&saga).unwrap_err();
        assert_eq!(reason_of(&refused), reason::RESERVATION_RELEASED);
        assert_eq!(
            ReservationState::Reserved.release(),
            Some(StockMove::ReservedToAvailable)
        );
        assert_eq!(
            ReservationState::Confirmed.release(),
            Some(StockMove::SoldToAvailable)
        );
        assert_eq!(ReservationState::Released.release(), None);
    }

    #[test]
    fn like_counts_stay_non_negative() {
        assert_eq!(like_count_after(0, 1), 1);
        assert_eq!(like_count_after(3, -1), 2);
        assert_eq!(like_count_after(0, -1), 0);
    }

    #[test]
    fn results_round_trip_through_the_barrier_json() {
        let outcome = ReleaseOutcome {
            saga_id: SAGA.to_owned(),
            released: true,
            previous_state: Some(ReservationState::Confirmed),
            lines: vec![ReservedLine {
                product_id: 1,
                quantity: 2,
                product_name: "Shoe".to_owned(),
                brand_id: 3,
                brand_name: "Brand".to_owned(),
                unit_price: 5_000,
            }],
        };
        let json = serde_json::to_string(&outcome).unwrap();
        assert_eq!(
            serde_json::from_str::<ReleaseOutcome>(&json).unwrap(),
            outcome
        );
        let reservation = Reservation {
            saga_id: SAGA.to_owned(),
            state: ReservationState::Reserved,
            lines: outcome.lines.clone(),
            created_at: commerce_platform::time::now(),
            updated_at: commerce_platform::time::now(),
        };
        let json = serde_json::to_string(&reservation).unwrap();
        assert_eq!(
            serde_json::from_str::<Reservation>(&json).unwrap(),
            reservation
        );
    }
}
