//! The connection model every store here shares: a database file in WAL mode with `synchronous=NORMAL`, numbered migrations recorded in
//! `PRAGMA user_version`, a pool of read-only connections, and one writer thread (SQLite
//! has one writer) that commits in groups: it runs the write jobs waiting for it in one
//! transaction, each inside its own savepoint (a failing job is undone alone), and
//! answers them only after the commit, so an acknowledged write is a committed one.
//! Write jobs must not begin transactions of their own. Knows no schema.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, Weak};

use rusqlite::{Connection, OpenFlags};
use yun_types::YunError;

/// Wraps a SQLite error as an internal error (logged, generic to callers).
pub fn db_err(e: impl std::fmt::Display) -> YunError {
    YunError::internal(format!("sqlite: {e}"))
}

/// Delivers a job's result once its group has committed (`None`) or failed (`Some`).
type Completion = Box<dyn FnOnce(Option<YunError>) + Send>;
/// Runs on the writer connection; says whether it succeeded (keep its savepoint).
type Job = Box<dyn FnOnce(&mut Connection) -> (bool, Completion) + Send>;

/// Statements each connection keeps prepared (rusqlite's default, 16, is fewer than one
/// store's hot statements plus the writer's own).
const STATEMENT_CACHE: usize = 64;

/// Jobs one commit may carry.
const MAX_GROUP: usize = 512;

#[derive(Clone)]
pub struct Sqlite {
    path: PathBuf,
    /// The file's stem (`yun`, `documents`, …): the `store` label of its metrics.
    name: Arc<str>,
    jobs: mpsc::Sender<Job>,
    writer: Arc<Writer>,
    readers: Arc<Mutex<Vec<Connection>>>,
    /// Long reads running at once: twice the cores. More only queue for the CPU while
    /// each holds a connection, its caches and its partial results; short requests
    /// stay fast behind a bounded number of scans.
    long_reads: Arc<tokio::sync::Semaphore>,
}

/// The one writing connection: the writer thread's, lent to a caller of
/// [`Sqlite::write_now`] while the thread has nothing to do.
struct Writer {
    conn: Mutex<Connection>,
    /// Jobs sent to the writer thread that it has not started: while there are any, no
    /// caller writes on its own thread, so queued jobs are not overtaken for long.
    queued: AtomicUsize,
    commits: metrics::Counter,
    commit_seconds: metrics::Histogram,
}

/// How one open database is doing, read when metrics are scraped.
#[derive(Debug, Clone)]
pub struct StoreHealth {
    pub name: Arc<str>,
    /// Write jobs waiting for the writer thread.
    pub queued_writes: usize,
    /// Long reads running now (at most [`Sqlite`]'s bound).
    pub long_reads: usize,
    pub idle_readers: usize,
}

/// Every database this process opened, while it is open (weakly: a dropped store
/// leaves): scrapes walk it instead of each store trait growing a health method.
struct Registered {
    name: Arc<str>,
    path: PathBuf,
    writer: Weak<Writer>,
    readers: Weak<Mutex<Vec<Connection>>>,
    long_reads: Weak<tokio::sync::Semaphore>,
    max_long_reads: usize,
}

static OPEN: Mutex<Vec<Registered>> = Mutex::new(Vec::new());

/// Sets the pool gauges of every open database (called when metrics are scraped).
pub fn publish_health() {
    for store in health() {
        let name = store.name.to_string();
        metrics::gauge!("yun_store_queued_writes", "store" => name.clone())
            .set(store.queued_writes as f64);
        metrics::gauge!("yun_store_long_reads", "store" => name.clone())
            .set(store.long_reads as f64);
        metrics::gauge!("yun_store_idle_readers", "store" => name).set(store.idle_readers as f64);
    }
}

