//! The checks behind breadboard's fuzz targets, one function per target (`fuzz_targets/` holds
//! only the `fuzz_target!` lines): what must hold for any input, beyond "does not panic".
//!
//! - [`client_frame`]: decoding a client frame, in either encoding. The quick readers and the
//!   serde-only reference path accept and refuse alike, with the same error; a decoded frame
//!   re-encoded (in both encodings) decodes to the same frame; a `pub`'s data delivered as it was
//!   sent reads the same as its value.
//! - [`server_frame`]: decoding a server frame (the client side); what decodes re-encodes and
//!   decodes to the same frame, in both encodings.
//! - [`topic`]: topic names and filters, and matching: the broker's trie delivers to exactly the
//!   subscribers the reference rule (`TopicFilter::matches`) selects, also after removals.
//! - [`subject`]: topics and filters as NATS subjects (`proto::subject`): a topic's subject
//!   decodes back to it, a subject that decodes encodes back to itself, and a filter's subjects
//!   match (by NATS's rule) the subjects of exactly the topics the filter matches, each once.
//! - [`auth_file`]: the auth file (TOML): rules or an error, and rules that mean what they say.
//! - [`http_head`]: the HTTP request head; whatever part of a head has arrived, the answer is
//!   the one the whole head gives (the listener parses the buffer again as bytes come in).
//!
//! The seeds (`corpus/<target>/`, a few hundred bytes each) are the frames of `PROTOCOL.md` and
//! the tests, in both encodings (the MessagePack ones written with Python's `msgpack`), the
//! refusals they exercise, and forms each quick reader leaves to serde (escapes, long numbers,
//! binary data, `NaN`, extensions, deep nesting).
//!
//! A codec added later gets a function here, a target in `fuzz_targets/` and `Cargo.toml`, and
//! a few seeds in `corpus/<target>/`; `scripts/fuzz` runs every target `cargo fuzz list` shows.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::sync::Arc;

use broker::head::Head;
use broker::trie::{Subscriber, Trie};
use proto::{
    ClientFrame, Data, Encoding, Message, Publish, ServerFrame, SubjectSpace, TopicFilter,
    TopicName,
};

/// Client-frame decoding of `bytes` in `enc`.
pub fn client_frame(bytes: &[u8], enc: Encoding) {
    let decoded = ClientFrame::decode(bytes, enc);
    assert_eq!(
        decoded,
        proto::codec::decode_value(bytes, enc),
        "the quick path and the value path disagree"
    );
    if enc == Encoding::Json {
        if let Ok(text) = std::str::from_utf8(bytes) {
            assert_eq!(ClientFrame::decode_text(text), decoded, "decode_text");
        }
    }
    let Ok(frame) = decoded else {
        return;
    };
    assert_eq!(frame.clone().into_owned(), frame, "into_owned");
    for out in Encoding::ALL {
        let encoded = frame.encode(out);
        assert_eq!(
            ClientFrame::decode(encoded.as_bytes(), out).map(ClientFrame::into_owned),
            Ok(frame.clone().into_owned()),
            "re-encoded in {out:?}: {encoded:?}"
        );
    }
    if let ClientFrame::Pub(p) = &frame {
        delivered_as_sent(p);
    }
}

/// A `pub`'s data delivered as the publisher sent it (written as is into the `msg` for
/// subscribers of the same encoding) reads the same as its value delivered.
fn delivered_as_sent(p: &Publish<'_>) {
    let value = p.data.to_value();
    let msg = |data| {
        ServerFrame::Msg(Message {
            topic: p.topic.borrowed(),
            data,
            from: Some(Cow::Borrowed("fuzz")),
            reply: p.reply.as_ref().map(TopicName::borrowed),
            retained: p.retain,
        })
    };
    let as_sent = msg(p.data.as_ref());
    let as_value = msg(Data::from(&value));
    for out in Encoding::ALL {
        let decode = |frame: &ServerFrame<'_, Data<'_>>| {
            let encoded = frame.encode(out);
            match ServerFrame::decode(encoded.as_bytes(), out) {
                Ok(decoded) => decoded,
                Err(e) => panic!("a msg the broker wrote does not decode: {e}: {encoded:?}"),
            }
        };
        assert_eq!(decode(&as_sent), decode(&as_value), "msg in {out:?}");
    }
}

/// Server-frame decoding of `bytes`, in both encodings.
pub fn server_frame(bytes: &[u8]) {
    for enc in Encoding::ALL {
        let Ok(frame) = ServerFrame::decode(bytes, enc) else {
            continue;
        };
        for out in Encoding::ALL {
            let encoded = frame.encode(out);
            match ServerFrame::decode(encoded.as_bytes(), out) {
                Ok(again) => assert_eq!(again, frame, "re-encoded in {out:?}: {encoded:?}"),
                Err(e) => panic!("{enc:?} frame re-encoded in {out:?} does not decode: {e}"),
            }
        }
    }
}

/// A subscriber of the trie: only its id matters.
#[derive(Debug)]
struct Sub(u64);

