//! The bytes under a client's WebSocket: a broker address ([`BrokerUrl`]), and the connection
//! to it ([`Stream`]), plain TCP for `ws://`, TLS over TCP for `wss://`.
//!
//! The client makes the TCP connection and the TLS handshake itself and hands the stream to
//! tungstenite for the WebSocket handshake, so that TLS is rustls on the ring provider with
//! the trust the caller chose ([`TlsTrust`](super::TlsTrust)), and failures are told apart:
//! the TCP connection, the certificate (a pin that does not match), the upgrade.

use std::io;
use std::sync::Arc;

use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_util::either::Either;

use super::tls::{format_fingerprint, Mismatch};
use crate::error::{Error, Result};

/// A broker address, checked: `ws://host[:port][/path][?query]` or the same with `wss://`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    /// The address as given.
    url: String,
    /// `wss://`.
    tls: bool,
    /// The host, without the brackets of an IPv6 address.
    host: String,
    /// The port given, else 80 (`ws`) or 443 (`wss`).
    port: u16,
    /// What follows the authority (`/` when nothing does).
    path: String,
}

impl BrokerUrl {
    /// Checks a broker address.
    ///
    /// # Errors
    /// [`Error::BadUrl`] for anything but a `ws://` or `wss://` URL with a host.
    pub fn parse(url: &str) -> Result<Self> {
        let bad = |reason: &str| Error::BadUrl {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let (tls, rest) = if let Some(rest) = url.strip_prefix("ws://") {
            (false, rest)
        } else if let Some(rest) = url.strip_prefix("wss://") {
            (true, rest)
        } else {
            return Err(bad("expected ws://host:port or wss://host:port"));
        };
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(end);
        if authority.contains('@') {
            return Err(bad("no user name or password in the URL (use a token)"));
        }
        let (host, port) = match authority.strip_prefix('[') {
            Some(v6) => {
                let (host, after) = v6.split_once(']').ok_or_else(|| bad("unclosed ["))?;
                match after {
                    "" => (host, None),
                    _ => (
                        host,
                        Some(after.strip_prefix(':').ok_or_else(|| bad("junk after ]"))?),
                    ),
                }
            }
            None => match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            },
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port = match port {
            Some(p) => p.parse().map_err(|_| bad("the port is not a number"))?,
            None if tls => 443,
            None => 80,
        };
        let path = match path {
            "" => "/".to_string(),
            p if p.starts_with('/') => p.to_string(),
            p => format!("/{p}"),
        };
        Ok(Self {
            url: url.to_string(),
            tls,
            host: host.to_string(),
            port,
            path,
        })
    }

    /// The address as given.
    pub fn as_str(&self) -> &str {
        &self.url
    }

    /// Whether it is a `wss://` address.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// The host (an IPv6 address without its brackets).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The request target: path and query (`/` when the URL has none).
    pub fn path(&self) -> &str {
        &self.path
    }
}

impl std::fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.url)
    }
}

/// A connection to a broker, under the WebSocket: plain TCP for `ws://` (`Left`), TLS over
/// TCP for `wss://` (`Right`). tokio-util's `Either` reads and writes through whichever it holds.
pub type Stream = Either<TcpStream, Box<TlsStream<TcpStream>>>;

/// Connects to `url` (no WebSocket handshake yet): TCP, then for `wss://` TLS with `tls`
/// (see [`TlsTrust::client_config`](super::TlsTrust::client_config)). Nagle is off: frames
/// are written in batches already, and a reply should not wait for an ACK.
///
/// # Errors
/// [`Error::Connect`] when the TCP connection fails; for `wss://`,
/// [`Error::FingerprintMismatch`] when the broker shows another certificate than the pinned
/// one, [`Error::Tls`] for any other failed handshake (an untrusted certificate, a name that
/// does not match, a port that does not speak TLS), [`Error::NotTls`] when a `ws://` URL
/// comes with a trust of its own (`tls` is `Some`) or a `wss://` one without.
pub async fn connect(url: &BrokerUrl, tls: Option<Arc<ClientConfig>>) -> Result<Stream> {
    let tcp = TcpStream::connect((url.host(), url.port()))
        .await
        .map_err(|e| Error::Connect {
            url: url.to_string(),
            source: Box::new(tokio_tungstenite::tungstenite::Error::Io(e)),
        })?;
    over(tcp, url, tls).await
}

