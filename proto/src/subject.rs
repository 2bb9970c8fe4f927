//! Topics as NATS subjects: the reversible mapping a cluster of brokers uses to carry breadboard
//! topics through NATS (issue 13), and that NATS's own tools use to watch or feed them.
//!
//! # The mapping
//!
//! A cluster named `C` (default `breadboard`) owns two subject roots, which no NATS wildcard
//! can match together:
//! - `bb.C` for topics whose first level does not start with `$`: `pin/pin-1/state` is
//!   `bb.breadboard.pin.pin-1.state`;
//! - `bb.C$` for the broker's own topics, whose first level starts with `$`; that `$` is left
//!   out of the first token, because the root already says it: `$SYS/nodes/pin-1` is
//!   `bb.breadboard$.SYS.nodes.pin-1`. A first level that is `$` alone becomes the token `=`.
//!
//! A third root, `bb.C!`, carries what brokers say to each other and is never a topic
//! ([`SubjectSpace::control_subject`]).
//!
//! Each topic level is one subject token. Bytes other than `A`–`Z`, `a`–`z`, `0`–`9`, `-` and
//! `_` are escaped as `=` and two uppercase hexadecimal digits, one escape per byte of the
//! level's UTF-8 text (quoted-printable's form): `.` is `=2E`, a space `=20`, `*` `=2A`, `>`
//! `=3E`, `$` (past the first level's first byte) `=24`, `=` itself `=3D`, and `é` is `=C3=A9`.
//! So a subject holds only printable ASCII: no whitespace, no `.` inside a token, no token
//! that NATS takes for a wildcard, nothing starting with `$` (NATS's reserved prefix), and the
//! part after the root is a valid JetStream key-value key (`[-/_=.A-Za-z0-9]+`). Topics of the
//! usual kind (`clock/tick`, `pin/pin-1/state`) read the same in both forms.
//!
//! Decoding is strict: a subject decodes to a topic only if it is the one encoding of that
//! topic (escapes of exactly the bytes that need one, uppercase hexadecimal, a valid topic in
//! the end), so topic → subject → topic is the identity, and subject → topic → subject too
//! wherever the first step succeeds. Anything else is a [`SubjectError`].
//!
//! # Filters
//!
//! A filter maps level by level in the same way, `+` to `*` and `#` to `>`, with one
//! difference to mind: `a/#` matches `a` itself, NATS's `a.>` does not. A subscriber for
//! `a/#` therefore subscribes to two subjects, `bb.C.a` and `bb.C.a.>`;
//! [`SubjectSpace::filter_subjects`] gives the one or two subjects any filter needs (`#` alone
//! needs only `bb.C.>`: a topic has at least one level). Between them those subjects match the
//! encodings of exactly the topics the filter matches, `$` rule included: a filter whose first
//! level is a wildcard maps under `bb.C`, where no `$` topic lives.
//!
//! NATS delivers a message once per matching subscription of a connection, so a connection
//! holding subscriptions for overlapping filters (`a/#` and `a/+`) receives a message on
//! `a/b` twice: whoever subscribes for several filters on one connection deduplicates, or
//! delivers each copy only to the filters its subscription stands for.
//!
//! ```text
//!  topic   pin/pin-1/state      ⇄  bb.breadboard.pin.pin-1.state
//!  topic   $SYS/nodes/pin-1     ⇄  bb.breadboard$.SYS.nodes.pin-1
//!  topic   a.b/x y              ⇄  bb.breadboard.a=2Eb.x=20y
//!  filter  pin/+/state          →  bb.breadboard.pin.*.state
//!  filter  pin/#                →  bb.breadboard.pin, bb.breadboard.pin.>
//!  filter  #                    →  bb.breadboard.>
//! ```
//!
//! The longest subject is three bytes per topic byte (every byte escaped) plus the root: a
//! little over 3 KiB for the longest topic, within NATS's default 4 KiB control line.

use std::fmt;

use crate::topic::{TopicError, TopicFilter, TopicName};

/// The cluster name brokers use when none is given.
pub const DEFAULT_CLUSTER: &str = "breadboard";

/// The first token of every subject breadboard uses.
pub const SUBJECT_PREFIX: &str = "bb";

/// Longest cluster name, in bytes.
pub const MAX_CLUSTER_NAME_BYTES: usize = 64;

