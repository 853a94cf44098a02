//! The MySQL connection pool and the classification of database failures.
//!
//! Sessions run in UTC and at READ COMMITTED: every invariant of the services
//! is kept by row locks (`SELECT ... FOR UPDATE`) and unique keys, so the gap
//! locks of REPEATABLE READ would only add deadlocks.

use std::time::Duration;

use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel_async::pooled_connection::bb8::{Pool, PooledConnection};
use diesel_async::pooled_connection::{AsyncDieselConnectionManager, ManagerConfig};
use diesel_async::{AsyncConnection, AsyncMysqlConnection, RunQueryDsl, SimpleAsyncConnection};
use futures::FutureExt;
use rand::Rng;

use crate::error::ServiceError;

/// A pooled connection, borrowed from [`Database`].
pub type DbConn<'a> = PooledConnection<'a, AsyncMysqlConnection>;

/// How many times a transaction that lost a deadlock is run again.
const CONFLICT_ATTEMPTS: u32 = 5;

/// Settings of the pool.
#[derive(Debug, Clone)]
pub struct DbSettings {
    pub url: String,
    pub max_connections: u32,
    /// How long a request waits for a connection before failing UNAVAILABLE.
    pub acquire_timeout: Duration,
}

/// A cheaply cloneable handle to the service's database.
#[derive(Clone)]
pub struct Database {
    pool: Pool<AsyncMysqlConnection>,
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
        let mut config = ManagerConfig::default();
        config.custom_setup = Box::new(|url| establish(url).boxed());
        let manager = AsyncDieselConnectionManager::<AsyncMysqlConnection>::new_with_config(
            &settings.url,
            config,
        );
        let pool = Pool::builder()
            .max_size(settings.max_connections)
            .min_idle(Some(0))
            .connection_timeout(settings.acquire_timeout)
            .retry_connection(false)
            .build_unchecked(manager);
        Self { pool }
    }

    /// Borrows a connection, or fails UNAVAILABLE within the acquire timeout.
    pub async fn conn(&self) -> Result<DbConn<'_>, ServiceError> {
        self.pool
            .get()
            .await
            .map_err(|e| ServiceError::Unavailable(format!("database connection: {e}")))
    }

    /// Runs `op` (typically one whole transaction) again when it lost a
    /// deadlock or a lock wait, so lock races never surface to callers. Other
    /// errors are returned at once.
    pub async fn retrying<T, F, Fut>(&self, mut op: F) -> Result<T, ServiceError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, ServiceError>>,
    {
        let mut attempt = 1;
        loop {
            match op().await {
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

    /// True when a connection can be borrowed and answers a query.
    pub async fn ping(&self) -> bool {
        match self.conn().await {
            Ok(mut conn) => diesel::sql_query("SELECT 1")
                .execute(&mut conn)
                .await
                .is_ok(),
            Err(_) => false,
        }
    }
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

/// Maps a diesel error to what it means for the caller. The MySQL driver
/// keeps only the server's message for most errors, so deadlocks and lost
/// connections are recognised by their wording.
pub fn classify(error: DieselError) -> ServiceError {
    match &error {
        DieselError::DatabaseError(DatabaseErrorKind::SerializationFailure, _) => {
            ServiceError::Conflict(error.to_string())
        }
        DieselError::DatabaseError(DatabaseErrorKind::ClosedConnection, _)
        | DieselError::BrokenTransactionManager => ServiceError::Unavailable(error.to_string()),
        DieselError::DatabaseError(DatabaseErrorKind::Unknown, info) => {
            let message = info.message();
            if message.contains("try restarting transaction") {
                // 1213 deadlock, 1205 lock wait timeout.
                ServiceError::Conflict(message.to_owned())
            } else if is_connection_failure(message) {
                ServiceError::Unavailable(message.to_owned())
            } else {
                ServiceError::Internal(error.to_string())
            }
        }
        _ => ServiceError::Internal(error.to_string()),
    }
}

fn is_connection_failure(message: &str) -> bool {
    const SIGNS: &[&str] = &[
        "Input/output error",
        "Connection",
        "connection",
        "broken pipe",
        "Broken pipe",
        "server has gone away",
        "Lost connection",
        "Driver error",
        "closed",
        "timed out",
    ];
    SIGNS.iter().any(|sign| message.contains(sign))
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
