//! Validated newtypes shared by every service. Wire values are parsed into
//! these at the gRPC edge, so invalid values cannot reach domain code.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::ServiceError;

/// A saga id: a UUID in its canonical hyphenated, lowercase form.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SagaId(String);

impl SagaId {
    pub fn parse(field: &str, raw: &str) -> Result<Self, ServiceError> {
        if raw.is_empty() {
            return Err(ServiceError::invalid(field, "is required"));
        }
        let id = uuid::Uuid::try_parse(raw)
            .map_err(|_| ServiceError::invalid(field, "must be a UUID"))?;
        Ok(Self(id.hyphenated().to_string()))
    }

    /// A fresh random saga id.
    pub fn generate() -> Self {
        Self(uuid::Uuid::now_v7().hyphenated().to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SagaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A saga call as a participant receives it: the saga, and the fence of the
/// caller's lease on it (0 when the caller sends none), which the barrier
/// checks against the highest fence it has seen for the saga.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SagaCall {
    pub saga: SagaId,
    pub fence: i64,
}

impl SagaCall {
    /// From a request's `saga_id` and `saga_fence` fields.
    pub fn parse(saga_id: &str, saga_fence: i64) -> Result<Self, ServiceError> {
        if saga_fence < 0 {
            return Err(ServiceError::invalid("saga_fence", "must not be negative"));
        }
        Ok(Self {
            saga: SagaId::parse("saga_id", saga_id)?,
            fence: saga_fence,
        })
    }

    /// A call without a fence (tools and tests that drive a participant
    /// directly).
    pub fn unfenced(saga: SagaId) -> Self {
        Self { saga, fence: 0 }
    }
}

impl fmt::Display for SagaCall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.saga.fmt(f)
    }
}

/// An opaque user id set by the (trusted) caller: 1..=64 of `[A-Za-z0-9_.:@-]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct UserId(String);

impl UserId {
    pub const MAX_LEN: usize = 64;

    pub fn parse(field: &str, raw: &str) -> Result<Self, ServiceError> {
        if raw.is_empty() {
            return Err(ServiceError::invalid(field, "is required"));
        }
        if raw.len() > Self::MAX_LEN {
            return Err(ServiceError::invalid(
                field,
                format!("must be at most {} characters", Self::MAX_LEN),
            ));
        }
        let allowed = |c: char| c.is_ascii_alphanumeric() || "_.:@-".contains(c);
        if !raw.chars().all(allowed) {
            return Err(ServiceError::invalid(
                field,
                "may only contain letters, digits and _ . : @ -",
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A client-chosen key making a request idempotent: 1..=128 printable ASCII characters, not
/// starting or ending with a space (the database compares strings with
/// trailing spaces ignored, so "k" and "k " would be one key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub const MAX_LEN: usize = 128;

    pub fn parse(field: &str, raw: &str) -> Result<Self, ServiceError> {
        if raw.is_empty() {
            return Err(ServiceError::invalid(field, "is required"));
        }
        if raw.len() > Self::MAX_LEN {
            return Err(ServiceError::invalid(
                field,
                format!("must be at most {} characters", Self::MAX_LEN),
            ));
        }
        if !raw.chars().all(|c| c.is_ascii_graphic() || c == ' ') {
            return Err(ServiceError::invalid(
                field,
                "may only contain printable ASCII characters",
            ));
        }
        if raw.starts_with(' ') || raw.ends_with(' ') {
            return Err(ServiceError::invalid(
                field,
                "must not start or end with a space",
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A database id sent by a caller: must be positive.
pub fn id(field: &str, raw: i64) -> Result<i64, ServiceError> {
    if raw <= 0 {
        return Err(ServiceError::invalid(field, "must be a positive id"));
    }
    Ok(raw)
}

/// An integer that must lie in `min..=max`.
pub fn in_range(field: &str, raw: i64, min: i64, max: i64) -> Result<i64, ServiceError> {
    if raw < min || raw > max {
        return Err(ServiceError::invalid(
            field,
            format!("must be between {min} and {max}, got {raw}"),
        ));
    }
    Ok(raw)
}

/// Free text, trimmed, with a character count in `min..=max`.
pub fn text(field: &str, raw: &str, min: usize, max: usize) -> Result<String, ServiceError> {
    let trimmed = raw.trim();
    let count = trimmed.chars().count();
    if count < min || count > max {
        let message = if min > 0 && count == 0 {
            "is required".to_owned()
        } else {
            format!("must be {min} to {max} characters")
        };
        return Err(ServiceError::invalid(field, message));
    }
    if trimmed.chars().any(char::is_control) {
        return Err(ServiceError::invalid(
            field,
            "must not contain control characters",
        ));
    }
    Ok(trimmed.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saga_id_is_canonical_uuid() {
        let id = SagaId::parse("saga_id", "5A1B6D1E-8C3F-4F7A-9B1E-2D3C4B5A6F70").unwrap();
        assert_eq!(id.as_str(), "5a1b6d1e-8c3f-4f7a-9b1e-2d3c4b5a6f70");
        assert!(SagaId::parse("saga_id", "").is_err());
        assert!(SagaId::parse("saga_id", "not-a-uuid").is_err());
    }

    #[test]
    fn user_id_rejects_bad_characters_and_length() {
        assert!(UserId::parse("user_id", "user-1@shop").is_ok());
        assert!(UserId::parse("user_id", "").is_err());
        assert!(UserId::parse("user_id", "a b").is_err());
        assert!(UserId::parse("user_id", &"x".repeat(65)).is_err());
    }

    #[test]
    fn idempotency_key_is_printable_ascii_without_edge_spaces() {
        assert!(IdempotencyKey::parse("k", "order-1:retry#2 ok").is_ok());
        assert!(IdempotencyKey::parse("k", &"x".repeat(128)).is_ok());
        assert!(IdempotencyKey::parse("k", "").is_err());
        assert!(IdempotencyKey::parse("k", &"x".repeat(129)).is_err());
        assert!(IdempotencyKey::parse("k", "tab\there").is_err());
        assert!(IdempotencyKey::parse("k", "k ").is_err());
    }

    #[test]
    fn invalid_errors_name_the_field() {
        let error = in_range("lines[2].quantity", 0, 1, 1000).unwrap_err();
        assert!(error.to_string().contains("lines[2].quantity"));
        assert!(id("product_id", -1).is_err());
        assert_eq!(text("name", "  shoe ", 1, 10).unwrap(), "shoe");
        assert!(text("name", "   ", 1, 10).is_err());
    }
}
