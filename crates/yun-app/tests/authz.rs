//! Every operation, called for real on an `App` with every kind of caller, against the
//! matrix declared here. A new `Operation` fails this test until it has a row in
//! `MATRIX` and an arm in `call` (an exhaustive match: it does not compile without one).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::json;
use yun_app::{
    App, AppSettings, Caller, CallerContext, DeployRequest, Identity, LogFilter, Operation,
    Recorder, RulesTarget, Stores, UsageQuery, UserQuery, UserSession,
};
use yun_docdb::filter::Filter;
use yun_docdb::find::{Projection, SortKeys};
use yun_docdb::index::IndexSpec;
use yun_docdb::{Change, DocDb, Find, Limits};
use yun_functions::{install_bootstrap, Runtime, RuntimeConfig, Sandbox, SpawnConfig};
use yun_storage::{ObjectBackend, Storage, StorageLimits};
use yun_store_sqlite::{
    SqliteBus, SqliteDocStore, SqliteFileIndex, SqliteMetaStore, SqliteUserStore,
};
use yun_types::{EnvId, ErrorCode, FunctionName, YunError};
use yun_users::Users;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    PlatformKey,
    EnvKey,
    Function,
    User,
    Anonymous,
}

const KINDS: [Kind; 5] = [
    Kind::PlatformKey,
    Kind::EnvKey,
    Kind::Function,
    Kind::User,
    Kind::Anonymous,
];

/// Who may run each operation: platform-level, management, data without rules, SDK
/// calls that end users make under rules too, and the end users' own paths.
const PLATFORM: &[Kind] = &[Kind::PlatformKey];
const ADMIN: &[Kind] = &[Kind::PlatformKey, Kind::EnvKey];
const SERVER: &[Kind] = &[Kind::PlatformKey, Kind::EnvKey, Kind::Function];
const SIGNED_IN: &[Kind] = &[Kind::PlatformKey, Kind::EnvKey, Kind::Function, Kind::User];
const END_USER: &[Kind] = &[Kind::User];

