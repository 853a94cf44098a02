//! Who is calling: the SPIFFE-style name (`spiffe://commerce/<name>`) in the
//! URI SAN of the certificate the peer presented during the mutual TLS
//! handshake. The CA of the mesh (see [`super::certs`]) puts exactly one
//! there; a certificate with none, several or another trust domain names no
//! one.

use std::fmt;

use tonic::transport::CertificateDer;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer as _, X509Certificate};

/// The trust domain of every identity of the mesh.
pub const TRUST_DOMAIN: &str = "commerce";

/// The URI SAN naming `name` in the mesh's trust domain.
pub fn spiffe_uri(name: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/{name}")
}

/// A caller of the mesh, as its certificate names it (`orchestrator`, `bff`,
/// `operator`...). Handlers may read it from the request's extensions, where
/// [`super::AuthorizeLayer`] puts it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity(String);

impl Identity {
    /// Only well-formed names: one path segment of lowercase letters, digits
    /// and `-`, so a name compares exactly with the policy tables.
    pub fn parse(name: &str) -> Option<Self> {
        let well_formed = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        well_formed.then(|| Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The identity of a DER certificate: its one `spiffe://commerce/...`
    /// URI SAN.
    pub fn of_certificate(der: &[u8]) -> Option<Self> {
        let (_, x509) = X509Certificate::from_der(der).ok()?;
        let sans = x509.subject_alternative_name().ok()??;
        let prefix = format!("spiffe://{TRUST_DOMAIN}/");
        let mut names = sans
            .value
            .general_names
            .iter()
            .filter_map(|name| match name {
                GeneralName::URI(uri) => uri.strip_prefix(&prefix),
                _ => None,
            });
        let name = names.next()?;
        // Two identities in one certificate name no one.
        if names.next().is_some() {
            return None;
        }
        Self::parse(name)
    }

    /// The identity of the peer of a connection, from its certificate chain
    /// (the leaf comes first).
    pub fn of_peer(certificates: &[CertificateDer<'_>]) -> Option<Self> {
        Self::of_certificate(certificates.first()?)
    }

    /// The identity of the caller of an HTTP request served over TLS; `None`
    /// if the connection is not TLS or its certificate names no one.
    pub fn of_request<B>(request: &http::Request<B>) -> Option<Self> {
        let certificates = request
            .extensions()
            .get::<TlsConnectInfo<TcpConnectInfo>>()?
            .peer_certs()?;
        Self::of_peer(&certificates)
    }

    /// The same for a gRPC request in a handler: the identity the
    /// authorization layer found, else that of the peer's certificate.
    pub fn of_grpc_request<T>(request: &tonic::Request<T>) -> Option<Self> {
        if let Some(identity) = request.extensions().get::<Identity>() {
            return Some(identity.clone());
        }
        Self::of_peer(&request.peer_certs()?)
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, KeyPair, SanType};

    use super::*;

    fn certificate(uris: &[&str]) -> Vec<u8> {
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        for uri in uris {
            params
                .subject_alt_names
                .push(SanType::URI((*uri).try_into().unwrap()));
        }
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn the_one_spiffe_uri_of_the_trust_domain_names_the_caller() {
        let der = certificate(&["spiffe://commerce/orchestrator"]);
        assert_eq!(
            Identity::of_certificate(&der),
            Some(Identity("orchestrator".to_owned()))
        );
    }

    #[test]
    fn no_other_certificate_names_anyone() {
        for uris in [
            &[][..],
            &["spiffe://elsewhere/orchestrator"],
            &["spiffe://commerce/"],
            &["spiffe://commerce/a/b"],
            &["spiffe://commerce/Operator"],
            &["spiffe://commerce/bff", "spiffe://commerce/operator"],
        ] {
            assert_eq!(
                Identity::of_certificate(&certificate(uris)),
                None,
                "{uris:?}"
            );
        }
        assert_eq!(Identity::of_certificate(b"not a certificate"), None);
    }
}
