//! The HTTP side: the pages, the JSON API, OTLP/HTTP's `POST /v1/traces`
//! and `/healthz`. Each handler reads or writes the store once and hands
//! the rendering to [`crate::html`] or serde.

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};

use crate::model::{SpanRecord, Trace, parse_trace_id};
use crate::otlp::{self, BodyError};
use crate::store::{SharedStore, StoreStats};
use crate::tree::TraceSummary;
use crate::{html, lock};

/// Traces listed when a request does not say how many.
const DEFAULT_LIMIT: usize = 50;
/// The most a request may ask for.
const MAX_LIMIT: usize = 1000;
/// The largest OTLP/HTTP body accepted as sent.
const MAX_BODY: usize = 32 * 1024 * 1024;

pub fn router(store: SharedStore) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/traces/{trace_id}", get(trace_page))
        .route("/api/traces", get(api_traces))
        .route("/api/traces/{trace_id}", get(api_trace))
        .route(
            "/v1/traces",
            post(otlp_export).layer(DefaultBodyLimit::max(MAX_BODY)),
        )
        .route("/healthz", get(healthz))
        .with_state(store)
}

/// A trace as the JSON API serves it: its summary and its spans.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TraceDocument {
    #[serde(flatten)]
    pub summary: TraceSummary,
    pub spans: Vec<SpanRecord>,
}

impl From<Trace> for TraceDocument {
    fn from(trace: Trace) -> Self {
        Self {
            summary: TraceSummary::of(&trace),
            spans: trace.spans,
        }
    }
}

impl From<TraceDocument> for Trace {
    fn from(document: TraceDocument) -> Self {
        Self {
            trace_id: document.summary.trace_id,
            spans: document.spans,
        }
    }
}

/// `GET /api/traces`' answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TraceList {
    pub traces: Vec<TraceDocument>,
}

#[derive(Debug, Deserialize)]
struct Search {
    /// A trace id or a saga id.
    q: Option<String>,
    limit: Option<usize>,
}

#[derive(Debug, Deserialize)]
struct ApiQuery {
    saga_id: Option<String>,
    limit: Option<usize>,
}

fn limit(asked: Option<usize>) -> usize {
    asked.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT)
}

/// The traces `q` names: the trace of that id, or those of that saga.
fn search(store: &SharedStore, q: &str, limit: usize) -> Vec<Trace> {
    let store = lock(store);
    let by_id = parse_trace_id(q).and_then(|id| store.trace(&id));
    by_id
        .into_iter()
        .chain(store.by_saga(q.trim(), limit))
        .take(limit)
        .collect()
}

async fn index(State(store): State<SharedStore>, Query(search_for): Query<Search>) -> Html<String> {
    let limit = limit(search_for.limit);
    let query = search_for.q.as_deref().filter(|q| !q.trim().is_empty());
    let traces = match query {
        Some(q) => search(&store, q, limit),
        None => lock(&store).recent(limit),
    };
    let stats = lock(&store).stats();
    let summaries: Vec<TraceSummary> = traces.iter().map(TraceSummary::of).collect();
    Html(html::index(&summaries, query, &stats))
}

async fn trace_page(State(store): State<SharedStore>, Path(trace_id): Path<String>) -> Response {
    match parse_trace_id(&trace_id).and_then(|id| lock(&store).trace(&id)) {
        Some(trace) => Html(html::trace(&trace)).into_response(),
        None => (StatusCode::NOT_FOUND, Html(html::not_found(&trace_id))).into_response(),
    }
}

async fn api_traces(
    State(store): State<SharedStore>,
    Query(query): Query<ApiQuery>,
) -> Json<TraceList> {
    let limit = limit(query.limit);
    let traces = match query.saga_id.as_deref() {
        Some(saga_id) => lock(&store).by_saga(saga_id, limit),
        None => lock(&store).recent(limit),
    };
    Json(TraceList {
        traces: traces.into_iter().map(TraceDocument::from).collect(),
    })
}

async fn api_trace(State(store): State<SharedStore>, Path(trace_id): Path<String>) -> Response {
    match parse_trace_id(&trace_id).and_then(|id| lock(&store).trace(&id)) {
        Some(trace) => Json(TraceDocument::from(trace)).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({ "error": format!("trace {trace_id} not received") })),
        )
            .into_response(),
    }
}

async fn otlp_export(
    State(store): State<SharedStore>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let header = |name| headers.get(name).and_then(|v| v.to_str().ok());
    match otlp::decode_body(
        header(header::CONTENT_TYPE),
        header(header::CONTENT_ENCODING),
        &body,
    ) {
        Ok((request, encoding)) => {
            lock(&store).insert(otlp::spans_of(request));
            (
                [(header::CONTENT_TYPE, encoding.content_type())],
                encoding.success(),
            )
                .into_response()
        }
        Err(error) => {
            let status = match error {
                BodyError::UnsupportedContentType(_) | BodyError::UnsupportedContentEncoding(_) => {
                    StatusCode::UNSUPPORTED_MEDIA_TYPE
                }
                BodyError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
                BodyError::Gzip(_) | BodyError::Protobuf(_) | BodyError::Json(_) => {
                    StatusCode::BAD_REQUEST
                }
            };
            tracing::debug!(%error, "OTLP/HTTP export refused");
            (status, error.to_string()).into_response()
        }
    }
}

async fn healthz(State(store): State<SharedStore>) -> Json<StoreStats> {
    Json(lock(&store).stats())
}
