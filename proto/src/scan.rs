//! A quick reader for the usual JSON client frame, such as
//! `{"op":"pub","topic":"clock/tick","data":{"n":1}}`: the envelope of every frame a JSON
//! publisher sends, read in one pass without serde's generic machinery (which costs several
//! times more on frames this small).
//!
//! It reads only the plain case: keys and strings without escapes or control characters, an
//! `id` of plain digits, `retain` as `true` or `false`, each field at most once. Anything else
//! (and anything malformed) gives `None`, and the caller decodes the frame through serde, which
//! decides and words every error. So it can only ever be faster, never different: a property
//! test (`codec::tests`) holds its envelopes to serde's.
//!
//! `data` and unknown fields are delimited by serde_json itself (a `RawValue`), so the syntax
//! of a value is never judged here, except for the one kind whose syntax is trivial: a string
//! without escapes or control characters, taken with its quotes.

use std::borrow::Cow;

use serde_json::value::RawValue;

use crate::codec::Envelope;

/// The envelope of `text`, if it is a plain frame (see the module documentation).
/// `data` comes as its JSON text.
pub(crate) fn envelope(text: &str) -> Option<Envelope<'_, &str>> {
    let mut r = Reader { text, at: 0 };
    let mut env = Envelope::default();
    r.skip_ws();
    r.eat(b'{')?;
    r.skip_ws();
    if !r.eat_if(b'}') {
        loop {
            let key = r.known(&KEYS).or_else(|| r.string())?;
            r.skip_ws();
            r.eat(b':')?;
            r.skip_ws();
            match key {
                "op" => set(
                    &mut env.op,
                    Cow::Borrowed(r.known(&OPS).or_else(|| r.string())?),
                )?,
                "topic" => set(&mut env.topic, Cow::Borrowed(r.string()?))?,
                "reply" => set(&mut env.reply, Cow::Borrowed(r.string()?))?,
                "name" => set(&mut env.name, Cow::Borrowed(r.string()?))?,
                "kind" => set(&mut env.kind, Cow::Borrowed(r.string()?))?,
                "id" => set(&mut env.id, r.integer()?)?,
                "retain" => set(&mut env.retain, r.boolean()?)?,
                "data" => set(&mut env.data, r.value()?)?,
                _ => {
                    r.raw()?;
                }
            }
            r.skip_ws();
            if r.eat_if(b',') {
                r.skip_ws();
                continue;
            }
            r.eat(b'}')?;
            break;
        }
    }
    r.skip_ws();
    (r.at == text.len()).then_some(env)
}

/// The envelope's keys, most frequent first: matched whole, before any scanning.
const KEYS: [&str; 8] = [
    "op", "topic", "data", "id", "retain", "reply", "name", "kind",
];
/// The ops, most frequent first.
const OPS: [&str; 5] = ["pub", "sub", "ping", "unsub", "hello"];

/// Fills a field once; a second time is not plain (serde refuses duplicate fields).
pub(crate) fn set<T>(field: &mut Option<T>, value: T) -> Option<()> {
    match field {
        Some(_) => None,
        None => {
            *field = Some(value);
            Some(())
        }
    }
}

/// Where the first `"`, `\\` or control character of `bytes` is. Eight bytes at a time (a
/// "has a byte less than" word trick, as serde_json does): a frame's strings are mostly short,
/// too short to pay for a vector search's set-up, and a byte-by-byte loop costs several
/// instructions a byte.
fn plain_run(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::MAX / 255;
    const HIGH: u64 = ONES << 7;
    let stop = |b: u8| b == b'"' || b == b'\\' || b < 0x20;
    let mut chunks = bytes.chunks_exact(8);
    for (i, chunk) in chunks.by_ref().enumerate() {
        let mut word = [0; 8];
        word.copy_from_slice(chunk);
        let x = u64::from_le_bytes(word);
        let quote = x ^ (ONES * u64::from(b'"'));
        let backslash = x ^ (ONES * u64::from(b'\\'));
        // A byte's high bit is set in each term where that byte is below 0x20, or zero after
        // the xor; the lowest such byte is the first match (later ones may be false).
        let found = (x.wrapping_sub(ONES * 0x20)
            | quote.wrapping_sub(ONES) & !quote
            | backslash.wrapping_sub(ONES) & !backslash)
            & !x
            & HIGH;
        if found != 0 {
            return Some(i * 8 + found.trailing_zeros() as usize / 8);
        }
    }
    let done = bytes.len() - chunks.remainder().len();
    chunks
        .remainder()
        .iter()
        .position(|&b| stop(b))
        .map(|at| done + at)
}

