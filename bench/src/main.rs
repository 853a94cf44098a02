//! `commerce-bench`: the benchmark harness of the mesh.
//!
//! `commerce-bench run` starts the four servers of the mesh and the
//! one-transaction baseline as separate processes (re-executing itself as
//! `commerce-bench serve <server>`), each on a fresh database of the local
//! MariaDB/MySQL and under a Redis key prefix of the run's own, seeds a
//! shop, drives `PlaceOrder` at fixed concurrency levels against both
//! systems pair by pair (with the order event outbox's lag), runs the
//! hot-product, flash-coupon (with and without the Redis gate), catalogue
//! (with and without the Redis cache) and recovery scenarios, writes
//! `report.md`, `report.json` and charts to `--out`, and deletes the run's
//! Redis keys.
//!
//! Every system serves mutual TLS with certificates the run makes in
//! `<out>/certs`, and the generator calls as the identity each method's
//! policy expects (see `mesh::Caller`); `--transport plaintext` runs without,
//! and `--transport both` runs the uniform scenario once more in plaintext
//! to show what TLS costs.

mod baseline;
mod dtm;
mod fast_paths;
mod keyspace;
mod load;
mod mesh;
mod metrics;
mod model;
mod outbox;
mod reconcile;
mod report;
mod scenarios;
mod seed;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use commerce_platform::config::NoExtraArgs;

use crate::keyspace::RunRedis;
use crate::mesh::{Databases, Systems};
use crate::model::{Report, Transport};
use crate::scenarios::Plan;
use crate::seed::ShopSize;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Benchmark of the order saga mesh against a one-transaction baseline"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the benchmark and writes the report.
    Run(RunArgs),
    /// Runs one server (used by `run` to start the systems as processes).
    Serve {
        /// product, point, coupon, orchestrator, baseline or dtm.
        server: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
}

#[derive(Debug, Clone, clap::Args)]
struct RunArgs {
    /// Where the report goes.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// MySQL server URL of an account that may create the run's databases.
    #[arg(
        long,
        env = "BENCH_MYSQL_URL",
        default_value = "mysql://commerce:commerce@127.0.0.1:3306"
    )]
    mysql_url: String,
    /// Prefix of the run's databases (`<prefix>_<server>`), dropped and
    /// created anew.
    #[arg(long, default_value = "commerce_bench")]
    db_prefix: String,
    /// Redis of the servers (the harness reads the order event stream
    /// there); every key of the run is under `bench-<run id>`, deleted at
    /// the end.
    #[arg(
        long,
        env = "BENCH_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    redis_url: String,
    /// Concurrency levels (clients in flight).
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 8, 32, 128])]
    levels: Vec<usize>,
    /// Orders per level and system.
    #[arg(long, default_value_t = 2_000)]
    orders: usize,
    /// Scenarios to run.
    #[arg(long, value_delimiter = ',', default_values_t = ["uniform".to_owned(), "instances".to_owned(), "hot_product".to_owned(), "flash_coupon".to_owned(), "catalogue".to_owned(), "recovery".to_owned()])]
    scenarios: Vec<String>,
    /// A tiny run of every scenario (for the test suite): no figure means
    /// anything, every code path runs.
    #[arg(long)]
    smoke: bool,
    /// How the systems' gRPC calls travel: `tls` (mutual TLS, each caller
    /// presenting its certificate, as deployed), `plaintext`
    /// (`--insecure-plaintext`), or `both`: every scenario over TLS, then the
    /// uniform scenario again in plaintext, on fresh databases and
    /// processes, for the report's "What TLS costs".
    #[arg(long, value_enum, default_value_t = TransportChoice::Tls)]
    transport: TransportChoice,
}

/// `--transport`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum TransportChoice {
    Tls,
    Plaintext,
    Both,
}

impl TransportChoice {
    /// The transport of every scenario.
    fn main(self) -> Transport {
        match self {
            Self::Tls | Self::Both => Transport::Tls,
            Self::Plaintext => Transport::Plaintext,
        }
    }

