//! The subscription index: a trie on topic levels, with `+` and `#` branches.
//!
//! A publish walks the trie once along the topic's levels, following at each node the exact
//! child, the `+` child, and collecting the `#` subscribers. The cost depends on the topic's
//! depth and on the wildcards that can match it, not on the total number of filters.

use std::collections::HashMap;
use std::sync::Arc;

use proto::{Levels, TopicFilter, TopicName};
use smallvec::SmallVec;

/// Children by level. foldhash rather than SipHash: levels are short and a publish hashes one
/// per level; its seeds are still random per map, so crafted levels cannot be aimed at one.
type Children<S> = HashMap<Box<str>, Node<S>, foldhash::fast::RandomState>;

/// What [`Trie::matches`] returns.
pub type Matches<'a, S> = SmallVec<[&'a Arc<S>; 8]>;

/// A subscriber as the index knows it: an id to deduplicate overlapping filters, and a handle
/// to deliver to.
pub trait Subscriber {
    /// Unique per connection.
    fn id(&self) -> u64;
}

#[derive(Debug)]
struct Node<S> {
    /// Children by exact level.
    children: Children<S>,
    /// The `+` child.
    plus: Option<Box<Node<S>>>,
    /// Subscribers whose filter ends with `#` right below this node.
    hash: Vec<Arc<S>>,
    /// Subscribers whose filter ends exactly at this node.
    exact: Vec<Arc<S>>,
}

impl<S> Default for Node<S> {
    fn default() -> Self {
        Self {
            children: Children::default(),
            plus: None,
            hash: Vec::new(),
            exact: Vec::new(),
        }
    }
}

impl<S> Node<S> {
    fn is_empty(&self) -> bool {
        self.children.is_empty()
            && self.plus.is_none()
            && self.hash.is_empty()
            && self.exact.is_empty()
    }
}

/// Filters and the subscribers that hold them.
#[derive(Debug)]
pub struct Trie<S> {
    root: Node<S>,
    /// Number of (filter, subscriber) pairs stored.
    len: usize,
}

impl<S> Default for Trie<S> {
    fn default() -> Self {
        Self {
            root: Node::default(),
            len: 0,
        }
    }
}

impl<S: Subscriber> Trie<S> {
    /// Number of (filter, subscriber) pairs stored.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no subscription is stored.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds `sub` under `filter`. Returns false if it was already there.
    pub fn insert(&mut self, filter: &TopicFilter, sub: Arc<S>) -> bool {
        let mut node = &mut self.root;
        let mut levels = filter.levels().peekable();
        while let Some(level) = levels.next() {
            if level == "#" {
                // Validation guarantees `#` is last.
                return Self::push(&mut node.hash, sub, &mut self.len);
            }
            node = if level == "+" {
                node.plus.get_or_insert_with(Box::default)
            } else {
                node.children.entry(level.into()).or_default()
            };
            if levels.peek().is_none() {
                return Self::push(&mut node.exact, sub, &mut self.len);
            }
        }
        false
    }

    fn push(list: &mut Vec<Arc<S>>, sub: Arc<S>, len: &mut usize) -> bool {
        if list.iter().any(|s| s.id() == sub.id()) {
            return false;
        }
        list.push(sub);
        *len += 1;
        true
    }

    /// Removes the subscriber with `id` from `filter`. Returns false if it was not there.
    /// Nodes left empty are pruned, so memory follows the live subscriptions.
    pub fn remove(&mut self, filter: &TopicFilter, id: u64) -> bool {
        let levels: Vec<&str> = filter.levels().collect();
        let removed = Self::remove_at(&mut self.root, &levels, id);
        if removed {
            self.len -= 1;
        }
        removed
    }

    fn remove_at(node: &mut Node<S>, levels: &[&str], id: u64) -> bool {
        let take = |list: &mut Vec<Arc<S>>| match list.iter().position(|s| s.id() == id) {
            Some(i) => {
                list.swap_remove(i);
                true
            }
            None => false,
        };
        match levels {
            [] => take(&mut node.exact),
            ["#"] => take(&mut node.hash),
            ["+", rest @ ..] => {
                let Some(child) = node.plus.as_deref_mut() else {
                    return false;
                };
                let removed = Self::remove_at(child, rest, id);
                if child.is_empty() {
                    node.plus = None;
                }
                removed
            }
            [level, rest @ ..] => {
                let Some(child) = node.children.get_mut(*level) else {
                    return false;
                };
                let removed = Self::remove_at(child, rest, id);
                if child.is_empty() {
                    node.children.remove(*level);
                }
                removed
            }
        }
    }

