//! The auth file: TOML in, [`Rules`] out, every mistake a clear error naming where it is.
//!
//! ```toml
//! [users.pin-1]
//! tokens = ["$argon2id$v=19$m=19456,t=2,p=1$...$..."]
//! names = ["pin-1"]                      # default: the user's own name; "*": any
//! publish = ["pin/%u/#", "_inbox/#"]     # a list allows
//! subscribe = { allow = ["clock/tick", "_inbox/%u/#"], deny = ["clock/secret"] }
//!
//! [anonymous]                            # optional: clients without credentials
//! subscribe = ["pin/+/state"]
//! ```

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use proto::TopicFilter;
use serde::Deserialize;

use super::rules::{FilterRules, Names, Permissions, Rules, User};

/// Why an auth file cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthFileError {
    /// The file cannot be read.
    // The causes are in the messages (and not also sources), so that a report of the whole
    // chain does not say them twice.
    #[error("cannot read the auth file {}: {error}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// Not TOML, or not the shape of an auth file (the message gives line and column).
    #[error("the auth file {} is not valid: {error}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the TOML reader said.
        error: Box<toml::de::Error>,
    },
    /// TOML of the right shape with a value that is not allowed.
    #[error("the auth file {}: {what}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, and where.
        what: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Doc {
    #[serde(default)]
    users: BTreeMap<String, UserDoc>,
    anonymous: Option<AnonymousDoc>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserDoc {
    #[serde(default)]
    tokens: Vec<String>,
    names: Option<Vec<String>>,
    publish: Option<toml::Value>,
    subscribe: Option<toml::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AnonymousDoc {
    names: Option<Vec<String>>,
    publish: Option<toml::Value>,
    subscribe: Option<toml::Value>,
}

/// Reads and checks the auth file at `path`.
///
/// # Errors
/// [`AuthFileError`]: unreadable, not TOML, or a value not allowed (a filter, a name, a token
/// that is not an argon2 PHC string), naming the user and field.
pub fn load(path: &Path) -> Result<Rules, AuthFileError> {
    let text = std::fs::read_to_string(path).map_err(|error| AuthFileError::Read {
        path: path.to_path_buf(),
        error,
    })?;
    parse(&text).map_err(|e| e.at(path))
}

/// Reads the text of an auth file; errors name `path` as where it came from.
///
/// # Errors
/// As [`load`], but for reading.
pub fn parse_text(text: &str, path: &Path) -> Result<Rules, AuthFileError> {
    parse(text).map_err(|e| e.at(path))
}

/// A mistake before the file's path is known.
#[derive(Debug)]
pub(crate) enum Mistake {
    Parse(Box<toml::de::Error>),
    Invalid(String),
}

impl Mistake {
    fn at(self, path: &Path) -> AuthFileError {
        let path = path.to_path_buf();
        match self {
            Self::Parse(error) => AuthFileError::Parse { path, error },
            Self::Invalid(what) => AuthFileError::Invalid { path, what },
        }
    }
}

fn invalid(what: String) -> Mistake {
    Mistake::Invalid(what)
}

/// Reads an auth file's text.
pub(crate) fn parse(text: &str) -> Result<Rules, Mistake> {
    let doc: Doc = toml::from_str(text).map_err(|e| Mistake::Parse(Box::new(e)))?;
    let mut users = Vec::with_capacity(doc.users.len());
    let mut owners: HashMap<String, String> = HashMap::new();
    for (name, user) in doc.users {
        // One token, one user: a hash pasted under two users would make the user a token
        // stands for depend on which is tried first.
        for token in &user.tokens {
            if let Some(other) = owners.insert(token.clone(), name.clone()) {
                if other != name {
                    return Err(invalid(format!(
                        "[users.{name}] and [users.{other}] have the same token hash: give each user its own token"
                    )));
                }
            }
        }
        users.push(read_user(name, user)?);
    }
    let anonymous = match doc.anonymous {
        None => Permissions::nothing(),
        Some(anon) => Permissions {
            publish: read_rules(anon.publish, None, "anonymous", "publish")?,
            subscribe: read_rules(anon.subscribe, None, "anonymous", "subscribe")?,
            names: match anon.names {
                None => Names::Unbound,
                Some(names) => read_names(&names, None, "anonymous")?,
            },
        },
    };
    Ok(Rules::new(users, anonymous))
}

fn read_user(name: String, doc: UserDoc) -> Result<User, Mistake> {
    let section = format!("users.{name}");
    proto::check_name(&name).map_err(|e| {
        invalid(format!(
            "[{section}]: a user name must be usable as a topic level and a hello name: {e}"
        ))
    })?;
    if name.contains('%') {
        // `%u` in a rule stands for the name: a name with `%` in it would read as a pattern.
        return Err(invalid(format!(
            "[{section}]: a user name may not contain '%' (rules write the user's name as %u)"
        )));
    }
    if doc.tokens.is_empty() {
        return Err(invalid(format!(
            "[{section}] has no tokens: add `tokens = [...]` (make one with `breadboard passwd`)"
        )));
    }
    for (i, token) in doc.tokens.iter().enumerate() {
        super::tokens::check_phc(token).map_err(|e| {
            invalid(format!(
                "[{section}] tokens[{i}] is not an argon2 hash (make one with `breadboard passwd`): {e}"
            ))
        })?;
    }
    let permissions = Permissions {
        publish: read_rules(doc.publish, Some(&name), &section, "publish")?,
        subscribe: read_rules(doc.subscribe, Some(&name), &section, "subscribe")?,
        names: match doc.names {
            None => Names::Only([name.clone()].into()),
            Some(names) => read_names(&names, Some(&name), &section)?,
        },
    };
    Ok(User {
        name: name.into(),
        tokens: doc.tokens,
        permissions: Arc::new(permissions),
    })
}

/// `%u` replaced by the user's name; an error for the anonymous section, which has none.
fn expand(text: &str, user: Option<&str>, section: &str, field: &str) -> Result<String, Mistake> {
    match user {
        Some(user) => Ok(text.replace("%u", user)),
        None if text.contains("%u") => Err(invalid(format!(
            "[{section}] {field}: {text:?} uses %u, which only a user's section can"
        ))),
        None => Ok(text.to_string()),
    }
}

/// `["a/#", ...]` (all allowed) or `{ allow = [...], deny = [...] }`.
fn read_rules(
    value: Option<toml::Value>,
    user: Option<&str>,
    section: &str,
    field: &str,
) -> Result<FilterRules, Mistake> {
    let shape = || {
        invalid(format!(
            "[{section}] {field} must be a list of filters or a table {{ allow = [...], deny = [...] }}"
        ))
    };
    let (allow, deny) = match value {
        None => (Vec::new(), Vec::new()),
        Some(toml::Value::Array(list)) => (list, Vec::new()),
        Some(toml::Value::Table(mut table)) => {
            let mut take = |key: &str| match table.remove(key) {
                None => Ok(Vec::new()),
                Some(toml::Value::Array(list)) => Ok(list),
                Some(_) => Err(shape()),
            };
            let (allow, deny) = (take("allow")?, take("deny")?);
            if let Some(key) = table.keys().next() {
                return Err(invalid(format!(
                    "[{section}] {field}: unknown key {key:?} (expected allow and deny)"
                )));
            }
            (allow, deny)
        }
        Some(_) => return Err(shape()),
    };
    let filters = |list: Vec<toml::Value>, what: &str| {
        list.into_iter()
            .enumerate()
            .map(|(i, v)| {
                let toml::Value::String(text) = v else {
                    return Err(invalid(format!(
                        "[{section}] {field}.{what}[{i}] must be a string"
                    )));
                };
                let text = expand(&text, user, section, field)?;
                TopicFilter::new(text.clone()).map_err(|e| {
                    invalid(format!(
                        "[{section}] {field}.{what}[{i}] {text:?} is not a filter: {e}"
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(FilterRules {
        allow: filters(allow, "allow")?,
        deny: filters(deny, "deny")?,
    })
}

fn read_names(names: &[String], user: Option<&str>, section: &str) -> Result<Names, Mistake> {
    if names.iter().any(|n| n == "*") {
        return Ok(Names::Any);
    }
    let mut set = HashSet::new();
    for (i, name) in names.iter().enumerate() {
        let name = expand(name, user, section, "names")?;
        proto::check_name(&name).map_err(|e| {
            invalid(format!(
                "[{section}] names[{i}] {name:?} is not a hello name: {e}"
            ))
        })?;
        set.insert(name);
    }
    Ok(Names::Only(set))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::TopicName;

    /// A real hash, made once (hashing is slow on purpose).
    fn phc() -> &'static str {
        static PHC: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        PHC.get_or_init(|| super::super::tokens::hash("secret").unwrap())
    }

    /// Another, for a second user.
    fn phc2() -> &'static str {
        static PHC: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        PHC.get_or_init(|| super::super::tokens::hash("other").unwrap())
    }

    fn text(body: &str) -> String {
        body.replace("PHC2", phc2()).replace("PHC", phc())
    }

    fn mistake(body: &str) -> String {
        match parse(&text(body)) {
            Ok(_) => panic!("accepted: {body}"),
            Err(Mistake::Invalid(what)) => what,
            Err(Mistake::Parse(e)) => e.to_string(),
        }
    }

    #[test]
    fn a_full_file_reads_with_percent_u_expanded() {
        let rules = parse(&text(
            r##"
            [users.pin-1]
            tokens = ["PHC"]
            publish = ["pin/%u/#"]
            subscribe = { allow = ["clock/tick", "_inbox/%u/#"], deny = ["clock/secret"] }

            [users.admin]
            tokens = ["PHC2"]
            names = ["*"]
            publish = ["#"]
            subscribe = ["#", "$SYS/#"]

            [anonymous]
            subscribe = ["pin/+/state"]
            "##,
        ))
        .unwrap();
        let pin = rules.permissions(Some("pin-1")).unwrap();
        let topic = |s: &str| TopicName::system(s).unwrap();
        assert!(pin.publish.allows_topic(&topic("pin/pin-1/state")));
        assert!(!pin.publish.allows_topic(&topic("pin/pin-2/state")));
        assert_eq!(pin.subscribe.deny.len(), 1);
        assert!(rules.may_take_name(&pin, "pin-1"));
        assert!(!rules.may_take_name(&pin, "admin"));
        let admin = rules.permissions(Some("admin")).unwrap();
        assert!(rules.may_take_name(&admin, "anything"));
        let anon = rules.permissions(None).unwrap();
        assert!(anon
            .subscribe
            .allows_filter(&TopicFilter::new("pin/+/state").unwrap()));
        assert!(!rules.may_take_name(&anon, "pin-1"), "bound to a user");
        assert_eq!(rules.tokens().count(), 2);
    }

    #[test]
    fn without_an_anonymous_section_anonymous_clients_may_do_nothing() {
        let rules = parse(&text("[users.a]\ntokens = [\"PHC\"]\n")).unwrap();
        assert_eq!(*rules.permissions(None).unwrap(), Permissions::nothing());
    }

    #[test]
    fn mistakes_say_where_they_are() {
        assert!(
            mistake("[users.a]\ntokens = [\"PHC\"]\npublish = [\"a/#/b\"]")
                .contains("[users.a] publish.allow[0] \"a/#/b\" is not a filter")
        );
        assert!(mistake("[users.a]\ntokens = [\"clear-text\"]").contains("tokens[0]"));
        assert!(mistake("[users.a]\n").contains("has no tokens"));
        assert!(mistake("[anonymous]\npublish = [\"x/%u\"]").contains("uses %u"));
        assert!(mistake("[users.a]\ntokens = [\"PHC\"]\nsubscribe = 3").contains("must be a list"));
        assert!(
            mistake("[users.a]\ntokens = [\"PHC\"]\nsubscribe = { allw = [] }")
                .contains("unknown key \"allw\"")
        );
        assert!(mistake("[users.\"a/b\"]\ntokens = [\"PHC\"]").contains("users.a/b"));
        assert!(mistake("[users.\"no%ude\"]\ntokens = [\"PHC\"]").contains("may not contain '%'"));
        assert!(mistake("[user.a]\n").contains("unknown field"));
        assert!(
            mistake("[users.a]\ntokens = [\"PHC\"]\n[users.b]\ntokens = [\"PHC\"]")
                .contains("the same token hash")
        );
        assert!(mistake("[users.a\n").contains("line 1"));
    }
}
