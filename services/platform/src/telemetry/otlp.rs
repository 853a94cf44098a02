//! Where and how spans are exported: the standard OTLP exporter variables
//! (<https://opentelemetry.io/docs/specs/otel/protocol/exporter/>) read into
//! an [`ExportPlan`], then the opentelemetry-otlp exporter built from it.
//!
//! - [`plan`] is a pure function of the variables (every decision is tested
//!   without touching the process environment). A per-signal variable
//!   (`OTEL_EXPORTER_OTLP_TRACES_*`) wins over the generic one; an empty one
//!   counts as unset. A value the mesh cannot honour is a [`Refusal`]
//!   naming the variable and its value: export stays off rather than going
//!   somewhere else or in another way than asked.
//! - The plan is passed to the crate's builders explicitly (protocol,
//!   endpoint, timeout, compression, TLS), so the exporter does what the
//!   plan says; the crate still reads `OTEL_EXPORTER_OTLP_HEADERS` itself.
//! - TLS is rustls over `ring`, trusting the system's roots, or only the CA
//!   of `OTEL_EXPORTER_OTLP_CERTIFICATE` when it is set (as the other
//!   OpenTelemetry SDKs do); the client certificate and key are presented
//!   when both are given.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use opentelemetry_otlp::{
    Compression, SpanExporter, WithExportConfig as _, WithHttpConfig as _, WithTonicConfig as _,
};

/// The protocol spans go out with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Protocol {
    Grpc,
    HttpProtobuf,
    HttpJson,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Grpc => "grpc",
            Protocol::HttpProtobuf => "http/protobuf",
            Protocol::HttpJson => "http/json",
        })
    }
}

/// How spans are exported, as the variables ask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ExportPlan {
    pub protocol: Protocol,
    /// The full URL spans are sent to (`/v1/traces` already appended to a
    /// generic HTTP endpoint; a scheme given to a bare gRPC one).
    pub endpoint: String,
    /// How long one export may take.
    pub timeout: Duration,
    pub gzip: bool,
    /// Set for an `https` endpoint: what to trust and what to present.
    pub tls: Option<TlsPlan>,
}

/// The TLS files of an `https` endpoint (read when the exporter is built).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(super) struct TlsPlan {
    /// PEM CA certificates to trust instead of the system's roots.
    pub ca: Option<TlsFile>,
    /// PEM certificate chain and private key to present to the collector.
    pub client: Option<(TlsFile, TlsFile)>,
}

/// A PEM file, with the variable that named it (for errors).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct TlsFile {
    pub variable: String,
    pub path: PathBuf,
}

impl TlsFile {
    fn read(&self) -> Result<Vec<u8>, String> {
        std::fs::read(&self.path).map_err(|error| self.error(error))
    }

    /// `error` about this file, naming it as it was given.
    fn error(&self, error: impl fmt::Display) -> String {
        format!("{}={}: {error}", self.variable, self.path.display())
    }
}

/// A variable whose value the mesh cannot honour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Refusal {
    pub variable: String,
    pub value: String,
    pub reason: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={:?}: {}", self.variable, self.value, self.reason)
    }
}

const PREFIX: &str = "OTEL_EXPORTER_OTLP_";
const TRACES_PREFIX: &str = "OTEL_EXPORTER_OTLP_TRACES_";
/// The exporter's default deadline of one export (the spec's).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// One setting as given: the variable that gave it and its value.
struct Setting {
    variable: String,
    value: String,
}

impl Setting {
    fn refuse(&self, reason: impl Into<String>) -> Refusal {
        Refusal {
            variable: self.variable.clone(),
            value: self.value.clone(),
            reason: reason.into(),
        }
    }
}

