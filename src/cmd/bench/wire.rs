//! A minimal WebSocket client, just enough for the bench: the opening handshake (with the
//! token as `Authorization: Bearer`), over TCP or TLS (`wss://`, made by the nodes client's
//! stream), writing masked frames, reading unmasked ones.
//!
//! Why not tokio-tungstenite here: the client must not be what limits a measurement. Reading
//! straight from a large buffer and looking at each frame in place (no allocation, no UTF-8
//! check, no copy per message) costs a fraction of what the broker spends per delivery, and
//! publishers write many pre-encoded frames with one `write_all`.
//!
//! Client frames must be masked (RFC 6455, 5.3). The bench masks with the key `0, 0, 0, 0`,
//! which leaves the payload as it is: the broker still reads the key and applies it, so it does
//! exactly the work it does for any client, and the bench can patch pre-encoded frames in place.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use nodes::client::tls::ClientConfig;
use nodes::client::Stream;
use nodes::{BrokerUrl, TlsTrust};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_util::either::Either;

/// Text frame opcode.
pub const TEXT: u8 = 0x1;
/// Binary frame opcode.
pub const BINARY: u8 = 0x2;
/// Close frame opcode.
pub const CLOSE: u8 = 0x8;
/// Ping frame opcode.
pub const PING: u8 = 0x9;
/// Pong frame opcode.
pub const PONG: u8 = 0xA;

/// Initial size of a connection's read buffer: large reads mean few syscalls per frame.
const READ_BUFFER: usize = 64 * 1024;
/// Largest HTTP response head accepted during the handshake.
const MAX_HEAD: usize = 16 * 1024;

/// Appends one final, masked (with a zero key) client frame.
pub fn put_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    out.push(0x80 | opcode);
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if let Ok(len) = u16::try_from(len) {
        out.push(0x80 | 126);
        out.extend_from_slice(&len.to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(payload);
}

/// A frame header: opcode, header length, payload length, masking key if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The frame's opcode (`TEXT`, `BINARY`, `PING`...).
    pub opcode: u8,
    /// Bytes before the payload.
    pub len: usize,
    /// Bytes of payload.
    pub payload: usize,
    /// The masking key, when the frame is masked.
    pub mask: Option<[u8; 4]>,
}

/// Parses the header at the start of `buf`: `Ok(None)` when more bytes are needed.
///
/// # Errors
/// A fragmented frame (the broker never sends one) or an absurd length.
pub fn parse_header(buf: &[u8]) -> io::Result<Option<Header>> {
    let [b0, b1, ..] = *buf else { return Ok(None) };
    if b0 & 0x80 == 0 || b0 & 0x0F == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "fragmented WebSocket frame",
        ));
    }
    let masked = b1 & 0x80 != 0;
    let (payload, mut len) = match b1 & 0x7F {
        126 => match buf.get(2..4) {
            Some(b) => (u16::from_be_bytes([b[0], b[1]]) as u64, 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(b) => (u64::from_be_bytes(b.try_into().expect("8 bytes")), 10),
            None => return Ok(None),
        },
        n => (n as u64, 2),
    };
    let payload = usize::try_from(payload)
        .ok()
        .filter(|p| *p <= 1 << 30)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "frame too large"))?;
    let mask = if masked {
        let Some(key) = buf.get(len..len + 4) else {
            return Ok(None);
        };
        len += 4;
        Some(key.try_into().expect("4 bytes"))
    } else {
        None
    };
    Ok(Some(Header {
        opcode: b0 & 0x0F,
        len,
        payload,
        mask,
    }))
}

/// One frame read, borrowed from the reader's buffer.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The opcode.
    pub opcode: u8,
    /// The payload (unmasked).
    pub payload: &'a [u8],
}

/// Reads frames from a byte stream into one large buffer and hands them out in place.
#[derive(Debug)]
pub struct FrameReader<R> {
    io: R,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// A reader whose buffer starts with `already` (bytes read past the handshake).
    pub fn new(io: R, already: &[u8]) -> Self {
        let mut buf = vec![0; READ_BUFFER.max(already.len())];
        buf[..already.len()].copy_from_slice(already);
        Self {
            io,
            buf,
            start: 0,
            end: already.len(),
        }
    }

    /// The stream, without what was buffered and not read yet.
    pub fn into_inner(self) -> R {
        self.io
    }

