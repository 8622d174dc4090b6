//! The database as end users reach it (js-sdk through `/web`): every call is checked
//! against the collection's security rules.
//!
//! - Queries must provably stay within the read rule (`yun_rules::within`); a query for
//!   one `_id` is instead checked on the document it finds. Refused, never filtered.
//! - Writes are checked per document inside the write's transaction (`WriteGuard`), so
//!   a refused document aborts the whole write: `create` on new documents, `update` and
//!   `delete` on the stored ones. Multi-document updates and deletes must also stay
//!   within their rule, like reads.
//! - `_openid` is the user's: stamped on create, never changed by an end user.

use std::sync::Arc;

use serde_json::{Map, Value};
use yun_auth::Identity;
use yun_docdb::filter::Filter;
use yun_docdb::find::{Projection, SortKeys};
use yun_docdb::{Change, Find, UpdateMode, Updated, WriteGuard};
use yun_rules::{Auth, Context, Rule, RuleSet};
use yun_types::{ErrorCode, YunError};

use crate::rules::{end_user, rule_auth, RulesTarget};
use crate::{App, Operation};

/// A read as the js-sdk sends it; `query` is in stored form.
pub struct UserQuery {
    pub query: Value,
    pub order: SortKeys,
    pub skip: usize,
    pub limit: Option<usize>,
    pub projection: Projection,
}

const OWNER_FIELD: &str = "_openid";

fn denied(message: impl Into<String>) -> YunError {
    YunError::new(ErrorCode::DatabasePermissionDenied, message)
}

/// The `_id` a query names when it is exactly `{_id: x}` or `{_id: {$eq: x}}` (`doc(id)`).
fn single_id(query: &Value) -> Option<&Value> {
    let map = query.as_object().filter(|m| m.len() == 1)?;
    match map.get("_id")? {
        Value::Object(op) if op.len() == 1 => op.get("$eq"),
        Value::Object(_) => None,
        id => Some(id),
    }
}

struct Checker {
    rules: Arc<RuleSet>,
    auth: Auth,
    collection: String,
    now_ms: i64,
}

impl Checker {
    fn ctx<'a>(&'a self, doc: Option<&'a Value>, data: Option<&'a Value>) -> Context<'a> {
        Context {
            auth: Some(&self.auth),
            doc,
            request_data: data,
            resource: None,
            now_ms: self.now_ms,
        }
    }

    fn refuse(&self, what: &str) -> YunError {
        denied(format!(
            "{what} is not allowed by the security rules of collection {}",
            self.collection
        ))
    }

    /// Reads must stay within the read rule; a single `_id` is checked on its document.
    fn read_query(&self, query: &Value) -> Result<bool, YunError> {
        if single_id(query).is_some() {
            return Ok(true);
        }
        if yun_rules::within(&self.rules.read, query, &self.ctx(None, None)) {
            return Ok(false);
        }
        if self.rules.read == Rule::Const(false) {
            return Err(denied(format!(
                "collection {} is not readable by end users (admins only)",
                self.collection
            )));
        }
        Err(denied(format!(
            "the query is not within the read rule of collection {} ({}); add its conditions to the query, e.g. {{_openid: '{{openid}}'}}",
            self.collection,
            describe(&self.rules.read)
        )))
    }

    fn query_within(&self, rule: &Rule, query: &Value, what: &str) -> Result<(), YunError> {
        if single_id(query).is_some() || yun_rules::within(rule, query, &self.ctx(None, None)) {
            Ok(())
        } else {
            Err(self.refuse(&format!("this {what} query")))
        }
    }

    /// The guard for a write: `data` is what the user sent, as rules read `request.data`.
    fn guard(self: Arc<Self>, data: Value) -> WriteGuard {
        Arc::new(move |before, after| {
            match (before, after) {
                (None, Some(new)) => {
                    if new.get(OWNER_FIELD).and_then(Value::as_str) != Some(&self.auth.uid) {
                        return Err(self.refuse("a document owned by someone else"));
                    }
                    if !self.rules.create.allows(&self.ctx(Some(new), Some(&data))) {
                        return Err(self.refuse("creating this document"));
                    }
                }
                (Some(old), Some(new)) => {
                    if old.get(OWNER_FIELD) != new.get(OWNER_FIELD) {
                        return Err(denied("end users cannot change a document's _openid"));
                    }
                    if !self.rules.update.allows(&self.ctx(Some(old), Some(&data))) {
                        return Err(self.refuse("updating this document"));
                    }
                }
                (Some(old), None) => {
                    if !self.rules.delete.allows(&self.ctx(Some(old), Some(&data))) {
                        return Err(self.refuse("deleting this document"));
                    }
                }
                (None, None) => {}
            }
            Ok(())
        })
    }
}

