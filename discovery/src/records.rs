//! What breadboard puts on the LAN: the two service types, the TXT records of brokers and
//! nodes, a service as a browser sees it, and the size limits mDNS imposes on them.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

/// The service type brokers advertise.
pub const BROKER_TYPE: &str = "_breadboard._tcp.local.";
/// The service type nodes advertise.
pub const NODE_TYPE: &str = "_bbnode._tcp.local.";
/// The service type of a node standing in a peer-mode election (no broker on the LAN).
pub const PEER_TYPE: &str = "_bbpeer._tcp.local.";
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

    /// For a broker: the WebSocket URL of its first address, `wss://` when it serves TLS.
    pub fn broker_url(&self) -> Option<String> {
        self.broker_urls().next()
    }

    /// For a broker: its WebSocket URL at each of its addresses, in their order.
    pub fn broker_urls(&self) -> impl Iterator<Item = String> + '_ {
        let path = self.get("path").unwrap_or("/");
        let scheme = if self.tls() { "wss" } else { "ws" };
        self.addrs
            .iter()
            .map(move |addr| format!("{scheme}://{addr}:{}{path}", self.port))
    }

    /// For a broker: whether it serves TLS (TXT `tls=1`).
    pub fn tls(&self) -> bool {
        self.get("tls") == Some("1")
    }

    /// For a broker serving TLS: the SHA-256 of its certificate (TXT `fp`, 64 hex digits), for
    /// a client to pin. `None` without TLS, or when the value is not a fingerprint.
    pub fn fingerprint(&self) -> Option<[u8; 32]> {
        if !self.tls() {
            return None;
        }
        decode_fingerprint(self.get("fp")?)
    }

    /// For a broker hosted by a node in peer mode (TXT `role=peer`): its election rank. `None`
    /// for a dedicated broker (`role=broker`, or no role: brokers before peer mode).
    pub fn peer_rank(&self) -> Option<Rank> {
        if self.get("role") != Some("peer") {
            return None;
        }
        // A peer broker without a valid rank ranks lowest: it still yields to any other.
        Some(Rank::of(self).unwrap_or(Rank {
            priority: 0,
            tiebreak: 0,
        }))
    }

    /// For a broker: whether it asks for credentials (TXT `auth=1`).
    pub fn auth(&self) -> bool {
        self.get("auth") == Some("1")
    }
}

/// What a broker tells the LAN of its security, for its TXT record ([`broker_txt`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BrokerSecurity {
    /// With TLS on, the SHA-256 of its leaf certificate's DER, as hex (a `sha256:` prefix and
    /// colons are accepted and dropped); `None`: no TLS.
    pub tls_fingerprint: Option<String>,
    /// Whether an auth file is in force (clients need credentials to do anything much).
    pub auth: bool,
}

/// The TXT record of a broker: `proto`, `name`, `path`, `enc`, and with TLS `tls=1` and
/// `fp=<64 hex>`, with an auth file `auth=1`.
pub fn broker_txt(name: &str, security: &BrokerSecurity) -> Vec<(String, String)> {
    let mut txt = vec![
        ("proto".into(), proto::PROTOCOL_VERSION.to_string()),
        ("name".into(), txt_value(name)),
        ("path".into(), "/".into()),
        ("enc".into(), "json,msgpack".into()),
        ("role".into(), "broker".into()),
    ];
    if let Some(fp) = &security.tls_fingerprint {
        txt.push(("tls".into(), "1".into()));
        let hex: String = fp
            .strip_prefix("sha256:")
            .unwrap_or(fp)
            .chars()
            .filter(|c| *c != ':')
            .collect();
        txt.push(("fp".into(), txt_value(&hex.to_ascii_lowercase())));
    }
    if security.auth {
        txt.push(("auth".into(), "1".into()));
    }
    txt
}

/// A candidate's standing in a peer-mode election: the higher wins, priority first
/// (`--peer-priority`), then the tie-breaker (random, drawn once per process). Every node
/// ranks the same records the same way, so they agree on the winner with no coordinator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rank {
    /// Higher wins.
    pub priority: u8,
    /// Decides between equal priorities.
    pub tiebreak: u64,
}

impl Rank {
    /// The TXT entries that carry it: `prio` (decimal) and `tb` (16 hex digits).
    fn txt(&self) -> [(String, String); 2] {
        [
            ("prio".into(), self.priority.to_string()),
            ("tb".into(), format!("{:016x}", self.tiebreak)),
        ]
    }

    /// The rank a record carries, if it carries a valid one.
    pub fn of(service: &Service) -> Option<Rank> {
        let priority = service.get("prio")?.parse().ok()?;
        let tb = service.get("tb")?;
        if tb.len() != 16 {
            return None;
        }
        let tiebreak = u64::from_str_radix(tb, 16).ok()?;
        Some(Rank { priority, tiebreak })
    }
}

/// The TXT record of a candidate in a peer-mode election ([`PEER_TYPE`]): `proto`, `name`
/// (the node's), `prio`, `tb`.
pub fn candidate_txt(node: &str, rank: Rank) -> Vec<(String, String)> {
    let mut txt = vec![
        ("proto".into(), proto::PROTOCOL_VERSION.to_string()),
        ("name".into(), txt_value(node)),
    ];
    txt.extend(rank.txt());
    txt
}

/// The TXT record of a broker a node hosts in peer mode: a broker's ([`broker_txt`]) with
/// `role=peer`, `host` (the hosting node's name) and its election rank, by which two peer
/// brokers that meet settle on one.
pub fn peer_broker_txt(
    name: &str,
    security: &BrokerSecurity,
    host: &str,
    rank: Rank,
) -> Vec<(String, String)> {
    let mut txt: Vec<(String, String)> = broker_txt(name, security)
        .into_iter()
        .filter(|(k, _)| k != "role")
        .collect();
    txt.push(("role".into(), "peer".into()));
    txt.push(("host".into(), txt_value(host)));
    txt.extend(rank.txt());
    txt
}

