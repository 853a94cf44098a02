//! `commerce-bench serve dtm`: the dtmrs TC embedded as a library, the way
//! the `dtmrs` binary wires it (store, leased driver, inline driving of
//! submitted sagas, the `dtmrs.v1.Tc` gRPC API), plus gRPC health for the
//! harness and the HTTP branch endpoints of [`super::adapter`].
//!
//! Transport as the mesh's servers take it: `--tls-dir` (the directory of
//! `commerce-mesh certs`) or `--insecure-plaintext`. With TLS, dtm stands
//! where the orchestrator stands: its gRPC API serves mutual TLS with the
//! orchestrator's certificate (any certificate of the mesh's CA may call
//! it: dtmrs's API has no policy table of ours), and the branch endpoints
//! present that certificate to the participants, whose saga steps only the
//! orchestrator may call.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use commerce_platform::tls::TlsFiles;
use dtmrs::Store;
use dtmrs::server::api::Api;
use dtmrs::server::driver::Driver;
use dtmrs::server::grpc::server::TcService;

use super::adapter::{self, Participants};

#[derive(Debug, Parser)]
struct ServeArgs {
    /// gRPC address of the TC API and of health.
    #[arg(long)]
    listen: SocketAddr,
    /// The TC's MySQL store (`mysql://.../<db>`); the tables are created.
    #[arg(long)]
    database_url: String,
    /// HTTP address of the branch endpoints.
    #[arg(long)]
    adapter_listen: SocketAddr,
    #[arg(long)]
    product_addr: String,
    #[arg(long)]
    point_addr: String,
    #[arg(long)]
    coupon_addr: String,
    /// This instance's lease owner name.
    #[arg(long)]
    owner: String,
    /// Mutual TLS with the orchestrator's files of this directory
    /// (`ca.pem`, `orchestrator.pem`, `orchestrator.key`). Required unless
    /// --insecure-plaintext.
    #[arg(long, required_unless_present = "insecure_plaintext")]
    tls_dir: Option<PathBuf>,
    /// Plaintext: the TC's API and the calls to the participants.
    #[arg(long, conflicts_with = "tls_dir")]
    insecure_plaintext: bool,
}

/// The identity dtm calls the participants as and serves its API as: the
/// orchestrator's, whose place it takes.
const IDENTITY: &str = "orchestrator";

/// Runs the dtm process until it is killed.
pub fn serve(argv: Vec<OsString>) -> ExitCode {
    let args = match ServeArgs::try_parse_from(argv) {
        Ok(args) => args,
        Err(error) => {
            let _ = error.print();
            return ExitCode::from(2);
        }
    };
    let _telemetry =
        commerce_platform::telemetry::init(commerce_platform::telemetry::LogFormat::Human, "dtm");
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("dtm failed: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: ServeArgs) -> anyhow::Result<()> {
    // As the `dtmrs` binary does: the store (its tables created), a driver
    // configured from DTMRS_* variables whose workers lease due sagas, and
    // inline driving of each submitted saga by the instance that took it.
    let store = Store::open(&args.database_url).await?;
    let driver = Driver::from_env(store.clone(), args.owner.clone());
    let tick_ms = std::env::var("DTMRS_TICK_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|v: &u64| *v > 0)
        .unwrap_or(1000);
    tracing::warn!(
        owner = %args.owner,
        lease_secs = driver.lease,
        workers = driver.workers,
        retry_initial_secs = driver.retry.initial,
        tick_ms,
        "dtmrs TC starting"
    );
    tokio::spawn(driver.clone().run_forever(Duration::from_millis(tick_ms)));
    let api = Api::new(store).with_inline_driver(driver);

    let tls = args
        .tls_dir
        .as_deref()
        .map(|dir| TlsFiles::in_dir(dir, IDENTITY));
    let participants = Participants::connect(
        &args.product_addr,
        &args.point_addr,
        &args.coupon_addr,
        tls.as_ref(),
    )?;
    let listener = tokio::net::TcpListener::bind(args.adapter_listen).await?;
    let branches =
        tokio::spawn(async move { axum::serve(listener, adapter::router(participants)).await });

    let (_health, health_service) = tonic_health::server::health_reporter();
    let mut builder = tonic::transport::Server::builder();
    if let Some(files) = &tls {
        builder = builder
            .tls_config(files.server_config()?)
            .context("configuring TLS")?;
    }
    let grpc = builder
        .add_service(health_service)
        .add_service(TcService::new(api).into_server())
        .serve(args.listen);
    tokio::select! {
        served = grpc => served?,
        served = branches => served??,
    }
    Ok(())
}
