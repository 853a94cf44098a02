//! Timestamps: the database stores UTC `DATETIME(6)`, the wire carries
//! `google.protobuf.Timestamp`.

use chrono::{DateTime, Datelike, NaiveDateTime, Utc};

use crate::error::ServiceError;

/// Now, truncated to microseconds as `DATETIME(6)` keeps it, so a value read
/// back equals the value written.
pub fn now() -> NaiveDateTime {
    let now = Utc::now();
    DateTime::from_timestamp_micros(now.timestamp_micros())
        .unwrap_or(now)
        .naive_utc()
}

pub fn to_proto(t: NaiveDateTime) -> prost_types::Timestamp {
    let utc = t.and_utc();
    prost_types::Timestamp {
        seconds: utc.timestamp(),
        nanos: i32::try_from(utc.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

/// A required wire timestamp, within the years `DATETIME` can store, cut to
/// the microseconds `DATETIME(6)` keeps (MySQL would round instead).
pub fn from_proto(
    field: &str,
    t: Option<prost_types::Timestamp>,
) -> Result<NaiveDateTime, ServiceError> {
    let t = t.ok_or_else(|| ServiceError::invalid(field, "is required"))?;
    let nanos = u32::try_from(t.nanos)
        .ok()
        .filter(|n| *n < 1_000_000_000)
        .ok_or_else(|| ServiceError::invalid(field, "nanos must be in 0..1e9"))?
        / 1_000
        * 1_000;
    DateTime::from_timestamp(t.seconds, nanos)
        .map(|d| d.naive_utc())
        .filter(|d| (1970..=9999).contains(&d.year()))
        .ok_or_else(|| ServiceError::invalid(field, "must be between years 1970 and 9999"))
}
