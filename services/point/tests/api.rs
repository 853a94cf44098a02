//! The point service through its real gRPC server, each test against its own
//! fresh database on the real MariaDB/MySQL server.

#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

#[path = "api/charge.rs"]
mod charge;
#[path = "api/concurrency.rs"]
mod concurrency;
#[path = "api/ledger.rs"]
mod ledger;
#[path = "api/operations.rs"]
mod operations;
#[path = "api/saga.rs"]
mod saga;
#[path = "api/validation.rs"]
mod validation;

use std::time::Duration;

use commerce_platform::ServerConfig;
use commerce_proto::point::v1 as pb;
use commerce_proto::point::v1::point_service_client::PointServiceClient;
use commerce_proto::saga::v1 as saga_pb;
use commerce_proto::saga::v1::saga_barrier_service_client::SagaBarrierServiceClient;
use commerce_testkit::TestChannel as Channel;
use commerce_testkit::{TestDatabase, TestServer};
use diesel::sql_types::{BigInt, Text};
use diesel_async::RunQueryDsl;

/// A point server on its own database, and clients of it.
pub struct TestApp {
    pub db: TestDatabase,
    pub server: TestServer,
    pub points: PointServiceClient<Channel>,
    pub barriers: SagaBarrierServiceClient<Channel>,
}

pub async fn spawn() -> TestApp {
    let db = TestDatabase::create("point").await.unwrap();
    let mut config = ServerConfig::for_tests("point", db.url.clone());
    // Tests share a few CPUs and one database server: give a burst of 100
    // calls queued on the pool time to get a connection, so only a real
    // outage (staged with a short timeout, see `spawn_on`) reads as one.
    config.database.acquire_timeout = Duration::from_secs(15);
    spawn_with(db, config).await
}

/// A server on `db`, reaching it through `url` (e.g. a proxy).
pub async fn spawn_on(db: TestDatabase, url: String) -> TestApp {
    spawn_with(db, ServerConfig::for_tests("point", url)).await
}

async fn spawn_with(db: TestDatabase, config: ServerConfig) -> TestApp {
    let app = point_service::build(config).await.unwrap();
    let server = TestServer::start(app);
    let channel = server.channel();
    TestApp {
        db,
        server,
        points: PointServiceClient::new(channel.clone()),
        barriers: SagaBarrierServiceClient::new(channel),
    }
}

#[derive(diesel::QueryableByName)]
struct Number {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

impl TestApp {
    pub async fn finish(self) {
        self.server.stop().await.unwrap();
        self.db.drop_database().await.unwrap();
    }

    pub async fn charge(&self, user: &str, amount: i64, key: &str) -> pb::ChargeResponse {
        self.points
            .clone()
            .charge(charge_request(user, amount, key))
            .await
            .unwrap()
            .into_inner()
    }

    pub async fn balance(&self, user: &str) -> i64 {
        self.points
            .clone()
            .get_balance(pb::GetBalanceRequest {
                user_id: user.to_owned(),
            })
            .await
            .unwrap()
            .into_inner()
            .balance
    }

    pub async fn deduct(
        &self,
        saga: &str,
        user: &str,
        amount: i64,
    ) -> Result<pb::DeductPointsResponse, tonic::Status> {
        self.points
            .clone()
            .deduct_points(deduct_request(saga, user, amount))
            .await
            .map(tonic::Response::into_inner)
    }

    pub async fn refund(&self, saga: &str) -> pb::RefundPointsResponse {
        self.points
            .clone()
            .refund_points(refund_request(saga))
            .await
            .unwrap()
            .into_inner()
    }

