//! The circuit end to end: the real `breadboard` binary as the broker and as each node, over
//! loopback sockets on ports the system picks. Every wait is bounded; every child process is
//! killed when its guard ([`Proc`]) drops, even when an assertion fails.

use std::time::{Duration, Instant};

use nodes::kinds::pin::rises;

use crate::common::{Broker, Proc, WAIT};

/// Longer waits, for what takes several ticks or a reconnection.
const LONG_WAIT: Duration = Duration::from_secs(30);

/// What one process printed so far.
struct Printed<'a> {
    proc: &'a Proc,
    lines: Vec<String>,
}

impl<'a> Printed<'a> {
    fn of(proc: &'a Proc) -> Self {
        Self {
            proc,
            lines: Vec::new(),
        }
    }

    /// Takes in every line printed up to now.
    fn pump(&mut self) {
        while let Ok(line) = self.proc.lines.try_recv() {
            self.lines.push(line);
        }
    }

    /// Takes in every line until the process closes its stdout (bounded by `wait`).
    fn pump_to_end(&mut self, wait: Duration) {
        let deadline = Instant::now() + wait;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.proc.line(left) {
                Some(line) => self.lines.push(line),
                None => return,
            }
        }
    }

    fn with(&self, needle: &str) -> Vec<&String> {
        self.lines.iter().filter(|l| l.contains(needle)).collect()
    }

    fn count(&mut self, needle: &str) -> usize {
        self.pump();
        self.with(needle).len()
    }

    /// Waits until at least `n` lines contain `needle`; panics with what was printed.
    fn wait_for(&mut self, needle: &str, n: usize, wait: Duration) {
        let deadline = Instant::now() + wait;
        while self.count(needle) < n {
            assert!(
                Instant::now() < deadline,
                "fewer than {n} lines with {needle:?} within {wait:?}; printed: {:#?}",
                self.lines
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// `breadboard node <kind> --broker <url> <extra>`.
fn node(kind: &str, url: &str, extra: &[&str]) -> Proc {
    let mut args = vec!["node", kind, "--broker", url, "--no-mdns"];
    args.extend_from_slice(extra);
    Proc::start(&args)
}

/// The pin's bit stream, from its lines `[ pin-1 ] tick N -> [1, 0, 1]`, in order.
fn bit_stream(lines: &[&String]) -> Vec<u8> {
    lines
        .iter()
        .flat_map(|line| {
            let list = line.rsplit("-> ").next().unwrap_or_default();
            list.trim_matches(|c| c == '[' || c == ']')
                .split(", ")
                .map(|b| b.parse::<u8>().expect("a bit"))
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn demo_runs_the_circuit_and_exits_zero() {
    let mut demo = Proc::start(&["demo", "--tacks", "4", "--delay", "0.05", "--seed", "3"]);
    let status = demo.wait_exit(LONG_WAIT).expect("the demo ends by itself");
    assert!(status.success(), "demo exit status {status}");
    let mut out = Printed::of(&demo);
    out.pump_to_end(WAIT);
    for n in 0..4 {
        assert_eq!(
            out.with(&format!("[ clock ] > {n}")).len(),
            1,
            "{:#?}",
            out.lines
        );
    }
    assert_eq!(
        out.with("[ clock ] < pin-1: [").len(),
        4,
        "{:#?}",
        out.lines
    );
    let ticks = out.with("[ pin-1 ] tick ");
    assert_eq!(ticks.len(), 4);
    assert_eq!(
        out.with("[ buzzer ] bzzz (pin-1)").len(),
        rises(&bit_stream(&ticks)),
        "{:#?}",
        out.lines
    );
}

#[test]
fn with_a_seed_buzzes_match_rises_and_every_tick_is_acknowledged() {
    let broker = Broker::start(&[]);
    let url = broker.url();
    let pin = node("pin", &url, &["--seed", "11"]);
    let buzzer = node("buzzer", &url, &[]);
    let (mut pin_out, mut buzzer_out) = (Printed::of(&pin), Printed::of(&buzzer));
    // Both subscribed before the first tick: "online" is printed once subscriptions are acked.
    pin_out.wait_for("[ pin-1 ] online at", 1, WAIT);
    buzzer_out.wait_for("[ buzzer ] online at", 1, WAIT);

    let tacks = 10;
    let mut clock = node(
        "clock",
        &url,
        &["--tacks", "10", "--delay", "0.05", "--expect", "1"],
    );
    let status = clock
        .wait_exit(LONG_WAIT)
        .expect("the clock ends by itself");
    assert!(status.success(), "clock exit status {status}");
    let mut clock_out = Printed::of(&clock);
    clock_out.pump_to_end(WAIT);
    for n in 0..tacks {
        assert_eq!(clock_out.with(&format!("[ clock ] > {n}")).len(), 1);
    }
    assert_eq!(clock_out.with("[ clock ] < pin-1: [").len(), tacks);

    pin_out.wait_for("[ pin-1 ] tick ", tacks, WAIT);
    let bits = bit_stream(&pin_out.with("[ pin-1 ] tick "));
    assert_eq!(
        bits.len(),
        3 * tacks,
        "--sequence defaults to 3 bits a tick"
    );
    let expected = rises(&bits);
    assert!(expected > 0, "seed 11 makes the pin rise: {bits:?}");
    buzzer_out.wait_for("bzzz (pin-1)", expected, WAIT);
    // Nothing more comes afterwards.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        buzzer_out.count("bzzz"),
        expected,
        "{:#?}",
        buzzer_out.lines
    );
}

#[test]
fn nodes_reconnect_by_themselves_after_a_broker_restart() {
    let broker = Broker::start(&[]);
    let url = broker.url();
    let port = broker.addr.port();
    let pin = node("pin", &url, &["--seed", "5"]);
    let buzzer = node("buzzer", &url, &[]);
    let (mut pin_out, mut buzzer_out) = (Printed::of(&pin), Printed::of(&buzzer));
    pin_out.wait_for("online at", 1, WAIT);
    buzzer_out.wait_for("online at", 1, WAIT);
    let clock = node("clock", &url, &["--tacks", "0", "--delay", "0.1"]);
    let mut clock_out = Printed::of(&clock);
    clock_out.wait_for("< pin-1: [", 3, WAIT);
    buzzer_out.wait_for("bzzz (pin-1)", 1, LONG_WAIT);

    // Kill the broker (SIGKILL, by PID) and start a new one on the same port.
    drop(broker);
    for out in [&mut pin_out, &mut buzzer_out, &mut clock_out] {
        out.wait_for("offline, reconnecting", 1, WAIT);
    }
    let acks = clock_out.count("< pin-1: [");
    let buzzes = buzzer_out.count("bzzz (pin-1)");
    let _broker = Broker::start_on(port, &[]);

    for out in [&mut pin_out, &mut buzzer_out, &mut clock_out] {
        out.wait_for("back online at", 1, LONG_WAIT);
    }
    clock_out.wait_for("< pin-1: [", acks + 3, LONG_WAIT);
    buzzer_out.wait_for("bzzz (pin-1)", buzzes + 1, LONG_WAIT);
    // Still the same processes: each said "online" once, then only "back online".
    for out in [&mut pin_out, &mut buzzer_out, &mut clock_out] {
        assert_eq!(out.count("] online at"), 1, "{:#?}", out.lines);
    }
}

#[test]
fn a_tick_nobody_acknowledges_fails_the_clock_clearly() {
    let broker = Broker::start(&[]);
    let mut clock = node(
        "clock",
        &broker.url(),
        &[
            "--tacks",
            "2",
            "--delay",
            "0.05",
            "--expect",
            "1",
            "--timeout",
            "0.3",
        ],
    );
    let status = clock.wait_exit(WAIT).expect("the clock gives up by itself");
    assert!(!status.success());
}

#[test]
fn bits_come_from_the_pin_tick_lines() {
    let line = "[ pin-1 ] tick 2 -> [0, 1, 1]".to_string();
    assert_eq!(bit_stream(&[&line]), [0, 1, 1]);
}
