//! Which broker to use: [`BrokerChoice`] and [`pick`] decide, [`follow_brokers`] keeps the
//! decision up to date as brokers come and go.

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::browse::Seen;
use crate::daemon::Discovery;
use crate::error::Result;
use crate::records::{Rank, Service, BROKER_TYPE};

/// The broker a node should use, as discovery sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerChoice {
    /// The broker's name (TXT `name`).
    pub name: String,
    /// Its DNS-SD full name, for [`Discovery::verify`].
    pub fullname: String,
    /// Where to connect (`wss://` when it serves TLS).
    pub url: String,
    /// The SHA-256 of its TLS certificate, as advertised (TXT `fp`): what a client pins when
    /// it was told no trust of its own.
    pub fingerprint: Option<[u8; 32]>,
    /// For a broker a node hosts in peer mode (TXT `role=peer`): its election rank. `None`: a
    /// dedicated broker, which every node prefers to any peer.
    pub peer: Option<Rank>,
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
            fingerprint: service.fingerprint(),
            peer: service.peer_rank(),
        })
    }

    /// The broker a service offers, as [`BrokerChoice::of`], for a broker already known as
    /// `before`: at the address it was known by while it still has that one. A broker's record
    /// changes as its addresses resolve one by one (its own host's loopback first, for a node
    /// beside it); a node that followed every such change would reconnect for nothing, and
    /// miss what was sent to it meanwhile.
    pub fn refreshed(before: &BrokerChoice, service: &Service) -> Option<Self> {
        let mut choice = Self::of(service)?;
        if service.broker_urls().any(|url| url == before.url) {
            choice.url.clone_from(&before.url);
        }
        Some(choice)
    }
}

/// Which broker a node wants, when it finds them over mDNS.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Wanted {
    /// The first one found, kept while it stays (`breadboard node` without a choice).
    #[default]
    Any,
    /// Only the broker with this name: none until it appears (`--broker-name`).
    Only(String),
    /// The broker with this name whenever it is there, else any other (`--prefer-broker`): the
    /// brokers of a cluster are one topic space, so a node whose own broker is gone carries
    /// on through another, and comes back when it returns.
    Prefer(String),
}

impl Wanted {
    /// `--broker-name` or `--prefer-broker` (at most one is given), or any broker.
    pub fn from_flags(only: Option<String>, prefer: Option<String>) -> Self {
        match (only, prefer) {
            (Some(name), _) => Self::Only(name),
            (None, Some(name)) => Self::Prefer(name),
            (None, None) => Self::Any,
        }
    }
}

/// The broker to use among `known` (in the order they were resolved), as `wanted` says: the one
/// named (only, or preferred while it is there); else a dedicated broker, the `current` one
/// while it stays (with its latest records), else the first; else, with only peer brokers
/// (nodes hosting one in peer mode), the best-ranked, which every node agrees on.
pub fn pick(
    known: &[BrokerChoice],
    current: Option<&BrokerChoice>,
    wanted: &Wanted,
) -> Option<BrokerChoice> {
    let named = |name: &str| known.iter().find(|c| c.name == name).cloned();
    match wanted {
        Wanted::Only(name) => return named(name),
        Wanted::Prefer(name) => {
            if let Some(preferred) = named(name) {
                return Some(preferred);
            }
        }
        Wanted::Any => {}
    }
    let mut dedicated = known.iter().filter(|c| c.peer.is_none());
    current
        .filter(|cur| cur.peer.is_none())
        .and_then(|cur| known.iter().find(|c| c.fullname == cur.fullname))
        .or_else(|| dedicated.next())
        .or_else(|| known.iter().max_by_key(|c| c.peer))
        .cloned()
}