const MATRIX: &[(Operation, &[Kind])] = &[
    (Operation::CreateEnv, PLATFORM),
    (Operation::DeleteEnv, PLATFORM),
    (Operation::ListEnvs, ADMIN),
    (Operation::GetEnvSettings, ADMIN),
    (Operation::PutEnvSettings, ADMIN),
    (Operation::CreateKey, ADMIN),
    (Operation::ListKeys, ADMIN),
    (Operation::RevokeKey, ADMIN),
    (Operation::ShowOwnKey, PLATFORM),
    (Operation::DeployFunction, ADMIN),
    (Operation::ListFunctions, ADMIN),
    (Operation::GetFunction, ADMIN),
    (Operation::DeleteFunction, ADMIN),
    (Operation::InvokeFunction, SIGNED_IN),
    (Operation::InvokeFunctionAsync, SERVER),
    (Operation::ListDeadLetters, ADMIN),
    (Operation::ReplayDeadLetters, ADMIN),
    (Operation::PurgeDeadLetters, ADMIN),
    (Operation::ManageTriggers, ADMIN),
    (Operation::ListTriggers, ADMIN),
    (Operation::ReadLogs, ADMIN),
    (Operation::ListInvocations, ADMIN),
    (Operation::GetInvocation, ADMIN),
    (Operation::ReadUsage, ADMIN),
    (Operation::ManageAlerts, ADMIN),
    (Operation::ListAlerts, ADMIN),
    (Operation::ManageBackups, PLATFORM),
    (Operation::TransferEnv, PLATFORM),
    (Operation::ReadMetrics, PLATFORM),
    (Operation::CreateCollection, SERVER),
    (Operation::ListCollections, SERVER),
    (Operation::InsertDocuments, SERVER),
    (Operation::FindDocuments, SERVER),
    (Operation::CountDocuments, SERVER),
    (Operation::UpdateDocuments, SERVER),
    (Operation::AggregateDocuments, SERVER),
    (Operation::RemoveDocuments, SERVER),
    (Operation::StartTransaction, SERVER),
    (Operation::CommitTransaction, SERVER),
    (Operation::AbortTransaction, SERVER),
    (Operation::TransactionFind, SERVER),
    (Operation::TransactionInsert, SERVER),
    (Operation::TransactionUpdate, SERVER),
    (Operation::TransactionRemove, SERVER),
    (Operation::ImportDocuments, ADMIN),
    (Operation::DropCollection, ADMIN),
    (Operation::CreateIndex, ADMIN),
    (Operation::ListIndexes, ADMIN),
    (Operation::DropIndex, ADMIN),
    (Operation::UserFind, END_USER),
    (Operation::UserAggregate, END_USER),
    (Operation::UserCount, END_USER),
    (Operation::UserInsert, END_USER),
    (Operation::UserUpdate, END_USER),
    (Operation::UserRemove, END_USER),
    (Operation::GetRules, ADMIN),
    (Operation::SetRules, ADMIN),
    (Operation::FileAuthority, SIGNED_IN),
    (Operation::UploadTarget, SIGNED_IN),
    (Operation::TempUrls, SIGNED_IN),
    (Operation::DeleteFiles, SIGNED_IN),
    (Operation::CopyFiles, SIGNED_IN),
    (Operation::FileUrl, ADMIN),
    (Operation::ListFiles, ADMIN),
    (Operation::PutFile, ADMIN),
    (Operation::StatFile, ADMIN),
    (Operation::DeleteFile, ADMIN),
    (Operation::ListUsers, ADMIN),
    (Operation::GetUser, ADMIN),
    (Operation::SetUserDisabled, ADMIN),
    (Operation::DeleteUser, ADMIN),
    (Operation::CreateTicketKey, ADMIN),
    (Operation::ListTicketKeys, ADMIN),
    (Operation::DeleteTicketKey, ADMIN),
    (Operation::RotateUserKey, ADMIN),
    (Operation::SignOut, END_USER),
    (Operation::Sudo, END_USER),
    (Operation::SetPassword, END_USER),
];

async fn start_app(dir: &std::path::Path) -> App {
    let meta: Arc<dyn yun_meta::MetaStore> =
        Arc::new(SqliteMetaStore::open(&dir.join("yun.db")).expect("meta store"));
    let docs = Arc::new(SqliteDocStore::open(&dir.join("documents.db")).expect("doc store"));
    let storage = Arc::new(
        Storage::new(
            &ObjectBackend::Local(dir.join("files")),
            Arc::new(SqliteFileIndex::open(&dir.join("files.db")).expect("file index")),
            StorageLimits::default(),
        )
        .expect("storage"),
    );
    let users = Arc::new(Users::new(Arc::new(
        SqliteUserStore::open(&dir.join("users.db")).expect("user store"),
    )));
    let recorder = Recorder::start(meta.clone(), None);
    // No stem cells: nothing here runs a function, so no instance is ever started.
    let runtime = Runtime::start(
        RuntimeConfig {
            spawn: SpawnConfig {
                node: "node".into(),
                bootstrap: install_bootstrap(&dir.join("runtime")).expect("bootstrap"),
                layer_dir: None,
                run_as: None,
                sandbox: Arc::new(Sandbox::HeapFlagOnly { why: "test".into() }),
                isolation: None,
            },
            stem_cells: 0,
            default_memory_mb: 256,
            idle_timeout: Duration::from_secs(60),
            queue_timeout: Duration::from_secs(1),
            output_limit: 1 << 20,
            layer: yun_functions::layer_ready(),
            log_limit: 1 << 20,
            public_url: None,
        },
        recorder.log_sender(),
    );
    App::new(
        Stores {
            meta,
            docdb: Arc::new(DocDb::new(docs, Limits::default())),
            storage,
            users,
            events: Arc::new(SqliteBus::open(&dir.join("events.db")).unwrap()),
            backups: None,
        },
        runtime,
        recorder,
        AppSettings {
            public_url: "http://127.0.0.1:1".into(),
            node_url: "http://127.0.0.1:1".into(),
            functions_dir: dir.join("functions"),
            npm: "npm".into(),
            npm_cache: dir.join("npm-cache"),
            region: "ap-shanghai".into(),
            tracing: true,
            trace_sample_ratio: 1.0,
            shared_packages: false,
        },
    )
    .await
    .expect("app")
}

