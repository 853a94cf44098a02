//! The Redis admission gate in front of IssueCoupon: a flash sale issues
//! exactly the quantity, once per user, whether the gate is on, flushed
//! mid-sale, or Redis is off; an admission MySQL refuses is given back.
//! Each server has a Redis prefix of its own (`ServerConfig::for_tests`).

use std::collections::HashSet;

use commerce_platform::Redis;
use commerce_platform::ServerConfig;
use commerce_proto::coupon::v1 as pb;
use commerce_proto::coupon::v1::coupon_admin_service_client::CouponAdminServiceClient;
use commerce_proto::coupon::v1::coupon_service_client::CouponServiceClient;
use commerce_testkit::{TestDatabase, TestServer, assert_status, error_reason};
use coupon_service::CouponArgs;
use coupon_service::gate::IssueGate;
use futures::future::join_all;
use redis::AsyncCommands;
use tonic::Code;

use crate::support::{TestApp, fixed};

/// A coupon server plus a direct line to its Redis keys.
struct GateApp {
    app: TestApp,
    /// Names the server's gate keys (same prefix as the server).
    gate: IssueGate,
    /// `None` when the server runs with Redis off.
    redis: Option<redis::aio::MultiplexedConnection>,
}

async fn spawn_gate(redis_on: bool, args: CouponArgs) -> GateApp {
    let db = TestDatabase::create("coupon").await.unwrap();
    let mut config = ServerConfig::for_tests("coupon", db.url.clone());
    let redis = match &config.redis.url {
        Some(url) if redis_on => Some(
            redis::Client::open(url.as_str())
                .unwrap()
                .get_multiplexed_async_connection()
                .await
                .unwrap(),
        ),
        _ => None,
    };
    if !redis_on {
        config.redis.url = None;
    }
    let gate = IssueGate::new(Redis::disabled(&config.redis.prefix));
    let app = coupon_service::build_with(config, args).await.unwrap();
    let server = TestServer::start(app);
    let channel = server.channel();
    GateApp {
        app: TestApp {
            db,
            admin: CouponAdminServiceClient::new(channel.clone()),
            coupons: CouponServiceClient::new(channel),
            server,
        },
        gate,
        redis,
    }
}

const GATE_ON: CouponArgs = CouponArgs { issue_gate: true };

impl GateApp {
    /// A template of `quantity` coupons, valid now.
    async fn template(&self, quantity: i64) -> i64 {
        let request = pb::CreateTemplateRequest {
            total_quantity: quantity,
            ..fixed(1_000)
        };
        self.app.create_template(request).await.id
    }

    /// Users holding a slot in the gate (admitted or issued), `None` when
    /// the gate is not built.
    async fn admitted(&self, template_id: i64) -> Option<i64> {
        let mut redis = self.redis.clone().unwrap();
        let key = self.gate.users_key(template_id);
        let fields: i64 = redis.hlen(&key).await.unwrap();
        (fields > 0).then_some(fields - 1)
    }

    /// Deletes the gate's keys, as a Redis restart or FLUSHALL would.
    async fn flush_gate(&self, template_id: i64) {
        let mut redis = self.redis.clone().unwrap();
        let keys = [
            self.gate.users_key(template_id),
            self.gate.quantity_key(template_id),
        ];
        let _: i64 = redis.del(&keys).await.unwrap();
    }

    /// MySQL's count and rows, which must always agree.
    async fn issued(&self, template_id: i64) -> i64 {
        let counted = self
            .app
            .count(&format!(
                "SELECT issued_quantity AS n FROM coupon_templates WHERE id = {template_id}"
            ))
            .await;
        let rows = self
            .app
            .count(&format!(
                "SELECT COUNT(*) AS n FROM user_coupons WHERE template_id = {template_id}"
            ))
            .await;
        assert_eq!(counted, rows, "issued_quantity disagrees with the rows");
        counted
    }