/// As [`connect`], over a TCP connection already made to `url`'s broker (by a caller that
/// resolved its address once, say).
///
/// # Errors
/// As [`connect`], but for the TCP connection.
pub async fn over(
    tcp: TcpStream,
    url: &BrokerUrl,
    tls: Option<Arc<ClientConfig>>,
) -> Result<Stream> {
    tcp.set_nodelay(true).map_err(|e| Error::Connect {
        url: url.to_string(),
        source: Box::new(tokio_tungstenite::tungstenite::Error::Io(e)),
    })?;
    match (url.is_tls(), tls) {
        (false, None) => Ok(Either::Left(tcp)),
        (true, Some(config)) => {
            let name = ServerName::try_from(url.host().to_string()).map_err(|e| Error::BadUrl {
                url: url.to_string(),
                reason: format!("not a host name for TLS: {e}"),
            })?;
            let tls = TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(|e| handshake_error(url, e))?;
            Ok(Either::Right(Box::new(tls)))
        }
        (tls, _) => Err(Error::NotTls {
            url: url.to_string(),
            tls,
        }),
    }
}

/// The TCP connection under a stream.
pub fn tcp(stream: &Stream) -> &TcpStream {
    match stream {
        Either::Left(tcp) => tcp,
        Either::Right(tls) => tls.get_ref().0,
    }
}

/// Why a TLS handshake with `url` failed, the pin mismatch told apart.
fn handshake_error(url: &BrokerUrl, error: io::Error) -> Error {
    match Mismatch::of(&error) {
        Some(m) => Error::FingerprintMismatch {
            url: url.to_string(),
            expected: format_fingerprint(&m.expected),
            found: format_fingerprint(&m.found),
        },
        None => Error::Tls {
            url: url.to_string(),
            source: error,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ws_and_wss_urls_are_read() {
        let u = BrokerUrl::parse("ws://127.0.0.1:8765").unwrap();
        assert_eq!(
            (u.is_tls(), u.host(), u.port(), u.path()),
            (false, "127.0.0.1", 8765, "/")
        );
        let u = BrokerUrl::parse("wss://broker.lan/feed?token=a%20b").unwrap();
        assert_eq!(
            (u.is_tls(), u.host(), u.port(), u.path()),
            (true, "broker.lan", 443, "/feed?token=a%20b")
        );
        let u = BrokerUrl::parse("ws://[::1]:9/").unwrap();
        assert_eq!((u.host(), u.port()), ("::1", 9));
        let u = BrokerUrl::parse("wss://[fe80::1]").unwrap();
        assert_eq!((u.host(), u.port()), ("fe80::1", 443));
        let u = BrokerUrl::parse("ws://h?x=1").unwrap();
        assert_eq!((u.host(), u.port(), u.path()), ("h", 80, "/?x=1"));
        assert_eq!(u.to_string(), "ws://h?x=1");
    }

    #[test]
    fn other_urls_are_refused() {
        for bad in [
            "http://x:1",
            "127.0.0.1:8765",
            "ws://",
            "wss://",
            "ws:///x",
            "ws://:80",
            "ws://x:port",
            "ws://x:99999",
            "ws://user:pw@x:1",
            "ws://[::1",
            "ws://[::1]x",
        ] {
            assert!(
                matches!(BrokerUrl::parse(bad), Err(Error::BadUrl { .. })),
                "{bad}"
            );
        }
    }
}
