//! Defence in depth where balances change: every change is one relative
//! UPDATE guarded in SQL, and each ledger entry's `balance_after` is the
//! previous one plus its amount. Proved through the real server under a
//! concurrent mix of calls, and on the storage function itself with the
//! domain check bypassed (as a wrong read of the balance would bypass it).

use std::collections::{BTreeMap, HashSet};

use commerce_platform::UserId;
use commerce_proto::point::v1 as pb;
use commerce_testkit::error_reason;
use diesel::sql_types::{BigInt, Text};
use diesel_async::{AsyncMysqlConnection, RunQueryDsl};
use point_service::domain::{
    BalanceChange, ChargeAmount, DeductAmount, LedgerKind, MAX_BALANCE, reason,
};
use point_service::store::{LedgerWriteError, ledger_apply};
use tokio::task::JoinSet;
use tonic::Code;

use crate::{TestApp, charge_request, deduct_request, new_saga, refund_request, spawn};

type PointClient = pb::point_service_client::PointServiceClient<commerce_testkit::TestChannel>;

/// A small deterministic generator, so a failing run can be replayed.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

/// What one task saw applied to its user, from the answers alone.
#[derive(Debug, Default)]
struct Applied {
    /// Ledger entry id of each charge that answered OK (repeats share one).
    charges: BTreeMap<i64, i64>,
    deducted: BTreeMap<String, i64>,
    refunded: BTreeMap<String, i64>,
    /// Deductions refused for want of points.
    refused: usize,
}

/// One task's calls for `user`: charges (some repeating the previous key),
/// deductions (many refused for want of points) and refunds (of its own
/// sagas, applied or not, some twice, and of sagas that never deducted).
async fn mixed_calls(mut points: PointClient, user: String, task: u64) -> Applied {
    let mut rng = Lcg(task + 1);
    let mut applied = Applied::default();
    let mut sagas: Vec<String> = Vec::new();
    let mut last_key: Option<(String, i64)> = None;
    for i in 0..25 {
        match rng.below(10) {
            0..=2 => {
                let (key, amount) = match &last_key {
                    Some(previous) if rng.below(4) == 0 => previous.clone(),
                    _ => (format!("{user}-t{task}-c{i}"), 1 + rng.below(4_000) as i64),
                };
                let response = points
                    .charge(charge_request(&user, amount, &key))
                    .await
                    .unwrap()
                    .into_inner();
                let entry = response.entry.unwrap();
                assert_eq!(entry.amount, amount);
                assert_eq!(response.balance, entry.balance_after);
                applied.charges.insert(entry.id, amount);
                last_key = Some((key, amount));
            }
            3..=6 => {
                let saga = new_saga();
                let amount = 1 + rng.below(3_000) as i64;
                match points
                    .deduct_points(deduct_request(&saga, &user, amount))
                    .await
                {
                    Ok(response) => {
                        let response = response.into_inner();
                        assert_eq!(response.deducted, amount);
                        assert!(response.balance >= 0);
                        applied.deducted.insert(saga.clone(), amount);
                    }
                    Err(status) => {
                        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
                        assert_eq!(
                            error_reason(&status).as_deref(),
                            Some(reason::POINT_INSUFFICIENT)
                        );
                        applied.refused += 1;
                    }
                }
                sagas.push(saga);
            }
            _ => {
                // A saga of this task (maybe refunded before), or one that
                // never deducted anything.
                let saga = if sagas.is_empty() || rng.below(5) == 0 {
                    new_saga()
                } else {
                    sagas[rng.below(sagas.len() as u64) as usize].clone()
                };
                let response = points
                    .refund_points(refund_request(&saga))
                    .await
                    .unwrap()
                    .into_inner();
                let first_refund = !applied.refunded.contains_key(&saga);
                match applied.deducted.get(&saga) {
                    Some(&amount) if first_refund => {
                        assert!(response.refunded, "{response:?}");
                        assert_eq!(response.amount, amount);
                        applied.refunded.insert(saga, amount);
                    }
                    // A repeat replays the first refund.
                    Some(&amount) => {
                        assert!(response.refunded);
                        assert_eq!(response.amount, amount);
                    }
                    None => assert!(!response.refunded, "{response:?}"),
                }
            }
        }
    }
    applied
}

