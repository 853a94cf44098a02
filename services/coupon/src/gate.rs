//! The first-come admission gate: a Redis fast path in front of issuance.
//!
//! In a flash sale thousands of users race for a few coupons. MySQL alone
//! is exact (a conditional increment of the template's issued count and a
//! unique key on (template, user)), but every loser costs a database read
//! and the winners queue on the template's row lock. The gate turns the
//! losers away in Redis with the refusal MySQL would give, and lets through
//! only the users that may win: at most one admission per user, at most
//! `total_quantity` admissions per template, decided by one Lua script.
//!
//! MySQL stays the truth. An admitted user is issued by the MySQL path, whose
//! guards keep the count exact; when it refuses or fails, the admission is
//! given back. The gate may be too permissive (MySQL then refuses the extra
//! admissions), never too strict, in every case it knows:
//!
//! - Redis off, down or slow: the gate answers nothing and issuance is the
//!   MySQL path alone.
//! - The gate's keys are gone (Redis restarted, flushed, expired): the first
//!   request rebuilds them from MySQL (the issued users and the quantity)
//!   with an "init if absent" script, so servers racing to rebuild agree on
//!   one gate. Issues that commit while the snapshot is read are missing from
//!   it: the gate then counts fewer users than MySQL, which only admits too
//!   many. Issued coupons are never deleted, so a snapshot never names a
//!   user MySQL would still accept.
//! - A give-back always names the user (`HDEL`), never decrements a count:
//!   given back twice, or against a gate rebuilt without that user, it
//!   changes nothing it should not.
//! - The quantity is cached under a key of its own with a short TTL, so a
//!   template change reaches the gate within [`QUANTITY_TTL`]; the users key
//!   expires after [`USERS_TTL`], which bounds what a give-back lost to a
//!   Redis failure can hold (that user reads as already issued, and one slot
//!   as taken, until the rebuild).
//!
//! Keys, for template `T` (the hash tag keeps both in one cluster slot):
//! - `<prefix>:coupon:gate:{T}:users`: hash, field `#` (marks the gate as
//!   built, so an empty gate still exists) and one field `u:<user_id>` per
//!   admitted or issued user; admissions are `HLEN - 1`.
//! - `<prefix>:coupon:gate:{T}:quantity`: string, the template's
//!   `total_quantity`.

use std::sync::LazyLock;
use std::time::Duration;

use commerce_platform::{Redis, RedisDown, ServiceError, UserId};
use redis::Script;

use crate::domain::{IssueRefusal, UserCoupon};
use crate::store::CouponStore;

/// How long a gate lives before it is rebuilt from MySQL.
pub const USERS_TTL: Duration = Duration::from_secs(600);
/// How long the gate trusts its copy of a template's quantity.
pub const QUANTITY_TTL: Duration = Duration::from_secs(5);
/// Rounds of "rebuild, then ask again" before a request gives up on the
/// gate (someone keeps deleting it) and goes to MySQL alone.
const ADMIT_ROUNDS: usize = 3;

/// Admits `ARGV[1]` once, while fewer than the quantity are admitted.
/// Answers `admitted`, `held` (admitted before), `sold_out`, or what the
/// server must load first: `rebuild` (no gate) or `quantity`.
static ADMIT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        if redis.call('EXISTS', KEYS[1]) == 0 then return 'rebuild' end
        local field = 'u:' .. ARGV[1]
        if redis.call('HEXISTS', KEYS[1], field) == 1 then return 'held' end
        local quantity = redis.call('GET', KEYS[2])
        if not quantity then return 'quantity' end
        if redis.call('HLEN', KEYS[1]) - 1 >= tonumber(quantity) then return 'sold_out' end
        redis.call('HSET', KEYS[1], field, '1')
        return 'admitted'
        ",
    )
});

/// Builds the gate from a MySQL snapshot unless it exists already: the
/// first rebuild wins, later ones (older or newer snapshots) change nothing.
/// `ARGV`: quantity, users TTL (ms), quantity TTL (ms), then the users.
static INIT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
        redis.call('HSET', KEYS[1], '#', '1')
        for i = 4, #ARGV do redis.call('HSET', KEYS[1], 'u:' .. ARGV[i], '1') end
        redis.call('PEXPIRE', KEYS[1], ARGV[2])
        redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[3])
        return 1
        ",
    )
});

