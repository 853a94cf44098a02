//! The MySQL connection pool, cancel-safe access to it, and the helpers
//! every store shares (unique-key violations, insert ids).
//!
//! Sessions run in UTC and at READ COMMITTED: every invariant of the services
//! is kept by row locks (`SELECT ... FOR UPDATE`) and unique keys, so the gap
//! locks of REPEATABLE READ would only add deadlocks.
//!
//! # Cancellation
//!
//! Any future may be dropped at any `.await`: a gRPC deadline, the server's
//! timeout layer, a client that went away. The MySQL protocol is a strict
//! request/reply exchange, so a query dropped after it was sent leaves its
//! reply (or the rest of a result set) unread on the socket; a connection
//! given back to the pool in that state answers the *next* request with the
//! previous one's reply. bb8 makes its own bookkeeping cancel-safe but gives
//! such a connection back as healthy, and so does its own checkout test
//! (`SELECT 1`, run inside the acquire timeout).
//!
//! The rule here: every use of a connection goes through [`Session::run`],
//! which marks the session *in use* before the first byte is sent and clears
//! the mark only when the operation has run to its end. A session still
//! marked when it returns to the pool was interrupted, and the pool closes it
//! instead of reusing it ([`SessionManager::has_broken`]). Nothing outside
//! this module can reach a raw pooled connection.
//!
//! We chose this over running each operation on a task of its own (which
//! would let it finish whatever happens to the caller) because it keeps the
//! stores' code borrowing, not `'static`, and because a cancelled request then
//! stops holding a pooled connection at once instead of finishing work nobody
//! waits for. Its cost is a new connection after each interrupted operation;
//! an interrupted transaction is rolled back by the server when the socket
//! closes, and an interrupted commit is either done or not, which the saga
//! barrier and idempotency keys already make harmless to repeat.

use std::time::{Duration, Instant};

use diesel::mysql::Mysql;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::result::{DatabaseErrorKind, Error as DieselError, QueryResult};
use diesel_async::pooled_connection::PoolableConnection;
use diesel_async::{
    AnsiTransactionManager, AsyncConnection, AsyncMysqlConnection, RunQueryDsl,
    SimpleAsyncConnection, TransactionManager,
};
use rand::Rng;
use scoped_futures::ScopedBoxFuture;
pub use scoped_futures::ScopedFutureExt;
use tracing::Instrument as _;

use crate::error::ServiceError;

/// How many times a transaction that lost a deadlock is run again.
const CONFLICT_ATTEMPTS: u32 = 5;

/// A session whose server answered this recently is handed out without the
/// checkout test: under load every checkout would otherwise cost a round
/// trip (`SELECT 1`) for a connection that just worked. One that died in
/// that second (a restart, a cut) fails its next operation UNAVAILABLE, is
/// closed by the pool (see [`Session::run`]), and the caller retries; an
/// idle session is still tested before it is reused.
const FRESH: Duration = Duration::from_secs(1);

/// Settings of the pool.
#[derive(Debug, Clone)]
pub struct DbSettings {
    pub url: String,
    pub max_connections: u32,
    /// How long a request waits for a connection before failing UNAVAILABLE.
    pub acquire_timeout: Duration,
}

/// The body of a transaction or a read: borrows the connection for `'c` and
/// whatever the caller captured for `'a` (which outlives `'c`). Build one
/// with `|c| async move { ... }.scope_boxed()` ([`ScopedFutureExt`]).
pub type Work<'a, 'c, T> = ScopedBoxFuture<'a, 'c, Result<T, ServiceError>>;

/// One MySQL session of the pool, and whether an operation on it began and
/// never reached its end (see the module comment).
pub struct Session {
    conn: AsyncMysqlConnection,
    interrupted: bool,
    /// When the server last answered on this session.
    answered_at: Instant,
}

