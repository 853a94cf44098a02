//! The product service through its real gRPC servers, against a real MariaDB:
//! each test spawns its own server on its own fresh database.

#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

#[path = "api/support.rs"]
mod support;

#[path = "api/catalogue.rs"]
mod catalogue;

#[path = "api/reservations.rs"]
mod reservations;

#[path = "api/concurrency.rs"]
mod concurrency;

#[path = "api/stock.rs"]
mod stock;

#[path = "api/operations.rs"]
mod operations;

#[path = "api/ranking.rs"]
mod ranking;

#[path = "api/catalogue_cache.rs"]
mod catalogue_cache;
