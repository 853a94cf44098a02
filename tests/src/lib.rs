//! Runs the mesh as processes: any server by name (for the `commerce-mesh`
//! binary and for tools, like the benchmark, that re-execute themselves),
//! and [`node::Node`], one server as a child process.

pub mod certs;
pub mod node;
pub mod tail;

use std::ffi::OsString;
use std::process::ExitCode;

use commerce_platform::config::NoExtraArgs;
use commerce_platform::server::run_cli;

/// The servers of the mesh.
pub const SERVICES: [&str; 4] = ["product", "point", "coupon", "orchestrator"];

/// Runs server `service` with command line `args` (the first is the program
/// name); `None` when no server has that name.
pub fn run_server(service: &str, args: Vec<OsString>) -> Option<ExitCode> {
    Some(match service {
        "product" => run_cli(
            product_service::SPEC,
            args,
            |config, args: product_service::ranking::RankingArgs| async move {
                product_service::build_with(config, args.settings()?).await
            },
        ),
        "point" => run_cli::<NoExtraArgs, _, _>(point_service::SPEC, args, |config, _| {
            point_service::build(config)
        }),
        "coupon" => run_cli(coupon_service::SPEC, args, coupon_service::build_with),
        "orchestrator" => run_cli(order_orchestrator::SPEC, args, order_orchestrator::build),
        _ => return None,
    })
}
