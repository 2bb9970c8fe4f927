//! What `ls` knows, merged from its three sources: mDNS/DNS-SD records, the broker's presence
//! (`$SYS/nodes/<name>`) and, when that broker is part of a cluster, the cluster's brokers
//! (`$SYS/brokers/<name>`).
//!
//! ```text
//!   mDNS  _bbbroker / _bbnode ─┐
//!   $SYS/nodes/<name>  ────────┼─► Registry ─► entries() ─► table / JSON
//!   $SYS/brokers/<name> ───────┘        └────► Change (what --watch prints)
//! ```
//!
//! When two sources know one thing, the broker's word wins: presence over a node's mDNS record,
//! the cluster's heartbeats over a broker's mDNS record. A process killed with SIGKILL leaves
//! its record behind for 120 s, but its socket closes at once (presence) and its heartbeats
//! stop (the cluster turns it offline within seconds).

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use discovery::{Seen, Service};
use nodes::client::tls::format_fingerprint;
use serde::Serialize;
use serde_json::Value;

/// A broker or a node, as `ls` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Entry {
    /// `broker` or `node`.
    pub role: &'static str,
    /// Its name.
    pub name: String,
    /// `broker`, or the node's kind.
    pub kind: String,
    /// Where it is: `ip:port` for a broker found over mDNS (empty for one known only through
    /// the cluster), the IP (or presence's `ip:port`) for a node.
    pub addr: String,
    /// For a node, the broker it is connected to: presence's `broker`, else the one its mDNS
    /// record names, else the broker `ls` reads presence from. Empty for a broker.
    pub broker: String,
    /// Unix milliseconds: since when a node is online or offline (presence), since when a
    /// broker of the cluster runs, else since `ls` first saw it.
    pub since_ms: u64,
    /// Whether it is there now.
    pub online: bool,
    /// Where `ls` learnt of it: `mdns`, `presence`, `cluster`, `mdns+presence` or
    /// `mdns+cluster`.
    pub via: String,
    /// Its DNS-SD full name, if advertised.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fullname: Option<String>,
    /// For a broker: whether it serves TLS (`wss://`; TXT `tls=1`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<bool>,
    /// For a broker serving TLS: the SHA-256 of its certificate it advertises (64 hex digits).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// For a broker: whether it asks for credentials (TXT `auth=1`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth: Option<bool>,
    /// For a broker of the cluster: where it takes names, `cluster` (unique cluster-wide) or
    /// `local` (its own, until it opens the cluster's names bucket).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub names: Option<String>,
    /// For a broker of the cluster: how many online nodes presence puts on it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nodes: Option<usize>,
    /// For a broker a node hosts in peer mode (kind `peer`, TXT `role=peer`): that node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

impl Entry {
    fn new(role: &'static str, name: &str, kind: &str) -> Entry {
        Entry {
            role,
            name: name.to_string(),
            kind: kind.to_string(),
            addr: String::new(),
            broker: String::new(),
            since_ms: 0,
            online: false,
            via: String::new(),
            fullname: None,
            tls: None,
            fingerprint: None,
            auth: None,
            names: None,
            nodes: None,
            host: None,
        }
    }
}

/// What presence says of a node.
#[derive(Debug, Clone, PartialEq)]
struct Presence {
    kind: String,
    online: bool,
    since_ms: u64,
    addr: String,
    /// The broker it is connected to (brokers from before clusters do not say).
    broker: Option<String>,
}

/// What the cluster says of one of its brokers (`$SYS/brokers/<name>`).
#[derive(Debug, Clone, PartialEq)]
struct ClusterBroker {
    online: bool,
    /// When its run started (unix ms).
    since_ms: u64,
    /// `cluster` or `local`.
    names: String,
}

