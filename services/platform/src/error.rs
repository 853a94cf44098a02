//! The one error type of every server and its single mapping to
//! `tonic::Status`, with `google.rpc.ErrorInfo` (and `google.rpc.BadRequest`
//! for invalid fields) so a REST BFF can translate errors by reason; and what
//! a diesel error means for the caller.

use std::collections::HashMap;

use diesel::result::{DatabaseErrorKind, Error as DieselError};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// `ErrorInfo.domain` of every error this mesh returns.
pub const ERROR_DOMAIN: &str = "commerce";

/// Reasons shared by all services; each service adds its own.
pub mod reason {
    /// A request field failed validation.
    pub const INVALID_FIELD: &str = "INVALID_FIELD";
    /// A saga action arrived after that saga's compensation.
    pub const SAGA_ALREADY_COMPENSATED: &str = "SAGA_ALREADY_COMPENSATED";
    /// A saga call came with a lease fence lower than one this participant
    /// has seen for the saga: its caller lost the saga to another instance.
    pub const SAGA_FENCE_STALE: &str = "SAGA_FENCE_STALE";
    /// The database could not be reached.
    pub const DATABASE_UNAVAILABLE: &str = "DATABASE_UNAVAILABLE";
    /// Redis, the only home of what was asked (the sales ranking), could not
    /// be reached.
    pub const REDIS_UNAVAILABLE: &str = "REDIS_UNAVAILABLE";
    /// A transaction lost a lock race; retrying is safe.
    pub const TRANSACTION_CONFLICT: &str = "TRANSACTION_CONFLICT";
    /// Something unexpected; details are in the server's log.
    pub const INTERNAL: &str = "INTERNAL";
}

/// What went wrong, by intent rather than by source.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// A request field is malformed or out of range. `INVALID_ARGUMENT`.
    #[error("invalid `{field}`: {message}")]
    InvalidArgument { field: String, message: String },
    /// The named entity does not exist (or is not the caller's). `NOT_FOUND`.
    #[error("{entity} {id} not found")]
    NotFound { entity: &'static str, id: String },
    /// A unique thing exists already. `ALREADY_EXISTS`.
    #[error("{message}")]
    AlreadyExists {
        reason: &'static str,
        message: String,
    },
    /// A business rule refuses the request. `FAILED_PRECONDITION`.
    #[error("{message}")]
    Rejected {
        reason: &'static str,
        message: String,
    },
    /// A concurrent transaction won a race; the caller may retry. `ABORTED`.
    #[error("conflict: {0}")]
    Conflict(String),
    /// A dependency (the database) cannot be reached now. `UNAVAILABLE`.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// Another dependency cannot be reached now; `message` is for the caller
    /// (it names the dependency, never internals). `UNAVAILABLE`.
    #[error("{message}")]
    DependencyUnavailable {
        reason: &'static str,
        message: String,
    },
    /// A bug or an unexpected state. `INTERNAL`.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ServiceError {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field: field.into(),
            message: message.into(),
        }
    }

    pub fn not_found(entity: &'static str, id: impl ToString) -> Self {
        Self::NotFound {
            entity,
            id: id.to_string(),
        }
    }

    pub fn rejected(reason: &'static str, message: impl Into<String>) -> Self {
        Self::Rejected {
            reason,
            message: message.into(),
        }
    }

    pub fn already_exists(reason: &'static str, message: impl Into<String>) -> Self {
        Self::AlreadyExists {
            reason,
            message: message.into(),
        }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::Internal(message.into())
    }

    /// The machine-readable reason carried in `ErrorInfo`.
    pub fn reason(&self) -> String {
        match self {
            Self::InvalidArgument { .. } => reason::INVALID_FIELD.to_owned(),
            Self::NotFound { entity, .. } => format!("{}_NOT_FOUND", entity.to_uppercase()),
            Self::AlreadyExists { reason, .. }
            | Self::Rejected { reason, .. }
            | Self::DependencyUnavailable { reason, .. } => (*reason).to_owned(),
            Self::Conflict(_) => reason::TRANSACTION_CONFLICT.to_owned(),
            Self::Unavailable(_) => reason::DATABASE_UNAVAILABLE.to_owned(),
            Self::Internal(_) => reason::INTERNAL.to_owned(),
        }
    }

    fn code(&self) -> Code {
        match self {
            Self::InvalidArgument { .. } => Code::InvalidArgument,
            Self::NotFound { .. } => Code::NotFound,
            Self::AlreadyExists { .. } => Code::AlreadyExists,
            Self::Rejected { .. } => Code::FailedPrecondition,
            Self::Conflict(_) => Code::Aborted,
            Self::Unavailable(_) | Self::DependencyUnavailable { .. } => Code::Unavailable,
            Self::Internal(_) => Code::Internal,
        }
    }
}

