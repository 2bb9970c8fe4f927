//! Who may do what: each user's publish and subscribe filters (allow and deny, deny wins) and
//! the `hello` names it may take. Pure: the rules as the auth file gave them, checked against
//! topics and filters.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use proto::{TopicFilter, TopicName};

/// Allowed and denied filters for one kind of operation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FilterRules {
    /// Filters that allow.
    pub allow: Vec<TopicFilter>,
    /// Filters that deny; they win over any allow.
    pub deny: Vec<TopicFilter>,
}

impl FilterRules {
    /// Whether a message may go to (or come from) `topic`: one allow filter matches it, no
    /// deny filter does. `$` topics are matched only by filters naming `$...` literally.
    pub fn allows_topic<S: AsRef<str>>(&self, topic: &TopicName<S>) -> bool {
        self.allow.iter().any(|f| f.matches(topic)) && !self.deny.iter().any(|f| f.matches(topic))
    }

    /// Whether a subscription to `filter` is allowed: one allow filter covers all it can
    /// match, and it touches no deny filter. It is refused, not narrowed: `#` with an allow
    /// of `pin/#` is refused.
    pub fn allows_filter(&self, filter: &TopicFilter) -> bool {
        self.allow.iter().any(|a| a.covers(filter)) && !self.deny.iter().any(|d| d.overlaps(filter))
    }
}

/// The `hello` names a client may take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Names {
    /// Any name (`names = ["*"]`).
    Any,
    /// These names only.
    Only(HashSet<String>),
    /// Any name that no user is bound to: what anonymous clients get by default.
    Unbound,
}

/// What one client may do: a user's permissions, or the anonymous ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permissions {
    /// Topics it may publish on.
    pub publish: FilterRules,
    /// Filters it may subscribe to (and so the retained values it is replayed).
    pub subscribe: FilterRules,
    /// `hello` names it may take.
    pub names: Names,
}

impl Permissions {
    /// Permissions that allow nothing: anonymous clients when the file has no `[anonymous]`
    /// section (they may only authenticate).
    pub fn nothing() -> Self {
        Self {
            publish: FilterRules::default(),
            subscribe: FilterRules::default(),
            names: Names::Only(HashSet::new()),
        }
    }

    /// Permissions that allow everything: a broker without an auth file.
    pub fn everything() -> Self {
        let all = || FilterRules {
            allow: ["#", "$SYS/#"]
                .into_iter()
                .filter_map(|f| TopicFilter::new(f).ok())
                .collect(),
            deny: Vec::new(),
        };
        Self {
            publish: all(),
            subscribe: all(),
            names: Names::Any,
        }
    }
}

/// One user of the auth file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Its name (the `[users.<name>]` key), what `%u` stands for.
    pub name: Arc<str>,
    /// Its tokens, as argon2id PHC strings.
    pub tokens: Vec<String>,
    /// What it may do.
    pub permissions: Arc<Permissions>,
}

/// Everything an auth file says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    /// The users, by name (in order: an unknown token is tried against them in this order).
    pub users: BTreeMap<Arc<str>, User>,
    /// What clients without credentials may do.
    pub anonymous: Arc<Permissions>,
    /// Names some user is bound to by name (not by `*`): not for anonymous clients.
    bound_names: HashSet<String>,
}

impl Rules {
    /// Rules of these users; `anonymous` is what clients without credentials may do.
    pub fn new(users: Vec<User>, anonymous: Permissions) -> Self {
        let bound_names = users
            .iter()
            .flat_map(|u| match &u.permissions.names {
                Names::Only(names) => names.iter().cloned().collect::<Vec<_>>(),
                Names::Any | Names::Unbound => Vec::new(),
            })
            .collect();
        Self {
            users: users.into_iter().map(|u| (u.name.clone(), u)).collect(),
            anonymous: Arc::new(anonymous),
            bound_names,
        }
    }