    /// Every ledger entry of `user`, newest first, read page by page through
    /// the API; checks that pages agree with the reported total.
    pub async fn ledger(&self, user: &str) -> Vec<pb::LedgerEntry> {
        let mut entries = Vec::new();
        for page in 0..1_000 {
            let listed = self
                .points
                .clone()
                .list_ledger(pb::ListLedgerRequest {
                    user_id: user.to_owned(),
                    page,
                    size: 100,
                })
                .await
                .unwrap()
                .into_inner();
            let last = listed.entries.len() < 100;
            entries.extend(listed.entries);
            if last {
                assert_eq!(entries.len() as i64, listed.total);
                return entries;
            }
        }
        panic!("ledger of {user} longer than expected");
    }

    /// Checks the invariants of one account against the API and the
    /// database: the balance is never negative, equals the sum of the
    /// ledger, and every entry's `balance_after` continues the previous one.
    pub async fn assert_consistent(&self, user: &str) -> Vec<pb::LedgerEntry> {
        let balance = self.balance(user).await;
        assert!(balance >= 0, "negative balance {balance}");
        let ledger = self.ledger(user).await;
        assert!(
            ledger.windows(2).all(|w| w[0].id > w[1].id),
            "not newest first"
        );
        let mut running = 0;
        for entry in ledger.iter().rev() {
            running += entry.amount;
            assert_eq!(entry.balance_after, running, "chain broken at {entry:?}");
            assert!(entry.balance_after >= 0);
        }
        assert_eq!(running, balance, "balance differs from the ledger's sum");
        assert_eq!(self.sql_ledger_sum(user).await, balance);
        assert_eq!(self.sql_balance(user).await.unwrap_or(0), balance);
        ledger
    }

    async fn sql_number(&self, query: &str, user: &str) -> Option<i64> {
        let mut conn = self.db.connect().await.unwrap();
        diesel::sql_query(query)
            .bind::<Text, _>(user)
            .get_result::<Number>(&mut conn)
            .await
            .map(|row| row.n)
            .ok()
    }

    /// The balance column, straight from the database; `None` without an account.
    pub async fn sql_balance(&self, user: &str) -> Option<i64> {
        self.sql_number(
            "SELECT balance AS n FROM point_accounts WHERE user_id = ?",
            user,
        )
        .await
    }

    pub async fn sql_ledger_sum(&self, user: &str) -> i64 {
        self.sql_number(
            "SELECT CAST(COALESCE(SUM(amount), 0) AS SIGNED) AS n FROM point_ledger WHERE user_id = ?",
            user,
        )
        .await
        .unwrap()
    }

    /// Rows in a table of the test database.
    pub async fn sql_count(&self, table: &str) -> i64 {
        let mut conn = self.db.connect().await.unwrap();
        diesel::sql_query(format!("SELECT COUNT(*) AS n FROM {table}"))
            .get_result::<Number>(&mut conn)
            .await
            .unwrap()
            .n
    }

    /// The barrier rows of a saga, as (operation, state).
    pub async fn barrier(&self, saga: &str) -> Vec<(String, saga_pb::BarrierState)> {
        let mut rows: Vec<_> = self
            .barriers
            .clone()
            .list_barriers(saga_pb::ListBarriersRequest {
                saga_id: saga.to_owned(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .entries
            .into_iter()
            .map(|e| (e.operation.clone(), e.state()))
            .collect();
        rows.sort();
        rows
    }
}

pub fn charge_request(user: &str, amount: i64, key: &str) -> pb::ChargeRequest {
    pb::ChargeRequest {
        user_id: user.to_owned(),
        amount,
        idempotency_key: key.to_owned(),
    }
}

pub fn deduct_request(saga: &str, user: &str, amount: i64) -> pb::DeductPointsRequest {
    pb::DeductPointsRequest {
        saga_id: saga.to_owned(),
        user_id: user.to_owned(),
        amount,
        saga_fence: 0,
    }
}

pub fn refund_request(saga: &str) -> pb::RefundPointsRequest {
    pb::RefundPointsRequest {
        saga_id: saga.to_owned(),
        saga_fence: 0,
    }
}

pub fn new_saga() -> String {
    uuid::Uuid::new_v4().to_string()
}
