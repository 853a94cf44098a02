//! Every error the BFF answers, as RFC 9457 `application/problem+json`, and
//! the one table from gRPC codes to HTTP statuses.
//!
//! A mesh error keeps its `google.rpc.ErrorInfo` reason (`INSUFFICIENT_STOCK`,
//! `RATE_LIMITED`, ...) and the offending field of its `BadRequest`, renamed
//! to the JSON spelling (`lines[0].product_id` → `lines[0].productId`).

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tonic::{Code, Status};
use tonic_types::StatusExt;
use utoipa::ToSchema;

/// The media type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Reasons the BFF itself gives (the mesh's own reasons pass through).
pub mod reason {
    pub const INVALID_FIELD: &str = "INVALID_FIELD";
    pub const TOKEN_MISSING: &str = "TOKEN_MISSING";
    pub const TOKEN_INVALID: &str = "TOKEN_INVALID";
    pub const ROLE_REQUIRED: &str = "ROLE_REQUIRED";
    pub const IDEMPOTENCY_KEY_MISSING: &str = "IDEMPOTENCY_KEY_MISSING";
    pub const BODY_TOO_LARGE: &str = "BODY_TOO_LARGE";
    pub const UNSUPPORTED_MEDIA_TYPE: &str = "UNSUPPORTED_MEDIA_TYPE";
    pub const ROUTE_NOT_FOUND: &str = "ROUTE_NOT_FOUND";
    pub const METHOD_NOT_ALLOWED: &str = "METHOD_NOT_ALLOWED";
    pub const DEADLINE_EXCEEDED: &str = "DEADLINE_EXCEEDED";
    pub const MESH_REFUSED_BFF: &str = "MESH_REFUSED_BFF";
    pub const MESH_UNAVAILABLE: &str = "MESH_UNAVAILABLE";
    pub const MESH_ERROR: &str = "MESH_ERROR";
}

/// An RFC 9457 problem: the standard members plus the mesh's reason and the
/// offending field.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({
    "type": "urn:commerce:problem:INSUFFICIENT_POINTS",
    "title": "Conflict",
    "status": 409,
    "detail": "balance 1000 is less than 5000",
    "reason": "INSUFFICIENT_POINTS"
}))]
pub struct Problem {
    /// `urn:commerce:problem:<reason>`: one URI per reason, stable.
    #[serde(rename = "type")]
    pub kind: String,
    /// The HTTP status's phrase.
    pub title: String,
    /// The HTTP status, repeated.
    pub status: u16,
    /// What went wrong, for people.
    pub detail: String,
    /// The machine-readable reason (the mesh's `ErrorInfo.reason`).
    pub reason: String,
    /// The offending request field, header or parameter, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Seconds until a retry may succeed (also sent as `Retry-After`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_seconds: Option<u64>,
}

impl Problem {
    pub fn new(status: StatusCode, reason: &str, detail: impl Into<String>) -> Self {
        Self {
            kind: format!("urn:commerce:problem:{reason}"),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail: detail.into(),
            reason: reason.to_owned(),
            field: None,
            retry_after_seconds: None,
        }
    }

    /// A 400 naming `field` (already in its REST spelling).
    pub fn invalid(field: impl Into<String>, detail: impl Into<String>) -> Self {
        let field = field.into();
        let detail = format!("invalid `{field}`: {}", detail.into());
        Self {
            field: Some(field),
            ..Self::new(StatusCode::BAD_REQUEST, reason::INVALID_FIELD, detail)
        }
    }

    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// The call outlived the request's deadline.
    pub fn deadline(limit: Duration) -> Self {
        Self::new(
            StatusCode::GATEWAY_TIMEOUT,
            reason::DEADLINE_EXCEEDED,
            format!("no answer within the request's {} ms", limit.as_millis()),
        )
    }
}

/// The error answers every route documents (which of them a route can
/// give depends on the route; the body is always a [`Problem`]).
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // Only its derived documentation is used.
pub enum Errors {
    /// A field, parameter or header is invalid (named in `field`), or
    /// `Idempotency-Key` is missing.
    #[response(status = 400, content_type = "application/problem+json")]
    BadRequest(Problem),
    /// No bearer token, or one that is not valid.
    #[response(status = 401, content_type = "application/problem+json")]
    Unauthorized(Problem),
    /// The token lacks the `operator` role.
    #[response(status = 403, content_type = "application/problem+json")]
    Forbidden(Problem),
    /// No such resource, or not the caller's.
    #[response(status = 404, content_type = "application/problem+json")]
    NotFound(Problem),
    /// A business refusal or a state conflict; `reason` says which.
    #[response(status = 409, content_type = "application/problem+json")]
    Conflict(Problem),
    /// The body is larger than the BFF accepts.
    #[response(status = 413, content_type = "application/problem+json")]
    PayloadTooLarge(Problem),
    /// The body is not JSON.
    #[response(status = 415, content_type = "application/problem+json")]
    UnsupportedMediaType(Problem),
    /// Too many calls; retry after `Retry-After` seconds.
    #[response(status = 429, content_type = "application/problem+json",
        headers(("Retry-After" = u64, description = "Seconds to wait")))]
    TooManyRequests(Problem),
    /// A bug, or the mesh failed in a way it should not.
    #[response(status = 500, content_type = "application/problem+json")]
    Internal(Problem),
    /// The mesh refused the BFF's own identity (a deployment error).
    #[response(status = 502, content_type = "application/problem+json")]
    BadGateway(Problem),
    /// A server of the mesh is unavailable; retry after `Retry-After`.
    #[response(status = 503, content_type = "application/problem+json",
        headers(("Retry-After" = u64, description = "Seconds to wait")))]
    Unavailable(Problem),
    /// No answer within the request's deadline.
    #[response(status = 504, content_type = "application/problem+json")]
    GatewayTimeout(Problem),
}

