fn main() -> std::process::ExitCode {
    commerce_platform::server::main(coupon_service::SPEC, coupon_service::build)
}
