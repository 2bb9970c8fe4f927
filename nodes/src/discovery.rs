//! Zero-configuration discovery over mDNS/DNS-SD: brokers and nodes advertise themselves and
//! find one another with no address configured.
//!
//! Everything that touches mdns-sd is in this module. mdns-sd runs its own thread and hands
//! events over flume channels; they are read here with `recv_async().await`.
//!
//! ```text
//!  broker ── advertise _breadboard._tcp.local. (TXT proto, name, path, enc) ──┐
//!  node ──── advertise _bbnode._tcp.local.     (TXT proto, name, kind, broker) ┤ multicast
//!  node ──── browse _breadboard._tcp.local. ─► follow_brokers ─► watch<Option<BrokerChoice>>
//!  ls ────── browse both ─► table / --watch
//! ```
//!
//! Sharp edges of mdns-sd handled here: a service type over 15 bytes fails only through
//! `monitor()` (ours are checked by a test), instance names over 63 bytes are never sent
//! (truncated here), one browse per service type per daemon (each [`Discovery`] browses a type
//! once), `ServiceResolved` repeats as records arrive (callers upsert by full name), a node sees
//! its own advertisement, and dropping the daemon without `shutdown()` sends no goodbye
//! ([`Discovery::shutdown`], and `Drop` as a safety net).
//!
//! Creating a [`Discovery`] joins the mDNS multicast group on the selected interfaces; pass
//! `--no-mdns` to the commands to create none at all.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use mdns_sd::{DaemonEvent, IfKind, ServiceDaemon, ServiceEvent, ServiceInfo};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The service type brokers advertise.
pub const BROKER_TYPE: &str = "_breadboard._tcp.local.";
/// The service type nodes advertise.
pub const NODE_TYPE: &str = "_bbnode._tcp.local.";
/// Longest instance name mdns-sd actually sends (a DNS label).
pub const MAX_INSTANCE_BYTES: usize = 63;
/// How long a `verify` waits for an answer before the service is dropped.
pub const VERIFY_TIMEOUT: Duration = Duration::from_secs(2);

/// What can go wrong with discovery.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DiscoveryError {
    /// `--mdns-interface` named an interface or address this host does not have.
    #[error(
        "no network interface named or addressed {0:?} with an IPv4 address (see `ip -4 addr`)"
    )]
    UnknownInterface(String),
    /// `--mdns-interface` gave an IPv6 address; discovery runs over IPv4.
    #[error("{0} is an IPv6 address; --mdns-interface takes an interface name or an IPv4 address")]
    Ipv6Interface(IpAddr),
    /// The host's interfaces could not be listed.
    #[error("cannot list network interfaces: {0}")]
    Interfaces(#[source] std::io::Error),
    /// mdns-sd refused.
    #[error("mDNS: {0}")]
    Mdns(#[from] mdns_sd::Error),
}

/// The result type of this module.
pub type Result<T, E = DiscoveryError> = std::result::Result<T, E>;

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

    fn from_resolved(resolved: &mdns_sd::ResolvedService) -> Self {
        let txt: BTreeMap<String, String> = resolved
            .get_properties()
            .iter()
            .map(|p| (p.key().to_string(), p.val_str().to_string()))
            .collect();
        let mut addrs: Vec<Ipv4Addr> = resolved.get_addresses_v4().into_iter().collect();
        addrs.sort_unstable();
        let instance = resolved
            .fullname
            .strip_suffix(&resolved.ty_domain)
            .map(|s| s.trim_end_matches('.'))
            .unwrap_or(&resolved.fullname);
        let name = txt
            .get("name")
            .cloned()
            .unwrap_or_else(|| instance.to_string());
        Self {
            fullname: resolved.fullname.clone(),
            service_type: resolved.ty_domain.clone(),
            name,
            addrs,
            port: resolved.port,
            txt,
        }
    }
}

/// A change seen while browsing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// A service appeared, or its records changed (upsert by `fullname`).
    Up(Service),
    /// A service left (goodbye, expiry, or a failed verification).
    Down {
        /// Its full name.
        fullname: String,
        /// Its service type.
        service_type: String,
    },
}

/// A stream of [`Seen`] events for one service type.
pub struct Browser {
    rx: mdns_sd::Receiver<ServiceEvent>,
}