    /// The subscribers whose filters match `topic`, each once however many of its filters
    /// match. Most topics reach a few subscribers: those come without an allocation.
    pub fn matches(&self, topic: &TopicName<impl AsRef<str>>) -> Matches<'_, S> {
        let mut found = Matches::new();
        let system = topic.is_system();
        Self::collect(&self.root, topic.levels(), true, system, &mut found);
        if found.len() > 1 {
            found.sort_unstable_by_key(|s| s.id());
            found.dedup_by_key(|s| s.id());
        }
        found
    }

    fn collect<'a>(
        node: &'a Node<S>,
        mut levels: Levels<'_>,
        first: bool,
        system: bool,
        out: &mut Matches<'a, S>,
    ) {
        // A wildcard in the first level never matches a `$` topic.
        let wildcards = !(first && system);
        // Pushed one by one: `extend` costs more than the usual zero or one subscriber.
        if wildcards {
            for sub in &node.hash {
                out.push(sub);
            }
        }
        let Some(level) = levels.next() else {
            for sub in &node.exact {
                out.push(sub);
            }
            return;
        };
        if let Some(child) = node.children.get(level) {
            Self::collect(child, levels.clone(), false, system, out);
        }
        if wildcards {
            if let Some(plus) = &node.plus {
                Self::collect(plus, levels, false, system, out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[derive(Debug)]
    struct Sub(u64);
    impl Subscriber for Sub {
        fn id(&self) -> u64 {
            self.0
        }
    }

    fn matches(trie: &Trie<Sub>, topic: &str) -> Vec<u64> {
        let mut ids = Vec::new();
        for s in trie.matches(&TopicName::system(topic).unwrap()) {
            ids.push(s.0);
        }
        ids.sort_unstable();
        ids
    }

    fn f(s: &str) -> TopicFilter {
        TopicFilter::new(s).unwrap()
    }

    #[test]
    fn exact_plus_and_hash() {
        let mut t = Trie::default();
        t.insert(&f("a/b"), Arc::new(Sub(1)));
        t.insert(&f("a/+"), Arc::new(Sub(2)));
        t.insert(&f("a/#"), Arc::new(Sub(3)));
        t.insert(&f("#"), Arc::new(Sub(4)));
        t.insert(&f("b"), Arc::new(Sub(5)));
        assert_eq!(matches(&t, "a/b"), vec![1, 2, 3, 4]);
        assert_eq!(matches(&t, "a"), vec![3, 4]);
        assert_eq!(matches(&t, "a/c/d"), vec![3, 4]);
        assert_eq!(matches(&t, "b"), vec![4, 5]);
        assert_eq!(matches(&t, "$SYS/a"), Vec::<u64>::new());
    }

    #[test]
    fn overlapping_filters_deliver_once() {
        let mut t = Trie::default();
        let s = Arc::new(Sub(7));
        t.insert(&f("a/+"), s.clone());
        t.insert(&f("a/#"), s.clone());
        t.insert(&f("a/b"), s);
        assert_eq!(matches(&t, "a/b"), vec![7]);
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn insert_twice_is_one_subscription() {
        let mut t = Trie::default();
        assert!(t.insert(&f("a/+"), Arc::new(Sub(1))));
        assert!(!t.insert(&f("a/+"), Arc::new(Sub(1))));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn system_topics_need_explicit_prefix() {
        let mut t = Trie::default();
        t.insert(&f("$SYS/#"), Arc::new(Sub(1)));
        t.insert(&f("+/nodes/+"), Arc::new(Sub(2)));
        t.insert(&f("$SYS/nodes/+"), Arc::new(Sub(3)));
        assert_eq!(matches(&t, "$SYS/nodes/pin-1"), vec![1, 3]);
        assert_eq!(matches(&t, "x/nodes/pin-1"), vec![2]);
    }

    #[test]
    fn remove_prunes_and_keeps_others() {
        let mut t = Trie::default();
        t.insert(&f("a/+/c"), Arc::new(Sub(1)));
        t.insert(&f("a/+/c"), Arc::new(Sub(2)));
        t.insert(&f("a/#"), Arc::new(Sub(3)));
        assert!(t.remove(&f("a/+/c"), 1));
        assert!(!t.remove(&f("a/+/c"), 1));
        assert!(!t.remove(&f("x/y"), 1));
        assert_eq!(matches(&t, "a/b/c"), vec![2, 3]);
        assert!(t.remove(&f("a/+/c"), 2));
        assert!(t.remove(&f("a/#"), 3));
        assert!(t.root.is_empty());
        assert!(t.is_empty());
    }

    fn level() -> impl Strategy<Value = String> {
        prop::sample::select(vec!["a", "b", "c", "$SYS"]).prop_map(String::from)
    }

    fn filter() -> impl Strategy<Value = TopicFilter> {
        (
            prop::collection::vec(prop_oneof![3 => level(), 1 => Just("+".to_string())], 1..5),
            any::<bool>(),
        )
            .prop_map(|(mut l, hash)| {
                if hash {
                    *l.last_mut().unwrap() = "#".into();
                }
                TopicFilter::new(l.join("/")).unwrap()
            })
    }

    proptest! {
        /// The trie delivers to exactly the subscribers that the reference rule
        /// (`TopicFilter::matches`) selects, each once, also after removals.
        #[test]
        fn trie_agrees_with_reference_matcher(
            subs in prop::collection::vec((0u64..8, filter()), 0..40),
            removals in prop::collection::vec(0usize..40, 0..10),
            topics in prop::collection::vec(prop::collection::vec(level(), 1..5), 1..10),
        ) {
            let mut trie = Trie::default();
            let mut live: Vec<(u64, TopicFilter)> = Vec::new();
            for (id, filter) in &subs {
                trie.insert(filter, Arc::new(Sub(*id)));
                if !live.contains(&(*id, filter.clone())) {
                    live.push((*id, filter.clone()));
                }
            }
            for r in removals {
                if let Some((id, filter)) = subs.get(r) {
                    let was = live.iter().position(|(i, f)| i == id && f == filter);
                    prop_assert_eq!(trie.remove(filter, *id), was.is_some());
                    if let Some(i) = was {
                        live.remove(i);
                    }
                }
            }
            prop_assert_eq!(trie.len(), live.len());
            for levels in topics {
                let topic = TopicName::system(levels.join("/")).unwrap();
                let mut expected: Vec<u64> = live
                    .iter()
                    .filter(|(_, f)| f.matches(&topic))
                    .map(|(id, _)| *id)
                    .collect();
                expected.sort_unstable();
                expected.dedup();
                prop_assert_eq!(matches(&trie, topic.as_str()), expected);
            }
        }
    }
}
