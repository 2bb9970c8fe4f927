//! JSON, in WebSocket text frames: the public contract (see `PROTOCOL.md`).
//!
//! Decoding a client frame: the usual frame, such as
//! `{"op":"pub","topic":"clock/tick","data":{"n":1}}`, is read by a quick reader ([`envelope`])
//! in one pass without serde's generic machinery (which costs several times more on frames this
//! small); anything else by serde_json, the fallback, which decides and words every error.
//!
//! The quick reader reads only the plain case: keys and strings without escapes or control
//! characters, an `id` of plain digits, `retain` as `true` or `false`, each field at most once.
//! Anything else (and anything malformed) gives `None`, and the frame goes through serde. So it
//! can only ever be faster, never different: a property test holds its envelopes to serde's.
//! `data` and unknown fields are delimited by serde_json itself (a `RawValue`), so the syntax of
//! a value is never judged here, except for the one kind whose syntax is trivial: a string
//! without escapes or control characters, taken with its quotes.
//!
//! A `pub`'s `data` is kept as the text it arrived as when parsing it could not have failed
//! ([`passes_as_is`]), so the broker writes that text into the `msg` for JSON subscribers
//! ([`write_msg`]) instead of decoding it into a `Value` and encoding it again. Otherwise the
//! frame is decoded the ordinary way, so what is accepted and refused, and with which error, is
//! the same either way.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::envelope::{self, set, validate, Envelope};
use crate::data::{AsData, Data, RawJson};
use crate::error::FrameError;
use crate::frame::{ClientFrame, Message, ServerFrame};

/// Decodes a client frame from bytes that should be JSON text.
pub(crate) fn decode(bytes: &[u8]) -> Result<ClientFrame<'_>, FrameError> {
    // Text read as `str` is not checked for UTF-8 string by string; one check of the whole
    // frame costs less.
    match std::str::from_utf8(bytes).ok().and_then(decode_as_sent) {
        Some(decoded) => decoded,
        None => decode_value(bytes),
    }
}

/// [`decode`] for a frame already known to be UTF-8 (a WebSocket text frame).
pub(crate) fn decode_text(text: &str) -> Result<ClientFrame<'_>, FrameError> {
    decode_as_sent(text).unwrap_or_else(|| decode_value(text.as_bytes()))
}

/// The path that keeps `data` as sent: `None` for anything it does not take so (a malformed
/// frame, data that might not parse), which the ordinary path then decides and words the error
/// for.
fn decode_as_sent(text: &str) -> Option<Result<ClientFrame<'_>, FrameError>> {
    if !is_object(text.as_bytes()) {
        return None;
    }
    // The usual frame is read by hand; anything unusual by serde.
    let env = match envelope(text) {
        Some(env) => env,
        None => serde_json::from_str::<Envelope<'_, &RawValue>>(text)
            .ok()?
            .map_data(RawValue::get),
    };
    if !env.data.is_none_or(passes_as_is) {
        return None;
    }
    Some(validate(env, |data| {
        data.map_or(Data::JSON_NULL, |text| {
            Data::json_unchecked(RawJson::new_unchecked(text))
        })
    }))
}

/// The ordinary path, through serde_json and a [`Value`]: the fallback, and the reference the
/// other path is held to.
pub(crate) fn decode_value(bytes: &[u8]) -> Result<ClientFrame<'_>, FrameError> {
    envelope::decode_value::<Json>(bytes)
}

/// serde_json, as the ordinary path reads with it.
struct Json;

impl envelope::Serde for Json {
    fn is_object(bytes: &[u8]) -> bool {
        is_object(bytes)
    }

    fn read<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, String> {
        serde_json::from_slice(bytes).map_err(|e| format!("invalid JSON: {e}"))
    }
}

/// Whether the text is an object, judging by its first byte that is not whitespace.
fn is_object(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b'{')
}

/// Encodes any frame through serde_json.
pub(crate) fn to_string<T: Serialize + ?Sized>(value: &T) -> String {
    // It cannot fail on these types: every map key (struct fields, `Value` objects) is a string.
    serde_json::to_string(value).expect("JSON encoding of a frame cannot fail")
}

/// Encodes a server frame: a `msg` carrying text a JSON publisher sent the quick way
/// ([`write_msg`]), anything else through serde.
pub(crate) fn encode_server<D: AsData>(frame: &ServerFrame<'_, D>) -> String {
    if let ServerFrame::Msg(msg) = frame {
        if let Some(text) = write_msg(msg) {
            return text;
        }
    }
    to_string(frame)
}

