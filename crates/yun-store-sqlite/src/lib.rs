//! The embedded backends, all on SQLite files in the data folder's `meta/`: documents
//! (`docdb`), the file index (`files`), metadata (`meta`), users (`users`), the event bus
//! (`events`), and the change log the document and file stores append to (`changelog`).
//! The seams are the domain crates' traits; `yun-server` picks these or
//! `yun-store-postgres`. `pool` is the connection model they share: WAL, numbered
//! migrations, pooled readers and one group-committing writer.

pub mod changelog;
pub mod docdb;
pub mod events;
pub mod files;
pub mod meta;
mod pool;
pub mod users;

pub use docdb::SqliteDocStore;
pub use events::SqliteBus;
pub use files::{objects_in_copy, SqliteFileIndex};
pub use meta::SqliteMetaStore;
pub use pool::{backup_all, db_err, health, publish_health, snapshot, Sqlite, StoreHealth};
pub use rusqlite;
pub use users::SqliteUserStore;
