//! A database per test, created on the shared server and dropped at the end.

use diesel_async::{AsyncConnection, AsyncMysqlConnection, SimpleAsyncConnection};

use crate::TcpProxy;

/// Prefix of every test database; `deploy/test.sh` drops leftovers by it.
pub const TEST_DATABASE_PREFIX: &str = "commerce_t";

/// Server URL (no database) of an account that may create `commerce_%`
/// databases. `deploy/setup.sh` creates it; override with
/// `COMMERCE_TEST_MYSQL_URL`.
pub fn mysql_admin_url() -> String {
    std::env::var("COMMERCE_TEST_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://commerce:commerce@127.0.0.1:3306".to_owned())
}

/// A fresh, empty database that only this test uses.
#[derive(Debug, Clone)]
pub struct TestDatabase {
    pub name: String,
    pub url: String,
}

impl TestDatabase {
    /// Creates `commerce_t<random>_<label>`.
    pub async fn create(label: &str) -> anyhow::Result<Self> {
        let admin = mysql_admin_url();
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        let name = format!("{TEST_DATABASE_PREFIX}{}_{label}", &suffix[..12]);
        let mut conn = AsyncMysqlConnection::establish(&admin).await?;
        conn.batch_execute(&format!(
            "CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
        ))
        .await?;
        let url = format!("{}/{name}", admin.trim_end_matches('/'));
        Ok(Self { name, url })
    }

    /// A direct connection, for assertions on stored state.
    pub async fn connect(&self) -> anyhow::Result<AsyncMysqlConnection> {
        Ok(AsyncMysqlConnection::establish(&self.url).await?)
    }

    /// Starts a [`TcpProxy`] to the database server and returns it with a URL
    /// that reaches this database through it, so a test can cut the link.
    ///
    /// The URL says `prefer_socket=false`: otherwise the MySQL driver, seeing
    /// a loopback server, moves each connection to the server's Unix socket
    /// right after the handshake, and cutting the proxy would not cut it.
    pub async fn through_proxy(&self) -> anyhow::Result<(TcpProxy, String)> {
        let (credentials, rest) = self
            .url
            .rsplit_once('@')
            .ok_or_else(|| anyhow::anyhow!("database URL without credentials"))?;
        let (server, database) = rest
            .split_once('/')
            .ok_or_else(|| anyhow::anyhow!("database URL without a database"))?;
        let target = tokio::net::lookup_host(server)
            .await?
            .next()
            .ok_or_else(|| anyhow::anyhow!("cannot resolve {server}"))?;
        let proxy = TcpProxy::start(target).await?;
        let url = format!(
            "{credentials}@{}/{database}?prefer_socket=false",
            proxy.addr
        );
        Ok((proxy, url))
    }

    /// Drops the database. Tests call it at the end; a failed test leaves its
    /// database for inspection, and the next `deploy/test.sh` removes it.
    pub async fn drop_database(self) -> anyhow::Result<()> {
        let mut conn = AsyncMysqlConnection::establish(&mysql_admin_url()).await?;
        conn.batch_execute(&format!("DROP DATABASE IF EXISTS `{}`", self.name))
            .await?;
        Ok(())
    }
}