fn name(s: &str) -> FunctionName {
    FunctionName::parse(s).expect("function name")
}

fn everything() -> Filter {
    Filter::parse(&json!({})).expect("filter")
}

fn set_n() -> Change {
    Change::Operators(json!({ "$set": { "n": 1 } }))
}

fn user_query() -> UserQuery {
    UserQuery {
        query: json!({ "_id": "x" }),
        order: SortKeys::default(),
        skip: 0,
        limit: None,
        projection: Projection::All,
    }
}

fn one_byte() -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Unpin + Send {
    futures_util::stream::iter([Ok(Bytes::from_static(b"x"))])
}

/// Runs `op` as `who`, with arguments that need nothing else set up; only whether it
/// was refused matters, so results are dropped.
async fn call(
    app: &App,
    op: Operation,
    who: &Identity,
    session: &UserSession,
) -> Result<(), YunError> {
    let session = &UserSession {
        identity: who.clone(),
        ..session.clone()
    };
    let col = "todos";
    let txn = "no-such-transaction";
    match op {
        Operation::CreateEnv => app
            .create_env(who, &EnvId::parse("made").expect("env"))
            .await
            .map(drop),
        Operation::DeleteEnv => {
            app.delete_env(who, &EnvId::parse("gone").expect("env"))
                .await
        }
        Operation::ListEnvs => app.list_envs(who).await.map(drop),
        Operation::GetEnvSettings => app.env_settings_of(who).await.map(drop),
        Operation::PutEnvSettings => app
            .put_env_settings(who, Default::default())
            .await
            .map(drop),
        Operation::CreateKey => app.create_key(who, "test").await.map(drop),
        Operation::ListKeys => app.list_keys(who).await.map(drop),
        Operation::RevokeKey => app.revoke_key(who, "AKIDnone").await,
        Operation::ShowOwnKey => app.own_key(who, false).await.map(drop),
        Operation::DeployFunction => app
            .deploy(who, &name("f"), DeployRequest::default())
            .await
            .map(drop),
        Operation::ListFunctions => app.list_functions(who).await.map(drop),
        Operation::GetFunction => app.get_function(who, &name("f")).await.map(drop),
        Operation::DeleteFunction => app.delete_function(who, &name("f")).await,
        Operation::InvokeFunction => app
            .invoke(who, &name("f"), String::new(), &CallerContext::default())
            .await
            .map(drop),
        Operation::InvokeFunctionAsync => app
            .invoke_async(who, &name("f"), String::new(), &CallerContext::default())
            .await
            .map(drop),
        Operation::ListDeadLetters => app.dead_letters(who, &name("f"), None).await.map(drop),
        Operation::ReplayDeadLetters => app
            .replay_dead_letters(who, &name("f"), None)
            .await
            .map(drop),
        Operation::PurgeDeadLetters => app
            .purge_dead_letters(who, &name("f"), None)
            .await
            .map(drop),
        Operation::ManageTriggers => app.delete_trigger(who, &name("f"), "t").await,
        Operation::ListTriggers => app.list_triggers(who, None).await.map(drop),
        Operation::ReadLogs => app.logs(who, None, LogFilter::default()).await.map(drop),
        Operation::ListInvocations => app.invocations(who, None, 10).await.map(drop),
        Operation::GetInvocation => app.invocation(who, "none").await.map(drop),
        Operation::ReadUsage => app.usage(who, UsageQuery::default()).await.map(drop),
        Operation::ManageAlerts => app.delete_alert(who, "none").await,
        Operation::ListAlerts => app.list_alerts(who).await.map(drop),
        Operation::ManageBackups => app.list_backups(who).await.map(drop),
        Operation::TransferEnv => app.export_env(who, &who.env).await.map(drop),
        Operation::ReadMetrics => app.metrics_text(who).await.map(drop),
        Operation::CreateCollection => app.db_create_collection(who, col).await,
        Operation::ListCollections => app.db_list_collections(who).await.map(drop),
        Operation::InsertDocuments => app
            .db_insert(who, col, vec![json!({ "n": 0 })])
            .await
            .map(drop),
        Operation::FindDocuments => app
            .db_find(
                who,
                col,
                Find {
                    filter: everything(),
                    order: SortKeys::default(),
                    skip: 0,
                    limit: None,
                    projection: Projection::All,
                },
            )
            .await
            .map(drop),
        Operation::CountDocuments => app.db_count(who, col, everything()).await.map(drop),
        Operation::UpdateDocuments => app
            .db_update(who, col, everything(), set_n(), false, None)
            .await
            .map(drop),
        Operation::AggregateDocuments => app.db_aggregate(who, col, vec![]).await.map(drop),
        Operation::RemoveDocuments => app.db_remove(who, col, everything(), false).await.map(drop),
        Operation::StartTransaction => app.db_start_transaction(who).await.map(drop),
        Operation::CommitTransaction => app.db_commit_transaction(who, txn).await,
        Operation::AbortTransaction => app.db_abort_transaction(who, txn).await,
        Operation::TransactionFind => app
            .db_txn_find(who, txn, col, &everything(), &Projection::All)
            .await
            .map(drop),
        Operation::TransactionInsert => app
            .db_txn_insert(who, txn, col, vec![json!({})])
            .await
            .map(drop),
        Operation::TransactionUpdate => app
            .db_txn_update(who, txn, col, &everything(), &set_n(), None)
            .await
            .map(drop),
        Operation::TransactionRemove => app
            .db_txn_remove(who, txn, col, &everything())
            .await
            .map(drop),
        Operation::ImportDocuments => app.db_import(who, col, vec![], false).await.map(drop),
        Operation::DropCollection => app.db_drop_collection(who, "nosuch").await,
        Operation::CreateIndex => {
            let spec = IndexSpec {
                name: "by_n".into(),
                fields: vec![],
                unique: false,
                multikey: false,
            };
            app.db_create_index(who, col, spec).await
        }
        Operation::ListIndexes => app.db_list_indexes(who, col).await.map(drop),
        Operation::DropIndex => app.db_drop_index(who, col, "nosuch").await,
        Operation::UserFind => app.user_find(who, col, user_query()).await.map(drop),
        Operation::UserAggregate => app.user_aggregate(who, col, vec![]).await.map(drop),
        Operation::UserCount => app
            .user_count(who, col, json!({ "_id": "x" }))
            .await
            .map(drop),
        Operation::UserInsert => app.user_insert(who, col, vec![json!({})]).await.map(drop),
        Operation::UserUpdate => app
            .user_update(who, col, json!({ "_id": "x" }), set_n(), false, false)
            .await
            .map(drop),
        Operation::UserRemove => app
            .user_remove(who, col, json!({ "_id": "x" }), false)
            .await
            .map(drop),
        Operation::GetRules => app
            .get_rules(who, &RulesTarget::Collection(col.into()))
            .await
            .map(drop),
        Operation::SetRules => app
            .set_rules(who, &RulesTarget::Storage, None)
            .await
            .map(drop),
        Operation::FileAuthority => app.file_authority(who, "a.txt").await.map(drop),
        Operation::UploadTarget => app.upload_target(who, "a.txt").await.map(drop),
        Operation::TempUrls => app
            .temp_urls(who, vec![("cloud://dev.dev-yun/a.txt".into(), None)])
            .await
            .map(drop),
        Operation::DeleteFiles => app
            .delete_files(who, vec!["cloud://dev.dev-yun/none.txt".into()])
            .await
            .map(drop),
        Operation::CopyFiles => app
            .copy_files(who, vec![("a.txt".into(), "b.txt".into(), true, false)])
            .await
            .map(drop),
        Operation::FileUrl => app.file_url(who, "a.txt", None).await.map(drop),
        Operation::ListFiles => app.list_files(who, "", "", 10).await.map(drop),
        Operation::PutFile => app.put_file(who, "a.txt", None, one_byte()).await.map(drop),
        Operation::StatFile => app.stat_file(who, "a.txt").await.map(drop),
        Operation::DeleteFile => app.delete_file(who, "none.txt").await,
        Operation::ListUsers => app.list_users(who, "", 10).await.map(drop),
        Operation::GetUser => app.get_user(who, "none").await.map(drop),
        Operation::SetUserDisabled => app.set_user_disabled(who, "none", true).await,
        Operation::DeleteUser => app.delete_user(who, "none").await,
        Operation::CreateTicketKey => app.create_ticket_key(who).await.map(drop),
        Operation::ListTicketKeys => app.list_ticket_keys(who).await.map(drop),
        Operation::DeleteTicketKey => app.delete_ticket_key(who, "none").await,
        Operation::RotateUserKey => app.rotate_user_key(who).await,
        Operation::SignOut => app.sign_out(session).await,
        Operation::Sudo => app.sudo(session, "password").await.map(drop),
        Operation::SetPassword => {
            app.set_password(session, "not-a-sudo-token", "new password")
                .await
        }
    }
}