/// Copies every open database of folder `from` into folder `to` (same file names), all
/// as of one moment: writes to them are held only while a read transaction opens on
/// each (the writers' current groups finish first), then each is copied from its
/// transaction with SQLite's online backup while writes go on. Blocking: run it on a
/// blocking thread. Returns the file names copied.
pub fn backup_all(from: &Path, to: &Path) -> Result<Vec<String>, YunError> {
    let stores: Vec<(PathBuf, Arc<Writer>)> = {
        let open = OPEN
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        open.iter()
            .filter(|r| r.path.parent() == Some(from))
            .filter_map(|r| Some((r.path.clone(), r.writer.upgrade()?)))
            .collect()
    };
    let snapshots = {
        // In one order (the registry's), and no other code holds two: no deadlock.
        let _held: Vec<_> = stores.iter().map(|(_, w)| lock_conn(w)).collect();
        stores
            .iter()
            .map(|(path, _)| {
                let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
                    .map_err(db_err)?;
                conn.execute_batch(READER_PRAGMAS).map_err(db_err)?;
                // The read transaction's snapshot is fixed by its first read.
                conn.execute_batch("BEGIN; SELECT count(*) FROM sqlite_master;")
                    .map_err(db_err)?;
                Ok((path.clone(), conn))
            })
            .collect::<Result<Vec<_>, YunError>>()?
    };
    let mut copied = Vec::new();
    for (path, source) in snapshots {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let target = to.join(&name);
        make_private(&target)?;
        let mut copy = Connection::open(&target).map_err(db_err)?;
        // All pages in one step: the whole copy reads the snapshot of `source`'s
        // transaction.
        rusqlite::backup::Backup::new(&source, &mut copy)
            .and_then(|b| b.step(-1).map(drop))
            .map_err(db_err)?;
        copy.execute_batch("PRAGMA journal_mode=DELETE;")
            .map_err(db_err)?;
        source.execute_batch("ROLLBACK").map_err(db_err)?;
        copied.push(name);
    }
    Ok(copied)
}

/// The health of every open database.
pub fn health() -> Vec<StoreHealth> {
    let mut open = OPEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    open.retain(|r| r.writer.strong_count() > 0);
    open.iter()
        .filter_map(|r| {
            let (writer, readers, long_reads) = (
                r.writer.upgrade()?,
                r.readers.upgrade()?,
                r.long_reads.upgrade()?,
            );
            Some(StoreHealth {
                name: r.name.clone(),
                queued_writes: writer.queued.load(Ordering::Relaxed),
                long_reads: r.max_long_reads - long_reads.available_permits(),
                idle_readers: readers.lock().map_or(0, |r| r.len()),
            })
        })
        .collect()
}

fn lock_conn(writer: &Writer) -> std::sync::MutexGuard<'_, Connection> {
    // A panicking job is caught inside the lock (`run_job`), so a poisoned lock still
    // guards a connection with no transaction open.
    writer
        .conn
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The writer thread. Ends when every `Sqlite` handle is dropped.
fn commit_groups(writer: Arc<Writer>, jobs: mpsc::Receiver<Job>) {
    while let Ok(first) = jobs.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match jobs.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        let mut guard = lock_conn(&writer);
        writer.queued.fetch_sub(group.len(), Ordering::AcqRel);
        let conn = &mut *guard;
        let began = std::time::Instant::now();
        if let Err(e) = run(conn, "BEGIN IMMEDIATE") {
            // Dropping the jobs closes their reply channels: each caller sees an error.
            tracing::error!(error = %e, "could not begin a write transaction");
            continue;
        }
        let completions: Vec<Completion> = group
            .into_iter()
            .filter_map(|job| run_job(conn, job))
            .collect();
        let failure = run(conn, "COMMIT").map_err(db_err).err();
        if failure.is_some() {
            let _ = run(conn, "ROLLBACK");
        }
        writer.commits.increment(1);
        writer.commit_seconds.record(began.elapsed());
        for complete in completions {
            complete(failure.clone());
        }
    }
}

/// One job inside a savepoint: released when it succeeds, rolled back when it fails or
/// panics (a panicking job's reply channel is dropped, so its caller gets an error).
fn run_job(conn: &mut Connection, job: Job) -> Option<Completion> {
    run(conn, "SAVEPOINT yun_job").ok()?;
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(conn)));
    let (kept, completion) = match outcome {
        Ok((true, completion)) => (true, Some(completion)),
        Ok((false, completion)) => (false, Some(completion)),
        Err(_) => (false, None),
    };
    let ended = if kept {
        run(conn, "RELEASE yun_job")
    } else {
        run(conn, "ROLLBACK TO yun_job").and_then(|()| run(conn, "RELEASE yun_job"))
    };
    if let Err(e) = ended {
        tracing::error!(error = %e, "could not end a write savepoint");
    }
    completion
}

