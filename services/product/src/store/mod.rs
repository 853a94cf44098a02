//! The product service's narrow storage interface: one [`ProductStore`] with
//! noun_verb methods, each write one transaction (run again when it loses a
//! deadlock). Domain rules come from [`crate::domain`]; SQL stays here.
//!
//! Locking: stock rows are locked `FOR UPDATE` in product-id order, always
//! with one statement, so reservations never deadlock one another. A saga's
//! reservation row is locked before its stock rows. Likes lock their product
//! row before touching `product_likes`, so concurrent likes of one product
//! queue instead of deadlocking on the foreign-key check.

mod catalogue;
mod models;
mod ranking;
mod reservations;
pub mod schema;

use commerce_platform::Database;

pub use reservations::{CONFIRM_RESERVATION, RESERVE_STOCK, STOCK_PAIR};

/// Storage of brands, products, stock, likes and reservations.
#[derive(Debug, Clone)]
pub struct ProductStore {
    db: Database,
}

impl ProductStore {
    pub fn new(db: Database) -> Self {
        Self { db }
    }
}