/// Everything known, merged. Pure: fed events, it tells what changed.
#[derive(Debug, Default)]
pub struct Registry {
    /// By DNS-SD full name, with when `ls` first saw each.
    mdns: BTreeMap<String, (Service, u64)>,
    /// By node name.
    presence: BTreeMap<String, Presence>,
    /// The brokers of the cluster, by name; empty when the broker read is on its own.
    cluster: BTreeMap<String, ClusterBroker>,
    /// The broker presence is read from: the node's broker when nothing better says.
    presence_broker: String,
    /// What was last reported, by (role, name), to print only changes.
    shown: BTreeMap<(&'static str, String), Entry>,
}

/// A change to report.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Arrived, or changed.
    Up(Entry),
    /// Left.
    Down(Entry),
}

/// Now, in unix milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

impl Registry {
    /// Applies an mDNS event.
    pub fn on_mdns(&mut self, seen: Seen) -> Vec<Change> {
        match seen {
            Seen::Up(service) => {
                let first = self
                    .mdns
                    .get(&service.fullname)
                    .map(|(_, t)| *t)
                    .unwrap_or_else(now_ms);
                self.mdns.insert(service.fullname.clone(), (service, first));
            }
            Seen::Down { fullname, .. } => {
                self.mdns.remove(&fullname);
            }
        }
        self.diff()
    }

    /// Applies a presence message (`$SYS/nodes/<name>`); a value that is not an object (a
    /// cleared, forgotten name) removes the node.
    pub fn on_presence(&mut self, name: &str, data: &Value) -> Vec<Change> {
        if data.is_object() {
            let presence = Presence {
                kind: data["kind"].as_str().unwrap_or("?").to_string(),
                online: data["online"].as_bool().unwrap_or(false),
                since_ms: data["since"].as_u64().unwrap_or_else(now_ms),
                addr: data["addr"].as_str().unwrap_or("").to_string(),
                broker: data["broker"]
                    .as_str()
                    .filter(|b| !b.is_empty())
                    .map(String::from),
            };
            self.presence.insert(name.to_string(), presence);
        } else {
            self.presence.remove(name);
        }
        self.diff()
    }

    /// Applies a cluster message (`$SYS/brokers/<name>`); a value that is not an object
    /// removes the broker.
    pub fn on_cluster_broker(&mut self, name: &str, data: &Value) -> Vec<Change> {
        if data.is_object() {
            let broker = ClusterBroker {
                online: data["online"].as_bool().unwrap_or(false),
                since_ms: data["since"].as_u64().unwrap_or_else(now_ms),
                names: data["names"].as_str().unwrap_or("?").to_string(),
            };
            self.cluster.insert(name.to_string(), broker);
        } else {
            self.cluster.remove(name);
        }
        self.diff()
    }

    /// Names the broker presence comes from.
    pub fn set_presence_broker(&mut self, name: &str) {
        self.presence_broker = name.to_string();
    }

    /// The mDNS full names of nodes that presence says are offline, and of brokers that the
    /// cluster says are offline: stale records to verify.
    pub fn stale_records(&self) -> Vec<String> {
        self.mdns
            .values()
            .filter(|(s, _)| {
                if s.service_type == discovery::NODE_TYPE {
                    self.presence.get(&s.name).is_some_and(|p| !p.online)
                } else {
                    self.cluster.get(&s.name).is_some_and(|b| !b.online)
                }
            })
            .map(|(s, _)| s.fullname.clone())
            .collect()
    }

