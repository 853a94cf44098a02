//! Request extractors whose every refusal is a problem naming the field:
//! JSON bodies and query strings are decoded with the path of what failed,
//! and the `Idempotency-Key` header is required where a repeat must not
//! count twice.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use commerce_platform::validate;
use serde::de::DeserializeOwned;

use crate::problem::{Problem, reason};

/// A JSON body, decoded with the offending field's path on failure.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = Problem;

    async fn from_request(request: Request, state: &S) -> Result<Self, Problem> {
        let json = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|mime| {
                let mime = mime.trim();
                mime.eq_ignore_ascii_case("application/json")
                    || (mime.starts_with("application/") && mime.ends_with("+json"))
            })
            .unwrap_or(false);
        if !json {
            return Err(Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                reason::UNSUPPORTED_MEDIA_TYPE,
                "the body must be JSON (Content-Type: application/json)",
            )
            .with_field("Content-Type"));
        }
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(body_problem)?;
        decode_json(&bytes).map(Self)
    }
}

fn decode_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Problem> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(path_problem)?;
    deserializer
        .end()
        .map_err(|e| Problem::invalid("body", e.to_string()))?;
    Ok(value)
}

fn body_problem(rejection: BytesRejection) -> Problem {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            reason::BODY_TOO_LARGE,
            "the body is larger than this route accepts",
        )
    } else {
        Problem::invalid("body", rejection.body_text())
    }
}

fn path_problem<E: std::fmt::Display>(error: serde_path_to_error::Error<E>) -> Problem {
    let path = error.path().to_string();
    // `.` is the whole document, `?` a place serde could not name.
    let field = if path == "." || path == "?" {
        "body".to_owned()
    } else {
        path
    };
    Problem::invalid(field, error.into_inner().to_string())
}

/// A query string, decoded with the offending parameter's name on failure.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Problem> {
        let query = parts.uri.query().unwrap_or_default();
        let deserializer =
            serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(deserializer)
            .map(Self)
            .map_err(path_problem)
    }
}

/// The `Idempotency-Key` header (draft-ietf-httpapi-idempotency-key-header):
/// a repeat with the same key returns the first answer instead of acting
/// twice. Required where it is taken.
pub struct IdempotencyKey(pub String);

pub const IDEMPOTENCY_KEY: &str = "Idempotency-Key";

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Problem> {
        let raw = parts.headers.get(IDEMPOTENCY_KEY).ok_or_else(|| {
            Problem::new(
                StatusCode::BAD_REQUEST,
                reason::IDEMPOTENCY_KEY_MISSING,
                format!("the {IDEMPOTENCY_KEY} header is required, so a repeat cannot act twice"),
            )
            .with_field(IDEMPOTENCY_KEY)
        })?;
        let raw = raw
            .to_str()
            .map_err(|_| Problem::invalid(IDEMPOTENCY_KEY, "must be visible ASCII"))?;
        // Quoted as in the draft's examples, or bare.
        let raw = raw
            .strip_prefix('"')
            .and_then(|r| r.strip_suffix('"'))
            .unwrap_or(raw);
        let key = validate::IdempotencyKey::parse(IDEMPOTENCY_KEY, raw)
            .map_err(|e| Problem::invalid(IDEMPOTENCY_KEY, mesh_message(&e)))?;
        Ok(Self(key.as_str().to_owned()))
    }
}

/// The message of a mesh validation error without its field prefix.
pub fn mesh_message(error: &commerce_platform::ServiceError) -> String {
    match error {
        commerce_platform::ServiceError::InvalidArgument { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    #[allow(dead_code)]
    struct Line {
        product_id: i64,
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Body {
        lines: Vec<Line>,
    }

    #[test]
    fn a_bad_field_is_named_by_its_path() {
        let problem =
            decode_json::<Body>(br#"{"lines":[{"productId":1},{"productId":"x"}]}"#).unwrap_err();
        assert_eq!(problem.status, 400);
        assert_eq!(problem.field.as_deref(), Some("lines[1].productId"));
        let problem = decode_json::<Body>(b"{").unwrap_err();
        assert_eq!(problem.field.as_deref(), Some("body"));
    }
}
