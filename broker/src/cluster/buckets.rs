//! The cluster's JetStream key-value buckets: opened, or made the first time.

use async_nats::jetstream::kv::Store;
use async_nats::jetstream::stream::{Config as StreamConfig, DiscardPolicy};
use async_nats::Client;

/// The bucket `bb_<cluster>_<what>` (the cluster name's other bytes written `_XX`).
pub(super) fn name(cluster: &str, what: &str) -> String {
    let mut out = String::from("bb_");
    for b in cluster.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("_{b:02X}"));
        }
    }
    out.push('_');
    out.push_str(what);
    out
}

/// Opens `bucket`, making it if it does not exist yet.
///
/// Made as the NATS clients make a key-value bucket's stream, but directly: async-nats's
/// `create_key_value` first reads the account's limits in a form servers before 2.10 (such as
/// Debian's 2.9) do not send. Three replicas where the cluster has the servers (a bucket that
/// outlives one of them), else one.
pub(super) async fn open(
    client: &Client,
    bucket: &str,
    description: &str,
) -> Result<Store, async_nats::Error> {
    let js = async_nats::jetstream::new(client.clone());
    if let Ok(store) = js.get_key_value(bucket).await {
        return Ok(store);
    }
    for replicas in [3, 1] {
        let config = StreamConfig {
            name: format!("KV_{bucket}"),
            description: Some(description.to_string()),
            subjects: vec![format!("$KV.{bucket}.>")],
            max_messages_per_subject: 1,
            allow_rollup: true,
            deny_delete: true,
            deny_purge: false,
            allow_direct: true,
            discard: DiscardPolicy::New,
            num_replicas: replicas,
            ..Default::default()
        };
        match js.create_stream(config).await {
            Ok(_) => break,
            Err(e) if replicas > 1 => {
                tracing::debug!(%bucket, error = %e, "cluster: no room for 3 replicas, trying 1");
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(js.get_key_value(bucket).await?)
}

/// A key for `text`: every byte outside `[A-Za-z0-9_-/]` written `=XX`.
pub(super) fn key(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'/') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("={b:02X}"));
        }
    }
    out
}

/// The text of a key, if it is one [`key`] makes.
pub(super) fn unkey(key: &str) -> Option<String> {
    let bytes = key.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'=' {
            out.push(u8::from_str_radix(key.get(i + 1..i + 3)?, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_reversible_and_valid_for_kv() {
        for t in ["pin/p1/state", "$SYS/nodes/a.b", "a b/é/=/~"] {
            let k = key(t);
            assert!(
                k.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_-/=".contains(&b)),
                "{k}"
            );
            assert_eq!(unkey(&k).as_deref(), Some(t));
        }
        assert_eq!(key("$SYS/nodes/a.b"), "=24SYS/nodes/a=2Eb");
        assert!(unkey("a=G1").is_none());
        assert_eq!(name("breadboard", "retained"), "bb_breadboard_retained");
        assert_eq!(name("my.site", "names"), "bb_my_2Esite_names");
    }
}