/// The plan the variables `var` gives (`var(name)` is the value of
/// variable `name`, if set).
pub(super) fn plan(var: impl Fn(&str) -> Option<String>) -> Result<ExportPlan, Refusal> {
    let setting = |key: &str| {
        [format!("{TRACES_PREFIX}{key}"), format!("{PREFIX}{key}")]
            .into_iter()
            .find_map(|variable| {
                let value = var(&variable)?.trim().to_owned();
                (!value.is_empty()).then_some(Setting { variable, value })
            })
    };

    let protocol = match setting("PROTOCOL") {
        None => Protocol::Grpc,
        Some(s) => match s.value.to_ascii_lowercase().as_str() {
            "grpc" => Protocol::Grpc,
            "http/protobuf" => Protocol::HttpProtobuf,
            "http/json" => Protocol::HttpJson,
            _ => return Err(s.refuse("the protocols are grpc, http/protobuf and http/json")),
        },
    };

    let endpoint = match (protocol, setting("ENDPOINT")) {
        (Protocol::Grpc, None) => "http://localhost:4317".to_owned(),
        (_, None) => "http://localhost:4318/v1/traces".to_owned(),
        (Protocol::Grpc, Some(s)) => grpc_endpoint(&s, insecure(setting("INSECURE")))?,
        (_, Some(s)) => http_endpoint(&s)?,
    };

    let timeout = match setting("TIMEOUT") {
        None => DEFAULT_TIMEOUT,
        Some(s) => s
            .value
            .parse::<u64>()
            .map(Duration::from_millis)
            .map_err(|_| s.refuse("not a number of milliseconds"))?,
    };

    let gzip = match setting("COMPRESSION") {
        None => false,
        Some(s) => match s.value.to_ascii_lowercase().as_str() {
            "gzip" => true,
            "none" => false,
            _ => return Err(s.refuse("the compressions are gzip and none")),
        },
    };

    let tls = if endpoint.starts_with("https://") {
        let path = |s: Setting| TlsFile {
            path: PathBuf::from(s.value),
            variable: s.variable,
        };
        let client = match (setting("CLIENT_CERTIFICATE"), setting("CLIENT_KEY")) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some((path(cert), path(key))),
            (Some(given), None) => {
                return Err(given.refuse(format!("{PREFIX}CLIENT_KEY is not set")));
            }
            (None, Some(given)) => {
                return Err(given.refuse(format!("{PREFIX}CLIENT_CERTIFICATE is not set")));
            }
        };
        Some(TlsPlan {
            ca: setting("CERTIFICATE").map(path),
            client,
        })
    } else {
        None
    };

    Ok(ExportPlan {
        protocol,
        endpoint,
        timeout,
        gzip,
        tls,
    })
}

/// `OTEL_EXPORTER_OTLP_INSECURE` (or the traces one) says `true`.
fn insecure(setting: Option<Setting>) -> bool {
    setting.is_some_and(|s| s.value.eq_ignore_ascii_case("true"))
}

/// A gRPC endpoint: `http` is plaintext, `https` TLS, and one without a
/// scheme is TLS unless `insecure` (the spec's rule for `INSECURE`).
fn grpc_endpoint(s: &Setting, insecure: bool) -> Result<String, Refusal> {
    let endpoint = if s.value.contains("://") {
        s.value.clone()
    } else if insecure {
        format!("http://{}", s.value)
    } else {
        format!("https://{}", s.value)
    };
    checked_url(s, &endpoint)?;
    Ok(endpoint)
}

/// An HTTP endpoint: the traces variable is the URL as given (`/` for no
/// path), the generic one a base URL that `v1/traces` is appended to.
fn http_endpoint(s: &Setting) -> Result<String, Refusal> {
    let url = &s.value;
    let uri = checked_url(s, url)?;
    if !s.variable.starts_with(TRACES_PREFIX) {
        let base = url.strip_suffix('/').unwrap_or(url);
        Ok(format!("{base}/v1/traces"))
    } else if uri.path() == "/" && !url.ends_with('/') && uri.query().is_none() {
        Ok(format!("{url}/"))
    } else {
        Ok(url.clone())
    }
}

