//! Embedded diesel migrations, run at start-up and by the `migrate`
//! subcommand. The saga barrier's table is shared by every participant and
//! migrated before the service's own tables.

use std::time::{Duration, Instant};

use diesel::Connection;
use diesel::migration::{Migration, MigrationSource};
use diesel::mysql::Mysql;
use diesel_async::AsyncMysqlConnection;
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

/// Migrations of the `saga_barrier` table every participant owns.
pub static BARRIER_MIGRATIONS: EmbeddedMigrations =
    embed_migrations!("../../migrations/saga_barrier");

/// Applies the pending migrations of each set in order. Waits (bounded) for
/// the database to accept connections, since services often start with it.
pub async fn run(
    url: &str,
    sets: &[&'static EmbeddedMigrations],
    wait_for_db: Duration,
) -> anyhow::Result<usize> {
    let url = url.to_owned();
    let sets = sets.to_vec();
    tokio::task::spawn_blocking(move || {
        let mut conn = connect_with_retry(&url, wait_for_db)?;
        let mut applied = 0;
        for set in sets {
            let versions = conn
                .run_pending_migrations(StaticSource(set))
                .map_err(|e| anyhow::anyhow!("running migrations: {e}"))?;
            for version in &versions {
                tracing::info!(%version, "migration applied");
            }
            applied += versions.len();
        }
        Ok(applied)
    })
    .await?
}

type SyncConn = AsyncConnectionWrapper<AsyncMysqlConnection>;

fn connect_with_retry(url: &str, wait: Duration) -> anyhow::Result<SyncConn> {
    let deadline = Instant::now() + wait;
    loop {
        match SyncConn::establish(url) {
            Ok(conn) => return Ok(conn),
            Err(e) if Instant::now() < deadline => {
                tracing::warn!(error = %e, "database not reachable yet, retrying");
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => return Err(anyhow::anyhow!("connecting to the database: {e}")),
        }
    }
}

/// Lends a `static` migration set to diesel, which takes sources by value.
struct StaticSource(&'static EmbeddedMigrations);

impl MigrationSource<Mysql> for StaticSource {
    fn migrations(&self) -> diesel::migration::Result<Vec<Box<dyn Migration<Mysql>>>> {
        self.0.migrations()
    }
}