    /// Every entry, as it stands: brokers first, then nodes, each by name.
    pub fn entries(&self) -> Vec<Entry> {
        let mut out: BTreeMap<(&'static str, String), Entry> = BTreeMap::new();
        for (service, first) in self.mdns.values() {
            let entry = mdns_entry(service, *first);
            out.insert((entry.role, entry.name.clone()), entry);
        }
        for (name, p) in &self.presence {
            let entry = out.entry(("node", name.clone())).or_insert_with(|| Entry {
                addr: p.addr.clone(),
                ..Entry::new("node", name, &p.kind)
            });
            entry.via = via(entry, "presence");
            entry.online = p.online;
            entry.since_ms = p.since_ms;
            if let Some(broker) = &p.broker {
                entry.broker = broker.clone();
            } else if entry.broker.is_empty() {
                entry.broker = self.presence_broker.clone();
            }
        }
        for (name, b) in &self.cluster {
            let entry = out
                .entry(("broker", name.clone()))
                .or_insert_with(|| Entry::new("broker", name, "broker"));
            entry.via = via(entry, "cluster");
            entry.online = b.online;
            entry.since_ms = b.since_ms;
            entry.names = Some(b.names.clone());
            entry.nodes = Some(
                self.presence
                    .values()
                    .filter(|p| p.online && p.broker.as_deref() == Some(name))
                    .count(),
            );
        }
        out.into_values().collect()
    }

    /// What changed since the last call.
    fn diff(&mut self) -> Vec<Change> {
        let now: BTreeMap<_, _> = self
            .entries()
            .into_iter()
            .filter(|e| e.online)
            .map(|e| ((e.role, e.name.clone()), e))
            .collect();
        let mut changes = Vec::new();
        for (key, old) in &self.shown {
            if !now.contains_key(key) {
                changes.push(Change::Down(old.clone()));
            }
        }
        for (key, entry) in &now {
            let moved = self.shown.get(key).is_none_or(|old| {
                old.addr != entry.addr
                    || old.kind != entry.kind
                    || old.broker != entry.broker
                    || old.fingerprint != entry.fingerprint
                    || old.auth != entry.auth
                    || old.names != entry.names
            });
            if moved {
                changes.push(Change::Up(entry.clone()));
            }
        }
        self.shown = now;
        changes
    }
}

/// A broker or node as its mDNS record tells it.
fn mdns_entry(service: &Service, first: u64) -> Entry {
    let ip = service
        .addrs
        .first()
        .map(ToString::to_string)
        .unwrap_or_default();
    let broker = service.service_type == discovery::BROKER_TYPE;
    let peer = broker && service.peer_rank().is_some();
    let (role, kind) = if peer {
        ("broker", "peer")
    } else if broker {
        ("broker", "broker")
    } else {
        ("node", service.get("kind").unwrap_or("?"))
    };
    Entry {
        addr: if broker {
            format!("{ip}:{}", service.port)
        } else {
            ip
        },
        broker: if broker {
            String::new()
        } else {
            service.get("broker").unwrap_or("").into()
        },
        since_ms: first,
        online: true,
        via: "mdns".into(),
        host: service.get("host").filter(|_| peer).map(String::from),
        fullname: Some(service.fullname.clone()),
        tls: broker.then(|| service.tls()),
        fingerprint: service
            .fingerprint()
            .filter(|_| broker)
            .map(|fp| format_fingerprint(&fp)),
        auth: broker.then(|| service.auth()),
        ..Entry::new(role, &service.name, kind)
    }
}

/// `source`, or `mdns+source` when the entry also has an mDNS record.
fn via(entry: &Entry, source: &str) -> String {
    if entry.fullname.is_some() {
        format!("mdns+{source}")
    } else {
        source.to_string()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn node(name: &str) -> Service {
        Service {
            fullname: format!("{name}.{}", discovery::NODE_TYPE),
            service_type: discovery::NODE_TYPE.into(),
            name: name.into(),
            addrs: vec!["10.0.0.2".parse().unwrap()],
            port: 0,
            txt: discovery::node_txt(name, "pin", "b").into_iter().collect(),
        }
    }

    fn broker(name: &str, security: &discovery::BrokerSecurity) -> Service {
        Service {
            fullname: format!("{name}.{}", discovery::BROKER_TYPE),
            service_type: discovery::BROKER_TYPE.into(),
            name: name.into(),
            addrs: vec!["10.0.0.1".parse().unwrap()],
            port: 8765,
            txt: discovery::broker_txt(name, security).into_iter().collect(),
        }
    }

    #[test]
    fn a_peer_broker_says_which_node_hosts_it() {
        let mut r = Registry::default();
        let mut peer = broker("clock", &discovery::BrokerSecurity::default());
        let rank = discovery::Rank {
            priority: 100,
            tiebreak: 1,
        };
        peer.txt = discovery::peer_broker_txt("clock", &Default::default(), "clock", rank)
            .into_iter()
            .collect();
        r.on_mdns(Seen::Up(peer));
        r.on_mdns(Seen::Up(broker("real", &Default::default())));
        let entries = r.entries();
        let hosted = find(&entries, "broker", "clock");
        assert_eq!(
            (hosted.kind.as_str(), hosted.host.as_deref()),
            ("peer", Some("clock"))
        );
        let dedicated = find(&entries, "broker", "real");
        assert_eq!(
            (dedicated.kind.as_str(), dedicated.host.as_deref()),
            ("broker", None)
        );
    }

    fn find<'a>(entries: &'a [Entry], role: &str, name: &str) -> &'a Entry {
        entries
            .iter()
            .find(|e| e.role == role && e.name == name)
            .unwrap_or_else(|| panic!("no {role} {name} in {entries:?}"))
    }

