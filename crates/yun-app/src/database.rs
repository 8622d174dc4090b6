//! Database use-cases without security rules, for keys and functions (end users go
//! through `user_db.rs`): every call acts in the caller's env. The operations and their
//! semantics live in `yun-docdb`; this layer decides who may call.

use std::time::Duration;

use serde_json::Value;
use yun_auth::{Caller, Identity};
use yun_docdb::filter::Filter;
use yun_docdb::find::Projection;
use yun_docdb::index::IndexSpec;
use yun_docdb::{written_by, Change, Find, Limits, UpdateMode, Updated};
use yun_types::YunError;

use crate::{App, Operation};

impl App {
    pub async fn db_create_collection(
        &self,
        identity: &Identity,
        name: &str,
    ) -> Result<(), YunError> {
        let _op = self.db_operation(identity, Operation::CreateCollection)?;
        self.docdb.create_collection(&identity.env, name).await
    }

    pub async fn db_list_collections(&self, identity: &Identity) -> Result<Vec<String>, YunError> {
        let _op = self.db_operation(identity, Operation::ListCollections)?;
        self.docdb.list_collections(&identity.env).await
    }

    /// The env's query limits: the platform's, as the env's settings override them.
    pub(crate) async fn env_limits(&self, identity: &Identity) -> Result<Limits, YunError> {
        let settings = self.env_settings(&identity.env).await?;
        let base = self.docdb.limits();
        Ok(Limits {
            default_limit: settings
                .db_default_limit
                .map_or(base.default_limit, |n| n as usize),
            max_limit: settings.db_max_limit.map_or(base.max_limit, |n| n as usize),
            slow_query: settings
                .db_slow_query_ms
                .map_or(base.slow_query, |ms| Duration::from_millis(ms.into())),
            ..base
        })
    }

    pub async fn db_insert(
        &self,
        identity: &Identity,
        collection: &str,
        docs: Vec<Value>,
    ) -> Result<Vec<String>, YunError> {
        let _op = self.db_operation(identity, Operation::InsertDocuments)?;
        written_by(
            writer(identity),
            self.docdb
                .insert(&identity.env, collection, docs, None, None),
        )
        .await
    }

    pub async fn db_find(
        &self,
        identity: &Identity,
        collection: &str,
        find: Find,
    ) -> Result<Vec<Value>, YunError> {
        let _op = self.db_operation(identity, Operation::FindDocuments)?;
        let limits = self.env_limits(identity).await?;
        self.docdb
            .find(&identity.env, collection, find, &limits)
            .await
    }

    pub async fn db_count(
        &self,
        identity: &Identity,
        collection: &str,
        filter: Filter,
    ) -> Result<u64, YunError> {
        let _op = self.db_operation(identity, Operation::CountDocuments)?;
        let limits = self.env_limits(identity).await?;
        self.docdb
            .count(&identity.env, collection, filter, &limits)
            .await
    }

    /// Runs a find and reports its plan and cost (`yun db explain`).
    pub async fn db_explain(
        &self,
        identity: &Identity,
        collection: &str,
        find: Find,
    ) -> Result<yun_docdb::slow::QueryReport, YunError> {
        let _op = self.db_operation(identity, Operation::FindDocuments)?;
        let limits = self.env_limits(identity).await?;
        self.docdb
            .explain(&identity.env, collection, find, &limits)
            .await
    }

    /// The env's slow queries, newest first: shapes and plans, no values.
    pub fn db_slow_queries(
        &self,
        identity: &Identity,
    ) -> Result<Vec<yun_docdb::slow::QueryReport>, YunError> {
        let _op = self.db_operation(identity, Operation::FindDocuments)?;
        Ok(self.docdb.slow_queries(&identity.env))
    }

    pub async fn db_update(
        &self,
        identity: &Identity,
        collection: &str,
        filter: Filter,
        change: Change,
        multi: bool,
        upsert: Option<Value>,
    ) -> Result<(Updated, Vec<Value>), YunError> {
        let _op = self.db_operation(identity, Operation::UpdateDocuments)?;
        let update = self.docdb.update(
            &identity.env,
            collection,
            filter,
            change,
            UpdateMode {
                multi,
                upsert,
                ..Default::default()
            },
        );
        written_by(writer(identity), update).await
    }

    pub async fn db_aggregate(
        &self,
        identity: &Identity,
        collection: &str,
        stages: Vec<yun_docdb::aggregate::Stage>,
    ) -> Result<Vec<Value>, YunError> {
        let _op = self.db_operation(identity, Operation::AggregateDocuments)?;
        self.docdb
            .aggregate(&identity.env, collection, stages)
            .await
    }

