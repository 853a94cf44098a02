//! Server bootstrap shared by every binary: migrations, pool, gRPC health and
//! reflection (v1 and v1alpha, for grpcurl 1.8), request timeouts, a global
//! concurrency limit, request tracing and graceful shutdown.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use tokio::net::TcpListener;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::service::RoutesBuilder;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tower::Service;
use tower::limit::GlobalConcurrencyLimitLayer;
use tower::util::option_layer;
use tower_http::trace::TraceLayer;

use crate::barrier_admin::BarrierAdmin;
use crate::config::{Cli, Command, NoExtraArgs, ServerConfig, ServiceSpec};
use crate::db::Database;
use crate::metrics::{GrpcMetricsLayer, MetricsEndpoint};
use crate::migrate;
use crate::rate_limit::RateLimitLayer;
use crate::tls::{AuthorizeLayer, Rule};

/// How often the database is probed to keep gRPC health truthful.
const HEALTH_PROBE_INTERVAL: Duration = Duration::from_secs(5);

/// A server that is bound and migrated, ready to run.
pub struct Application {
    config: ServerConfig,
    listener: TcpListener,
    database: Database,
    routes: RoutesBuilder,
    service_names: Vec<&'static str>,
    /// Service-specific jobs, stopped with the server.
    jobs: Vec<tokio::task::JoinHandle<()>>,
    /// Who may call which method, enforced when serving TLS (see
    /// `crate::tls::policy`).
    policy: Option<&'static [Rule]>,
    /// The `/metrics` endpoint, when `--metrics-listen` asks for one.
    metrics: Option<MetricsEndpoint>,
}

impl Application {
    /// Applies pending migrations, builds the pool and binds the listener
    /// (port 0 picks a free port; see [`Application::local_addr`]).
    pub async fn build(spec: &ServiceSpec, config: ServerConfig) -> anyhow::Result<Self> {
        migrate::run(
            &config.database.url,
            &spec.migration_sets(),
            config.db_startup_wait,
        )
        .await?;

        let database = Database::new(&config.database);
        let listener = TcpListener::bind(config.listen).await?;
        let metrics = match config.metrics_listen {
            Some(addr) => Some(MetricsEndpoint::bind(addr).await?),
            None => None,
        };
        let mut app = Self {
            config,
            listener,
            database,
            routes: RoutesBuilder::default(),
            service_names: Vec::new(),
            jobs: Vec::new(),
            policy: crate::tls::policy::for_server(spec.name),
            metrics,
        };
        if spec.saga_participant {
            let admin = BarrierAdmin::new(app.database.clone()).into_server();
            app = app.add_service(admin);
        }
        Ok(app)
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or(self.config.listen)
    }

