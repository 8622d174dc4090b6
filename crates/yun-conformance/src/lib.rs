//! The backends each seam's suite runs against. SQLite gets a temporary folder;
//! PostgreSQL a schema of its own on the server at `YUN_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`), dropped when the test ends, passed or not.
//! When that server cannot be reached the PostgreSQL tests fail; they never skip.

use std::path::PathBuf;
use std::sync::Arc;

use yun_docdb::store::DocStore;
use yun_meta::MetaStore;
use yun_storage::FileIndex;
use yun_store_postgres::{PgDocStore, PgFileIndex, PgMetaStore, PgUserStore, Postgres};
use yun_store_sqlite::{SqliteDocStore, SqliteFileIndex, SqliteMetaStore, SqliteUserStore};
use yun_users::UserStore;

/// Runs each named `async fn(Backend)` once per backend, as `NAME::sqlite` and
/// `NAME::postgres`.
#[macro_export]
macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                super::$name($crate::Backend::sqlite()).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                super::$name($crate::Backend::postgres()).await
            }
        }
    )*};
}

/// Opens a store on a backend: SQLite's in `file` of its folder, PostgreSQL's in its
/// schema (a macro: each store's `open` has a type of its own, PostgreSQL's is async).
macro_rules! open_on {
    ($backend:expr, $file:literal, $sqlite:path, $postgres:path) => {
        match $backend {
            Backend::Sqlite { folder, .. } => Arc::new($sqlite(&folder.join($file)).unwrap()),
            Backend::Postgres { url, schema } => {
                let pg = Postgres::connect(url, schema).unwrap();
                match $postgres(pg).await {
                    Ok(store) => Arc::new(store),
                    Err(e) => unusable(url, e),
                }
            }
        }
    };
}

/// A backend's data that stores can be opened on, again after a "restart".
pub enum Backend {
    Sqlite {
        _dir: tempfile::TempDir,
        folder: PathBuf,
    },
    Postgres {
        url: String,
        schema: String,
    },
}

impl Backend {
    pub fn sqlite() -> Self {
        log_to_test_output();
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().to_owned();
        Self::Sqlite { _dir: dir, folder }
    }

    pub fn postgres() -> Self {
        log_to_test_output();
        Self::Postgres {
            url: postgres_url(),
            schema: format!("yt_{:016x}", rand::random::<u64>()),
        }
    }

    /// A document store on this backend's data: the first open, or a restart.
    pub async fn doc_store(&self) -> Arc<dyn DocStore> {
        open_on!(self, "documents.db", SqliteDocStore::open, PgDocStore::open)
    }

    /// A metadata store on this backend's data.
    pub async fn meta_store(&self) -> Arc<dyn MetaStore> {
        open_on!(self, "yun.db", SqliteMetaStore::open, PgMetaStore::open)
    }

    /// A user store on this backend's data.
    pub async fn user_store(&self) -> Arc<dyn UserStore> {
        open_on!(self, "users.db", SqliteUserStore::open, PgUserStore::open)
    }

    /// A file index on this backend's data.
    pub async fn file_index(&self) -> Arc<dyn FileIndex> {
        open_on!(self, "files.db", SqliteFileIndex::open, PgFileIndex::open)
    }
}

/// Internal errors carry their cause only in the log: a failing test shows it.
fn log_to_test_output() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("warn")
        .try_init();
}

fn unusable(url: &str, e: yun_types::YunError) -> ! {
    panic!(
        "PostgreSQL is not usable at {url} ({e}): start it or point YUN_TEST_POSTGRES_URL at \
         one; these tests do not skip"
    )
}

pub fn postgres_url() -> String {
    std::env::var("YUN_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

impl Drop for Backend {
    fn drop(&mut self) {
        let Self::Postgres { url, schema } = self else {
            return;
        };
        let sql = format!("DROP SCHEMA IF EXISTS {schema} CASCADE");
        let url = url.clone();
        // Drop cannot await and may run inside the test's runtime: from a thread with a
        // runtime of its own.
        let cleanup = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let Ok((client, connection)) =
                    tokio_postgres::connect(&url, tokio_postgres::NoTls).await
                else {
                    return;
                };
                tokio::spawn(connection);
                let _ = client.batch_execute(&sql).await;
            });
        });
        let _ = cleanup.join();
    }
}
