//! The one mDNS daemon of a process ([`Discovery`]): started on the chosen interfaces (IPv4
//! only), shut down with goodbyes for everything it advertised.
//!
//! This is the only place a `ServiceDaemon` is created: creating one joins the mDNS group on
//! every selected interface at once.

use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use mdns_sd::{DaemonEvent, IfKind, ServiceDaemon};

use crate::error::{Error, Result};

/// One mDNS daemon, restricted to the chosen interfaces (IPv4 only), with what this process
/// advertises.
pub struct Discovery {
    pub(crate) daemon: ServiceDaemon,
    /// Full names this process registered, to unregister (goodbye) on shutdown.
    pub(crate) registered: Mutex<Vec<String>>,
    /// Host label for our records, unique per process (several processes on one host, and
    /// network namespaces sharing one host name, must not collide).
    pub(crate) host: String,
    /// Set once shut down, so `Drop` does not do it again.
    shut_down: bool,
}

impl Discovery {
    /// Starts an mDNS daemon on `interfaces` (names or IPv4 addresses; empty = every
    /// interface), IPv4 only. The interfaces are checked first: one that does not exist is an
    /// error, not silence.
    ///
    /// # Errors
    /// [`Error::UnknownInterface`] / [`Error::Ipv6Interface`] for a bad interface,
    /// [`Error::Mdns`] if the daemon cannot start.
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

/// Checks `--mdns-interface` values against the host's interfaces before any daemon exists.
fn select_interfaces(specs: &[String]) -> Result<Vec<IfKind>> {
    if specs.is_empty() {
        return Ok(Vec::new());
    }
    let interfaces = if_addrs::get_if_addrs().map_err(Error::Interfaces)?;
    specs
        .iter()
        .map(|spec| match spec.parse::<IpAddr>() {
            Ok(ip @ IpAddr::V6(_)) => Err(Error::Ipv6Interface(ip)),
            Ok(ip) if interfaces.iter().any(|i| i.ip() == ip) => Ok(IfKind::Addr(ip)),
            Ok(_) => Err(Error::UnknownInterface(spec.clone())),
            Err(_)
                if interfaces
                    .iter()
                    .any(|i| i.name == *spec && i.ip().is_ipv4()) =>
            {
                Ok(IfKind::Name(spec.clone()))
            }
            Err(_) => Err(Error::UnknownInterface(spec.clone())),
        })
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_interfaces_are_refused_before_any_daemon() {
        assert!(matches!(
            select_interfaces(&["no-such-if0".into()]),
            Err(Error::UnknownInterface(_))
        ));
        assert!(matches!(
            select_interfaces(&["192.0.2.123".into()]),
            Err(Error::UnknownInterface(_))
        ));
        assert!(matches!(
            select_interfaces(&["::1".into()]),
            Err(Error::Ipv6Interface(_))
        ));
        assert!(select_interfaces(&["127.0.0.1".into()]).is_ok());
        assert!(select_interfaces(&[]).unwrap().is_empty());
    }
}
