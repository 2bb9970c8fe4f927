//! Slows down guessing: each address that gave wrong credentials waits before its next attempt
//! is checked, twice as long after each further failure (100 ms, 200 ms, ... up to 10 s). A
//! success clears its count; so do ten quiet minutes.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The wait after the first failure.
const FIRST_DELAY: Duration = Duration::from_millis(100);
/// The longest wait.
const MAX_DELAY: Duration = Duration::from_secs(10);
/// How long after its last failure an address is forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(600);
/// Addresses remembered at most; past it the quiet ones go first, then all.
const MAX_ADDRESSES: usize = 65_536;

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
}

/// Failures by address.
#[derive(Debug, Default)]
pub(crate) struct Throttle {
    failures: Mutex<HashMap<IpAddr, Failures>>,
}

/// The wait after `count` failures in a row.
fn delay_after(count: u32) -> Duration {
    if count == 0 {
        return Duration::ZERO;
    }
    let doublings = (count - 1).min(16);
    FIRST_DELAY.saturating_mul(1 << doublings).min(MAX_DELAY)
}

impl Throttle {
    /// How long an attempt from `ip` waits before it is checked.
    pub(crate) fn delay(&self, ip: IpAddr) -> Duration {
        let Ok(failures) = self.failures.lock() else {
            return Duration::ZERO;
        };
        match failures.get(&ip) {
            Some(f) if f.last.elapsed() < FORGET_AFTER => delay_after(f.count),
            _ => Duration::ZERO,
        }
    }

    /// Counts a failure from `ip`.
    pub(crate) fn failed(&self, ip: IpAddr) {
        let Ok(mut failures) = self.failures.lock() else {
            return;
        };
        if failures.len() >= MAX_ADDRESSES && !failures.contains_key(&ip) {
            failures.retain(|_, f| f.last.elapsed() < FORGET_AFTER);
            if failures.len() >= MAX_ADDRESSES {
                failures.clear();
            }
        }
        let now = Instant::now();
        let entry = failures.entry(ip).or_insert(Failures {
            count: 0,
            last: now,
        });
        if entry.last.elapsed() >= FORGET_AFTER {
            entry.count = 0;
        }
        entry.count = entry.count.saturating_add(1);
        entry.last = now;
    }

    /// Clears `ip`'s failures.
    pub(crate) fn succeeded(&self, ip: IpAddr) {
        if let Ok(mut failures) = self.failures.lock() {
            failures.remove(&ip);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_delay_doubles_up_to_a_cap() {
        assert_eq!(delay_after(0), Duration::ZERO);
        assert_eq!(delay_after(1), Duration::from_millis(100));
        assert_eq!(delay_after(2), Duration::from_millis(200));
        assert_eq!(delay_after(4), Duration::from_millis(800));
        assert_eq!(delay_after(30), MAX_DELAY);
    }

    #[test]
    fn failures_count_per_address_and_a_success_clears_them() {
        let t = Throttle::default();
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        t.failed(a);
        t.failed(a);
        assert_eq!(t.delay(a), Duration::from_millis(200));
        assert_eq!(t.delay(b), Duration::ZERO);
        t.succeeded(a);
        assert_eq!(t.delay(a), Duration::ZERO);
    }
}
