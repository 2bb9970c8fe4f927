//! A socket reader whose buffer exists only while the connection is busy.
//!
//! tungstenite keeps one read buffer per connection for the connection's whole life, of the
//! configured size ([`Config::read_buffer_bytes`](crate::Config::read_buffer_bytes)), and reads
//! at most that much per call. A large one makes a busy publisher cheap (few `read` syscalls)
//! and an idle subscriber expensive (most of its memory); a small one the reverse. This adapter
//! gets both: tungstenite is given a small buffer, and underneath it, while data keeps coming,
//! reads go through a large chunk allocated on demand and freed as soon as the socket has
//! nothing more to give. An idle connection holds no chunk at all. A released chunk goes to a
//! small per-thread stock of spares ([`SPARES`]), so a connection that keeps draining its socket
//! and filling again costs no allocation (nor zeroing) per burst.
//!
//! ```text
//!  socket ──(one read of up to CHUNK bytes, while busy)──► chunk ──(small copies)──► tungstenite
//!         └──(small reads straight through, while idle)──────────────────────────► tungstenite
//! ```

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Size of the chunk a busy connection reads into.
const CHUNK: usize = 16 * 1024;
/// Released chunks kept per thread for the next busy connection.
const SPARES: usize = 4;

thread_local! {
    static SPARE_CHUNKS: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

/// A chunk: a spare if this thread has one, else a new one.
fn take_chunk() -> Box<[u8]> {
    SPARE_CHUNKS
        .with(|spares| spares.borrow_mut().pop())
        .unwrap_or_else(|| vec![0; CHUNK].into_boxed_slice())
}

/// Keeps `chunk` as a spare, unless this thread has enough of them.
fn give_back(chunk: Box<[u8]>) {
    SPARE_CHUNKS.with(|spares| {
        let mut spares = spares.borrow_mut();
        if spares.len() < SPARES {
            spares.push(chunk);
        }
    });
}

/// Wraps a stream; writes pass straight through.
#[derive(Debug)]
pub(crate) struct ReadAhead<S> {
    inner: S,
    /// Bytes read ahead: `chunk[start..end]` is not handed out yet. Empty, with no allocation,
    /// while the connection is idle.
    chunk: Box<[u8]>,
    start: usize,
    end: usize,
    /// The last direct read filled the caller's buffer: more is probably waiting.
    busy: bool,
}

impl<S> ReadAhead<S> {
    pub(crate) fn new(inner: S) -> Self {
        Self {
            inner,
            chunk: Box::default(),
            start: 0,
            end: 0,
            busy: false,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ReadAhead<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.start < this.end {
            let n = (this.end - this.start).min(out.remaining());
            out.put_slice(&this.chunk[this.start..this.start + n]);
            this.start += n;
            return Poll::Ready(Ok(()));
        }
        if !this.busy || out.remaining() >= CHUNK {
            let wanted = out.remaining();
            let before = out.filled().len();
            let read = Pin::new(&mut this.inner).poll_read(cx, out);
            if let Poll::Ready(Ok(())) = read {
                this.busy = out.filled().len() - before == wanted && wanted > 0;
            }
            return read;
        }
        if this.chunk.is_empty() {
            this.chunk = take_chunk();
        }
        let mut chunk = ReadBuf::new(&mut this.chunk);
        match Pin::new(&mut this.inner).poll_read(cx, &mut chunk) {
            Poll::Ready(Ok(())) => {
                let n = chunk.filled().len();
                let given = n.min(out.remaining());
                out.put_slice(&this.chunk[..given]);
                this.start = given;
                this.end = n;
                if n == 0 {
                    this.release();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => {
                this.release();
                Poll::Ready(Err(e))
            }
            Poll::Pending => {
                // The socket is drained: the connection is idle until it wakes us again.
                this.release();
                Poll::Pending
            }
        }
    }
}

impl<S> ReadAhead<S> {
    fn release(&mut self) {
        let chunk = std::mem::take(&mut self.chunk);
        if !chunk.is_empty() {
            give_back(chunk);
        }
        self.start = 0;
        self.end = 0;
        self.busy = false;
    }
}

impl<S> Drop for ReadAhead<S> {
    fn drop(&mut self) {
        self.release();
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ReadAhead<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn reads_everything_in_order_whatever_the_reader_asks_for() {
        let (mut tx, rx) = tokio::io::duplex(64 * 1024);
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            tx.write_all(&sent).await.unwrap();
        });
        let mut reader = ReadAhead::new(rx);
        let mut got = Vec::new();
        let mut small = [0u8; 100];
        loop {
            let n = reader.read(&mut small).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&small[..n]);
        }
        writer.await.unwrap();
        assert_eq!(got, data);
    }

    #[test]
    fn released_chunks_are_reused_and_the_stock_is_bounded() {
        let chunk = take_chunk();
        let at = chunk.as_ptr();
        give_back(chunk);
        let again = take_chunk();
        assert_eq!(
            again.as_ptr(),
            at,
            "a spare is handed out before a new chunk"
        );
        for _ in 0..SPARES + 3 {
            give_back(vec![0; CHUNK].into_boxed_slice());
        }
        assert_eq!(SPARE_CHUNKS.with(|s| s.borrow().len()), SPARES);
    }

    #[tokio::test]
    async fn an_idle_reader_holds_no_chunk() {
        let (mut tx, rx) = tokio::io::duplex(64 * 1024);
        let mut reader = ReadAhead::new(rx);
        tx.write_all(&[7u8; 5000]).await.unwrap();
        let mut small = [0u8; 100];
        // The first read fills the small buffer: the reader turns busy and reads ahead.
        assert_eq!(reader.read(&mut small).await.unwrap(), 100);
        assert_eq!(reader.read(&mut small).await.unwrap(), 100);
        assert!(!reader.chunk.is_empty());
        let mut rest = 4800;
        while rest > 0 {
            rest -= reader.read(&mut small).await.unwrap();
        }
        // Nothing more to read: the next read finds the socket empty and lets the chunk go.
        let pending = tokio::time::timeout(
            std::time::Duration::from_millis(20),
            reader.read(&mut small),
        );
        assert!(pending.await.is_err());
        assert!(reader.chunk.is_empty());
        tx.write_all(b"hi").await.unwrap();
        assert_eq!(reader.read(&mut small).await.unwrap(), 2);
        assert_eq!(&small[..2], b"hi");
    }
}
