//! What breadboard puts on the LAN: the two service types, the TXT records of brokers and
//! nodes, a service as a browser sees it, and the size limits mDNS imposes on them.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

/// The service type brokers advertise.
pub const BROKER_TYPE: &str = "_breadboard._tcp.local.";
/// The service type nodes advertise.
pub const NODE_TYPE: &str = "_bbnode._tcp.local.";
/// Longest instance name mdns-sd actually sends (a DNS label).
pub const MAX_INSTANCE_BYTES: usize = 63;
/// Longest value we put in a TXT entry (each `key=value` must stay under 255 bytes).
const MAX_TXT_VALUE_BYTES: usize = 200;

/// A service seen on the LAN, with its TXT record decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// The DNS-SD full name, unique on the LAN: `pin-1._bbnode._tcp.local.`.
    pub fullname: String,
    /// The service type, [`BROKER_TYPE`] or [`NODE_TYPE`].
    pub service_type: String,
    /// The name it goes by (TXT `name`, else the instance label).
    pub name: String,
    /// Its IPv4 addresses, sorted.
    pub addrs: Vec<Ipv4Addr>,
    /// Its port (0 for nodes, which serve nothing).
    pub port: u16,
    /// Every TXT key and value.
    pub txt: BTreeMap<String, String>,
}

impl Service {
    /// A TXT value.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.txt.get(key).map(String::as_str)
    }

    /// The protocol version it announces (TXT `proto`).
    pub fn proto_version(&self) -> Option<u32> {
        self.get("proto").and_then(|v| v.parse().ok())
    }

    /// For a broker: the WebSocket URL of its first address.
    pub fn broker_url(&self) -> Option<String> {
        let addr = self.addrs.first()?;
        let path = self.get("path").unwrap_or("/");
        Some(format!("ws://{addr}:{}{path}", self.port))
    }
}

/// The TXT record of a broker.
pub fn broker_txt(name: &str) -> Vec<(String, String)> {
    vec![
        ("proto".into(), proto::PROTOCOL_VERSION.to_string()),
        ("name".into(), txt_value(name)),
        ("path".into(), "/".into()),
        ("enc".into(), "json,msgpack".into()),
    ]
}

/// The TXT record of a node.
pub fn node_txt(name: &str, kind: &str, broker: &str) -> Vec<(String, String)> {
    vec![
        ("proto".into(), proto::PROTOCOL_VERSION.to_string()),
        ("name".into(), txt_value(name)),
        ("kind".into(), txt_value(kind)),
        ("broker".into(), txt_value(broker)),
    ]
}

/// A TXT value cut to fit its entry.
fn txt_value(value: &str) -> String {
    truncate_utf8(value, MAX_TXT_VALUE_BYTES).to_string()
}

/// Cuts `s` to at most `max` bytes on a character boundary.
pub fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_types_fit_mdns_limits() {
        // mdns-sd rejects a service name over 15 bytes only through `monitor()`.
        for ty in [BROKER_TYPE, NODE_TYPE] {
            let name = ty.strip_suffix("._tcp.local.").unwrap();
            assert!(name.starts_with('_') && name.len() <= 16, "{ty}");
        }
    }

    #[test]
    fn truncation_keeps_utf8_whole() {
        assert_eq!(truncate_utf8("abc", 63), "abc");
        let long = "é".repeat(40);
        let cut = truncate_utf8(&long, MAX_INSTANCE_BYTES);
        assert!(cut.len() <= MAX_INSTANCE_BYTES);
        assert_eq!(cut.chars().count(), 31);
    }

    #[test]
    fn broker_url_uses_path_and_first_address() {
        let s = Service {
            fullname: "b._breadboard._tcp.local.".into(),
            service_type: BROKER_TYPE.into(),
            name: "b".into(),
            addrs: vec![Ipv4Addr::new(10, 0, 0, 2), Ipv4Addr::new(10, 0, 0, 3)],
            port: 8765,
            txt: broker_txt("b").into_iter().collect(),
        };
        assert_eq!(s.broker_url().as_deref(), Some("ws://10.0.0.2:8765/"));
        assert_eq!(s.proto_version(), Some(proto::PROTOCOL_VERSION));
    }
}
