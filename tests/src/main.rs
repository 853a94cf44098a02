//! `commerce-mesh <service> [flags]`: runs any server of the mesh from one
//! binary (`product`, `point`, `coupon` or `orchestrator`), with the flags of
//! that server. The end-to-end tests start and kill it as separate
//! processes; operators may use it instead of the four binaries.

use std::ffi::OsString;
use std::process::ExitCode;

use commerce_platform::config::NoExtraArgs;
use commerce_platform::server::run_cli;

const USAGE: &str =
    "usage: commerce-mesh <product|point|coupon|orchestrator> [flags] (--help for flags)";

fn main() -> ExitCode {
    let mut args: Vec<OsString> = std::env::args_os().collect();
    if args.len() < 2 {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    }
    let service = args.remove(1);
    match service.to_str() {
        Some("product") => {
            run_cli::<NoExtraArgs, _, _>(product_service::SPEC, args, |config, _| {
                product_service::build(config)
            })
        }
        Some("point") => run_cli::<NoExtraArgs, _, _>(point_service::SPEC, args, |config, _| {
            point_service::build(config)
        }),
        Some("coupon") => run_cli::<NoExtraArgs, _, _>(coupon_service::SPEC, args, |config, _| {
            coupon_service::build(config)
        }),
        Some("orchestrator") => run_cli(order_orchestrator::SPEC, args, order_orchestrator::build),
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}