impl From<ServiceError> for Status {
    fn from(error: ServiceError) -> Self {
        let mut metadata = HashMap::new();
        let mut details = ErrorDetails::new();
        let message = match &error {
            ServiceError::InvalidArgument { field, message } => {
                metadata.insert("field".to_owned(), field.clone());
                details.add_bad_request_violation(field.clone(), message.clone());
                error.to_string()
            }
            ServiceError::NotFound { entity, id } => {
                metadata.insert("entity".to_owned(), (*entity).to_owned());
                metadata.insert("id".to_owned(), id.clone());
                error.to_string()
            }
            ServiceError::Internal(cause) => {
                // The cause may hold SQL or internals: log it, do not leak it.
                tracing::error!(%cause, "internal error");
                "internal error".to_owned()
            }
            ServiceError::Unavailable(cause) => {
                tracing::warn!(%cause, "dependency unavailable");
                "service temporarily unavailable, retry later".to_owned()
            }
            _ => error.to_string(),
        };
        details.set_error_info(error.reason(), ERROR_DOMAIN, metadata);
        Status::with_error_details(error.code(), message, details)
    }
}

impl From<DieselError> for ServiceError {
    fn from(error: DieselError) -> Self {
        classify(error)
    }
}

/// Maps a diesel error to what it means for the caller. The MySQL driver
/// keeps only the server's message for most errors, so deadlocks and lost
/// connections are recognised by their wording.
fn classify(error: DieselError) -> ServiceError {
    match &error {
        DieselError::DatabaseError(DatabaseErrorKind::SerializationFailure, _) => {
            ServiceError::Conflict(error.to_string())
        }
        DieselError::DatabaseError(DatabaseErrorKind::ClosedConnection, _)
        | DieselError::BrokenTransactionManager => ServiceError::Unavailable(error.to_string()),
        DieselError::DatabaseError(DatabaseErrorKind::Unknown, info) => {
            let message = info.message();
            if message.contains("try restarting transaction") {
                // 1213 deadlock, 1205 lock wait timeout.
                ServiceError::Conflict(message.to_owned())
            } else if is_connection_failure(message) {
                ServiceError::Unavailable(message.to_owned())
            } else {
                ServiceError::Internal(error.to_string())
            }
        }
        _ => ServiceError::Internal(error.to_string()),
    }
}

fn is_connection_failure(message: &str) -> bool {
    const SIGNS: &[&str] = &[
        "Input/output error",
        "Connection",
        "connection",
        "broken pipe",
        "Broken pipe",
        "server has gone away",
        "Lost connection",
        "Driver error",
        "closed",
        "timed out",
    ];
    SIGNS.iter().any(|sign| message.contains(sign))
}

impl From<serde_json::Error> for ServiceError {
    fn from(error: serde_json::Error) -> Self {
        Self::Internal(format!("stored JSON: {error}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_argument_names_the_field_in_message_and_details() {
        let status = Status::from(ServiceError::invalid(
            "lines[1].quantity",
            "must be 1..=1000",
        ));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains("lines[1].quantity"));
        let bad = status.get_details_bad_request().unwrap();
        assert_eq!(bad.field_violations[0].field, "lines[1].quantity");
        let info = status.get_details_error_info().unwrap();
        assert_eq!(info.reason, reason::INVALID_FIELD);
        assert_eq!(info.domain, ERROR_DOMAIN);
    }

    #[test]
    fn business_rejection_carries_its_reason() {
        let status = Status::from(ServiceError::rejected("STOCK_INSUFFICIENT", "only 2 left"));
        assert_eq!(status.code(), Code::FailedPrecondition);
        let info = status.get_details_error_info().unwrap();
        assert_eq!(info.reason, "STOCK_INSUFFICIENT");
    }

    #[test]
    fn not_found_reason_is_derived_from_the_entity() {
        let status = Status::from(ServiceError::not_found("product", 42));
        assert_eq!(status.code(), Code::NotFound);
        let info = status.get_details_error_info().unwrap();
        assert_eq!(info.reason, "PRODUCT_NOT_FOUND");
        assert_eq!(info.metadata["id"], "42");
    }

    #[test]
    fn internal_details_are_not_leaked() {
        let status = Status::from(ServiceError::internal("SQL syntax near 'secret'"));
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("secret"));
    }

    #[test]
    fn deadlocks_are_retryable_conflicts() {
        use diesel::result::{DatabaseErrorKind, Error};
        let deadlock = Error::DatabaseError(
            DatabaseErrorKind::Unknown,
            Box::new(
                "Deadlock found when trying to get lock; try restarting transaction".to_owned(),
            ),
        );
        assert!(matches!(
            ServiceError::from(deadlock),
            ServiceError::Conflict(_)
        ));
    }
}
