//! Test support shared by every crate's integration tests: each test gets its
//! own fresh databases on the real MariaDB/MySQL server, servers run on
//! ephemeral loopback ports, and a TCP proxy can cut a server off from its
//! database to stage an outage.

mod database;
pub mod metrics;
mod proxy;
mod routed;
mod server;
mod status;

pub use database::{TestDatabase, mysql_admin_url};
pub use proxy::TcpProxy;
pub use routed::{DEFAULT_CALLER, TestChannel};
pub use server::{TestServer, grpcurl, grpcurl_flags};
pub use status::{assert_status, bad_request_field, error_reason};