    /// Issues to every user at once; returns the users who won.
    async fn rush(&self, template_id: i64, users: &[String]) -> Vec<String> {
        let results = join_all(users.iter().map(|user| self.app.issue(template_id, user))).await;
        let mut winners = Vec::new();
        for (user, result) in users.iter().zip(results) {
            match result {
                Ok(coupon) => winners.push(coupon.user_id),
                Err(status) => {
                    let reason = error_reason(&status);
                    assert!(
                        matches!(
                            (status.code(), reason.as_deref()),
                            (Code::FailedPrecondition, Some("COUPON_SOLD_OUT"))
                                | (Code::AlreadyExists, Some("COUPON_ALREADY_ISSUED"))
                        ),
                        "{user}: unexpected refusal {status:?}"
                    );
                }
            }
        }
        winners
    }

    async fn stop(self) {
        self.app.stop().await;
    }
}

/// `count` distinct users, then the first `repeats` of them again, twice.
fn crowd(tag: &str, count: usize, repeats: usize) -> Vec<String> {
    let users: Vec<String> = (0..count).map(|i| format!("{tag}-{i}")).collect();
    let mut crowd = users.clone();
    for _ in 0..2 {
        crowd.extend(users.iter().take(repeats).cloned());
    }
    crowd
}

fn assert_once_each(winners: &[String]) {
    let distinct: HashSet<&String> = winners.iter().collect();
    assert_eq!(
        distinct.len(),
        winners.len(),
        "a user won twice: {winners:?}"
    );
}

#[tokio::test]
async fn a_flash_sale_issues_exactly_the_quantity_once_per_user() {
    let gated = spawn_gate(true, GATE_ON).await;
    let template = gated.template(20).await;

    let winners = gated.rush(template, &crowd("fan", 300, 50)).await;

    assert_eq!(winners.len(), 20);
    assert_once_each(&winners);
    assert_eq!(gated.issued(template).await, 20);
    // Every winner holds a slot in the gate, every loser was given back.
    assert_eq!(gated.admitted(template).await, Some(20));
    // Late comers are turned away by the gate with MySQL's reasons.
    assert_status(
        gated.app.issue(template, "late").await,
        Code::FailedPrecondition,
        "COUPON_SOLD_OUT",
    );
    assert_status(
        gated.app.issue(template, &winners[0]).await,
        Code::AlreadyExists,
        "COUPON_ALREADY_ISSUED",
    );
    gated.stop().await;
}

#[tokio::test]
async fn a_gate_flushed_mid_sale_is_rebuilt_and_never_turns_away_a_winner() {
    let gated = spawn_gate(true, GATE_ON).await;
    let template = gated.template(20).await;

    // Half the coupons go, then Redis loses the gate.
    let first = gated.rush(template, &crowd("early", 10, 5)).await;
    assert_eq!(first.len(), 10);
    gated.flush_gate(template).await;

    // The rest of the sale, with the gate deleted again and again while it
    // runs: every coupon is still issued (the rebuilt gate is never too
    // strict), and never one more.
    let late = crowd("late", 200, 30);
    let sale = gated.rush(template, &late);
    let flusher = async {
        for _ in 0..20 {
            gated.flush_gate(template).await;
            tokio::task::yield_now().await;
        }
    };
    let (second, ()) = tokio::join!(sale, flusher);

    let mut winners = first;
    winners.extend(second);
    assert_eq!(winners.len(), 20);
    assert_once_each(&winners);
    assert_eq!(gated.issued(template).await, 20);

    // A final rebuild agrees with MySQL.
    gated.flush_gate(template).await;
    assert_status(
        gated.app.issue(template, "after").await,
        Code::FailedPrecondition,
        "COUPON_SOLD_OUT",
    );
    assert_eq!(gated.admitted(template).await, Some(20));
    assert_status(
        gated.app.issue(template, &winners[0]).await,
        Code::AlreadyExists,
        "COUPON_ALREADY_ISSUED",
    );
    gated.stop().await;
}