    /// Where `/metrics` is served, if it is.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(MetricsEndpoint::local_addr)
    }

    pub fn database(&self) -> &Database {
        &self.database
    }

    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// Registers a gRPC service; its name is reported by health checks.
    pub fn add_service<S>(mut self, service: S) -> Self
    where
        S: Service<http::Request<Body>, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Response: axum::response::IntoResponse,
        S::Future: Send + 'static,
    {
        self.service_names.push(S::NAME);
        self.routes.add_service(service);
        self
    }

    /// Replaces the server's policy table (by default its own in
    /// `crate::tls::policy`).
    pub fn with_policy(mut self, policy: &'static [Rule]) -> Self {
        self.policy = Some(policy);
        self
    }

    /// Runs a job of the service (a recovery loop, a relay) for as long as
    /// the server runs.
    pub fn spawn_job(mut self, job: impl Future<Output = ()> + Send + 'static) -> Self {
        self.jobs.push(tokio::spawn(job));
        self
    }

    /// Serves until `shutdown` completes, then drains in-flight requests.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> anyhow::Result<()> {
        let Self {
            config,
            listener,
            database,
            mut routes,
            service_names,
            jobs,
            policy,
            metrics,
        } = self;
        let (builder, authorize) = transport_security(&config, policy, &service_names)?;
        // tonic-health's service, decoded with the mesh's codec (see
        // commerce_proto::health).
        let (health, health_service) = commerce_proto::health::health_reporter();
        // Every service is known to health checks (and Watch) from the start;
        // the probe below decides whether it is serving.
        report_health(&health, &service_names, ServingStatus::NotServing).await;
        routes.add_service(health_service);
        routes.add_service(reflection().build_v1()?);
        routes.add_service(reflection().build_v1alpha()?);

        let background = tokio::spawn(background_jobs(
            database.clone(),
            health.clone(),
            service_names.clone(),
            config
                .barrier_retention
                .filter(|_| service_names.contains(&BarrierAdmin::SERVICE_NAME)),
        ));

        let metrics = metrics.map(|endpoint| {
            let database = database.clone();
            endpoint.spawn(move || database.record_pool_metrics())
        });
        tracing::info!(service = config.service, addr = %listener.local_addr()?, "serving");
        let served = builder
            .timeout(config.request_timeout)
            // Outermost: every answer counts, a refusal or a wait for a
            // concurrency slot included.
            .layer(GrpcMetricsLayer)
            .layer(GlobalConcurrencyLimitLayer::new(config.concurrency_limit))
            .layer(
                TraceLayer::new_for_grpc()
                    // A child of the caller's span (W3C trace context).
                    .make_span_with(crate::trace_context::grpc_server_span)
                    .on_failure(crate::trace_context::RecordGrpcFailure),
            )
            // Broken gRPC frames are INVALID_ARGUMENT, not tonic's INTERNAL.
            .layer(commerce_proto::framing::RequestFramingLayer)
            // Inside tracing, so refusals are traced like any other answer.
            .layer(option_layer(authorize))
            // Inside authorize, whose caller identity it limits.
            .layer(RateLimitLayer::new(&config.rate_limits))
            .add_routes(routes.routes())
            // Nagle's algorithm would hold a response's last segment until
            // the peer's delayed ACK (40 ms) whenever headers, body and
            // trailers go out as separate writes.
            .serve_with_incoming_shutdown(
                TcpIncoming::from(listener).with_nodelay(Some(true)),
                async {
                    shutdown.await;
                    tracing::info!("shutting down, draining in-flight requests");
                    report_health(&health, &service_names, ServingStatus::NotServing).await;
                },
            )
            .await;
        background.abort();
        if let Some(metrics) = metrics {
            metrics.abort();
        }
        for job in jobs {
            job.abort();
        }
        served?;
        tracing::info!(service = config.service, "stopped");
        Ok(())
    }
}

