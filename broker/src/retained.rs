//! The retained values: the last value of each topic that was published with `retain`, replayed
//! to every new subscription that matches it.
//!
//! Held in a tree on topic levels ([`RetainedTree`]), so that a subscription finds what it
//! matches by walking only the branches its filter can reach: an exact filter is one path, `+`
//! takes every child of one node, `#` one whole subtree. (A flat map had every subscribe walk
//! every retained topic.) The tree also keeps the counts that the limits are checked against:
//! topics and bytes of the values clients retained (the broker's own `$SYS` topics do not
//! count).

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock};

use proto::{Data, Encoding, Message, ServerFrame, TopicFilter, TopicName};
use serde_json::Value;

use crate::outbox::Frame;

/// A retained value and who published it.
#[derive(Debug)]
pub struct Retained {
    topic: TopicName,
    data: Value,
    from: Option<Arc<str>>,
    /// When it was published, in milliseconds since the Unix epoch.
    updated_ms: u64,
    /// What it counts against the byte limit: its topic and its value as JSON.
    size: usize,
    /// Its replay frame in each encoding ([`Encoding::index`]), encoded on first use.
    frames: [OnceLock<Frame>; 2],
}

impl Retained {
    /// The value `data` published on `topic` by `from` at `updated_ms`.
    pub fn new(topic: TopicName, data: Value, from: Option<&str>, updated_ms: u64) -> Self {
        let json_len = json_len(&data);
        Self::sized(topic, data, json_len, from, updated_ms)
    }

    /// [`Retained::new`] for a value already written as JSON (`json`), as the store keeps it:
    /// its size is told by that, not by writing it again.
    pub fn encoded(
        topic: TopicName,
        data: Value,
        json: &[u8],
        from: Option<&str>,
        updated_ms: u64,
    ) -> Self {
        Self::sized(topic, data, json.len(), from, updated_ms)
    }

    fn sized(
        topic: TopicName,
        data: Value,
        json_len: usize,
        from: Option<&str>,
        updated_ms: u64,
    ) -> Self {
        Self {
            size: topic.as_str().len() + json_len,
            topic,
            data,
            from: from.map(Arc::from),
            updated_ms,
            frames: Default::default(),
        }
    }

    /// Where it was published.
    pub fn topic(&self) -> &TopicName {
        &self.topic
    }

    /// The value.
    pub fn data(&self) -> &Value {
        &self.data
    }

    /// The publisher's name, if it said hello.
    pub fn from(&self) -> Option<&str> {
        self.from.as_deref()
    }

    /// When it was published (milliseconds since the Unix epoch).
    pub fn updated_ms(&self) -> u64 {
        self.updated_ms
    }

    /// The replay frame (`retained: true`, no `reply`: a stale request is not replayed).
    pub(crate) fn frame(&self, enc: Encoding) -> Frame {
        self.frames[enc.index()]
            .get_or_init(|| {
                let msg = ServerFrame::Msg(Message {
                    topic: self.topic.borrowed(),
                    data: Data::from(&self.data),
                    from: self.from.as_deref().map(Cow::Borrowed),
                    reply: None,
                    retained: true,
                });
                Frame::encode(&msg, enc)
            })
            .clone()
    }
}

/// The length of `value` written as compact JSON, without writing it anywhere.
fn json_len(value: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing a `Value` into a counter cannot fail: its keys are strings.
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

/// Why a retained value was not kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RetainedFull {
    /// Keeping it would pass the topic limit.
    #[error("the broker keeps at most {0} retained topics")]
    Topics(usize),
    /// Keeping it would pass the byte limit.
    #[error("the broker keeps at most {0} bytes of retained values")]
    Bytes(usize),
}

/// The limits of a [`RetainedTree`], on what clients retain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most topics.
    pub topics: usize,
    /// Most bytes (topics and values as JSON).
    pub bytes: usize,
}

