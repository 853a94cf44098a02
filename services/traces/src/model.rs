//! A span as the viewer keeps and serves it: the OTLP span reduced to what
//! the views show, its ids in lowercase hex and its server's name beside it.
//! The JSON API serves these, and `show` reads them back.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The span attribute that names a saga (as the mesh's telemetry writes it).
pub const SAGA_ID: &str = "saga_id";

/// One span of one server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpanRecord {
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a span that started its trace.
    #[serde(default)]
    pub parent_span_id: String,
    pub name: String,
    /// The exporting resource's `service.name` (`unknown` without one).
    pub service: String,
    /// `SERVER`, `CLIENT`, `INTERNAL`, ... (`UNSPECIFIED` when not said).
    #[serde(default)]
    pub kind: String,
    pub start_unix_nano: u64,
    pub end_unix_nano: u64,
    #[serde(default)]
    pub status: SpanStatus,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub status_message: String,
    /// Every attribute as text (arrays and maps in a JSON-like form).
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    /// What happened during the span (log lines inside it, exceptions).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<SpanEvent>,
}

/// A span's status code, as OTLP says it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum SpanStatus {
    #[default]
    Unset,
    Ok,
    Error,
}

/// A timed event inside a span.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpanEvent {
    pub time_unix_nano: u64,
    pub name: String,
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
}

impl SpanRecord {
    /// How long the span lasted (0 if its clock ran backwards).
    pub fn duration_nanos(&self) -> u64 {
        self.end_unix_nano.saturating_sub(self.start_unix_nano)
    }

    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }

    pub fn saga_id(&self) -> Option<&str> {
        self.attribute(SAGA_ID).filter(|s| !s.is_empty())
    }

    pub fn is_error(&self) -> bool {
        self.status == SpanStatus::Error
    }

    pub fn status_text(&self) -> &'static str {
        match self.status {
            SpanStatus::Unset => "unset",
            SpanStatus::Ok => "ok",
            SpanStatus::Error => "error",
        }
    }
}

/// The spans of one trace received so far, in no particular order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trace {
    pub trace_id: String,
    pub spans: Vec<SpanRecord>,
}

/// A trace id or span id as bytes, in lowercase hex ("" for none).
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

/// `id` as a trace id: 32 hex digits, lowercased; `None` if it is not one.
pub fn parse_trace_id(id: &str) -> Option<String> {
    let id = id.trim();
    (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_ascii_lowercase())
}
