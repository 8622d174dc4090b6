//! The storage seam. A backend stores JSON documents by (env, collection, `_id`) and
//! runs a caller's closure inside one transaction, so a read-modify-write (an update,
//! an upsert) is atomic. Queries, updates and ordering live above this trait, once.

use async_trait::async_trait;
use serde_json::Value;
use yun_types::{EnvId, YunError};

use crate::index::{IndexSpec, KeyRange};
pub use yun_types::changes::{ChangeEntry, ChangeLog, ChangeRetention, NewChange};

/// A streaming visitor: gets an entry's first part (a document's `_id`, or an index key)
/// and its second (the document's text, or the entry's `_id`); returns whether to go on.
pub type Visit<'v, K> = &'v mut dyn FnMut(&K, &str) -> Result<bool, YunError>;

/// Operations inside one transaction of one env. Called on a blocking thread: may block,
/// must not call back into async code.
pub trait DocTxn {
    fn collection_exists(&mut self, collection: &str) -> Result<bool, YunError>;
    /// Creates the collection; false when it already existed.
    fn create_collection(&mut self, collection: &str) -> Result<bool, YunError>;
    fn list_collections(&mut self) -> Result<Vec<String>, YunError>;
    /// Drops the collection and its documents; false when it did not exist.
    fn drop_collection(&mut self, collection: &str) -> Result<bool, YunError>;
    /// Streams the collection's documents in `_id` order as (`_id`, stored JSON text),
    /// from past `after` when given, until `visit` returns false. Nothing is decoded
    /// here: the executor decides how much of each document it needs.
    fn scan_each(
        &mut self,
        collection: &str,
        after: Option<&str>,
        visit: Visit<'_, str>,
    ) -> Result<(), YunError>;
    fn get(&mut self, collection: &str, id: &str) -> Result<Option<Value>, YunError>;
    /// How many documents the collection holds (a full count: callers cache it).
    fn count_documents(&mut self, collection: &str) -> Result<u64, YunError>;
    /// The stored JSON text of one document.
    fn get_text(&mut self, collection: &str, id: &str) -> Result<Option<String>, YunError>;
    /// The stored texts of `ids` (in their order; `None` for those missing). One point
    /// read each by default (cheap in process); a backend across a network reads them
    /// in one round trip.
    fn get_texts(
        &mut self,
        collection: &str,
        ids: &[String],
    ) -> Result<Vec<Option<String>>, YunError> {
        ids.iter().map(|id| self.get_text(collection, id)).collect()
    }
    /// The document and its version: a number that changes on every write to it.
    fn get_versioned(
        &mut self,
        collection: &str,
        id: &str,
    ) -> Result<Option<(Value, u64)>, YunError>;
    /// Inserts a new document (its stored JSON text); a duplicate `_id` is a
    /// `DuplicateKey` error.
    fn insert(&mut self, collection: &str, id: &str, text: &str) -> Result<(), YunError>;
    /// Replaces an existing document.
    fn replace(&mut self, collection: &str, id: &str, text: &str) -> Result<(), YunError>;
    fn delete(&mut self, collection: &str, id: &str) -> Result<bool, YunError>;
    /// Appends to the env's change log, in this transaction: the entry exists exactly
    /// when the write it records commits (an outbox).
    fn append_change(&mut self, change: &NewChange<'_>) -> Result<(), YunError>;

    fn list_indexes(&mut self, collection: &str) -> Result<Vec<IndexSpec>, YunError>;
    /// Records an index definition; false when the name is taken. Entries come separately.
    /// A backend with several writers holds the collection exclusively from here to the
    /// commit, so no write misses the index.
    fn create_index(&mut self, collection: &str, spec: &IndexSpec) -> Result<bool, YunError>;
    /// Drops an index and its entries; false when it did not exist.
    fn drop_index(&mut self, collection: &str, name: &str) -> Result<bool, YunError>;
    /// Records that the index has seen an array (its plans stop intersecting bounds).
    fn mark_multikey(&mut self, collection: &str, spec: &IndexSpec) -> Result<(), YunError>;
    fn put_index_keys(
        &mut self,
        collection: &str,
        index: &str,
        id: &str,
        keys: &[Vec<u8>],
    ) -> Result<(), YunError>;
    fn delete_index_keys(
        &mut self,
        collection: &str,
        index: &str,
        id: &str,
    ) -> Result<(), YunError>;
    /// Streams the index entries with a key in `range` as (key, `_id`), in key order
    /// (ties by `_id`), or the reverse of that with `backward`, until `visit` returns
    /// false; with `after`, only the entries past that one in this order (a resumed
    /// walk).
    fn index_each(
        &mut self,
        collection: &str,
        index: &str,
        range: &KeyRange,
        after: Option<(&[u8], &str)>,
        backward: bool,
        visit: Visit<'_, [u8]>,
    ) -> Result<(), YunError>;
    /// How many entries have a key in `range`.
    fn index_count(
        &mut self,
        collection: &str,
        index: &str,
        range: &KeyRange,
    ) -> Result<u64, YunError>;
    /// Whether a document other than `except_id` has `key` in the index.
    fn index_key_taken(
        &mut self,
        collection: &str,
        index: &str,
        key: &[u8],
        except_id: &str,
    ) -> Result<bool, YunError>;
}

/// What a write did to a document (a change log entry's `op`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeOp {
    Create,
    Update,
    Delete,
    /// The whole collection went (one entry, no document).
    Drop,
}