impl Session {
    /// Runs `op` on the connection. If this future is dropped before `op`
    /// ends, or `op` fails for a reason that leaves the protocol state
    /// unknown, the session stays marked and the pool will close it.
    pub async fn run<'a, 'c, T>(
        &'c mut self,
        op: impl FnOnce(&'c mut AsyncMysqlConnection) -> Work<'a, 'c, T>,
    ) -> Result<T, ServiceError>
    where
        'a: 'c,
    {
        self.interrupted = true;
        // Split the borrow: `op` holds `conn` for 'c while the flag is
        // cleared after it.
        let Session {
            conn,
            interrupted,
            answered_at,
        } = self;
        let result = op(conn).await;
        *interrupted = matches!(result, Err(ServiceError::Unavailable(_)));
        if !*interrupted {
            *answered_at = Instant::now();
        }
        result
    }
}

/// The bb8 manager of [`Session`]s: connects with [`establish`], tests a
/// session idle for more than [`FRESH`] on checkout through [`Session::run`]
/// (so an interrupted test is itself caught), and refuses interrupted
/// sessions back into the pool.
pub struct SessionManager {
    url: String,
}

impl bb8::ManageConnection for SessionManager {
    type Connection = Session;
    type Error = ServiceError;

    async fn connect(&self) -> Result<Session, ServiceError> {
        let conn = establish(&self.url)
            .await
            .map_err(|e| ServiceError::Unavailable(format!("database connection: {e}")))?;
        Ok(Session {
            conn,
            interrupted: false,
            answered_at: Instant::now(),
        })
    }

    async fn is_valid(&self, session: &mut Session) -> Result<(), ServiceError> {
        if session.answered_at.elapsed() < FRESH {
            return Ok(());
        }
        session.run(|c| select_one(c).scope_boxed()).await
    }

    fn has_broken(&self, session: &mut Session) -> bool {
        // `is_broken` also catches a transaction left open or failed.
        session.interrupted || session.conn.is_broken()
    }
}

/// A cheaply cloneable handle to the service's database.
#[derive(Clone)]
pub struct Database {
    pool: bb8::Pool<SessionManager>,
    /// The pool's bound, for its metrics (bb8 does not tell it).
    max_connections: u32,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database")
            .field("state", &self.pool.state())
            .finish()
    }
}

impl Database {
    /// Builds the pool without connecting: connections are made on demand, so
    /// a database that is down at start or later gives UNAVAILABLE errors and
    /// the service recovers by itself when it returns.
    pub fn new(settings: &DbSettings) -> Self {
        let manager = SessionManager {
            url: settings.url.clone(),
        };
        let pool = bb8::Pool::builder()
            .max_size(settings.max_connections)
            .min_idle(Some(0))
            .connection_timeout(settings.acquire_timeout)
            .retry_connection(false)
            .build_unchecked(manager);
        Self {
            pool,
            max_connections: settings.max_connections,
        }
    }