#[tokio::test]
async fn without_redis_or_with_the_gate_off_mysql_alone_is_exact() {
    for (redis_on, args) in [(false, GATE_ON), (true, CouponArgs { issue_gate: false })] {
        let gated = spawn_gate(redis_on, args).await;
        let template = gated.template(20).await;

        let winners = gated.rush(template, &crowd("fan", 150, 30)).await;

        assert_eq!(winners.len(), 20, "redis {redis_on}, {args:?}");
        assert_once_each(&winners);
        assert_eq!(gated.issued(template).await, 20);
        if redis_on {
            assert_eq!(gated.admitted(template).await, None, "gate off, no keys");
        }
        gated.stop().await;
    }
}

#[tokio::test]
async fn an_admission_mysql_refuses_is_given_back() {
    let gated = spawn_gate(true, GATE_ON).await;

    // Bob holds a coupon that MySQL issued behind the gate's back (the gate
    // was built before); the gate admits him, MySQL refuses him, and his
    // slot goes back, so the last coupon still reaches carol.
    let template = gated.template(2).await;
    gated.app.issue(template, "alice").await.unwrap();
    gated
        .app
        .execute(&format!(
            "INSERT INTO user_coupons (template_id, user_id, state, issued_at) \
             VALUES ({template}, 'bob', 'AVAILABLE', NOW(6))"
        ))
        .await;
    assert_status(
        gated.app.issue(template, "bob").await,
        Code::AlreadyExists,
        "COUPON_ALREADY_ISSUED",
    );
    assert_eq!(gated.admitted(template).await, Some(1));
    gated.app.issue(template, "carol").await.unwrap();
    assert_eq!(gated.admitted(template).await, Some(2));

    // A template of one coupon whose window is over: the gate admits, MySQL
    // refuses it as expired, the slot goes back; once the window is open
    // again the one coupon is still there.
    let one = gated.template(1).await;
    gated
        .app
        .execute(&format!(
            "UPDATE coupon_templates SET valid_from = NOW(6) - INTERVAL 2 DAY, \
             valid_until = NOW(6) - INTERVAL 1 DAY WHERE id = {one}"
        ))
        .await;
    for user in ["dave", "erin", "dave"] {
        assert_status(
            gated.app.issue(one, user).await,
            Code::FailedPrecondition,
            "COUPON_EXPIRED",
        );
        assert_eq!(gated.admitted(one).await, Some(0));
    }
    gated
        .app
        .execute(&format!(
            "UPDATE coupon_templates SET valid_until = NOW(6) + INTERVAL 1 DAY WHERE id = {one}"
        ))
        .await;
    gated.app.issue(one, "erin").await.unwrap();
    assert_eq!(gated.issued(one).await, 1);
    gated.stop().await;
}

#[tokio::test]
async fn a_changed_quantity_reaches_the_gate_when_its_copy_expires() {
    let gated = spawn_gate(true, GATE_ON).await;
    let template = gated.template(3).await;
    let winners = gated.rush(template, &crowd("fan", 10, 0)).await;
    assert_eq!(winners.len(), 3);

    // The gate's copy of the quantity is short-lived.
    let mut redis = gated.redis.clone().unwrap();
    let ttl: i64 = redis.pttl(gated.gate.quantity_key(template)).await.unwrap();
    assert!(ttl > 0, "the quantity must expire, PTTL {ttl}");

    gated
        .app
        .execute(&format!(
            "UPDATE coupon_templates SET total_quantity = 4 WHERE id = {template}"
        ))
        .await;
    // Its expiry, without waiting for it: the next request reloads it.
    let _: i64 = redis.del(gated.gate.quantity_key(template)).await.unwrap();
    gated.app.issue(template, "fourth").await.unwrap();
    assert_status(
        gated.app.issue(template, "fifth").await,
        Code::FailedPrecondition,
        "COUPON_SOLD_OUT",
    );
    assert_eq!(gated.issued(template).await, 4);
    gated.stop().await;
}
