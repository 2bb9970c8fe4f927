//! Topic names, topic filters and the rule that matches one against the other.
//!
//! A topic is a `/`-separated list of non-empty UTF-8 levels, such as `pin/pin-1/state`.
//! A filter may use two wildcards, each standing for a whole level:
//! - `+` matches exactly one level: `pin/+/state` matches `pin/pin-1/state`;
//! - `#` matches any number of levels, itself included, and may only be the last level:
//!   `pin/#` matches `pin/pin-1/state` and `pin` itself.
//!
//! Topics whose first level starts with `$` (such as `$SYS/nodes/pin-1`) belong to the broker:
//! clients cannot publish to them, and a filter whose first level is a wildcard does not match
//! them (as in MQTT), so `#` never floods a client with broker internals; `$SYS/#` must be asked
//! for by name.

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest topic name or filter, in bytes.
pub const MAX_TOPIC_BYTES: usize = 1024;
/// Deepest topic name or filter, in levels.
pub const MAX_TOPIC_LEVELS: usize = 32;

/// Why a string is not a valid topic name or filter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TopicError {
    /// The empty string.
    #[error("topic is empty")]
    Empty,
    /// Longer than [`MAX_TOPIC_BYTES`].
    #[error("topic is {0} bytes long, the limit is {MAX_TOPIC_BYTES}")]
    TooLong(usize),
    /// More levels than [`MAX_TOPIC_LEVELS`].
    #[error("topic has {0} levels, the limit is {MAX_TOPIC_LEVELS}")]
    TooDeep(usize),
    /// Two slashes in a row, or a leading or trailing slash.
    #[error("topic has an empty level (levels are separated by a single '/')")]
    EmptyLevel,
    /// A NUL character.
    #[error("topic contains a NUL character")]
    Nul,
    /// `+` or `#` in a topic name (only filters may hold wildcards).
    #[error("wildcards '+' and '#' are only allowed in subscription filters")]
    WildcardInName,
    /// A topic name starting with `$`: those belong to the broker.
    #[error("topics starting with '$' are reserved for the broker")]
    Reserved,
    /// `+` or `#` mixed with other characters in one level, such as `a+` or `#b`.
    #[error("a wildcard must be a whole level, as in 'a/+/c' or 'a/#'")]
    PartialWildcard,
    /// `#` somewhere other than the last level.
    #[error("'#' may only be the last level of a filter")]
    HashNotLast,
}

/// Checks what names and filters have in common: length, depth, no empty level, no NUL.
fn check_common(s: &str) -> Result<(), TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    if s.len() > MAX_TOPIC_BYTES {
        return Err(TopicError::TooLong(s.len()));
    }
    if s.contains('\0') {
        return Err(TopicError::Nul);
    }
    let mut levels = 0;
    for level in s.split('/') {
        if level.is_empty() {
            return Err(TopicError::EmptyLevel);
        }
        levels += 1;
    }
    if levels > MAX_TOPIC_LEVELS {
        return Err(TopicError::TooDeep(levels));
    }
    Ok(())
}

/// The levels of a topic or filter, in order: `str::split('/')`, made for the short levels of
/// topics, which it walks byte by byte instead of setting up a search for every level.
#[derive(Debug, Clone)]
pub struct Levels<'a> {
    /// What is left, `None` once the last level is out.
    rest: Option<&'a str>,
}

impl<'a> Levels<'a> {
    fn of(s: &'a str) -> Self {
        Self { rest: Some(s) }
    }
}

impl<'a> Iterator for Levels<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let rest = self.rest?;
        match rest.bytes().position(|b| b == b'/') {
            Some(at) => {
                self.rest = rest.get(at + 1..);
                rest.get(..at)
            }
            None => {
                self.rest = None;
                Some(rest)
            }
        }
    }
}

