//! Shared plumbing of the commerce mesh servers.
//!
//! Every participant service (product, point, coupon) and the orchestrator
//! repeat the same chores: typed configuration, tracing, a MySQL pool with
//! embedded migrations, the saga barrier, one error type mapped to
//! `tonic::Status`, and a gRPC server with health, reflection, timeouts,
//! a concurrency limit and graceful shutdown. They live here, once.

pub mod barrier;
mod barrier_admin;
pub mod config;
pub mod db;
pub mod error;
pub mod metrics;
pub mod migrate;
pub mod paging;
pub mod rate_limit;
pub mod redis;
pub mod server;
pub mod telemetry;
pub mod time;
pub mod tls;
pub mod trace_context;
pub mod validate;

pub use config::{ServerArgs, ServerConfig, ServiceSpec};
pub use db::{Database, Work};
pub use error::ServiceError;
pub use redis::{Redis, RedisDown, RedisSettings};
pub use server::Application;
pub use validate::{SagaCall, SagaId, UserId};