/// Browses brokers and keeps `watch` set to the one to use, as `wanted` says ([`pick`]): by
/// default the first resolved; when it leaves, the next one. Brokers speaking another protocol
/// version are skipped with a log line. Runs until `shutdown`.
///
/// # Errors
/// When browsing cannot start.
pub fn follow_brokers(
    discovery: &Discovery,
    wanted: Wanted,
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
                        Some(existing) => {
                            *existing =
                                BrokerChoice::refreshed(existing, &service).unwrap_or(choice);
                        }
                        None => known.push(choice),
                    }
                }
                Seen::Down { fullname, .. } => known.retain(|c| c.fullname != fullname),
            }
            let current: Option<BrokerChoice> = tx.borrow().clone();
            let next = pick(&known, current.as_ref(), &wanted);
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
    use std::collections::BTreeMap;
    use std::net::Ipv4Addr;

    use super::*;
    use crate::records::{broker_txt, BrokerSecurity};

    fn broker(name: &str, proto: &str) -> Service {
        let mut txt: BTreeMap<String, String> = broker_txt(name, &BrokerSecurity::default())
            .into_iter()
            .collect();
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
    fn a_known_broker_keeps_its_address_while_it_still_has_it() {
        let ours = proto::PROTOCOL_VERSION.to_string();
        let mut service = broker("a", &ours);
        // Its own host's node resolves it on loopback first...
        service.addrs = vec![Ipv4Addr::LOCALHOST];
        let first = BrokerChoice::of(&service).unwrap();
        assert_eq!(first.url, "ws://127.0.0.1:8765/");
        // ...then its LAN address, which sorts first.
        service.addrs = vec![Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::LOCALHOST];
        assert_eq!(
            BrokerChoice::of(&service).unwrap().url,
            "ws://10.0.0.1:8765/"
        );
        let kept = BrokerChoice::refreshed(&first, &service).unwrap();
        assert_eq!(
            kept, first,
            "no move for another address of the same broker"
        );
        // An address it no longer has is not kept.
        service.addrs = vec![Ipv4Addr::new(10, 0, 0, 1)];
        let moved = BrokerChoice::refreshed(&first, &service).unwrap();
        assert_eq!(moved.url, "ws://10.0.0.1:8765/");
        // Nor is an address of a broker whose TLS changed (the scheme is part of the URL).
        service.addrs = vec![Ipv4Addr::LOCALHOST];
        service.txt.insert("tls".into(), "1".into());
        let tls = BrokerChoice::refreshed(&first, &service).unwrap();
        assert_eq!(tls.url, "wss://127.0.0.1:8765/");
    }

    #[test]
    fn a_tls_broker_is_chosen_with_its_fingerprint() {
        let ours = proto::PROTOCOL_VERSION.to_string();
        let mut service = broker("a", &ours);
        service.txt.insert("tls".into(), "1".into());
        service.txt.insert("fp".into(), "01".repeat(32));
        let choice = BrokerChoice::of(&service).unwrap();
        assert_eq!(choice.url, "wss://10.0.0.1:8765/");
        assert_eq!(choice.fingerprint, Some([1; 32]));
        let plain = BrokerChoice::of(&broker("b", &ours)).unwrap();
        assert_eq!(plain.fingerprint, None);
    }

    #[test]
    fn the_current_broker_stays_until_it_leaves() {
        let ours = proto::PROTOCOL_VERSION.to_string();
        let a = BrokerChoice::of(&broker("a", &ours)).unwrap();
        let b = BrokerChoice::of(&broker("b", &ours)).unwrap();
        let known = vec![a.clone(), b.clone()];
        let any = Wanted::Any;
        assert_eq!(pick(&known, None, &any), Some(a.clone()));
        assert_eq!(pick(&known, Some(&b), &any), Some(b.clone()));
        // b left: back to the first one still there.
        assert_eq!(pick(&known[..1], Some(&b), &any), Some(a.clone()));
        assert_eq!(pick(&[], Some(&a), &any), None);
        // --broker-name waits for its broker, whatever else is there.
        let only_b = Wanted::Only("b".into());
        assert_eq!(pick(&known, Some(&a), &only_b), Some(b.clone()));
        assert_eq!(pick(&known[..1], None, &only_b), None);
    }

    fn peer(name: &str, priority: u8, tiebreak: u64) -> BrokerChoice {
        let ours = proto::PROTOCOL_VERSION.to_string();
        let mut choice = BrokerChoice::of(&broker(name, &ours)).unwrap();
        choice.peer = Some(Rank { priority, tiebreak });
        choice
    }

    #[test]
    fn a_dedicated_broker_wins_over_peers_and_peers_settle_on_the_best_ranked() {
        let ours = proto::PROTOCOL_VERSION.to_string();
        let dedicated = BrokerChoice::of(&broker("d", &ours)).unwrap();
        let (p1, p2, p3) = (peer("p1", 100, 9), peer("p2", 100, 10), peer("p3", 50, 99));
        let any = Wanted::Any;
        // Peers only: the same one, whatever the order they were found in or the current.
        for known in [
            vec![p1.clone(), p2.clone(), p3.clone()],
            vec![p3.clone(), p2.clone(), p1.clone()],
        ] {
            for current in [None, Some(&p1), Some(&p3)] {
                assert_eq!(pick(&known, current, &any), Some(p2.clone()));
            }
        }
        // A dedicated broker appears: everyone moves to it, and stays.
        let known = vec![p1.clone(), p2.clone(), dedicated.clone()];
        assert_eq!(pick(&known, Some(&p2), &any), Some(dedicated.clone()));
        assert_eq!(
            pick(&known, Some(&dedicated), &any),
            Some(dedicated.clone())
        );
        // The record says which it is.
        let mut record = broker("p9", &ours);
        record.txt.extend(crate::records::peer_broker_txt(
            "p9",
            &BrokerSecurity::default(),
            "pin-1",
            Rank {
                priority: 7,
                tiebreak: 3,
            },
        ));
        let choice = BrokerChoice::of(&record).unwrap();
        assert_eq!(
            choice.peer,
            Some(Rank {
                priority: 7,
                tiebreak: 3
            })
        );
        assert_eq!(BrokerChoice::of(&broker("d", &ours)).unwrap().peer, None);
    }

    #[test]
    fn a_preferred_broker_is_used_while_it_is_there_and_another_meanwhile() {
        let ours = proto::PROTOCOL_VERSION.to_string();
        let a = BrokerChoice::of(&broker("a", &ours)).unwrap();
        let b = BrokerChoice::of(&broker("b", &ours)).unwrap();
        let c = BrokerChoice::of(&broker("c", &ours)).unwrap();
        let prefer_b = Wanted::Prefer("b".into());
        let all = vec![a.clone(), b.clone(), c.clone()];
        assert_eq!(pick(&all, None, &prefer_b), Some(b.clone()));
        assert_eq!(pick(&all, Some(&c), &prefer_b), Some(b.clone()));
        // b gone: the current one stays, or the first.
        let without_b = vec![a.clone(), c.clone()];
        assert_eq!(pick(&without_b, Some(&c), &prefer_b), Some(c.clone()));
        assert_eq!(pick(&without_b, Some(&b), &prefer_b), Some(a.clone()));
        assert_eq!(pick(&[], Some(&b), &prefer_b), None);
        assert_eq!(
            Wanted::from_flags(None, Some("b".into())),
            prefer_b,
            "--prefer-broker"
        );
        assert_eq!(
            Wanted::from_flags(Some("a".into()), None),
            Wanted::Only("a".into())
        );
        assert_eq!(Wanted::from_flags(None, None), Wanted::Any);
    }
}
