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
    /// `Authorization`, as sent.
    pub authorization: Option<String>,
    /// `Origin`, which browsers send (and other clients usually do not).
    pub origin: Option<String>,
    /// `Host`.
    pub host: Option<String>,
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
        let text = |name: &str| header(name).map(|v| String::from_utf8_lossy(v).into_owned());
        Ok(Some(Head {
            method: req.method.unwrap_or_default().to_string(),
            path: req.path.unwrap_or("/").to_string(),
            websocket_key,
            upgrade,
            authorization: text("authorization"),
            origin: text("origin"),
            host: text("host"),
            rest: buf[len..].to_vec(),
        }))
    }

    /// The request's token: `Authorization: Bearer <token>`, else `?token=<token>` in the URL
    /// (percent-decoded: browsers cannot set headers on a WebSocket).
    pub fn token(&self) -> Option<String> {
        if let Some(value) = &self.authorization {
            let (scheme, token) = value.trim().split_once(' ')?;
            return scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| token.trim().to_string());
        }
        self.query("token")
    }

    /// The value of `name` in the URL's query, percent-decoded.
    pub fn query(&self, name: &str) -> Option<String> {
        let (_, query) = self.path.split_once('?')?;
        query.split('&').find_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (key == name).then(|| {
                let value = value.replace('+', " ");
                percent_encoding::percent_decode_str(&value)
                    .decode_utf8_lossy()
                    .into_owned()
            })
        })
    }

    /// Whether a browser page may open a WebSocket here: no `Origin` (not a browser), the
    /// broker's own pages (`http(s)://` + `Host`, the scheme this port speaks), or an origin in
    /// `allowed` (`*` allows any).
    pub fn origin_allowed(&self, tls: bool, allowed: &[String]) -> bool {
        let Some(origin) = self.origin.as_deref().map(str::trim) else {
            return true;
        };
        if allowed
            .iter()
            .any(|a| a == "*" || a.trim_end_matches('/').eq_ignore_ascii_case(origin))
        {
            return true;
        }
        let scheme = if tls { "https://" } else { "http://" };
        match (&self.host, origin.get(..scheme.len())) {
            (Some(host), Some(prefix)) if prefix.eq_ignore_ascii_case(scheme) => {
                origin[scheme.len()..].eq_ignore_ascii_case(host.trim())
            }
            _ => false,
        }
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

    fn upgrade_with(headers: &str, path: &str) -> Head {
        let text = format!(
            "GET {path} HTTP/1.1\r\nHost: 10.0.0.5:8765\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: abc==\r\n{headers}\r\n"
        );
        Head::parse(text.as_bytes()).unwrap().unwrap()
    }

    #[test]
    fn the_token_comes_from_the_header_or_the_query() {
        let head = upgrade_with("Authorization: Bearer s3cret\r\n", "/");
        assert_eq!(head.token().as_deref(), Some("s3cret"));
        let head = upgrade_with("authorization: bearer  s3cret \r\n", "/?token=other");
        assert_eq!(head.token().as_deref(), Some("s3cret"), "the header wins");
        let head = upgrade_with("Authorization: Basic abc\r\n", "/");
        assert_eq!(head.token(), None);
        let head = upgrade_with("", "/?x=1&token=a%2Fb%20c&y");
        assert_eq!(head.token().as_deref(), Some("a/b c"));
        assert_eq!(upgrade_with("", "/").token(), None);
    }

    #[test]
    fn origins_other_than_the_brokers_own_need_to_be_allowed() {
        let head = upgrade_with("", "/");
        assert!(head.origin_allowed(false, &[]), "no Origin: not a browser");
        let own = upgrade_with("Origin: http://10.0.0.5:8765\r\n", "/");
        assert!(own.origin_allowed(false, &[]));
        assert!(!own.origin_allowed(true, &[]), "https pages on a TLS port");
        let other = upgrade_with("Origin: http://evil.example\r\n", "/");
        assert!(!other.origin_allowed(false, &[]));
        assert!(other.origin_allowed(false, &["http://evil.example/".into()]));
        assert!(other.origin_allowed(false, &["*".into()]));
        let null = upgrade_with("Origin: null\r\n", "/");
        assert!(!null.origin_allowed(false, &[]));
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
