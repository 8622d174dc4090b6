//! The change log's model, shared by the stores that keep one (documents, the file
//! index): each write appends `(seq, env, target, op, key, before, after, time)` in its
//! own transaction (an outbox), with the function whose code wrote, if one did. The
//! trigger dispatchers read it; the SQLite form is `yun_store_sqlite::changelog`.

use std::cell::RefCell;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::YunError;

/// A change as a write records it.
pub struct NewChange<'a> {
    /// A collection for documents; empty for files.
    pub target: &'a str,
    /// What happened (`create`, `update`, `delete`, `drop`; files: `created`, `removed`).
    pub op: &'a str,
    /// A document's `_id`, a file's path.
    pub key: &'a str,
    /// JSON text of the thing before and after.
    pub before: Option<&'a str>,
    pub after: Option<&'a str>,
}

/// An entry of a change log. `seq` grows with every commit across all envs and is
/// never reused (retention keeps the newest entry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeEntry {
    pub seq: u64,
    pub env: String,
    /// The function whose code wrote, if one did.
    pub origin: Option<String>,
    /// The invocation whose code wrote (`request_id`, then a space and its
    /// `traceparent` when traced), if one did over its instance's channel.
    pub cause: Option<String>,
    pub target: String,
    pub op: String,
    pub key: String,
    pub before: Option<String>,
    pub after: Option<String>,
    /// Commit time, Unix milliseconds.
    pub at_ms: i64,
}

/// Reading and keeping a change log: what a store that keeps one offers its readers.
#[async_trait::async_trait]
pub trait ChangeLog: Send + Sync {
    /// Entries of every env past `after`, in `seq` order, at most `limit`.
    async fn changes_after(&self, after: u64, limit: usize) -> Result<Vec<ChangeEntry>, YunError>;
    /// The newest entry's `seq` (0 when the log is empty).
    async fn last_change(&self) -> Result<u64, YunError>;
    /// Drops entries past `retention`, only ones below `below` (what every reader has
    /// passed), never the newest. Returns how many went.
    async fn prune_changes(&self, retention: ChangeRetention, below: u64) -> Result<u64, YunError>;
    /// A named reader's position; `None` before its first save.
    async fn change_cursor(&self, name: &str) -> Result<Option<u64>, YunError>;
    async fn save_change_cursor(&self, name: &str, seq: u64) -> Result<(), YunError>;
}

/// How long a change log keeps entries, per env.
#[derive(Debug, Clone, Copy)]
pub struct ChangeRetention {
    pub max_age: Duration,
    /// The before and after texts, summed.
    pub max_bytes: u64,
}

impl Default for ChangeRetention {
    /// A week, or 256 MiB per env, whichever is less.
    fn default() -> Self {
        Self {
            max_age: Duration::from_secs(7 * 24 * 3600),
            max_bytes: 256 << 20,
        }
    }
}

tokio::task_local! {
    static CALLER: Option<Arc<str>>;
    static CAUSE: Option<Arc<str>>;
}

/// Who a write is by: the function whose code wrote, and the invocation (see
/// [`ChangeEntry::cause`]).
#[derive(Debug, Clone, Default)]
pub struct Origin {
    pub function: Option<Arc<str>>,
    pub cause: Option<Arc<str>>,
}

thread_local! {
    static WRITING: RefCell<Origin> = RefCell::new(Origin::default());
}

/// Runs `f` with its writes attributed to `origin` (a function's name), so that the
/// function's own triggers do not fire on them (the loop guard).
pub async fn written_by<F: Future>(origin: Option<&str>, f: F) -> F::Output {
    CALLER.scope(origin.map(Arc::from), f).await
}

/// Runs `f` with its writes attributed to the invocation `cause` (`request_id`, then
/// optionally a space and a `traceparent`): what they trigger links back to it.
pub async fn caused_by<F: Future>(cause: Option<String>, f: F) -> F::Output {
    CAUSE.scope(cause.map(Arc::from), f).await
}

/// The origin of the current task's writes; a store takes it before handing its write
/// to another thread, and runs the write [`during`] it.
pub fn origin() -> Origin {
    Origin {
        function: CALLER.try_with(Clone::clone).ok().flatten(),
        cause: CAUSE.try_with(Clone::clone).ok().flatten(),
    }
}

/// Runs `f` on this thread with `origin` as the writer, then restores the one before
/// (also when `f` panics: the writer thread catches panics and goes on).
pub fn during<T>(origin: Origin, f: impl FnOnce() -> T) -> T {
    struct Restore(Origin);
    impl Drop for Restore {
        fn drop(&mut self) {
            let before = std::mem::take(&mut self.0);
            WRITING.with(|w| *w.borrow_mut() = before);
        }
    }
    let _restore = Restore(WRITING.with(|w| w.replace(origin)));
    f()
}

/// The writer of the write running on this thread.
pub fn writing() -> Origin {
    WRITING.with(|w| w.borrow().clone())
}
