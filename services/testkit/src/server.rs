//! Servers under test: an [`Application`] run on a background task, stopped
//! gracefully, and the grpcurl binary operators use.

use std::net::SocketAddr;
use std::path::PathBuf;

use commerce_platform::Application;
use commerce_platform::tls::TlsFiles;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

use crate::routed::{DEFAULT_CALLER, TestChannel};

/// A running server on an ephemeral loopback port.
pub struct TestServer {
    pub addr: SocketAddr,
    /// The server's service name (its policy table).
    service: String,
    /// The directory of the certificates the server and its callers use
    /// (None: a plaintext server).
    certs: Option<PathBuf>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl TestServer {
    pub fn start(app: Application) -> Self {
        let addr = app.local_addr();
        let certs = app
            .config()
            .tls
            .as_ref()
            .and_then(|tls| tls.ca.parent().map(PathBuf::from));
        let service = app.config().service.to_owned();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(app.run_until_stopped(async {
            let _ = stopped.await;
        }));
        Self {
            addr,
            service,
            certs,
            stop: Some(stop),
            task,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A lazily connecting channel that calls each method as an identity
    /// the server's policy allows (see [`TestChannel`]): usable at once,
    /// connects on first call.
    pub fn channel(&self) -> TestChannel {
        TestChannel::new(&self.endpoint(), &self.service, self.certs.as_deref())
    }

    /// A lazily connecting channel presenting `identity`'s certificate (one
    /// of `commerce_platform::tls::certs::{SERVERS, CLIENTS}`).
    pub fn channel_as(&self, identity: &str) -> Channel {
        let tls = self.tls_files(identity);
        commerce_platform::tls::endpoint(&self.endpoint(), tls.as_ref())
            .expect("the test certificates and a loopback address make an endpoint")
            .connect_lazy()
    }

    /// The files of `identity` beside the server's own (None: plaintext).
    pub fn tls_files(&self, identity: &str) -> Option<TlsFiles> {
        self.certs
            .as_deref()
            .map(|dir| TlsFiles::in_dir(dir, identity))
    }

    /// grpcurl's flags to reach this server as an operator (`-cacert`,
    /// `-cert`, `-key`; `-plaintext` for a plaintext server), before the
    /// address.
    pub fn grpcurl_flags(&self) -> Vec<String> {
        grpcurl_flags(self.tls_files(DEFAULT_CALLER).as_ref())
    }

    /// Stops the server gracefully and waits until it has drained.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await?
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if self.stop.is_some() {
            self.task.abort();
        }
    }
}

/// grpcurl's flags to call with `tls` (an operator's files, say), or
/// `-plaintext` without.
pub fn grpcurl_flags(tls: Option<&TlsFiles>) -> Vec<String> {
    match tls {
        Some(files) => [
            ("-cacert", &files.ca),
            ("-cert", &files.cert),
            ("-key", &files.key),
        ]
        .into_iter()
        .flat_map(|(flag, path)| [flag.to_owned(), path.display().to_string()])
        .collect(),
        None => vec!["-plaintext".to_owned()],
    }
}

/// The grpcurl binary: `$GRPCURL`, else `.tools/bin/grpcurl` at the
/// workspace root (where `deploy/setup.sh` installs it), else `grpcurl` on
/// the `PATH`.
pub fn grpcurl() -> PathBuf {
    if let Some(path) = std::env::var_os("GRPCURL") {
        return PathBuf::from(path);
    }
    let mut dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    while dir.pop() {
        let candidate = dir.join(".tools/bin/grpcurl");
        if candidate.is_file() {
            return candidate;
        }
    }
    PathBuf::from("grpcurl")
}
