//! Cancellation safety of the pool against a real MariaDB: reads and
//! transactions dropped at random points (the way a gRPC deadline or a
//! timeout layer drops a handler) never leave a connection that answers the
//! next caller with somebody else's reply.

use std::time::Duration;

use commerce_platform::db::{DbSettings, ScopedFutureExt};
use commerce_platform::{Database, ServiceError};
use commerce_testkit::TestDatabase;
use diesel::QueryableByName;
use diesel::sql_types::BigInt;
use diesel_async::{RunQueryDsl, SimpleAsyncConnection};
use rand::Rng;

/// Concurrent callers; more than the pool holds, so connections change hands.
const CALLERS: usize = 8;
/// Calls per caller: bounded, a few seconds in all.
const CALLS: usize = 150;
/// Rows per read: a reply long enough to be cut in the middle.
const ROWS: usize = 200;

#[derive(QueryableByName)]
struct Value {
    #[diesel(sql_type = BigInt)]
    v: i64,
}

/// `ROWS` rows that all carry `key`: a reply that only this call can expect.
async fn read_key(database: &Database, key: i64) -> Result<Vec<i64>, ServiceError> {
    database
        .read(|c| {
            async move {
                let rows: Vec<Value> = diesel::sql_query(format!(
                    "SELECT CAST(? AS SIGNED) AS v FROM seq_1_to_{ROWS}"
                ))
                .bind::<BigInt, _>(key)
                .load(c)
                .await?;
                Ok(rows.into_iter().map(|r| r.v).collect())
            }
            .scope_boxed()
        })
        .await
}

/// Adds `key` to the caller's counter in a transaction and reads the counter
/// back in it.
async fn add_and_read(database: &Database, caller: i64, key: i64) -> Result<i64, ServiceError> {
    database
        .transaction(|c| {
            async move {
                diesel::sql_query("UPDATE counters SET total = total + ? WHERE caller = ?")
                    .bind::<BigInt, _>(key)
                    .bind::<BigInt, _>(caller)
                    .execute(c)
                    .await?;
                let rows: Vec<Value> =
                    diesel::sql_query("SELECT total AS v FROM counters WHERE caller = ?")
                        .bind::<BigInt, _>(caller)
                        .load(c)
                        .await?;
                <[Value]>::first(&rows)
                    .map(|r| r.v)
                    .ok_or_else(|| ServiceError::internal("counter row missing"))
            }
            .scope_boxed()
        })
        .await
}