/// Gives an admission back: removes the user, never decrements a count, so a
/// give-back that reaches a gate rebuilt without that user (or repeats)
/// takes nothing from anyone else.
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
        return redis.call('HDEL', KEYS[1], 'u:' .. ARGV[1])
        ",
    )
});

/// What the gate decided for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// The user holds a slot: issue in MySQL, give it back on failure.
    Admitted,
    /// Turned away with the refusal the MySQL path gives.
    Refused(IssueRefusal),
    /// No answer (Redis off, down, slow, or the gate kept vanishing): issue
    /// through MySQL alone.
    Bypassed,
}

/// One answer of the admission script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GateReply {
    Decided(Admission),
    NeedsRebuild,
    NeedsQuantity,
}

impl GateReply {
    fn parse(reply: &str) -> Option<Self> {
        Some(match reply {
            "admitted" => Self::Decided(Admission::Admitted),
            "held" => Self::Decided(Admission::Refused(IssueRefusal::AlreadyIssued)),
            "sold_out" => Self::Decided(Admission::Refused(IssueRefusal::SoldOut)),
            "rebuild" => Self::NeedsRebuild,
            "quantity" => Self::NeedsQuantity,
            _ => return None,
        })
    }
}

/// The Redis side of the gate.
#[derive(Debug, Clone)]
pub struct IssueGate {
    redis: Redis,
}

impl IssueGate {
    pub fn new(redis: Redis) -> Self {
        Self { redis }
    }

    /// The key of template `template_id`'s admitted users.
    pub fn users_key(&self, template_id: i64) -> String {
        self.redis
            .key(format!("coupon:gate:{{{template_id}}}:users"))
    }

    /// The key of template `template_id`'s cached quantity.
    pub fn quantity_key(&self, template_id: i64) -> String {
        self.redis
            .key(format!("coupon:gate:{{{template_id}}}:quantity"))
    }

    /// Asks the gate for `user`, loading from `store` what it lacks. Only
    /// MySQL errors are errors (an unknown template is NOT_FOUND, as on the
    /// MySQL path); a Redis that does not answer bypasses the gate.
    pub async fn admit(
        &self,
        store: &CouponStore,
        template_id: i64,
        user: &UserId,
    ) -> Result<Admission, ServiceError> {
        for _ in 0..ADMIT_ROUNDS {
            let reply = match self.ask(template_id, user).await {
                Ok(reply) => reply,
                Err(down) => return Ok(bypass(template_id, &down)),
            };
            let loaded = match reply {
                GateReply::Decided(admission) => return Ok(admission),
                GateReply::NeedsRebuild => {
                    let snapshot = store.template_issue_snapshot(template_id).await?;
                    self.init(template_id, snapshot.total_quantity, &snapshot.users)
                        .await
                }
                GateReply::NeedsQuantity => {
                    let template = store.template_get(template_id).await?;
                    self.set_quantity(template_id, template.total_quantity)
                        .await
                }
            };
            if let Err(down) = loaded {
                return Ok(bypass(template_id, &down));
            }
        }
        tracing::warn!(
            template_id,
            "issue gate keeps vanishing; issuing through MySQL"
        );
        Ok(Admission::Bypassed)
    }

    /// Gives `user`'s admission back. Best effort: a give-back Redis loses
    /// is bounded by [`USERS_TTL`] (the gate is rebuilt from MySQL).
    pub async fn release(&self, template_id: i64, user: &UserId) {
        let users = self.users_key(template_id);
        let released = self
            .redis
            .run(|mut c| async move {
                RELEASE
                    .key(users)
                    .arg(user.as_str())
                    .invoke_async::<i64>(&mut c)
                    .await
            })
            .await;
        if let Err(down) = released {
            tracing::warn!(template_id, %down, "issue gate: an admission could not be given back");
        }
    }