impl Browser {
    /// The next change, or `None` once the daemon is shut down.
    pub async fn next(&mut self) -> Option<Seen> {
        loop {
            match self.rx.recv_async().await.ok()? {
                ServiceEvent::ServiceResolved(resolved) if resolved.is_valid() => {
                    return Some(Seen::Up(Service::from_resolved(&resolved)))
                }
                ServiceEvent::ServiceRemoved(service_type, fullname) => {
                    return Some(Seen::Down {
                        fullname,
                        service_type,
                    })
                }
                ServiceEvent::SearchStopped(_) => return None,
                _ => {}
            }
        }
    }
}

/// What to advertise.
#[derive(Debug, Clone)]
pub struct Advert {
    /// [`BROKER_TYPE`] or [`NODE_TYPE`].
    pub service_type: &'static str,
    /// The instance name (truncated to [`MAX_INSTANCE_BYTES`]).
    pub name: String,
    /// The TCP port served (0 for a node).
    pub port: u16,
    /// TXT entries (each `key=value` must stay under 255 bytes).
    pub txt: Vec<(String, String)>,
}

/// One mDNS daemon, restricted to the chosen interfaces (IPv4 only), with what this process
/// advertises.
pub struct Discovery {
    daemon: ServiceDaemon,
    /// Full names this process registered, to unregister (goodbye) on shutdown.
    registered: Mutex<Vec<String>>,
    /// Host label for our records, unique per process (several processes on one host, and
    /// network namespaces sharing one host name, must not collide).
    host: String,
    /// Set once shut down, so `Drop` does not do it again.
    shut_down: bool,
}

/// Checks `--mdns-interface` values against the host's interfaces before any daemon exists.
fn select_interfaces(specs: &[String]) -> Result<Vec<IfKind>> {
    if specs.is_empty() {
        return Ok(Vec::new());
    }
    let interfaces = if_addrs::get_if_addrs().map_err(DiscoveryError::Interfaces)?;
    specs
        .iter()
        .map(|spec| match spec.parse::<IpAddr>() {
            Ok(ip @ IpAddr::V6(_)) => Err(DiscoveryError::Ipv6Interface(ip)),
            Ok(ip) if interfaces.iter().any(|i| i.ip() == ip) => Ok(IfKind::Addr(ip)),
            Ok(_) => Err(DiscoveryError::UnknownInterface(spec.clone())),
            Err(_)
                if interfaces
                    .iter()
                    .any(|i| i.name == *spec && i.ip().is_ipv4()) =>
            {
                Ok(IfKind::Name(spec.clone()))
            }
            Err(_) => Err(DiscoveryError::UnknownInterface(spec.clone())),
        })
        .collect()
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

/// A DNS label made of the host name and the process id.
fn host_label() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let clean: String = host
        .trim()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(40)
        .collect();
    let clean = if clean.is_empty() {
        "breadboard".into()
    } else {
        clean
    };
    format!("{clean}-{}.local.", std::process::id())
}

impl Discovery {
    /// Starts an mDNS daemon on `interfaces` (names or IPv4 addresses; empty = every
    /// interface), IPv4 only. The interfaces are checked first: one that does not exist is an
    /// error, not silence.
    ///
    /// # Errors
    /// [`DiscoveryError::UnknownInterface`] / [`DiscoveryError::Ipv6Interface`] for a bad
    /// interface, [`DiscoveryError::Mdns`] if the daemon cannot start.
    pub fn start(interfaces: &[String]) -> Result<Self> {
        let selected = select_interfaces(interfaces)?;
        let daemon = ServiceDaemon::new()?;
        if !selected.is_empty() {
            daemon.disable_interface(IfKind::All)?;
            daemon.enable_interface(selected)?;
        }
        // Addresses we hand out are IPv4; mdns-sd's IPv6 on loopback does not work anyway.
        daemon.disable_interface(IfKind::IPv6)?;
        if let Ok(monitor) = daemon.monitor() {
            // Ends by itself when the daemon shuts down and drops the channel.
            tokio::spawn(async move {
                while let Ok(event) = monitor.recv_async().await {
                    match event {
                        DaemonEvent::Error(e) => tracing::warn!(error = %e, "mDNS error"),
                        DaemonEvent::NameChange(change) => tracing::warn!(
                            original = %change.original,
                            new = %change.new_name,
                            "mDNS name conflict: renamed"
                        ),
                        _ => {}
                    }
                }
            });
        }
        Ok(Self {
            daemon,
            registered: Mutex::new(Vec::new()),
            host: host_label(),
            shut_down: false,
        })
    }