impl Subscriber for Sub {
    fn id(&self) -> u64 {
        self.0
    }
}

/// How many subscribers the lines' filters are shared among: fewer than the lines, so that one
/// subscriber's overlapping filters are seen to deliver once.
const SUBSCRIBERS: u64 = 4;

/// Topic names and filters, one per line of `bytes` (each line tried as both); every valid
/// filter subscribed, every valid name published to.
pub fn topic(bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    let mut filters = Vec::new();
    let mut names = Vec::new();
    for (i, line) in text.split('\n').enumerate() {
        let name = TopicName::system(line);
        assert_eq!(
            name.is_ok(),
            name_by_the_rules(line),
            "name {line:?}: {name:?}"
        );
        let filter = TopicFilter::new(line);
        assert_eq!(
            filter.is_ok(),
            filter_by_the_rules(line),
            "filter {line:?}: {filter:?}"
        );
        if let Ok(name) = &name {
            assert_eq!(name.as_str(), line);
            assert!(name.levels().eq(line.split('/')), "levels of {line:?}");
            // A name is a filter too, which matches it alone among names of its length.
            let as_filter = TopicFilter::new(line).expect("a name is a valid filter");
            assert!(!as_filter.has_wildcards());
            assert!(as_filter.matches(name), "{line:?} does not match itself");
        }
        let client = TopicName::new(line);
        assert_eq!(
            client.is_ok(),
            name.is_ok() && !line.starts_with('$'),
            "new and system disagree on {line:?}"
        );
        if let Ok(filter) = filter {
            assert_eq!(filter.as_str(), line);
            assert!(filter.levels().eq(line.split('/')), "levels of {line:?}");
            filters.push((i as u64 % SUBSCRIBERS, filter));
        }
        if let Ok(name) = name {
            names.push(name);
        }
    }

    // Coverage and overlap, as permission checks use them, agree with matching on every name
    // at hand: what a filter covers, it matches; filters that do not overlap share no name.
    for (_, a) in filters.iter().take(12) {
        for (_, b) in filters.iter().take(12) {
            assert!(a.covers(a), "{a} covers itself");
            assert_eq!(
                a.overlaps(b),
                b.overlaps(a),
                "overlap of {a} and {b} is symmetric"
            );
            for name in &names {
                if a.covers(b) && b.matches(name) {
                    assert!(a.matches(name), "{a} covers {b} but misses {name}");
                }
                if a.matches(name) && b.matches(name) {
                    assert!(a.overlaps(b), "{a} and {b} share {name} but do not overlap");
                }
            }
        }
    }

    let mut trie = Trie::default();
    let mut live: Vec<(u64, TopicFilter)> = Vec::new();
    for (id, filter) in &filters {
        let new = !live.contains(&(*id, filter.clone()));
        assert_eq!(
            trie.insert(filter, Arc::new(Sub(*id))),
            new,
            "insert {filter}"
        );
        if new {
            live.push((*id, filter.clone()));
        }
    }
    agree(&trie, &live, &names);
    // Every other subscription dropped, then the rest: the index follows.
    for (i, (id, filter)) in filters.iter().enumerate().filter(|(i, _)| i % 2 == 0) {
        let was = live.iter().position(|(l, f)| l == id && f == filter);
        assert_eq!(
            trie.remove(filter, *id),
            was.is_some(),
            "remove {filter} ({i})"
        );
        if let Some(at) = was {
            live.remove(at);
        }
    }
    agree(&trie, &live, &names);
    for (id, filter) in &filters {
        trie.remove(filter, *id);
    }
    assert!(trie.is_empty(), "{} left after removing all", trie.len());
    agree(&trie, &[], &names);
}

/// Lines of `bytes`, each tried as a subject (as it is and under both roots of the default
/// cluster), a topic name and a filter; the filters then matched against the names.
pub fn subject(bytes: &[u8]) {
    let space = SubjectSpace::default();
    let text = String::from_utf8_lossy(bytes);
    let mut names = Vec::new();
    let mut filters = Vec::new();
    for line in text.split('\n') {
        for subject in [
            line.to_string(),
            format!("{}.{line}", space.root()),
            format!("{}.{line}", space.system_root()),
        ] {
            if let Ok(topic) = space.topic(&subject) {
                assert_eq!(
                    space.subject(&topic),
                    subject,
                    "{subject:?} is not canonical"
                );
            }
        }
        if let Ok(name) = TopicName::system(line) {
            let subject = space.subject(&name);
            assert!(
                subject.bytes().all(|b| b.is_ascii_graphic()),
                "{name:?}: {subject:?}"
            );
            assert!(
                subject
                    .split('.')
                    .all(|t| !t.is_empty() && t != "*" && t != ">" && !t.starts_with('$')),
                "{name:?}: {subject:?} has a token NATS reads otherwise"
            );
            assert_eq!(space.topic(&subject).as_ref(), Ok(&name), "{subject:?}");
            names.push((name, subject));
        }
        if let Ok(filter) = TopicFilter::new(line) {
            let subjects = space.filter_subjects(&filter);
            assert!((1..=2).contains(&subjects.len()), "{filter}: {subjects}");
            filters.push((filter, subjects));
        }
    }
    for (filter, subjects) in filters.iter().take(16) {
        for (name, subject) in &names {
            let copies = subjects.iter().filter(|p| nats_matches(p, subject)).count();
            assert!(
                copies <= 1,
                "{name} reaches {filter} twice through {subjects}"
            );
            assert_eq!(
                copies == 1,
                filter.matches(name),
                "{filter} ({subjects}) and {name} ({subject})"
            );
        }
    }
}

