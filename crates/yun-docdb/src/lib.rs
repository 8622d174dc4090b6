//! The document database. The model lives here once: values (`value`), their order
//! (`order`), queries (`filter`), updates (`update`), sort and projection (`find`), and
//! the operations (`db`). Backends implement the narrow `store` seam: SQLite in
//! `yun-store-sqlite`, PostgreSQL in `yun-store-postgres`. No HTTP, no auth: callers
//! pass an env and act in it.

pub mod aggregate;
pub mod db;
pub mod exec;
pub mod expr;
pub mod filter;
pub mod find;
pub mod geo;
pub mod index;
pub mod order;
pub mod plan;
pub mod slow;
pub mod store;
pub mod txn;
pub mod update;
pub mod value;

pub use db::{Change, DocDb, Find, Limits, UpdateMode, Updated, WriteGuard};
pub use yun_types::changes::written_by;