/// Reads 64 hex digits (either case) as 32 bytes.
fn decode_fingerprint(hex: &str) -> Option<[u8; 32]> {
    let digits = hex.as_bytes();
    if digits.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        let pair = std::str::from_utf8(pair).ok()?;
        *byte = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(out)
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
        for ty in [BROKER_TYPE, NODE_TYPE, PEER_TYPE] {
            let name = ty.strip_suffix("._tcp.local.").unwrap();
            assert!(name.starts_with('_') && name.len() <= 16, "{ty}");
        }
    }

    fn service_with(service_type: &str, txt: Vec<(String, String)>) -> Service {
        Service {
            fullname: format!("x.{service_type}"),
            service_type: service_type.into(),
            name: "x".into(),
            addrs: vec![Ipv4Addr::new(10, 0, 0, 1)],
            port: 1,
            txt: txt.into_iter().collect(),
        }
    }

    #[test]
    fn ranks_travel_in_txt_and_order_priority_first() {
        let rank = Rank {
            priority: 7,
            tiebreak: u64::MAX - 1,
        };
        let candidate = service_with(PEER_TYPE, candidate_txt("pin-1", rank));
        assert_eq!(Rank::of(&candidate), Some(rank));
        assert_eq!(candidate.get("tb"), Some("fffffffffffffffe"));
        let host = service_with(
            BROKER_TYPE,
            peer_broker_txt("pin-1", &BrokerSecurity::default(), "pin-1", rank),
        );
        assert_eq!(host.peer_rank(), Some(rank));
        assert_eq!(host.get("role"), Some("peer"));
        assert_eq!(host.get("host"), Some("pin-1"));
        // A dedicated broker, and one from before peer mode (no role), are no peers.
        let dedicated = service_with(BROKER_TYPE, broker_txt("b", &BrokerSecurity::default()));
        assert_eq!(dedicated.get("role"), Some("broker"));
        assert_eq!(dedicated.peer_rank(), None);
        assert_eq!(service_with(BROKER_TYPE, vec![]).peer_rank(), None);
        // Bad ranks are no ranks; a peer broker with one still is a peer, ranked lowest.
        let bad = vec![("prio".into(), "300".into()), ("tb".into(), "zz".into())];
        assert_eq!(Rank::of(&service_with(PEER_TYPE, bad.clone())), None);
        let mut peer_bad = bad;
        peer_bad.push(("role".into(), "peer".into()));
        assert_eq!(
            service_with(BROKER_TYPE, peer_bad).peer_rank(),
            Some(Rank {
                priority: 0,
                tiebreak: 0
            })
        );
        // Priority first, then the tie-breaker.
        let low_prio = Rank {
            priority: 6,
            tiebreak: u64::MAX,
        };
        assert!(rank > low_prio);
        assert!(
            Rank {
                priority: 7,
                tiebreak: u64::MAX
            } > rank
        );
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
            txt: broker_txt("b", &BrokerSecurity::default())
                .into_iter()
                .collect(),
        };
        assert_eq!(s.broker_url().as_deref(), Some("ws://10.0.0.2:8765/"));
        assert_eq!(s.proto_version(), Some(proto::PROTOCOL_VERSION));
        assert!(!s.tls() && !s.auth());
        assert_eq!(s.fingerprint(), None);
    }

    fn broker_with(security: &BrokerSecurity) -> Service {
        Service {
            fullname: "b._breadboard._tcp.local.".into(),
            service_type: BROKER_TYPE.into(),
            name: "b".into(),
            addrs: vec![Ipv4Addr::new(10, 0, 0, 2)],
            port: 8765,
            txt: broker_txt("b", security).into_iter().collect(),
        }
    }

    #[test]
    fn an_open_broker_says_nothing_of_tls_or_auth() {
        let txt = broker_txt("b", &BrokerSecurity::default());
        assert!(txt
            .iter()
            .all(|(k, _)| !["tls", "fp", "auth"].contains(&k.as_str())));
    }

    #[test]
    fn a_tls_broker_advertises_wss_and_its_fingerprint() {
        let hex = "ab".repeat(32);
        let s = broker_with(&BrokerSecurity {
            tls_fingerprint: Some(format!("sha256:{}", "AB:".repeat(31) + "AB")),
            auth: true,
        });
        assert_eq!(s.get("tls"), Some("1"));
        assert_eq!(s.get("fp"), Some(hex.as_str()));
        assert_eq!(s.get("auth"), Some("1"));
        assert_eq!(s.broker_url().as_deref(), Some("wss://10.0.0.2:8765/"));
        assert_eq!(s.fingerprint(), Some([0xab; 32]));
        assert!(s.tls() && s.auth());
    }

    #[test]
    fn a_bad_fingerprint_is_no_fingerprint() {
        let mut s = broker_with(&BrokerSecurity {
            tls_fingerprint: Some("00".repeat(32)),
            auth: false,
        });
        assert_eq!(s.fingerprint(), Some([0; 32]));
        for bad in ["", "00", &"zz".repeat(32), &"0".repeat(65), &"é".repeat(32)] {
            s.txt.insert("fp".into(), bad.to_string());
            assert_eq!(s.fingerprint(), None, "{bad}");
        }
        // A fingerprint without tls=1 is not one to pin.
        s.txt.insert("fp".into(), "00".repeat(32));
        s.txt.remove("tls");
        assert_eq!(s.fingerprint(), None);
        assert_eq!(s.broker_url().as_deref(), Some("ws://10.0.0.2:8765/"));
    }
}