struct Reader<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Reader<'a> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.at).copied()
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\n' | b'\t' | b'\r')) {
            self.at += 1;
        }
    }

    fn eat_if(&mut self, b: u8) -> bool {
        let found = self.peek() == Some(b);
        if found {
            self.at += 1;
        }
        found
    }

    fn eat(&mut self, b: u8) -> Option<()> {
        self.eat_if(b).then_some(())
    }

    /// One of `words` written as a string, matched whole (cheaper than scanning a short string
    /// for its end); `None`, having read nothing, for anything else.
    fn known(&mut self, words: &[&'static str]) -> Option<&'static str> {
        let rest = self.text.as_bytes().get(self.at..)?;
        let inner = rest.strip_prefix(b"\"")?;
        let word = words
            .iter()
            .find(|w| inner.starts_with(w.as_bytes()) && inner.get(w.len()) == Some(&b'"'))?;
        self.at += word.len() + 2;
        Some(word)
    }

    /// A string without escapes or control characters, borrowed.
    fn string(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        let rest = &self.text.as_bytes()[self.at..];
        let len = plain_run(rest)?;
        if rest[len] != b'"' {
            return None;
        }
        // The text is a `str` and the string ends at an ASCII quote: a character boundary.
        let s = self.text.get(self.at..self.at + len)?;
        self.at += len + 1;
        Some(s)
    }

    /// A non-negative integer written as plain digits, that fits a `u64`.
    fn integer(&mut self) -> Option<u64> {
        let digits = self.text.as_bytes()[self.at..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        let text = self.text.get(self.at..self.at + digits)?;
        // JSON allows no leading zero; what follows must end the number (not `.`, `e`).
        if digits == 0 || (digits > 1 && text.starts_with('0')) {
            return None;
        }
        self.at += digits;
        if matches!(self.peek(), Some(b'.' | b'e' | b'E')) {
            return None;
        }
        text.parse().ok()
    }

    fn boolean(&mut self) -> Option<bool> {
        let rest = &self.text[self.at..];
        let (value, len) = if rest.starts_with("true") {
            (true, 4)
        } else if rest.starts_with("false") {
            (false, 5)
        } else {
            return None;
        };
        self.at += len;
        // `truex` is not a literal.
        if self.peek().is_some_and(|b| b.is_ascii_alphanumeric()) {
            return None;
        }
        Some(value)
    }

    /// Any JSON value as its text: a plain string as is, anything else through [`Self::raw`].
    fn value(&mut self) -> Option<&'a str> {
        let start = self.at;
        if self.peek() == Some(b'"') {
            if self.string().is_some() {
                return self.text.get(start..self.at);
            }
            self.at = start;
        }
        self.raw().map(RawValue::get)
    }

    /// Any JSON value, delimited and syntax-checked by serde_json.
    fn raw(&mut self) -> Option<&'a RawValue> {
        let rest = &self.text[self.at..];
        let mut values = serde_json::Deserializer::from_str(rest).into_iter::<&RawValue>();
        let value = values.next()?.ok()?;
        self.at += values.byte_offset();
        Some(value)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use proptest::strategy::ValueTree;

    use super::*;
    use crate::codec::PlainEnvelope;

    type Fields = PlainEnvelope<String>;

    /// serde reads `"data": null` as no data; both mean null.
    fn fields(env: &Envelope<'_, &str>) -> Fields {
        env.plain(|d| Some(d.to_string()).filter(|d| d != "null"))
    }

    fn serde(text: &str) -> Option<Fields> {
        serde_json::from_str::<Envelope<'_, &RawValue>>(text)
            .ok()
            .map(|e| fields(&e.map_data(RawValue::get)))
    }

    fn quick(text: &str) -> Option<Fields> {
        envelope(text).map(|e| fields(&e))
    }

    #[test]
    fn reads_the_usual_frames() {
        let f = quick(r#"{"op":"pub","topic":"a/b","data":{"x":[1,"}"]},"id":7,"retain":true}"#)
            .unwrap();
        assert_eq!(f.0[0].as_deref(), Some("pub"));
        assert_eq!(f.0[1].as_deref(), Some("a/b"));
        assert_eq!(f.1, Some(7));
        assert_eq!(f.2, Some(true));
        assert_eq!(f.3.as_deref(), Some(r#"{"x":[1,"}"]}"#));
        assert!(quick(" {\n\"op\" : \"ping\" ,\t\"extra\": [1, {\"op\": 2}] }\r\n").is_some());
        assert!(quick("{}").is_some());
    }

    #[test]
    fn leaves_anything_unusual_to_serde() {
        for text in [
            r#"{"op":"p\u0075b"}"#,           // an escape
            r#"{"\u006fp":"pub"}"#,           // an escaped key
            r#"{"op":"pub","op":"sub"}"#,     // a duplicate
            r#"{"id":-1}"#,                   // not plain digits
            r#"{"id":01}"#,                   // a leading zero
            r#"{"id":1.0}"#,                  // a fraction
            r#"{"id":18446744073709551616}"#, // over u64
            r#"{"retain":null}"#,             // null
            r#"{"retain":truex}"#,            // not a literal
            r#"{"op":"pub"} x"#,              // trailing text
            r#"{"op":"pub",}"#,               // a trailing comma
            r#"{"data":[1,}"#,                // malformed data
            "{\"op\":\"a\tb\"}",              // a raw control character
            r#"[1]"#,                         // not an object
        ] {
            assert_eq!(quick(text), None, "{text}");
        }
    }

    /// JSON whitespace, sometimes none.
    fn ws() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(vec![" ", "\n", "\t", "\r", ""]), 0..3)
            .prop_map(|v| v.concat())
    }

    /// A value as text: mostly what a frame holds, sometimes not plain or not well-formed.
    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => "\"[a-z/_0-9 -]{0,8}\"",
            3 => any::<u64>().prop_map(|n| n.to_string()),
            2 => prop::sample::select(vec!["true", "false", r#"{"a":[1,{"b":"}"}]}"#])
                .prop_map(str::to_owned),
            1 => "\"[a-z\\\\\"\u{1}é]{0,4}\"",
            1 => "-?[0-9]{1,3}(\\.[0-9])?([eE][0-9])?",
            1 => prop::sample::select(vec!["null", "[1,", "tru"]).prop_map(str::to_owned),
        ]
    }

    /// Frames of the usual keys in any order, duplicates and strangers included.
    fn frame() -> impl Strategy<Value = String> {
        let key = prop::sample::select(vec![
            "op", "topic", "reply", "name", "kind", "id", "retain", "data", "data", "topic",
            "other", "o\\u0070",
        ]);
        let field = (ws(), key, ws(), ws(), value(), ws())
            .prop_map(|(a, k, b, c, v, d)| format!("{a}\"{k}\"{b}:{c}{v}{d}"));
        let tail = prop_oneof![6 => Just(""), 1 => Just("x"), 1 => Just(",")];
        (ws(), prop::collection::vec(field, 0..5), ws(), tail)
            .prop_map(|(a, fields, b, tail)| format!("{a}{{{}}}{b}{tail}", fields.join(",")))
    }

    #[test]
    fn the_frames_tried_are_often_plain_enough_to_read() {
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let strategy = frame();
        let read = (0..1000)
            .filter(|_| {
                let text = strategy.new_tree(&mut runner).unwrap().current();
                quick(&text).is_some()
            })
            .count();
        assert!(read > 150, "only {read} of 1000 frames were read by hand");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        #[test]
        fn plain_run_finds_the_first_stop(
            bytes in prop::collection::vec(
                prop_oneof![4 => 0x20u8..0x7f, 1 => any::<u8>(), 1 => Just(b'"')],
                0..40,
            ),
        ) {
            let naive = bytes.iter().position(|&b| b == b'"' || b == b'\\' || b < 0x20);
            prop_assert_eq!(plain_run(&bytes), naive);
        }

        #[test]
        fn reads_what_serde_reads_or_leaves_it(text in frame()) {
            if let Some(fields) = quick(&text) {
                prop_assert_eq!(Some(fields), serde(&text), "{}", text);
            }
        }

        #[test]
        fn never_panics(text in any::<String>()) {
            let _ = envelope(&text);
        }
    }
}