/// A `msg` whose `data` is text a JSON publisher sent and whose strings need no escaping,
/// written piece by piece into a string of exactly its length (which then becomes a frame
/// without a copy); `None` for any other. The same bytes as serde writes (a property test holds
/// them to it).
fn write_msg<D: AsData>(msg: &Message<'_, D>) -> Option<String> {
    // serde_json escapes exactly these; a string without them is written as is, in quotes.
    let plain = |s: &str| !s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\');
    let data = msg.data.as_data().as_json()?;
    let topic = msg.topic.as_str();
    let from = msg.from.as_deref();
    let reply = msg.reply.as_ref().map(|r| r.as_str());
    if ![Some(topic), from, reply].into_iter().flatten().all(plain) {
        return None;
    }
    let retained = if msg.retained {
        r#","retained":true}"#
    } else {
        r#","retained":false}"#
    };
    let optional = |name: &str, value: Option<&str>| value.map_or(0, |v| name.len() + v.len() + 1);
    let len = r#"{"op":"msg","topic":"","data":"#.len()
        + topic.len()
        + data.len()
        + optional(r#","from":""#, from)
        + optional(r#","reply":""#, reply)
        + retained.len();
    let mut out = String::with_capacity(len);
    for piece in [r#"{"op":"msg","topic":""#, topic, r#"","data":"#, data] {
        out.push_str(piece);
    }
    for (name, value) in [(r#","from":""#, from), (r#","reply":""#, reply)] {
        if let Some(value) = value {
            out.push_str(name);
            out.push_str(value);
            out.push('"');
        }
    }
    out.push_str(retained);
    debug_assert_eq!(out.len(), len);
    Some(out)
}

/// Whether JSON text that serde_json accepted as a raw value is sure to parse into a [`Value`]
/// too. Reading a raw value checks the syntax but, unlike parsing, not `\u` escapes (lone
/// surrogates), numbers (an exponent or a long mantissa can overflow an `f64`) or nesting depth
/// (limited to 128), so text with any of those is not passed as is. One pass over the bytes, no
/// allocation: far cheaper than the parse it saves.
fn passes_as_is(text: &str) -> bool {
    /// A number longer than this (digits, sign, point) might not fit an `f64`.
    const MAX_NUMBER: usize = 64;
    /// Deeper than this is left to the parser and its limit.
    const MAX_DEPTH: usize = 64;
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                // The syntax is already checked: every string ends, every escape is complete.
                loop {
                    let Some(at) = memchr::memchr2(b'"', b'\\', &bytes[i + 1..]) else {
                        return false;
                    };
                    i += 1 + at;
                    if bytes[i] == b'"' {
                        break;
                    }
                    if bytes[i + 1] == b'u' {
                        return false;
                    }
                    i += 1;
                }
            }
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return false;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i + 1 < bytes.len()
                    && matches!(bytes[i + 1], b'-' | b'+' | b'.' | b'0'..=b'9' | b'e' | b'E')
                {
                    i += 1;
                    if matches!(bytes[i], b'e' | b'E') {
                        return false;
                    }
                }
                if i + 1 - start > MAX_NUMBER {
                    return false;
                }
            }
            _ => {}
        }
        i += 1;
    }
    true
}

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
                "token" => set(&mut env.token, Cow::Borrowed(r.string()?))?,
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
const KEYS: [&str; 9] = [
    "op", "topic", "data", "id", "retain", "reply", "name", "kind", "token",
];
/// The ops, most frequent first.
const OPS: [&str; 5] = ["pub", "sub", "ping", "unsub", "hello"];

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

    use super::super::envelope::PlainEnvelope;
    use super::*;

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
    fn passes_as_is_spots_what_might_not_parse() {
        for ok in [
            "1",
            "-0",
            "0.1",
            "[true,false,null]",
            r#"{"e":"E \" 1e9"}"#,
            r#""\\u""#,
        ] {
            assert!(passes_as_is(ok), "{ok}");
        }
        let long = "1".repeat(65);
        let deep = "[".repeat(65);
        for not in ["1e5", "-2E-3", r#""\u0041""#, &long, &deep] {
            assert!(!passes_as_is(not), "{not}");
        }
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
            "op", "topic", "reply", "name", "kind", "token", "id", "retain", "data", "data",
            "topic", "other", "o\\u0070",
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
