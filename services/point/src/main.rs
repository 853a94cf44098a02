fn main() -> std::process::ExitCode {
    commerce_platform::server::main(point_service::SPEC, point_service::build)
}
