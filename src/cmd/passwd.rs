//! `breadboard passwd`: turns a secret into the line an auth file holds (`tokens = [...]`), or
//! makes a random token and prints both.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::Context;

/// Flags of `breadboard passwd`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Make a random token (256 bits) instead of reading one: prints the token, then the line
    /// for the auth file.
    #[arg(long)]
    pub generate: bool,
}

/// Secrets shorter than this are accepted, with a warning.
const SHORT_SECRET: usize = 16;

/// Reads the secret (or makes one) and prints what the auth file needs.
///
/// # Errors
/// An empty secret, or standard input or output failing.
pub fn run(args: Args) -> anyhow::Result<()> {
    let token = if args.generate {
        broker::auth::generate_token()
    } else {
        let stdin = std::io::stdin();
        if stdin.is_terminal() {
            eprint!("secret (shown as typed; pipe it in to keep it off the screen): ");
            std::io::stderr().flush()?;
        }
        let mut line = String::new();
        stdin
            .lock()
            .read_line(&mut line)
            .context("cannot read the secret from standard input")?;
        let secret = line.trim_end_matches(['\n', '\r']).to_string();
        anyhow::ensure!(
            !secret.is_empty(),
            "no secret on standard input (or use --generate)"
        );
        if secret.chars().count() < SHORT_SECRET {
            eprintln!(
                "warning: a secret under {SHORT_SECRET} characters is easy to guess; --generate makes a strong one"
            );
        }
        secret
    };
    let hash = broker::auth::hash_token(&token)?;
    let mut out = std::io::stdout().lock();
    if args.generate {
        writeln!(out, "{token}")?;
    }
    writeln!(out, "tokens = [\"{hash}\"]")?;
    Ok(())
}