/// A database with one counter per caller, and a pool smaller than the
/// number of callers.
async fn fixture(label: &str) -> (TestDatabase, Database) {
    let db = TestDatabase::create(label).await.unwrap();
    let mut conn = db.connect().await.unwrap();
    conn.batch_execute("CREATE TABLE counters (caller BIGINT PRIMARY KEY, total BIGINT NOT NULL)")
        .await
        .unwrap();
    for caller in 0..CALLERS {
        conn.batch_execute(&format!("INSERT INTO counters VALUES ({caller}, 0)"))
            .await
            .unwrap();
    }
    let database = Database::new(&DbSettings {
        url: db.url.clone(),
        max_connections: 3,
        acquire_timeout: Duration::from_secs(20),
    });
    (db, database)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_dropped_mid_query_never_answer_another_call() {
    let (db, database) = fixture("cancel").await;

    let tasks = (0..CALLERS).map(|caller| {
        let database = database.clone();
        tokio::spawn(async move {
            let mut wrong = Vec::new();
            let (mut completed, mut cut) = (0, 0);
            for call in 0..CALLS {
                let key = (caller * 1_000_000 + call) as i64 + 1;
                // Half the calls get a deadline of 0-3 ms: cut before, during
                // or after the pool's checkout test, the query or its reply.
                let deadline = rand::rng()
                    .random_bool(0.5)
                    .then(|| Duration::from_micros(rand::rng().random_range(0..3_000)));
                let read = read_key(&database, key);
                let result = match deadline {
                    Some(d) => match tokio::time::timeout(d, read).await {
                        Ok(result) => result,
                        Err(_) => {
                            cut += 1;
                            continue;
                        }
                    },
                    None => read.await,
                };
                completed += 1;
                match result {
                    Ok(values) if values.len() == ROWS && values.iter().all(|v| *v == key) => {}
                    Ok(values) => wrong.push(format!(
                        "read {key}: {} rows, first {:?}",
                        values.len(),
                        <[i64]>::first(&values)
                    )),
                    Err(e) => wrong.push(format!("read {key}: {e}")),
                }
            }
            (wrong, completed, cut)
        })
    });
    let mut wrong = Vec::new();
    let (mut completed, mut cut) = (0, 0);
    for task in futures::future::join_all(tasks).await {
        let (w, c, x) = task.unwrap();
        wrong.extend(w);
        completed += c;
        cut += x;
    }
    println!(
        "reads: {completed} completed, {cut} cut, {} wrong",
        wrong.len()
    );
    assert!(
        wrong.is_empty(),
        "{} wrong answers: {wrong:#?}",
        wrong.len()
    );
    assert!(completed > 0 && cut > 0, "the run must mix both kinds");
    db.drop_database().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_dropped_midway_commit_whole_or_not_at_all() {
    let (db, database) = fixture("canceltx").await;

    // Each caller adds 1 per call to its own counter; a completed call must
    // see at least what completed before it, and never another caller's sum.
    let tasks = (0..CALLERS as i64).map(|caller| {
        let database = database.clone();
        tokio::spawn(async move {
            let mut wrong = Vec::new();
            let mut seen = 0;
            for _ in 0..CALLS {
                let call = add_and_read(&database, caller, 1);
                let result = if rand::rng().random_bool(0.5) {
                    let d = Duration::from_micros(rand::rng().random_range(0..3_000));
                    match tokio::time::timeout(d, call).await {
                        Ok(result) => result,
                        Err(_) => continue,
                    }
                } else {
                    call.await
                };
                match result {
                    // Cut calls may or may not have committed: the total can
                    // only have grown by at least one since the last answer.
                    Ok(total) if total > seen && total <= CALLS as i64 => seen = total,
                    Ok(total) => wrong.push(format!("caller {caller}: {total} after {seen}")),
                    Err(e) => wrong.push(format!("caller {caller}: {e}")),
                }
            }
            wrong
        })
    });
    let mut wrong = Vec::new();
    for task in futures::future::join_all(tasks).await {
        wrong.extend(task.unwrap());
    }
    assert!(
        wrong.is_empty(),
        "{} wrong answers: {wrong:#?}",
        wrong.len()
    );

    // Every connection the pool kept is in step: a plain read from each.
    for caller in 0..CALLERS as i64 {
        assert_eq!(
            read_key(&database, caller + 7).await.unwrap(),
            vec![caller + 7; ROWS]
        );
    }
    db.drop_database().await.unwrap();
}

#[tokio::test]
async fn a_session_that_died_fails_once_and_is_never_reused() {
    let (db, _) = fixture("staleconn").await;
    let (proxy, url) = db.through_proxy().await.unwrap();
    let database = Database::new(&DbSettings {
        url,
        max_connections: 1,
        acquire_timeout: Duration::from_secs(20),
    });
    assert_eq!(read_key(&database, 1).await.unwrap(), vec![1; ROWS]);

    // The pool's one session dies while it is fresh enough to skip the
    // checkout test: the next call may fail, UNAVAILABLE, and only once.
    proxy.cut().await;
    proxy.restore();
    let mut failures = 0;
    for key in 2..5 {
        match read_key(&database, key).await {
            Ok(values) => assert_eq!(values, vec![key; ROWS]),
            Err(ServiceError::Unavailable(_)) => failures += 1,
            Err(other) => panic!("read {key}: {other}"),
        }
    }
    assert!(failures <= 1, "{failures} failures after one dead session");
    drop(proxy);
    db.drop_database().await.unwrap();
}
