//! Servers under test: an [`Application`] run on a background task, stopped
//! gracefully, and the grpcurl binary operators use.

use std::net::SocketAddr;
use std::path::PathBuf;

use commerce_platform::Application;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Endpoint};

/// A running server on an ephemeral loopback port.
pub struct TestServer {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl TestServer {
    pub fn start(app: Application) -> Self {
        let addr = app.local_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(app.run_until_stopped(async {
            let _ = stopped.await;
        }));
        Self {
            addr,
            stop: Some(stop),
            task,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A lazily connecting channel: usable at once, connects on first call.
    pub fn channel(&self) -> Channel {
        Endpoint::from_shared(self.endpoint())
            .expect("a loopback socket address is a valid URI")
            .connect_lazy()
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
