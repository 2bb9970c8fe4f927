//! What a bench message carries, and how subscribers account for what they received.
//!
//! The published `data` is a string of exactly `--size` bytes:
//!
//! ```text
//!  ~ PPPP SSSSSSSSSSSS TTTTTTTTTTTTTTTT xxxxxxxx...
//!  │ │    │            └ send time, ns since the bench started (hex)
//!  │ │    └ sequence number within that publisher (hex)
//!  │ └ publisher index (hex)
//!  └ marker
//! ```
//!
//! Fixed-width ASCII survives both encodings untouched (JSON escapes none of it, MessagePack
//! writes strings raw), so a publisher encodes one frame once and patches the stamp in place,
//! and a subscriber finds it in the delivered frame without decoding the frame.

/// Marks the start of the stamp.
const MARKER: u8 = b'~';
/// Bytes taken by the marker and the stamp: the smallest payload.
pub const MIN_SIZE: usize = 1 + 4 + 12 + 16;

/// What identifies one published message and when it was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Which publisher sent it.
    pub publisher: u16,
    /// Its number within that publisher, from 0.
    pub seq: u64,
    /// When it was sent, in ns since the bench's origin.
    pub sent_ns: u64,
}

/// The payload string of `size` bytes (at least [`MIN_SIZE`]), stamp zeroed.
pub fn template(size: usize) -> String {
    let mut s = String::with_capacity(size.max(MIN_SIZE));
    s.push(MARKER as char);
    s.push_str(&"0".repeat(MIN_SIZE - 1));
    s.push_str(&"x".repeat(size.saturating_sub(MIN_SIZE)));
    s
}

/// Where the marker is in an encoded frame.
pub fn find(frame: &[u8]) -> Option<usize> {
    memchr::memchr(MARKER, frame)
}

fn put_hex(out: &mut [u8], mut value: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in out.iter_mut().rev() {
        *b = DIGITS[(value & 0xF) as usize];
        value >>= 4;
    }
}

fn hex(bytes: &[u8]) -> Option<u64> {
    bytes.iter().try_fold(0u64, |acc, b| {
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => return None,
        };
        Some(acc << 4 | u64::from(d))
    })
}

/// Writes `stamp` into `frame` whose marker is at `at`.
pub fn write(frame: &mut [u8], at: usize, stamp: Stamp) {
    let s = &mut frame[at + 1..at + MIN_SIZE];
    put_hex(&mut s[0..4], u64::from(stamp.publisher));
    put_hex(&mut s[4..16], stamp.seq);
    put_hex(&mut s[16..32], stamp.sent_ns);
}

/// Reads the stamp of a delivered frame, if it carries one.
pub fn read(frame: &[u8]) -> Option<Stamp> {
    let at = find(frame)?;
    let s = frame.get(at + 1..at + MIN_SIZE)?;
    Some(Stamp {
        publisher: hex(&s[0..4])? as u16,
        seq: hex(&s[4..16])?,
        sent_ns: hex(&s[16..32])?,
    })
}

/// What one subscriber received, per publisher. Messages from one publisher arrive in order
/// (one connection, and the broker keeps order), so a jump forward is a loss and a step back a
/// duplicate.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    /// The next sequence number expected from each publisher.
    next: Vec<u64>,
    /// Distinct messages received.
    pub received: u64,
    /// Messages that came again or out of order.
    pub duplicates: u64,
    /// Stamps naming a publisher that does not exist.
    pub foreign: u64,
}

impl Tally {
    /// A tally for `publishers` publishers.
    pub fn new(publishers: usize) -> Self {
        Self {
            next: vec![0; publishers],
            ..Self::default()
        }
    }

    /// Counts one delivery; returns whether it was a new message.
    pub fn record(&mut self, stamp: Stamp) -> bool {
        let Some(next) = self.next.get_mut(usize::from(stamp.publisher)) else {
            self.foreign += 1;
            return false;
        };
        if stamp.seq < *next {
            self.duplicates += 1;
            return false;
        }
        *next = stamp.seq + 1;
        self.received += 1;
        true
    }

    /// Messages not received, when each publisher `p` sent `sent[p]`.
    pub fn lost(&self, sent: &[u64]) -> u64 {
        let expected: u64 = sent.iter().sum();
        expected.saturating_sub(self.received)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_has_the_size_asked() {
        assert_eq!(template(64).len(), 64);
        assert_eq!(template(MIN_SIZE).len(), MIN_SIZE);
        assert_eq!(template(0).len(), MIN_SIZE);
    }

    #[test]
    fn stamp_round_trips_inside_an_encoded_frame() {
        let mut frame = br#"{"op":"msg","topic":"bench/t","data":""#.to_vec();
        frame.extend(template(64).as_bytes());
        frame.extend(br#"","retained":false}"#);
        let at = find(&frame).unwrap();
        let stamp = Stamp {
            publisher: 3,
            seq: 123_456_789,
            sent_ns: u64::MAX / 3,
        };
        write(&mut frame, at, stamp);
        assert_eq!(read(&frame), Some(stamp));
        assert!(serde_json::from_slice::<serde_json::Value>(&frame).is_ok());
    }

    #[test]
    fn frames_without_a_stamp_read_as_none() {
        assert_eq!(read(br#"{"op":"ok","id":1}"#), None);
        assert_eq!(read(b"~12"), None);
        assert_eq!(read(b"~zzzz000000000000000000000000000000"), None);
    }

    #[test]
    fn tally_counts_losses_and_duplicates() {
        let mut t = Tally::new(2);
        let s = |publisher, seq| Stamp {
            publisher,
            seq,
            sent_ns: 0,
        };
        assert!(t.record(s(0, 0)));
        assert!(t.record(s(0, 1)));
        assert!(t.record(s(0, 4))); // 2 and 3 lost
        assert!(!t.record(s(0, 4))); // again
        assert!(t.record(s(1, 0)));
        assert!(!t.record(s(9, 0)));
        assert_eq!(t.received, 4);
        assert_eq!(t.duplicates, 1);
        assert_eq!(t.foreign, 1);
        assert_eq!(t.lost(&[5, 1]), 2);
        assert_eq!(t.lost(&[5, 3]), 4);
    }
}