    /// The permissions of `user` (`None`: anonymous); `None` when the user is not in the rules
    /// (any more).
    pub fn permissions(&self, user: Option<&str>) -> Option<Arc<Permissions>> {
        match user {
            None => Some(self.anonymous.clone()),
            Some(name) => self.users.get(name).map(|u| u.permissions.clone()),
        }
    }

    /// Whether a client with `permissions` may take the `hello` name `name`.
    pub fn may_take_name(&self, permissions: &Permissions, name: &str) -> bool {
        match &permissions.names {
            Names::Any => true,
            Names::Only(names) => names.contains(name),
            Names::Unbound => !self.bound_names.contains(name),
        }
    }

    /// Every token of every user, with its user: what an unknown token is checked against.
    pub fn tokens(&self) -> impl Iterator<Item = (&Arc<str>, &str)> {
        self.users
            .values()
            .flat_map(|u| u.tokens.iter().map(move |t| (&u.name, t.as_str())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(allow: &[&str], deny: &[&str]) -> FilterRules {
        let f = |v: &[&str]| v.iter().map(|s| TopicFilter::new(*s).unwrap()).collect();
        FilterRules {
            allow: f(allow),
            deny: f(deny),
        }
    }

    fn topic(s: &str) -> TopicName {
        TopicName::system(s).unwrap()
    }

    fn filter(s: &str) -> TopicFilter {
        TopicFilter::new(s).unwrap()
    }

    #[test]
    fn deny_wins_over_allow() {
        let r = rules(&["pin/#"], &["pin/secret"]);
        assert!(r.allows_topic(&topic("pin/p1/state")));
        assert!(!r.allows_topic(&topic("pin/secret")));
        assert!(r.allows_filter(&filter("pin/p1/#")));
        assert!(!r.allows_filter(&filter("pin/+")), "touches pin/secret");
        assert!(!r.allows_filter(&filter("pin/#")));
    }

    #[test]
    fn a_filter_wider_than_the_allowed_one_is_refused() {
        let r = rules(&["pin/#"], &[]);
        assert!(!r.allows_filter(&filter("#")));
        assert!(!r.allows_filter(&filter("+/state")));
        assert!(r.allows_filter(&filter("pin/+/state")));
    }

    #[test]
    fn system_topics_need_an_explicit_permission() {
        let r = rules(&["#"], &[]);
        assert!(!r.allows_topic(&topic("$SYS/nodes/pin-1")));
        assert!(!r.allows_filter(&filter("$SYS/#")));
        let r = rules(&["#", "$SYS/nodes/#"], &[]);
        assert!(r.allows_filter(&filter("$SYS/nodes/+")));
        assert!(!r.allows_filter(&filter("$SYS/broker/stats")));
    }

    #[test]
    fn nothing_allows_nothing_and_everything_everything() {
        let none = Permissions::nothing();
        assert!(!none.publish.allows_topic(&topic("a")));
        assert!(!none.subscribe.allows_filter(&filter("#")));
        let all = Permissions::everything();
        assert!(all.subscribe.allows_filter(&filter("#")));
        assert!(all.subscribe.allows_filter(&filter("$SYS/#")));
    }

    #[test]
    fn names_bound_to_users_are_not_for_anonymous_clients() {
        let user = User {
            name: "pin-1".into(),
            tokens: vec![],
            permissions: Arc::new(Permissions {
                names: Names::Only(["pin-1".to_string()].into()),
                ..Permissions::nothing()
            }),
        };
        let anonymous = Permissions {
            names: Names::Unbound,
            ..Permissions::nothing()
        };
        let rules = Rules::new(vec![user], anonymous);
        let anon = rules.permissions(None).unwrap();
        assert!(!rules.may_take_name(&anon, "pin-1"));
        assert!(rules.may_take_name(&anon, "watcher"));
        let pin = rules.permissions(Some("pin-1")).unwrap();
        assert!(rules.may_take_name(&pin, "pin-1"));
        assert!(!rules.may_take_name(&pin, "pin-2"));
        assert!(rules.permissions(Some("ghost")).is_none());
    }
}
