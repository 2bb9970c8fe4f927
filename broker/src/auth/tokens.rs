//! Tokens: made (`breadboard passwd --generate`), hashed with argon2id into the PHC strings the
//! auth file holds, and checked against them, with a cache so that a token is hashed once per
//! broker run rather than once per connection.
//!
//! A token does not say whose it is, so an unknown one is checked against every hash in the file
//! (argon2 is slow on purpose: some milliseconds each). Once it matched, the SHA-256 of the token
//! is remembered with its user and hash: the next connection with it costs a map lookup. At most
//! [`PARALLEL_CHECKS`] hashes are computed at a time, so a flood of wrong tokens cannot take
//! every core from the routing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use argon2::password_hash::rand_core::{OsRng, RngCore};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use tokio::sync::Semaphore;

use super::rules::Rules;

/// Hashes computed at once, broker-wide.
const PARALLEL_CHECKS: usize = 2;
/// Tokens remembered; past it the cache starts afresh (a reload clears it too).
const CACHE_ENTRIES: usize = 10_000;
/// Random bytes in a generated token.
const TOKEN_BYTES: usize = 32;

/// Why a secret cannot become a hash.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// An empty secret.
    #[error("the secret is empty")]
    Empty,
    /// The hasher failed (not expected with the default parameters).
    #[error("cannot hash the secret: {0}")]
    Hash(String),
}

/// A new random token: `bb_` and 64 hexadecimal digits (256 bits from the OS's generator).
pub fn generate() -> String {
    let mut bytes = [0u8; TOKEN_BYTES];
    OsRng.fill_bytes(&mut bytes);
    let mut token = String::with_capacity(3 + 2 * TOKEN_BYTES);
    token.push_str("bb_");
    for b in bytes {
        token.push_str(&format!("{b:02x}"));
    }
    token
}

/// The argon2id PHC string of `secret`, with a fresh salt and the default parameters
/// (19 MiB, 2 passes).
///
/// # Errors
/// [`TokenError::Empty`] for an empty secret.
pub fn hash(secret: &str) -> Result<String, TokenError> {
    if secret.is_empty() {
        return Err(TokenError::Empty);
    }
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(secret.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| TokenError::Hash(e.to_string()))
}

/// Checks that `phc` is an argon2id PHC string.
pub(crate) fn check_phc(phc: &str) -> Result<(), String> {
    let parsed = PasswordHash::new(phc).map_err(|e| e.to_string())?;
    if parsed.algorithm.as_str() != "argon2id" {
        return Err(format!(
            "the algorithm is {}, argon2id is expected",
            parsed.algorithm
        ));
    }
    Ok(())
}

/// Whether `token` hashes to `phc`.
fn matches(token: &str, phc: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|parsed| {
        Argon2::default()
            .verify_password(token.as_bytes(), &parsed)
            .is_ok()
    })
}

type Digest = [u8; 32];

fn digest(token: &str) -> Digest {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// A token already checked: its user and the hash it matched.
#[derive(Clone)]
struct Known {
    user: Arc<str>,
    phc: String,
}

/// Checks tokens against the rules' hashes, remembering those that matched.
pub(crate) struct Verifier {
    known: Mutex<HashMap<Digest, Known>>,
    permits: Semaphore,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier").finish_non_exhaustive()
    }
}

impl Default for Verifier {
    fn default() -> Self {
        Self {
            known: Mutex::new(HashMap::new()),
            permits: Semaphore::new(PARALLEL_CHECKS),
        }
    }
}

impl Verifier {
    /// The user whose token `token` is under `rules`, if any.
    pub(crate) async fn verify(&self, rules: &Arc<Rules>, token: &str) -> Option<Arc<str>> {
        let key = digest(token);
        if let Some(known) = self.lookup(&key) {
            // Still valid only if the user still has that very hash (the file may have changed).
            let still = rules
                .users
                .get(&known.user)
                .is_some_and(|u| u.tokens.contains(&known.phc));
            if still {
                return Some(known.user);
            }
            self.forget(&key);
        }
        let candidates: Vec<(Arc<str>, String)> = rules
            .tokens()
            .map(|(user, phc)| (user.clone(), phc.to_string()))
            .collect();
        let _permit = self.permits.acquire().await.ok()?;
        let token = token.to_string();
        let found = tokio::task::spawn_blocking(move || {
            candidates.into_iter().find(|(_, phc)| matches(&token, phc))
        })
        .await
        .ok()??;
        let (user, phc) = found;
        self.remember(
            key,
            Known {
                user: user.clone(),
                phc,
            },
        );
        Some(user)
    }

    fn lookup(&self, key: &Digest) -> Option<Known> {
        self.known.lock().ok()?.get(key).cloned()
    }

    fn forget(&self, key: &Digest) {
        if let Ok(mut known) = self.known.lock() {
            known.remove(key);
        }
    }

    fn remember(&self, key: Digest, entry: Known) {
        if let Ok(mut known) = self.known.lock() {
            if known.len() >= CACHE_ENTRIES {
                known.clear();
            }
            known.insert(key, entry);
        }
    }

    /// Forgets every token (after a reload).
    pub(crate) fn clear(&self) {
        if let Ok(mut known) = self.known.lock() {
            known.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::rules::{Permissions, User};

    #[test]
    fn generated_tokens_are_long_and_distinct() {
        let (a, b) = (generate(), generate());
        assert_ne!(a, b);
        assert_eq!(a.len(), 67);
        assert!(a.starts_with("bb_"));
    }

    #[test]
    fn a_hash_matches_its_secret_only() {
        let phc = hash("s3cret").unwrap();
        assert!(phc.starts_with("$argon2id$"));
        check_phc(&phc).unwrap();
        assert!(matches("s3cret", &phc));
        assert!(!matches("s3creT", &phc));
        assert!(hash("").is_err());
        assert!(check_phc("$argon2i$v=19$m=16,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo").is_err());
        assert!(check_phc("plain").is_err());
    }

    fn rules_with(user: &str, phc: &str) -> Arc<Rules> {
        let u = User {
            name: user.into(),
            tokens: vec![phc.to_string()],
            permissions: Arc::new(Permissions::nothing()),
        };
        Arc::new(Rules::new(vec![u], Permissions::nothing()))
    }

    #[tokio::test]
    async fn a_known_token_is_not_hashed_again_but_a_changed_file_is_checked() {
        let phc = hash("tok").unwrap();
        let rules = rules_with("a", &phc);
        let verifier = Verifier::default();
        assert_eq!(verifier.verify(&rules, "tok").await.as_deref(), Some("a"));
        assert!(verifier.lookup(&digest("tok")).is_some());
        assert_eq!(verifier.verify(&rules, "nope").await, None);
        // The same token under rules where the user's hash changed: no longer accepted.
        let other = rules_with("a", &hash("other").unwrap());
        assert_eq!(verifier.verify(&other, "tok").await, None);
        assert!(verifier.lookup(&digest("tok")).is_none());
    }
}
