//! Announcing a service: what to advertise ([`Advert`]) and [`Discovery::advertise`].

use std::collections::HashMap;
use std::sync::PoisonError;

use mdns_sd::ServiceInfo;

use crate::daemon::Discovery;
use crate::error::Result;
use crate::records::{truncate_utf8, MAX_INSTANCE_BYTES};

/// What to advertise.
#[derive(Debug, Clone)]
pub struct Advert {
    /// [`BROKER_TYPE`](crate::BROKER_TYPE) or [`NODE_TYPE`](crate::NODE_TYPE).
    pub service_type: &'static str,
    /// The instance name (truncated to [`MAX_INSTANCE_BYTES`]).
    pub name: String,
    /// The TCP port served (0 for a node).
    pub port: u16,
    /// TXT entries (each `key=value` must stay under 255 bytes).
    pub txt: Vec<(String, String)>,
}

impl Discovery {
    /// Advertises a service; returns its full name. Advertising the same name again updates
    /// its records (a new TXT, say).
    ///
    /// # Errors
    /// When the TXT record is invalid or the daemon is gone.
    pub fn advertise(&self, ad: &Advert) -> Result<String> {
        let name = truncate_utf8(&ad.name, MAX_INSTANCE_BYTES);
        let txt: HashMap<String, String> = ad.txt.iter().cloned().collect();
        let info = ServiceInfo::new(ad.service_type, name, &self.host, "", ad.port, txt)?
            .enable_addr_auto();
        let fullname = info.get_fullname().to_string();
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

    /// Stops advertising `fullname` (one of this process's records), with goodbye packets:
    /// browsers see it leave in about a second.
    pub async fn withdraw(&self, fullname: &str) {
        self.registered
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|n| n != fullname);
        match self.daemon.unregister(fullname) {
            Ok(status) => {
                let _ =
                    tokio::time::timeout(std::time::Duration::from_secs(1), status.recv_async())
                        .await;
                tracing::debug!(%fullname, "withdrawn");
            }
            Err(e) => tracing::debug!(%fullname, error = %e, "cannot withdraw"),
        }
    }
}
