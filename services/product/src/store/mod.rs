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
pub mod catalogue_cache;
mod models;
mod ranking;
mod reservations;
pub mod schema;

use commerce_platform::Database;

use self::catalogue_cache::CatalogueCache;

pub use reservations::{CONFIRM_RESERVATION, RESERVE_STOCK, STOCK_PAIR};

/// Storage of brands, products, stock, likes and reservations.
#[derive(Debug, Clone)]
pub struct ProductStore {
    db: Database,
    /// GetProduct / ListProducts read through it; catalogue writes
    /// invalidate it. Never used by the reservation path.
    catalogue_cache: CatalogueCache,
}

impl ProductStore {
    /// A store without a catalogue cache (every read from MySQL).
    pub fn new(db: Database) -> Self {
        Self {
            db,
            catalogue_cache: CatalogueCache::off(),
        }
    }

    pub fn with_catalogue_cache(self, catalogue_cache: CatalogueCache) -> Self {
        Self {
            catalogue_cache,
            ..self
        }
    }
}
