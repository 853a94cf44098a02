//! The saga barrier against a real MariaDB: repeats replay, compensation
//! first blocks the action, failed actions leave nothing behind.

use commerce_platform::barrier::{self, SagaPair};
use commerce_platform::db::ScopedFutureExt;
use commerce_platform::error::reason;
use commerce_platform::migrate;
use commerce_platform::{Database, SagaCall, SagaId, ServiceError};
use commerce_testkit::TestDatabase;
use diesel::sql_types::{BigInt, Char};
use diesel_async::{AsyncMysqlConnection, RunQueryDsl, SimpleAsyncConnection};
use std::time::Duration;

const PAIR: SagaPair = SagaPair {
    action: "add_effect",
    compensation: "remove_effect",
};

struct Fixture {
    db: TestDatabase,
    database: Database,
}

async fn fixture() -> Fixture {
    let db = TestDatabase::create("barrier").await.unwrap();
    migrate::run(
        &db.url,
        &[&migrate::BARRIER_MIGRATIONS],
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    let mut conn = db.connect().await.unwrap();
    conn.batch_execute(
        "CREATE TABLE effects (saga_id CHAR(36) NOT NULL PRIMARY KEY, amount BIGINT NOT NULL); \
         CREATE TABLE undone (saga_id CHAR(36) NOT NULL PRIMARY KEY)",
    )
    .await
    .unwrap();
    let database = Database::new(&commerce_platform::db::DbSettings {
        url: db.url.clone(),
        max_connections: 4,
        acquire_timeout: Duration::from_secs(2),
    });
    Fixture { db, database }
}

/// The action: writes an effect row; fails (and must leave nothing) when
/// `amount` is negative.
async fn act(database: &Database, saga: &SagaId, amount: i64) -> Result<i64, ServiceError> {
    act_fenced(database, &SagaCall::unfenced(saga.clone()), amount).await
}

async fn act_fenced(
    database: &Database,
    call: &SagaCall,
    amount: i64,
) -> Result<i64, ServiceError> {
    let saga = &call.saga;
    database
        .transaction(|c| {
            barrier::run_action(
                c,
                call,
                PAIR.action,
                async |c: &mut AsyncMysqlConnection| {
                    diesel::sql_query("INSERT INTO effects (saga_id, amount) VALUES (?, ?)")
                        .bind::<Char, _>(saga.as_str())
                        .bind::<BigInt, _>(amount)
                        .execute(c)
                        .await?;
                    if amount < 0 {
                        return Err(ServiceError::rejected("NEGATIVE", "negative amount"));
                    }
                    Ok(amount)
                },
            )
            .scope_boxed()
        })
        .await
}

/// The compensation: deletes the effect row; reports what it removed.
async fn undo(database: &Database, saga: &SagaId) -> Result<Option<i64>, ServiceError> {
    undo_fenced(database, &SagaCall::unfenced(saga.clone())).await
}

async fn undo_fenced(database: &Database, call: &SagaCall) -> Result<Option<i64>, ServiceError> {
    let saga = &call.saga;
    database
        .transaction(|c| {
            barrier::run_compensation(
                c,
                call,
                PAIR,
                || None,
                async |c: &mut AsyncMysqlConnection| {
                    diesel::sql_query("DELETE FROM effects WHERE saga_id = ?")
                        .bind::<Char, _>(saga.as_str())
                        .execute(c)
                        .await?;
                    // Keyed like a refund's ledger entry: a second undo
                    // applied would be a duplicate key.
                    diesel::sql_query("INSERT INTO undone (saga_id) VALUES (?)")
                        .bind::<Char, _>(saga.as_str())
                        .execute(c)
                        .await?;
                    Ok(Some(1))
                },
            )
            .scope_boxed()
        })
        .await
}

async fn effect_count(db: &TestDatabase) -> i64 {
    #[derive(diesel::QueryableByName)]
    struct Count {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let mut conn = db.connect().await.unwrap();
    diesel::sql_query("SELECT COUNT(*) AS n FROM effects")
        .get_result::<Count>(&mut conn)
        .await
        .unwrap()
        .n
}

#[tokio::test]
async fn action_twice_applies_once_and_replays_first_result() {
    let f = fixture().await;
    let saga = SagaId::generate();
    assert_eq!(act(&f.database, &saga, 7).await.unwrap(), 7);
    // The repeat carries another amount: it must still get the first result.
    assert_eq!(act(&f.database, &saga, 9).await.unwrap(), 7);
    assert_eq!(effect_count(&f.db).await, 1);
    f.db.drop_database().await.unwrap();
}

#[tokio::test]
async fn compensation_first_is_a_noop_and_blocks_the_action() {
    let f = fixture().await;
    let saga = SagaId::generate();
    assert_eq!(undo(&f.database, &saga).await.unwrap(), None);
    let refused = act(&f.database, &saga, 5).await.unwrap_err();
    assert!(
        matches!(&refused, ServiceError::Rejected { reason: r, .. } if *r == reason::SAGA_ALREADY_COMPENSATED),
        "{refused:?}"
    );
    assert_eq!(effect_count(&f.db).await, 0);
    // Still a no-op when repeated.
    assert_eq!(undo(&f.database, &saga).await.unwrap(), None);
    f.db.drop_database().await.unwrap();
}

#[tokio::test]
async fn compensation_undoes_once() {
    let f = fixture().await;
    let saga = SagaId::generate();
    act(&f.database, &saga, 3).await.unwrap();
    assert_eq!(undo(&f.database, &saga).await.unwrap(), Some(1));
    assert_eq!(undo(&f.database, &saga).await.unwrap(), Some(1));
    assert_eq!(effect_count(&f.db).await, 0);
    // The action stays applied in the barrier: a late repeat replays, never re-applies.
    assert_eq!(act(&f.database, &saga, 3).await.unwrap(), 3);
    assert_eq!(effect_count(&f.db).await, 0);
    f.db.drop_database().await.unwrap();
}

#[tokio::test]
async fn failed_action_leaves_nothing_and_its_compensation_is_a_noop() {
    let f = fixture().await;
    let saga = SagaId::generate();
    assert!(act(&f.database, &saga, -1).await.is_err());
    assert_eq!(effect_count(&f.db).await, 0);
    let entries = f
        .database
        .read(|c| barrier::list(c, &saga).scope_boxed())
        .await
        .unwrap();
    assert!(entries.is_empty());
    assert_eq!(undo(&f.database, &saga).await.unwrap(), None);
    f.db.drop_database().await.unwrap();
}

#[tokio::test]
async fn concurrent_repeats_of_one_action_apply_once() {
    let f = fixture().await;
    let saga = SagaId::generate();
    let calls = (0..8).map(|_| act(&f.database, &saga, 4));
    let results = futures::future::join_all(calls).await;
    for result in results {
        assert_eq!(result.unwrap(), 4);
    }
    assert_eq!(effect_count(&f.db).await, 1);
    f.db.drop_database().await.unwrap();
}

/// Concurrent repeats of a compensation whose undo writes a keyed row: one
/// undo applies, the others replay its answer (none fails on the key).
#[tokio::test]
async fn concurrent_repeats_of_one_compensation_undo_once() {
    let f = fixture().await;
    for _ in 0..5 {
        let saga = SagaId::generate();
        act(&f.database, &saga, 4).await.unwrap();
        let undos = (0..8).map(|_| undo(&f.database, &saga));
        for result in futures::future::join_all(undos).await {
            assert_eq!(result.unwrap(), Some(1));
        }
    }
    assert_eq!(effect_count(&f.db).await, 0);
    f.db.drop_database().await.unwrap();
}

fn stale(error: &ServiceError) -> bool {
    matches!(error, ServiceError::Rejected { reason: r, .. } if *r == reason::SAGA_FENCE_STALE)
}

/// Once a call with fence 2 has been seen for a saga, a call with fence 1
/// (an instance that lost its lease) is refused, action or compensation,
/// and changes nothing; the current fence and newer ones go on.
#[tokio::test]
async fn a_call_older_than_a_fence_seen_is_refused() {
    let f = fixture().await;
    let saga = SagaId::generate();
    let at = |fence| SagaCall {
        saga: saga.clone(),
        fence,
    };
    assert_eq!(act_fenced(&f.database, &at(2), 4).await.unwrap(), 4);
    let refused = act_fenced(&f.database, &at(1), 4).await.unwrap_err();
    assert!(stale(&refused), "{refused:?}");
    let refused = undo_fenced(&f.database, &at(1)).await.unwrap_err();
    assert!(stale(&refused), "{refused:?}");
    assert_eq!(
        effect_count(&f.db).await,
        1,
        "the stale undo changed nothing"
    );
    // The holder repeats (replayed), a newer holder compensates.
    assert_eq!(act_fenced(&f.database, &at(2), 4).await.unwrap(), 4);
    assert_eq!(undo_fenced(&f.database, &at(3)).await.unwrap(), Some(1));
    assert_eq!(effect_count(&f.db).await, 0);
    let refused = act_fenced(&f.database, &at(2), 4).await.unwrap_err();
    assert!(stale(&refused), "{refused:?}");
    f.db.drop_database().await.unwrap();
}
