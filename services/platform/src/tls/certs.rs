//! A development certificate authority for the mesh: one CA and, signed by
//! it, a certificate per identity, so that every connection inside the mesh
//! is mutual TLS and every caller is named.
//!
//! Guarantees of [`ensure_dev_certs`]:
//! - idempotent: files that exist, parse, are signed by the directory's CA,
//!   carry exactly the names expected and stay valid for more than
//!   [`RENEW_BEFORE`] are kept; anything else is (re)issued;
//! - a new CA (the old one missing, unreadable or about to expire) reissues
//!   every leaf, since the old leaves no longer verify;
//! - keys are written `0600`, certificates `0644`, each through a temporary
//!   file and a rename, so a reader never sees half a file.
//!
//! Rotation is a rerun of this function followed by a restart of the servers
//! (they read their files at start).

use std::fs;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer as _, X509Certificate};

use super::identity::spiffe_uri;

/// The four servers of the mesh. Each one's certificate serves TLS under its
/// service name (the compose host name), `localhost` and `127.0.0.1`, and
/// also names it as a caller (the orchestrator calls the participants).
pub const SERVERS: &[&str] = &["orchestrator", "product", "point", "coupon"];

/// Callers that serve nothing: the BFF (which vouches for the user), an
/// operator (grpcurl, admin tools) and the fulfilment system (shipping).
pub const CLIENTS: &[&str] = &["bff", "operator", "fulfilment"];

/// How long the CA is valid.
pub const CA_VALIDITY: Duration = Duration::days(365);
/// How long a leaf certificate is valid.
pub const LEAF_VALIDITY: Duration = Duration::days(90);
/// A certificate this close to its end is reissued rather than kept.
pub const RENEW_BEFORE: Duration = Duration::days(14);
/// Issued slightly in the past, so a peer whose clock is a little behind
/// does not reject a fresh certificate.
const CLOCK_SKEW: Duration = Duration::hours(1);

const CA_CERT: &str = "ca.pem";
const CA_KEY: &str = "ca.key";

/// Where a directory made by [`ensure_dev_certs`] keeps an identity's files.
pub fn cert_path(dir: &Path, identity: &str) -> PathBuf {
    dir.join(format!("{identity}.pem"))
}

pub fn key_path(dir: &Path, identity: &str) -> PathBuf {
    dir.join(format!("{identity}.key"))
}

pub fn ca_path(dir: &Path) -> PathBuf {
    dir.join(CA_CERT)
}

/// The development certificates of tests: one directory shared by every
/// test process on the machine (tests run as many processes at once) for a
/// week. It is made complete in a directory of its own and renamed into
/// place, so no process ever reads it half-written, and its name carries
/// the ISO week, so its certificates are always far from their end.
pub fn test_dir() -> &'static Path {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let now = OffsetDateTime::now_utc();
        let name = format!("commerce-test-certs-{}-w{:02}", now.year(), now.iso_week());
        let dir = std::env::temp_dir().join(name);
        if dir.is_dir() {
            return dir;
        }
        let fresh = dir.with_extension(format!("new-{}", std::process::id()));
        let _ = fs::remove_dir_all(&fresh);
        #[allow(clippy::expect_used)] // Test support: fail the test loudly.
        ensure_dev_certs(&fresh).expect("issuing the tests' certificates");
        if fs::rename(&fresh, &dir).is_err() {
            // Another process renamed its own first: use that one.
            let _ = fs::remove_dir_all(&fresh);
        }
        dir
    })
}

/// What [`ensure_dev_certs`] did, file stem by file stem (`ca`, `point`...).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CertsReport {
    pub issued: Vec<String>,
    pub kept: Vec<String>,
}

/// Makes sure `dir` holds a valid development CA and a certificate and key
/// for every server and client identity of the mesh (see the module docs).
pub fn ensure_dev_certs(dir: &Path) -> anyhow::Result<CertsReport> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut report = CertsReport::default();
    let now = OffsetDateTime::now_utc();

    let (ca, ca_der, fresh_ca) = match load_ca(dir, now) {
        Some((issuer, der)) => {
            report.kept.push("ca".to_owned());
            (issuer, der, false)
        }
        None => {
            let (issuer, der) = issue_ca(dir, now)?;
            report.issued.push("ca".to_owned());
            (issuer, der, true)
        }
    };
    let (_, ca_x509) = X509Certificate::from_der(&ca_der).context("parsing the new CA")?;

    for leaf in SERVERS
        .iter()
        .map(|name| Leaf::server(name))
        .chain(CLIENTS.iter().map(|name| Leaf::client(name)))
    {
        if !fresh_ca && leaf.is_current(dir, &ca_x509, now) {
            report.kept.push(leaf.name.to_owned());
            continue;
        }
        leaf.issue(dir, &ca, now)?;
        report.issued.push(leaf.name.to_owned());
    }
    Ok(report)
}

