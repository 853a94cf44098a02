//! The baseline: the same orders done the way the seed write-ups started, as
//! one local MySQL transaction in one server. It locks the stock rows (in
//! product-id order), the user's coupon and point account with `SELECT ...
//! FOR UPDATE`, writes the order and commits: no saga, no network hop
//! between steps. It serves the orchestrator's own contract,
//! `commerce.order.v1.OrderService`, so one load generator drives both.
//!
//! Layers as in the services: `checkout` (the rules, pure), `store` (the
//! transaction), `orders` (its order rows and their wire form), `grpc`
//! (thin handlers), `seed` (filling, emptying and
//! summing the database for the benchmark).

mod checkout;
mod grpc;
mod orders;
mod schema;
mod seed;
mod store;
#[cfg(test)]
mod tests;

use commerce_platform::tls::{Callers, Rule};
use commerce_platform::{Application, ServerConfig, ServiceSpec};
use diesel_migrations::{EmbeddedMigrations, embed_migrations};

#[cfg(test)]
use seed::BaselineTotals;
pub use seed::{seed, totals};

pub static MIGRATIONS: EmbeddedMigrations = embed_migrations!("../migrations/bench_baseline");

pub const SPEC: ServiceSpec = ServiceSpec {
    name: "baseline",
    default_listen: "127.0.0.1:50059",
    default_database_url: "mysql://commerce:commerce@127.0.0.1:3306/commerce_bench_baseline",
    migrations: &MIGRATIONS,
    saga_participant: false,
};

const OPERATOR: Callers = Callers::Only(&["operator"]);

/// Who may call the baseline when it serves TLS: its orders the callers of
/// the orchestrator's user-facing order calls (the BFF and operators), so
/// that both systems of a comparison authorize the same callers; health any
/// peer, reflection operators, as every server of the mesh.
#[rustfmt::skip]
const POLICY: &[Rule] = &[
    Rule { method: "/grpc.health.v1.Health/",                     callers: Callers::AnyPeer },
    Rule { method: "/grpc.reflection.v1.ServerReflection/",       callers: OPERATOR },
    Rule { method: "/grpc.reflection.v1alpha.ServerReflection/",  callers: OPERATOR },
    Rule { method: "/commerce.order.v1.OrderService/",            callers: Callers::Only(&["bff", "operator"]) },
];

/// Migrates, binds and wires the baseline server; run it with
/// [`Application::run_until_stopped`]. The database must exist ([`seed`]
/// and [`reset`] create it when it does not).
pub async fn build(config: ServerConfig) -> anyhow::Result<Application> {
    let app = Application::build(&SPEC, config).await?.with_policy(POLICY);
    let store = store::BaselineStore::new(app.database().clone());
    Ok(app.add_service(grpc::BaselineOrderApi::new(store).into_server()))
}
