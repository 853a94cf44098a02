//! End-to-end tests of the order saga over the whole mesh, every server a
//! real process with its own database: happy paths, rejections, crashes at
//! every step boundary, participants going down, several orchestrators,
//! concurrency, cancellation and the operators' grpcurl path.

#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

#[path = "e2e/bff.rs"]
mod bff;
#[path = "e2e/bff_api.rs"]
mod bff_api;
#[path = "e2e/bff_console.rs"]
mod bff_console;
#[path = "e2e/bff_schema.rs"]
mod bff_schema;
#[path = "e2e/chaos.rs"]
mod chaos;
#[path = "e2e/collector.rs"]
mod collector;
#[path = "e2e/concurrency.rs"]
mod concurrency;
#[path = "e2e/crash.rs"]
mod crash;
#[path = "e2e/events.rs"]
mod events;
#[path = "e2e/failures.rs"]
mod failures;
#[path = "e2e/fuzz.rs"]
mod fuzz;
#[path = "e2e/happy.rs"]
mod happy;
#[path = "e2e/harness.rs"]
mod harness;
#[path = "e2e/invariants.rs"]
mod invariants;
#[path = "e2e/lifecycle.rs"]
mod lifecycle;
#[path = "e2e/metrics.rs"]
mod metrics;
#[path = "e2e/otlp_export.rs"]
mod otlp_export;
#[path = "e2e/outage.rs"]
mod outage;
#[path = "e2e/ranking.rs"]
mod ranking;
#[path = "e2e/reconcile.rs"]
mod reconcile;
#[path = "e2e/rejections.rs"]
mod rejections;
#[path = "e2e/shop.rs"]
mod shop;
#[path = "e2e/storm.rs"]
mod storm;
#[path = "e2e/trace_viewer.rs"]
mod trace_viewer;
#[path = "e2e/traces.rs"]
mod traces;
#[path = "e2e/trust.rs"]
mod trust;
