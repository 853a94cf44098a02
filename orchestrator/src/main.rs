fn main() -> std::process::ExitCode {
    commerce_platform::server::run_cli(
        order_orchestrator::SPEC,
        std::env::args_os(),
        order_orchestrator::build,
    )
}
