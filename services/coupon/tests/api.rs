//! The coupon service through its real gRPC servers on loopback, each test
//! with its own MariaDB database: templates, first-come issuance, quotes, the
//! `use_coupon` / `restore_coupon` saga pair, concurrency, an outage, and
//! reflection through grpcurl.

#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

#[path = "api/support.rs"]
mod support;

#[path = "api/templates.rs"]
mod templates;

#[path = "api/issue.rs"]
mod issue;

#[path = "api/quote.rs"]
mod quote;

#[path = "api/saga.rs"]
mod saga;

#[path = "api/operations.rs"]
mod operations;

#[path = "api/gate.rs"]
mod gate;
