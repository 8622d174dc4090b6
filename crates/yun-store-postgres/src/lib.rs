//! The cluster backends on PostgreSQL (documents, the file index, metadata, users): one pool of connections to one database (in one
//! schema), numbered migrations per store, and the stores themselves. Each store states
//! the isolation it runs at and lets the database enforce what must hold across nodes
//! (unique keys, row locks), where the SQLite backends rely on SQLite's single writer.

pub mod changelog;
pub mod docdb;
pub mod files;
pub mod meta;
pub mod users;

use std::future::Future;
use std::sync::Mutex;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, WeakPool};
use tokio::runtime::Handle;
use tokio_postgres::error::SqlState;
use tokio_postgres::Row;
use yun_types::{ErrorCode, YunError};

pub use docdb::PgDocStore;
pub use files::PgFileIndex;
pub use meta::PgMetaStore;
pub use users::PgUserStore;

/// How many connections a node keeps to the database at most.
const POOL_SIZE: usize = 16;
const POOL_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Every pool this process made, while it lives (weakly): scrapes read their health.
static OPEN_POOLS: Mutex<Vec<WeakPool>> = Mutex::new(Vec::new());

/// Sets the connection-pool gauges (called when metrics are scraped): connections open
/// and idle, and requests waiting for one (a pool at its size with waiters is the first
/// sign that the database, or a lock in it, is the bottleneck).
pub fn publish_health() {
    let (mut open, mut idle, mut waiting, mut max) = (0, 0, 0, 0);
    OPEN_POOLS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .retain(|weak| {
            let Some(pool) = weak.upgrade() else {
                return false;
            };
            let status = pool.status();
            open += status.size;
            idle += status.available;
            waiting += status.waiting;
            max += status.max_size;
            true
        });
    if max == 0 {
        return;
    }
    let gauge = |name: &'static str, value: usize| {
        metrics::gauge!(name, "store" => "postgres").set(value as f64);
    };
    gauge("yun_store_pool_connections", open);
    gauge("yun_store_pool_idle", idle);
    gauge("yun_store_pool_waiting", waiting);
    gauge("yun_store_pool_max", max);
}

/// A pool of connections to one PostgreSQL database, every one with the same
/// `search_path` (the schema Yun's tables live in).
#[derive(Clone)]
pub struct Postgres {
    pool: Pool,
    schema: String,
}

impl Postgres {
    /// Connects to `url` (`postgres://user@host:port/database`, or the key=value form)
    /// and keeps Yun's tables in `schema` (created when missing). Nothing is opened until
    /// the first use, so a database that is down fails that use, not this call.
    pub fn connect(url: &str, schema: &str) -> Result<Self, YunError> {
        if schema.is_empty()
            || schema.len() > 63
            || !schema
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            || schema.as_bytes()[0].is_ascii_digit()
        {
            return Err(YunError::invalid_param(format!(
                "a PostgreSQL schema name is 1 to 63 of a-z, 0-9 and _, not starting with a digit: {schema:?}"
            )));
        }
        let mut config: tokio_postgres::Config = url.parse().map_err(|e| {
            // Not repeated: the URL may hold a password.
            YunError::invalid_param(format!("not a PostgreSQL connection URL: {e}"))
        })?;
        config.options(format!("-c search_path={schema}"));
        if config.get_application_name().is_none() {
            config.application_name("yun");
        }
        let manager = Manager::from_config(
            config,
            tokio_postgres::NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            // A request waits this long for a connection, then fails, rather than queue
            // forever behind transactions waiting on locks.
            .wait_timeout(Some(POOL_WAIT))
            .create_timeout(Some(POOL_WAIT))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| YunError::internal(format!("postgres pool: {e}")))?;
        OPEN_POOLS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(pool.weak());
        Ok(Self {
            pool,
            schema: schema.to_owned(),
        })
    }

    pub async fn client(&self) -> Result<deadpool_postgres::Object, YunError> {
        self.pool.get().await.map_err(|e| match e {
            // No answer from the server: say so (the caller sees a clear cause; the URL
            // may hold a password, so it is not repeated).
            deadpool_postgres::PoolError::Backend(e) if e.as_db_error().is_none() => {
                let cause = std::error::Error::source(&e)
                    .map(|s| format!(": {s}"))
                    .unwrap_or_default();
                YunError::new(
                    ErrorCode::Internal,
                    format!("cannot reach PostgreSQL ({e}{cause})"),
                )
            }
            deadpool_postgres::PoolError::Backend(e) => pg_err(e),
            other => YunError::new(
                ErrorCode::Internal,
                format!("no PostgreSQL connection: {other}"),
            ),
        })
    }