/// One write in a transaction of its own, on the caller's thread.
fn commit_alone<T>(
    conn: &mut Connection,
    f: impl FnOnce(&mut Connection) -> Result<T, YunError>,
) -> Result<T, YunError> {
    run(conn, "BEGIN IMMEDIATE").map_err(db_err)?;
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(conn)));
    match outcome {
        Ok(Ok(value)) => match run(conn, "COMMIT") {
            Ok(()) => Ok(value),
            Err(e) => {
                let _ = run(conn, "ROLLBACK");
                Err(db_err(e))
            }
        },
        Ok(Err(e)) => {
            let _ = run(conn, "ROLLBACK");
            Err(e)
        }
        Err(_) => {
            let _ = run(conn, "ROLLBACK");
            Err(YunError::internal("a write panicked (see the server log)"))
        }
    }
}

/// One statement of the writer's own, prepared once: `execute_batch` would parse it
/// again on every transaction (the SQL parser was a tenth of the writer thread's time).
fn run(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(drop)
}

/// Runs `f` in one read transaction (one snapshot for all its statements). BEGIN and
/// its end are prepared once, as the writer's are.
pub fn snapshot<T>(
    conn: &Connection,
    f: impl FnOnce(&Connection) -> Result<T, YunError>,
) -> Result<T, YunError> {
    run(conn, "BEGIN").map_err(db_err)?;
    let result = f(conn);
    // A read has nothing to keep: ROLLBACK ends it whatever happened.
    run(conn, "ROLLBACK").map_err(db_err)?;
    result
}

/// The databases hold keys and user data: their files are the owner's alone. SQLite
/// gives a new `-wal` and `-shm` the mode of the database file, so creating that one
/// 0600 covers them; files an older Yun created are tightened too.
fn make_private(path: &Path) -> Result<(), YunError> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let cannot = |e: std::io::Error| YunError::internal(format!("{}: {e}", path.display()));
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(cannot)?;
    for suffix in ["", "-wal", "-shm"] {
        let file = PathBuf::from(format!("{}{suffix}", path.display()));
        if file.exists() {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))
                .map_err(cannot)?;
        }
    }
    Ok(())
}

/// Readers map the file (up to 1 GiB of it) instead of copying each page out of the
/// kernel: perf on an indexed range over 1M documents showed `read()` copies and the
/// per-connection page cache (2 MB by default) among the top costs.
const READER_PRAGMAS: &str = "PRAGMA busy_timeout=5000; PRAGMA mmap_size=1073741824;";

impl Sqlite {
    /// Opens (or creates) the database, applies the migrations it has not seen, and
    /// starts the writer thread. `migrations` is append-only: never edit one that shipped.
    pub fn open(path: &Path, migrations: &[&str]) -> Result<Self, YunError> {
        make_private(path)?;
        let conn = Connection::open(path).map_err(db_err)?;
        conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON; PRAGMA busy_timeout=5000;")
            .map_err(db_err)?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        let applied: usize = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(db_err)?;
        if applied > migrations.len() {
            return Err(YunError::internal(format!(
                "{} was written by a newer Yun (schema {applied}, this build knows {})",
                path.display(),
                migrations.len()
            )));
        }
        for (i, sql) in migrations.iter().enumerate().skip(applied) {
            conn.execute_batch(&format!(
                "BEGIN; {sql}; PRAGMA user_version = {}; COMMIT;",
                i + 1
            ))
            .map_err(db_err)?;
            tracing::info!(db = %path.display(), migration = i + 1, "applied migration");
        }
        let (jobs, queue) = mpsc::channel::<Job>();
        let name: Arc<str> = path
            .file_stem()
            .map_or("db".into(), |s| s.to_string_lossy().into());
        let writer = Arc::new(Writer {
            conn: Mutex::new(conn),
            queued: AtomicUsize::new(0),
            commits: metrics::counter!("yun_store_commits_total", "store" => name.to_string()),
            commit_seconds: metrics::histogram!("yun_store_commit_seconds", "store" => name.to_string()),
        });
        let thread_writer = writer.clone();
        std::thread::Builder::new()
            .name("yun-sqlite-writer".into())
            .spawn(move || commit_groups(thread_writer, queue))
            .map_err(|e| YunError::internal(format!("cannot start the writer thread: {e}")))?;
        let max_long_reads = 2 * std::thread::available_parallelism().map_or(2, usize::from);
        let db = Self {
            path: path.to_owned(),
            name,
            jobs,
            writer,
            readers: Arc::new(Mutex::new(Vec::new())),
            long_reads: Arc::new(tokio::sync::Semaphore::new(max_long_reads)),
        };
        OPEN.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(Registered {
                name: db.name.clone(),
                path: path.to_owned(),
                writer: Arc::downgrade(&db.writer),
                readers: Arc::downgrade(&db.readers),
                long_reads: Arc::downgrade(&db.long_reads),
                max_long_reads,
            });
        Ok(db)
    }