    /// The next frame; `None` when the peer closed the stream.
    ///
    /// # Errors
    /// The socket failed or the peer sent what this client does not read.
    pub async fn next(&mut self) -> io::Result<Option<Frame<'_>>> {
        loop {
            let header = parse_header(&self.buf[self.start..self.end])?;
            if let Some(h) = header {
                if self.end - self.start >= h.len + h.payload {
                    let from = self.start + h.len;
                    let to = from + h.payload;
                    self.start = to;
                    let payload = &mut self.buf[from..to];
                    if let Some(key) = h.mask {
                        for (i, b) in payload.iter_mut().enumerate() {
                            *b ^= key[i % 4];
                        }
                    }
                    return Ok(Some(Frame {
                        opcode: h.opcode,
                        payload,
                    }));
                }
            }
            // Not a whole frame yet: move the tail to the front and read more.
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            let want = header.map_or(14, |h| h.len + h.payload);
            if want > self.buf.len() {
                self.buf.resize(want, 0);
            }
            let n = self.io.read(&mut self.buf[self.end..]).await?;
            if n == 0 {
                return Ok(None);
            }
            self.end += n;
        }
    }
}

/// Where and how the bench connects: the broker's address (resolved once), and for a
/// `wss://` broker its URL and TLS configuration; the credentials. Cheap to clone.
#[derive(Clone)]
pub struct Dial {
    /// The broker's socket address.
    pub addr: SocketAddr,
    /// The `Host` header: the URL's authority, else the address.
    host: String,
    /// For `wss://`: the URL (its host is the TLS server name) and the trust.
    tls: Option<(BrokerUrl, Arc<ClientConfig>)>,
    /// Sent as `Authorization: Bearer` on every upgrade.
    token: Option<Arc<str>>,
}

impl std::fmt::Debug for Dial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dial")
            .field("addr", &self.addr)
            .field("tls", &self.tls.is_some())
            .field("token", &self.token.is_some())
            .finish()
    }
}

impl Dial {
    /// Plain WebSocket to `addr`, no credentials.
    pub fn plain(addr: SocketAddr) -> Self {
        Self {
            addr,
            host: addr.to_string(),
            tls: None,
            token: None,
        }
    }

    /// The broker at `url` (`ws://` or `wss://`), resolved now, trusted as `trust` says.
    ///
    /// # Errors
    /// A URL that is not a broker's, a host that does not resolve, a CA that cannot be used.
    pub async fn url(url: &str, trust: &TlsTrust) -> anyhow::Result<Self> {
        use anyhow::Context;
        let parsed = BrokerUrl::parse(url)?;
        let addr = tokio::net::lookup_host((parsed.host(), parsed.port()))
            .await
            .with_context(|| format!("cannot resolve {}", parsed.host()))?
            .next()
            .with_context(|| format!("{} has no address", parsed.host()))?;
        let host = match parsed.host().contains(':') {
            true => format!("[{}]:{}", parsed.host(), parsed.port()),
            false => format!("{}:{}", parsed.host(), parsed.port()),
        };
        let tls = match (parsed.is_tls(), trust) {
            (true, trust) => Some((parsed, trust.client_config()?)),
            (false, TlsTrust::System) => None,
            (false, _) => anyhow::bail!("--ca or --fingerprint given, but {url} is not wss://"),
        };
        Ok(Self {
            addr,
            host,
            tls,
            token: None,
        })
    }

    /// The same, with credentials.
    pub fn with_token(self, token: Option<String>) -> Self {
        Self {
            token: token.map(Into::into),
            ..self
        }
    }
}

/// The read half of a connection: plain TCP (`Left`), or TLS (`Right`).
pub type Reader = Either<OwnedReadHalf, ReadHalf<Stream>>;

/// The write half of a connection: plain TCP (`Left`), or TLS (`Right`).
pub type Writer = Either<OwnedWriteHalf, WriteHalf<Stream>>;

/// A WebSocket connection made by [`connect`], split for reading and writing.
pub struct Conn {
    /// Frames from the server.
    pub reader: FrameReader<Reader>,
    /// Raw bytes to the server (write frames made with [`put_frame`]). A TLS writer encrypts
    /// each write into records and sends them before it returns (no flush needed).
    pub writer: Writer,
}