/// The CA of `dir`, if its files exist, parse and stay valid long enough to
/// sign a leaf that outlives nothing it vouches for.
fn load_ca(dir: &Path, now: OffsetDateTime) -> Option<(Issuer<'static, KeyPair>, Vec<u8>)> {
    let cert_pem = fs::read_to_string(dir.join(CA_CERT)).ok()?;
    let key_pem = fs::read_to_string(dir.join(CA_KEY)).ok()?;
    let der = pem_to_der(&cert_pem)?;
    let (_, x509) = X509Certificate::from_der(&der).ok()?;
    if !x509.is_ca() || !valid_for(&x509, now, LEAF_VALIDITY) {
        return None;
    }
    let key = KeyPair::from_pem(&key_pem).ok()?;
    // The key must be the one the certificate names.
    if !same_key(&x509, &key) {
        return None;
    }
    let issuer = Issuer::from_ca_cert_der(&der.clone().into(), key).ok()?;
    Some((issuer, der))
}

fn issue_ca(
    dir: &Path,
    now: OffsetDateTime,
) -> anyhow::Result<(Issuer<'static, KeyPair>, Vec<u8>)> {
    let mut params = CertificateParams::default();
    params.distinguished_name = distinguished_name("commerce mesh development CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = now - CLOCK_SKEW;
    params.not_after = now + CA_VALIDITY;
    let key = KeyPair::generate().context("generating the CA key")?;
    let key_pem = key.serialize_pem();
    let ca = CertifiedIssuer::self_signed(params, key).context("signing the CA")?;
    write_private(&dir.join(CA_KEY), &key_pem)?;
    write_public(&dir.join(CA_CERT), &ca.pem())?;
    let der = ca.der().to_vec();
    // Reload through the same path as an existing CA, so both are one type.
    let key = KeyPair::from_pem(&key_pem).context("reloading the CA key")?;
    let issuer = Issuer::from_ca_cert_der(&der.clone().into(), key).context("reloading the CA")?;
    Ok((issuer, der))
}

/// One identity's certificate: its names and what it may be used for.
struct Leaf<'a> {
    name: &'a str,
    /// DNS names and addresses it serves under; empty for a client only.
    dns: Vec<String>,
    ips: Vec<IpAddr>,
    serves: bool,
}

impl<'a> Leaf<'a> {
    fn server(name: &'a str) -> Self {
        Self {
            name,
            dns: vec!["localhost".to_owned(), name.to_owned()],
            ips: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
            serves: true,
        }
    }

    fn client(name: &'a str) -> Self {
        Self {
            name,
            dns: Vec::new(),
            ips: Vec::new(),
            serves: false,
        }
    }

    /// Subject alternative names, as compared with an existing certificate.
    fn expected_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.dns.iter().map(|d| format!("dns:{d}")).collect();
        names.extend(self.ips.iter().map(|ip| format!("ip:{ip}")));
        names.push(format!("uri:{}", spiffe_uri(self.name)));
        names.sort();
        names
    }

    fn is_current(&self, dir: &Path, ca: &X509Certificate<'_>, now: OffsetDateTime) -> bool {
        let (Ok(cert_pem), Ok(key_pem)) = (
            fs::read_to_string(cert_path(dir, self.name)),
            fs::read_to_string(key_path(dir, self.name)),
        ) else {
            return false;
        };
        let Some(der) = pem_to_der(&cert_pem) else {
            return false;
        };
        let Ok((_, x509)) = X509Certificate::from_der(&der) else {
            return false;
        };
        let Ok(key) = KeyPair::from_pem(&key_pem) else {
            return false;
        };
        same_key(&x509, &key)
            && x509.verify_signature(Some(ca.public_key())).is_ok()
            && valid_for(&x509, now, RENEW_BEFORE)
            && names_of(&x509) == self.expected_names()
    }

    fn issue(
        &self,
        dir: &Path,
        ca: &Issuer<'_, KeyPair>,
        now: OffsetDateTime,
    ) -> anyhow::Result<()> {
        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name(self.name);
        let mut sans = Vec::new();
        for dns in &self.dns {
            sans.push(SanType::DnsName(dns.as_str().try_into()?));
        }
        sans.extend(self.ips.iter().copied().map(SanType::IpAddress));
        sans.push(SanType::URI(spiffe_uri(self.name).as_str().try_into()?));
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if self.serves {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        params.use_authority_key_identifier_extension = true;
        params.not_before = now - CLOCK_SKEW;
        params.not_after = now + LEAF_VALIDITY;
        let key = KeyPair::generate().with_context(|| format!("generating {}'s key", self.name))?;
        let cert = params
            .signed_by(&key, ca)
            .with_context(|| format!("signing {}'s certificate", self.name))?;
        write_private(&key_path(dir, self.name), &key.serialize_pem())?;
        write_public(&cert_path(dir, self.name), &cert.pem())?;
        Ok(())
    }
}