impl ChangeOp {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeOp::Create => "create",
            ChangeOp::Update => "update",
            ChangeOp::Delete => "delete",
            ChangeOp::Drop => "drop",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "create" => ChangeOp::Create,
            "update" => ChangeOp::Update,
            "delete" => ChangeOp::Delete,
            "drop" => ChangeOp::Drop,
            _ => return None,
        })
    }
}

/// How a unit of work touches the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Reads a few documents by key (or metadata): short enough to run on the caller's
    /// thread, which saves a thread hand-off that cost more than the read.
    Point,
    /// Reads an unknown amount (a scan, an index range): runs where it blocks nothing.
    Read,
    /// Writes a few documents by key: on the caller's thread when the store's writer is
    /// idle (no hand-off), else queued with the others.
    PointWrite,
    Write,
}

/// A unit of work: runs once inside a transaction; an `Err` rolls everything back.
pub type Work = Box<dyn FnOnce(&mut dyn DocTxn) -> Result<(), YunError> + Send>;

#[async_trait]
pub trait DocStore: Send + Sync + 'static {
    /// Runs `work` in a read-only snapshot of `env`; `point` says it is a bounded read
    /// (see [`Access::Point`]).
    async fn read(&self, env: &EnvId, point: bool, work: Work) -> Result<(), YunError>;
    /// Runs `work` in a write transaction of `env`; committed when it returns `Ok`.
    /// `point`: a short write ([`Access::PointWrite`]).
    async fn write(&self, env: &EnvId, point: bool, work: Work) -> Result<(), YunError>;
    /// Deletes every collection of the env.
    async fn drop_env(&self, env: &EnvId) -> Result<(), YunError> {
        self.write(
            env,
            false,
            Box::new(|txn| {
                for name in txn.list_collections()? {
                    txn.drop_collection(&name)?;
                }
                Ok(())
            }),
        )
        .await
    }

    /// The change log every write appends to (see [`DocTxn::append_change`]).
    fn change_log(&self) -> &dyn ChangeLog;

    /// Where transactions stay open between their requests.
    fn open_transactions(&self) -> &dyn crate::txn::OpenTransactions;
}

/// Runs a closure with a result through [`DocStore::read`] or [`DocStore::write`].
pub(crate) async fn run<T: Send + 'static>(
    store: &dyn DocStore,
    env: &EnvId,
    access: Access,
    f: impl FnOnce(&mut dyn DocTxn) -> Result<T, YunError> + Send + 'static,
) -> Result<T, YunError> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let origin = yun_types::changes::origin();
    let work: Work = Box::new(move |txn| {
        let value = yun_types::changes::during(origin, || f(txn))?;
        let _ = tx.send(value);
        Ok(())
    });
    match access {
        Access::Write => store.write(env, false, work).await?,
        Access::PointWrite => store.write(env, true, work).await?,
        Access::Point => store.read(env, true, work).await?,
        Access::Read => store.read(env, false, work).await?,
    }
    rx.try_recv()
        .map_err(|_| YunError::internal("document store finished without a result"))
}
