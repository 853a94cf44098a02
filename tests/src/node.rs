//! One server of the mesh as a child process: started on a free loopback
//! port, ready once its gRPC health says SERVING, killable with SIGKILL and
//! restartable. Used by the end-to-end tests and the benchmark.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use commerce_platform::tls::TlsFiles;
use tokio::process::{Child, Command};
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// How long a server may take to answer health checks after it starts.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// One server process.
pub struct Node {
    pub service: &'static str,
    pub port: u16,
    /// The port of its Prometheus metrics, when asked for
    /// ([`Node::with_metrics`]).
    pub metrics_port: Option<u16>,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
    /// The mesh's certificates (None: a plaintext development mesh).
    certs: Option<PathBuf>,
}

pub use commerce_testkit::{DEFAULT_CALLER, TestChannel};

impl Node {
    /// A server to run as `program [prefix...] <service> --listen ...
    /// --database-url ... --tls-dir <certs> [extra...]` (with
    /// `--insecure-plaintext` instead when `certs` is None), logging to
    /// `log_dir/<name>.log`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        program: &Path,
        prefix: &[&str],
        service: &'static str,
        database_url: &str,
        certs: Option<&Path>,
        extra: Vec<String>,
        log_dir: &Path,
        name: &str,
    ) -> Self {
        let port = free_port();
        let mut args: Vec<String> = prefix.iter().map(|s| (*s).to_owned()).collect();
        args.extend([
            service.to_owned(),
            "--listen".to_owned(),
            format!("127.0.0.1:{port}"),
            "--database-url".to_owned(),
            database_url.to_owned(),
        ]);
        match certs {
            Some(dir) => args.extend(["--tls-dir".to_owned(), dir.display().to_string()]),
            None => args.push("--insecure-plaintext".to_owned()),
        }
        args.extend(extra);
        Self {
            service,
            port,
            metrics_port: None,
            program: program.to_owned(),
            args,
            env: Vec::new(),
            log: log_dir.join(format!("{name}.log")),
            child: None,
            certs: certs.map(Path::to_path_buf),
        }
    }

    /// The server serves Prometheus metrics too, on a port of its own
    /// (`--metrics-listen`).
    pub fn with_metrics(mut self) -> Self {
        let port = free_port();
        self.args
            .extend(["--metrics-listen".to_owned(), format!("127.0.0.1:{port}")]);
        self.metrics_port = Some(port);
        self
    }

    /// Where its metrics are served, if they are.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics_port
            .map(|port| std::net::SocketAddr::from(([127, 0, 0, 1], port)))
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// A channel that calls each method as an identity the server's policy
    /// allows (see [`TestChannel`]).
    pub fn channel(&self) -> TestChannel {
        TestChannel::new(&self.endpoint(), self.service, self.certs.as_deref())
    }

    /// A channel presenting `identity`'s certificate.
    pub fn channel_as(&self, identity: &str) -> Channel {
        commerce_platform::tls::endpoint(&self.endpoint(), self.tls_files(identity).as_ref())
            .expect("the mesh's certificates and a loopback address make an endpoint")
            .timeout(Duration::from_secs(30))
            .connect_lazy()
    }

    /// The files of `identity` in the mesh's certificates (None: plaintext).
    pub fn tls_files(&self, identity: &str) -> Option<TlsFiles> {
        self.certs
            .as_deref()
            .map(|dir| TlsFiles::in_dir(dir, identity))
    }

    /// grpcurl's flags to reach this server as an operator.
    pub fn grpcurl_flags(&self) -> Vec<String> {
        commerce_testkit::grpcurl_flags(self.tls_files(DEFAULT_CALLER).as_ref())
    }

    /// Starts the process (with `env` set) and waits until it serves.
    pub async fn start_with(&mut self, env: &[(&str, &str)]) {
        assert!(self.child.is_none(), "{} already running", self.service);
        self.env = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open log file");
        let mut command = Command::new(&self.program);
        command.args(&self.args).env(
            "RUST_LOG",
            std::env::var("MESH_LOG").unwrap_or_else(|_| "info".to_owned()),
        );
        // After the default, so a caller's RUST_LOG wins.
        let child = command
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn a server process");
        self.child = Some(child);
        self.wait_ready().await;
    }

    pub async fn start(&mut self) {
        self.start_with(&[]).await;
    }

    /// Waits until the process serves (health SERVING); panics if it exits
    /// or does not serve within [`READY_TIMEOUT`].
    async fn wait_ready(&mut self) {
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        let mut pause = Duration::from_millis(10);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "{} exited during start-up ({status}); log: {}",
                    self.service,
                    self.log.display()
                );
            }
            let mut health = HealthClient::new(self.channel());
            if let Ok(response) = health
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
                && response.into_inner().status == ServingStatus::Serving as i32
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} not serving after {READY_TIMEOUT:?}; log: {}",
                self.service,
                self.log.display()
            );
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }

    /// SIGKILL, as a crash: no shutdown, no draining.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }

    /// Waits for the process to end by itself (an armed fault aborting it).
    pub async fn wait_exit(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("process running");
        tokio::time::timeout(Duration::from_secs(60), child.wait())
            .await
            .unwrap_or_else(|_| {
                panic!("{} did not exit; log: {}", self.service, self.log.display())
            })
            .expect("wait for process")
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    pub fn log(&self) -> &Path {
        &self.log
    }

    pub async fn restart(&mut self) {
        self.kill().await;
        self.start().await;
    }
}

/// Ports handed to children: below Linux's ephemeral range (32768 and up),
/// so neither an outgoing connection nor another `bind(0)` takes one between
/// the check here and the child's bind (with ports from `bind(0)`, servers of
/// tests running in parallel failed with "Address already in use").
const PORTS: std::ops::Range<u32> = 20_000..32_000;

/// A loopback port for a child to listen on: each call of this process gives
/// another one (from a start that differs between processes), checked free.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let span = PORTS.end - PORTS.start;
    let start = std::process::id().wrapping_mul(7_919) % span;
    for _ in 0..span {
        let offset = (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
        let port = u16::try_from(PORTS.start + offset).expect("port fits u16");
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {PORTS:?}");
}
