//! Typed configuration, from flags or environment variables, with loopback
//! defaults so a developer can start any server with no arguments.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use diesel_migrations::EmbeddedMigrations;

use crate::db::DbSettings;
use crate::rate_limit::RateLimits;
use crate::redis::RedisSettings;
use crate::telemetry::LogFormat;
use crate::tls::TlsFiles;

/// What distinguishes one server binary from another.
#[derive(Clone, Copy)]
pub struct ServiceSpec {
    /// Short name, used in logs ("product").
    pub name: &'static str,
    pub default_listen: &'static str,
    pub default_database_url: &'static str,
    /// The service's own migrations.
    pub migrations: &'static EmbeddedMigrations,
    /// Saga participants keep a barrier table, serve its admin RPCs and
    /// purge its old rows.
    pub saga_participant: bool,
}

impl ServiceSpec {
    /// Migration sets in the order they are applied: the barrier's first.
    pub fn migration_sets(&self) -> Vec<&'static EmbeddedMigrations> {
        let mut sets = Vec::new();
        if self.saga_participant {
            sets.push(&crate::migrate::BARRIER_MIGRATIONS);
        }
        sets.push(self.migrations);
        sets
    }
}

/// Command line of every server: `serve` (the default) or `migrate`, the
/// shared flags, and the flags `A` of one server.
#[derive(Debug, clap::Parser)]
#[command(version, about)]
pub struct Cli<A: clap::Args> {
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub extra: A,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// For servers with no flags of their own.
#[derive(Debug, Clone, Copy, Default, clap::Args)]
pub struct NoExtraArgs {}

#[derive(Debug, Clone, Copy, clap::Subcommand)]
pub enum Command {
    /// Run the gRPC server (after applying pending migrations).
    Serve,
    /// Apply pending migrations and exit.
    Migrate,
}

/// Flags shared by every server; each can also be set by its variable.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// Address to listen on [default: the service's loopback port].
    #[arg(long, env = "LISTEN_ADDR")]
    pub listen: Option<SocketAddr>,
    /// MySQL URL of the service's own database [default: local commerce_<service>].
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// Largest number of open database connections.
    #[arg(long, env = "DB_POOL_SIZE", default_value_t = 16)]
    pub db_pool_size: u32,
    /// How long a request waits for a database connection, in milliseconds.
    #[arg(long, env = "DB_ACQUIRE_TIMEOUT_MS", default_value_t = 3_000)]
    pub db_acquire_timeout_ms: u64,
    /// How long the server waits for the database at start-up, in seconds.
    #[arg(long, env = "DB_STARTUP_WAIT_SECS", default_value_t = 30)]
    pub db_startup_wait_secs: u64,
    /// Server-side deadline of every request, in milliseconds.
    #[arg(long, env = "REQUEST_TIMEOUT_MS", default_value_t = 10_000)]
    pub request_timeout_ms: u64,
    /// Requests handled at once across all connections; more wait.
    #[arg(long, env = "CONCURRENCY_LIMIT", default_value_t = 256)]
    pub concurrency_limit: usize,
    /// Saga barrier rows older than this are purged, in hours (0: never;
    /// at least 24 otherwise, see `barrier_admin::MIN_RETENTION`).
    #[arg(long, env = "BARRIER_RETENTION_HOURS", default_value_t = 168)]
    pub barrier_retention_hours: u64,
    /// Log output.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
    /// Serve Prometheus metrics over HTTP at `http://<addr>/metrics`
    /// [default: not served].
    #[arg(long, env = "METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
    /// Redis, the speed and event layer (`off` turns every Redis path off;
    /// the server works without it, slower and without events).
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    /// Prefix of every Redis key and stream, so that meshes can share a Redis.
    #[arg(long, env = "REDIS_PREFIX", default_value = "commerce")]
    pub redis_prefix: String,
    /// Bound of one Redis call, in milliseconds: past it the fast path falls
    /// back to MySQL.
    #[arg(long, env = "REDIS_TIMEOUT_MS", default_value_t = 250)]
    pub redis_timeout_ms: u64,
    /// Serve mutual TLS with the files of `commerce-mesh certs <dir>`:
    /// `<dir>/ca.pem` and `<dir>/<service>.pem`/`.key`. Required, unless
    /// --insecure-plaintext.
    #[arg(long, env = "TLS_DIR")]
    pub tls_dir: Option<PathBuf>,
    /// Serve (and call peers) in plaintext with no identities and no
    /// authorization: anyone who can connect may call every method. For
    /// development only; logged loudly at start.
    #[arg(long, env = "INSECURE_PLAINTEXT", conflicts_with_all = ["tls_dir", "tls_ca", "tls_cert", "tls_key"])]
    pub insecure_plaintext: bool,
    /// CA that signs callers' certificates (with --tls-cert and --tls-key,
    /// instead of --tls-dir).
    #[arg(long, env = "TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// The server's certificate (PEM).
    #[arg(long, env = "TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// The server's private key (PEM).
    #[arg(long, env = "TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// A caller's ceiling, `<identity>=<per_second>[/<burst>]` (the burst is
    /// one second's worth unless given), or `<identity>=off`; repeated or
    /// comma-separated, each replacing that caller's default. `anonymous` is
    /// every caller without an identity. [default: bff=50000/100000,
    /// operator=200/400, fulfilment=1000/2000; everyone else unlimited]
    #[arg(
        long = "rate-limit",
        env = "RATE_LIMITS",
        value_delimiter = ',',
        value_name = "IDENTITY=RATE[/BURST]"
    )]
    pub rate_limits: Vec<String>,
}

