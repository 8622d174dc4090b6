use yun_types::{EnvId, FunctionName};

/// Every request resolves to exactly one env and one identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub env: EnvId,
    pub caller: Caller,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A platform key: any env, plus creating and deleting envs.
    PlatformKey { secret_id: String },
    /// A key of this env only.
    EnvKey { secret_id: String },
    /// Code of a deployed function, holding the credential Yun injected for one invocation.
    Function { name: FunctionName },
    /// A signed-in end user of the env (js-sdk, `/web`), under the env's security rules.
    User(EndUser),
    /// Unauthenticated traffic to a public HTTP function; may only invoke that function.
    Anonymous,
}

/// Who an end user is, as rules and functions see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndUser {
    /// Yun's id of the user (`auth.uid`, `TCB_UUID`, and the `_openid` it owns).
    pub uid: String,
    /// Signed in anonymously.
    pub anonymous: bool,
    /// The developer's id, for users who signed in with a custom ticket.
    pub custom_id: Option<String>,
}

impl EndUser {
    /// CloudBase's `LOGINTYPE` for this user.
    pub fn login_type(&self) -> &'static str {
        match (self.anonymous, &self.custom_id) {
            (true, _) => "ANONYMOUS",
            (false, Some(_)) => "CUSTOM",
            (false, None) => "USERNAME",
        }
    }
}

impl Identity {
    /// A short label for logs and invocation records.
    pub fn label(&self) -> String {
        match &self.caller {
            Caller::PlatformKey { secret_id } | Caller::EnvKey { secret_id } => {
                format!("key:{secret_id}")
            }
            Caller::Function { name } => format!("function:{name}"),
            Caller::User(user) => format!("user:{}", user.uid),
            Caller::Anonymous => "anonymous".into(),
        }
    }
}