/// Why a cluster name or a subject is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SubjectError {
    /// A cluster name that is not 1 to [`MAX_CLUSTER_NAME_BYTES`] of `A-Za-z0-9_-`: it must
    /// be one plain subject token.
    #[error(
        "cluster name {0:?} must be 1 to {MAX_CLUSTER_NAME_BYTES} letters, digits, '-' or '_'"
    )]
    ClusterName(String),
    /// A subject under neither of the cluster's roots.
    #[error("subject is not under {0}. or {0}$.")]
    Foreign(String),
    /// Two dots in a row, or a dot at the end.
    #[error("subject has an empty token")]
    EmptyToken,
    /// A `*` or `>` token: a subscription pattern, not where a message is published.
    #[error("subject holds a wildcard token")]
    Wildcard,
    /// A character that the encoding always escapes, found as it is.
    #[error("{0:?} must be escaped as =XX in a subject")]
    Unescaped(char),
    /// A `=` not followed by two uppercase hexadecimal digits.
    #[error("'=' must be followed by two uppercase hexadecimal digits")]
    BadEscape,
    /// An escape of a byte that the encoding never escapes, such as `=61` for `a`.
    #[error("{0:?} is escaped but never needs to be")]
    NeedlessEscape(char),
    /// An escaped `/`: levels never hold one.
    #[error("an escaped '/' cannot be part of a level")]
    Separator,
    /// A first level starting with `$` under the root of ordinary topics (its place is under
    /// the `$` root).
    #[error("a topic starting with '$' belongs under the cluster's '$' root")]
    Misplaced,
    /// Escapes that do not spell UTF-8 text.
    #[error("escapes in a subject token are not UTF-8")]
    NotUtf8,
    /// The levels decode, but not to a valid topic (too long, too deep, a NUL, a wildcard).
    #[error("subject decodes to an invalid topic: {0}")]
    Topic(#[from] TopicError),
}

/// The subjects one cluster uses: where its topics and filters live in NATS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectSpace {
    /// `bb.C`: the root of topics not starting with `$`.
    root: String,
    /// `bb.C$`: the root of the broker's own topics.
    system_root: String,
}

impl Default for SubjectSpace {
    /// The space of the cluster named [`DEFAULT_CLUSTER`].
    fn default() -> Self {
        Self::with_valid_name(DEFAULT_CLUSTER)
    }
}

impl SubjectSpace {
    /// The subjects of the cluster named `cluster`.
    ///
    /// # Errors
    /// [`SubjectError::ClusterName`] unless the name is 1 to [`MAX_CLUSTER_NAME_BYTES`] of
    /// `A-Za-z0-9_-`.
    pub fn new(cluster: &str) -> Result<Self, SubjectError> {
        let valid = !cluster.is_empty()
            && cluster.len() <= MAX_CLUSTER_NAME_BYTES
            && cluster.bytes().all(is_literal);
        if !valid {
            return Err(SubjectError::ClusterName(cluster.to_owned()));
        }
        Ok(Self::with_valid_name(cluster))
    }

    fn with_valid_name(cluster: &str) -> Self {
        let root = format!("{SUBJECT_PREFIX}.{cluster}");
        let system_root = format!("{root}$");
        Self { root, system_root }
    }

    /// `bb.C`, the root of ordinary topics: `nats sub 'bb.C.>'` watches every one of them.
    pub fn root(&self) -> &str {
        &self.root
    }

    /// `bb.C$`, the root of the topics starting with `$` (the broker's own).
    pub fn system_root(&self) -> &str {
        &self.system_root
    }

    /// `bb.C!.<what>`: a subject of the brokers' own traffic (their heartbeats), which is no
    /// topic's: neither root nor a wildcard under either matches it.
    pub fn control_subject(&self, what: &str) -> String {
        format!("{}!.{what}", self.root)
    }

    /// The subject a message published on `topic` travels on.
    pub fn subject<S: AsRef<str>>(&self, topic: &TopicName<S>) -> String {
        let mut out = String::with_capacity(self.system_root.len() + 1 + topic.as_str().len());
        let mut levels = topic.levels();
        if let Some(first) = levels.next() {
            self.push_first(&mut out, first);
        }
        for level in levels {
            out.push('.');
            push_level(&mut out, level);
        }
        out
    }

