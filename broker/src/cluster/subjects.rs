//! Topics as NATS subjects, under the cluster's prefix: `pin/p1/state` in cluster `breadboard`
//! is `bb.breadboard.pin.p1.state`. A level's bytes outside `[A-Za-z0-9_-]` are written `~XX`
//! (hex), so that any level survives the trip: `$SYS` is `~24SYS`, `a.b` is `a~2Eb`. Filters
//! map `+` to `*` and `#` to `>`; since `a/#` also matches `a` itself and `a.>` does not,
//! a filter ending in `#` needs two subjects.

use proto::{TopicFilter, TopicName};

/// Why a subject is not one of the cluster's topics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SubjectError {
    /// Not under the cluster's prefix.
    #[error("subject {0:?} is not under the cluster's prefix")]
    Foreign(String),
    /// Under the prefix, but not a valid encoding of a topic.
    #[error("subject {0:?} does not encode a topic")]
    Invalid(String),
}

/// The mapping of one cluster.
#[derive(Debug, Clone)]
pub struct Subjects {
    prefix: String,
}

impl Subjects {
    /// The mapping of cluster `name` (itself written as one escaped token).
    pub fn new(name: &str) -> Self {
        let mut prefix = String::from("bb.");
        escape_level(name, &mut prefix);
        prefix.push('.');
        Self { prefix }
    }

    /// The prefix every subject of the cluster starts with (`bb.<name>.`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The subject of a topic.
    pub fn topic<S: AsRef<str>>(&self, topic: &TopicName<S>) -> String {
        let mut out = self.prefix.clone();
        for (i, level) in topic.levels().enumerate() {
            if i > 0 {
                out.push('.');
            }
            escape_level(level, &mut out);
        }
        out
    }

    /// The subjects that together match what `filter` matches (two for a filter ending in
    /// `#` past its first level: `a/#` is `a` and `a.>`).
    pub fn filter(&self, filter: &TopicFilter) -> Vec<String> {
        let levels: Vec<&str> = filter.levels().collect();
        let mut base = self.prefix.clone();
        for (i, level) in levels.iter().enumerate() {
            if i > 0 && *level != "#" {
                base.push('.');
            }
            match *level {
                "+" => base.push('*'),
                "#" => {}
                l => escape_level(l, &mut base),
            }
        }
        match levels.last() {
            Some(&"#") if levels.len() > 1 => {
                let parent = base.clone();
                base.push_str(".>");
                vec![parent, base]
            }
            Some(&"#") => {
                base.push('>');
                vec![base]
            }
            _ => vec![base],
        }
    }

    /// The topic a subject of the cluster encodes.
    ///
    /// # Errors
    /// [`SubjectError`]: another prefix, or not an encoding of a valid topic.
    pub fn to_topic(&self, subject: &str) -> Result<TopicName, SubjectError> {
        let rest = subject
            .strip_prefix(&self.prefix)
            .ok_or_else(|| SubjectError::Foreign(subject.to_string()))?;
        let invalid = || SubjectError::Invalid(subject.to_string());
        let mut topic = String::with_capacity(rest.len());
        for (i, token) in rest.split('.').enumerate() {
            if i > 0 {
                topic.push('/');
            }
            topic.push_str(&unescape_level(token).ok_or_else(invalid)?);
        }
        TopicName::system(topic).map_err(|_| invalid())
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

fn escape_level(level: &str, out: &mut String) {
    for b in level.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("~{b:02X}"));
        }
    }
}

fn unescape_level(token: &str) -> Option<String> {
    let bytes = token.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'~' => {
                let hex = token.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' => {
                out.push(b);
                i += 1;
            }
            _ => return None,
        }
    }
    if out.is_empty() {
        return None;
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subjects() -> Subjects {
        Subjects::new("breadboard")
    }

    #[test]
    fn topics_and_filters_map_as_documented() {
        let s = subjects();
        let topic = |t: &str| s.topic(&TopicName::system(t).unwrap());
        assert_eq!(topic("pin/p1/state"), "bb.breadboard.pin.p1.state");
        assert_eq!(topic("$SYS/nodes/a.b"), "bb.breadboard.~24SYS.nodes.a~2Eb");
        let filter = |f: &str| s.filter(&TopicFilter::new(f).unwrap());
        assert_eq!(filter("pin/+/state"), vec!["bb.breadboard.pin.*.state"]);
        assert_eq!(
            filter("pin/#"),
            vec!["bb.breadboard.pin", "bb.breadboard.pin.>"]
        );
        assert_eq!(filter("#"), vec!["bb.breadboard.>"]);
    }

    #[test]
    fn patterns_overlap_by_nats_rules() {
        assert!(patterns_overlap("bb.x.>", "bb.x.~24SYS.>"));
        assert!(patterns_overlap("bb.x.a.*", "bb.x.*.b"));
        assert!(!patterns_overlap("bb.x.a", "bb.x.a.>"));
        assert!(!patterns_overlap("bb.x.a.*", "bb.x.b.*"));
    }

    #[test]
    fn subjects_come_back_as_their_topics() {
        let s = subjects();
        for t in [
            "pin/p1/state",
            "$SYS/nodes/x",
            "a b/c.d/é/~/*/>",
            "_inbox/x/7",
        ] {
            let topic = TopicName::system(t).unwrap();
            assert_eq!(s.to_topic(&s.topic(&topic)).unwrap(), topic, "{t}");
        }
        assert!(matches!(
            s.to_topic("other.x"),
            Err(SubjectError::Foreign(_))
        ));
        assert!(s.to_topic("bb.breadboard.a.~G1").is_err());
        assert!(s.to_topic("bb.breadboard.a..b").is_err());
        assert!(s.to_topic("bb.breadboard.a.*").is_err());
    }
}
