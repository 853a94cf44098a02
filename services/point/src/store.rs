//! Storage of accounts and the ledger: the schema, its row models and
//! [`PointStore`], the narrow interface the handlers use. Every write is one
//! transaction that locks the account row, writes the ledger entry and the new
//! balance together, so the balance always equals the sum of the ledger.
//!
//! Defence in depth: the domain decides a change from the balance read under
//! the row lock, but the store never writes a balance computed from that
//! read. It applies the change relatively (`balance = balance + ?`), guarded
//! in the `WHERE` clause by the bounds the domain checks, checks the matched
//! row, and writes into the ledger the balance read back after the update
//! (see [`ledger_apply`]). A wrong read can make a call refuse, never write a
//! wrong amount, and each entry's `balance_after` is the previous one plus
//! its amount.

use chrono::NaiveDateTime;
use commerce_platform::barrier::{self, SagaPair};
use commerce_platform::db::{PreparedExt, ScopedFutureExt, is_unique_violation, last_insert_id};
use commerce_platform::paging::PageRequest;
use commerce_platform::{Database, SagaCall, SagaId, ServiceError, UserId};
use diesel::prelude::*;
use diesel_async::{AsyncMysqlConnection, RunQueryDsl};

use crate::domain::{
    Balance, BalanceChange, ChargeAmount, ChargeOutcome, DeductAmount, DeductOutcome,
    IdempotencyKey, LedgerEntry, LedgerKind, RefundOutcome,
};

/// The saga step of this service and its compensation. Persisted in the
/// barrier: never rename.
pub const DEDUCT_POINTS: SagaPair = SagaPair {
    action: "deduct_points",
    compensation: "refund_points",
};

mod schema {
    diesel::table! {
        point_accounts (user_id) {
            user_id -> Varchar,
            balance -> BigInt,
            created_at -> Datetime,
            updated_at -> Datetime,
        }
    }

    diesel::table! {
        point_ledger (id) {
            id -> BigInt,
            user_id -> Varchar,
            kind -> Varchar,
            amount -> BigInt,
            balance_after -> BigInt,
            reference -> Varchar,
            created_at -> Datetime,
        }
    }
}

use schema::{point_accounts, point_ledger};

/// A stored ledger entry.
#[derive(Debug, Queryable, Selectable)]
#[diesel(table_name = point_ledger, check_for_backend(diesel::mysql::Mysql))]
struct LedgerRow {
    id: i64,
    user_id: String,
    kind: String,
    amount: i64,
    balance_after: i64,
    reference: String,
    created_at: NaiveDateTime,
}

impl TryFrom<LedgerRow> for LedgerEntry {
    type Error = ServiceError;

    fn try_from(row: LedgerRow) -> Result<Self, ServiceError> {
        Ok(Self {
            id: row.id,
            user_id: row.user_id,
            kind: LedgerKind::from_stored(&row.kind)?,
            amount: row.amount,
            balance_after: row.balance_after,
            reference: row.reference,
            created_at: row.created_at,
        })
    }
}

/// A page of a user's ledger, newest first, and the user's entry count.
#[derive(Debug)]
pub struct LedgerPage {
    pub entries: Vec<LedgerEntry>,
    pub total: i64,
}

/// Accounts and ledger of the `commerce_point` database.
#[derive(Debug, Clone)]
pub struct PointStore {
    db: Database,
}

impl PointStore {
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    /// The balance of a user; 0 (and nothing created) for a user never seen.
    #[tracing::instrument(skip_all, fields(user_id = %user))]
    pub async fn balance_get(&self, user: &UserId) -> Result<Balance, ServiceError> {
        let stored = self
            .db
            .read(|c| {
                async move {
                    Ok(point_accounts::table
                        .find(user.as_str())
                        .select(point_accounts::balance)
                        .first::<i64>(c)
                        .await
                        .optional()?)
                }
                .scope_boxed()
            })
            .await?;
        stored.map_or(Ok(Balance::ZERO), Balance::from_stored)
    }

