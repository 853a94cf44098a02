//! OTLP in: an export request reduced to [`SpanRecord`]s, and an OTLP/HTTP
//! body (protobuf or JSON, maybe gzipped) decoded into an export request.
//! Pure functions; the receivers ([`crate::grpc`], [`crate::http`]) call them.

use std::collections::BTreeMap;
use std::io::Read as _;

use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use prost::Message as _;

use crate::model::{SpanEvent, SpanRecord, SpanStatus, hex};

/// The largest OTLP/HTTP body accepted once decompressed.
pub const MAX_DECODED_BODY: u64 = 64 * 1024 * 1024;

/// The service name of a resource that gives none.
const UNKNOWN_SERVICE: &str = "unknown";

/// The spans of `request`, each with its resource's `service.name`. Spans
/// without a trace id or a span id are left out: nothing could find them.
pub fn spans_of(request: ExportTraceServiceRequest) -> Vec<SpanRecord> {
    let mut spans = Vec::new();
    for resource_spans in request.resource_spans {
        let service = resource_spans
            .resource
            .as_ref()
            .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
            .and_then(|kv| kv.value.as_ref())
            .map(text)
            .filter(|name| !name.is_empty())
            .unwrap_or_else(|| UNKNOWN_SERVICE.to_owned());
        for scope_spans in resource_spans.scope_spans {
            for span in scope_spans.spans {
                if is_unset(&span.trace_id) || is_unset(&span.span_id) {
                    continue;
                }
                let (status, status_message) = match span.status {
                    Some(status) => (status_code(status.code), status.message),
                    None => (SpanStatus::Unset, String::new()),
                };
                spans.push(SpanRecord {
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: if is_unset(&span.parent_span_id) {
                        String::new()
                    } else {
                        hex(&span.parent_span_id)
                    },
                    name: span.name,
                    service: service.clone(),
                    kind: kind_name(span.kind).to_owned(),
                    start_unix_nano: span.start_time_unix_nano,
                    end_unix_nano: span.end_time_unix_nano,
                    status,
                    status_message,
                    attributes: attributes(&span.attributes),
                    events: span
                        .events
                        .into_iter()
                        .map(|event| SpanEvent {
                            time_unix_nano: event.time_unix_nano,
                            attributes: attributes(&event.attributes),
                            name: event.name,
                        })
                        .collect(),
                });
            }
        }
    }
    spans
}

fn is_unset(id: &[u8]) -> bool {
    id.iter().all(|b| *b == 0)
}

fn status_code(code: i32) -> SpanStatus {
    match StatusCode::try_from(code) {
        Ok(StatusCode::Ok) => SpanStatus::Ok,
        Ok(StatusCode::Error) => SpanStatus::Error,
        _ => SpanStatus::Unset,
    }
}

fn kind_name(kind: i32) -> &'static str {
    match SpanKind::try_from(kind) {
        Ok(SpanKind::Internal) => "INTERNAL",
        Ok(SpanKind::Server) => "SERVER",
        Ok(SpanKind::Client) => "CLIENT",
        Ok(SpanKind::Producer) => "PRODUCER",
        Ok(SpanKind::Consumer) => "CONSUMER",
        _ => "UNSPECIFIED",
    }
}

fn attributes(attributes: &[KeyValue]) -> BTreeMap<String, String> {
    attributes
        .iter()
        .map(|kv| {
            (
                kv.key.clone(),
                kv.value.as_ref().map(text).unwrap_or_default(),
            )
        })
        .collect()
}

/// An attribute's value as text: scalars as themselves, arrays and maps in
/// a JSON-like form, bytes in hex.
fn text(value: &AnyValue) -> String {
    match &value.value {
        None => String::new(),
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(Value::BytesValue(b)) => hex(b),
        Some(Value::ArrayValue(array)) => {
            let items: Vec<String> = array.values.iter().map(text).collect();
            format!("[{}]", items.join(", "))
        }
        Some(Value::KvlistValue(list)) => {
            let items: Vec<String> = list
                .values
                .iter()
                .map(|kv| {
                    let value = kv.value.as_ref().map(text).unwrap_or_default();
                    format!("{}: {value}", kv.key)
                })
                .collect();
            format!("{{{}}}", items.join(", "))
        }
        // Newer protocol versions may add kinds this one cannot name.
        #[allow(unreachable_patterns)]
        Some(other) => format!("{other:?}"),
    }
}

