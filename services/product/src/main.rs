fn main() -> std::process::ExitCode {
    commerce_platform::server::main(product_service::SPEC, product_service::build)
}
