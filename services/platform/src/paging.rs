//! Page requests: zero-based page, size 1..=100, validated once for all lists.

use crate::error::ServiceError;

pub const MAX_PAGE_SIZE: i32 = 100;
/// Deep pages are refused so a list can never turn into a table scan.
pub const MAX_PAGE: i32 = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    pub page: i32,
    pub size: i32,
}

impl PageRequest {
    pub fn parse(page: i32, size: i32) -> Result<Self, ServiceError> {
        if !(0..=MAX_PAGE).contains(&page) {
            return Err(ServiceError::invalid(
                "page",
                format!("must be between 0 and {MAX_PAGE}"),
            ));
        }
        if !(1..=MAX_PAGE_SIZE).contains(&size) {
            return Err(ServiceError::invalid(
                "size",
                format!("must be between 1 and {MAX_PAGE_SIZE}"),
            ));
        }
        Ok(Self { page, size })
    }

    pub fn limit(&self) -> i64 {
        i64::from(self.size)
    }

    pub fn offset(&self) -> i64 {
        i64::from(self.page) * i64::from(self.size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds() {
        assert_eq!(PageRequest::parse(2, 10).unwrap().offset(), 20);
        assert!(PageRequest::parse(-1, 10).is_err());
        assert!(PageRequest::parse(0, 0).is_err());
        assert!(PageRequest::parse(0, 101).is_err());
    }
}
