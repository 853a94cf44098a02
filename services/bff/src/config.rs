//! Flags (each also an environment variable) with loopback defaults that
//! match `deploy/up.sh`'s mesh.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use commerce_platform::telemetry::LogFormat;
use commerce_platform::tls::TlsFiles;

use crate::auth::Authenticator;
use crate::mesh::MeshTls;
use crate::user_limit::UserCeiling;

#[derive(Debug, clap::Parser)]
#[command(name = "commerce-bff", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub args: BffArgs,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Serve the REST API and the console (the default).
    Serve,
    /// Print a token signed with this BFF's secret (development and demos;
    /// production tokens come from the identity provider).
    Token {
        /// The user the token is for (its `sub`).
        #[arg(long)]
        sub: String,
        /// A role, e.g. `operator`.
        #[arg(long)]
        role: Option<String>,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 86_400)]
        ttl_secs: u64,
    },
}

#[derive(Debug, Clone, clap::Args)]
pub struct BffArgs {
    /// HTTP address to listen on.
    #[arg(long, env = "LISTEN_ADDR", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// The order orchestrator.
    #[arg(long, env = "ORDER_ADDR", default_value = "http://127.0.0.1:50051")]
    pub orchestrator_addr: String,
    /// The product service.
    #[arg(long, env = "PRODUCT_ADDR", default_value = "http://127.0.0.1:50052")]
    pub product_addr: String,
    /// The point service.
    #[arg(long, env = "POINT_ADDR", default_value = "http://127.0.0.1:50053")]
    pub point_addr: String,
    /// The coupon service.
    #[arg(long, env = "COUPON_ADDR", default_value = "http://127.0.0.1:50054")]
    pub coupon_addr: String,
    /// Directory of `commerce-mesh certs`: the BFF calls as `bff` (shoppers)
    /// and as `operator` (operator routes). Required, unless
    /// --insecure-plaintext.
    #[arg(long, env = "TLS_DIR")]
    pub tls_dir: Option<PathBuf>,
    /// Call the mesh in plaintext (a development mesh started the same way).
    #[arg(long, env = "INSECURE_PLAINTEXT", conflicts_with = "tls_dir")]
    pub insecure_plaintext: bool,
    /// File holding the HS256 secret tokens are signed with (at least 32
    /// bytes; surrounding whitespace is ignored).
    #[arg(long, env = "JWT_SECRET_FILE")]
    pub jwt_secret_file: Option<PathBuf>,
    /// The secret itself, when no file is given.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// The `iss` every token must carry.
    #[arg(long, env = "JWT_ISSUER", default_value = "commerce")]
    pub jwt_issuer: String,
    /// The `aud` every token must carry.
    #[arg(long, env = "JWT_AUDIENCE", default_value = "commerce-bff")]
    pub jwt_audience: String,
    /// Deadline of a request without `Prefer: wait`, in milliseconds.
    #[arg(long, env = "REQUEST_TIMEOUT_MS", default_value_t = 10_000)]
    pub request_timeout_ms: u64,
    /// Longest deadline a client may ask for with `Prefer: wait`, in ms.
    #[arg(long, env = "MAX_REQUEST_TIMEOUT_MS", default_value_t = 30_000)]
    pub max_request_timeout_ms: u64,
    /// Largest request body accepted, in bytes.
    #[arg(long, env = "BODY_LIMIT_BYTES", default_value_t = 64 * 1024)]
    pub body_limit_bytes: usize,
    /// Requests handled at once; more wait.
    #[arg(long, env = "CONCURRENCY_LIMIT", default_value_t = 1024)]
    pub concurrency_limit: usize,
    /// Each user's ceiling, `<per_second>[/<burst>]` (burst: one second's
    /// worth unless given), or `off`.
    #[arg(long, env = "USER_RATE_LIMIT", default_value = "20/40")]
    pub user_rate_limit: String,
    /// Log output.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
    /// Serve Prometheus metrics over HTTP at `http://<addr>/metrics`
    /// [default: not served].
    #[arg(long, env = "METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
}

/// Where the mesh's servers are.
#[derive(Debug, Clone)]
pub struct MeshAddrs {
    pub orchestrator: String,
    pub product: String,
    pub point: String,
    pub coupon: String,
}

/// Bounds of one request.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub default_deadline: Duration,
    pub max_deadline: Duration,
    pub body_bytes: usize,
    pub concurrency: usize,
    /// Each user's ceiling (None: off).
    pub per_user: Option<UserCeiling>,
}

/// Resolved configuration.
#[derive(Clone)]
pub struct BffConfig {
    pub listen: SocketAddr,
    /// Where Prometheus metrics are served (None: not at all).
    pub metrics_listen: Option<SocketAddr>,
    pub mesh: MeshAddrs,
    pub tls: MeshTls,
    pub auth: Authenticator,
    pub limits: Limits,
}

impl BffArgs {
    pub fn authenticator(&self) -> anyhow::Result<Authenticator> {
        let secret = match (&self.jwt_secret_file, &self.jwt_secret) {
            (Some(path), _) => std::fs::read_to_string(path)
                .with_context(|| format!("reading --jwt-secret-file {}", path.display()))?
                .trim()
                .to_owned(),
            (None, Some(secret)) => secret.trim().to_owned(),
            (None, None) => anyhow::bail!("the BFF needs --jwt-secret-file or --jwt-secret"),
        };
        Authenticator::new(secret.as_bytes(), &self.jwt_issuer, &self.jwt_audience)
    }

    pub fn resolve(&self) -> anyhow::Result<BffConfig> {
        let tls = match (&self.tls_dir, self.insecure_plaintext) {
            (Some(dir), false) => MeshTls::Mutual {
                shopper: TlsFiles::in_dir(dir, "bff"),
                operator: TlsFiles::in_dir(dir, "operator"),
            },
            (None, true) => MeshTls::Plaintext,
            _ => anyhow::bail!(
                "the BFF calls the mesh over mutual TLS: give --tls-dir, or --insecure-plaintext \
                 for a plaintext development mesh"
            ),
        };
        anyhow::ensure!(
            self.request_timeout_ms >= 1000
                && self.request_timeout_ms <= self.max_request_timeout_ms,
            "--request-timeout-ms must be between 1000 and --max-request-timeout-ms"
        );
        anyhow::ensure!(
            self.body_limit_bytes >= 1024,
            "--body-limit-bytes must be at least 1024"
        );
        anyhow::ensure!(
            self.concurrency_limit > 0,
            "--concurrency-limit must be positive"
        );
        Ok(BffConfig {
            listen: self.listen,
            metrics_listen: self.metrics_listen,
            mesh: MeshAddrs {
                orchestrator: self.orchestrator_addr.clone(),
                product: self.product_addr.clone(),
                point: self.point_addr.clone(),
                coupon: self.coupon_addr.clone(),
            },
            tls,
            auth: self.authenticator()?,
            limits: Limits {
                default_deadline: Duration::from_millis(self.request_timeout_ms),
                max_deadline: Duration::from_millis(self.max_request_timeout_ms),
                body_bytes: self.body_limit_bytes,
                concurrency: self.concurrency_limit,
                per_user: UserCeiling::parse(&self.user_rate_limit)
                    .map_err(|e| anyhow::anyhow!("--user-rate-limit: {e}"))?,
            },
        })
    }
}