fn describe(rule: &Rule) -> String {
    match rule {
        Rule::Const(b) => b.to_string(),
        Rule::Expr { source, .. } => source.clone(),
    }
}

/// Rejects a user-sent `_openid` that is not theirs (Yun stamps it).
fn check_sent_owner(doc: &Value, uid: &str) -> Result<(), YunError> {
    match doc.get(OWNER_FIELD) {
        None => Ok(()),
        Some(Value::String(s)) if s == uid => Ok(()),
        Some(_) => Err(denied("end users cannot set another user's _openid")),
    }
}

impl App {
    async fn checker(
        &self,
        identity: &Identity,
        collection: &str,
    ) -> Result<Arc<Checker>, YunError> {
        let user = end_user(identity)?;
        Ok(Arc::new(Checker {
            rules: self
                .rules_for(identity, &RulesTarget::Collection(collection.to_owned()))
                .await?,
            auth: rule_auth(user),
            collection: collection.to_owned(),
            now_ms: yun_types::unix_ms(),
        }))
    }

    pub async fn user_find(
        &self,
        identity: &Identity,
        collection: &str,
        q: UserQuery,
    ) -> Result<Vec<Value>, YunError> {
        let _op = self.db_operation(identity, Operation::UserFind)?;
        let checker = self.checker(identity, collection).await?;
        let per_document = checker.read_query(&q.query)?;
        let limits = self.env_limits(identity).await?;
        let find = Find {
            filter: Filter::parse(&q.query)?,
            order: q.order,
            skip: q.skip,
            limit: q.limit,
            // The rule reads the whole document; the projection applies after.
            projection: if per_document {
                Projection::All
            } else {
                q.projection.clone()
            },
        };
        let docs = self
            .docdb
            .find(&identity.env, collection, find, &limits)
            .await?;
        if !per_document {
            return Ok(docs);
        }
        docs.iter()
            .map(|doc| {
                if checker.rules.read.allows(&checker.ctx(Some(doc), None)) {
                    Ok(q.projection.apply(doc))
                } else {
                    Err(checker.refuse("reading this document"))
                }
            })
            .collect()
    }

    /// An aggregation pipeline (`(stage key, value)` in stored form). Its input must
    /// stay within the read rule: the first stage is a `$match` that provably does, or
    /// the rule is `true`. A `$lookup` joins documents no filter narrows, so its
    /// collection must be readable by everyone.
    pub async fn user_aggregate(
        &self,
        identity: &Identity,
        collection: &str,
        stages: Vec<(String, Value)>,
    ) -> Result<Vec<Value>, YunError> {
        let _op = self.db_operation(identity, Operation::UserAggregate)?;
        let checker = self.checker(identity, collection).await?;
        let ctx = checker.ctx(None, None);
        let input_ok = match stages.first() {
            Some((key, query)) if key == "$match" => {
                yun_rules::within(&checker.rules.read, query, &ctx)
            }
            _ => checker.rules.read == Rule::Const(true),
        };
        if !input_ok {
            return Err(denied(format!(
                "the pipeline must start with a $match within the read rule of collection {collection} ({})",
                describe(&checker.rules.read)
            )));
        }
        for (key, value) in &stages {
            if key != "$lookup" {
                continue;
            }
            let from = value
                .get("from")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let joined = self
                .rules_for(identity, &RulesTarget::Collection(from.to_owned()))
                .await?;
            if joined.read != Rule::Const(true) {
                return Err(denied(format!(
                    "$lookup from {from} needs that collection to be readable by everyone (read: true)"
                )));
            }
        }
        let stages = stages
            .iter()
            .map(|(key, value)| yun_docdb::aggregate::Stage::parse(key, value))
            .collect::<Result<Vec<_>, _>>()?;
        self.docdb
            .aggregate(&identity.env, collection, stages)
            .await
    }