    /// Brings `store`'s tables to the newest of `migrations` (each applied once, in
    /// order, in one transaction with the record of it). Nodes starting together take
    /// turns: the first applies, the others find it done.
    pub async fn migrate(&self, store: &str, migrations: &[String]) -> Result<(), YunError> {
        let mut client = self.client().await?;
        let create_schema = format!("CREATE SCHEMA IF NOT EXISTS {}", self.schema);
        let tx = client.transaction().await.map_err(pg_err)?;
        tx.batch_execute(&format!(
            "SELECT pg_advisory_xact_lock(hashtextextended('yun migrations', 0)); {create_schema};
             CREATE TABLE IF NOT EXISTS yun_migrations (store text PRIMARY KEY, version integer NOT NULL);"
        ))
        .await
        .map_err(pg_err)?;
        let done: i32 = tx
            .query_opt(
                "SELECT version FROM yun_migrations WHERE store = $1",
                &[&store],
            )
            .await
            .map_err(pg_err)?
            .map_or(0, |row| row.get(0));
        if done as usize > migrations.len() {
            return Err(YunError::new(
                ErrorCode::Internal,
                format!(
                    "the {store} tables in PostgreSQL were migrated by a newer Yun ({done} migrations; this one knows {}): upgrade this node",
                    migrations.len()
                ),
            ));
        }
        for migration in migrations.iter().skip(done as usize) {
            tx.batch_execute(migration).await.map_err(pg_err)?;
        }
        tx.execute(
            "INSERT INTO yun_migrations (store, version) VALUES ($1, $2) ON CONFLICT (store) DO UPDATE SET version = excluded.version",
            &[&store, &(migrations.len() as i32)],
        )
        .await
        .map_err(pg_err)?;
        tx.commit().await.map_err(pg_err)
    }

    /// One statement on its own (autocommit): the rows it returns.
    pub async fn query(&self, sql: &str, params: Params<'_>) -> Result<Vec<Row>, YunError> {
        let client = self.client().await?;
        let statement = client.prepare_cached(sql).await.map_err(pg_err)?;
        client.query(&statement, params).await.map_err(pg_err)
    }

    /// One statement on its own: its row, if it returned one.
    pub async fn query_opt(&self, sql: &str, params: Params<'_>) -> Result<Option<Row>, YunError> {
        let client = self.client().await?;
        let statement = client.prepare_cached(sql).await.map_err(pg_err)?;
        client.query_opt(&statement, params).await.map_err(pg_err)
    }

    /// One statement on its own: how many rows it changed.
    pub async fn execute(&self, sql: &str, params: Params<'_>) -> Result<u64, YunError> {
        let client = self.client().await?;
        let statement = client.prepare_cached(sql).await.map_err(pg_err)?;
        client.execute(&statement, params).await.map_err(pg_err)
    }

    /// [`Postgres::query`] that tells a unique violation apart: `None` when a row it
    /// would write clashes with one that exists.
    pub async fn query_unique(
        &self,
        sql: &str,
        params: Params<'_>,
    ) -> Result<Option<Vec<Row>>, YunError> {
        let client = self.client().await?;
        let statement = client.prepare_cached(sql).await.map_err(pg_err)?;
        match client.query(&statement, params).await {
            Ok(rows) => Ok(Some(rows)),
            Err(e) if unique_violation(&e).is_some() => Ok(None),
            Err(e) => Err(pg_err(e)),
        }
    }

    /// Runs `work` on a blocking thread inside one transaction: a snapshot
    /// (`REPEATABLE READ READ ONLY`) when `read_only`, else `READ COMMITTED`, where each
    /// store locks what it reads to change. Committed when `work` returns `Ok`.
    pub async fn transaction<T: Send + 'static>(
        &self,
        read_only: bool,
        work: impl FnOnce(&Txn<'_>) -> Result<T, YunError> + Send + 'static,
    ) -> Result<T, YunError> {
        let mut client = self.client().await?;
        let handle = Handle::current();
        tokio::task::spawn_blocking(move || {
            // Stated, not left to the server's default: the stores' locking assumes it.
            let isolation = if read_only {
                tokio_postgres::IsolationLevel::RepeatableRead
            } else {
                tokio_postgres::IsolationLevel::ReadCommitted
            };
            let builder = client
                .build_transaction()
                .isolation_level(isolation)
                .read_only(read_only);
            let tx = handle.block_on(builder.start()).map_err(pg_err)?;
            let txn = Txn {
                tx: &tx,
                handle: &handle,
                failed: std::cell::Cell::new(false),
            };
            let value = work(&txn)?;
            // PostgreSQL answers COMMIT of a transaction a statement failed in with a
            // rollback, not an error: a caller that went on after an error must not be
            // told its writes committed.
            if txn.failed.get() {
                return Err(YunError::internal(
                    "a PostgreSQL transaction went on after a failed statement; rolled back",
                ));
            }
            handle.block_on(tx.commit()).map_err(pg_err)?;
            Ok(value)
        })
        .await
        .map_err(|e| YunError::internal(format!("a PostgreSQL transaction's thread: {e}")))?
    }
}

