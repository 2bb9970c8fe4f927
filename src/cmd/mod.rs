//! One module per subcommand, each with its clap `Args` and an async `run`, and what several
//! share: logging, signals, the mDNS flags, durations in seconds.

pub mod access;
pub mod bench;
pub mod broker;
pub mod demo;
pub mod ls;
pub mod node;
pub mod passwd;
pub mod publish;
pub mod req;
pub mod sub;
pub mod tool;

use std::time::Duration;

use discovery::Discovery;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// Logs go to stderr, filtered by `RUST_LOG` (else by `default`), so that stdout carries only
/// what a command prints for people and scripts.
pub fn init_tracing(default: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// A token cancelled on Ctrl-C (SIGINT) or SIGTERM, for graceful shutdown. The handlers are
/// installed before this returns, so a signal that arrives right after (say, as soon as a
/// supervisor reads "listening on") is already graceful.
///
/// # Errors
/// When the signal handlers cannot be installed.
pub fn shutdown_on_signal() -> anyhow::Result<CancellationToken> {
    let token = CancellationToken::new();
    let cancel = token.clone();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        tokio::spawn(async move {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
            tracing::info!("shutting down");
            cancel.cancel();
        });
    }
    #[cfg(not(unix))]
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutting down");
        cancel.cancel();
    });
    Ok(token)
}

/// The mDNS flags every command that advertises or browses takes.
#[derive(clap::Args, Debug, Clone)]
pub struct MdnsArgs {
    /// Create no mDNS daemon at all: no advertising, no browsing, no multicast.
    #[arg(long, env = "BREADBOARD_NO_MDNS", value_parser = clap::builder::FalseyValueParser::new())]
    pub no_mdns: bool,
    /// Limit mDNS to this interface (a name such as `eth1`, or one of its IPv4 addresses);
    /// repeat for several. One that does not exist is an error. Default: every interface.
    #[arg(long = "mdns-interface", value_name = "NAME|IPV4")]
    pub interfaces: Vec<String>,
}

impl MdnsArgs {
    /// Starts discovery unless `--no-mdns`.
    ///
    /// # Errors
    /// When an interface does not exist or the daemon cannot start.
    pub fn start(&self) -> anyhow::Result<Option<Discovery>> {
        if self.no_mdns {
            return Ok(None);
        }
        Ok(Some(Discovery::start(&self.interfaces)?))
    }
}

/// Parses a positive number of seconds, fractions allowed (`0.25`).
///
/// # Errors
/// A message for clap when the text is not a positive, finite number.
pub fn parse_seconds(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if secs.is_nan() || secs <= 0.0 {
        return Err(format!("{s} must be more than 0 seconds"));
    }
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{s} seconds: {e}"))
}

/// Parses a duration for a flag: a plain number of seconds (`90`, `0.5`) or a number with a
/// unit, as humantime reads them (`90s`, `500ms`, `10m`, `24h`, `1h 30m`).
///
/// # Errors
/// What is wrong, for clap to show.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<f64>() {
        if secs.is_nan() || secs < 0.0 {
            return Err(format!("{s} is not a duration"));
        }
        return Duration::try_from_secs_f64(secs).map_err(|e| format!("{s} seconds: {e}"));
    }
    humantime::parse_duration(s)
        .map_err(|e| format!("{s:?} is not a duration such as 90, 90s, 10m or 24h ({e})"))
}

/// Shows a duration the way [`parse_duration`] reads them: `2m`, `1h 30m`, `4s 250ms`
/// (whole seconds from a minute up, milliseconds below).
pub fn format_duration(d: Duration) -> String {
    let rounded = if d >= Duration::from_secs(60) {
        Duration::from_secs(d.as_secs())
    } else {
        Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    };
    humantime::format_duration(rounded).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_plain_seconds_or_units() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("0.5"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration(" 1h 30m "), Ok(Duration::from_secs(5_400)));
        for bad in ["", "-1", "NaN", "ten", "10 parsecs", "1e400"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5_400)));
    }

    #[test]
    fn durations_are_shown_as_they_are_read() {
        assert_eq!(format_duration(Duration::from_secs_f64(120.004)), "2m");
        assert_eq!(format_duration(Duration::from_secs(5_400)), "1h 30m");
        assert_eq!(format_duration(Duration::from_secs_f64(4.25)), "4s 250ms");
        for d in [Duration::from_secs(90), Duration::from_secs(86_400)] {
            assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }
    }

    #[test]
    fn seconds_accept_fractions_only_when_positive() {
        assert_eq!(parse_seconds("0.25"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_seconds("2"), Ok(Duration::from_secs(2)));
        for bad in ["0", "-1", "abc", "NaN", "inf", ""] {
            assert!(parse_seconds(bad).is_err(), "{bad}");
        }
    }
}
