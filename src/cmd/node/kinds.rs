//! The built-in kinds as the command line knows them: each one's name, help line, usual name
//! and flags, and how the flags become the node. The nodes themselves and their plain options
//! live in `nodes::kinds`; this is where flags meet them.

use std::time::Duration;

use clap::{ArgMatches, Command, FromArgMatches};
use nodes::kinds::buzzer::Buzzer;
use nodes::kinds::clock::{Clock, ClockOptions};
use nodes::kinds::pin::{Pin, PinOptions};
use nodes::AnyNode;

use crate::cmd::parse_seconds;

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
    /// The kind whose flags are `F`.
    const fn of<F: KindFlags>() -> Self {
        Self {
            name: F::NAME,
            about: F::ABOUT,
            default_name: F::DEFAULT_NAME,
            args: F::augment_args,
            build: build::<F>,
        }
    }

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

/// Every built-in kind.
pub static KINDS: &[Kind] = &[
    Kind::of::<ClockFlags>(),
    Kind::of::<PinFlags>(),
    Kind::of::<BuzzerFlags>(),
];

/// The flags of one kind, and what the kind is.
trait KindFlags: clap::Args + FromArgMatches {
    /// See [`Kind::name`].
    const NAME: &'static str;
    /// See [`Kind::about`].
    const ABOUT: &'static str;
    /// See [`Kind::default_name`].
    const DEFAULT_NAME: &'static str;

    /// The node these flags describe.
    fn node(self) -> AnyNode;
}

/// Reads a kind's flags from `matches` and makes its node of them.
fn build<F: KindFlags>(matches: &ArgMatches) -> Result<AnyNode, clap::Error> {
    Ok(F::from_arg_matches(matches)?.node())
}

/// The kind of this name.
pub fn find(name: &str) -> Option<&'static Kind> {
    KINDS.iter().find(|k| k.name == name)
}

/// The clock's flags.
#[derive(Debug, Clone, PartialEq, clap::Args)]
pub struct ClockFlags {
    /// Ticks to send, then stop; 0 ticks forever.
    #[arg(short = 't', long, default_value_t = ClockOptions::default().tacks)]
    pub tacks: u64,
    /// Seconds between ticks (fractions allowed).
    #[arg(short = 'd', long, default_value = "1", value_parser = parse_seconds)]
    pub delay: Duration,
    /// Acknowledgements expected per tick (one per pin). A tick ends as soon as they arrived;
    /// one that gets fewer within its window stops the clock with an error. 0: just print
    /// what arrives.
    #[arg(long, default_value_t = ClockOptions::default().expect)]
    pub expect: usize,
    /// Seconds a tick waits for acknowledgements. Default: the delay, or at least 5 s with
    /// --expect.
    #[arg(long, value_parser = parse_seconds)]
    pub timeout: Option<Duration>,
}

impl ClockFlags {
    /// The clock these flags describe.
    pub fn options(&self) -> ClockOptions {
        ClockOptions {
            tacks: self.tacks,
            delay: self.delay,
            expect: self.expect,
            timeout: self.timeout,
        }
    }
}

impl KindFlags for ClockFlags {
    const NAME: &'static str = "clock";
    const ABOUT: &'static str = "Ticks on clock/tick as requests and prints every acknowledgement";
    const DEFAULT_NAME: &'static str = "clock";

    fn node(self) -> AnyNode {
        AnyNode::new(Clock::new(self.options()))
    }
}

/// The pin's flags.
#[derive(Debug, Clone, PartialEq, clap::Args)]
pub struct PinFlags {
    /// Bits drawn on each tick.
    #[arg(
        long,
        default_value_t = PinOptions::default().sequence,
        value_parser = clap::value_parser!(u32).range(1..=64)
    )]
    pub sequence: u32,
    /// Probability that a drawn bit is 0, from 0 to 1.
    #[arg(long, default_value_t = PinOptions::default().chance, value_parser = parse_chance)]
    pub chance: f64,
    /// Seed of the random draw, for a reproducible run.
    #[arg(long)]
    pub seed: Option<u64>,
}

impl KindFlags for PinFlags {
    const NAME: &'static str = "pin";
    const ABOUT: &'static str =
        "Draws random bits on each tick, publishes its state changes, replies with the bits";
    const DEFAULT_NAME: &'static str = "pin-1";

    fn node(self) -> AnyNode {
        AnyNode::new(Pin::new(self.options()))
    }
}

impl PinFlags {
    /// The pin these flags describe.
    pub fn options(&self) -> PinOptions {
        PinOptions {
            sequence: self.sequence,
            chance: self.chance,
            seed: self.seed,
        }
    }
}

/// The buzzer's flags (none yet).
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct BuzzerFlags {}

impl KindFlags for BuzzerFlags {
    const NAME: &'static str = "buzzer";
    const ABOUT: &'static str = "Buzzes on every 0 to 1 transition of any pin";
    const DEFAULT_NAME: &'static str = "buzzer";

    fn node(self) -> AnyNode {
        AnyNode::new(Buzzer::new())
    }
}

fn parse_chance(s: &str) -> Result<f64, String> {
    let p: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number"))?;
    if (0.0..=1.0).contains(&p) {
        Ok(p)
    } else {
        Err(format!("{s} is not a probability between 0 and 1"))
    }
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
        let names: Vec<&str> = KINDS.iter().map(|k| k.name).collect();
        assert_eq!(names, ["clock", "pin", "buzzer"]);
        assert!(find("pin").is_some());
        assert!(find("led").is_none());
    }

    /// Parses a flags struct from `argv` alone.
    fn parse<F: clap::Args + FromArgMatches>(argv: &[&str]) -> F {
        let cmd = F::augment_args(Command::new("kind").no_binary_name(true));
        F::from_arg_matches(&cmd.try_get_matches_from(argv).unwrap()).unwrap()
    }

    #[test]
    fn flag_defaults_are_the_options_defaults() {
        assert_eq!(parse::<ClockFlags>(&[]).options(), ClockOptions::default());
        assert_eq!(parse::<PinFlags>(&[]).options(), PinOptions::default());
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
    fn chance_must_be_a_probability() {
        assert_eq!(parse_chance("0.6"), Ok(0.6));
        assert!(parse_chance("1.01").is_err());
        assert!(parse_chance("-0.1").is_err());
        assert!(parse_chance("NaN").is_err());
    }
}
