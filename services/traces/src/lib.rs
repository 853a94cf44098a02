//! A trace viewer for the mesh, for when no Jaeger is at hand: it receives
//! spans over OTLP (gRPC, and HTTP with protobuf or JSON bodies), keeps the
//! most recent traces in memory and shows each as a tree with a waterfall,
//! in a browser, as JSON, or in a terminal (`commerce-traces show`).
//!
//! - [`otlp`]: export requests and OTLP/HTTP bodies into [`model`] spans;
//! - [`store`]: the traces in memory, bounded by spans, by trace and saga id;
//! - [`tree`]: a trace's spans as a tree whatever their order of arrival,
//!   and its summary; [`render`] draws it as text, [`html`] as pages;
//! - [`grpc`] and [`http`]: the receivers, the pages and the JSON API;
//! - [`show`]: the terminal client of the JSON API.

pub mod grpc;
pub mod html;
pub mod http;
pub mod model;
pub mod otlp;
pub mod render;
pub mod show;
pub mod store;
pub mod tree;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::MutexGuard;

use anyhow::Context as _;
use commerce_platform::telemetry::LogFormat;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

use crate::store::{SharedStore, Store};

#[derive(Debug, clap::Parser)]
#[command(name = "commerce-traces", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Receives spans over OTLP and serves the viewer.
    Serve(ServeArgs),
    /// Prints a trace of a running viewer as a tree.
    Show(ShowArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Where OTLP/gRPC exporters send spans.
    #[arg(long, env = "OTLP_LISTEN", default_value = "127.0.0.1:4317")]
    pub otlp_listen: SocketAddr,
    /// The pages, the JSON API and OTLP/HTTP (`POST /v1/traces`).
    #[arg(long, env = "HTTP_LISTEN", default_value = "127.0.0.1:16686")]
    pub http_listen: SocketAddr,
    /// Spans kept, all traces together; past it the least recently received
    /// traces are evicted whole.
    #[arg(long, env = "MAX_SPANS", default_value_t = 200_000)]
    pub max_spans: usize,
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, clap::Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["trace_id", "saga_id"])))]
pub struct ShowArgs {
    /// The trace's id (32 hex digits).
    pub trace_id: Option<String>,
    /// The saga whose traces to show instead.
    #[arg(long, env = "SAGA_ID")]
    pub saga_id: Option<String>,
    /// The viewer's HTTP address.
    #[arg(long, env = "TRACES_URL", default_value = "http://127.0.0.1:16686")]
    pub from: String,
    /// How long to wait for the trace to arrive and stop growing.
    #[arg(long, env = "WAIT_SECS", default_value_t = 10)]
    pub wait_secs: u64,
    /// How long a found trace must stay unchanged to be printed before
    /// --wait-secs is over: more than the servers' batch delay
    /// (OTEL_BSP_SCHEDULE_DELAY, 5000 ms unless set) to see every server's
    /// spans.
    #[arg(long, env = "SETTLE_MS", default_value_t = 1000)]
    pub settle_ms: u64,
}

/// The viewer with its ports bound, not yet serving.
pub struct Viewer {
    otlp: TcpListener,
    http: TcpListener,
    store: SharedStore,
}

impl Viewer {
    /// Binds both listeners (port 0 picks a free one).
    pub async fn bind(args: &ServeArgs) -> anyhow::Result<Self> {
        let otlp = TcpListener::bind(args.otlp_listen)
            .await
            .with_context(|| format!("binding OTLP/gRPC on {}", args.otlp_listen))?;
        let http = TcpListener::bind(args.http_listen)
            .await
            .with_context(|| format!("binding HTTP on {}", args.http_listen))?;
        Ok(Self {
            otlp,
            http,
            store: Store::shared(args.max_spans),
        })
    }

    pub fn otlp_addr(&self) -> SocketAddr {
        self.otlp
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves both ports until `shutdown` completes, then lets requests in
    /// flight finish.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (stop, stopped) = tokio::sync::watch::channel(());
        let stopping = move |mut stopped: tokio::sync::watch::Receiver<()>| async move {
            let _ = stopped.changed().await;
        };
        let grpc = tonic::transport::Server::builder()
            .add_service(grpc::service(self.store.clone()))
            .serve_with_incoming_shutdown(TcpIncoming::from(self.otlp), stopping(stopped.clone()));
        let http = axum::serve(self.http, http::router(self.store))
            .with_graceful_shutdown(stopping(stopped))
            .into_future();
        let signal = async move {
            shutdown.await;
            tracing::info!("stopping");
            let _ = stop.send(());
            Ok::<(), anyhow::Error>(())
        };
        tokio::try_join!(
            async { grpc.await.context("serving OTLP/gRPC") },
            async { http.await.context("serving HTTP") },
            signal,
        )?;
        Ok(())
    }
}

/// The store, locked; a panic elsewhere while it was held leaves it usable
/// (every change to it completes before the lock is let go).
pub(crate) fn lock(store: &SharedStore) -> MutexGuard<'_, Store> {
    store
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