    /// Advertises a service; returns its full name.
    ///
    /// # Errors
    /// When the TXT record is invalid or the daemon is gone.
    pub fn advertise(&self, ad: &Advert) -> Result<String> {
        let name = truncate_utf8(&ad.name, MAX_INSTANCE_BYTES);
        let txt: HashMap<String, String> = ad.txt.iter().cloned().collect();
        let info = ServiceInfo::new(ad.service_type, name, &self.host, "", ad.port, txt)?
            .enable_addr_auto();
        let fullname = info.get_fullname().to_string();
        // Registering a full name again updates its records (a new TXT, say).
        self.daemon.register(info)?;
        let mut registered = self
            .registered
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if !registered.contains(&fullname) {
            registered.push(fullname.clone());
        }
        tracing::debug!(%fullname, "advertised");
        Ok(fullname)
    }

    /// Starts browsing one service type. Browse each type once per `Discovery` (a second
    /// browse of the same type replaces the first in mdns-sd).
    ///
    /// # Errors
    /// When the daemon is gone.
    pub fn browse(&self, service_type: &str) -> Result<Browser> {
        Ok(Browser {
            rx: self.daemon.browse(service_type)?,
        })
    }

    /// Asks the LAN whether `fullname` is still there; if nobody answers within
    /// [`VERIFY_TIMEOUT`], browsers get a [`Seen::Down`]. Much quicker than the 120 s TTL.
    pub fn verify(&self, fullname: &str) {
        if let Err(e) = self.daemon.verify(fullname.to_string(), VERIFY_TIMEOUT) {
            tracing::debug!(%fullname, error = %e, "mDNS verify not sent");
        }
    }

    /// Unregisters everything advertised (goodbye packets: peers see the departure in about a
    /// second) and stops the daemon.
    pub async fn shutdown(mut self) {
        self.shut_down = true;
        let names = std::mem::take(
            &mut *self
                .registered
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for fullname in names {
            if let Ok(status) = self.daemon.unregister(&fullname) {
                let _ = tokio::time::timeout(Duration::from_secs(1), status.recv_async()).await;
            }
        }
        if let Ok(status) = self.daemon.shutdown() {
            let _ = tokio::time::timeout(Duration::from_secs(1), status.recv_async()).await;
        }
    }
}

impl Drop for Discovery {
    fn drop(&mut self) {
        if !self.shut_down {
            // Without this the daemon thread lives on and no goodbye is sent.
            let _ = self.daemon.shutdown();
        }
    }
}

/// The TXT record of a broker.
pub fn broker_txt(name: &str) -> Vec<(String, String)> {
    vec![
        ("proto".into(), proto::PROTOCOL_VERSION.to_string()),
        ("name".into(), truncate_utf8(name, 200).to_string()),
        ("path".into(), "/".into()),
        ("enc".into(), "json,msgpack".into()),
    ]
}

/// The TXT record of a node.
pub fn node_txt(name: &str, kind: &str, broker: &str) -> Vec<(String, String)> {
    vec![
        ("proto".into(), proto::PROTOCOL_VERSION.to_string()),
        ("name".into(), truncate_utf8(name, 200).to_string()),
        ("kind".into(), truncate_utf8(kind, 200).to_string()),
        ("broker".into(), truncate_utf8(broker, 200).to_string()),
    ]
}

/// The broker a node should use, as discovery sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerChoice {
    /// The broker's name (TXT `name`).
    pub name: String,
    /// Its DNS-SD full name, for [`Discovery::verify`].
    pub fullname: String,
    /// Where to connect.
    pub url: String,
}

impl BrokerChoice {
    /// The broker a service offers, unless it speaks another protocol version or has no
    /// address.
    pub fn of(service: &Service) -> Option<Self> {
        if service.proto_version() != Some(proto::PROTOCOL_VERSION) {
            return None;
        }
        Some(Self {
            name: service.name.clone(),
            fullname: service.fullname.clone(),
            url: service.broker_url()?,
        })
    }
}

/// The broker to use among `known` (in the order they were resolved): the one named `wanted`
/// if given (none until it appears), else the `current` one while it stays (with its latest
/// records), else the first.
pub fn pick(
    known: &[BrokerChoice],
    current: Option<&BrokerChoice>,
    wanted: Option<&str>,
) -> Option<BrokerChoice> {
    if let Some(wanted) = wanted {
        return known.iter().find(|c| c.name == wanted).cloned();
    }
    current
        .and_then(|cur| known.iter().find(|c| c.fullname == cur.fullname))
        .or_else(|| known.first())
        .cloned()
}