/// THE mapping table, documented in the README ("Errors") and the OpenAPI
/// document. The BFF's own 401 and 403 are decided before any call.
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::FailedPrecondition | Code::Aborted => StatusCode::CONFLICT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unavailable | Code::Cancelled => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        // The mesh refused the BFF's own identity: its deployment is wrong,
        // not the user's request.
        Code::Unauthenticated | Code::PermissionDenied => StatusCode::BAD_GATEWAY,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Ok | Code::Unknown | Code::Internal | Code::DataLoss => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
    }
}

/// Shortest wait suggested when the mesh is unavailable and said nothing.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

impl From<Status> for Problem {
    fn from(status: Status) -> Self {
        let http = http_status(status.code());
        let info = status.get_details_error_info();
        let reason = match (&info, status.code()) {
            (Some(info), _) => info.reason.clone(),
            (None, Code::Unauthenticated | Code::PermissionDenied) => {
                reason::MESH_REFUSED_BFF.to_owned()
            }
            (None, Code::DeadlineExceeded) => reason::DEADLINE_EXCEEDED.to_owned(),
            (None, Code::Unavailable | Code::Cancelled) => reason::MESH_UNAVAILABLE.to_owned(),
            (None, _) => reason::MESH_ERROR.to_owned(),
        };
        let field = status
            .get_details_bad_request()
            .and_then(|bad| bad.field_violations.into_iter().next())
            .map(|violation| json_field(&violation.field))
            .or_else(|| {
                info.as_ref()
                    .and_then(|info| info.metadata.get("field"))
                    .map(|field| json_field(field))
            });
        let retry_after = match http {
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => Some(
                status
                    .get_details_retry_info()
                    .and_then(|info| info.retry_delay)
                    .unwrap_or(DEFAULT_RETRY_AFTER),
            ),
            _ => None,
        };
        let detail = match http {
            // Never echo a transport error's internals to an app.
            StatusCode::INTERNAL_SERVER_ERROR | StatusCode::BAD_GATEWAY => {
                tracing::error!(code = ?status.code(), message = status.message(), "mesh error");
                "the shop could not complete the request".to_owned()
            }
            _ => status.message().to_owned(),
        };
        Self {
            field,
            // Whole seconds, rounded up: `Retry-After` has no fractions.
            retry_after_seconds: retry_after.map(|d| d.as_millis().div_ceil(1000).max(1) as u64),
            ..Self::new(http, &reason, detail)
        }
    }
}

/// `lines[0].product_id` → `lines[0].productId`: the mesh names proto
/// fields, apps see camelCase JSON.
pub fn json_field(proto: &str) -> String {
    let mut out = String::with_capacity(proto.len());
    let mut upper = false;
    for c in proto.chars() {
        match c {
            '_' => upper = true,
            c if upper => {
                out.extend(c.to_uppercase());
                upper = false;
            }
            c => out.push(c),
        }
    }
    out
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = self.status();
        let retry_after = self.retry_after_seconds;
        let unauthorized = status == StatusCode::UNAUTHORIZED;
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(seconds) = retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if unauthorized {
            // RFC 6750 §3.
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"commerce\""),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_one_status() {
        let table = [
            (Code::InvalidArgument, 400),
            (Code::NotFound, 404),
            (Code::AlreadyExists, 409),
            (Code::FailedPrecondition, 409),
            (Code::Aborted, 409),
            (Code::ResourceExhausted, 429),
            (Code::Unavailable, 503),
            (Code::DeadlineExceeded, 504),
            (Code::PermissionDenied, 502),
            (Code::Internal, 500),
        ];
        for (code, http) in table {
            assert_eq!(http_status(code).as_u16(), http, "{code:?}");
        }
    }

    #[test]
    fn fields_are_renamed_to_json() {
        assert_eq!(json_field("lines[0].product_id"), "lines[0].productId");
        assert_eq!(json_field("user_coupon_id"), "userCouponId");
        assert_eq!(json_field("amount"), "amount");
    }

    #[test]
    fn mesh_reason_field_and_retry_survive() {
        let mut details = tonic_types::ErrorDetails::new();
        details.set_error_info("RATE_LIMITED", "commerce", std::collections::HashMap::new());
        details.set_retry_info(Some(Duration::from_millis(1500)));
        let status = Status::with_error_details(Code::ResourceExhausted, "slow down", details);
        let problem = Problem::from(status);
        assert_eq!(problem.status, 429);
        assert_eq!(problem.reason, "RATE_LIMITED");
        assert_eq!(problem.retry_after_seconds, Some(2));

        let mut details = tonic_types::ErrorDetails::new();
        details.add_bad_request_violation("user_coupon_id", "must be a positive id");
        let status = Status::with_error_details(Code::InvalidArgument, "bad", details);
        let problem = Problem::from(status);
        assert_eq!(problem.status, 400);
        assert_eq!(problem.field.as_deref(), Some("userCouponId"));
    }
}