#[derive(Debug, Default)]
struct Node {
    value: Option<Arc<Retained>>,
    children: BTreeMap<Box<str>, Node>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.value.is_none() && self.children.is_empty()
    }

    /// Every value in this subtree, this node's first, then its children's in order.
    fn collect_all(&self, out: &mut Vec<Arc<Retained>>) {
        out.extend(self.value.iter().cloned());
        for child in self.children.values() {
            child.collect_all(out);
        }
    }

    /// The values below this node that `levels` match.
    fn collect(&self, levels: &[&str], first: bool, out: &mut Vec<Arc<Retained>>) {
        let Some((level, rest)) = levels.split_first() else {
            out.extend(self.value.iter().cloned());
            return;
        };
        // A wildcard as the first level does not match the broker's `$` topics.
        let visible = |name: &str| !(first && name.starts_with('$'));
        match *level {
            "#" => {
                // `a/#` matches `a` itself too.
                out.extend(self.value.iter().cloned());
                for (name, child) in &self.children {
                    if visible(name) {
                        child.collect_all(out);
                    }
                }
            }
            "+" => {
                for (name, child) in &self.children {
                    if visible(name) {
                        child.collect(rest, false, out);
                    }
                }
            }
            literal => {
                if let Some(child) = self.children.get(literal) {
                    child.collect(rest, false, out);
                }
            }
        }
    }
}

/// Every retained value, by topic, with the counts the limits are checked against.
#[derive(Debug)]
pub struct RetainedTree {
    root: Node,
    limits: Limits,
    /// Every topic held, `$SYS` ones included.
    len: usize,
    /// Topics and bytes that count against the limits (not `$SYS`).
    topics: usize,
    bytes: usize,
    /// When topics without a value were cleared (kept in a cluster only).
    cleared: Clearings,
}

impl RetainedTree {
    /// An empty tree with `limits`.
    pub fn new(limits: Limits) -> Self {
        Self {
            root: Node::default(),
            limits,
            len: 0,
            topics: 0,
            bytes: 0,
            cleared: Clearings::default(),
        }
    }

    /// Topics held, `$SYS` ones included.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes held that count against the limit.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The value retained on `topic`, if any.
    pub fn get(&self, topic: &str) -> Option<&Arc<Retained>> {
        let mut node = &self.root;
        for level in topic.split('/') {
            node = node.children.get(level)?;
        }
        node.value.as_ref()
    }

    /// Keeps `value` as its topic's retained value, unless that would pass a limit (the
    /// broker's own topics are never refused). An update of a topic already held is never
    /// refused for the count, only for the bytes it adds.
    ///
    /// # Errors
    /// [`RetainedFull`] when a limit would be passed; nothing is changed then.
    pub fn insert(&mut self, value: Arc<Retained>) -> Result<(), RetainedFull> {
        let counts = !value.topic.is_system();
        let old_size = self.get(value.topic.as_str()).map(|old| old.size);
        if counts {
            if old_size.is_none() && self.topics >= self.limits.topics {
                return Err(RetainedFull::Topics(self.limits.topics));
            }
            let bytes = self.bytes - old_size.unwrap_or(0) + value.size;
            if bytes > self.limits.bytes && value.size > old_size.unwrap_or(0) {
                return Err(RetainedFull::Bytes(self.limits.bytes));
            }
        }
        let mut node = &mut self.root;
        for level in value.topic.as_str().split('/') {
            node = node.children.entry(level.into()).or_default();
        }
        let size = value.size;
        self.cleared.forget(value.topic.as_str());
        match node.value.replace(value) {
            Some(old) if counts => self.bytes = self.bytes - old.size + size,
            Some(_) => {}
            None => {
                self.len += 1;
                if counts {
                    self.topics += 1;
                    self.bytes += size;
                }
            }
        }
        Ok(())
    }

    /// Forgets the value of `topic` as cleared at `ms` (unix ms), which [`Self::last_change`]
    /// remembers once [`Self::remember_clearings`] was called; returns the value.
    pub fn clear(&mut self, topic: &str, ms: u64) -> Option<Arc<Retained>> {
        self.cleared.record(topic, ms);
        self.remove(topic)
    }

    /// Starts remembering when topics are cleared (a broker that joins a cluster).
    pub fn remember_clearings(&mut self) {
        self.cleared.enable();
    }

    /// When `topic` last changed here: its value's time, else when it was last cleared (if
    /// that is remembered).
    pub fn last_change(&self, topic: &str) -> Option<u64> {
        self.get(topic)
            .map(|r| r.updated_ms())
            .or_else(|| self.cleared.get(topic))
    }

