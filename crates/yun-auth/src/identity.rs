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
    /// Unauthenticated traffic to a public HTTP function; may only invoke that function.
    Anonymous,
}

impl Identity {
    /// A short label for logs and invocation records.
    pub fn label(&self) -> String {
        match &self.caller {
            Caller::PlatformKey { secret_id } | Caller::EnvKey { secret_id } => {
                format!("key:{secret_id}")
            }
            Caller::Function { name } => format!("function:{name}"),
            Caller::Anonymous => "anonymous".into(),
        }
    }
}
