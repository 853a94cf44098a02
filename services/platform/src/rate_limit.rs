//! Per-caller rate limits, so that one misbehaving caller cannot starve the
//! others: every identity with a configured ceiling has a token bucket of its
//! own (a sustained rate a second and a burst), and a call that finds its
//! caller's bucket empty is refused at once with `RESOURCE_EXHAUSTED` and a
//! `RetryInfo` saying when the next token comes.
//!
//! Guarantees:
//! - a refused call never reaches the service and never waits: the layer
//!   answers in the same `call`, so it neither queues nor holds anything
//!   across an `.await` (a dropped future costs nothing);
//! - callers are isolated: a caller over its ceiling spends only its own
//!   bucket, never another's;
//! - a caller with no configured ceiling (by default the orchestrator, whose
//!   saga calls must not stall) is not limited.
//!
//! The caller is the [`Identity`] that [`crate::tls::AuthorizeLayer`] puts in
//! the request's extensions, so this layer sits inside that one. Calls that
//! carry none (plaintext development servers, certificates that name no one)
//! share the one bucket of [`ANONYMOUS`].

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::{Either, Ready, ready};
use governor::clock::Clock as _;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tonic::Status;
use tonic_types::{ErrorDetails, StatusExt as _};
use tower::{Layer, Service};

use crate::error::ERROR_DOMAIN;
use crate::tls::Identity;

/// `ErrorInfo.reason` of a refusal.
pub const RATE_LIMITED: &str = "RATE_LIMITED";

/// The name that stands for every caller without an identity.
pub const ANONYMOUS: &str = "anonymous";

/// The flag, as its errors name it.
const FLAG: &str = "--rate-limit";

/// What a caller may spend: `per_second` tokens come back every second, up
/// to `burst` held at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ceiling {
    pub per_second: NonZeroU32,
    pub burst: NonZeroU32,
}

impl Ceiling {
    pub const fn new(per_second: NonZeroU32, burst: NonZeroU32) -> Self {
        Self { per_second, burst }
    }

    fn quota(self) -> Quota {
        Quota::per_second(self.per_second).allow_burst(self.burst)
    }

    /// `<per_second>[/<burst>]`; the burst is one second's worth unless
    /// given.
    fn parse(spec: &str) -> Result<Self, String> {
        let (rate, burst) = match spec.split_once('/') {
            Some((rate, burst)) => (rate, Some(burst)),
            None => (spec, None),
        };
        let per_second = positive(rate, "rate a second")?;
        let burst = burst.map_or(Ok(per_second), |burst| positive(burst, "burst"))?;
        Ok(Self { per_second, burst })
    }
}

/// The flag's own syntax, `<per_second>/<burst>`.
impl fmt::Display for Ceiling {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.per_second, self.burst)
    }
}

fn positive(number: &str, what: &str) -> Result<NonZeroU32, String> {
    let number = number.trim();
    let n = number
        .parse::<u32>()
        .map_err(|_| format!("the {what} `{number}` is not a whole number"))?;
    NonZeroU32::new(n)
        .ok_or_else(|| format!("the {what} must be positive (`<identity>=off` lifts a ceiling)"))
}

/// Zero is a compile-time error in the defaults below.
const fn nonzero(n: u32) -> NonZeroU32 {
    match NonZeroU32::new(n) {
        Some(n) => n,
        None => panic!("a ceiling must be positive"),
    }
}

/// The ceilings of a server that sets none: the BFF's is far above what it
/// sends (the benchmark drives about a thousand orders a second through it)
/// and only stops a runaway; operators' tools and the fulfilment system get
/// production ceilings. Everyone else (the orchestrator, participants
/// calling each other, anonymous callers) is unlimited.
const DEFAULTS: &[(&str, Ceiling)] = &[
    ("bff", Ceiling::new(nonzero(50_000), nonzero(100_000))),
    ("operator", Ceiling::new(nonzero(200), nonzero(400))),
    ("fulfilment", Ceiling::new(nonzero(1_000), nonzero(2_000))),
];

/// The ceiling of every limited caller, by identity ([`ANONYMOUS`] for the
/// callers without one).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RateLimits {
    ceilings: BTreeMap<String, Ceiling>,
}

impl RateLimits {
    /// Nobody limited.
    pub fn none() -> Self {
        Self::default()
    }

    /// The ceilings of a server that sets none (see [`DEFAULTS`]).
    pub fn defaults() -> Self {
        Self {
            ceilings: DEFAULTS
                .iter()
                .map(|(name, ceiling)| ((*name).to_owned(), *ceiling))
                .collect(),
        }
    }

