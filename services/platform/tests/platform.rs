//! Integration tests of the shared plumbing against a real MariaDB and real
//! gRPC over loopback. One test binary; one module per concern.

#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

#[path = "platform/barrier.rs"]
mod barrier;
#[path = "platform/cancel.rs"]
mod cancel;
#[path = "platform/metrics.rs"]
mod metrics;
#[path = "platform/server.rs"]
mod server;