    /// One page of a user's ledger, newest first.
    #[tracing::instrument(skip_all, fields(user_id = %user))]
    pub async fn ledger_list(
        &self,
        user: &UserId,
        page: PageRequest,
    ) -> Result<LedgerPage, ServiceError> {
        let (total, rows) = self
            .db
            .read(|c| {
                async move {
                    // Page first, count second: the ledger only grows, so
                    // the total can never be less than what the page shows
                    // (counting first, a charge landing in between could).
                    let rows = point_ledger::table
                        .filter(point_ledger::user_id.eq(user.as_str()))
                        .order(point_ledger::id.desc())
                        .limit(page.limit())
                        .offset(page.offset())
                        .select(LedgerRow::as_select())
                        .load(c)
                        .await?;
                    let total = point_ledger::table
                        .filter(point_ledger::user_id.eq(user.as_str()))
                        .count()
                        .get_result::<i64>(c)
                        .await?;
                    Ok((total, rows))
                }
                .scope_boxed()
            })
            .await?;
        let entries = rows
            .into_iter()
            .map(LedgerEntry::try_from)
            .collect::<Result<_, _>>()?;
        Ok(LedgerPage { entries, total })
    }

    /// Charges `amount` under the client's key. A user's charges serialise on
    /// the account row, so a repeated key finds and replays the first charge.
    /// The key's unique index is the backstop: should an insert still collide,
    /// the whole transaction runs again and then finds the winner's entry.
    #[tracing::instrument(skip_all, fields(user_id = %user, amount = amount.get()))]
    pub async fn points_charge(
        &self,
        user: &UserId,
        amount: ChargeAmount,
        key: &IdempotencyKey,
    ) -> Result<ChargeOutcome, ServiceError> {
        self.db
            .transaction(|c| {
                async move {
                    let balance = account_lock_or_create(c, user).await?;
                    if let Some(first) =
                        ledger_find(c, user, LedgerKind::Charge, key.as_str()).await?
                    {
                        return ChargeOutcome::replay(first, amount);
                    }
                    let change = BalanceChange::charge(amount);
                    let expected = balance.apply(change)?;
                    let applied =
                        ledger_apply(c, user, change, key.as_str())
                            .await
                            .map_err(|e| match e {
                                LedgerWriteError::Duplicate => ServiceError::Conflict(format!(
                                    "concurrent charge with key {key:?}; reading it again"
                                )),
                                LedgerWriteError::Failed(e) => e,
                            })?;
                    check_read(user, expected, &applied);
                    let entry = applied.entry(c, user, key.as_str()).await?;
                    Ok(ChargeOutcome {
                        balance: entry.balance_after,
                        entry,
                    })
                }
                .scope_boxed()
            })
            .await
    }

    /// The saga action: takes `amount` points from `user` once per saga.
    #[tracing::instrument(skip_all, fields(saga_id = %call, user_id = %user, amount = amount.get()))]
    pub async fn points_deduct(
        &self,
        call: &SagaCall,
        user: &UserId,
        amount: DeductAmount,
    ) -> Result<DeductOutcome, ServiceError> {
        self.db
            .transaction(|c| {
                async move {
                    let saga = &call.saga;
                    barrier::run_action(
                        c,
                        call,
                        DEDUCT_POINTS.action,
                        async |c: &mut AsyncMysqlConnection| {
                            // No read first: the guarded update is the
                            // check (an account never seen matches nothing
                            // and is refused, and nothing is created).
                            let change = BalanceChange::deduct(amount);
                            let entry = ledger_apply(c, user, change, saga.as_str())
                                .await
                                .map_err(LedgerWriteError::into_internal)?;
                            Ok(DeductOutcome {
                                saga_id: saga.to_string(),
                                user_id: user.to_string(),
                                deducted: amount.get(),
                                balance: entry.balance_after,
                            })
                        },
                    )
                    .await
                }
                .scope_boxed()
            })
            .await
    }

    /// The compensation: gives back exactly what the saga deducted, once; a
    /// no-op (that blocks a late deduction) when it deducted nothing.
    #[tracing::instrument(skip_all, fields(saga_id = %call))]
    pub async fn points_refund(&self, call: &SagaCall) -> Result<RefundOutcome, ServiceError> {
        let saga = &call.saga;
        self.db
            .transaction(|c| {
                async move {
                    barrier::run_compensation(
                        c,
                        call,
                        DEDUCT_POINTS,
                        || RefundOutcome::nothing(saga.as_str()),
                        async |c: &mut AsyncMysqlConnection| refund_use(c, saga).await,
                    )
                    .await
                }
                .scope_boxed()
            })
            .await
    }
}

