//! Assertions on gRPC errors: code, `ErrorInfo` reason, offending field.

use tonic::{Code, Status};
use tonic_types::StatusExt;

/// The `google.rpc.ErrorInfo` reason, when the status carries one.
pub fn error_reason(status: &Status) -> Option<String> {
    status.get_details_error_info().map(|info| info.reason)
}

/// The first field named by a `google.rpc.BadRequest` violation.
pub fn bad_request_field(status: &Status) -> Option<String> {
    status
        .get_details_bad_request()
        .and_then(|bad| bad.field_violations.into_iter().next())
        .map(|violation| violation.field)
}

/// Asserts the call failed with `code` and, for business errors, `reason`
/// (for INVALID_ARGUMENT, `reason` is the field name).
#[track_caller]
pub fn assert_status<T: std::fmt::Debug>(result: Result<T, Status>, code: Code, reason: &str) {
    let status = match result {
        Ok(value) => panic!("expected {code:?} {reason}, got Ok({value:?})"),
        Err(status) => status,
    };
    assert_eq!(status.code(), code, "unexpected status: {status:?}");
    let actual = if code == Code::InvalidArgument {
        bad_request_field(&status)
    } else {
        error_reason(&status)
    };
    assert_eq!(
        actual.as_deref(),
        Some(reason),
        "unexpected reason/field in {status:?}"
    );
}
