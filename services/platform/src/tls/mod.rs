//! The trust boundary of the mesh: mutual TLS on every connection, an
//! identity on every caller, a policy on every method.
//!
//! - [`certs`]: a development CA and the certificates of every identity;
//! - [`TlsFiles`]: a server's or client's CA, certificate and key, turned
//!   into tonic's TLS configuration (rustls over `ring`);
//! - [`Identity`]: the caller named by its certificate;
//! - [`AuthorizeLayer`] and [`policy`]: who may call which method.
//!
//! A server needs its files (`--tls-dir` or `--tls-ca`/`--tls-cert`/
//! `--tls-key`) and will not start without them, unless it is told
//! `--insecure-plaintext` (development only, logged loudly at start).

mod authorize;
pub mod certs;
mod identity;
pub mod policy;

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, ServerTlsConfig};

pub use authorize::{
    Authorize, AuthorizeLayer, CALLER_NOT_ALLOWED, Callers, Rule, is_allowed, refusal, rule_for,
};
pub use identity::{Identity, TRUST_DOMAIN, spiffe_uri};

/// An endpoint for `uri`: mutual TLS as the owner of `tls`, or plaintext
/// without (a development mesh, `--insecure-plaintext`).
pub fn endpoint(uri: &str, tls: Option<&TlsFiles>) -> anyhow::Result<Endpoint> {
    match tls {
        Some(files) => files.endpoint(uri),
        None => Endpoint::from_shared(uri.to_owned()).with_context(|| format!("address {uri}")),
    }
}

/// The files of one identity: the mesh's CA (to verify peers), its own
/// certificate and its private key, all PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    /// The files of `identity` in a directory made by
    /// [`certs::ensure_dev_certs`].
    pub fn in_dir(dir: &Path, identity: &str) -> Self {
        Self {
            ca: certs::ca_path(dir),
            cert: certs::cert_path(dir, identity),
            key: certs::key_path(dir, identity),
        }
    }

    /// Serves TLS with this certificate and requires every client to
    /// present one signed by the CA (no certificate: no handshake).
    pub fn server_config(&self) -> anyhow::Result<ServerTlsConfig> {
        let (ca, identity) = self.read()?;
        Ok(ServerTlsConfig::new()
            .identity(identity)
            .client_ca_root(ca)
            .client_auth_optional(false))
    }

    /// Calls a server whose certificate names `server_name` (its DNS SAN:
    /// `localhost`, or the service name in compose), presenting this
    /// certificate.
    pub fn client_config(&self, server_name: &str) -> anyhow::Result<ClientTlsConfig> {
        let (ca, identity) = self.read()?;
        Ok(ClientTlsConfig::new()
            .ca_certificate(ca)
            .identity(identity)
            .domain_name(server_name))
    }

    /// An endpoint for `uri` presenting this certificate: an `http://`
    /// address is called as `https://`, and the server's certificate must
    /// name the address's host (every server certificate names its service,
    /// `localhost` and `127.0.0.1`).
    pub fn endpoint(&self, uri: &str) -> anyhow::Result<Endpoint> {
        let (ca, identity) = self.read()?;
        let uri = match uri.strip_prefix("http://") {
            Some(rest) => format!("https://{rest}"),
            None => uri.to_owned(),
        };
        Endpoint::from_shared(uri.clone())
            .with_context(|| format!("address {uri}"))?
            .tls_config(ClientTlsConfig::new().ca_certificate(ca).identity(identity))
            .with_context(|| format!("TLS for {uri}"))
    }

    fn read(&self) -> anyhow::Result<(Certificate, tonic::transport::Identity)> {
        let read = |path: &Path| {
            std::fs::read(path).with_context(|| format!("reading TLS file {}", path.display()))
        };
        let ca = Certificate::from_pem(read(&self.ca)?);
        let identity = tonic::transport::Identity::from_pem(read(&self.cert)?, read(&self.key)?);
        Ok((ca, identity))
    }
}