/// The server builder, with mutual TLS and the policy that guards every
/// method when the server has TLS files; plain and open otherwise, which is
/// logged at WARN (once, at start).
fn transport_security(
    config: &ServerConfig,
    policy: Option<&'static [Rule]>,
    service_names: &[&'static str],
) -> anyhow::Result<(tonic::transport::Server, Option<AuthorizeLayer>)> {
    let builder = tonic::transport::Server::builder();
    let Some(files) = &config.tls else {
        tracing::warn!(
            service = config.service,
            "serving PLAINTEXT: no TLS, no caller identities, every method open to anyone \
             who can connect; for development only (set --tls-dir to serve mutual TLS)"
        );
        return Ok((builder, None));
    };
    let policy = policy.with_context(|| {
        format!(
            "no policy table for `{}`: refusing to serve",
            config.service
        )
    })?;
    let unguarded: Vec<&str> = service_names
        .iter()
        .chain(&["grpc.health.v1.Health"])
        .flat_map(|service| crate::tls::policy::unguarded_methods(policy, service))
        .collect();
    anyhow::ensure!(
        unguarded.is_empty(),
        "methods with no rule in `{}`'s policy table: {unguarded:?}",
        config.service
    );
    let builder = builder
        .tls_config(files.server_config()?)
        .context("configuring TLS")?;
    tracing::info!(
        service = config.service,
        cert = %files.cert.display(),
        "serving mutual TLS: callers need a certificate of the mesh's CA, methods are authorized"
    );
    Ok((builder, Some(AuthorizeLayer::new(policy))))
}

/// Reflection over every contract, health, and the `google.rpc` error
/// details (so grpcurl prints `ErrorInfo` reasons instead of base64).
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(commerce_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
}

/// Keeps health in step with the database and purges old barrier rows.
async fn background_jobs(
    database: Database,
    health: HealthReporter,
    service_names: Vec<&'static str>,
    barrier_retention: Option<Duration>,
) {
    let mut probe = tokio::time::interval(HEALTH_PROBE_INTERVAL);
    let mut last_purge: Option<tokio::time::Instant> = None;
    let mut serving = None;
    loop {
        probe.tick().await;
        let up = database.ping().await;
        if serving != Some(up) {
            let status = if up {
                ServingStatus::Serving
            } else {
                tracing::warn!("database unreachable: reporting NOT_SERVING");
                ServingStatus::NotServing
            };
            report_health(&health, &service_names, status).await;
            serving = Some(up);
        }
        if let Some(retention) = barrier_retention
            && up
            && last_purge.is_none_or(|t| t.elapsed() >= Duration::from_secs(3600))
        {
            last_purge = Some(tokio::time::Instant::now());
            match crate::barrier_admin::purge_older_than(&database, retention, 10_000).await {
                Ok(0) => {}
                Ok(purged) => tracing::info!(purged, "purged old saga barrier rows"),
                Err(error) => tracing::warn!(%error, "purging saga barrier rows failed"),
            }
        }
    }
}

/// Sets the overall status ("") and that of every registered service.
async fn report_health(health: &HealthReporter, service_names: &[&str], status: ServingStatus) {
    health.set_service_status("", status).await;
    for name in service_names {
        health.set_service_status(*name, status).await;
    }
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(error) => {
                    tracing::warn!(%error, "cannot listen for SIGTERM");
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}

/// The `main` of every server binary: parses flags, then serves or migrates.
pub fn main<F, Fut>(spec: ServiceSpec, build: F) -> ExitCode
where
    F: FnOnce(ServerConfig) -> Fut,
    Fut: Future<Output = anyhow::Result<Application>>,
{
    run_cli::<NoExtraArgs, _, _>(spec, std::env::args_os(), |config, _| build(config))
}

/// Like [`main`], for a server with flags `A` of its own, from given
/// arguments (the first is the program name).
pub fn run_cli<A, F, Fut>(
    spec: ServiceSpec,
    args: impl IntoIterator<Item = std::ffi::OsString>,
    build: F,
) -> ExitCode
where
    A: clap::Args,
    F: FnOnce(ServerConfig, A) -> Fut,
    Fut: Future<Output = anyhow::Result<Application>>,
{
    let cli = Cli::<A>::parse_from(args);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    // On the runtime, where the span exporter's channel runs; dropped (and
    // flushed) before it.
    let _telemetry = {
        let _on_runtime = runtime.enter();
        crate::telemetry::init(cli.server.log_format, spec.name)
    };
    let result = runtime.block_on(async {
        let config = ServerConfig::resolve(&spec, &cli.server)?;
        match cli.command.unwrap_or(Command::Serve) {
            Command::Migrate => {
                let applied = migrate::run(
                    &config.database.url,
                    &spec.migration_sets(),
                    config.db_startup_wait,
                )
                .await?;
                tracing::info!(service = spec.name, applied, "migrations up to date");
                Ok(())
            }
            Command::Serve => {
                build(config, cli.extra)
                    .await?
                    .run_until_stopped(shutdown_signal())
                    .await
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(service = spec.name, error = format!("{error:#}"), "fatal");
            ExitCode::FAILURE
        }
    }
}