type Params<'p> = &'p [&'p (dyn tokio_postgres::types::ToSql + Sync)];

/// An open transaction, used from a blocking thread: each call waits for its answer.
/// Statements are prepared once per connection (the pool keeps them).
pub struct Txn<'a> {
    tx: &'a deadpool_postgres::Transaction<'a>,
    handle: &'a Handle,
    /// A statement failed: the transaction can only roll back.
    failed: std::cell::Cell<bool>,
}

impl Txn<'_> {
    fn wait<T>(
        &self,
        f: impl Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T, YunError> {
        self.checked(self.handle.block_on(f)).map_err(pg_err)
    }

    fn checked<T>(
        &self,
        result: Result<T, tokio_postgres::Error>,
    ) -> Result<T, tokio_postgres::Error> {
        if result.is_err() {
            self.failed.set(true);
        }
        result
    }

    pub fn query_opt(
        &self,
        sql: &str,
        params: Params<'_>,
    ) -> Result<Option<tokio_postgres::Row>, YunError> {
        self.wait(async {
            let statement = self.tx.prepare_cached(sql).await?;
            self.tx.query_opt(&statement, params).await
        })
    }

    pub fn query(
        &self,
        sql: &str,
        params: Params<'_>,
    ) -> Result<Vec<tokio_postgres::Row>, YunError> {
        self.wait(async {
            let statement = self.tx.prepare_cached(sql).await?;
            self.tx.query(&statement, params).await
        })
    }

    pub fn execute(&self, sql: &str, params: Params<'_>) -> Result<u64, YunError> {
        self.try_execute(sql, params).map_err(pg_err)
    }

    /// [`Txn::execute`] with the database's own error, for a caller that tells some
    /// apart (a unique violation, say).
    pub fn try_execute(&self, sql: &str, params: Params<'_>) -> Result<u64, tokio_postgres::Error> {
        self.checked(self.handle.block_on(async {
            let statement = self.tx.prepare_cached(sql).await?;
            self.tx.execute(&statement, params).await
        }))
    }

    /// Streams the rows of `sql` to `each` until it returns false, fetching them in
    /// growing batches through a portal: a walk that stops early has not made the server
    /// send the rest.
    pub fn each(
        &self,
        sql: &str,
        params: Params<'_>,
        mut each: impl FnMut(&tokio_postgres::Row) -> Result<bool, YunError>,
    ) -> Result<(), YunError> {
        let portal = self.wait(async {
            let statement = self.tx.prepare_cached(sql).await?;
            self.tx.bind(&statement, params).await
        })?;
        let mut batch = 32;
        loop {
            let rows = self.wait(self.tx.query_portal(&portal, batch))?;
            for row in &rows {
                if !each(row)? {
                    return Ok(());
                }
            }
            if rows.len() < batch as usize {
                return Ok(());
            }
            batch = (batch * 4).min(4096);
        }
    }
}

/// A database error in CloudBase's terms: conflicts between transactions (serialization
/// failures, deadlocks) are `DATABASE_TRANSACTION_CONFLICT`, text PostgreSQL cannot
/// store is the caller's error, the rest is internal (logged with its cause).
pub fn pg_err(e: tokio_postgres::Error) -> YunError {
    match e.code() {
        Some(c)
            if *c == SqlState::T_R_SERIALIZATION_FAILURE
                || *c == SqlState::T_R_DEADLOCK_DETECTED =>
        {
            YunError::new(
                ErrorCode::TransactionConflict,
                "the write conflicted with another transaction; try again",
            )
        }
        Some(c)
            if *c == SqlState::CHARACTER_NOT_IN_REPERTOIRE
                || *c == SqlState::UNTRANSLATABLE_CHARACTER =>
        {
            YunError::invalid_param("text with a NUL character cannot be stored")
        }
        _ => YunError::internal(format!("postgres: {}", describe(&e))),
    }
}

/// The server's message when there is one (the `Display` of a database error is only
/// "db error").
pub fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => match std::error::Error::source(e) {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        },
    }
}

/// The constraint a unique violation broke, if that is what `e` is.
pub fn unique_violation(e: &tokio_postgres::Error) -> Option<&str> {
    let db = e.as_db_error()?;
    (*db.code() == SqlState::UNIQUE_VIOLATION).then(|| db.constraint().unwrap_or(""))
}