/// Resolved configuration of one server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub service: &'static str,
    pub listen: SocketAddr,
    pub database: DbSettings,
    pub db_startup_wait: Duration,
    pub request_timeout: Duration,
    pub concurrency_limit: usize,
    /// None disables the purge job.
    pub barrier_retention: Option<Duration>,
    pub redis: RedisSettings,
    /// Mutual TLS and per-method authorization; None serves plaintext
    /// (only with --insecure-plaintext).
    pub tls: Option<TlsFiles>,
    /// Per-caller ceilings (see `crate::rate_limit`).
    pub rate_limits: RateLimits,
    /// Where Prometheus metrics are served (None: not at all).
    pub metrics_listen: Option<SocketAddr>,
}

impl ServerConfig {
    pub fn resolve(spec: &ServiceSpec, args: &ServerArgs) -> anyhow::Result<Self> {
        let listen = match args.listen {
            Some(listen) => listen,
            None => spec.default_listen.parse()?,
        };
        anyhow::ensure!(args.db_pool_size > 0, "--db-pool-size must be positive");
        anyhow::ensure!(
            args.concurrency_limit > 0,
            "--concurrency-limit must be positive"
        );
        let (min_hours, max_hours) = (
            crate::barrier_admin::MIN_RETENTION.as_secs() / 3600,
            crate::barrier_admin::MAX_RETENTION.as_secs() / 3600,
        );
        anyhow::ensure!(
            args.barrier_retention_hours == 0
                || (min_hours..=max_hours).contains(&args.barrier_retention_hours),
            "--barrier-retention-hours must be 0 (never purge) or {min_hours} to {max_hours}: \
             younger barrier rows may still have to stop a late saga call"
        );
        Ok(Self {
            service: spec.name,
            listen,
            database: DbSettings {
                url: args
                    .database_url
                    .clone()
                    .unwrap_or_else(|| spec.default_database_url.to_owned()),
                max_connections: args.db_pool_size,
                acquire_timeout: Duration::from_millis(args.db_acquire_timeout_ms),
            },
            db_startup_wait: Duration::from_secs(args.db_startup_wait_secs),
            request_timeout: Duration::from_millis(args.request_timeout_ms),
            concurrency_limit: args.concurrency_limit,
            barrier_retention: (args.barrier_retention_hours > 0)
                .then(|| Duration::from_secs(args.barrier_retention_hours * 3600)),
            redis: RedisSettings::new(
                &args.redis_url,
                &args.redis_prefix,
                Duration::from_millis(args.redis_timeout_ms),
            )?,
            tls: tls_files(spec, args)?,
            rate_limits: RateLimits::defaults().with_overrides(&args.rate_limits)?,
            metrics_listen: args.metrics_listen,
        })
    }

    /// Configuration for tests: an ephemeral loopback port, short waits.
    pub fn for_tests(service: &'static str, database_url: impl Into<String>) -> Self {
        Self {
            service,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            database: DbSettings {
                url: database_url.into(),
                // Many test servers share one database server (151
                // connections by default): keep each pool small.
                max_connections: 6,
                acquire_timeout: Duration::from_secs(2),
            },
            db_startup_wait: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            concurrency_limit: 256,
            barrier_retention: None,
            // A prefix of this server's own; tests whose servers share
            // streams set one prefix for all of them.
            redis: RedisSettings::for_tests(format!("test:{}", uuid::Uuid::new_v4().simple())),
            // Every test server serves mutual TLS with the run's certificates.
            tls: Some(TlsFiles::in_dir(
                crate::tls::certs::test_dir(),
                service_identity(service),
            )),
            // Test callers stand in for every caller (most call as the
            // operator) at volumes no operator sends; tests of the limits
            // set their own.
            rate_limits: RateLimits::none(),
            // Tests that read metrics ask for them.
            metrics_listen: None,
        }
    }
}