/// Whether `s` passes every syntax rule of a topic name, in one pass over its bytes: the
/// check of every publish. A string that does not is checked rule by rule, for the error.
fn is_plain_name(s: &str) -> bool {
    let bytes = s.as_bytes();
    let (Some(&first), Some(&last)) = (bytes.first(), bytes.last()) else {
        return false;
    };
    if bytes.len() > MAX_TOPIC_BYTES || first == b'/' || last == b'/' {
        return false;
    }
    let mut levels = 1;
    let mut prev = first;
    for &b in bytes {
        match b {
            b'/' if prev == b'/' => return false,
            b'/' => levels += 1,
            0 | b'+' | b'#' => return false,
            _ => {}
        }
        prev = b;
    }
    levels <= MAX_TOPIC_LEVELS
}

/// A topic a message can be published to: no wildcards, not starting with `$` unless the broker
/// made it (see [`TopicName::system`]).
///
/// `S` holds the text: a `String` by default, or a borrowed `&str` (see [`TopicName::view`])
/// or `Cow<str>` (a decoded frame's topic, borrowed from the frame when it had no escapes), so
/// the publish path can check and route a topic without copying it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicName<S = String>(S);

impl TopicName {
    /// Validates a topic a client wants to publish to.
    ///
    /// # Errors
    /// [`TopicError`] when the string is not a valid name, contains a wildcard or starts with `$`.
    pub fn new(s: impl Into<String>) -> Result<Self, TopicError> {
        TopicName::checked(s.into())
    }

    /// Validates a topic the broker itself publishes to; it may start with `$`.
    ///
    /// # Errors
    /// [`TopicError`] when the string is not a valid name or contains a wildcard.
    pub fn system(s: impl Into<String>) -> Result<Self, TopicError> {
        let s = s.into();
        Self::check_syntax(&s)?;
        Ok(Self(s))
    }
}

impl<S: AsRef<str>> TopicName<S> {
    /// Validates a topic a client wants to publish to, held in any string type (see
    /// [`TopicName::new`]).
    ///
    /// # Errors
    /// As [`TopicName::new`].
    pub fn checked(s: S) -> Result<Self, TopicError> {
        Self::check_syntax(s.as_ref())?;
        if s.as_ref().starts_with('$') {
            return Err(TopicError::Reserved);
        }
        Ok(Self(s))
    }

    fn check_syntax(s: &str) -> Result<(), TopicError> {
        if is_plain_name(s) {
            return Ok(());
        }
        check_common(s)?;
        if s.contains(['+', '#']) {
            return Err(TopicError::WildcardInName);
        }
        Ok(())
    }

    /// The topic as written.
    pub fn as_str(&self) -> &str {
        self.0.as_ref()
    }

    /// The levels, in order.
    pub fn levels(&self) -> Levels<'_> {
        Levels::of(self.as_str())
    }

    /// Whether this topic belongs to the broker (starts with `$`).
    pub fn is_system(&self) -> bool {
        self.as_str().starts_with('$')
    }

    /// The same topic, borrowed.
    pub fn view(&self) -> TopicName<&str> {
        TopicName(self.as_str())
    }

    /// The same topic, owning its text.
    pub fn to_name(&self) -> TopicName {
        TopicName(self.as_str().to_owned())
    }
}

impl<'a> TopicName<Cow<'a, str>> {
    /// The topic, owning its text (copied only if it was borrowed).
    pub fn into_name(self) -> TopicName {
        TopicName(self.0.into_owned())
    }

    /// The topic, owning its text, in the type frames hold.
    pub fn into_owned(self) -> TopicName<Cow<'static, str>> {
        TopicName(Cow::Owned(self.0.into_owned()))
    }
}

impl<S: AsRef<str>> TopicName<S> {
    /// The same topic, borrowed, in the type frames hold.
    pub fn borrowed(&self) -> TopicName<Cow<'_, str>> {
        TopicName(Cow::Borrowed(self.as_str()))
    }
}

impl From<TopicName> for TopicName<Cow<'_, str>> {
    fn from(t: TopicName) -> Self {
        TopicName(Cow::Owned(t.0))
    }
}

