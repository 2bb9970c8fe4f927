//! What one connection may do: who it is (a user, or anonymous), the permissions that gives it
//! under the rules in force, and a cache of publish verdicts by topic, so that the publish path
//! costs a lookup rather than a scan of the rules (as `RouteCache` does for routes).

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use proto::{TopicFilter, TopicName};
use tokio_util::sync::CancellationToken;

use super::{Auth, Permissions, Rules};

/// Publish verdicts kept per connection; past it the cache starts afresh.
const MAX_VERDICTS: usize = 64;

/// A connection's identity and permissions.
#[derive(Debug)]
pub(crate) struct Access {
    /// `None`: the broker has no auth file and everything is allowed.
    auth: Option<Arc<Auth>>,
    /// `None`: anonymous.
    user: Option<Arc<str>>,
    rules: Arc<Rules>,
    permissions: Arc<Permissions>,
    /// Cancelled when `rules` are replaced (a reload).
    replaced: CancellationToken,
    /// Publish verdicts by topic, under `permissions`.
    verdicts: HashMap<Box<str>, bool, foldhash::fast::RandomState>,
}

/// What a reload did to a connection.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refreshed {
    /// Its user is no longer in the file.
    Removed,
    /// New permissions are in force.
    Updated,
}

impl Access {
    /// Everything allowed: a broker without an auth file.
    pub(crate) fn open() -> Self {
        // Never consulted without an auth file (every check answers yes first), so shared by
        // every connection rather than built for each: an idle connection stays small.
        static OPEN: LazyLock<(Arc<Rules>, Arc<Permissions>, CancellationToken)> =
            LazyLock::new(|| {
                let everything = Arc::new(Permissions::everything());
                let rules = Arc::new(Rules::new(Vec::new(), Permissions::everything()));
                (rules, everything, CancellationToken::new())
            });
        let (rules, permissions, replaced) = &*OPEN;
        Self {
            auth: None,
            user: None,
            rules: rules.clone(),
            permissions: permissions.clone(),
            replaced: replaced.clone(),
            verdicts: HashMap::default(),
        }
    }

    /// `user` (`None`: anonymous) under `auth`'s rules; `None` if the user is not in them.
    pub(crate) fn new(auth: Arc<Auth>, user: Option<Arc<str>>) -> Option<Self> {
        let current = auth.current();
        let permissions = current.rules.permissions(user.as_deref())?;
        Some(Self {
            auth: Some(auth),
            user,
            rules: current.rules,
            permissions,
            replaced: current.replaced,
            verdicts: HashMap::default(),
        })
    }

    /// The broker's auth, when it has an auth file.
    pub(crate) fn auth(&self) -> Option<&Arc<Auth>> {
        self.auth.as_ref()
    }

    /// The user, `None` when anonymous (or without an auth file).
    pub(crate) fn user(&self) -> Option<&Arc<str>> {
        self.user.as_ref()
    }

    /// Cancelled when the rules are replaced: then call [`Access::refresh`].
    pub(crate) fn replaced(&self) -> Option<CancellationToken> {
        self.auth.as_ref().map(|_| self.replaced.clone())
    }

    /// Whether this connection may publish on `topic`. Cached by topic.
    pub(crate) fn may_publish<S: AsRef<str>>(&mut self, topic: &TopicName<S>) -> bool {
        if self.auth.is_none() {
            return true;
        }
        if let Some(&verdict) = self.verdicts.get(topic.as_str()) {
            return verdict;
        }
        let verdict = self.permissions.publish.allows_topic(topic);
        if self.verdicts.len() >= MAX_VERDICTS {
            self.verdicts.clear();
        }
        self.verdicts.insert(topic.as_str().into(), verdict);
        verdict
    }