/// Undoes the saga's USE entry, which the barrier says was committed.
async fn refund_use(
    c: &mut AsyncMysqlConnection,
    saga: &SagaId,
) -> Result<RefundOutcome, ServiceError> {
    let used = point_ledger::table
        .filter(point_ledger::reference.eq(saga.as_str()))
        .filter(point_ledger::kind.eq(LedgerKind::Use.as_str()))
        .select(LedgerRow::as_select())
        .first(c)
        .await
        .optional()?
        .ok_or_else(|| {
            ServiceError::internal(format!(
                "saga {saga} deducted points but its USE entry is missing"
            ))
        })?;
    let user = UserId::parse("point_ledger.user_id", &used.user_id)
        .map_err(|e| ServiceError::internal(e.to_string()))?;
    let change = BalanceChange::refund(-used.amount)?;
    let balance = account_lock(c, &user).await?.ok_or_else(|| {
        ServiceError::internal(format!("account of {user} vanished before refunding"))
    })?;
    let expected = balance.apply(change)?;
    let entry = ledger_apply(c, &user, change, saga.as_str())
        .await
        .map_err(LedgerWriteError::into_internal)?;
    check_read(&user, expected, &entry);
    Ok(RefundOutcome {
        saga_id: saga.to_string(),
        refunded: true,
        user_id: user.to_string(),
        amount: change.amount(),
        balance: entry.balance_after,
    })
}

/// The account's balance, its row locked until the transaction ends; `None`
/// for a user never seen (nothing is locked then).
async fn account_lock(
    c: &mut AsyncMysqlConnection,
    user: &UserId,
) -> Result<Option<Balance>, ServiceError> {
    point_accounts::table
        .find(user.as_str())
        .select(point_accounts::balance)
        .for_update()
        .first::<i64>(c)
        .await
        .optional()?
        .map(Balance::from_stored)
        .transpose()
}

/// Creates the account when it is new, then locks it. `ON DUPLICATE KEY
/// UPDATE` takes an exclusive lock on an existing row at once (a plain or
/// `IGNORE` insert would take a shared one, and two of those upgrading to
/// exclusive deadlock).
async fn account_lock_or_create(
    c: &mut AsyncMysqlConnection,
    user: &UserId,
) -> Result<Balance, ServiceError> {
    let now = commerce_platform::time::now();
    diesel::insert_into(point_accounts::table)
        .values((
            point_accounts::user_id.eq(user.as_str()),
            point_accounts::balance.eq(0),
            point_accounts::created_at.eq(now),
            point_accounts::updated_at.eq(now),
        ))
        .on_conflict(diesel::dsl::DuplicatedKeys)
        .do_update()
        .set(point_accounts::user_id.eq(point_accounts::user_id))
        .execute(c)
        .await?;
    account_lock(c, user)
        .await?
        .ok_or_else(|| ServiceError::internal(format!("account of {user} missing after upsert")))
}

async fn ledger_find(
    c: &mut AsyncMysqlConnection,
    user: &UserId,
    kind: LedgerKind,
    reference: &str,
) -> Result<Option<LedgerEntry>, ServiceError> {
    point_ledger::table
        .filter(point_ledger::user_id.eq(user.as_str()))
        .filter(point_ledger::kind.eq(kind.as_str()))
        .filter(point_ledger::reference.eq(reference))
        .select(LedgerRow::as_select())
        .first(c)
        .await
        .optional()?
        .map(LedgerEntry::try_from)
        .transpose()
}

/// Why writing a ledger entry failed.
#[derive(Debug)]
pub enum LedgerWriteError {
    /// The (user, kind, reference) entry exists already.
    Duplicate,
    /// Refused (the change's business refusal when its guard matched no
    /// row) or failed.
    Failed(ServiceError),
}

impl LedgerWriteError {
    /// For writes the barrier already made unique: a duplicate is a bug.
    pub fn into_internal(self) -> ServiceError {
        match self {
            Self::Duplicate => ServiceError::internal("duplicate saga ledger entry"),
            Self::Failed(e) => e,
        }
    }
}

impl From<ServiceError> for LedgerWriteError {
    fn from(e: ServiceError) -> Self {
        Self::Failed(e)
    }
}