    /// The subjects to subscribe to for `filter`: one, or two for a filter ending in `#` with
    /// levels before it (`a/#` is `bb.C.a` and `bb.C.a.>`). Together they match exactly the
    /// subjects of the topics `filter` matches.
    pub fn filter_subjects(&self, filter: &TopicFilter) -> FilterSubjects {
        let mut out = String::with_capacity(self.system_root.len() + 1 + filter.as_str().len());
        let mut levels = filter.levels().peekable();
        let mut first = true;
        let mut parent = None;
        while let Some(level) = levels.next() {
            let last = levels.peek().is_none();
            if last && level == "#" && !first {
                // `a/#` also matches `a`: the subject so far, before the `.>`.
                parent = Some(out.clone());
            }
            if first {
                match level {
                    "+" | "#" => {
                        out.push_str(&self.root);
                        out.push('.');
                        out.push(if level == "+" { '*' } else { '>' });
                    }
                    _ => self.push_first(&mut out, level),
                }
                first = false;
                continue;
            }
            out.push('.');
            match level {
                "+" => out.push('*'),
                "#" => out.push('>'),
                _ => push_level(&mut out, level),
            }
        }
        match parent {
            Some(parent) => FilterSubjects([Some(parent), Some(out)]),
            None => FilterSubjects([Some(out), None]),
        }
    }

    /// The topic a message received on `subject` was published on.
    ///
    /// # Errors
    /// [`SubjectError`] when `subject` is not the encoding of a topic in this cluster's space:
    /// under another root, an empty or wildcard token, escapes missing, needless or malformed,
    /// or levels that do not form a valid topic.
    pub fn topic(&self, subject: &str) -> Result<TopicName, SubjectError> {
        let (system, tail) = if let Some(tail) = under(subject, &self.root) {
            (false, tail)
        } else if let Some(tail) = under(subject, &self.system_root) {
            (true, tail)
        } else {
            return Err(SubjectError::Foreign(self.root.clone()));
        };
        let mut topic = Vec::with_capacity(tail.len() + 1);
        for (i, token) in tail.split('.').enumerate() {
            if i > 0 {
                topic.push(b'/');
            }
            if i == 0 && system {
                topic.push(b'$');
                if token == "=" {
                    continue;
                }
            }
            let start = topic.len();
            decode_token(token, &mut topic)?;
            if i == 0 && !system && topic.get(start) == Some(&b'$') {
                return Err(SubjectError::Misplaced);
            }
        }
        let topic = String::from_utf8(topic).map_err(|_| SubjectError::NotUtf8)?;
        Ok(TopicName::system(topic)?)
    }

    /// The first level: its root, then its token (a leading `$` said by the root).
    fn push_first(&self, out: &mut String, first: &str) {
        match first.strip_prefix('$') {
            Some(rest) => {
                out.push_str(&self.system_root);
                out.push('.');
                if rest.is_empty() {
                    out.push('=');
                } else {
                    push_level(out, rest);
                }
            }
            None => {
                out.push_str(&self.root);
                out.push('.');
                push_level(out, first);
            }
        }
    }
}

/// The one or two subjects a filter needs (see [`SubjectSpace::filter_subjects`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterSubjects([Option<String>; 2]);

impl FilterSubjects {
    /// The subjects, in order (the parent level's first, for a filter ending in `/#`).
    pub fn iter(&self) -> impl Iterator<Item = &str> + '_ {
        self.0.iter().flatten().map(String::as_str)
    }

    /// How many: 1 or 2.
    pub fn len(&self) -> usize {
        self.0.iter().flatten().count()
    }

    /// Never: a filter needs at least one subject (here for clippy's `len` rule).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl IntoIterator for FilterSubjects {
    type Item = String;
    type IntoIter = std::iter::Flatten<std::array::IntoIter<Option<String>, 2>>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter().flatten()
    }
}

impl fmt::Display for FilterSubjects {
    /// The subjects separated by `, `.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(s)?;
        }
        Ok(())
    }
}

/// `subject` past `root` and its dot.
fn under<'a>(subject: &'a str, root: &str) -> Option<&'a str> {
    subject.strip_prefix(root)?.strip_prefix('.')
}

