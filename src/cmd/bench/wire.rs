//! A minimal WebSocket client, just enough for the bench: the opening handshake, writing masked
//! frames, reading unmasked ones.
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

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

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

/// A WebSocket connection made by [`connect`], split for reading and writing.
pub struct Conn {
    /// Frames from the server.
    pub reader: FrameReader<OwnedReadHalf>,
    /// Raw bytes to the server (write frames made with [`put_frame`]).
    pub writer: OwnedWriteHalf,
}

/// Opens a WebSocket connection to `addr` with request path `path`.
///
/// # Errors
/// The connection failed or the server did not switch protocols.
pub async fn connect(addr: SocketAddr, path: &str) -> io::Result<Conn> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
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
    if !head.starts_with(b"HTTP/1.1 101") {
        let line = String::from_utf8_lossy(&head[..head.len().min(64)]).into_owned();
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("server refused the upgrade: {line:?}"),
        ));
    }
    let (read, writer) = stream.into_split();
    Ok(Conn {
        reader: FrameReader::new(read, &head[end..]),
        writer,
    })
}

/// Answers a ping, so a long run is never mistaken for a dead client.
///
/// # Errors
/// The socket failed.
pub async fn pong(writer: &mut OwnedWriteHalf, payload: &[u8]) -> io::Result<()> {
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
