//! Row types of the product tables and their conversion to domain types.
//! Stored spellings are parsed here, so a corrupt row is an INTERNAL error,
//! never a panic.

use chrono::NaiveDateTime;
use commerce_platform::ServiceError;
use diesel::prelude::*;

use super::schema::{brands, product_stock, products, reservations};
use crate::domain::{
    Brand, Product, ProductSnapshot, ProductStatus, Reservation, ReservationState, ReservedLine,
    Stock,
};

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = brands, check_for_backend(diesel::mysql::Mysql))]
pub struct BrandRow {
    pub id: i64,
    pub name: String,
    pub description: String,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
}

impl From<BrandRow> for Brand {
    fn from(row: BrandRow) -> Self {
        Brand {
            id: row.id,
            name: row.name,
            description: row.description,
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}

/// The brand fields an update sets; `None` fields are left out of the SQL.
#[derive(Debug, AsChangeset)]
#[diesel(table_name = brands)]
pub struct BrandChangeset {
    pub name: Option<String>,
    pub description: Option<String>,
    pub updated_at: NaiveDateTime,
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = products, check_for_backend(diesel::mysql::Mysql))]
pub struct ProductRow {
    pub id: i64,
    pub brand_id: i64,
    pub name: String,
    pub price: i64,
    pub status: String,
    pub like_count: i64,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
}

/// The product fields an update sets; `None` fields are left out of the SQL.
#[derive(Debug, AsChangeset)]
#[diesel(table_name = products)]
pub struct ProductChangeset {
    pub name: Option<String>,
    pub price: Option<i64>,
    pub status: Option<&'static str>,
    pub updated_at: NaiveDateTime,
}

#[derive(Debug, Clone, Copy, Queryable, Selectable)]
#[diesel(table_name = product_stock, check_for_backend(diesel::mysql::Mysql))]
pub struct StockRow {
    pub product_id: i64,
    pub available: i64,
    pub reserved: i64,
    pub sold: i64,
}

impl From<StockRow> for Stock {
    fn from(row: StockRow) -> Self {
        Stock {
            product_id: row.product_id,
            available: row.available,
            reserved: row.reserved,
            sold: row.sold,
        }
    }
}

/// A product with its brand's name and its stock. Read through LEFT JOINs so
/// that MySQL drives list queries from `products` and walks a sort index;
/// foreign keys guarantee both parts exist.
pub type ProductViewRow = (ProductRow, Option<String>, Option<StockRow>);

/// `products ⟕ brands ⟕ product_stock`, for [`ProductViewRow`]s.
#[diesel::dsl::auto_type(no_type_alias)]
pub fn product_view() -> _ {
    products::table
        .left_join(brands::table)
        .left_join(product_stock::table)
}

/// The select clause of a [`ProductViewRow`].
pub type ProductViewColumns = (
    diesel::dsl::AsSelect<ProductRow, diesel::mysql::Mysql>,
    diesel::dsl::Nullable<brands::name>,
    diesel::dsl::AsSelect<Option<StockRow>, diesel::mysql::Mysql>,
);

/// The columns of a [`ProductViewRow`].
pub fn product_view_columns() -> ProductViewColumns {
    (
        ProductRow::as_select(),
        brands::name.nullable(),
        Option::<StockRow>::as_select(),
    )
}

pub fn product_from_view(
    (product, brand_name, stock): ProductViewRow,
) -> Result<Product, ServiceError> {
    let (Some(brand_name), Some(stock)) = (brand_name, stock) else {
        return Err(ServiceError::internal(format!(
            "product {} lacks its brand or stock row",
            product.id
        )));
    };
    Ok(Product {
        id: product.id,
        brand_id: product.brand_id,
        brand_name,
        name: product.name,
        price: product.price,
        status: ProductStatus::from_stored(&product.status)?,
        like_count: product.like_count,
        stock: stock.into(),
        created_at: product.created_at,
        updated_at: product.updated_at,
    })
}

/// `(product id, product name, brand id, brand name, price, status)`.
pub type SnapshotRow = (i64, String, i64, String, i64, String);

pub fn snapshot_from_row(
    (product_id, product_name, brand_id, brand_name, unit_price, status): SnapshotRow,
) -> Result<ProductSnapshot, ServiceError> {
    Ok(ProductSnapshot {
        product_id,
        product_name,
        brand_id,
        brand_name,
        unit_price,
        status: ProductStatus::from_stored(&status)?,
    })
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = reservations, check_for_backend(diesel::mysql::Mysql))]
pub struct ReservationRow {
    pub saga_id: String,
    pub state: String,
    /// The reserved lines as one JSON array, in product-id order.
    pub lines_json: String,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
}

impl ReservationRow {
    pub fn state(&self) -> Result<ReservationState, ServiceError> {
        ReservationState::from_stored(&self.state)
    }

    /// The reserved lines, in product-id order.
    pub fn lines(&self) -> Result<Vec<ReservedLine>, ServiceError> {
        let mut lines: Vec<ReservedLine> = serde_json::from_str(&self.lines_json)?;
        // Moved in this order, as every stock row lock is taken.
        lines.sort_by_key(|l| l.product_id);
        Ok(lines)
    }

    pub fn into_reservation(self) -> Result<Reservation, ServiceError> {
        Ok(Reservation {
            state: self.state()?,
            lines: self.lines()?,
            saga_id: self.saga_id,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}