    /// These limits with `--rate-limit` entries applied in turn:
    /// `<identity>=<per_second>[/<burst>]` sets that caller's ceiling,
    /// `<identity>=off` lifts it; callers no entry names keep theirs. Empty
    /// entries are skipped.
    pub fn with_overrides<S: AsRef<str>>(
        mut self,
        entries: impl IntoIterator<Item = S>,
    ) -> anyhow::Result<Self> {
        for entry in entries {
            let entry = entry.as_ref().trim();
            // A trailing comma.
            if entry.is_empty() {
                continue;
            }
            let (name, ceiling) = parse_entry(entry)
                .map_err(|problem| anyhow::anyhow!("{FLAG} `{entry}`: {problem}"))?;
            match ceiling {
                Some(ceiling) => self.ceilings.insert(name, ceiling),
                None => self.ceilings.remove(&name),
            };
        }
        Ok(self)
    }

    /// The ceiling of `caller` (an identity or [`ANONYMOUS`]); None: not
    /// limited.
    pub fn ceiling(&self, caller: &str) -> Option<Ceiling> {
        self.ceilings.get(caller).copied()
    }
}

/// The flag's own syntax, callers in order.
impl fmt::Display for RateLimits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.ceilings.is_empty() {
            return f.write_str("none");
        }
        for (i, (name, ceiling)) in self.ceilings.iter().enumerate() {
            let separator = if i == 0 { "" } else { "," };
            write!(f, "{separator}{name}={ceiling}")?;
        }
        Ok(())
    }
}

/// One entry of the flag: the caller, and its ceiling (None: `off`).
fn parse_entry(entry: &str) -> Result<(String, Option<Ceiling>), String> {
    let Some((name, ceiling)) = entry.split_once('=') else {
        return Err("expected <identity>=<per_second>[/<burst>] or <identity>=off".to_owned());
    };
    let name = name.trim();
    if Identity::parse(name).is_none() {
        return Err(format!(
            "`{name}` is not an identity (lowercase letters, digits and `-`)"
        ));
    }
    let ceiling = match ceiling.trim() {
        "off" => None,
        ceiling => Some(Ceiling::parse(ceiling)?),
    };
    Ok((name.to_owned(), ceiling))
}

/// The refusal of a call of `method` by `caller`, over `ceiling`:
/// RESOURCE_EXHAUSTED with an `ErrorInfo` naming all three and a
/// `RetryInfo` with the wait until its next token.
pub fn refusal(caller: &str, ceiling: Ceiling, method: &str, retry_after: Duration) -> Status {
    let mut details = ErrorDetails::with_error_info(
        RATE_LIMITED,
        ERROR_DOMAIN,
        [
            ("caller".to_owned(), caller.to_owned()),
            ("method".to_owned(), method.to_owned()),
            ("limit".to_owned(), ceiling.to_string()),
        ],
    );
    details.set_retry_info(Some(retry_after));
    Status::with_error_details(
        tonic::Code::ResourceExhausted,
        format!(
            "{caller} is over its rate limit of {} calls a second, in bursts of at most {}; \
             retry in {retry_after:?}",
            ceiling.per_second, ceiling.burst
        ),
        details,
    )
}

/// A caller over its ceiling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct OverLimit {
    ceiling: Ceiling,
    /// Until the caller's next token.
    retry_after: Duration,
}

/// The buckets of one server, shared by every connection.
#[derive(Debug)]
struct Buckets {
    /// Only the limited callers: a caller missing here is not limited.
    by_caller: HashMap<String, Bucket>,
}

#[derive(Debug)]
struct Bucket {
    /// What the limiter enforces, for the refusal to name.
    ceiling: Ceiling,
    /// GCRA on one atomic word: a check takes no lock.
    limiter: DefaultDirectRateLimiter,
}

impl Buckets {
    fn new(limits: &RateLimits) -> Self {
        let by_caller = limits
            .ceilings
            .iter()
            .map(|(name, ceiling)| {
                let bucket = Bucket {
                    ceiling: *ceiling,
                    limiter: RateLimiter::direct(ceiling.quota()),
                };
                (name.clone(), bucket)
            })
            .collect();
        Self { by_caller }
    }

    /// Takes a token of `caller`'s bucket, if it has a bucket.
    fn admit(&self, caller: &str) -> Result<(), OverLimit> {
        let Some(bucket) = self.by_caller.get(caller) else {
            return Ok(());
        };
        bucket.limiter.check().map_err(|not_until| OverLimit {
            ceiling: bucket.ceiling,
            retry_after: whole_millis_up(not_until.wait_time_from(bucket.limiter.clock().now())),
        })
    }
}