    /// Borrows a session, or fails UNAVAILABLE within the acquire timeout.
    async fn session(&self) -> Result<bb8::PooledConnection<'_, SessionManager>, ServiceError> {
        let asked = Instant::now();
        let session = self.pool.get().await;
        metrics::histogram!(crate::metrics::DB_POOL_WAIT).record(asked.elapsed());
        session.map_err(|e| match e {
            bb8::RunError::User(e) => e,
            bb8::RunError::TimedOut => {
                ServiceError::Unavailable("database connection: timed out".to_owned())
            }
        })
    }

    /// Sets the pool's gauges and counters (`commerce_db_pool_*`) from its
    /// state: read when metrics are scraped, so nothing is counted per
    /// connection handed out but the wait.
    pub fn record_pool_metrics(&self) {
        use crate::metrics::{
            DB_POOL_ACQUIRES, DB_POOL_CLOSED, DB_POOL_CONNECTIONS, DB_POOL_MAX, DB_POOL_WAITING,
        };
        let state = self.pool.state();
        let stats = &state.statistics;
        let in_use = state.connections.saturating_sub(state.idle_connections);
        metrics::gauge!(DB_POOL_CONNECTIONS, "state" => "in_use").set(in_use);
        metrics::gauge!(DB_POOL_CONNECTIONS, "state" => "idle").set(state.idle_connections);
        metrics::gauge!(DB_POOL_MAX).set(self.max_connections);
        let done = stats.get_direct + stats.get_waited + stats.get_timed_out;
        metrics::gauge!(DB_POOL_WAITING).set(stats.get_started.saturating_sub(done) as f64);
        for (result, total) in [
            ("direct", stats.get_direct),
            ("waited", stats.get_waited),
            ("timed_out", stats.get_timed_out),
        ] {
            metrics::counter!(DB_POOL_ACQUIRES, "result" => result).absolute(total);
        }
        for (reason, total) in [
            ("broken", stats.connections_closed_broken),
            ("invalid", stats.connections_closed_invalid),
        ] {
            metrics::counter!(DB_POOL_CLOSED, "reason" => reason).absolute(total);
        }
    }

    /// Runs `op` outside a transaction (a read, or one statement that needs
    /// no other), cancel-safely.
    pub async fn read<'a, T>(
        &self,
        op: impl for<'c> FnOnce(&'c mut AsyncMysqlConnection) -> Work<'a, 'c, T>,
    ) -> Result<T, ServiceError> {
        async {
            let mut session = self.session().await?;
            session.run(op).await
        }
        .instrument(db_span("read"))
        .await
    }

    /// Runs `body` in one transaction, cancel-safely, and runs it again (on a
    /// fresh transaction) when it lost a deadlock or a lock wait, so lock
    /// races never surface to callers. Other errors roll back and return.
    pub async fn transaction<'a, T: Send + 'a>(
        &self,
        mut body: impl for<'c> FnMut(&'c mut AsyncMysqlConnection) -> Work<'a, 'c, T> + Send + 'a,
    ) -> Result<T, ServiceError> {
        async {
            let mut attempt = 1;
            loop {
                let mut session = self.session().await?;
                let body = &mut body;
                let result = session.run(|c| in_transaction(c, body).scope_boxed()).await;
                drop(session);
                match result {
                    Err(ServiceError::Conflict(cause)) if attempt < CONFLICT_ATTEMPTS => {
                        tracing::debug!(%cause, attempt, "transaction conflict, running it again");
                        let jitter = rand::rng().random_range(0..5u64 << attempt);
                        tokio::time::sleep(Duration::from_millis(jitter)).await;
                        attempt += 1;
                    }
                    other => return other,
                }
            }
        }
        .instrument(db_span("transaction"))
        .await
    }

    /// True when a connection can be borrowed and answers a query.
    pub async fn ping(&self) -> bool {
        self.read(|c| select_one(c).scope_boxed()).await.is_ok()
    }
}

/// The span of one database operation (its wait for a connection, its
/// statements, a conflict's reruns), so a request's trace shows its
/// database time; none outside a span (background jobs, probes), which
/// would each be a trace of their own.
fn db_span(operation: &'static str) -> tracing::Span {
    if tracing::Span::current().is_none() {
        return tracing::Span::none();
    }
    tracing::info_span!(
        "db",
        otel.name = operation,
        otel.kind = "client",
        db.system.name = "mysql",
        db.operation.name = operation,
    )
}

/// `body` between BEGIN and COMMIT, or ROLLBACK when it fails (what
/// diesel-async's `transaction` does, without its closure bounds).
async fn in_transaction<'a, T>(
    conn: &mut AsyncMysqlConnection,
    body: &mut (impl for<'c> FnMut(&'c mut AsyncMysqlConnection) -> Work<'a, 'c, T> + Send),
) -> Result<T, ServiceError> {
    type Ansi = AnsiTransactionManager;
    Ansi::begin_transaction(conn).await?;
    match body(&mut *conn).await {
        Ok(value) => {
            Ansi::commit_transaction(conn).await?;
            Ok(value)
        }
        Err(error) => match Ansi::rollback_transaction(conn).await {
            Ok(()) | Err(DieselError::BrokenTransactionManager) => Err(error),
            Err(rollback) => Err(rollback.into()),
        },
    }
}