/// The identity a server's certificate names: its own, except the servers of
/// the platform's tests, which stand in for a participant.
fn service_identity(service: &'static str) -> &'static str {
    if crate::tls::certs::SERVERS.contains(&service) {
        service
    } else {
        "product"
    }
}

/// A directory, or all three files, or plaintext when asked for explicitly.
fn tls_files(spec: &ServiceSpec, args: &ServerArgs) -> anyhow::Result<Option<TlsFiles>> {
    match (&args.tls_dir, &args.tls_ca, &args.tls_cert, &args.tls_key) {
        (None, None, None, None) if args.insecure_plaintext => Ok(None),
        (None, None, None, None) => anyhow::bail!(
            "no TLS files: give --tls-dir (make one with `commerce-mesh certs <dir>`), or \
             --tls-ca, --tls-cert and --tls-key; --insecure-plaintext serves without \
             identities, for development only"
        ),
        (Some(dir), None, None, None) => Ok(Some(TlsFiles::in_dir(dir, spec.name))),
        (None, Some(ca), Some(cert), Some(key)) => Ok(Some(TlsFiles {
            ca: ca.clone(),
            cert: cert.clone(),
            key: key.clone(),
        })),
        _ => {
            anyhow::bail!("TLS takes --tls-dir alone, or all of --tls-ca, --tls-cert and --tls-key")
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        server: ServerArgs,
    }

    const SPEC: ServiceSpec = ServiceSpec {
        name: "bare",
        default_listen: "127.0.0.1:0",
        default_database_url: "mysql://root@127.0.0.1/bare",
        migrations: &crate::migrate::BARRIER_MIGRATIONS,
        saga_participant: true,
    };

    fn resolve_with(flags: &[&str]) -> anyhow::Result<ServerConfig> {
        let cli = Cli::try_parse_from(std::iter::once("bare").chain(flags.iter().copied()))?;
        ServerConfig::resolve(&SPEC, &cli.server)
    }

    #[test]
    fn tls_is_required_unless_plaintext_is_asked_for() {
        let error = resolve_with(&[]).unwrap_err().to_string();
        assert!(error.contains("--insecure-plaintext"), "{error}");
        assert_eq!(resolve_with(&["--insecure-plaintext"]).unwrap().tls, None);
        assert!(resolve_with(&["--insecure-plaintext", "--tls-dir", "/certs"]).is_err());
        assert_eq!(
            resolve_with(&["--tls-dir", "/certs"]).unwrap().tls,
            Some(TlsFiles {
                ca: "/certs/ca.pem".into(),
                cert: "/certs/bare.pem".into(),
                key: "/certs/bare.key".into(),
            })
        );
        let files = ["--tls-ca", "/a", "--tls-cert", "/b", "--tls-key", "/c"];
        assert_eq!(
            resolve_with(&files).unwrap().tls.unwrap().cert,
            PathBuf::from("/b")
        );
        for refused in [
            &["--tls-ca", "/a"][..],
            &["--tls-dir", "/certs", "--tls-key", "/c"],
        ] {
            let error = resolve_with(refused).unwrap_err().to_string();
            assert!(error.contains("--tls-dir"), "{error}");
        }
    }

    #[test]
    fn rate_limits_replace_the_defaults_one_caller_at_a_time() {
        let config = resolve_with(&[
            "--tls-dir",
            "/certs",
            "--rate-limit",
            "operator=50,bff=off",
            "--rate-limit",
            "fulfilment=7/9",
        ])
        .unwrap();
        assert_eq!(
            config.rate_limits.to_string(),
            "fulfilment=7/9,operator=50/50"
        );
        let defaults = resolve_with(&["--tls-dir", "/certs"]).unwrap();
        assert_eq!(defaults.rate_limits, RateLimits::defaults());
        let error = resolve_with(&["--tls-dir", "/certs", "--rate-limit", "bff=0"])
            .unwrap_err()
            .to_string();
        assert!(error.contains("--rate-limit `bff=0`"), "{error}");
    }

    fn resolve(retention_hours: &str) -> anyhow::Result<ServerConfig> {
        let cli = Cli::try_parse_from([
            "bare",
            "--insecure-plaintext",
            "--barrier-retention-hours",
            retention_hours,
        ])?;
        ServerConfig::resolve(&SPEC, &cli.server)
    }

    #[test]
    fn barrier_retention_is_never_or_at_least_a_day() {
        assert!(resolve("0").unwrap().barrier_retention.is_none());
        assert_eq!(
            resolve("24").unwrap().barrier_retention,
            Some(Duration::from_secs(24 * 3600))
        );
        for refused in ["1", "23", "100000000"] {
            let error = resolve(refused).unwrap_err().to_string();
            assert!(error.contains("--barrier-retention-hours"), "{error}");
        }
    }
}