fn distinguished_name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "commerce mesh");
    name.push(DnType::CommonName, common_name);
    name
}

/// Whether `x509` is valid now and for at least `margin` more.
fn valid_for(x509: &X509Certificate<'_>, now: OffsetDateTime, margin: Duration) -> bool {
    let validity = x509.validity();
    validity.not_before.to_datetime() <= now && validity.not_after.to_datetime() - margin > now
}

fn names_of(x509: &X509Certificate<'_>) -> Vec<String> {
    let Ok(Some(sans)) = x509.subject_alternative_name() else {
        return Vec::new();
    };
    let mut names: Vec<String> = sans
        .value
        .general_names
        .iter()
        .map(|name| match name {
            GeneralName::DNSName(dns) => format!("dns:{dns}"),
            GeneralName::URI(uri) => format!("uri:{uri}"),
            GeneralName::IPAddress(bytes) => match <[u8; 4]>::try_from(*bytes) {
                Ok(v4) => format!("ip:{}", IpAddr::from(v4)),
                Err(_) => match <[u8; 16]>::try_from(*bytes) {
                    Ok(v6) => format!("ip:{}", IpAddr::from(v6)),
                    Err(_) => "ip:?".to_owned(),
                },
            },
            other => format!("other:{other}"),
        })
        .collect();
    names.sort();
    names
}

/// Whether `key` is the private half of the key `x509` certifies.
fn same_key(x509: &X509Certificate<'_>, key: &KeyPair) -> bool {
    x509.public_key().subject_public_key.data.as_ref() == key.public_key_raw()
}

fn pem_to_der(pem: &str) -> Option<Vec<u8>> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
    Some(pem.contents)
}

fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    write_atomically(path, contents, 0o600)
}

fn write_public(path: &Path, contents: &str) -> anyhow::Result<()> {
    write_atomically(path, contents, 0o644)
}

fn write_atomically(path: &Path, contents: &str, mode: u32) -> anyhow::Result<()> {
    let temporary = path.with_extension("tmp");
    let _ = fs::remove_file(&temporary);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&temporary)
        .with_context(|| format!("creating {}", temporary.display()))?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", temporary.display()))?;
    // The umask may have narrowed the mode; state it exactly.
    fs::set_permissions(&temporary, fs::Permissions::from_mode(mode))?;
    fs::rename(&temporary, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("commerce-certs-{}", uuid::Uuid::new_v4()));
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn every_stem() -> Vec<String> {
        let mut stems = vec!["ca".to_owned()];
        stems.extend(SERVERS.iter().chain(CLIENTS).map(|s| (*s).to_owned()));
        stems
    }

    #[test]
    fn a_second_run_keeps_everything_and_a_lost_leaf_is_reissued_alone() {
        let dir = temp_dir();
        let first = ensure_dev_certs(&dir).unwrap();
        assert_eq!(first.issued, every_stem());
        assert!(first.kept.is_empty());

        let second = ensure_dev_certs(&dir).unwrap();
        assert_eq!(second.kept, every_stem());
        assert!(second.issued.is_empty());

        fs::remove_file(key_path(&dir, "point")).unwrap();
        let third = ensure_dev_certs(&dir).unwrap();
        assert_eq!(third.issued, vec!["point".to_owned()]);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_new_ca_reissues_every_leaf() {
        let dir = temp_dir();
        ensure_dev_certs(&dir).unwrap();
        fs::remove_file(dir.join(CA_KEY)).unwrap();
        let report = ensure_dev_certs(&dir).unwrap();
        assert_eq!(report.issued, every_stem());
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn keys_are_private_and_certificates_readable() {
        let dir = temp_dir();
        ensure_dev_certs(&dir).unwrap();
        let mode = |path: PathBuf| fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(dir.join(CA_KEY)), 0o600);
        assert_eq!(mode(dir.join(CA_CERT)), 0o644);
        assert_eq!(mode(key_path(&dir, "operator")), 0o600);
        assert_eq!(mode(cert_path(&dir, "operator")), 0o644);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn server_certificates_name_host_address_and_identity() {
        let dir = temp_dir();
        ensure_dev_certs(&dir).unwrap();
        let pem = fs::read_to_string(cert_path(&dir, "product")).unwrap();
        let der = pem_to_der(&pem).unwrap();
        let (_, x509) = X509Certificate::from_der(&der).unwrap();
        assert_eq!(
            names_of(&x509),
            vec![
                "dns:localhost",
                "dns:product",
                "ip:127.0.0.1",
                "uri:spiffe://commerce/product"
            ]
        );
        let client = fs::read_to_string(cert_path(&dir, "bff")).unwrap();
        let der = pem_to_der(&client).unwrap();
        let (_, x509) = X509Certificate::from_der(&der).unwrap();
        assert_eq!(names_of(&x509), vec!["uri:spiffe://commerce/bff"]);
        fs::remove_dir_all(dir).unwrap();
    }
}