    pub async fn user_count(
        &self,
        identity: &Identity,
        collection: &str,
        query: Value,
    ) -> Result<u64, YunError> {
        if single_id(&query).is_some() {
            // A find of one document, measured and billed as that find.
            Self::authorize(identity, Operation::UserCount)?;
            let found = self
                .user_find(
                    identity,
                    collection,
                    UserQuery {
                        query,
                        order: SortKeys::default(),
                        skip: 0,
                        limit: None,
                        projection: Projection::All,
                    },
                )
                .await?;
            return Ok(found.len() as u64);
        }
        let _op = self.db_operation(identity, Operation::UserCount)?;
        self.checker(identity, collection)
            .await?
            .read_query(&query)?;
        let limits = self.env_limits(identity).await?;
        self.docdb
            .count(&identity.env, collection, Filter::parse(&query)?, &limits)
            .await
    }

    pub async fn user_insert(
        &self,
        identity: &Identity,
        collection: &str,
        docs: Vec<Value>,
    ) -> Result<Vec<String>, YunError> {
        let _op = self.db_operation(identity, Operation::UserInsert)?;
        let checker = self.checker(identity, collection).await?;
        let uid = checker.auth.uid.clone();
        for doc in &docs {
            check_sent_owner(doc, &uid)?;
        }
        // `request.data` is the document as sent; a batch is checked document by document
        // against the stored form, which carries `_openid`.
        let data = match docs.as_slice() {
            [one] => one.clone(),
            _ => Value::Array(docs.clone()),
        };
        let guard = checker.guard(data);
        self.docdb
            .insert(&identity.env, collection, docs, Some(&uid), Some(guard))
            .await
    }

    /// `upsert` inserts (as the user) when nothing matches.
    pub async fn user_update(
        &self,
        identity: &Identity,
        collection: &str,
        query: Value,
        change: Change,
        multi: bool,
        upsert: bool,
    ) -> Result<Updated, YunError> {
        let _op = self.db_operation(identity, Operation::UserUpdate)?;
        let checker = self.checker(identity, collection).await?;
        checker.query_within(&checker.rules.update, &query, "update")?;
        let uid = checker.auth.uid.clone();
        let (change, data) = match change {
            Change::Replace(mut doc) => {
                check_sent_owner(&doc, &uid)?;
                let sent = doc.clone();
                if let Value::Object(map) = &mut doc {
                    map.insert(OWNER_FIELD.into(), Value::String(uid.clone()));
                }
                (Change::Replace(doc), sent)
            }
            Change::Operators(ops) => {
                let sent = ops.clone();
                (Change::Operators(ops), sent)
            }
        };
        let seed = upsert.then(|| {
            let mut seed = yun_docdb::filter::upsert_seed(&query);
            if let Value::Object(map) = &mut seed {
                map.insert(OWNER_FIELD.into(), Value::String(uid.clone()));
            } else {
                let mut map = Map::new();
                map.insert(OWNER_FIELD.into(), Value::String(uid.clone()));
                seed = Value::Object(map);
            }
            seed
        });
        let guard = checker.guard(data);
        let (outcome, _) = self
            .docdb
            .update(
                &identity.env,
                collection,
                Filter::parse(&query)?,
                change,
                UpdateMode {
                    multi,
                    upsert: seed,
                    guard: Some(guard),
                },
            )
            .await?;
        Ok(outcome)
    }

    pub async fn user_remove(
        &self,
        identity: &Identity,
        collection: &str,
        query: Value,
        multi: bool,
    ) -> Result<u64, YunError> {
        let _op = self.db_operation(identity, Operation::UserRemove)?;
        let checker = self.checker(identity, collection).await?;
        checker.query_within(&checker.rules.delete, &query, "delete")?;
        let guard = checker.guard(Value::Null);
        self.docdb
            .remove(
                &identity.env,
                collection,
                Filter::parse(&query)?,
                multi,
                Some(guard),
            )
            .await
    }
}
