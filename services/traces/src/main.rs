use std::process::ExitCode;
use std::time::Duration;

use clap::Parser as _;
use commerce_traces::show::{self, Client};
use commerce_traces::{Cli, Command, ServeArgs, ShowArgs, Viewer};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|runtime| match cli.command {
            Command::Serve(args) => serve(&runtime, &args),
            Command::Show(args) => runtime.block_on(print(&args)),
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("commerce-traces: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(runtime: &tokio::runtime::Runtime, args: &ServeArgs) -> anyhow::Result<()> {
    // Logs only: the viewer makes no spans of its own to export.
    let _telemetry = {
        let _on_runtime = runtime.enter();
        commerce_platform::telemetry::init(args.log_format, "traces")
    };
    runtime.block_on(async {
        let viewer = Viewer::bind(args).await?;
        tracing::info!(
            otlp_grpc = %viewer.otlp_addr(),
            http = %format!("http://{}", viewer.http_addr()),
            max_spans = args.max_spans,
            "trace viewer receiving OTLP/gRPC, and OTLP/HTTP at /v1/traces"
        );
        viewer
            .run_until_stopped(commerce_platform::server::shutdown_signal())
            .await?;
        tracing::info!("trace viewer stopped");
        Ok(())
    })
}

async fn print(args: &ShowArgs) -> anyhow::Result<()> {
    let target = show::target(args.trace_id.as_deref(), args.saga_id.as_deref())?;
    let traces = Client::new(&args.from)
        .wait_for(
            &target,
            Duration::from_secs(args.wait_secs),
            Duration::from_millis(args.settle_ms),
        )
        .await?;
    print!("{}", show::text(&traces));
    Ok(())
}