impl Conn {
    /// The connection as one blocking std socket, for a paced publisher's thread: a thread that
    /// sleeps until each message is due paces more finely than the runtime's timer.
    ///
    /// # Errors
    /// A TLS connection (its records need the async TLS stream), or the socket could not be
    /// made blocking.
    pub fn into_blocking(self) -> io::Result<std::net::TcpStream> {
        let (Either::Left(reader), Either::Left(writer)) = (self.reader.into_inner(), self.writer)
        else {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "a TLS connection has no blocking socket",
            ));
        };
        let stream = writer
            .reunite(reader)
            .map_err(|e| io::Error::other(format!("cannot reunite the halves: {e}")))?;
        let stream = stream.into_std()?;
        stream.set_nonblocking(false)?;
        Ok(stream)
    }
}

/// Opens a WebSocket connection with request path `path`.
///
/// # Errors
/// The connection or the TLS handshake failed, or the server did not switch protocols.
pub async fn connect(dial: &Dial, path: &str) -> io::Result<Conn> {
    let tcp = TcpStream::connect(dial.addr).await?;
    tcp.set_nodelay(true)?;
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n",
        dial.host
    );
    if let Some(token) = &dial.token {
        request.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    request.push_str("\r\n");
    match &dial.tls {
        None => {
            let mut tcp = tcp;
            let rest = handshake(&mut tcp, &request).await?;
            let (read, writer) = tcp.into_split();
            Ok(Conn {
                reader: FrameReader::new(Either::Left(read), &rest),
                writer: Either::Left(writer),
            })
        }
        Some((url, config)) => {
            let mut tls = nodes::client::stream::over(tcp, url, Some(Arc::clone(config)))
                .await
                .map_err(io::Error::other)?;
            let rest = handshake(&mut tls, &request).await?;
            let (read, writer) = tokio::io::split(tls);
            Ok(Conn {
                reader: FrameReader::new(Either::Right(read), &rest),
                writer: Either::Right(writer),
            })
        }
    }
}

/// Sends the upgrade request and reads the answer's head; returns the bytes read past it.
async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    request: &str,
) -> io::Result<Vec<u8>> {
    stream.write_all(request.as_bytes()).await?;
    stream.flush().await?;
    let mut head = Vec::with_capacity(256);
    let end = loop {
        if let Some(i) = memchr::memmem::find(&head, b"\r\n\r\n") {
            break i + 4;
        }
        if head.len() > MAX_HEAD || stream.read_buf(&mut head).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "no WebSocket handshake answer",
            ));
        }
    };
    if head.starts_with(b"HTTP/1.1 401") {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "the broker refused the credentials (HTTP 401): give --token",
        ));
    }
    if !head.starts_with(b"HTTP/1.1 101") {
        let line = String::from_utf8_lossy(&head[..head.len().min(64)]).into_owned();
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("server refused the upgrade: {line:?}"),
        ));
    }
    Ok(head.split_off(end))
}