    /// Runs `f` on the writer connection inside the current group's transaction. Its
    /// changes are undone if it returns an error; the result arrives after the commit.
    pub async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, YunError> + Send + 'static,
    ) -> Result<T, YunError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let result = f(conn);
            let ok = result.is_ok();
            let complete: Completion = Box::new(move |commit_failure| {
                let _ = reply.send(match commit_failure {
                    Some(e) if ok => Err(e),
                    _ => result,
                });
            });
            (ok, complete)
        });
        self.writer.queued.fetch_add(1, Ordering::AcqRel);
        if self.jobs.send(job).is_err() {
            self.writer.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(YunError::internal("the sqlite writer has stopped"));
        }
        answer.await.map_err(|_| {
            YunError::internal("a write was dropped by the sqlite writer (see the server log)")
        })?
    }

    /// [`Self::write`] for short writes (a few rows by key): when the writer thread has
    /// nothing to do, runs and commits `f` on the calling thread, saving the two thread
    /// hand-offs (on a 2-vCPU VM about as much CPU as the write itself); otherwise it
    /// queues like any write.
    pub async fn write_now<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, YunError> + Send + 'static,
    ) -> Result<T, YunError> {
        if self.writer.queued.load(Ordering::Acquire) == 0 {
            if let Ok(mut conn) = self.writer.conn.try_lock() {
                let began = std::time::Instant::now();
                let result = commit_alone(&mut conn, f);
                self.writer.commits.increment(1);
                self.writer.commit_seconds.record(began.elapsed());
                return result;
            }
        }
        self.write(f).await
    }

    /// Runs `f` on a read-only connection from the pool, on a blocking thread; in WAL
    /// mode it never waits for the writer.
    pub async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, YunError> + Send + 'static,
    ) -> Result<T, YunError> {
        let permit = self
            .long_reads
            .clone()
            .acquire_owned()
            .await
            .map_err(db_err)?;
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            this.read_pooled(f)
        })
        .await
        .map_err(db_err)?
    }

    /// Runs `f` on the calling thread: for reads known to be short (a few rows by key),
    /// where the hand-off to a blocking thread costs more than the read. `f` must only
    /// read: while the writer is idle it runs on the writer's connection, whose page
    /// cache stays valid across its own commits, where a pooled reader drops its cache
    /// and its map of the file (munmap: a TLB shoot-down on every core) at its first
    /// read after any write; with a write between most point reads (a counter bumped,
    /// then read) that drop was a fifth of a point read's CPU.
    pub fn read_now<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, YunError>,
    ) -> Result<T, YunError> {
        if self.writer.queued.load(Ordering::Acquire) == 0 {
            if let Ok(mut conn) = self.writer.conn.try_lock() {
                return f(&mut conn);
            }
        }
        self.read_pooled(f)
    }

    /// Runs `f` on a read-only connection from the pool, on the calling thread.
    fn read_pooled<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, YunError>,
    ) -> Result<T, YunError> {
        let pooled = self.readers.lock().ok().and_then(|mut r| r.pop());
        let mut conn = match pooled {
            Some(conn) => conn,
            None => {
                let conn = Connection::open_with_flags(
                    &self.path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )
                .map_err(db_err)?;
                conn.execute_batch(READER_PRAGMAS).map_err(db_err)?;
                conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
                conn
            }
        };
        let result = f(&mut conn);
        if let Ok(mut r) = self.readers.lock() {
            r.push(conn);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn database_files_are_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let db = Sqlite::open(&path, &["CREATE TABLE t (v INTEGER)"]).unwrap();
        db.write(|c| c.execute("INSERT INTO t VALUES (1)", []).map_err(db_err))
            .await
            .unwrap();
        db.read(|c| c.execute_batch("SELECT * FROM t").map_err(db_err))
            .await
            .unwrap();
        for name in ["t.db", "t.db-wal", "t.db-shm"] {
            let mode = dir
                .path()
                .join(name)
                .metadata()
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{name}");
        }
        // A file an older build left readable is tightened on open.
        drop(db);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        Sqlite::open(&path, &["CREATE TABLE t (v INTEGER)"]).unwrap();
        assert_eq!(path.metadata().unwrap().permissions().mode() & 0o777, 0o600);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn short_writes_commit_alone_or_queue_and_none_is_lost() {
        let dir = tempfile::tempdir().unwrap();
        let db = Sqlite::open(
            &dir.path().join("t.db"),
            &["CREATE TABLE t (v INTEGER UNIQUE)"],
        )
        .unwrap();
        // Idle writer: committed on this thread, visible to readers at once.
        db.write_now(|c| c.execute("INSERT INTO t VALUES (1)", []).map_err(db_err))
            .await
            .unwrap();
        // A failing short write leaves nothing behind and the connection usable.
        let failed = db
            .write_now(|c| {
                c.execute("INSERT INTO t VALUES (2)", []).map_err(db_err)?;
                c.execute("INSERT INTO t VALUES (1)", []).map_err(db_err)
            })
            .await;
        assert!(failed.is_err());
        // Short and queued writes at once, from many tasks: every one committed once.
        let mut tasks = Vec::new();
        for i in 10..410 {
            let db = db.clone();
            tasks.push(tokio::spawn(async move {
                let insert = move |c: &mut Connection| {
                    c.execute("INSERT INTO t VALUES (?1)", [i]).map_err(db_err)
                };
                if i % 2 == 0 {
                    db.write_now(insert).await?;
                } else {
                    db.write(insert).await?;
                }
                // A short read, on the writer's connection or a pooled one, sees the
                // write just acknowledged.
                db.read_now(|c| {
                    c.query_row("SELECT count(*) FROM t WHERE v = ?1", [i], |r| {
                        r.get::<_, i64>(0)
                    })
                    .map_err(db_err)
                })
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap(), 1);
        }
        let (n, twos): (i64, i64) = db
            .read(|c| {
                c.query_row("SELECT count(*), sum(v = 2) FROM t", [], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .map_err(db_err)
            })
            .await
            .unwrap();
        assert_eq!((n, twos), (401, 0));
    }

    #[tokio::test]
    async fn migrations_run_once_and_readers_see_commits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let migrations = ["CREATE TABLE t (v INTEGER)", "INSERT INTO t VALUES (1)"];
        let db = Sqlite::open(&path, &migrations).unwrap();
        db.write(|c| c.execute("INSERT INTO t VALUES (2)", []).map_err(db_err))
            .await
            .unwrap();
        drop(db);
        let db = Sqlite::open(&path, &migrations).unwrap();
        let n: i64 = db
            .read(|c| {
                c.query_row("SELECT count(*) FROM t", [], |r| r.get(0))
                    .map_err(db_err)
            })
            .await
            .unwrap();
        assert_eq!(n, 2, "the second open applied nothing again");
        assert!(
            db.read(|c| c.execute("INSERT INTO t VALUES (3)", []).map_err(db_err))
                .await
                .is_err(),
            "readers are read-only"
        );
        assert!(
            Sqlite::open(&path, &migrations[..1]).is_err(),
            "a newer schema is refused"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_commit_in_groups_and_a_failing_job_is_undone_alone() {
        let dir = tempfile::tempdir().unwrap();
        let db = Sqlite::open(
            &dir.path().join("g.db"),
            &["CREATE TABLE t (v INTEGER UNIQUE)"],
        )
        .unwrap();
        let mut tasks = Vec::new();
        for i in 0..200i64 {
            let db = db.clone();
            tasks.push(tokio::spawn(async move {
                db.write(move |c| {
                    c.execute("INSERT INTO t VALUES (?1)", [i])
                        .map_err(db_err)?;
                    // Every tenth job writes, then fails: its insert must not survive.
                    if i % 10 == 0 {
                        Err(YunError::invalid_param("no"))
                    } else {
                        Ok(i)
                    }
                })
                .await
            }));
        }
        let mut ok = 0;
        for t in tasks {
            if t.await.unwrap().is_ok() {
                ok += 1;
            }
        }
        assert_eq!(ok, 180);
        let n: i64 = db
            .read(|c| {
                c.query_row("SELECT count(*) FROM t", [], |r| r.get(0))
                    .map_err(db_err)
            })
            .await
            .unwrap();
        assert_eq!(n, 180, "failed jobs left nothing, the others all committed");
        let panicked = db
            .write(|_c| -> Result<(), YunError> { panic!("job bug") })
            .await;
        assert!(panicked.is_err(), "a panicking job fails its caller");
        db.write(|c| c.execute("INSERT INTO t VALUES (1000)", []).map_err(db_err))
            .await
            .expect("the writer survives a panicking job");
    }
}
