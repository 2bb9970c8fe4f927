//! Watching the LAN: a [`Browser`] of one service type yields what appears and leaves
//! ([`Seen`]); [`Discovery::verify`] asks whether a service is still there.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use mdns_sd::{ResolvedService, ServiceEvent};

use crate::daemon::Discovery;
use crate::error::Result;
use crate::records::Service;

/// How long a `verify` waits for an answer before the service is dropped.
pub const VERIFY_TIMEOUT: Duration = Duration::from_secs(2);

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
                    return Some(Seen::Up(service_of(&resolved)))
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

/// The service mdns-sd resolved, with its TXT record decoded.
fn service_of(resolved: &ResolvedService) -> Service {
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
    Service {
        fullname: resolved.fullname.clone(),
        service_type: resolved.ty_domain.clone(),
        name,
        addrs,
        port: resolved.port,
        txt,
    }
}

impl Discovery {
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
}
