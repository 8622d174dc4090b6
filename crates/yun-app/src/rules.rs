//! Security rules of an env: set and read by admins; what applies to end users.

use std::sync::Arc;

use serde_json::{json, Value};
use yun_auth::{Caller, EndUser, Identity};
use yun_rules::{Auth, RuleSet, Target};
use yun_types::YunError;

use crate::cache::Forget;
use crate::{App, Operation};

pub(crate) const STORAGE_TARGET: &str = "storage";

/// What a rule set protects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RulesTarget {
    Collection(String),
    Storage,
}

impl RulesTarget {
    fn key(&self) -> String {
        match self {
            RulesTarget::Collection(name) => format!("collection:{name}"),
            RulesTarget::Storage => STORAGE_TARGET.into(),
        }
    }

    fn kind(&self) -> Target {
        match self {
            RulesTarget::Collection(_) => Target::Collection,
            RulesTarget::Storage => Target::Storage,
        }
    }
}

/// The end user behind `identity`; callers of the end-user paths check this first.
pub(crate) fn end_user(identity: &Identity) -> Result<&EndUser, YunError> {
    match &identity.caller {
        Caller::User(user) => Ok(user),
        _ => Err(YunError::internal("this path is for end users only")),
    }
}

/// `auth` in a rule, for an end user.
pub(crate) fn rule_auth(user: &EndUser) -> Auth {
    Auth {
        uid: user.uid.clone(),
        login_type: user.login_type().into(),
        anonymous: user.anonymous,
        custom_user_id: user.custom_id.clone(),
    }
}

impl App {
    /// The rules that apply to `target`: the stored set or the default.
    pub(crate) async fn rules_for(
        &self,
        identity: &Identity,
        target: &RulesTarget,
    ) -> Result<Arc<RuleSet>, YunError> {
        let stored = self.env_rules(&identity.env).await?;
        Ok(stored
            .get(&target.key())
            .cloned()
            .unwrap_or_else(|| Arc::new(RuleSet::default_for(target.kind()))))
    }

    /// `{rules, default}`: the rules in force and whether they are the default.
    pub async fn get_rules(
        &self,
        identity: &Identity,
        target: &RulesTarget,
    ) -> Result<Value, YunError> {
        Self::authorize(identity, Operation::GetRules)?;
        let stored = self.env_rules(&identity.env).await?;
        let default = !stored.contains_key(&target.key());
        Ok(json!({
            "rules": self.rules_for(identity, target).await?.to_json(),
            "default": default,
        }))
    }

    /// Checks and stores `spec` (a preset name or a rules object); `None` restores the
    /// default. Takes effect for the next request.
    pub async fn set_rules(
        &self,
        identity: &Identity,
        target: &RulesTarget,
        spec: Option<&Value>,
    ) -> Result<Value, YunError> {
        Self::authorize(identity, Operation::SetRules)?;
        let normalised = spec
            .map(|spec| {
                RuleSet::parse(spec, target.kind())
                    .map(|set| set.to_json())
                    .map_err(|e| YunError::invalid_param(e.to_string()))
            })
            .transpose()?;
        self.meta
            .put_rules(&identity.env, &target.key(), normalised.as_ref())
            .await?;
        self.forget(Forget::Rules {
            env: identity.env.clone(),
        });
        self.get_rules(identity, target).await
    }
}