    /// For the report's header.
    fn describe(self) -> String {
        const TLS: &str =
            "mutual TLS: every gRPC call with the caller's certificate, every method authorized";
        match self {
            Self::Tls => TLS.to_owned(),
            Self::Plaintext => "plaintext (--insecure-plaintext): no TLS, no identities".to_owned(),
            Self::Both => {
                format!("{TLS}; then the uniform scenario again in plaintext (What TLS costs)")
            }
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { server, args } => {
            let mut argv = vec![OsString::from(format!("commerce-bench serve {server}"))];
            argv.extend(args);
            if server == "dtm" {
                return dtm::server::serve(argv);
            }
            if server == "baseline" {
                return commerce_platform::server::run_cli::<NoExtraArgs, _, _>(
                    baseline::SPEC,
                    argv,
                    |config, _| baseline::build(config),
                );
            }
            commerce_e2e::run_server(&server, argv).unwrap_or_else(|| {
                eprintln!("unknown server {server}");
                ExitCode::from(2)
            })
        }
        Command::Run(args) => {
            let _telemetry = commerce_platform::telemetry::init(
                commerce_platform::telemetry::LogFormat::Human,
                "commerce-bench",
            );
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
                    eprintln!("benchmark failed: {error:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn plan(args: &RunArgs) -> Plan {
    if args.smoke {
        return Plan {
            levels: vec![1, 4],
            orders_per_level: 12,
            shop: ShopSize {
                products: 10,
                stock_per_product: 1_000,
                users: 10,
                points_per_user: 10_000_000,
                coupons: 10,
            },
            hot_stock: 5,
            hot_buyers: 20,
            flash_coupons: 5,
            flash_users: 40,
            catalogue_reads: 40,
            recovery_sagas: 20,
            instance_counts: vec![1, 2],
            instance_levels: vec![4],
        };
    }
    let orders = args.orders;
    let total = orders * args.levels.len();
    Plan {
        levels: args.levels.clone(),
        orders_per_level: orders,
        shop: ShopSize {
            products: 1_000,
            stock_per_product: 1_000_000,
            users: 1_000,
            points_per_user: 50_000_000,
            coupons: total.div_ceil(3),
        },
        hot_stock: 100,
        hot_buyers: 1_000,
        flash_coupons: 100,
        flash_users: 10_000,
        catalogue_reads: orders * 5,
        recovery_sagas: 10_000,
        instance_counts: vec![1, 2, 4],
        instance_levels: vec![32],
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let plan = plan(&args);
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let databases = Databases::new(&args.mysql_url, &args.db_prefix);
    let redis = RunRedis::new(&args.redis_url);
    let mut report = Report {
        run: metrics::run_info(databases.server_url(), command).await,
        ..Report::default()
    };
    report.run.redis_prefix = redis.prefix.clone();
    report.run.transport = args.transport.describe();
    tracing::info!(prefix = %redis.prefix, "the run's Redis keys");
    let run = Run {
        args: &args,
        plan: &plan,
        databases: &databases,
        redis: &redis,
    };
    run.pass(args.transport.main(), &args.scenarios, "logs", &mut report)
        .await?;
    if args.transport == TransportChoice::Both {
        // Only its levels and its scenarios' findings (reconciliation
        // included) are kept; the outbox's lag is the first pass's.
        let mut plaintext = Report::default();
        let uniform = ["uniform".to_owned()];
        run.pass(
            Transport::Plaintext,
            &uniform,
            "logs/plaintext",
            &mut plaintext,
        )
        .await?;
        report.plaintext_levels = plaintext.levels;
        report
            .scenarios
            .extend(plaintext.scenarios.into_iter().map(|mut scenario| {
                scenario.name = format!("{} (plaintext)", scenario.name);
                scenario
            }));
    }
    let written = report::write(&report, &args.out)?;
    for path in written {
        println!("{}", path.display());
    }
    // Any violated invariant or failed reconciliation fails the run (the
    // report, written above, has the details).
    let failed: Vec<String> = report
        .scenarios
        .iter()
        .flat_map(|s| {
            s.checks
                .iter()
                .filter(|(_, held)| !held)
                .map(move |(check, _)| format!("{}: {check}", s.name))
        })
        .collect();
    if !failed.is_empty() {
        anyhow::bail!(
            "{} check(s) failed (report in {}):\n{}",
            failed.len(),
            args.out.display(),
            failed.join("\n")
        );
    }
    if args.smoke {
        databases.drop_all().await?;
    }
    Ok(())
}

/// What every pass of a run shares.
struct Run<'a> {
    args: &'a RunArgs,
    plan: &'a Plan,
    databases: &'a Databases,
    redis: &'a RunRedis,
}

impl Run<'_> {
    /// One pass over `transport`: the databases created anew, the systems
    /// started (logging to `<out>/<logs>`), `scenarios` run into `report`,
    /// the systems stopped and the run's Redis keys deleted.
    async fn pass(
        &self,
        transport: Transport,
        scenarios: &[String],
        logs: &str,
        report: &mut Report,
    ) -> anyhow::Result<()> {
        self.databases.recreate().await?;
        let log_dir = self.args.out.join(logs);
        std::fs::create_dir_all(&log_dir)?;
        let certs = match transport {
            Transport::Tls => {
                let dir = self.args.out.join("certs");
                mesh::ensure_certs(&dir)?;
                Some(dir)
            }
            Transport::Plaintext => None,
        };
        tracing::info!(transport = transport.label(), "starting the systems");
        let mut systems = Systems::start(
            self.databases,
            &log_dir,
            self.redis.clone(),
            certs.as_deref(),
        )
        .await?;
        let outcome =
            scenarios_run(&mut systems, self.databases, self.plan, scenarios, report).await;
        systems.stop().await;
        // Best effort: a Redis that is gone by now leaves keys behind, not a
        // failed run.
        match self.redis.delete_keys().await {
            Ok(deleted) => {
                tracing::info!(deleted, prefix = %self.redis.prefix, "the run's Redis keys deleted")
            }
            Err(error) => {
                tracing::warn!(%error, prefix = %self.redis.prefix, "the run's Redis keys not all deleted")
            }
        }
        outcome
    }
}

async fn scenarios_run(
    systems: &mut Systems,
    databases: &Databases,
    plan: &Plan,
    scenarios: &[String],
    report: &mut Report,
) -> anyhow::Result<()> {
    let server_url = databases.server_url().to_owned();
    let baseline_url = databases.url("baseline");
    let wanted = |name: &str| scenarios.iter().any(|s| s == name);
    if wanted("uniform") {
        tracing::info!("scenario uniform");
        let uniform = scenarios::uniform(systems, &server_url, &baseline_url, plan).await?;
        report.levels.extend(uniform.levels);
        report.scenarios.extend(uniform.scenarios);
        report.outbox_lag.extend(uniform.outbox_lag);
    }
    if wanted("instances") {
        tracing::info!("scenario instances");
        let (levels, reconciled) = scenarios::instances(systems, &server_url, plan).await?;
        report.levels.extend(levels);
        report.scenarios.push(reconciled);
    }
    if wanted("hot_product") {
        tracing::info!("scenario hot_product");
        let (levels, result) =
            scenarios::hot_product(systems, &server_url, &baseline_url, plan).await?;
        report.levels.extend(levels);
        report.scenarios.push(result);
    }
    if wanted("flash_coupon") {
        tracing::info!("scenario flash_coupon");
        let (result, comparison) = fast_paths::flash_coupon(systems, &server_url, plan).await?;
        report.scenarios.push(result);
        report.fast_paths.push(comparison);
    }
    if wanted("catalogue") {
        tracing::info!("scenario catalogue");
        let (result, comparison) = fast_paths::catalogue(systems, &server_url, plan).await?;
        report.scenarios.push(result);
        report.fast_paths.push(comparison);
    }
    if wanted("recovery") {
        tracing::info!("scenario recovery");
        report
            .scenarios
            .push(scenarios::recovery(systems, plan).await?);
    }
    Ok(())
}