async fn select_one(conn: &mut AsyncMysqlConnection) -> Result<(), ServiceError> {
    diesel::sql_query("SELECT 1")
        .execute(conn)
        .await
        .map(drop)
        .map_err(ServiceError::from)
}

/// Opens one session, in UTC and at READ COMMITTED.
async fn establish(url: &str) -> diesel::ConnectionResult<AsyncMysqlConnection> {
    let mut conn = AsyncMysqlConnection::establish(url).await?;
    for statement in [
        "SET time_zone = '+00:00'",
        "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
    ] {
        conn.batch_execute(statement)
            .await
            .map_err(diesel::ConnectionError::CouldntSetupConfiguration)?;
    }
    Ok(conn)
}

/// A statement run as a prepared statement cached on its connection, keyed
/// by its SQL text and bind types.
///
/// diesel marks every `UPDATE` (and every insert that may write `DEFAULT`)
/// unsafe to cache, so diesel-async prepares, executes and closes it at each
/// call: three round trips where one would do. That marking protects caches
/// keyed by the statement's Rust type, whose SQL may vary with the values
/// (an optional column in a changeset); this wrapper has no static type key,
/// so the cache is keyed by the SQL actually built, and each shape of the
/// statement is prepared once per connection. For hot-path statements of a
/// fixed shape, never for `IN` lists of varying length (each length would be
/// another cached statement).
#[derive(Debug, Clone, Copy)]
pub struct Prepared<Q>(Q);

/// `.prepared()` on any statement: see [`Prepared`].
pub trait PreparedExt: Sized {
    fn prepared(self) -> Prepared<Self> {
        Prepared(self)
    }
}

impl<Q> PreparedExt for Q {}

impl<Q> QueryId for Prepared<Q> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<Q: QueryFragment<Mysql>> QueryFragment<Mysql> for Prepared<Q> {
    fn walk_ast<'b>(&'b self, pass: AstPass<'_, 'b, Mysql>) -> QueryResult<()> {
        self.0.walk_ast(pass)
    }

    fn is_safe_to_cache_prepared(&self, _: &Mysql) -> QueryResult<bool> {
        Ok(true)
    }
}

impl<Q: Query> Query for Prepared<Q> {
    type SqlType = Q::SqlType;
}

/// `items` padded to the next power of two by repeating the last one, for
/// an `IN` list or a multi-row statement whose repeats change nothing: a
/// handful of statement shapes then serve every size, each kept prepared
/// with [`Prepared`].
pub fn padded<T: Clone>(mut items: Vec<T>) -> Vec<T> {
    if let Some(last) = items.last().cloned() {
        items.resize(items.len().next_power_of_two(), last);
    }
    items
}

/// True when the error is a violation of a unique key.
pub fn is_unique_violation(error: &DieselError) -> bool {
    matches!(
        error,
        DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _)
    )
}

/// `LAST_INSERT_ID()` of the session, for tables with auto-increment keys
/// (MariaDB offers no `RETURNING` through diesel).
pub async fn last_insert_id(conn: &mut AsyncMysqlConnection) -> Result<i64, ServiceError> {
    diesel::select(last_insert_id_sql())
        .get_result::<u64>(conn)
        .await
        .map_err(ServiceError::from)
        .and_then(|id| {
            i64::try_from(id).map_err(|_| ServiceError::internal("insert id out of range"))
        })
}

diesel::define_sql_function! {
    #[sql_name = "LAST_INSERT_ID"]
    fn last_insert_id_sql() -> diesel::sql_types::Unsigned<diesel::sql_types::BigInt>;
}

#[cfg(test)]
mod padding_tests {
    use super::padded;

    #[test]
    fn padded_keeps_every_item_and_rounds_up_to_a_power_of_two() {
        assert!(padded(Vec::<i64>::new()).is_empty());
        assert_eq!(padded(vec![7]), vec![7]);
        assert_eq!(padded(vec![1, 2, 3]), vec![1, 2, 3, 3]);
        assert_eq!(padded(vec![1, 2, 3, 4]), vec![1, 2, 3, 4]);
        assert_eq!(padded((1..=100).collect()).len(), 128);
    }
}