    pub async fn db_remove(
        &self,
        identity: &Identity,
        collection: &str,
        filter: Filter,
        multi: bool,
    ) -> Result<u64, YunError> {
        let _op = self.db_operation(identity, Operation::RemoveDocuments)?;
        written_by(
            writer(identity),
            self.docdb
                .remove(&identity.env, collection, filter, multi, None),
        )
        .await
    }
}

/// Whose writes these are in the change log: a function's code is named, so that its
/// own triggers do not fire on them (`events::changes`).
fn writer(identity: &Identity) -> Option<&str> {
    match &identity.caller {
        Caller::Function { name } => Some(name.as_str()),
        _ => None,
    }
}

/// Transactions: bound to the caller's env; another env's transaction id is unknown here.
impl App {
    pub async fn db_start_transaction(&self, identity: &Identity) -> Result<String, YunError> {
        let _op = self.db_operation(identity, Operation::StartTransaction)?;
        self.docdb.start_transaction(&identity.env).await
    }

    pub async fn db_commit_transaction(
        &self,
        identity: &Identity,
        txn: &str,
    ) -> Result<(), YunError> {
        let _op = self.db_operation(identity, Operation::CommitTransaction)?;
        written_by(
            writer(identity),
            self.docdb.commit_transaction(&identity.env, txn),
        )
        .await
    }

    pub async fn db_abort_transaction(
        &self,
        identity: &Identity,
        txn: &str,
    ) -> Result<(), YunError> {
        let _op = self.db_operation(identity, Operation::AbortTransaction)?;
        self.docdb.abort_transaction(&identity.env, txn).await
    }

    pub async fn db_txn_find(
        &self,
        identity: &Identity,
        txn: &str,
        collection: &str,
        filter: &Filter,
        projection: &Projection,
    ) -> Result<Vec<Value>, YunError> {
        let _op = self.db_operation(identity, Operation::TransactionFind)?;
        self.docdb
            .txn_find(&identity.env, txn, collection, filter, projection)
            .await
    }

    pub async fn db_txn_insert(
        &self,
        identity: &Identity,
        txn: &str,
        collection: &str,
        docs: Vec<Value>,
    ) -> Result<Vec<String>, YunError> {
        let _op = self.db_operation(identity, Operation::TransactionInsert)?;
        self.docdb
            .txn_insert(&identity.env, txn, collection, docs)
            .await
    }

    pub async fn db_txn_update(
        &self,
        identity: &Identity,
        txn: &str,
        collection: &str,
        filter: &Filter,
        change: &Change,
        upsert: Option<Value>,
    ) -> Result<Updated, YunError> {
        let _op = self.db_operation(identity, Operation::TransactionUpdate)?;
        self.docdb
            .txn_update(&identity.env, txn, collection, filter, change, upsert)
            .await
    }

    pub async fn db_txn_remove(
        &self,
        identity: &Identity,
        txn: &str,
        collection: &str,
        filter: &Filter,
    ) -> Result<u64, YunError> {
        let _op = self.db_operation(identity, Operation::TransactionRemove)?;
        self.docdb
            .txn_remove(&identity.env, txn, collection, filter)
            .await
    }
}

/// Collections and indexes (management API and CLI).
impl App {
    pub async fn db_import(
        &self,
        identity: &Identity,
        collection: &str,
        docs: Vec<Value>,
        upsert: bool,
    ) -> Result<(u64, u64), YunError> {
        let _op = self.db_operation(identity, Operation::ImportDocuments)?;
        self.docdb
            .import(&identity.env, collection, docs, upsert)
            .await
    }

    pub async fn db_drop_collection(
        &self,
        identity: &Identity,
        name: &str,
    ) -> Result<(), YunError> {
        let _op = self.db_operation(identity, Operation::DropCollection)?;
        self.docdb.drop_collection(&identity.env, name).await
    }

    pub async fn db_create_index(
        &self,
        identity: &Identity,
        collection: &str,
        spec: IndexSpec,
    ) -> Result<(), YunError> {
        let _op = self.db_operation(identity, Operation::CreateIndex)?;
        self.docdb
            .create_index(&identity.env, collection, spec)
            .await
    }

    pub async fn db_list_indexes(
        &self,
        identity: &Identity,
        collection: &str,
    ) -> Result<Vec<IndexSpec>, YunError> {
        let _op = self.db_operation(identity, Operation::ListIndexes)?;
        self.docdb.list_indexes(&identity.env, collection).await
    }

    pub async fn db_drop_index(
        &self,
        identity: &Identity,
        collection: &str,
        name: &str,
    ) -> Result<(), YunError> {
        let _op = self.db_operation(identity, Operation::DropIndex)?;
        self.docdb.drop_index(&identity.env, collection, name).await
    }
}
