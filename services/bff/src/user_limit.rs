//! Each user's ceiling at the edge. The mesh limits the BFF as one caller
//! (`bff=50000/s`); without a ceiling per person, one app (or one stolen
//! token) could spend all of it. A token bucket per token subject, checked
//! once the token is verified; over it, 429 with `Retry-After`.

use std::num::NonZeroU32;
use std::time::Duration;

use axum::http::StatusCode;
use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::problem::Problem;

/// The reason of the BFF's own 429 (the mesh's is the same word).
pub const RATE_LIMITED: &str = "RATE_LIMITED";

/// Buckets kept before idle ones are dropped (a full bucket is the same as
/// none, so dropping it forgets nothing).
const SWEEP_AT: usize = 100_000;

/// `<per_second>[/<burst>]`, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserCeiling {
    pub per_second: NonZeroU32,
    pub burst: NonZeroU32,
}

impl UserCeiling {
    pub fn parse(raw: &str) -> Result<Option<Self>, String> {
        if raw.trim() == "off" {
            return Ok(None);
        }
        let (rate, burst) = match raw.split_once('/') {
            Some((rate, burst)) => (rate, Some(burst)),
            None => (raw, None),
        };
        let number = |s: &str| {
            s.trim()
                .parse::<NonZeroU32>()
                .map_err(|_| format!("`{raw}` is not <per_second>[/<burst>] or off"))
        };
        let per_second = number(rate)?;
        let burst = burst.map(number).transpose()?.unwrap_or(per_second);
        Ok(Some(Self { per_second, burst }))
    }
}

pub struct UserLimiter {
    limiter: Option<DefaultKeyedRateLimiter<String>>,
}

impl UserLimiter {
    pub fn new(ceiling: Option<UserCeiling>) -> Self {
        Self {
            limiter: ceiling
                .map(|c| RateLimiter::keyed(Quota::per_second(c.per_second).allow_burst(c.burst))),
        }
    }

    /// Takes one call from `user`'s bucket, or says when to come back.
    pub fn check(&self, user: &str) -> Result<(), Problem> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        if limiter.len() > SWEEP_AT {
            limiter.retain_recent();
        }
        limiter.check_key(&user.to_owned()).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            let mut problem = Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                RATE_LIMITED,
                format!(
                    "too many requests from this user; retry in {} ms",
                    wait.as_millis()
                ),
            );
            problem.retry_after_seconds = Some(seconds_up(wait));
            problem
        })
    }
}

fn seconds_up(wait: Duration) -> u64 {
    (wait.as_millis().div_ceil(1000) as u64).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_over_the_ceiling_waits_and_others_do_not() {
        let ceiling = UserCeiling::parse("1/2").unwrap();
        let limiter = UserLimiter::new(ceiling);
        assert!(limiter.check("ann").is_ok());
        assert!(limiter.check("ann").is_ok());
        let refused = limiter.check("ann").unwrap_err();
        assert_eq!(refused.status, 429);
        assert_eq!(refused.retry_after_seconds, Some(1));
        assert!(limiter.check("bob").is_ok());
        assert!(UserLimiter::new(None).check("ann").is_ok());
        assert_eq!(UserCeiling::parse("off"), Ok(None));
        assert!(UserCeiling::parse("0").is_err());
        assert!(UserCeiling::parse("ten").is_err());
    }
}