/// Browses brokers and keeps `watch` set to the one to use: the one named `wanted` if given,
/// else the first resolved; when it leaves, the next one. Brokers speaking another protocol
/// version are skipped with a log line. Runs until `shutdown`.
///
/// # Errors
/// When browsing cannot start.
pub fn follow_brokers(
    discovery: &Discovery,
    wanted: Option<String>,
    shutdown: CancellationToken,
) -> Result<watch::Receiver<Option<BrokerChoice>>> {
    let mut browser = discovery.browse(BROKER_TYPE)?;
    let (tx, rx) = watch::channel(None);
    tokio::spawn(async move {
        // Insertion order decides "first resolved".
        let mut known: Vec<BrokerChoice> = Vec::new();
        let mut warned: Vec<String> = Vec::new();
        loop {
            let seen = tokio::select! {
                _ = shutdown.cancelled() => return,
                seen = browser.next() => match seen { Some(s) => s, None => return },
            };
            match seen {
                Seen::Up(service) => {
                    let Some(choice) = BrokerChoice::of(&service) else {
                        if !warned.contains(&service.fullname) {
                            tracing::warn!(
                                broker = %service.name,
                                proto = service.get("proto").unwrap_or("none"),
                                ours = proto::PROTOCOL_VERSION,
                                "skipping a broker that speaks another protocol version"
                            );
                            warned.push(service.fullname.clone());
                        }
                        continue;
                    };
                    match known.iter_mut().find(|c| c.fullname == choice.fullname) {
                        Some(existing) => *existing = choice,
                        None => known.push(choice),
                    }
                }
                Seen::Down { fullname, .. } => known.retain(|c| c.fullname != fullname),
            }
            let current: Option<BrokerChoice> = tx.borrow().clone();
            let next = pick(&known, current.as_ref(), wanted.as_deref());
            if next != current {
                match &next {
                    Some(c) => tracing::info!(broker = %c.name, url = %c.url, "broker found"),
                    None => tracing::info!("no broker on the LAN"),
                }
                tx.send_replace(next);
            }
        }
    });
    Ok(rx)
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
    fn unknown_interfaces_are_refused_before_any_daemon() {
        assert!(matches!(
            select_interfaces(&["no-such-if0".into()]),
            Err(DiscoveryError::UnknownInterface(_))
        ));
        assert!(matches!(
            select_interfaces(&["192.0.2.123".into()]),
            Err(DiscoveryError::UnknownInterface(_))
        ));
        assert!(matches!(
            select_interfaces(&["::1".into()]),
            Err(DiscoveryError::Ipv6Interface(_))
        ));
        assert!(select_interfaces(&["127.0.0.1".into()]).is_ok());
        assert!(select_interfaces(&[]).unwrap().is_empty());
    }

    fn broker(name: &str, proto: &str) -> Service {
        let mut txt: BTreeMap<String, String> = broker_txt(name).into_iter().collect();
        txt.insert("proto".into(), proto.into());
        Service {
            fullname: format!("{name}.{BROKER_TYPE}"),
            service_type: BROKER_TYPE.into(),
            name: name.into(),
            addrs: vec![Ipv4Addr::new(10, 0, 0, 1)],
            port: 8765,
            txt,
        }
    }

    #[test]
    fn brokers_of_another_protocol_version_are_skipped() {
        let ours = proto::PROTOCOL_VERSION.to_string();
        assert!(BrokerChoice::of(&broker("a", &ours)).is_some());
        assert!(BrokerChoice::of(&broker("b", "999")).is_none());
        assert!(BrokerChoice::of(&broker("c", "")).is_none());
    }

    #[test]
    fn the_current_broker_stays_until_it_leaves() {
        let ours = proto::PROTOCOL_VERSION.to_string();
        let a = BrokerChoice::of(&broker("a", &ours)).unwrap();
        let b = BrokerChoice::of(&broker("b", &ours)).unwrap();
        let known = vec![a.clone(), b.clone()];
        assert_eq!(pick(&known, None, None), Some(a.clone()));
        assert_eq!(pick(&known, Some(&b), None), Some(b.clone()));
        // b left: back to the first one still there.
        assert_eq!(pick(&known[..1], Some(&b), None), Some(a.clone()));
        assert_eq!(pick(&[], Some(&a), None), None);
        // --broker-name waits for its broker, whatever else is there.
        assert_eq!(pick(&known, Some(&a), Some("b")), Some(b));
        assert_eq!(pick(&known[..1], None, Some("b")), None);
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
