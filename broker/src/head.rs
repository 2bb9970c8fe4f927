//! The HTTP request head that opens every connection: what the listener needs to tell a
//! WebSocket upgrade from a plain request. Pure (bytes in, [`Head`] out), so that it can be
//! tested and fuzzed without a socket.

/// Largest HTTP request head accepted.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;

/// Most header lines read.
const MAX_HEADERS: usize = 64;

/// What a request head says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// `GET`, `HEAD`...
    pub method: String,
    /// The request target, `/` when absent.
    pub path: String,
    /// `Sec-WebSocket-Key`, when the request asks for a WebSocket upgrade (version 13).
    pub websocket_key: Option<Vec<u8>>,
    /// Whether `Upgrade: websocket` was asked for at all.
    pub upgrade: bool,
    /// Bytes after the head (the start of the WebSocket stream).
    pub rest: Vec<u8>,
}

/// Why bytes are not a request head.
#[derive(Debug, thiserror::Error)]
#[error("not an HTTP request head: {0}")]
pub struct HeadError(#[from] httparse::Error);

impl Head {
    /// Reads the head at the start of `buf`: `Ok(None)` while it is incomplete.
    ///
    /// # Errors
    /// [`HeadError`] when the bytes are not HTTP (or hold more than 64 header lines).
    pub fn parse(buf: &[u8]) -> Result<Option<Self>, HeadError> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        let httparse::Status::Complete(len) = req.parse(buf)? else {
            return Ok(None);
        };
        let header = |name: &str| {
            req.headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| h.value)
        };
        let upgrade = header("upgrade").is_some_and(|v| {
            String::from_utf8_lossy(v)
                .to_ascii_lowercase()
                .contains("websocket")
        });
        let version_ok = header("sec-websocket-version") == Some(b"13");
        let websocket_key = header("sec-websocket-key")
            .filter(|_| upgrade && version_ok)
            .map(<[u8]>::to_vec);
        Ok(Some(Head {
            method: req.method.unwrap_or_default().to_string(),
            path: req.path.unwrap_or("/").to_string(),
            websocket_key,
            upgrade,
            rest: buf[len..].to_vec(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upgrade_gives_its_key_and_what_follows() {
        let head = Head::parse(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: WebSocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: abc==\r\n\r\n\x81\x00",
        )
        .unwrap()
        .unwrap();
        assert_eq!(head.method, "GET");
        assert_eq!(head.path, "/ws");
        assert!(head.upgrade);
        assert_eq!(head.websocket_key.as_deref(), Some(&b"abc=="[..]));
        assert_eq!(head.rest, b"\x81\x00");
    }

    #[test]
    fn an_upgrade_of_another_version_has_no_key() {
        let head = Head::parse(
            b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 8\r\n\
              Sec-WebSocket-Key: abc==\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        assert!(head.upgrade);
        assert_eq!(head.websocket_key, None);
    }

    #[test]
    fn a_plain_request_and_a_partial_one() {
        let head = Head::parse(b"GET /metrics HTTP/1.1\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!((head.path.as_str(), head.upgrade), ("/metrics", false));
        assert!(Head::parse(b"GET /metrics HTTP/1.1\r\nHost:")
            .unwrap()
            .is_none());
        assert!(Head::parse(b"\x16\x03\x01 not http\r\n\r\n").is_err());
    }
}