#[test]
fn the_matrix_lists_every_operation_once() {
    for op in Operation::ALL {
        let rows = MATRIX.iter().filter(|(o, _)| o == op).count();
        assert_eq!(rows, 1, "{op:?} has {rows} rows in MATRIX");
    }
    assert_eq!(MATRIX.len(), Operation::ALL.len());
    // Anonymous callers run no operation (public HTTP functions are served by route),
    // so each row refuses someone and the test below sees every method's guard at work.
    for (op, allowed) in MATRIX {
        assert!(!allowed.contains(&Kind::Anonymous), "{op:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_checks_its_capability() {
    let dir = tempfile::tempdir().expect("temp dir");
    let app = start_app(dir.path()).await;
    let env = EnvId::parse("dev").expect("env");
    let platform = app
        .initialize(&env, None)
        .await
        .expect("initialize")
        .expect("first start");
    let signed_in = app.sign_in_anonymously(&env).await.expect("sign in");
    let session = app
        .authenticate_token(&signed_in.access_token, Some(&env))
        .await
        .expect("token");
    let identity = |kind: Kind| Identity {
        env: env.clone(),
        caller: match kind {
            Kind::PlatformKey => Caller::PlatformKey {
                secret_id: platform.secret_id.clone(),
            },
            Kind::EnvKey => Caller::EnvKey {
                secret_id: "AKIDenv".into(),
            },
            Kind::Function => Caller::Function {
                name: name("caller"),
            },
            Kind::User => session.identity.caller.clone(),
            Kind::Anonymous => Caller::Anonymous,
        },
    };

    let mut wrong = Vec::new();
    for (op, allowed) in MATRIX {
        for kind in KINDS {
            let outcome = call(&app, *op, &identity(kind), &session).await;
            let refusal = match &outcome {
                Err(e) if e.code == ErrorCode::PermissionDenied => Some(e),
                _ => None,
            };
            if refusal.is_some() == allowed.contains(&kind) {
                wrong.push(format!(
                    "{op:?} as {kind:?}: expected {}, got {outcome:?}",
                    if refusal.is_some() {
                        "allowed"
                    } else {
                        "refused"
                    }
                ));
            } else if let Some(e) = refusal {
                // The refusal must come from this operation's own guard.
                if !e.message.starts_with(&format!("{op:?} needs ")) {
                    wrong.push(format!("{op:?} as {kind:?}: refused by {:?}", e.message));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