    /// Forgets the value of `topic`; returns it.
    pub fn remove(&mut self, topic: &str) -> Option<Arc<Retained>> {
        let levels: Vec<&str> = topic.split('/').collect();
        let removed = Self::remove_below(&mut self.root, &levels)?;
        self.len -= 1;
        if !removed.topic.is_system() {
            self.topics -= 1;
            self.bytes -= removed.size;
        }
        Some(removed)
    }

    /// Removes the value at `levels` below `node`, pruning the branches it leaves empty.
    fn remove_below(node: &mut Node, levels: &[&str]) -> Option<Arc<Retained>> {
        let Some((level, rest)) = levels.split_first() else {
            return node.value.take();
        };
        let child = node.children.get_mut(*level)?;
        let removed = Self::remove_below(child, rest);
        if child.is_empty() {
            node.children.remove(*level);
        }
        removed
    }

    /// The values `filter` matches, in a stable order (by levels).
    pub fn matching(&self, filter: &TopicFilter) -> Vec<Arc<Retained>> {
        let levels: Vec<&str> = filter.levels().collect();
        let mut out = Vec::new();
        self.root.collect(&levels, true, &mut out);
        out
    }
}

/// When topics were last cleared on this broker, kept only in a cluster: there a value
/// retained before a clearing can arrive after it (the bucket's watch lagging, this broker's
/// own earlier write coming back), and must not bring the value back. Bounded: at
/// [`Clearings::CAP`] entries, those older than [`Clearings::KEEP_MS`] go, and if that is not
/// enough, all of them (an old value may then come back, as without this record).
#[derive(Debug, Default)]
struct Clearings {
    enabled: bool,
    at: HashMap<String, u64>,
}

impl Clearings {
    /// Entries kept at most.
    const CAP: usize = 65_536;
    /// How long a clearing is worth remembering: far longer than any lag of the bucket.
    const KEEP_MS: u64 = 10 * 60 * 1000;

    /// Starts remembering (a broker that joins a cluster).
    fn enable(&mut self) {
        self.enabled = true;
    }

    /// `topic` was cleared at `ms` (unix ms).
    fn record(&mut self, topic: &str, ms: u64) {
        if !self.enabled {
            return;
        }
        if self.at.len() >= Self::CAP && !self.at.contains_key(topic) {
            let cutoff = ms.saturating_sub(Self::KEEP_MS);
            self.at.retain(|_, at| *at > cutoff);
            if self.at.len() >= Self::CAP {
                self.at.clear();
            }
        }
        let at = self.at.entry(topic.to_string()).or_insert(ms);
        *at = (*at).max(ms);
    }

    /// `topic` holds a value again.
    fn forget(&mut self, topic: &str) {
        if !self.at.is_empty() {
            self.at.remove(topic);
        }
    }

