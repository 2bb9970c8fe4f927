//! Who may do what: the auth file's users, their tokens and permissions, and what each
//! connection is allowed.
//!
//! ```text
//!  auth file ──file::load──► Rules ──(kill -HUP: reload)──► Rules'
//!                              │ shared by Auth, swapped whole
//!  upgrade / hello token ─► Auth::authenticate (throttle ─► tokens: cache, else argon2)
//!                              │ user
//!  session ─► Access: may_publish (cached per topic), may_subscribe, may_take_name
//! ```
//!
//! Parts:
//! - `file`: the TOML file read into [`Rules`], with clear errors;
//! - `rules`: [`Rules`], [`Permissions`], [`FilterRules`]: the checks themselves;
//! - `tokens`: making and hashing tokens (argon2id), checking them with a cache;
//! - `throttle`: a growing wait for addresses that keep failing;
//! - `access`: one connection's identity and permissions, with its cache of verdicts.

pub(crate) mod access;
mod file;
mod rules;
mod throttle;
mod tokens;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, RwLock};

use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

pub(crate) use access::Access;
pub use file::{parse_text, AuthFileError};
pub use rules::{FilterRules, Names, Permissions, Rules, User};
pub use tokens::{generate as generate_token, hash as hash_token, TokenError};

/// Credentials the broker does not accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("unknown token")]
pub struct AuthFailed;

/// The rules in force, and the token cancelled when they are replaced.
#[derive(Debug, Clone)]
struct Current {
    rules: Arc<Rules>,
    replaced: CancellationToken,
}

/// The broker's auth file, loaded: the rules in force, the tokens already checked, the
/// failures by address. Shared by every connection; [`Auth::reload`] swaps the rules whole.
#[derive(Debug)]
pub struct Auth {
    path: PathBuf,
    current: RwLock<Current>,
    verifier: tokens::Verifier,
    throttle: throttle::Throttle,
    metrics: Arc<Metrics>,
}

impl Auth {
    /// Loads the auth file at `path`.
    ///
    /// # Errors
    /// [`AuthFileError`]: unreadable, not TOML, or a value that is not allowed.
    pub fn load(path: &Path, metrics: Arc<Metrics>) -> Result<Self, AuthFileError> {
        let rules = file::load(path)?;
        Ok(Self {
            path: path.to_path_buf(),
            current: RwLock::new(Current {
                rules: Arc::new(rules),
                replaced: CancellationToken::new(),
            }),
            verifier: tokens::Verifier::default(),
            throttle: throttle::Throttle::default(),
            metrics,
        })
    }

    /// The file the rules come from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the file again and puts its rules in force: every connection applies them from
    /// its next frame, drops the subscriptions they no longer allow, and closes if its user is
    /// gone. Returns how many users the file has.
    ///
    /// # Errors
    /// [`AuthFileError`]; the rules in force stay as they were.
    pub fn reload(&self) -> Result<usize, AuthFileError> {
        let rules = Arc::new(file::load(&self.path)?);
        let users = rules.users.len();
        let old = {
            let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
            std::mem::replace(
                &mut *current,
                Current {
                    rules,
                    replaced: CancellationToken::new(),
                },
            )
        };
        self.verifier.clear();
        old.replaced.cancel();
        Ok(users)
    }

    /// The rules in force.
    pub fn rules(&self) -> Arc<Rules> {
        self.current().rules
    }

    fn current(&self) -> Current {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The user whose token this is. An address with recent failures waits first (longer after
    /// each); every failure is counted in the metrics.
    ///
    /// # Errors
    /// [`AuthFailed`]: no user has this token.
    pub async fn authenticate(&self, token: &str, from: IpAddr) -> Result<Arc<str>, AuthFailed> {
        let wait = self.throttle.delay(from);
        if !wait.is_zero() {
            self.metrics.auth_delayed.fetch_add(1, Relaxed);
            tokio::time::sleep(wait).await;
        }
        let rules = self.rules();
        match self.verifier.verify(&rules, token).await {
            Some(user) => {
                self.throttle.succeeded(from);
                Ok(user)
            }
            None => {
                self.throttle.failed(from);
                self.metrics.auth_failures.fetch_add(1, Relaxed);
                tracing::info!(%from, "refused credentials");
                Err(AuthFailed)
            }
        }
    }
}