/// The chain straight from the table: ordered by id, each `balance_after`
/// is the previous one plus its amount, and the last one is the balance.
async fn assert_sql_chain(app: &TestApp, user: &str) -> usize {
    #[derive(diesel::QueryableByName, Debug)]
    struct Row {
        #[diesel(sql_type = BigInt)]
        amount: i64,
        #[diesel(sql_type = BigInt)]
        balance_after: i64,
    }
    let mut conn = app.db.connect().await.unwrap();
    let rows: Vec<Row> = diesel::sql_query(
        "SELECT amount, balance_after FROM point_ledger WHERE user_id = ? ORDER BY id",
    )
    .bind::<Text, _>(user)
    .load(&mut conn)
    .await
    .unwrap();
    let mut previous = 0;
    for row in &rows {
        assert_eq!(
            row.balance_after,
            previous + row.amount,
            "chain of {user} broken at {row:?}"
        );
        assert!(row.balance_after >= 0);
        previous = row.balance_after;
    }
    assert_eq!(app.sql_balance(user).await.unwrap_or(0), previous);
    rows.len()
}

#[tokio::test]
async fn concurrent_mix_of_charges_deductions_and_refunds_keeps_the_chain_exact() {
    let app = spawn().await;
    let users = ["mix-a", "mix-b", "mix-c"];
    // Two tasks per user, racing each other on the account row.
    let mut calls = JoinSet::new();
    for (task, user) in (0..6u64).zip(users.iter().cycle()) {
        let points = app.points.clone();
        let user = (*user).to_owned();
        calls.spawn(async move { (user.clone(), mixed_calls(points, user, task).await) });
    }
    let mut by_user: BTreeMap<String, Vec<Applied>> = BTreeMap::new();
    for (user, applied) in calls.join_all().await {
        by_user.entry(user).or_default().push(applied);
    }

    // The mix really mixed: some of each outcome.
    let all = || by_user.values().flatten();
    assert!(all().map(|a| a.refused).sum::<usize>() > 0, "{by_user:?}");
    assert!(
        all().map(|a| a.refunded.len()).sum::<usize>() > 0,
        "{by_user:?}"
    );
    assert!(
        all().map(|a| a.deducted.len()).sum::<usize>() > 0,
        "{by_user:?}"
    );

    for user in users {
        let applied = &by_user[user];
        let charges: BTreeMap<i64, i64> = applied
            .iter()
            .flat_map(|a| a.charges.iter().map(|(id, amount)| (*id, *amount)))
            .collect();
        let deducted: i64 = applied.iter().flat_map(|a| a.deducted.values()).sum();
        let refunded: i64 = applied.iter().flat_map(|a| a.refunded.values()).sum();
        let expected = charges.values().sum::<i64>() - deducted + refunded;
        assert_eq!(app.balance(user).await, expected, "balance of {user}");

        // Through the API (newest first, page by page) and straight from the
        // table (by id): the same exact chain.
        let ledger = app.assert_consistent(user).await;
        let entries = assert_sql_chain(&app, user).await;
        assert_eq!(entries, ledger.len());
        let count = |kind: pb::LedgerKind| ledger.iter().filter(|e| e.kind() == kind).count();
        assert_eq!(count(pb::LedgerKind::Charge), charges.len());
        assert_eq!(
            count(pb::LedgerKind::Use),
            applied.iter().map(|a| a.deducted.len()).sum::<usize>()
        );
        assert_eq!(
            count(pb::LedgerKind::Refund),
            applied.iter().map(|a| a.refunded.len()).sum::<usize>()
        );
        // Every answered deduction's balance is the one its entry recorded.
        let used: HashSet<String> = ledger
            .iter()
            .filter(|e| e.kind() == pb::LedgerKind::Use)
            .map(|e| e.reference.clone())
            .collect();
        let answered: HashSet<String> = applied
            .iter()
            .flat_map(|a| a.deducted.keys().cloned())
            .collect();
        assert_eq!(used, answered);
    }
    app.finish().await;
}

fn user(raw: &str) -> UserId {
    UserId::parse("user_id", raw).unwrap()
}

fn deduct(amount: i64) -> BalanceChange {
    BalanceChange::deduct(DeductAmount::parse("amount", amount).unwrap())
}

