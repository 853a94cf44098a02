//! `commerce-mesh <service> [flags]`: runs any server of the mesh from one
//! binary (`product`, `point`, `coupon` or `orchestrator`), with the flags of
//! that server. The end-to-end tests start and kill it as separate
//! processes; operators may use it instead of the four binaries.

use std::ffi::OsString;
use std::process::ExitCode;

const USAGE: &str = "usage: commerce-mesh <product|point|coupon|orchestrator> [flags] (--help for flags)\n       commerce-mesh events tail [--last N] [--count N] [--redis-url URL] [--redis-prefix P]\n       commerce-mesh certs <dir>";

fn main() -> ExitCode {
    let mut args: Vec<OsString> = std::env::args_os().collect();
    if args.len() < 2 {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    }
    if args.get(1).and_then(|a| a.to_str()) == Some("certs") {
        return commerce_e2e::certs::run(&args[2..]);
    }
    if args.get(1).and_then(|a| a.to_str()) == Some("events") {
        if args.get(2).and_then(|a| a.to_str()) != Some("tail") {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
        args.drain(1..3);
        return commerce_e2e::tail::run(args);
    }
    let service = args.remove(1);
    service
        .to_str()
        .and_then(|service| commerce_e2e::run_server(service, args))
        .unwrap_or_else(|| {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        })
}