    /// When `topic` was last cleared, if that is remembered.
    fn get(&self, topic: &str) -> Option<u64> {
        self.at.get(topic).copied()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    fn value(topic: &str, data: Value) -> Arc<Retained> {
        Arc::new(Retained::new(
            TopicName::system(topic).unwrap(),
            data,
            None,
            0,
        ))
    }

    fn unlimited() -> RetainedTree {
        RetainedTree::new(Limits {
            topics: usize::MAX,
            bytes: usize::MAX,
        })
    }

    fn topics(found: &[Arc<Retained>]) -> Vec<&str> {
        found.iter().map(|r| r.topic().as_str()).collect()
    }

    #[test]
    fn filters_find_what_they_match() {
        let mut tree = unlimited();
        for t in ["a", "a/b", "a/b/c", "a/c", "b/b", "$SYS/x"] {
            tree.insert(value(t, json!(1))).unwrap();
        }
        let find = |f: &str| {
            topics(&tree.matching(&TopicFilter::new(f).unwrap()))
                .into_iter()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        assert_eq!(find("a/b"), ["a/b"]);
        assert_eq!(find("a/+"), ["a/b", "a/c"]);
        assert_eq!(find("+/b"), ["a/b", "b/b"]);
        assert_eq!(find("a/#"), ["a", "a/b", "a/b/c", "a/c"]);
        assert_eq!(find("#"), ["a", "a/b", "a/b/c", "a/c", "b/b"]);
        assert_eq!(find("$SYS/#"), ["$SYS/x"]);
        assert!(find("c/#").is_empty());
    }

    #[test]
    fn limits_count_client_topics_and_bytes_only() {
        let mut tree = RetainedTree::new(Limits {
            topics: 2,
            bytes: 100,
        });
        tree.insert(value("a", json!(1))).unwrap();
        tree.insert(value("b", json!(2))).unwrap();
        assert_eq!(
            tree.insert(value("c", json!(3))),
            Err(RetainedFull::Topics(2))
        );
        // The broker's own topics do not count; updates of a topic held are not refused.
        tree.insert(value("$SYS/x", json!("x".repeat(500))))
            .unwrap();
        tree.insert(value("a", json!(10))).unwrap();
        // Bytes: a larger value that would pass the limit is refused, and nothing changes.
        assert_eq!(
            tree.insert(value("a", json!("y".repeat(200)))),
            Err(RetainedFull::Bytes(100))
        );
        assert_eq!(tree.get("a").unwrap().data(), &json!(10));
        // Clearing frees room.
        tree.remove("b").unwrap();
        tree.insert(value("c", json!(3))).unwrap();
        assert_eq!(tree.len(), 3);
        assert_eq!(tree.bytes(), "a".len() + 2 + "c".len() + 1);
    }

    #[test]
    fn removing_prunes_empty_branches() {
        let mut tree = unlimited();
        tree.insert(value("a/b/c", json!(1))).unwrap();
        assert!(tree.remove("a/b").is_none());
        assert!(tree.remove("a/b/c").is_some());
        assert!(tree.root.is_empty());
        assert!(tree.is_empty());
    }

    fn level() -> impl Strategy<Value = String> {
        prop::sample::select(vec!["a", "b", "c", "$s"]).prop_map(str::to_owned)
    }

    proptest! {
        #[test]
        fn matching_agrees_with_the_reference_rule(
            names in prop::collection::vec(prop::collection::vec(level(), 1..4), 0..20),
            filter in prop::collection::vec(
                prop::sample::select(vec!["a", "b", "$s", "+", "#"]), 1..4,
            ),
        ) {
            let mut tree = unlimited();
            let mut held = std::collections::BTreeSet::new();
            for name in &names {
                let topic = name.join("/");
                tree.insert(value(&topic, json!(1))).unwrap();
                held.insert(topic);
            }
            let hash_last = filter.iter().position(|l| *l == "#").map_or(filter.len(), |i| i + 1);
            let Ok(filter) = TopicFilter::new(filter[..hash_last].join("/")) else {
                return Ok(());
            };
            let mut found: Vec<String> = tree
                .matching(&filter)
                .iter()
                .map(|r| r.topic().as_str().to_owned())
                .collect();
            found.sort();
            let expected: Vec<String> = held
                .into_iter()
                .filter(|t| filter.matches(&TopicName::system(t.as_str()).unwrap()))
                .collect();
            prop_assert_eq!(found, expected);
        }
    }

    #[test]
    fn clearings_are_kept_only_once_enabled_and_only_the_latest() {
        let mut c = Clearings::default();
        c.record("a/b", 10);
        assert_eq!(c.get("a/b"), None, "not in a cluster");
        c.enable();
        c.record("a/b", 10);
        c.record("a/b", 5);
        assert_eq!(c.get("a/b"), Some(10));
        c.forget("a/b");
        assert_eq!(c.get("a/b"), None);
    }

    #[test]
    fn clearings_stay_bounded() {
        let mut c = Clearings::default();
        c.enable();
        let old = 1_000;
        let now = old + Clearings::KEEP_MS + 1;
        for i in 0..Clearings::CAP / 2 {
            c.record(&format!("old/{i}"), old);
        }
        for i in 0..Clearings::CAP / 2 {
            c.record(&format!("new/{i}"), now);
        }
        // Full: the next one lets the old half go.
        c.record("one/more", now);
        assert_eq!(c.get("old/0"), None);
        assert_eq!(c.get("new/0"), Some(now));
        assert_eq!(c.get("one/more"), Some(now));
        assert_eq!(c.at.len(), Clearings::CAP / 2 + 1);
        // Full of recent ones: all go.
        for i in 0..Clearings::CAP {
            c.record(&format!("recent/{i}"), now);
        }
        assert!(c.at.len() < Clearings::CAP);
    }
}