    #[test]
    fn mdns_arrival_and_goodbye() {
        let mut r = Registry::default();
        let up = r.on_mdns(Seen::Up(node("pin-1")));
        assert!(matches!(&up[..], [Change::Up(e)] if e.name == "pin-1" && e.kind == "pin"));
        // A repeated ServiceResolved is not a new arrival.
        assert!(r.on_mdns(Seen::Up(node("pin-1"))).is_empty());
        let down = r.on_mdns(Seen::Down {
            fullname: node("pin-1").fullname,
            service_type: discovery::NODE_TYPE.into(),
        });
        assert!(matches!(&down[..], [Change::Down(e)] if e.name == "pin-1"));
    }

    #[test]
    fn presence_offline_wins_over_a_stale_mdns_record() {
        let mut r = Registry::default();
        r.on_mdns(Seen::Up(node("pin-1")));
        let online = json!({"kind":"pin","online":true,"since":1,"addr":"10.0.0.2:5000"});
        assert!(r.on_presence("pin-1", &online).is_empty());
        let offline = json!({"kind":"pin","online":false,"since":2,"addr":"10.0.0.2:5000"});
        let down = r.on_presence("pin-1", &offline);
        assert!(matches!(&down[..], [Change::Down(e)] if e.name == "pin-1"));
        assert_eq!(r.stale_records(), vec![node("pin-1").fullname]);
        assert!(!r.entries()[0].online);
    }

    #[test]
    fn brokers_show_whether_they_ask_for_tls_and_credentials() {
        let mut r = Registry::default();
        r.on_mdns(Seen::Up(broker(
            "open",
            &discovery::BrokerSecurity::default(),
        )));
        let secure = discovery::BrokerSecurity {
            tls_fingerprint: Some("ab".repeat(32)),
            auth: true,
        };
        r.on_mdns(Seen::Up(broker("secure", &secure)));
        r.on_mdns(Seen::Up(node("pin-1")));
        let entries = r.entries();
        let open = find(&entries, "broker", "open");
        assert_eq!((open.tls, open.auth), (Some(false), Some(false)));
        let secure = find(&entries, "broker", "secure");
        assert_eq!(secure.fingerprint.as_deref(), Some(&*"ab".repeat(32)));
        let pin = find(&entries, "node", "pin-1");
        assert_eq!((pin.tls, pin.auth), (None, None));
        let json = serde_json::to_value(secure).unwrap();
        assert_eq!(json["tls"], true);
        assert_eq!(json["auth"], true);
        assert!(serde_json::to_value(pin).unwrap().get("tls").is_none());
    }

    #[test]
    fn presence_alone_lists_nodes_without_mdns() {
        let mut r = Registry::default();
        r.set_presence_broker("ws://127.0.0.1:8765");
        let up = r.on_presence(
            "clock",
            &json!({"kind":"clock","online":true,"since":5,"addr":"127.0.0.1:4000"}),
        );
        assert!(
            matches!(&up[..], [Change::Up(e)] if e.via == "presence" && e.broker == "ws://127.0.0.1:8765")
        );
    }

    #[test]
    fn presence_names_the_broker_a_node_is_on_over_its_mdns_record() {
        let mut r = Registry::default();
        r.set_presence_broker("a");
        // The record says "b" (the broker the node chose when it advertised); presence says
        // where it is connected now.
        r.on_mdns(Seen::Up(node("pin-1")));
        r.on_presence(
            "pin-1",
            &json!({"kind":"pin","online":true,"since":1,"addr":"10.0.0.2:5000","broker":"c"}),
        );
        let entries = r.entries();
        let pin = find(&entries, "node", "pin-1");
        assert_eq!(
            (pin.broker.as_str(), pin.via.as_str()),
            ("c", "mdns+presence")
        );
    }