impl<'a> From<&'a TopicName> for TopicName<Cow<'a, str>> {
    fn from(t: &'a TopicName) -> Self {
        t.borrowed()
    }
}

impl<S: AsRef<str>> Serialize for TopicName<S> {
    fn serialize<Ser: serde::Serializer>(&self, serializer: Ser) -> Result<Ser::Ok, Ser::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for TopicName {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        Self::system(s).map_err(serde::de::Error::custom)
    }
}

impl<'de> Deserialize<'de> for TopicName<Cow<'_, str>> {
    /// Owned: frames are decoded into owned topics (the broker's own, `$` included, are valid).
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        TopicName::deserialize(deserializer).map(|t: TopicName| TopicName(Cow::Owned(t.0)))
    }
}

impl std::borrow::Borrow<str> for TopicName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// A subscription pattern: a topic whose levels may be `+` or (last) `#`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TopicFilter(String);

impl TopicFilter {
    /// Validates a subscription filter.
    ///
    /// # Errors
    /// [`TopicError`] when the string is not a valid filter.
    pub fn new(s: impl Into<String>) -> Result<Self, TopicError> {
        let s = s.into();
        check_common(&s)?;
        let mut levels = s.split('/').peekable();
        while let Some(level) = levels.next() {
            match level {
                "+" => {}
                "#" if levels.peek().is_some() => return Err(TopicError::HashNotLast),
                "#" => {}
                l if l.contains(['+', '#']) => return Err(TopicError::PartialWildcard),
                _ => {}
            }
        }
        Ok(Self(s))
    }

    /// The filter as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The levels, in order.
    pub fn levels(&self) -> Levels<'_> {
        Levels::of(&self.0)
    }

    /// Whether the filter holds `+` or `#`.
    pub fn has_wildcards(&self) -> bool {
        self.levels().any(|l| l == "+" || l == "#")
    }

    /// Whether a message published on `topic` is delivered to this filter.
    ///
    /// This is the reference rule; the broker's subscription index must agree with it.
    pub fn matches<S: AsRef<str>>(&self, topic: &TopicName<S>) -> bool {
        let mut filter = self.levels();
        let mut name = topic.levels();
        let first = self.0.split('/').next().unwrap_or_default();
        if topic.is_system() && (first == "+" || first == "#") {
            return false;
        }
        loop {
            match (filter.next(), name.next()) {
                (Some("#"), _) => return true,
                (Some("+"), Some(_)) => {}
                (Some(f), Some(n)) if f == n => {}
                (None, None) => return true,
                _ => return false,
            }
        }
    }
}

impl TopicFilter {
    /// Whether every topic `other` can match is matched by `self`: `pin/#` covers `pin/+/state`,
    /// `#` does not cover `$SYS/#` (wildcards in the first level never match `$` topics).
    ///
    /// What a permission check needs: a subscription is allowed when an allowed filter covers it.
    pub fn covers(&self, other: &TopicFilter) -> bool {
        let (mine, theirs) = (first_level(self), first_level(other));
        if is_wildcard(mine) && theirs.starts_with('$') {
            return false;
        }
        covers(self.levels(), other.levels())
    }

    /// Whether some topic is matched by both filters: `pin/+/state` and `pin/p1/#` overlap,
    /// `pin/#` and `clock/#` do not, nor `#` and `$SYS/x`.
    ///
    /// What a permission check needs: a subscription touching a denied filter is refused.
    pub fn overlaps(&self, other: &TopicFilter) -> bool {
        let (a, b) = (first_level(self), first_level(other));
        if (is_wildcard(a) && b.starts_with('$')) || (is_wildcard(b) && a.starts_with('$')) {
            return false;
        }
        overlaps(self.levels(), other.levels())
    }
}

fn first_level(filter: &TopicFilter) -> &str {
    filter.levels().next().unwrap_or_default()
}

fn is_wildcard(level: &str) -> bool {
    level == "+" || level == "#"
}

