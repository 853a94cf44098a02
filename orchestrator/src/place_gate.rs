//! The Redis fast path in front of `PlaceOrder`: a `SET NX PX` key per
//! (user, idempotency key) holding the order id of the first call, so that
//! concurrent duplicates (a retrying client, a double tap) wait for that
//! order instead of racing it into MySQL. MySQL's unique key on (user,
//! idempotency key) stays the guarantee: with Redis down, slow or flushed,
//! every call takes the MySQL path as before.

use std::sync::LazyLock;
use std::time::Duration;

use commerce_platform::{Redis, UserId};

/// Deletes the key only while it still holds the caller's order id.
static RELEASE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
    )
});

/// What the gate says about a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// The first call with this key (or Redis could not tell): place it.
    Place,
    /// Another call with this key took the gate first, for this order id.
    Duplicate(String),
}

#[derive(Debug, Clone)]
pub struct PlaceGate {
    redis: Redis,
    /// How long the key outlives its first call; later repeats go to MySQL.
    hold: Duration,
}

impl PlaceGate {
    pub fn new(redis: Redis, hold: Duration) -> Self {
        Self { redis, hold }
    }

    fn key(&self, user: &UserId, idempotency_key: &str) -> String {
        // The idempotency key is printable ASCII without spaces' meaning to
        // Redis (keys are binary-safe); the user id has no `:` ambiguity
        // because the key comes last.
        self.redis.key(format!("place:{user}:{idempotency_key}"))
    }

    /// Claims the key for `order_id`, or names the order that holds it.
    pub async fn admit(&self, user: &UserId, idempotency_key: &str, order_id: &str) -> Admission {
        if !self.redis.is_enabled() {
            return Admission::Place;
        }
        let key = self.key(user, idempotency_key);
        let hold_ms = u64::try_from(self.hold.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let answer = self
            .redis
            .run(|mut c| async move {
                // SET NX GET (Redis 7): sets, or answers the holder's value.
                redis::cmd("SET")
                    .arg(&key)
                    .arg(order_id)
                    .arg("NX")
                    .arg("GET")
                    .arg("PX")
                    .arg(hold_ms)
                    .query_async::<Option<String>>(&mut c)
                    .await
            })
            .await;
        match answer {
            Ok(Some(holder)) if holder != order_id => Admission::Duplicate(holder),
            Ok(_) => Admission::Place,
            Err(down) => {
                tracing::debug!(%down, "place gate unavailable; MySQL decides");
                Admission::Place
            }
        }
    }

    /// Lets the key go after a first call that recorded nothing, so that a
    /// retry is not sent to wait for an order that will never exist. Only
    /// the holder's own value is deleted.
    pub async fn release(&self, user: &UserId, idempotency_key: &str, order_id: &str) {
        if !self.redis.is_enabled() {
            return;
        }
        let key = self.key(user, idempotency_key);
        let _ = self
            .redis
            .run(|mut c| async move {
                RELEASE
                    .key(&key)
                    .arg(order_id)
                    .invoke_async::<i64>(&mut c)
                    .await
            })
            .await;
    }
}
