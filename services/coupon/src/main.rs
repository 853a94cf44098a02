fn main() -> std::process::ExitCode {
    commerce_platform::server::run_cli(
        coupon_service::SPEC,
        std::env::args_os(),
        coupon_service::build_with,
    )
}
