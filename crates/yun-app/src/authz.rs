//! Authorization by capability. Every `App` operation that acts for a caller names the
//! [`Capability`] it needs ([`Operation::requires`]) and calls [`App::authorize`] first,
//! so a surface (or a new one: a console, a route) cannot reach an operation its caller
//! may not run by forgetting a check. Which env a caller may act in is decided earlier,
//! when the request is resolved to an [`Identity`] (`access.rs`).

use yun_auth::{Caller, Identity};
use yun_types::{ErrorCode, YunError};

use crate::App;

/// What a caller must be. CloudBase's split: platform keys own envs; an env's keys
/// manage it; server-side code (keys and the credential injected into a function) works
/// on data without security rules; end users work only under the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capability {
    /// A platform key: creating and deleting envs.
    Platform,
    /// A key of the env (or a platform key): managing the env.
    Admin,
    /// A key or a function's credential: data without security rules.
    Server,
    /// Server-side code, or an end user under the env's security rules.
    SignedIn,
    /// A signed-in end user: the rule-checked paths and their own account.
    EndUser,
}

impl Capability {
    pub fn allows(self, caller: &Caller) -> bool {
        use Capability as C;
        match caller {
            Caller::PlatformKey { .. } => match self {
                C::Platform | C::Admin | C::Server | C::SignedIn => true,
                C::EndUser => false,
            },
            Caller::EnvKey { .. } => match self {
                C::Admin | C::Server | C::SignedIn => true,
                C::Platform | C::EndUser => false,
            },
            Caller::Function { .. } => match self {
                C::Server | C::SignedIn => true,
                C::Platform | C::Admin | C::EndUser => false,
            },
            Caller::User(_) => match self {
                C::SignedIn | C::EndUser => true,
                C::Platform | C::Admin | C::Server => false,
            },
            // Public HTTP functions are served without an operation check: the route
            // table is what makes them public (`App::invoke_public_http`).
            Caller::Anonymous => match self {
                C::Platform | C::Admin | C::Server | C::SignedIn | C::EndUser => false,
            },
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Capability::Platform => "a platform key",
            Capability::Admin => "a key of the env",
            Capability::Server => "a key of the env or a function's credential",
            Capability::SignedIn => "a key, a function's credential or a signed-in user",
            Capability::EndUser => "a signed-in end user",
        }
    }
}

fn describe_caller(caller: &Caller) -> String {
    match caller {
        Caller::PlatformKey { .. } => "a platform key".into(),
        Caller::EnvKey { .. } => "an env key".into(),
        Caller::Function { name } => format!("the credential of function {name}"),
        Caller::User(_) => "an end user".into(),
        Caller::Anonymous => "an anonymous caller".into(),
    }
}

/// Declares the operations with what each requires, so that [`Operation::ALL`] and the
/// exhaustive match in [`Operation::requires`] cannot miss a variant.
macro_rules! operations {
    ($($operation:ident => $capability:ident,)*) => {
        /// Every `App` operation that acts for a caller.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Operation {
            $($operation,)*
        }

        impl Operation {
            /// Every operation, in declaration order.
            pub const ALL: &'static [Operation] = &[$(Operation::$operation,)*];

            pub fn requires(self) -> Capability {
                match self {
                    $(Operation::$operation => Capability::$capability,)*
                }
            }
        }
    };
}

operations! {
    // Envs and their keys.
    CreateEnv => Platform,
    DeleteEnv => Platform,
    ListEnvs => Admin,
    GetEnvSettings => Admin,
    PutEnvSettings => Admin,
    CreateKey => Admin,
    ListKeys => Admin,
    RevokeKey => Admin,
    ShowOwnKey => Platform,
    // Functions, their logs and invocation records.
    DeployFunction => Admin,
    ListFunctions => Admin,
    GetFunction => Admin,
    DeleteFunction => Admin,
    InvokeFunction => SignedIn,
    // Async events: server-side callers (end users' SDKs have no async call).
    InvokeFunctionAsync => Server,
    ListDeadLetters => Admin,
    ReplayDeadLetters => Admin,
    PurgeDeadLetters => Admin,
    ManageTriggers => Admin,
    ListTriggers => Admin,
    ReadLogs => Admin,
    ListInvocations => Admin,
    GetInvocation => Admin,
    ReadUsage => Admin,
    ManageAlerts => Admin,
    ListAlerts => Admin,
    // A backup holds every env, keys and the master key included.
    ManageBackups => Platform,
    // An export holds the env's keys, its users' password hashes and its signing key.
    TransferEnv => Platform,
    // Metrics cover every env: the platform's operator only.
    ReadMetrics => Platform,
    // The database without rules (`database.rs`).
    CreateCollection => Server,
    ListCollections => Server,
    InsertDocuments => Server,
    FindDocuments => Server,
    CountDocuments => Server,
    UpdateDocuments => Server,
    AggregateDocuments => Server,
    RemoveDocuments => Server,
    StartTransaction => Server,
    CommitTransaction => Server,
    AbortTransaction => Server,
    TransactionFind => Server,
    TransactionInsert => Server,
    TransactionUpdate => Server,
    TransactionRemove => Server,
    // Bulk loads and the collections' shape are management.
    ImportDocuments => Admin,
    DropCollection => Admin,
    CreateIndex => Admin,
    ListIndexes => Admin,
    DropIndex => Admin,
    // The database under rules (`user_db.rs`).
    UserFind => EndUser,
    UserAggregate => EndUser,
    UserCount => EndUser,
    UserInsert => EndUser,
    UserUpdate => EndUser,
    UserRemove => EndUser,
    // Security rules.
    GetRules => Admin,
    SetRules => Admin,
    // Files through the SDKs: end users under the storage rules.
    FileAuthority => SignedIn,
    UploadTarget => SignedIn,
    TempUrls => SignedIn,
    DeleteFiles => SignedIn,
    CopyFiles => SignedIn,
    // Files through the management API.
    FileUrl => Admin,
    ListFiles => Admin,
    PutFile => Admin,
    StatFile => Admin,
    DeleteFile => Admin,
    // End users, administered.
    ListUsers => Admin,
    GetUser => Admin,
    SetUserDisabled => Admin,
    DeleteUser => Admin,
    CreateTicketKey => Admin,
    ListTicketKeys => Admin,
    DeleteTicketKey => Admin,
    RotateUserKey => Admin,
    // An end user's own account.
    SignOut => EndUser,
    Sudo => EndUser,
    SetPassword => EndUser,
}

impl App {
    /// The one guard: whether `identity` may run `operation` (in `identity.env`).
    pub fn authorize(identity: &Identity, operation: Operation) -> Result<(), YunError> {
        let needs = operation.requires();
        if needs.allows(&identity.caller) {
            Ok(())
        } else {
            Err(YunError::new(
                ErrorCode::PermissionDenied,
                format!(
                    "{operation:?} needs {}, not {}",
                    needs.describe(),
                    describe_caller(&identity.caller)
                ),
            ))
        }
    }
}