    async fn ask(&self, template_id: i64, user: &UserId) -> Result<GateReply, RedisDown> {
        let (users, quantity) = (self.users_key(template_id), self.quantity_key(template_id));
        let reply: String = self
            .redis
            .run(|mut c| async move {
                ADMIT
                    .key(users)
                    .key(quantity)
                    .arg(user.as_str())
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        GateReply::parse(&reply).ok_or_else(|| {
            RedisDown::Failed(redis::RedisError::from((
                redis::ErrorKind::UnexpectedReturnType,
                "issue gate script",
                reply,
            )))
        })
    }

    async fn init(
        &self,
        template_id: i64,
        quantity: i64,
        users: &[String],
    ) -> Result<(), RedisDown> {
        let (users_key, quantity_key) =
            (self.users_key(template_id), self.quantity_key(template_id));
        self.redis
            .run(|mut c| async move {
                let mut init = INIT.key(users_key);
                init.key(quantity_key)
                    .arg(quantity)
                    .arg(millis(USERS_TTL))
                    .arg(millis(QUANTITY_TTL));
                for user in users {
                    init.arg(user.as_str());
                }
                init.invoke_async::<i64>(&mut c).await.map(drop)
            })
            .await
    }

    /// Caches a quantity read from MySQL. Two servers refreshing at once
    /// may leave the older of two reads; the TTL bounds that as well.
    async fn set_quantity(&self, template_id: i64, quantity: i64) -> Result<(), RedisDown> {
        let key = self.quantity_key(template_id);
        self.redis
            .run(|mut c| async move {
                redis::cmd("SET")
                    .arg(key)
                    .arg(quantity)
                    .arg("PX")
                    .arg(millis(QUANTITY_TTL))
                    .query_async::<()>(&mut c)
                    .await
            })
            .await
    }
}

fn bypass(template_id: i64, down: &RedisDown) -> Admission {
    tracing::debug!(template_id, %down, "issue gate unavailable; issuing through MySQL");
    Admission::Bypassed
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Issuance as the API sees it: the gate (when configured) in front of the
/// MySQL path.
#[derive(Debug, Clone)]
pub struct Issuance {
    store: CouponStore,
    /// `None` when the gate is turned off (`--issue-gate false`).
    gate: Option<IssueGate>,
}

impl Issuance {
    pub fn new(store: CouponStore, gate: Option<IssueGate>) -> Self {
        Self { store, gate }
    }

    /// Issues a coupon of `template_id` to `user`, first come first served.
    pub async fn coupon_issue(
        &self,
        template_id: i64,
        user: &UserId,
    ) -> Result<UserCoupon, ServiceError> {
        let Some(gate) = &self.gate else {
            return self.store.coupon_issue(template_id, user).await;
        };
        // On a task of its own, admission included: a caller that goes
        // away (deadline, cancel) at any await must not leave an admission
        // without its issue, or one MySQL refused without its give-back.
        let (store, gate, user) = (self.store.clone(), gate.clone(), user.clone());
        tokio::spawn(async move {
            match gate.admit(&store, template_id, &user).await? {
                Admission::Refused(refusal) => Err(refusal.into()),
                Admission::Bypassed => store.coupon_issue(template_id, &user).await,
                Admission::Admitted => {
                    let issued = store.coupon_issue(template_id, &user).await;
                    if issued.is_err() {
                        gate.release(template_id, &user).await;
                    }
                    issued
                }
            }
        })
        .await
        .map_err(|e| ServiceError::internal(format!("issuing task failed: {e}")))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_script_answer_has_its_meaning() {
        assert_eq!(
            GateReply::parse("admitted"),
            Some(GateReply::Decided(Admission::Admitted))
        );
        assert_eq!(
            GateReply::parse("held"),
            Some(GateReply::Decided(Admission::Refused(
                IssueRefusal::AlreadyIssued
            )))
        );
        assert_eq!(
            GateReply::parse("sold_out"),
            Some(GateReply::Decided(Admission::Refused(
                IssueRefusal::SoldOut
            )))
        );
        assert_eq!(GateReply::parse("rebuild"), Some(GateReply::NeedsRebuild));
        assert_eq!(GateReply::parse("quantity"), Some(GateReply::NeedsQuantity));
        assert_eq!(GateReply::parse("other"), None);
    }
}
