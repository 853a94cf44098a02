//! A TCP proxy on loopback that can be cut and restored, to stage a database
//! (or service) outage without touching the real server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

pub struct TcpProxy {
    pub addr: SocketAddr,
    /// `true` while the link is cut.
    cut: Arc<watch::Sender<bool>>,
    /// Connections being forwarded, and a signal when one ends.
    open: Arc<(AtomicUsize, Notify)>,
    task: JoinHandle<()>,
}

impl TcpProxy {
    /// Listens on an ephemeral loopback port and forwards to `target`.
    pub async fn start(target: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let cut = Arc::new(watch::channel(false).0);
        let open = Arc::new((AtomicUsize::new(0), Notify::new()));
        let task = tokio::spawn(accept_loop(listener, target, cut.clone(), open.clone()));
        Ok(Self {
            addr,
            cut,
            open,
            task,
        })
    }

    /// Refuses new connections and drops every open one until
    /// [`Self::restore`]; returns once they are all closed.
    pub async fn cut(&self) {
        let (count, closed) = &*self.open;
        self.cut.send_replace(true);
        loop {
            let notified = closed.notified();
            if count.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }

    pub fn restore(&self) {
        self.cut.send_replace(false);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    cut: Arc<watch::Sender<bool>>,
    open: Arc<(AtomicUsize, Notify)>,
) {
    while let Ok((inbound, _)) = listener.accept().await {
        if *cut.borrow() {
            drop(inbound);
            continue;
        }
        let mut cut_rx = cut.subscribe();
        let open = open.clone();
        open.0.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(async move {
            if let Ok(mut outbound) = TcpStream::connect(target).await {
                let mut inbound = inbound;
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    _ = cut_rx.wait_for(|cut| *cut) => {}
                }
            }
            open.0.fetch_sub(1, Ordering::SeqCst);
            open.1.notify_waiters();
        });
    }
}