/// Applies `change` to the user's balance and appends its ledger entry, in
/// the caller's transaction (the callers lock the account row first and
/// check the change with the domain; this is the backstop that holds even
/// if that read was wrong):
///
/// 1. `UPDATE point_accounts SET balance = balance + :amount WHERE user_id =
///    :user AND balance BETWEEN :min_before AND :max_before`, the bounds of
///    [`BalanceChange`]; no matched row is the change's refusal
///    ([`BalanceChange::refusal`], e.g. `POINT_INSUFFICIENT`), and nothing
///    is written.
/// 2. The balance read back under the row lock (which the update holds to
///    the end of the transaction): the exact `balance_after`.
/// 3. The ledger entry with that `balance_after` (its id is not read back:
///    only a charge answers with it, see [`Applied::entry`]).
///
/// Public so that tests can call it with the domain check bypassed.
pub async fn ledger_apply(
    c: &mut AsyncMysqlConnection,
    user: &UserId,
    change: BalanceChange,
    reference: &str,
) -> Result<Applied, LedgerWriteError> {
    let now = commerce_platform::time::now();
    // diesel-async on MySQL counts matched rows; the guard is in WHERE, so
    // a match is exactly an applied change.
    let matched = diesel::update(
        point_accounts::table
            .find(user.as_str())
            .filter(point_accounts::balance.ge(change.min_before()))
            .filter(point_accounts::balance.le(change.max_before())),
    )
    .set((
        point_accounts::balance.eq(point_accounts::balance + change.amount()),
        point_accounts::updated_at.eq(now),
    ))
    .prepared()
    .execute(c)
    .await
    .map_err(ServiceError::from)?;
    let after = account_lock(c, user).await?;
    let after = match (matched, after) {
        (1, Some(after)) => after,
        // Refused: explain it from the balance as it is now.
        (0, current) => return Err(change.refusal(current.unwrap_or(Balance::ZERO)).into()),
        (matched, after) => {
            return Err(ServiceError::internal(format!(
                "balance update of {user} matched {matched} rows, then read {after:?}"
            ))
            .into());
        }
    };
    let inserted = diesel::insert_into(point_ledger::table)
        .values((
            point_ledger::user_id.eq(user.as_str()),
            point_ledger::kind.eq(change.kind().as_str()),
            point_ledger::amount.eq(change.amount()),
            point_ledger::balance_after.eq(after.get()),
            point_ledger::reference.eq(reference),
            point_ledger::created_at.eq(now),
        ))
        .execute(c)
        .await;
    match inserted {
        Ok(_) => {}
        Err(e) if is_unique_violation(&e) => return Err(LedgerWriteError::Duplicate),
        Err(e) => return Err(LedgerWriteError::Failed(e.into())),
    }
    Ok(Applied {
        kind: change.kind(),
        amount: change.amount(),
        balance_after: after.get(),
        created_at: now,
    })
}

/// A change [`ledger_apply`] made: its ledger entry without the entry's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    pub kind: LedgerKind,
    /// Signed, as in the ledger.
    pub amount: i64,
    pub balance_after: i64,
    pub created_at: NaiveDateTime,
}

impl Applied {
    /// The whole entry, its id read from the session (`LAST_INSERT_ID()`,
    /// one more round trip: the saga steps, which answer without it, skip
    /// it).
    async fn entry(
        self,
        c: &mut AsyncMysqlConnection,
        user: &UserId,
        reference: &str,
    ) -> Result<LedgerEntry, ServiceError> {
        Ok(LedgerEntry {
            id: last_insert_id(c).await?,
            user_id: user.to_string(),
            kind: self.kind,
            amount: self.amount,
            balance_after: self.balance_after,
            reference: reference.to_owned(),
            created_at: self.created_at,
        })
    }
}

/// The balance written is the one read back; it differs from what the domain
/// computed only if the balance read before the change was wrong, which the
/// row lock rules out. Worth a loud line, not a refusal: what was written is
/// exact either way.
fn check_read(user: &UserId, expected: Balance, entry: &Applied) {
    if entry.balance_after != expected.get() {
        tracing::error!(
            user_id = %user,
            expected = expected.get(),
            balance_after = entry.balance_after,
            "balance read under the row lock disagreed with the balance after the change"
        );
    }
}