    #[test]
    fn a_cleared_presence_removes_the_node() {
        let mut r = Registry::default();
        r.on_presence("pin-1", &json!({"kind":"pin","online":false,"since":1}));
        assert_eq!(r.entries().len(), 1);
        r.on_presence("pin-1", &Value::Null);
        assert!(r.entries().is_empty());
    }

    #[test]
    fn cluster_brokers_are_listed_with_their_names_mode_and_online_nodes() {
        let mut r = Registry::default();
        r.set_presence_broker("ws://127.0.0.1:1");
        let up = r.on_cluster_broker("a", &json!({"online":true,"since":10,"names":"cluster"}));
        assert!(matches!(&up[..], [Change::Up(e)] if e.name == "a" && e.via == "cluster"));
        r.on_cluster_broker("b", &json!({"online":true,"since":20,"names":"local"}));
        for (node, broker, online) in [
            ("pin-1", "a", true),
            ("pin-2", "b", true),
            ("pin-3", "a", false),
        ] {
            r.on_presence(
                node,
                &json!({"kind":"pin","online":online,"since":1,"addr":"","broker":broker}),
            );
        }
        let entries = r.entries();
        let roles: Vec<_> = entries.iter().map(|e| (e.role, e.name.as_str())).collect();
        assert_eq!(
            roles,
            [
                ("broker", "a"),
                ("broker", "b"),
                ("node", "pin-1"),
                ("node", "pin-2"),
                ("node", "pin-3")
            ]
        );
        let a = find(&entries, "broker", "a");
        assert_eq!((a.online, a.since_ms, a.nodes), (true, 10, Some(1)));
        assert_eq!((a.names.as_deref(), a.addr.as_str()), (Some("cluster"), ""));
        let b = find(&entries, "broker", "b");
        assert_eq!((b.names.as_deref(), b.nodes), (Some("local"), Some(1)));
        assert_eq!(find(&entries, "node", "pin-2").broker, "b");
        let json = serde_json::to_value(a).unwrap();
        assert_eq!(
            (json["names"].clone(), json["nodes"].clone()),
            (json!("cluster"), json!(1))
        );
    }

    #[test]
    fn a_broker_the_cluster_buries_goes_down_and_its_mdns_record_is_verified() {
        let mut r = Registry::default();
        r.on_mdns(Seen::Up(broker("b", &discovery::BrokerSecurity::default())));
        let up = r.on_cluster_broker("b", &json!({"online":true,"since":20,"names":"cluster"}));
        // Known already through mDNS: the cluster adds its names mode, which is news.
        assert!(
            matches!(&up[..], [Change::Up(e)] if e.via == "mdns+cluster" && e.addr == "10.0.0.1:8765")
        );
        assert!(r.stale_records().is_empty());
        let down = r.on_cluster_broker("b", &json!({"online":false,"since":20,"names":"cluster"}));
        assert!(matches!(&down[..], [Change::Down(e)] if e.name == "b"));
        assert_eq!(
            r.stale_records(),
            vec![broker("b", &Default::default()).fullname]
        );
        assert!(!find(&r.entries(), "broker", "b").online);
    }

    #[test]
    fn names_turning_cluster_wide_is_reported() {
        let mut r = Registry::default();
        r.on_cluster_broker("a", &json!({"online":true,"since":10,"names":"local"}));
        let changed =
            r.on_cluster_broker("a", &json!({"online":true,"since":10,"names":"cluster"}));
        assert!(matches!(&changed[..], [Change::Up(e)] if e.names.as_deref() == Some("cluster")));
        // A node arriving changes the count, not the broker: no line for it.
        let up = r.on_presence(
            "n",
            &json!({"kind":"pin","online":true,"since":1,"broker":"a"}),
        );
        assert!(matches!(&up[..], [Change::Up(e)] if e.name == "n"));
    }
}
