use std::process::ExitCode;
use std::time::Duration;

use clap::Parser as _;
use commerce_bff::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("commerce-bff: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    if let Some(Command::Token {
        sub,
        role,
        ttl_secs,
    }) = &cli.command
    {
        let token =
            cli.args
                .authenticator()?
                .mint(sub, role.as_deref(), Duration::from_secs(*ttl_secs))?;
        println!("{token}");
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    // On the runtime, where the span exporter's channel runs; dropped (and
    // flushed) before it.
    let _telemetry = {
        let _on_runtime = runtime.enter();
        commerce_platform::telemetry::init(cli.args.log_format, "bff")
    };
    let config = cli.args.resolve()?;
    if matches!(config.tls, commerce_bff::mesh::MeshTls::Plaintext) {
        tracing::warn!("--insecure-plaintext: calling the mesh without TLS or identity");
    }
    runtime.block_on(async move {
        let app = commerce_bff::app(&config)?;
        let listener = tokio::net::TcpListener::bind(config.listen).await?;
        if let Some(addr) = config.metrics_listen {
            let endpoint = commerce_platform::metrics::MetricsEndpoint::bind(addr).await?;
            commerce_bff::metrics::describe();
            endpoint.spawn(|| {});
        }
        tracing::info!(listen = %config.listen, "BFF serving REST, /openapi.json and /console");
        commerce_bff::serve(listener, app, shutdown_signal()).await?;
        tracing::info!("BFF stopped");
        Ok(())
    })
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}
