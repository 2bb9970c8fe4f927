//! Messages already delivered, for when a broker's NATS subscriptions overlap (`a/+/c` and
//! `a/b/+` both match `a/b/c`, and NATS delivers such a message once per subscription): each
//! message's `bb-id` (origin broker, sequence) is remembered for a short window, and a second
//! copy is dropped. Copies arrive within moments of each other, so the window is short and the
//! memory bounded; without overlapping subscriptions nothing is remembered at all.

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

/// How long an id is remembered.
const WINDOW: Duration = Duration::from_secs(2);
/// Most ids remembered; past it the oldest go first.
const MAX_IDS: usize = 1 << 20;

/// A message's identity: the origin broker's id and its sequence number there.
pub(super) type MessageId = (u64, u64);

/// Ids seen lately.
#[derive(Debug, Default)]
pub(super) struct Dedupe {
    seen: HashSet<MessageId>,
    order: VecDeque<(Instant, MessageId)>,
}

impl Dedupe {
    /// Whether this is the first copy of `id` seen lately (and remembers it).
    pub(super) fn first(&mut self, id: MessageId, now: Instant) -> bool {
        while let Some(&(at, old)) = self.order.front() {
            if now.duration_since(at) < WINDOW && self.order.len() < MAX_IDS {
                break;
            }
            self.order.pop_front();
            self.seen.remove(&old);
        }
        if !self.seen.insert(id) {
            return false;
        }
        self.order.push_back((now, id));
        true
    }

    /// Forgets everything (no overlap any more).
    pub(super) fn clear(&mut self) {
        self.seen.clear();
        self.order.clear();
    }
}

/// Whether some subject matches both NATS patterns (`*` one token, `>` one or more, last).
pub fn patterns_overlap(a: &str, b: &str) -> bool {
    let (mut a, mut b) = (a.split('.'), b.split('.'));
    loop {
        match (a.next(), b.next()) {
            (Some(">"), Some(_)) | (Some(_), Some(">")) | (None, None) => return true,
            (Some("*"), Some(_)) | (Some(_), Some("*")) => {}
            (Some(x), Some(y)) if x == y => {}
            _ => return false,
        }
    }
}

/// Reads a `bb-id` header: `<origin as 16 hex digits>:<sequence>`.
pub(super) fn parse_id(text: &str) -> Option<MessageId> {
    let (origin, seq) = text.split_once(':')?;
    Some((u64::from_str_radix(origin, 16).ok()?, seq.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_copy_is_dropped_until_the_window_passes() {
        let mut d = Dedupe::default();
        let t0 = Instant::now();
        assert!(d.first((1, 1), t0));
        assert!(!d.first((1, 1), t0));
        assert!(d.first((2, 1), t0), "another origin");
        assert!(d.first((1, 1), t0 + WINDOW + Duration::from_millis(1)));
    }

    #[test]
    fn patterns_overlap_by_nats_rules() {
        assert!(patterns_overlap("bb.x.>", "bb.x.a.>"));
        assert!(patterns_overlap("bb.x.a.*", "bb.x.*.b"));
        assert!(!patterns_overlap("bb.x.a", "bb.x.a.>"));
        assert!(!patterns_overlap("bb.x.a.*", "bb.x.b.*"));
        assert!(!patterns_overlap("bb.x.>", "bb.x$.SYS.>"));
    }

    #[test]
    fn ids_parse_from_their_header() {
        assert_eq!(parse_id("00000000000000ff:7"), Some((255, 7)));
        assert_eq!(parse_id("zz:7"), None);
        assert_eq!(parse_id("ff"), None);
    }
}