/// Level by level: whether the filter `a` matches all that `f` matches (no `$` rule).
fn covers(mut a: Levels<'_>, mut f: Levels<'_>) -> bool {
    loop {
        match (a.next(), f.next()) {
            // `#` matches its parent level and anything below.
            (Some("#"), _) => return true,
            (None, None) => return true,
            // `f` goes on (deeper topics, or any depth under its `#`) where `a` stops.
            (None, Some(_)) => return false,
            // `f` stops (a topic ending here) where `a` wants a further level.
            (Some(_), None) => return false,
            // Anything left of `a` but `#` misses some of what `f`'s `#` matches.
            (Some(_), Some("#")) => return false,
            (Some("+"), Some(_)) => {}
            (Some(x), Some(y)) if x == y => {}
            _ => return false,
        }
    }
}

/// Level by level: whether some topic matches both `a` and `b` (no `$` rule).
fn overlaps(mut a: Levels<'_>, mut b: Levels<'_>) -> bool {
    loop {
        match (a.next(), b.next()) {
            (Some("#"), _) | (_, Some("#")) | (None, None) => return true,
            (None, Some(_)) | (Some(_), None) => return false,
            (Some("+"), Some(_)) | (Some(_), Some("+")) => {}
            (Some(x), Some(y)) if x == y => {}
            _ => return false,
        }
    }
}

impl TryFrom<String> for TopicFilter {
    type Error = TopicError;
    fn try_from(s: String) -> Result<Self, TopicError> {
        Self::new(s)
    }
}

impl From<TopicName> for String {
    fn from(t: TopicName) -> String {
        t.0
    }
}

impl From<TopicFilter> for String {
    fn from(t: TopicFilter) -> String {
        t.0
    }
}

impl<S: AsRef<str>> fmt::Display for TopicName<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<S: AsRef<str>> AsRef<str> for TopicName<S> {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for TopicFilter {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn levels_split_like_str_split(s in "[a-z/]{0,12}") {
            prop_assert_eq!(Levels::of(&s).collect::<Vec<_>>(), s.split('/').collect::<Vec<_>>());
        }

        #[test]
        fn the_one_pass_check_agrees_with_the_rules(
            s in prop_oneof![
                "[a-z/+#]{0,12}",
                "([a-z]{1,3}/){0,40}[a-z]{0,3}",
                any::<String>(),
            ],
        ) {
            let by_rules = check_common(&s).is_ok() && !s.contains(['+', '#']);
            prop_assert_eq!(is_plain_name(&s), by_rules);
        }
    }

    fn matches(filter: &str, topic: &str) -> bool {
        TopicFilter::new(filter)
            .unwrap()
            .matches(&TopicName::system(topic).unwrap())
    }

    #[test]
    fn matching_table() {
        let cases = [
            ("a/b/c", "a/b/c", true),
            ("a/b/c", "a/b", false),
            ("a/b", "a/b/c", false),
            ("a/+/c", "a/b/c", true),
            ("a/+/c", "a/b/d", false),
            ("a/+", "a/b/c", false),
            ("+", "a", true),
            ("+", "a/b", false),
            ("+/+", "a/b", true),
            ("#", "a", true),
            ("#", "a/b/c", true),
            ("a/#", "a", true),
            ("a/#", "a/b", true),
            ("a/#", "a/b/c", true),
            ("a/#", "b", false),
            ("a/+/#", "a", false),
            ("a/+/#", "a/b", true),
            ("a/+/#", "a/b/c/d", true),
            ("pin/+/state", "pin/pin-1/state", true),
            ("pin/+/state", "pin/pin-1/level", false),
        ];
        for (filter, topic, expected) in cases {
            assert_eq!(matches(filter, topic), expected, "{filter} vs {topic}");
        }
    }

