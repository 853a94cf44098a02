//! End-to-end tests of the order saga over the whole mesh, every server a
//! real process with its own database: happy paths, rejections, crashes at
//! every step boundary, participants going down, several orchestrators,
//! concurrency, cancellation and the operators' grpcurl path.

#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

#[path = "e2e/harness.rs"]
mod harness;
#[path = "e2e/shop.rs"]
mod shop;
#[path = "e2e/happy.rs"]
mod happy;
