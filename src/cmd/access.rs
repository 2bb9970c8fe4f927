//! The flags of every command that connects to a broker as a client: credentials (`--token`)
//! and whom a `wss://` broker is trusted as (`--ca`, `--fingerprint`). One home, flattened into
//! `node`, `sub`, `pub`, `req`, `ls` and `bench`; `demo`, whose broker is its own, takes the
//! token alone ([`TokenArgs`]).

use std::path::PathBuf;

use anyhow::Context;
use nodes::client::tls::parse_fingerprint;
use nodes::{ConnectOptions, TlsTrust};

/// Credentials for the broker.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct TokenArgs {
    /// Credentials for a broker run with an auth file, sent as `Authorization: Bearer` on the
    /// WebSocket upgrade. Prefer the environment variable: a flag shows in `ps`.
    #[arg(long, env = "BREADBOARD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// Credentials, and the trust for `wss://` brokers.
///
/// Without `--ca` or `--fingerprint`, a `wss://` broker given by address is checked against
/// the public certificate authorities; one found over mDNS is pinned to the fingerprint it
/// advertises. With either, that rules, strictly, wherever the broker came from, and a plain
/// `ws://` broker is refused.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct AccessArgs {
    #[command(flatten)]
    pub token: TokenArgs,
    /// Trust only the CA certificates in this PEM file for wss:// brokers (chain and host
    /// name checked); a broker's self-signed certificate may be given as its own CA.
    #[arg(long, value_name = "FILE", conflicts_with = "fingerprint")]
    pub ca: Option<PathBuf>,
    /// Trust exactly the wss:// broker certificate with this SHA-256, as the broker prints it
    /// (`sha256:` prefix and colons accepted), whatever its names and issuer.
    #[arg(long, value_name = "HEX", value_parser = fingerprint_arg)]
    pub fingerprint: Option<[u8; 32]>,
}

/// Reads `--fingerprint` for clap.
fn fingerprint_arg(text: &str) -> Result<[u8; 32], String> {
    parse_fingerprint(text).map_err(|e| e.to_string())
}

impl AccessArgs {
    /// The trust these flags ask for.
    ///
    /// # Errors
    /// When the CA file cannot be read or holds no certificate.
    pub fn trust(&self) -> anyhow::Result<TlsTrust> {
        if let Some(path) = &self.ca {
            return TlsTrust::ca_file(path).context("--ca");
        }
        Ok(self
            .fingerprint
            .map_or(TlsTrust::System, TlsTrust::Fingerprint))
    }

    /// `options` with these credentials and this trust.
    ///
    /// # Errors
    /// As [`AccessArgs::trust`].
    pub fn apply(&self, options: ConnectOptions) -> anyhow::Result<ConnectOptions> {
        Ok(ConnectOptions {
            tls: self.trust()?,
            ..self.token.apply(options)
        })
    }
}

impl TokenArgs {
    /// `options` with this token.
    pub fn apply(&self, options: ConnectOptions) -> ConnectOptions {
        ConnectOptions {
            token: self.token.clone(),
            ..options
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        access: AccessArgs,
    }

    #[test]
    fn a_fingerprint_is_read_as_the_broker_prints_it() {
        let hex = "ab".repeat(32);
        let cli = Cli::try_parse_from(["x", "--fingerprint", &format!("sha256:{hex}")]).unwrap();
        assert_eq!(cli.access.fingerprint, Some([0xab; 32]));
        assert_eq!(
            cli.access.trust().unwrap(),
            TlsTrust::Fingerprint([0xab; 32])
        );
        let err = Cli::try_parse_from(["x", "--fingerprint", "abc"]).unwrap_err();
        assert!(err.to_string().contains("64 hex digits"), "{err}");
    }

    #[test]
    fn a_ca_and_a_fingerprint_exclude_each_other() {
        let hex = "ab".repeat(32);
        assert!(Cli::try_parse_from(["x", "--ca", "ca.pem", "--fingerprint", &hex]).is_err());
    }

    #[test]
    fn no_flag_is_the_public_cas_and_no_token() {
        let cli = Cli::try_parse_from(["x"]).unwrap();
        let options = cli.access.apply(ConnectOptions::default()).unwrap();
        assert_eq!(options.tls, TlsTrust::System);
        // BREADBOARD_TOKEN may be set where the tests run: only the flag is checked.
        let cli = Cli::try_parse_from(["x", "--token", "t"]).unwrap();
        let options = cli.access.apply(ConnectOptions::default()).unwrap();
        assert_eq!(options.token.as_deref(), Some("t"));
    }

    #[test]
    fn a_missing_ca_file_says_which_flag() {
        let cli = Cli::try_parse_from(["x", "--ca", "/nonexistent/ca.pem"]).unwrap();
        let err = cli.access.trust().unwrap_err();
        assert!(format!("{err:#}").contains("--ca"), "{err:#}");
    }
}