/// Answers a ping, so a long run is never mistaken for a dead client.
///
/// # Errors
/// The socket failed.
pub async fn pong(writer: &mut Writer, payload: &[u8]) -> io::Result<()> {
    let mut out = Vec::with_capacity(payload.len() + 8);
    put_frame(&mut out, PONG, payload);
    writer.write_all(&out).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![0x80 | opcode];
        if payload.len() < 126 {
            out.push(payload.len() as u8);
        } else {
            out.push(126);
            out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        }
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn client_frames_are_masked_with_a_zero_key() {
        let mut out = Vec::new();
        put_frame(&mut out, TEXT, b"hi");
        assert_eq!(out, [0x81, 0x82, 0, 0, 0, 0, b'h', b'i']);
        let long = vec![7u8; 300];
        let mut out = Vec::new();
        put_frame(&mut out, BINARY, &long);
        assert_eq!(&out[..4], &[0x82, 0x80 | 126, 1, 44]);
        assert_eq!(out.len(), 4 + 4 + 300);
        let h = parse_header(&out).unwrap().unwrap();
        assert_eq!((h.opcode, h.len, h.payload), (BINARY, 8, 300));
        assert_eq!(h.mask, Some([0; 4]));
    }

    #[test]
    fn header_needs_all_its_bytes() {
        assert_eq!(parse_header(&[]).unwrap(), None);
        assert_eq!(parse_header(&[0x81]).unwrap(), None);
        assert_eq!(parse_header(&[0x81, 126, 1]).unwrap(), None);
        assert_eq!(parse_header(&[0x81, 0x85, 1, 2]).unwrap(), None);
        assert!(
            parse_header(&[0x01, 0x01]).is_err(),
            "fragments are refused"
        );
    }

    #[tokio::test]
    async fn reader_splits_frames_across_reads() {
        let mut bytes = server_frame(TEXT, b"one");
        bytes.extend(server_frame(BINARY, &[9u8; 200]));
        bytes.extend(server_frame(PING, b""));
        // The first bytes arrive with the handshake, the rest one byte per read.
        let (already, rest) = bytes.split_at(4);
        let rest = tokio_test_reader(rest.to_vec());
        let mut reader = FrameReader::new(rest, already);
        let f = reader.next().await.unwrap().unwrap();
        assert_eq!((f.opcode, f.payload), (TEXT, &b"one"[..]));
        let f = reader.next().await.unwrap().unwrap();
        assert_eq!((f.opcode, f.payload.len()), (BINARY, 200));
        let f = reader.next().await.unwrap().unwrap();
        assert_eq!((f.opcode, f.payload), (PING, &b""[..]));
        assert!(reader.next().await.unwrap().is_none());
    }

    /// A server that reads one upgrade request, answers `status`, and returns the request.
    async fn one_upgrade(status: &'static str) -> (SocketAddr, tokio::task::JoinHandle<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            while memchr::memmem::find(&head, b"\r\n\r\n").is_none() {
                assert!(tcp.read_buf(&mut head).await.unwrap() > 0);
            }
            let answer = format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n");
            tcp.write_all(answer.as_bytes()).await.unwrap();
            String::from_utf8(head).unwrap()
        });
        (addr, task)
    }

    #[tokio::test]
    async fn the_token_goes_in_the_upgrade_request() {
        let (addr, server) = one_upgrade("101 Switching Protocols").await;
        let dial = Dial::plain(addr).with_token(Some("s3cret".into()));
        connect(&dial, "/").await.unwrap();
        let request = server.await.unwrap();
        assert!(
            request.contains("\r\nAuthorization: Bearer s3cret\r\n"),
            "{request}"
        );
        let (addr, server) = one_upgrade("101 Switching Protocols").await;
        connect(&Dial::plain(addr), "/").await.unwrap();
        assert!(!server.await.unwrap().contains("Authorization"));
    }

    #[tokio::test]
    async fn a_refused_token_says_so() {
        let (addr, _server) = one_upgrade("401 Unauthorized").await;
        let err = connect(&Dial::plain(addr), "/").await.err().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
        assert!(err.to_string().contains("--token"), "{err}");
    }

    #[tokio::test]
    async fn a_trust_needs_a_wss_url() {
        let err = Dial::url("ws://127.0.0.1:1", &TlsTrust::Fingerprint([0; 32]))
            .await
            .err()
            .unwrap();
        assert!(err.to_string().contains("not wss://"), "{err}");
        let dial = Dial::url("wss://127.0.0.1:1/", &TlsTrust::System)
            .await
            .unwrap();
        assert!(dial.tls.is_some());
        assert_eq!(dial.host, "127.0.0.1:1");
    }

    #[tokio::test]
    async fn reader_unmasks_masked_frames() {
        let mut bytes = vec![0x81, 0x82, 1, 2, 3, 4];
        bytes.extend([b'h' ^ 1, b'i' ^ 2]);
        let mut reader = FrameReader::new(&bytes[..], &[]);
        let f = reader.next().await.unwrap().unwrap();
        assert_eq!(f.payload, b"hi");
    }

    /// A reader that yields one byte per read, to exercise partial frames.
    fn tokio_test_reader(bytes: Vec<u8>) -> impl AsyncRead + Unpin {
        struct Trickle(std::collections::VecDeque<u8>);
        impl AsyncRead for Trickle {
            fn poll_read(
                mut self: std::pin::Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
                buf: &mut tokio::io::ReadBuf<'_>,
            ) -> std::task::Poll<io::Result<()>> {
                if let Some(b) = self.0.pop_front() {
                    buf.put_slice(&[b]);
                }
                std::task::Poll::Ready(Ok(()))
            }
        }
        Trickle(bytes.into())
    }
}
