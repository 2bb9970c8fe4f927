//! The one error type of this crate.

use std::net::IpAddr;

/// What can go wrong with discovery.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
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

/// This crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