    /// Whether this connection may name `topic` as the `reply` of a request: it must be allowed
    /// to read it, or it could have others write where it could not.
    pub(crate) fn may_reply_to<S: AsRef<str>>(&self, topic: &TopicName<S>) -> bool {
        self.auth.is_none() || self.permissions.subscribe.allows_topic(topic)
    }

    /// Whether this connection may subscribe to `filter` (and be replayed what it retains).
    pub(crate) fn may_subscribe(&self, filter: &TopicFilter) -> bool {
        self.auth.is_none() || self.permissions.subscribe.allows_filter(filter)
    }

    /// Whether this connection may take the `hello` name `name`.
    pub(crate) fn may_take_name(&self, name: &str) -> bool {
        self.auth.is_none() || self.rules.may_take_name(&self.permissions, name)
    }

    /// Becomes `user` (after a `hello` token); false if the user is not in the rules.
    pub(crate) fn become_user(&mut self, user: Arc<str>) -> bool {
        let Some(permissions) = self.rules.permissions(Some(&user)) else {
            return false;
        };
        self.user = Some(user);
        self.permissions = permissions;
        self.verdicts.clear();
        true
    }

    /// Takes the rules in force now.
    pub(crate) fn refresh(&mut self) -> Refreshed {
        let Some(auth) = &self.auth else {
            return Refreshed::Updated;
        };
        let current = auth.current();
        self.replaced = current.replaced;
        self.verdicts.clear();
        match current.rules.permissions(self.user.as_deref()) {
            Some(permissions) => {
                self.permissions = permissions;
                self.rules = current.rules;
                Refreshed::Updated
            }
            None => {
                self.rules = current.rules;
                self.permissions = Arc::new(Permissions::nothing());
                Refreshed::Removed
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use std::io::Write;

    fn auth_file(body: &str) -> (tempfile::NamedTempFile, Arc<Auth>) {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(body.as_bytes()).unwrap();
        let auth = Auth::load(file.path(), Arc::new(Metrics::default())).unwrap();
        (file, Arc::new(auth))
    }

    fn phc() -> String {
        crate::auth::hash_token("t").unwrap()
    }

    #[test]
    fn without_auth_everything_is_allowed() {
        let mut access = Access::open();
        assert!(access.may_publish(&TopicName::new("a/b").unwrap()));
        assert!(access.may_subscribe(&TopicFilter::new("$SYS/#").unwrap()));
        assert!(access.may_take_name("anyone"));
        assert!(access.replaced().is_none());
    }

    #[test]
    fn verdicts_are_cached_and_a_reload_applies_and_removes() {
        let phc = phc();
        let (file, auth) = auth_file(&format!(
            "[users.u]\ntokens = [\"{phc}\"]\npublish = [\"a/#\"]\n"
        ));
        let mut access = Access::new(auth.clone(), Some("u".into())).unwrap();
        let topic = TopicName::new("a/b").unwrap();
        assert!(access.may_publish(&topic));
        assert!(access.may_publish(&topic), "from the cache");
        assert!(!access.may_publish(&TopicName::new("b").unwrap()));
        let replaced = access.replaced().unwrap();

        std::fs::write(
            file.path(),
            format!("[users.u]\ntokens = [\"{phc}\"]\npublish = [\"b\"]\n"),
        )
        .unwrap();
        auth.reload().unwrap();
        assert!(replaced.is_cancelled());
        assert_eq!(access.refresh(), Refreshed::Updated);
        assert!(
            !access.may_publish(&topic),
            "the cache went with the old rules"
        );
        assert!(access.may_publish(&TopicName::new("b").unwrap()));

        std::fs::write(file.path(), "not toml [").unwrap();
        assert!(auth.reload().is_err());
        assert!(!access.replaced().unwrap().is_cancelled(), "old rules stay");

        std::fs::write(file.path(), format!("[users.v]\ntokens = [\"{phc}\"]\n")).unwrap();
        auth.reload().unwrap();
        assert_eq!(access.refresh(), Refreshed::Removed);
    }
}
