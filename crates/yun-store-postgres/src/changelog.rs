//! A change log (outbox) in PostgreSQL: a store appends inside the write's own
//! transaction, so an entry exists exactly when its write committed.
//!
//! Readers page by a sequence that must never let them skip an entry. Many nodes write at
//! once, and a transaction that took a number first may commit last, so a number taken
//! while writing could be passed by a reader before its entry is visible. Instead an
//! entry is numbered after its transaction is over: a writer stores only `ord`, from a
//! sequence (no row lock, nothing that serialises writers), and readers first number the
//! committed entries that have no `seq` yet, in `ord` order, one numbering at a time (an
//! advisory lock). Every entry a numbering sees has committed, and a later numbering
//! starts after the earlier one committed, so numbers only grow in what readers see.
//! Two writes of one document are ordered by its row lock: the second took its `ord`
//! after the first committed, so entries of one key keep their order.

use std::sync::Arc;

use tokio_postgres::Row;
use yun_types::changes::{ChangeEntry, ChangeLog, ChangeRetention, NewChange};
use yun_types::YunError;

use crate::{Postgres, Txn};

/// The most entries one numbering takes; readers number again on their next page.
const NUMBERING_BATCH: i64 = 10_000;
/// Retention deletes in slices of this many entries, each its own transaction.
const PRUNE_SLICE: i64 = 5_000;

/// The change log of one store, in tables named after `prefix` (`doc_changes`, …).
#[derive(Clone)]
pub struct PgChangeLog {
    pg: Postgres,
    sql: Arc<Sql>,
}

struct Sql {
    append: String,
    lock: String,
    any_unnumbered: String,
    unnumbered: String,
    number: String,
    after: String,
    last: String,
    cuts: String,
    prune: String,
    cursor: String,
    save_cursor: String,
}

const COLUMNS: &str = "seq, env, origin, target, op, key, before, after, at_ms, cause";

impl PgChangeLog {
    /// The tables, for the store's migration list.
    pub fn migration(prefix: &str) -> String {
        format!(
            r#"
CREATE SEQUENCE {prefix}_change_order;
CREATE TABLE {prefix}_changes (
    ord bigint PRIMARY KEY DEFAULT nextval('{prefix}_change_order'),
    seq bigint UNIQUE,
    env text COLLATE "C" NOT NULL,
    origin text,
    cause text,
    target text NOT NULL,
    op text NOT NULL,
    key text NOT NULL,
    before text,
    after text,
    at_ms bigint NOT NULL
);
CREATE INDEX {prefix}_changes_unnumbered ON {prefix}_changes (ord) WHERE seq IS NULL;
CREATE INDEX {prefix}_changes_by_env ON {prefix}_changes (env, seq);
CREATE TABLE {prefix}_change_cursors (name text PRIMARY KEY, seq bigint NOT NULL);
"#
        )
    }

    pub fn new(pg: Postgres, prefix: &str) -> Self {
        let t = format!("{prefix}_changes");
        let sql = Sql {
            append: format!(
                "INSERT INTO {t} (env, origin, cause, target, op, key, before, after, at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
            ),
            lock: format!("SELECT pg_advisory_xact_lock(hashtextextended('{t}', 0))"),
            any_unnumbered: format!("SELECT 1 FROM {t} WHERE seq IS NULL LIMIT 1"),
            unnumbered: format!(
                "SELECT ord FROM {t} WHERE seq IS NULL ORDER BY ord LIMIT {NUMBERING_BATCH}"
            ),
            // Retention keeps the newest numbered entry, so the largest `seq` never goes
            // and a number is never handed out twice.
            number: format!(
                "UPDATE {t} c SET seq = n.last + u.rank FROM unnest($1::bigint[]) WITH ORDINALITY AS u(ord, rank), (SELECT coalesce(max(seq), 0) AS last FROM {t}) n WHERE c.ord = u.ord"
            ),
            after: format!(
                "SELECT {COLUMNS} FROM {t} WHERE seq > $1 ORDER BY seq LIMIT $2"
            ),
            last: format!("SELECT coalesce(max(seq), 0) FROM {t}"),
            // Per env, newest first: the first entry past the byte budget or the age is
            // the newest that goes (the running total only grows going back).
            cuts: format!(
                "SELECT env, max(seq) FROM (SELECT env, seq, at_ms, sum(coalesce(octet_length(before), 0) + coalesce(octet_length(after), 0)) OVER (PARTITION BY env ORDER BY seq DESC) AS total FROM {t} WHERE seq IS NOT NULL) w WHERE total > $1 OR at_ms < $2 GROUP BY env"
            ),
            prune: format!(
                "DELETE FROM {t} WHERE ord IN (SELECT ord FROM {t} WHERE env = $1 AND seq <= $2 ORDER BY seq LIMIT {PRUNE_SLICE})"
            ),
            cursor: format!("SELECT seq FROM {prefix}_change_cursors WHERE name = $1"),
            // A cursor only moves forward: processes sharing the log may save it out of
            // order.
            save_cursor: format!(
                "INSERT INTO {prefix}_change_cursors (name, seq) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET seq = greatest({prefix}_change_cursors.seq, excluded.seq)"
            ),
        };
        Self {
            pg,
            sql: Arc::new(sql),
        }
    }