/// The two encodings of OTLP/HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Protobuf,
    Json,
}

impl Encoding {
    /// The encoding a `Content-Type` names (its parameters ignored).
    pub fn of_content_type(content_type: &str) -> Option<Self> {
        let essence = content_type.split(';').next().unwrap_or("").trim();
        if essence.eq_ignore_ascii_case("application/x-protobuf") {
            Some(Self::Protobuf)
        } else if essence.eq_ignore_ascii_case("application/json") {
            Some(Self::Json)
        } else {
            None
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Self::Protobuf => "application/x-protobuf",
            Self::Json => "application/json",
        }
    }

    /// The (empty: every span accepted) answer to an export, so encoded.
    pub fn success(self) -> Vec<u8> {
        let response = ExportTraceServiceResponse::default();
        match self {
            Self::Protobuf => response.encode_to_vec(),
            Self::Json => b"{}".to_vec(),
        }
    }
}

/// Why an OTLP/HTTP body was refused.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("unsupported content type {0:?}: send application/x-protobuf or application/json")]
    UnsupportedContentType(String),
    #[error("unsupported content encoding {0:?}: send gzip or none")]
    UnsupportedContentEncoding(String),
    #[error("the body does not decompress: {0}")]
    Gzip(std::io::Error),
    #[error("the body is larger than {MAX_DECODED_BODY} bytes once decompressed")]
    TooLarge,
    #[error("not an OTLP protobuf export request: {0}")]
    Protobuf(#[from] prost::DecodeError),
    #[error("not an OTLP JSON export request: {0}")]
    Json(#[from] serde_json::Error),
}

/// An OTLP/HTTP request body as its export request, with the encoding to
/// answer in.
pub fn decode_body(
    content_type: Option<&str>,
    content_encoding: Option<&str>,
    body: &[u8],
) -> Result<(ExportTraceServiceRequest, Encoding), BodyError> {
    let content_type = content_type.unwrap_or("");
    let encoding = Encoding::of_content_type(content_type)
        .ok_or_else(|| BodyError::UnsupportedContentType(content_type.to_owned()))?;
    let inflated;
    let body = match content_encoding.map(str::trim) {
        None | Some("") | Some("identity") => body,
        Some(gzip) if gzip.eq_ignore_ascii_case("gzip") => {
            inflated = gunzip(body)?;
            &inflated[..]
        }
        Some(other) => return Err(BodyError::UnsupportedContentEncoding(other.to_owned())),
    };
    let request = match encoding {
        Encoding::Protobuf => ExportTraceServiceRequest::decode(body)?,
        Encoding::Json => serde_json::from_slice(body)?,
    };
    Ok((request, encoding))
}

fn gunzip(body: &[u8]) -> Result<Vec<u8>, BodyError> {
    let mut inflated = Vec::new();
    flate2::read::GzDecoder::new(body)
        .take(MAX_DECODED_BODY + 1)
        .read_to_end(&mut inflated)
        .map_err(BodyError::Gzip)?;
    if inflated.len() as u64 > MAX_DECODED_BODY {
        return Err(BodyError::TooLarge);
    }
    Ok(inflated)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::io::Write as _;

    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};

    use super::*;

    fn string(key: &str, value: &str) -> KeyValue {
        KeyValue {
            key: key.to_owned(),
            value: Some(AnyValue {
                value: Some(Value::StringValue(value.to_owned())),
            }),
            ..Default::default()
        }
    }

    fn request() -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![string("service.name", "point")],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans: vec![
                        Span {
                            trace_id: vec![0xab; 16],
                            span_id: vec![0x01; 8],
                            parent_span_id: vec![0x02; 8],
                            name: "deduct_points".to_owned(),
                            kind: SpanKind::Server as i32,
                            start_time_unix_nano: 10,
                            end_time_unix_nano: 30,
                            attributes: vec![
                                string("saga_id", "s-1"),
                                KeyValue {
                                    key: "attempt".to_owned(),
                                    value: Some(AnyValue {
                                        value: Some(Value::IntValue(2)),
                                    }),
                                    ..Default::default()
                                },
                            ],
                            status: Some(Status {
                                code: StatusCode::Error as i32,
                                message: "boom".to_owned(),
                            }),
                            ..Default::default()
                        },
                        // No ids: left out.
                        Span::default(),
                    ],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    #[test]
    fn a_span_keeps_its_ids_service_status_and_attributes() {
        let spans = spans_of(request());
        assert_eq!(spans.len(), 1);
        let span = &spans[0];
        assert_eq!(span.trace_id, "ab".repeat(16));
        assert_eq!(span.span_id, "0101010101010101");
        assert_eq!(span.parent_span_id, "0202020202020202");
        assert_eq!(span.service, "point");
        assert_eq!(span.kind, "SERVER");
        assert_eq!(span.duration_nanos(), 20);
        assert_eq!(span.status, SpanStatus::Error);
        assert_eq!(span.status_message, "boom");
        assert_eq!(span.saga_id(), Some("s-1"));
        assert_eq!(span.attribute("attempt"), Some("2"));
    }

    #[test]
    fn a_resource_without_a_name_is_unknown() {
        let mut request = request();
        request.resource_spans[0].resource = None;
        assert_eq!(spans_of(request)[0].service, "unknown");
    }

    #[test]
    fn protobuf_bodies_decode_plain_and_gzipped() {
        let body = request().encode_to_vec();
        let (decoded, encoding) = decode_body(Some("application/x-protobuf"), None, &body).unwrap();
        assert_eq!((decoded, encoding), (request(), Encoding::Protobuf));

        let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gzip.write_all(&body).unwrap();
        let gzipped = gzip.finish().unwrap();
        let (decoded, _) =
            decode_body(Some("application/x-protobuf"), Some("gzip"), &gzipped).unwrap();
        assert_eq!(decoded, request());
    }

    #[test]
    fn json_bodies_decode_with_hex_ids() {
        let body = r#"{"resourceSpans":[{"resource":{"attributes":[
            {"key":"service.name","value":{"stringValue":"coupon"}}]},
            "scopeSpans":[{"spans":[{"traceId":"5b8efff798038103d269b633813fc60c",
            "spanId":"eee19b7ec3c1b174","name":"use_coupon","kind":1,
            "startTimeUnixNano":"1544712660000000000","endTimeUnixNano":"1544712661000000000",
            "attributes":[{"key":"attempt","value":{"intValue":"1"}}]}]}]}]}"#;
        let (decoded, encoding) = decode_body(
            Some("application/json; charset=utf-8"),
            None,
            body.as_bytes(),
        )
        .unwrap();
        assert_eq!(encoding, Encoding::Json);
        let spans = spans_of(decoded);
        assert_eq!(spans[0].trace_id, "5b8efff798038103d269b633813fc60c");
        assert_eq!(spans[0].service, "coupon");
        assert_eq!(spans[0].duration_nanos(), 1_000_000_000);
        assert_eq!(spans[0].attribute("attempt"), Some("1"));
        assert!(spans[0].parent_span_id.is_empty());
    }

    #[test]
    fn other_bodies_are_refused() {
        assert!(matches!(
            decode_body(Some("text/plain"), None, b""),
            Err(BodyError::UnsupportedContentType(_))
        ));
        assert!(matches!(
            decode_body(Some("application/x-protobuf"), Some("br"), b""),
            Err(BodyError::UnsupportedContentEncoding(_))
        ));
        assert!(matches!(
            decode_body(Some("application/x-protobuf"), None, b"\xff\xff\xff"),
            Err(BodyError::Protobuf(_))
        ));
    }
}
