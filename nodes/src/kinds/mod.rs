//! The built-in node kinds, registered by name so that the CLI can run any of them:
//! `breadboard node <kind> [--broker URL] [--name N] [kind flags]`.
//!
//! | kind     | subscribes     | publishes                                   | data                    |
//! |----------|----------------|---------------------------------------------|-------------------------|
//! | `clock`  | –              | `clock/tick` (request)                      | tick number `n`         |
//! | `pin`    | `clock/tick`   | `pin/<name>/state` (retained, on change); reply to the tick | `0`/`1`; bits `[1, 0, 1]` |
//! | `buzzer` | `pin/+/state`  | `buzzer/<name>/buzz` on each 0 → 1          | the pin's name          |
//!
//! See each module for the details, and [`Kind`] to add one.

pub mod buzzer;
pub mod clock;
pub mod pin;

use std::time::Duration;

use clap::{ArgMatches, Command, FromArgMatches};

use crate::node::AnyNode;

/// A node kind the CLI can run by name.
#[derive(Debug, Clone, Copy)]
pub struct Kind {
    /// The name on the command line, also the `hello` kind.
    pub name: &'static str,
    /// One line for `--help`.
    pub about: &'static str,
    /// The `hello` name used when none is given.
    pub default_name: &'static str,
    args: fn(Command) -> Command,
    build: fn(&ArgMatches) -> Result<AnyNode, clap::Error>,
}

impl Kind {
    /// Adds this kind's flags to a command.
    pub fn augment_args(&self, cmd: Command) -> Command {
        (self.args)(cmd)
    }

    /// Builds a node from flags parsed by a command made with [`Kind::augment_args`].
    ///
    /// # Errors
    /// A [`clap::Error`] when the flags do not make a valid node.
    pub fn build(&self, matches: &ArgMatches) -> Result<AnyNode, clap::Error> {
        (self.build)(matches)
    }
}

fn build_clock(m: &ArgMatches) -> Result<AnyNode, clap::Error> {
    Ok(AnyNode::new(clock::Clock::new(
        clock::ClockOptions::from_arg_matches(m)?,
    )))
}

fn build_pin(m: &ArgMatches) -> Result<AnyNode, clap::Error> {
    Ok(AnyNode::new(pin::Pin::new(
        pin::PinOptions::from_arg_matches(m)?,
    )))
}

fn build_buzzer(m: &ArgMatches) -> Result<AnyNode, clap::Error> {
    buzzer::BuzzerOptions::from_arg_matches(m)?;
    Ok(AnyNode::new(buzzer::Buzzer::new()))
}

/// Every built-in kind.
pub static KINDS: &[Kind] = &[
    Kind {
        name: "clock",
        about: "Ticks on clock/tick as requests and prints every acknowledgement",
        default_name: "clock",
        args: <clock::ClockOptions as clap::Args>::augment_args,
        build: build_clock,
    },
    Kind {
        name: "pin",
        about: "Draws random bits on each tick, publishes its state changes, replies with the bits",
        default_name: "pin-1",
        args: <pin::PinOptions as clap::Args>::augment_args,
        build: build_pin,
    },
    Kind {
        name: "buzzer",
        about: "Buzzes on every 0 to 1 transition of any pin",
        default_name: "buzzer",
        args: <buzzer::BuzzerOptions as clap::Args>::augment_args,
        build: build_buzzer,
    },
];

/// The kind of this name.
pub fn find(name: &str) -> Option<&'static Kind> {
    KINDS.iter().find(|k| k.name == name)
}

/// The names of every kind, for help texts.
pub fn names() -> Vec<&'static str> {
    KINDS.iter().map(|k| k.name).collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_parses_its_defaults_and_builds() {
        for kind in KINDS {
            let cmd = kind.augment_args(Command::new(kind.name));
            let m = cmd.try_get_matches_from([kind.name]).unwrap();
            kind.build(&m).unwrap();
        }
        assert_eq!(names(), ["clock", "pin", "buzzer"]);
        assert!(find("pin").is_some());
        assert!(find("led").is_none());
    }

    #[test]
    fn bad_flags_are_clap_errors() {
        let pin = find("pin").unwrap();
        let cmd = || pin.augment_args(Command::new("pin"));
        assert!(cmd()
            .try_get_matches_from(["pin", "--chance", "1.5"])
            .is_err());
        assert!(cmd()
            .try_get_matches_from(["pin", "--sequence", "0"])
            .is_err());
        let clock = find("clock").unwrap();
        assert!(clock
            .augment_args(Command::new("clock"))
            .try_get_matches_from(["clock", "-d", "0"])
            .is_err());
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