    /// Appends `change` for `env` in `txn`; the writer is the one running on this thread
    /// ([`yun_types::changes::writing`]).
    pub fn append(&self, txn: &Txn<'_>, env: &str, change: &NewChange<'_>) -> Result<(), YunError> {
        let origin = yun_types::changes::writing();
        txn.execute(
            &self.sql.append,
            &[
                &env,
                &origin.function.as_deref(),
                &origin.cause.as_deref(),
                &change.target,
                &change.op,
                &change.key,
                &change.before,
                &change.after,
                &yun_types::unix_ms(),
            ],
        )
        .map(drop)
    }

    /// Numbers the committed entries that have no `seq` yet (see the module's comment).
    async fn number(&self) -> Result<(), YunError> {
        let sql = self.sql.clone();
        self.pg
            .transaction(false, move |txn| {
                // Cheap when there is nothing to do: most polls of an idle log.
                if txn.query_opt(&sql.any_unnumbered, &[])?.is_none() {
                    return Ok(());
                }
                txn.execute(&sql.lock, &[])?;
                let ords: Vec<i64> = txn
                    .query(&sql.unnumbered, &[])?
                    .iter()
                    .map(|r| r.get(0))
                    .collect();
                txn.execute(&sql.number, &[&ords]).map(drop)
            })
            .await
    }
}

fn entry(r: &Row) -> ChangeEntry {
    ChangeEntry {
        seq: r.get::<_, i64>(0) as u64,
        env: r.get(1),
        origin: r.get(2),
        target: r.get(3),
        op: r.get(4),
        key: r.get(5),
        before: r.get(6),
        after: r.get(7),
        at_ms: r.get(8),
        cause: r.get(9),
    }
}

#[async_trait::async_trait]
impl ChangeLog for PgChangeLog {
    async fn changes_after(&self, after: u64, limit: usize) -> Result<Vec<ChangeEntry>, YunError> {
        self.number().await?;
        let sql = self.sql.clone();
        self.pg
            .transaction(true, move |txn| {
                let rows = txn.query(
                    &sql.after,
                    &[&(after.min(i64::MAX as u64) as i64), &(limit as i64)],
                )?;
                Ok(rows.iter().map(entry).collect())
            })
            .await
    }

    async fn last_change(&self) -> Result<u64, YunError> {
        self.number().await?;
        let sql = self.sql.clone();
        self.pg
            .transaction(true, move |txn| {
                Ok(txn
                    .query_opt(&sql.last, &[])?
                    .map_or(0, |r| r.get::<_, i64>(0)) as u64)
            })
            .await
    }

    async fn prune_changes(&self, retention: ChangeRetention, below: u64) -> Result<u64, YunError> {
        let oldest_kept_ms =
            yun_types::unix_ms() - i64::try_from(retention.max_age.as_millis()).unwrap_or(i64::MAX);
        let max_bytes = i64::try_from(retention.max_bytes).unwrap_or(i64::MAX);
        let sql = self.sql.clone();
        let cuts: Vec<(String, i64)> = self
            .pg
            .transaction(true, move |txn| {
                let newest: i64 = txn.query_opt(&sql.last, &[])?.map_or(0, |r| r.get(0));
                // Entries at or past `limit` stay whatever their age or size.
                let limit = newest.min(i64::try_from(below).unwrap_or(i64::MAX));
                Ok(txn
                    .query(&sql.cuts, &[&max_bytes, &oldest_kept_ms])?
                    .iter()
                    .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1).min(limit - 1)))
                    .filter(|(_, cut)| *cut > 0)
                    .collect())
            })
            .await?;
        let mut pruned = 0;
        for (env, cut) in cuts {
            loop {
                let (sql, env) = (self.sql.clone(), env.clone());
                let n = self
                    .pg
                    .transaction(false, move |txn| txn.execute(&sql.prune, &[&env, &cut]))
                    .await?;
                pruned += n;
                if (n as i64) < PRUNE_SLICE {
                    break;
                }
            }
        }
        Ok(pruned)
    }

    async fn change_cursor(&self, name: &str) -> Result<Option<u64>, YunError> {
        let (sql, name) = (self.sql.clone(), name.to_owned());
        self.pg
            .transaction(true, move |txn| {
                Ok(txn
                    .query_opt(&sql.cursor, &[&name])?
                    .map(|r| r.get::<_, i64>(0) as u64))
            })
            .await
    }

    async fn save_change_cursor(&self, name: &str, seq: u64) -> Result<(), YunError> {
        let (sql, name) = (self.sql.clone(), name.to_owned());
        self.pg
            .transaction(false, move |txn| {
                txn.execute(&sql.save_cursor, &[&name, &(seq as i64)])
                    .map(drop)
            })
            .await
    }
}