/// `url` parsed, if it is an `http` or `https` URL with a host.
fn checked_url(s: &Setting, url: &str) -> Result<http::Uri, Refusal> {
    let uri: http::Uri = url
        .parse()
        .map_err(|_| s.refuse("not a URL (http://host:port or https://host:port)"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
        return Err(s.refuse("the endpoint must be an http:// or https:// URL with a host"));
    }
    Ok(uri)
}

/// The exporter `plan` describes. A gRPC exporter's channel lives on the
/// current tokio runtime.
pub(super) fn exporter(plan: &ExportPlan) -> Result<SpanExporter, String> {
    let built = match plan.protocol {
        Protocol::Grpc => {
            if tokio::runtime::Handle::try_current().is_err() {
                return Err("no tokio runtime to run the exporter's channel on".to_owned());
            }
            let mut builder = SpanExporter::builder()
                .with_tonic()
                .with_endpoint(plan.endpoint.clone())
                .with_timeout(plan.timeout);
            if plan.gzip {
                builder = builder.with_compression(Compression::Gzip);
            }
            if let Some(tls) = &plan.tls {
                builder = builder.with_tls_config(grpc_tls(tls)?);
            }
            builder.build()
        }
        Protocol::HttpProtobuf | Protocol::HttpJson => {
            let mut builder = SpanExporter::builder()
                .with_http()
                .with_protocol(match plan.protocol {
                    Protocol::HttpJson => opentelemetry_otlp::Protocol::HttpJson,
                    _ => opentelemetry_otlp::Protocol::HttpBinary,
                })
                .with_endpoint(plan.endpoint.clone())
                .with_timeout(plan.timeout)
                .with_http_client(http_client(plan)?);
            if plan.gzip {
                builder = builder.with_compression(Compression::Gzip);
            }
            builder.build()
        }
    };
    built.map_err(|error| error.to_string())
}

fn grpc_tls(
    tls: &TlsPlan,
) -> Result<opentelemetry_otlp::tonic_types::transport::ClientTlsConfig, String> {
    use opentelemetry_otlp::tonic_types::transport::{Certificate, ClientTlsConfig, Identity};
    let mut config = ClientTlsConfig::new();
    config = match &tls.ca {
        Some(ca) => config.ca_certificate(Certificate::from_pem(ca.read()?)),
        None => config.with_native_roots(),
    };
    if let Some((cert, key)) = &tls.client {
        config = config.identity(Identity::from_pem(cert.read()?, key.read()?));
    }
    Ok(config)
}

/// The OTLP/HTTP client: reqwest's blocking one (the batch processor
/// exports from a thread of its own, outside any runtime), built on a
/// thread of its own too (it may not be built inside a runtime).
fn http_client(plan: &ExportPlan) -> Result<reqwest::blocking::Client, String> {
    // reqwest's TLS asks rustls for the process's provider; without one it
    // would want aws-lc. Another part of the process may have set one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = reqwest::blocking::Client::builder().timeout(plan.timeout);
    if let Some(tls) = &plan.tls {
        if let Some(ca) = &tls.ca {
            let certs = reqwest::Certificate::from_pem_bundle(&ca.read()?)
                .map_err(|error| ca.error(error))?;
            builder = builder.tls_certs_only(certs);
        }
        if let Some((cert, key)) = &tls.client {
            let mut pem = cert.read()?;
            pem.push(b'\n');
            pem.extend(key.read()?);
            let identity = reqwest::Identity::from_pem(&pem)
                .map_err(|error| cert.error(format_args!("with {}: {error}", key.variable)))?;
            builder = builder.identity(identity);
        }
    }
    std::thread::Builder::new()
        .name("otlp-http-client".to_owned())
        .spawn(move || builder.build())
        .map_err(|error| format!("starting the OTLP/HTTP client: {error}"))?
        .join()
        .map_err(|_| "building the OTLP/HTTP client panicked".to_owned())?
        .map_err(|error| format!("building the OTLP/HTTP client: {error}"))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn plan_of(vars: &[(&str, &str)]) -> Result<ExportPlan, Refusal> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        plan(|name| vars.get(name).cloned())
    }

    fn planned(vars: &[(&str, &str)]) -> ExportPlan {
        plan_of(vars).unwrap_or_else(|refusal| panic!("{vars:?} refused: {refusal}"))
    }

    fn refused(vars: &[(&str, &str)]) -> Refusal {
        match plan_of(vars) {
            Ok(plan) => panic!("{vars:?} planned {plan:?}"),
            Err(refusal) => refusal,
        }
    }

    #[test]
    fn a_grpc_endpoint_alone_is_plaintext_grpc_with_the_defaults() {
        assert_eq!(
            planned(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317")]),
            ExportPlan {
                protocol: Protocol::Grpc,
                endpoint: "http://collector:4317".to_owned(),
                timeout: Duration::from_secs(10),
                gzip: false,
                tls: None,
            }
        );
    }

    #[test]
    fn the_protocols_of_the_spec_are_taken_and_the_traces_one_wins() {
        for (vars, protocol) in [
            (
                vec![("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")],
                Protocol::Grpc,
            ),
            (
                vec![("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")],
                Protocol::HttpProtobuf,
            ),
            (
                vec![("OTEL_EXPORTER_OTLP_PROTOCOL", " HTTP/JSON ")],
                Protocol::HttpJson,
            ),
            (
                vec![
                    ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
                    ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
                ],
                Protocol::HttpProtobuf,
            ),
            (
                vec![
                    ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
                    ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", ""),
                ],
                Protocol::HttpProtobuf,
            ),
        ] {
            let mut vars = vars;
            vars.push(("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"));
            assert_eq!(planned(&vars).protocol, protocol, "{vars:?}");
        }
    }

    #[test]
    fn a_generic_http_endpoint_is_a_base_and_the_traces_one_is_used_as_is() {
        for (vars, endpoint) in [
            (
                vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")],
                "http://collector:4318/v1/traces",
            ),
            (
                vec![(
                    "OTEL_EXPORTER_OTLP_ENDPOINT",
                    "https://collector:4318/otlp/",
                )],
                "https://collector:4318/otlp/v1/traces",
            ),
            (
                vec![(
                    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                    "http://collector:4318/custom/path",
                )],
                "http://collector:4318/custom/path",
            ),
            (
                vec![(
                    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                    "http://collector:4318",
                )],
                "http://collector:4318/",
            ),
            (
                vec![
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://ignored:4318"),
                    (
                        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                        "http://traces:4318/v1/traces",
                    ),
                ],
                "http://traces:4318/v1/traces",
            ),
        ] {
            let mut vars = vars;
            vars.push(("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"));
            assert_eq!(planned(&vars).endpoint, endpoint, "{vars:?}");
        }
    }

    #[test]
    fn a_grpc_endpoint_without_a_scheme_is_tls_unless_insecure() {
        let secure = planned(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317")]);
        assert_eq!(secure.endpoint, "https://collector:4317");
        assert_eq!(secure.tls, Some(TlsPlan::default()));
        let insecure = planned(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317"),
            ("OTEL_EXPORTER_OTLP_TRACES_INSECURE", "TRUE"),
        ]);
        assert_eq!(insecure.endpoint, "http://collector:4317");
        assert_eq!(insecure.tls, None);
        // A scheme decides by itself.
        let explicit = planned(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector:4317"),
            ("OTEL_EXPORTER_OTLP_INSECURE", "true"),
        ]);
        assert_eq!(explicit.endpoint, "https://collector:4317");
        assert!(explicit.tls.is_some());
    }

    #[test]
    fn https_endpoints_carry_the_ca_and_the_client_identity() {
        for protocol in ["grpc", "http/protobuf"] {
            let plan = planned(&[
                ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector:4317"),
                ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/ignored/ca.pem"),
                ("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", "/etc/otel/ca.pem"),
                ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", "/etc/otel/me.pem"),
                ("OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY", "/etc/otel/me.key"),
            ]);
            let file = |variable: &str, path: &str| TlsFile {
                variable: variable.to_owned(),
                path: path.into(),
            };
            assert_eq!(
                plan.tls,
                Some(TlsPlan {
                    ca: Some(file(
                        "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
                        "/etc/otel/ca.pem"
                    )),
                    client: Some((
                        file("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", "/etc/otel/me.pem"),
                        file("OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY", "/etc/otel/me.key"),
                    )),
                }),
                "{protocol}"
            );
        }
        // Without TLS the files have nothing to do.
        let plain = planned(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/etc/otel/ca.pem"),
        ]);
        assert_eq!(plain.tls, None);
    }

    #[test]
    fn gzip_and_none_compress_or_not_and_the_traces_one_wins() {
        for (vars, gzip) in [
            (vec![("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")], true),
            (
                vec![("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "GZIP")],
                true,
            ),
            (vec![("OTEL_EXPORTER_OTLP_COMPRESSION", "none")], false),
            (
                vec![
                    ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
                    ("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "none"),
                ],
                false,
            ),
        ] {
            let mut vars = vars;
            vars.push(("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"));
            assert_eq!(planned(&vars).gzip, gzip, "{vars:?}");
        }
    }

    #[test]
    fn the_timeout_is_in_milliseconds() {
        let plan = planned(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
        ]);
        assert_eq!(plan.timeout, Duration::from_millis(2500));
    }

    #[test]
    fn what_cannot_be_honoured_is_refused_naming_the_variable_and_value() {
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317");
        for (vars, variable, value) in [
            (
                vec![endpoint, ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "thrift")],
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
                "thrift",
            ),
            (
                vec![endpoint, ("OTEL_EXPORTER_OTLP_COMPRESSION", "zstd")],
                "OTEL_EXPORTER_OTLP_COMPRESSION",
                "zstd",
            ),
            (
                vec![endpoint, ("OTEL_EXPORTER_OTLP_TIMEOUT", "10s")],
                "OTEL_EXPORTER_OTLP_TIMEOUT",
                "10s",
            ),
            (
                vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "unix:///run/otel.sock")],
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                "unix:///run/otel.sock",
            ),
            (
                vec![
                    ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
                    ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "collector:4318"),
                ],
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "collector:4318",
            ),
            (
                vec![
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector:4317"),
                    ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", "/etc/otel/me.pem"),
                ],
                "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
                "/etc/otel/me.pem",
            ),
        ] {
            let refusal = refused(&vars);
            assert_eq!(
                (refusal.variable.as_str(), refusal.value.as_str()),
                (variable, value),
                "{vars:?}"
            );
            let line = refusal.to_string();
            assert!(
                line.starts_with(&format!("{variable}=\"{value}\": ")),
                "{line}"
            );
        }
    }

    #[tokio::test]
    async fn every_plan_builds_its_exporter() {
        for vars in [
            vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")],
            vec![
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://127.0.0.1:4317"),
                ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
            ],
            vec![
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://127.0.0.1:4318"),
                ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
            ],
            vec![
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"),
            ],
        ] {
            exporter(&planned(&vars)).unwrap_or_else(|error| panic!("{vars:?}: {error}"));
        }
    }

    #[test]
    fn a_tls_file_that_cannot_be_read_is_named() {
        let plan = planned(&[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://127.0.0.1:4318"),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/nonexistent/ca.pem"),
        ]);
        let error = exporter(&plan).map(|_| ()).unwrap_err();
        assert!(
            error.starts_with("OTEL_EXPORTER_OTLP_CERTIFICATE=/nonexistent/ca.pem: "),
            "{error}"
        );
    }
}