fn refused_reason(result: Result<impl std::fmt::Debug, LedgerWriteError>) -> String {
    match result {
        Err(LedgerWriteError::Failed(error)) => error.reason(),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Rows of `point_ledger` and `point_accounts`.
async fn row_counts(app: &TestApp) -> (i64, i64) {
    (
        app.sql_count("point_ledger").await,
        app.sql_count("point_accounts").await,
    )
}

async fn connect(app: &TestApp) -> AsyncMysqlConnection {
    app.db.connect().await.unwrap()
}

/// The store's write, called with the domain's check bypassed, as if the
/// balance it was decided on had been read wrong: too high, it refuses with
/// the domain's reason and writes nothing; too low, it writes the exact
/// amount and the exact `balance_after` regardless. The calls run outside
/// any transaction, so a write before the refusal would stay visible.
#[tokio::test]
async fn the_sql_guard_refuses_what_a_wrong_read_would_allow_and_writes_nothing() {
    let app = spawn().await;
    app.charge("alice", 1_000, "top-up").await;
    let alice = user("alice");
    let mut conn = connect(&app).await;
    let before = row_counts(&app).await;

    // Read as 5,000 (say): the domain would allow 3,000; the guard does not.
    let stale = point_service::domain::Balance::from_stored(5_000).unwrap();
    assert!(stale.apply(deduct(3_000)).is_ok());
    let refused = ledger_apply(&mut conn, &alice, deduct(3_000), &new_saga()).await;
    assert_eq!(refused_reason(refused), reason::POINT_INSUFFICIENT);
    // One more than the balance: still refused; exactly the balance is not.
    let refused = ledger_apply(&mut conn, &alice, deduct(1_001), &new_saga()).await;
    assert_eq!(refused_reason(refused), reason::POINT_INSUFFICIENT);
    assert_eq!(row_counts(&app).await, before);
    assert_eq!(app.sql_balance("alice").await, Some(1_000));

    // A user never seen: refused, and no account is created.
    let refused = ledger_apply(&mut conn, &user("nobody"), deduct(1), &new_saga()).await;
    assert_eq!(refused_reason(refused), reason::POINT_INSUFFICIENT);
    assert_eq!(row_counts(&app).await, before);
    assert_eq!(app.sql_balance("nobody").await, None);

    // Read as 100 (too low): 50 is taken from the real 1,000, and the
    // entry says 950, not 50.
    let saga = new_saga();
    let entry = ledger_apply(&mut conn, &alice, deduct(50), &saga)
        .await
        .unwrap();
    assert_eq!(
        (entry.kind, entry.amount, entry.balance_after),
        (LedgerKind::Use, -50, 950)
    );
    // Exactly the balance is allowed, down to zero.
    let entry = ledger_apply(&mut conn, &alice, deduct(950), &new_saga())
        .await
        .unwrap();
    assert_eq!(entry.balance_after, 0);
    assert_eq!(app.balance("alice").await, 0);
    app.assert_consistent("alice").await;
    assert_sql_chain(&app, "alice").await;
    app.finish().await;
}

/// The upper bound: a charge that would take the balance above the limit is
/// refused by the guard even when the domain check is bypassed; a refund
/// (which may pass the limit) is not.
#[tokio::test]
async fn the_sql_guard_keeps_charges_under_the_balance_limit() {
    let app = spawn().await;
    app.charge("bob", 1, "open").await;
    let bob = user("bob");
    let mut conn = connect(&app).await;
    // Up to 5 short of the limit, through the storage function itself.
    let refund = BalanceChange::refund(MAX_BALANCE - 6).unwrap();
    let entry = ledger_apply(&mut conn, &bob, refund, "setup")
        .await
        .unwrap();
    assert_eq!(entry.balance_after, MAX_BALANCE - 5);
    let before = row_counts(&app).await;

    let charge = |amount| BalanceChange::charge(ChargeAmount::parse("amount", amount).unwrap());
    let refused = ledger_apply(&mut conn, &bob, charge(6), "too-much").await;
    assert_eq!(refused_reason(refused), reason::POINT_BALANCE_LIMIT);
    assert_eq!(row_counts(&app).await, before);
    assert_eq!(app.sql_balance("bob").await, Some(MAX_BALANCE - 5));
    // The same through the server: the domain refuses first.
    let status = app
        .points
        .clone()
        .charge(charge_request("bob", 6, "too-much"))
        .await
        .unwrap_err();
    assert_eq!(
        error_reason(&status).as_deref(),
        Some(reason::POINT_BALANCE_LIMIT)
    );

    // Exactly up to the limit is allowed; a refund may go beyond it.
    let entry = ledger_apply(&mut conn, &bob, charge(5), "fill")
        .await
        .unwrap();
    assert_eq!(entry.balance_after, MAX_BALANCE);
    let refund = BalanceChange::refund(7).unwrap();
    let entry = ledger_apply(&mut conn, &bob, refund, "beyond")
        .await
        .unwrap();
    assert_eq!(entry.balance_after, MAX_BALANCE + 7);
    app.assert_consistent("bob").await;
    assert_sql_chain(&app, "bob").await;
    app.finish().await;
}