    #[test]
    fn dollar_topics_need_an_explicit_first_level() {
        assert!(!matches("#", "$SYS/nodes/pin-1"));
        assert!(!matches("+/nodes/+", "$SYS/nodes/pin-1"));
        assert!(matches("$SYS/#", "$SYS/nodes/pin-1"));
        assert!(matches("$SYS/nodes/+", "$SYS/nodes/pin-1"));
        assert!(matches("$SYS/+/pin-1", "$SYS/nodes/pin-1"));
        assert!(!matches("$SYS/+", "$SYS/nodes/pin-1"));
    }

    #[test]
    fn names_reject_wildcards_and_dollar() {
        assert_eq!(TopicName::new("a/+/b"), Err(TopicError::WildcardInName));
        assert_eq!(TopicName::new("a/#"), Err(TopicError::WildcardInName));
        assert_eq!(TopicName::new("a/b+"), Err(TopicError::WildcardInName));
        assert_eq!(TopicName::new("$SYS/x"), Err(TopicError::Reserved));
        assert!(TopicName::system("$SYS/x").is_ok());
    }

    #[test]
    fn names_reject_bad_syntax() {
        assert_eq!(TopicName::new(""), Err(TopicError::Empty));
        assert_eq!(TopicName::new("a//b"), Err(TopicError::EmptyLevel));
        assert_eq!(TopicName::new("/a"), Err(TopicError::EmptyLevel));
        assert_eq!(TopicName::new("a/"), Err(TopicError::EmptyLevel));
        assert_eq!(TopicName::new("a\0b"), Err(TopicError::Nul));
        let long = "x".repeat(MAX_TOPIC_BYTES + 1);
        assert_eq!(
            TopicName::new(long),
            Err(TopicError::TooLong(MAX_TOPIC_BYTES + 1))
        );
        let deep = vec!["a"; MAX_TOPIC_LEVELS + 1].join("/");
        assert_eq!(
            TopicName::new(deep),
            Err(TopicError::TooDeep(MAX_TOPIC_LEVELS + 1))
        );
        assert!(TopicName::new("héllo/wörld/😀").is_ok());
    }

    #[test]
    fn filters_reject_misplaced_wildcards() {
        assert_eq!(TopicFilter::new("a/#/b"), Err(TopicError::HashNotLast));
        assert_eq!(TopicFilter::new("a/b#"), Err(TopicError::PartialWildcard));
        assert_eq!(TopicFilter::new("a/+b"), Err(TopicError::PartialWildcard));
        assert_eq!(TopicFilter::new("a//+"), Err(TopicError::EmptyLevel));
        assert!(TopicFilter::new("+/+/#").is_ok());
        assert!(TopicFilter::new("$SYS/#").is_ok());
    }

    /// The obviously-correct rule, written independently: level lists compared recursively.
    fn naive(filter: &[&str], topic: &[&str], first: bool) -> bool {
        match (filter.first(), topic.first()) {
            (Some(&"#"), Some(t)) if first && t.starts_with('$') => false,
            (Some(&"+"), Some(t)) if first && t.starts_with('$') => false,
            (Some(&"#"), _) => true,
            (Some(&"+"), Some(_)) => naive(&filter[1..], &topic[1..], false),
            (Some(f), Some(t)) if f == t => naive(&filter[1..], &topic[1..], false),
            (None, None) => true,
            _ => false,
        }
    }

    fn level() -> impl Strategy<Value = String> {
        prop::sample::select(vec!["a", "b", "c", "$SYS", "$x"]).prop_map(String::from)
    }

    fn filter_level() -> impl Strategy<Value = String> {
        prop_oneof![3 => level(), 1 => Just("+".to_string())]
    }

    fn filter(s: &str) -> TopicFilter {
        TopicFilter::new(s).unwrap()
    }