/// A wait rounded up to the millisecond: never shorter than needed, and
/// readable in a message.
fn whole_millis_up(wait: Duration) -> Duration {
    let millis = wait.as_nanos().div_ceil(1_000_000);
    Duration::from_millis(u64::try_from(millis).unwrap_or(u64::MAX))
}

/// Applies per-caller ceilings to every request of a server.
#[derive(Debug, Clone)]
pub struct RateLimitLayer {
    buckets: Arc<Buckets>,
}

impl RateLimitLayer {
    /// One bucket per limited caller, shared by all the services this layer
    /// wraps (every connection of the server).
    pub fn new(limits: &RateLimits) -> Self {
        Self {
            buckets: Arc::new(Buckets::new(limits)),
        }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit {
            inner,
            buckets: self.buckets.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct RateLimit<S> {
    inner: S,
    buckets: Arc<Buckets>,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for RateLimit<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    ResBody: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<Ready<Result<Self::Response, Self::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let caller = request
            .extensions()
            .get::<Identity>()
            .map_or(ANONYMOUS, Identity::as_str);
        if let Err(over) = self.buckets.admit(caller) {
            let method = request.uri().path();
            // DEBUG: a flooding caller would otherwise flood the log too;
            // the refusal itself says everything.
            tracing::debug!(caller, method, limit = %over.ceiling, "refused: over its rate limit");
            let response = refusal(caller, over.ceiling, method, over.retry_after).into_http();
            return Either::Left(ready(Ok(response)));
        }
        Either::Right(self.inner.call(request))
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tower::ServiceExt as _;

    use super::*;

    fn limits(entries: &[&str]) -> anyhow::Result<RateLimits> {
        RateLimits::none().with_overrides(entries)
    }

    fn ceiling(per_second: u32, burst: u32) -> Ceiling {
        Ceiling::new(nonzero(per_second), nonzero(burst))
    }

    #[test]
    fn an_entry_sets_a_rate_and_a_burst_of_one_seconds_worth_unless_given() {
        let limits = limits(&[
            "bff=20000/40000",
            "operator=200",
            " fulfilment = 7 / 9 ",
            "",
        ])
        .unwrap();
        assert_eq!(limits.ceiling("bff"), Some(ceiling(20_000, 40_000)));
        assert_eq!(limits.ceiling("operator"), Some(ceiling(200, 200)));
        assert_eq!(limits.ceiling("fulfilment"), Some(ceiling(7, 9)));
        assert_eq!(limits.ceiling("orchestrator"), None);
        assert_eq!(
            limits.to_string(),
            "bff=20000/40000,fulfilment=7/9,operator=200/200"
        );
    }

    #[test]
    fn entries_replace_or_lift_a_default_and_keep_the_others() {
        let limits = RateLimits::defaults()
            .with_overrides(["operator=50/60", "bff=off", "anonymous=10"])
            .unwrap();
        assert_eq!(limits.ceiling("operator"), Some(ceiling(50, 60)));
        assert_eq!(limits.ceiling("bff"), None);
        assert_eq!(limits.ceiling(ANONYMOUS), Some(ceiling(10, 10)));
        assert_eq!(limits.ceiling("fulfilment"), Some(ceiling(1_000, 2_000)));
    }

    #[test]
    fn the_defaults_are_the_documented_ones_and_spare_the_orchestrator() {
        assert_eq!(
            RateLimits::defaults().to_string(),
            "bff=50000/100000,fulfilment=1000/2000,operator=200/400"
        );
        // The saga driver: limiting it would stall sagas.
        assert_eq!(RateLimits::defaults().ceiling("orchestrator"), None);
    }

    #[test]
    fn a_malformed_entry_is_refused_naming_the_flag_and_the_entry() {
        for (entry, problem) in [
            ("bff", "expected <identity>=<per_second>"),
            ("bff=", "not a whole number"),
            ("bff=fast", "not a whole number"),
            ("bff=-1", "not a whole number"),
            ("bff=1/2/3", "not a whole number"),
            ("bff=0", "must be positive"),
            ("bff=10/0", "burst must be positive"),
            ("Bff=10", "not an identity"),
            ("=10", "not an identity"),
        ] {
            let error = limits(&[entry]).unwrap_err().to_string();
            assert!(
                error.starts_with(&format!("--rate-limit `{entry}`")),
                "{error}"
            );
            assert!(error.contains(problem), "{entry}: {error}");
        }
    }

    /// A server whose every served call is counted; `call` reports whether
    /// the call was served, and the refusal if not.
    struct Server {
        layer: RateLimitLayer,
        served: Arc<AtomicUsize>,
    }

    impl Server {
        fn new(limits: &RateLimits) -> Self {
            Self {
                layer: RateLimitLayer::new(limits),
                served: Arc::new(AtomicUsize::new(0)),
            }
        }

        async fn call(&self, caller: Option<&str>) -> Result<(), Status> {
            let served = self.served.clone();
            let inner = tower::service_fn(move |_: http::Request<()>| {
                served.fetch_add(1, Ordering::SeqCst);
                async { Ok::<_, Infallible>(http::Response::new(())) }
            });
            let mut request = http::Request::builder()
                .uri("/demo.Service/Call")
                .body(())
                .unwrap();
            if let Some(caller) = caller {
                request
                    .extensions_mut()
                    .insert(Identity::parse(caller).unwrap());
            }
            let response = self.layer.layer(inner).oneshot(request).await.unwrap();
            match Status::from_header_map(response.headers()) {
                Some(status) => Err(status),
                None => Ok(()),
            }
        }

        /// Refusals among `calls` calls of `caller`, one right after another.
        async fn refusals(&self, caller: Option<&str>, calls: usize) -> usize {
            let mut refused = 0;
            for _ in 0..calls {
                if self.call(caller).await.is_err() {
                    refused += 1;
                }
            }
            refused
        }
    }

    #[tokio::test]
    async fn a_caller_over_its_ceiling_is_refused_while_another_is_served() {
        let server = Server::new(&limits(&["bff=1/2", "fulfilment=1/2"]).unwrap());
        // A burst of 10 far inside a second: the first 2 tokens, then none.
        assert_eq!(server.refusals(Some("bff"), 10).await, 8);
        // fulfilment's bucket is its own, full still.
        assert_eq!(server.refusals(Some("fulfilment"), 2).await, 0);
        // Callers with no ceiling are never refused.
        assert_eq!(server.refusals(Some("orchestrator"), 10).await, 0);
        assert_eq!(server.served.load(Ordering::SeqCst), 2 + 2 + 10);
    }

    #[tokio::test]
    async fn callers_without_an_identity_share_the_anonymous_bucket() {
        let server = Server::new(&limits(&["anonymous=1/3"]).unwrap());
        assert_eq!(server.refusals(None, 10).await, 7);
        assert_eq!(server.refusals(Some("bff"), 10).await, 0);
    }

    #[tokio::test]
    async fn every_connection_draws_on_the_same_bucket() {
        let server = Server::new(&limits(&["bff=1/2"]).unwrap());
        // `call` wraps a new inner service each time, as a new connection
        // would: the bucket is the layer's, not the service's.
        assert!(server.call(Some("bff")).await.is_ok());
        assert!(server.call(Some("bff")).await.is_ok());
        assert!(server.call(Some("bff")).await.is_err());
    }

    #[tokio::test]
    async fn a_refusal_names_caller_method_and_limit_and_when_to_retry() {
        let server = Server::new(&limits(&["bff=1/2"]).unwrap());
        assert_eq!(server.refusals(Some("bff"), 2).await, 0);
        let status = server.call(Some("bff")).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(
            status
                .message()
                .starts_with("bff is over its rate limit of 1 calls a second"),
            "{}",
            status.message()
        );
        let info = status.get_details_error_info().unwrap();
        assert_eq!(info.reason, RATE_LIMITED);
        assert_eq!(info.domain, ERROR_DOMAIN);
        assert_eq!(info.metadata["caller"], "bff");
        assert_eq!(info.metadata["method"], "/demo.Service/Call");
        assert_eq!(info.metadata["limit"], "1/2");
        // One token a second: the next comes within a second.
        let retry = status
            .get_details_retry_info()
            .unwrap()
            .retry_delay
            .unwrap();
        assert!(
            retry > Duration::ZERO && retry <= Duration::from_secs(1),
            "{retry:?}"
        );
        assert_eq!(retry.subsec_nanos() % 1_000_000, 0, "{retry:?}");
    }

    #[test]
    fn waits_round_up_to_the_millisecond() {
        assert_eq!(
            whole_millis_up(Duration::from_nanos(1)),
            Duration::from_millis(1)
        );
        assert_eq!(
            whole_millis_up(Duration::from_millis(7)),
            Duration::from_millis(7)
        );
        assert_eq!(
            whole_millis_up(Duration::from_micros(7_001)),
            Duration::from_millis(8)
        );
        assert_eq!(whole_millis_up(Duration::ZERO), Duration::ZERO);
    }
}