/// NATS's matching rule: `*` is any one token, `>` (last) one or more.
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

/// An auth file: any text is rules or a clear error, never a panic; rules read from it use no
/// `%u` any more, and allow nothing to a user beyond its own publish filters.
pub fn auth_file(bytes: &[u8]) {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    let Ok(rules) = broker::auth::parse_text(text, std::path::Path::new("fuzz.toml")) else {
        return;
    };
    for user in rules.users.values() {
        let p = &user.permissions;
        for f in p.publish.allow.iter().chain(&p.subscribe.allow) {
            assert!(!f.as_str().contains("%u"), "%u left in {f}");
        }
        for f in &p.publish.allow {
            if let Ok(name) = TopicName::system(f.as_str()) {
                let denied = p.publish.deny.iter().any(|d| d.matches(&name));
                assert_eq!(
                    p.publish.allows_topic(&name),
                    !denied,
                    "{f} for {}",
                    user.name
                );
            }
        }
    }
}

/// What names and filters have in common, as the protocol states it: 1 to 1024 bytes, no NUL,
/// 1 to 32 levels, none empty.
fn common_by_the_rules(s: &str) -> bool {
    let levels: Vec<&str> = s.split('/').collect();
    (1..=1024).contains(&s.len())
        && !s.contains('\0')
        && levels.len() <= 32
        && levels.iter().all(|l| !l.is_empty())
}

/// A topic name (`$` allowed, as the broker's own): no wildcard at all.
fn name_by_the_rules(s: &str) -> bool {
    common_by_the_rules(s) && !s.contains(['+', '#'])
}

/// A filter: a wildcard is a whole level, and `#` only the last.
fn filter_by_the_rules(s: &str) -> bool {
    let levels: Vec<&str> = s.split('/').collect();
    common_by_the_rules(s)
        && levels.iter().enumerate().all(|(i, l)| match *l {
            "+" => true,
            "#" => i == levels.len() - 1,
            l => !l.contains(['+', '#']),
        })
}

/// The trie holding `live` delivers each of `names` to exactly the subscribers whose filters
/// match by the reference rule, each once.
fn agree(trie: &Trie<Sub>, live: &[(u64, TopicFilter)], names: &[TopicName]) {
    assert_eq!(trie.len(), live.len());
    for name in names {
        let expected: BTreeSet<u64> = live
            .iter()
            .filter(|(_, f)| f.matches(name))
            .map(|(id, _)| *id)
            .collect();
        let found: Vec<u64> = trie.matches(name).iter().map(|s| s.0).collect();
        let unique: BTreeSet<u64> = found.iter().copied().collect();
        assert_eq!(
            unique.len(),
            found.len(),
            "{name}: delivered twice: {found:?}"
        );
        assert_eq!(unique, expected, "{name}: the trie and the rule disagree");
    }
}

/// The HTTP request head at the start of `bytes`.
pub fn http_head(bytes: &[u8]) {
    let Ok(Some(head)) = Head::parse(bytes) else {
        return;
    };
    assert!(bytes.ends_with(&head.rest), "rest is not what follows");
    assert!(
        head.websocket_key.is_none() || head.upgrade,
        "a key without an upgrade"
    );
    let len = bytes.len() - head.rest.len();
    assert!(len > 0, "an empty head");
    // The head alone reads the same, with nothing after it.
    let alone = Head::parse(&bytes[..len]);
    assert!(
        matches!(&alone, Ok(Some(h)) if h.rest.is_empty() && *h == Head { rest: Vec::new(), ..head.clone() }),
        "the head alone reads otherwise: {alone:?}"
    );
    // What the listener asks of a head never fails, whatever the headers hold.
    let token = head.token();
    if let (Some(value), Some(token)) = (&head.authorization, &token) {
        assert!(
            value.contains(token.as_str()),
            "a token not from its header"
        );
    }
    let _ = head.origin_allowed(false, &[]);
    let _ = head.origin_allowed(true, &["*".to_string()]);
    // Any part of it is incomplete (not an error: more may come).
    let some_cut = usize::from(bytes[0]) * len / 256;
    for cut in [len - 1, len / 2, some_cut] {
        let part = Head::parse(&bytes[..cut]);
        assert!(
            matches!(part, Ok(None)),
            "the first {cut} of {len} bytes of a head read as {part:?}"
        );
    }
}