    #[test]
    fn coverage_table() {
        let cases = [
            ("#", "pin/+/state", true),
            ("pin/#", "pin/+/state", true),
            ("pin/#", "pin", true),
            ("pin/+/state", "pin/#", false),
            ("pin/#", "#", false),
            ("pin/+", "pin/p1", true),
            ("pin/p1", "pin/+", false),
            ("pin/+", "pin/+/x", false),
            ("pin/+/#", "pin/#", false),
            ("pin/+/#", "pin/a/#", true),
            ("#", "$SYS/#", false),
            ("+/#", "$SYS/nodes", false),
            ("$SYS/#", "$SYS/nodes/+", true),
            ("$SYS/nodes/#", "$SYS/#", false),
            ("#", "+/x", true),
            ("#", "#", true),
        ];
        for (a, f, expected) in cases {
            assert_eq!(filter(a).covers(&filter(f)), expected, "{a} covers {f}");
        }
    }

    #[test]
    fn overlap_table() {
        let cases = [
            ("pin/+/state", "pin/p1/#", true),
            ("pin/#", "clock/#", false),
            ("#", "$SYS/x", false),
            ("+/x", "$SYS/#", false),
            ("$SYS/#", "$SYS/nodes/+", true),
            ("a/b", "a/b/c", false),
            ("a/#", "a", true),
            ("a/+", "a", false),
            ("+/b", "a/+", true),
        ];
        for (a, b, expected) in cases {
            assert_eq!(filter(a).overlaps(&filter(b)), expected, "{a} overlaps {b}");
            assert_eq!(filter(b).overlaps(&filter(a)), expected, "{b} overlaps {a}");
        }
    }

    /// Every topic of up to five levels over `a`, `b`, `$SYS` and `z`, a level no generated
    /// filter names, so that it stands for whatever a wildcard could match.
    fn universe() -> Vec<TopicName> {
        let levels = ["a", "b", "$SYS", "z"];
        let mut all: Vec<Vec<&str>> = vec![vec![]];
        let mut out = Vec::new();
        for _ in 0..5 {
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
            out.extend(all.iter().map(|t| TopicName::system(t.join("/")).unwrap()));
        }
        out
    }

    fn short_filter() -> impl Strategy<Value = TopicFilter> {
        let level = prop::sample::select(vec!["a", "b", "$SYS", "+"]);
        (prop::collection::vec(level, 1..4), any::<bool>()).prop_map(|(mut levels, hash)| {
            if hash {
                levels.push("#");
            }
            TopicFilter::new(levels.join("/")).unwrap()
        })
    }

    proptest! {
        #[test]
        fn matcher_agrees_with_naive_reference(
            topic in prop::collection::vec(level(), 1..6),
            mut filter in prop::collection::vec(filter_level(), 1..6),
            hash in any::<bool>(),
        ) {
            if hash {
                *filter.last_mut().unwrap() = "#".to_string();
            }
            let t: Vec<&str> = topic.iter().map(String::as_str).collect();
            let f: Vec<&str> = filter.iter().map(String::as_str).collect();
            let expected = naive(&f, &t, true);
            let name = TopicName::system(topic.join("/")).unwrap();
            let filt = TopicFilter::new(filter.join("/")).unwrap();
            prop_assert_eq!(filt.matches(&name), expected);
        }

        #[test]
        fn covers_and_overlaps_agree_with_every_topic(a in short_filter(), b in short_filter()) {
            let topics = universe();
            let covered = topics.iter().all(|t| !b.matches(t) || a.matches(t));
            let shared = topics.iter().any(|t| a.matches(t) && b.matches(t));
            prop_assert_eq!(a.covers(&b), covered, "{} covers {}", a, b);
            prop_assert_eq!(a.overlaps(&b), shared, "{} overlaps {}", a, b);
        }

        #[test]
        fn validation_never_panics(s in "\\PC{0,40}") {
            let _ = TopicName::new(s.clone());
            let _ = TopicFilter::new(s);
        }

        #[test]
        fn every_valid_name_is_a_filter_matching_itself(topic in prop::collection::vec("[a-z0-9_-]{1,5}", 1..8)) {
            let s = topic.join("/");
            let name = TopicName::new(s.clone()).unwrap();
            let filt = TopicFilter::new(s).unwrap();
            prop_assert!(filt.matches(&name));
        }
    }
}
