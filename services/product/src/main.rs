fn main() -> std::process::ExitCode {
    commerce_platform::server::run_cli(
        product_service::SPEC,
        std::env::args_os(),
        |config, args: product_service::ranking::RankingArgs| async move {
            product_service::build_with(config, args.settings()?).await
        },
    )
}