/// Whether `b` stands for itself in a subject token (everything else is escaped).
fn is_literal(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// Appends `level` as one subject token.
fn push_level(out: &mut String, level: &str) {
    for b in level.bytes() {
        if is_literal(b) {
            out.push(char::from(b));
        } else {
            out.push('=');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
    }
}

/// The value of an uppercase hexadecimal digit.
fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Appends the bytes of the level that `token` encodes.
fn decode_token(token: &str, out: &mut Vec<u8>) -> Result<(), SubjectError> {
    if token.is_empty() {
        return Err(SubjectError::EmptyToken);
    }
    if token == "*" || token == ">" {
        return Err(SubjectError::Wildcard);
    }
    let mut bytes = token.bytes();
    while let Some(b) = bytes.next() {
        if is_literal(b) {
            out.push(b);
            continue;
        }
        if b != b'=' {
            // The whole character, for the message (the token is valid UTF-8).
            let at = token.len() - bytes.len() - 1;
            let c = token
                .get(at..)
                .and_then(|s| s.chars().next())
                .unwrap_or('?');
            return Err(SubjectError::Unescaped(c));
        }
        let (Some(hi), Some(lo)) = (
            bytes.next().and_then(hex_digit),
            bytes.next().and_then(hex_digit),
        ) else {
            return Err(SubjectError::BadEscape);
        };
        let byte = hi << 4 | lo;
        if is_literal(byte) {
            return Err(SubjectError::NeedlessEscape(char::from(byte)));
        }
        if byte == b'/' {
            return Err(SubjectError::Separator);
        }
        out.push(byte);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn space() -> SubjectSpace {
        SubjectSpace::default()
    }

    fn name(s: &str) -> TopicName {
        TopicName::system(s).unwrap()
    }

    fn filter(s: &str) -> TopicFilter {
        TopicFilter::new(s).unwrap()
    }

    /// NATS's rule: tokens compared one by one, `*` any one token, `>` (last) one or more.
    fn nats_matches(pattern: &str, subject: &str) -> bool {
        let mut p = pattern.split('.');
        let mut s = subject.split('.');
        loop {
            match (p.next(), s.next()) {
                (Some(">"), Some(_)) => return true,
                (Some("*"), Some(_)) => {}
                (Some(a), Some(b)) if a == b => {}
                (None, None) => return true,
                _ => return false,
            }
        }
    }

    #[test]
    fn topic_table() {
        let cases = [
            ("pin/pin-1/state", "bb.breadboard.pin.pin-1.state"),
            ("clock/tick", "bb.breadboard.clock.tick"),
            ("_inbox/65701d1d/17", "bb.breadboard._inbox.65701d1d.17"),
            ("$SYS/nodes/pin-1", "bb.breadboard$.SYS.nodes.pin-1"),
            ("$SYS", "bb.breadboard$.SYS"),
            ("$/x", "bb.breadboard$.=.x"),
            ("$$x", "bb.breadboard$.=24x"),
            ("a/$b", "bb.breadboard.a.=24b"),
            ("a.b/x y", "bb.breadboard.a=2Eb.x=20y"),
            ("a/*/>", "bb.breadboard.a.=2A.=3E"),
            ("a*b/c>d", "bb.breadboard.a=2Ab.c=3Ed"),
            ("eq=/tab\t", "bb.breadboard.eq=3D.tab=09"),
            ("héllo", "bb.breadboard.h=C3=A9llo"),
            ("héllo/*", "bb.breadboard.h=C3=A9llo.=2A"),
            ("~", "bb.breadboard.=7E"),
        ];
        for (topic, subject) in cases {
            assert_eq!(space().subject(&name(topic)), subject, "{topic}");
            assert_eq!(space().topic(subject), Ok(name(topic)), "{subject}");
        }
    }

    #[test]
    fn filter_table() {
        let cases: [(&str, &[&str]); 9] = [
            ("pin/+/state", &["bb.breadboard.pin.*.state"]),
            ("pin/#", &["bb.breadboard.pin", "bb.breadboard.pin.>"]),
            ("#", &["bb.breadboard.>"]),
            ("+", &["bb.breadboard.*"]),
            ("+/#", &["bb.breadboard.*", "bb.breadboard.*.>"]),
            ("$SYS/#", &["bb.breadboard$.SYS", "bb.breadboard$.SYS.>"]),
            ("$SYS/nodes/+", &["bb.breadboard$.SYS.nodes.*"]),
            ("a.b/+/x y", &["bb.breadboard.a=2Eb.*.x=20y"]),
            ("clock/tick", &["bb.breadboard.clock.tick"]),
        ];
        for (f, subjects) in cases {
            let got = space().filter_subjects(&filter(f));
            assert_eq!(got.iter().collect::<Vec<_>>(), subjects, "{f}");
            assert_eq!(got.len(), subjects.len());
        }
    }

    #[test]
    fn the_control_subjects_are_no_topics_and_no_filter_reaches_them() {
        let hb = space().control_subject("brokers");
        assert_eq!(hb, "bb.breadboard!.brokers");
        assert!(space().topic(&hb).is_err());
        for f in ["#", "+", "+/#", "$SYS/#", "$/#", "brokers", "!/#"] {
            for subject in space().filter_subjects(&filter(f)).iter() {
                assert!(!nats_matches(subject, &hb), "{f} → {subject}");
            }
        }
    }

    #[test]
    fn cluster_names() {
        let s = SubjectSpace::new("site-2_b").unwrap();
        assert_eq!(s.root(), "bb.site-2_b");
        assert_eq!(s.system_root(), "bb.site-2_b$");
        assert_eq!(space().root(), "bb.breadboard");
        for bad in ["", "a.b", "a b", "*", ">", "$x", "é", &"x".repeat(65)] {
            assert_eq!(
                SubjectSpace::new(bad),
                Err(SubjectError::ClusterName(bad.to_owned())),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn other_clusters_subjects_are_foreign() {
        let other = SubjectSpace::new("other").unwrap();
        let subject = other.subject(&name("a/b"));
        assert!(matches!(
            space().topic(&subject),
            Err(SubjectError::Foreign(_))
        ));
        for s in [
            "",
            "bb",
            "bb.breadboard",
            "bb.breadboard$",
            "bb.breadboardx.a",
            "x.a",
        ] {
            assert!(
                matches!(space().topic(s), Err(SubjectError::Foreign(_))),
                "{s:?}"
            );
        }
    }

    #[test]
    fn invalid_encodings_are_refused() {
        let cases = [
            ("bb.breadboard.", SubjectError::EmptyToken),
            ("bb.breadboard.a..b", SubjectError::EmptyToken),
            ("bb.breadboard.a.", SubjectError::EmptyToken),
            ("bb.breadboard.a.*", SubjectError::Wildcard),
            ("bb.breadboard.>", SubjectError::Wildcard),
            ("bb.breadboard.a b", SubjectError::Unescaped(' ')),
            ("bb.breadboard.a~b", SubjectError::Unescaped('~')),
            ("bb.breadboard.é", SubjectError::Unescaped('é')),
            ("bb.breadboard.a$", SubjectError::Unescaped('$')),
            ("bb.breadboard.a=", SubjectError::BadEscape),
            ("bb.breadboard.a=2", SubjectError::BadEscape),
            ("bb.breadboard.a=2e", SubjectError::BadEscape),
            ("bb.breadboard.a=G0", SubjectError::BadEscape),
            ("bb.breadboard.=", SubjectError::BadEscape),
            ("bb.breadboard.=61", SubjectError::NeedlessEscape('a')),
            ("bb.breadboard.=2D", SubjectError::NeedlessEscape('-')),
            ("bb.breadboard.a=2Fb", SubjectError::Separator),
            ("bb.breadboard.=24SYS", SubjectError::Misplaced),
            ("bb.breadboard.=C3", SubjectError::NotUtf8),
            ("bb.breadboard.=FF", SubjectError::NotUtf8),
            ("bb.breadboard.a=00", SubjectError::Topic(TopicError::Nul)),
            (
                "bb.breadboard.a=2B",
                SubjectError::Topic(TopicError::WildcardInName),
            ),
            (
                "bb.breadboard$.SYS.=23",
                SubjectError::Topic(TopicError::WildcardInName),
            ),
            ("bb.breadboard$.", SubjectError::EmptyToken),
            ("bb.breadboard$.==", SubjectError::BadEscape),
        ];
        for (subject, expected) in cases {
            assert_eq!(space().topic(subject), Err(expected), "{subject:?}");
        }
        let deep = format!("bb.breadboard{}", ".a".repeat(33));
        assert_eq!(
            space().topic(&deep),
            Err(SubjectError::Topic(TopicError::TooDeep(33)))
        );
    }

    #[test]
    fn the_longest_topic_fits_a_nats_control_line() {
        let level = "é".repeat(15);
        let levels: Vec<String> = (0..32).map(|_| level.clone()).collect();
        let topic = name(&levels.join("/"));
        let subject = space().subject(&topic);
        assert!(subject.len() < 4096 - 128, "{}", subject.len());
        assert_eq!(space().topic(&subject), Ok(topic));
    }

    /// Levels as nasty as topics allow: every character class the encoding treats apart.
    fn nasty_level() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-zA-Z0-9_-]{1,6}",
            "[.*> ~=$\\t/a]{1,6}".prop_map(|s| s.replace('/', ":")),
            Just("*".to_string()),
            Just(">".to_string()),
            Just("$".to_string()),
            Just("=".to_string()),
            "\\PC{1,4}".prop_map(|s| s.replace(['/', '+', '#', '\0'], "x")),
            any::<String>().prop_map(|s| {
                let s = s.replace(['/', '+', '#', '\0'], "");
                if s.is_empty() {
                    "e".to_string()
                } else {
                    s.chars().take(8).collect()
                }
            }),
        ]
    }

    fn nasty_topic() -> impl Strategy<Value = TopicName> {
        (prop::collection::vec(nasty_level(), 1..8), any::<bool>()).prop_map(|(levels, dollar)| {
            let mut s = levels.join("/");
            if dollar {
                s.insert(0, '$');
            }
            TopicName::system(s).unwrap()
        })
    }

    /// Every topic of up to four levels over `a`, `a.b`, `$SYS`, `$`, ` ` and `z` (no filter
    /// below names `z`: it stands for whatever a wildcard could match).
    fn universe() -> Vec<TopicName> {
        let levels = ["a", "a.b", "$SYS", "$", " ", "z"];
        let mut all: Vec<Vec<&str>> = vec![vec![]];
        let mut out = Vec::new();
        for _ in 0..4 {
            all = all
                .iter()
                .flat_map(|t| {
                    levels.iter().map(move |l| {
                        let mut t = t.clone();
                        t.push(l);
                        t
                    })
                })
                .collect();
            out.extend(all.iter().map(|t| name(&t.join("/"))));
        }
        out
    }

    fn short_filter() -> impl Strategy<Value = TopicFilter> {
        let level = prop::sample::select(vec!["a", "a.b", "$SYS", "$", " ", "+"]);
        (prop::collection::vec(level, 0..4), any::<bool>()).prop_map(|(mut levels, hash)| {
            if hash || levels.is_empty() {
                levels.push("#");
            }
            filter(&levels.join("/"))
        })
    }

    /// Subject tokens, valid or nearly: literal runs, escapes needed or not, broken ones.
    fn token() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            "[a-zA-Z0-9_-]{1,3}",
            "[=.$ *>~/]",
            prop::sample::select(vec![
                "=2E", "=20", "=24", "=3D", "=C3=A9", "=C3", "=A9", "=61", "=2e", "=2F", "=00",
                "=2B", "=", "*", ">",
            ])
            .prop_map(String::from),
        ];
        prop::collection::vec(piece, 0..4).prop_map(|p| p.concat())
    }

    proptest! {
        #[test]
        fn topics_round_trip(topic in nasty_topic()) {
            let subject = space().subject(&topic);
            prop_assert!(subject.bytes().all(|b| b.is_ascii_graphic()), "{}", subject);
            prop_assert!(subject.split('.').all(|t| !t.is_empty() && t != "*" && t != ">"));
            prop_assert!(!subject.split('.').any(|t| t.starts_with('$')), "{}", subject);
            prop_assert_eq!(space().topic(&subject), Ok(topic));
        }

        #[test]
        fn decoded_subjects_encode_back(tokens in prop::collection::vec(token(), 1..5), system in any::<bool>()) {
            let root = if system { space().system_root().to_owned() } else { space().root().to_owned() };
            let subject = format!("{root}.{}", tokens.join("."));
            if let Ok(topic) = space().topic(&subject) {
                prop_assert_eq!(space().subject(&topic), subject);
            }
        }

        #[test]
        fn decoding_never_panics(s in "\\PC{0,40}") {
            let _ = space().topic(&s);
            let _ = space().topic(&format!("bb.breadboard.{s}"));
        }

        #[test]
        fn filter_subjects_match_exactly_the_filters_topics(f in short_filter()) {
            let subjects = space().filter_subjects(&f);
            prop_assert!((1..=2).contains(&subjects.len()));
            for topic in universe() {
                let subject = space().subject(&topic);
                let by_nats = subjects.iter().any(|p| nats_matches(p, &subject));
                prop_assert_eq!(by_nats, f.matches(&topic), "{} ({}) vs {} ({})", f, subjects, topic, subject);
                let copies = subjects.iter().filter(|p| nats_matches(p, &subject)).count();
                prop_assert!(copies <= 1, "{} reaches {} twice through {}", topic, f, subjects);
            }
        }
    }
}
