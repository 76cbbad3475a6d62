//! The client's side of a connection, as h2 reads it: HTTP/2 frames pass
//! through untouched, except header blocks whose `:authority` h2 would
//! refuse (see `authority`).
//!
//! The first header block of the connection decides. If it needed nothing,
//! the client is a grpc-go, tonic or other client that sends a host name,
//! and from then on reads go straight to the socket: the wrapper costs those
//! clients nothing. If it needed a rewrite, every later block is decoded too
//! (HPACK's table spans the whole connection), while frame payloads other
//! than headers are still read straight into h2's buffer.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tracing::debug;

use super::authority::{AuthorityRewriter, Rewrite};
use super::h2_settings;

const PREFACE_LEN: usize = 24;
const FRAME_HEADER_LEN: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
const PRIORITY_LEN: usize = 5;
/// Every peer accepts frames this large, whatever it has advertised.
const SAFE_FRAME: usize = 16_384;
const READ_CHUNK: usize = 16_384;

enum Mode {
    /// Looking at every frame until the first header block decides.
    Undecided,
    /// Rewriting header blocks for the rest of the connection.
    Rewriting,
    /// Nothing more to look at: reads go straight to the socket.
    Passthrough,
}

pub struct ClientIo<S> {
    io: S,
    mode: Mode,
    rewriter: AuthorityRewriter,
    preface_left: usize,
    /// Payload bytes of the current non-header frame not yet passed on.
    forward_left: usize,
    /// Read from the socket, not yet looked at.
    pending: BytesMut,
    /// Looked at, ready for h2.
    ready: BytesMut,
    /// The frames of a header block whose END_HEADERS has not come yet.
    held: Option<HeldBlock>,
}

struct HeldBlock {
    raw: Vec<u8>,
    fragment: Vec<u8>,
    stream_id: [u8; 4],
    /// END_STREAM and PRIORITY of the HEADERS frame.
    flags: u8,
    priority: Option<[u8; PRIORITY_LEN]>,
}

impl<S> ClientIo<S> {
    pub fn new(io: S) -> Self {
        Self {
            io,
            mode: Mode::Undecided,
            rewriter: AuthorityRewriter::default(),
            preface_left: PREFACE_LEN,
            forward_left: 0,
            pending: BytesMut::new(),
            ready: BytesMut::new(),
            held: None,
        }
    }

    /// Looks at what has been read; false when more bytes are needed.
    fn advance(&mut self) -> bool {
        if self.pending.is_empty() {
            return false;
        }
        if self.preface_left > 0 {
            let n = self.preface_left.min(self.pending.len());
            self.preface_left -= n;
            self.pass(n);
            return true;
        }
        if let Mode::Passthrough = self.mode {
            self.pass(self.pending.len());
            return true;
        }
        if self.forward_left > 0 {
            let n = self.forward_left.min(self.pending.len());
            self.forward_left -= n;
            self.pass(n);
            return true;
        }
        if self.pending.len() < FRAME_HEADER_LEN {
            return false;
        }
        let header = &self.pending[..FRAME_HEADER_LEN];
        let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
        let (kind, flags) = (header[3], header[4]);
        let is_header_frame = kind == HEADERS || (kind == CONTINUATION && self.held.is_some());
        if !is_header_frame || (kind == HEADERS && self.held.is_some()) {
            if self.held.is_some() {
                // Anything between a block's frames is a protocol error;
                // hand it all over as it came, for h2 to refuse.
                self.give_up("frame inside a header block");
                return true;
            }
            self.forward_left = len;
            self.pass(FRAME_HEADER_LEN);
            return true;
        }
        if len > h2_settings::MAX_FRAME as usize {
            self.give_up("header frame larger than allowed");
            return true;
        }
        if self.pending.len() < FRAME_HEADER_LEN + len {
            return false;
        }
        let frame = self.pending.split_to(FRAME_HEADER_LEN + len);
        if self.hold(&frame, kind, flags).is_none() {
            self.held = Some(HeldBlock::raw_only(&frame));
            self.give_up("malformed header frame");
            return true;
        }
        if flags & END_HEADERS != 0 {
            self.finish_block();
        }
        true
    }

    fn pass(&mut self, n: usize) {
        let bytes = self.pending.split_to(n);
        self.ready.extend_from_slice(&bytes);
    }

    /// Adds a HEADERS or CONTINUATION frame to the held block.
    fn hold(&mut self, frame: &[u8], kind: u8, flags: u8) -> Option<()> {
        let payload = &frame[FRAME_HEADER_LEN..];
        if kind == CONTINUATION {
            let held = self.held.as_mut()?;
            held.raw.extend_from_slice(frame);
            held.fragment.extend_from_slice(payload);
            return Some(());
        }
        let (mut start, mut end) = (0, payload.len());
        if flags & PADDED != 0 {
            let pad = *payload.first()? as usize;
            start = 1;
            end = end.checked_sub(pad)?;
        }
        let mut priority = None;
        if flags & PRIORITY != 0 {
            priority = Some(payload.get(start..start + PRIORITY_LEN)?.try_into().ok()?);
            start += PRIORITY_LEN;
        }
        let fragment = payload.get(start..end)?;
        self.held = Some(HeldBlock {
            raw: frame.to_vec(),
            fragment: fragment.to_vec(),
            stream_id: frame[5..9].try_into().ok()?,
            flags: flags & (END_STREAM | PRIORITY),
            priority,
        });
        Some(())
    }

    fn finish_block(&mut self) {
        let Some(held) = self.held.take() else { return };
        match self.rewriter.rewrite(&held.fragment) {
            Ok(Rewrite::Unchanged) => {
                self.ready.extend_from_slice(&held.raw);
                if let Mode::Undecided = self.mode {
                    self.mode = Mode::Passthrough;
                }
            }
            Ok(Rewrite::Changed(block)) => {
                if let Mode::Undecided = self.mode {
                    debug!("client sends an authority h2 refuses; rewriting its header blocks");
                    self.mode = Mode::Rewriting;
                }
                held.write_frames(&block, &mut self.ready);
            }
            Err(error) => {
                // The decoder no longer mirrors the client's: let h2 judge
                // this block and everything after it.
                debug!(%error, "undecodable header block; passing the connection through as it is");
                self.ready.extend_from_slice(&held.raw);
                self.mode = Mode::Passthrough;
            }
        }
    }

    fn give_up(&mut self, why: &'static str) {
        debug!(why, "passing the connection through as it is");
        if let Some(held) = self.held.take() {
            self.ready.extend_from_slice(&held.raw);
        }
        self.mode = Mode::Passthrough;
    }
}

impl HeldBlock {
    fn raw_only(frame: &[u8]) -> Self {
        Self {
            raw: frame.to_vec(),
            fragment: Vec::new(),
            stream_id: [0; 4],
            flags: 0,
            priority: None,
        }
    }

    /// Writes `block` as a HEADERS frame and as many CONTINUATIONs as it
    /// takes, with the original stream, END_STREAM and priority, unpadded.
    fn write_frames(&self, block: &[u8], out: &mut BytesMut) {
        let priority: &[u8] = self.priority.as_ref().map_or(&[], |p| p.as_slice());
        let first = block.len().min(SAFE_FRAME - priority.len());
        let (head, mut rest) = block.split_at(first);
        let end = if rest.is_empty() { END_HEADERS } else { 0 };
        self.write_frame(out, HEADERS, self.flags | end, &[priority, head]);
        while !rest.is_empty() {
            let (piece, tail) = rest.split_at(rest.len().min(SAFE_FRAME));
            rest = tail;
            let end = if rest.is_empty() { END_HEADERS } else { 0 };
            self.write_frame(out, CONTINUATION, end, &[piece]);
        }
    }

    fn write_frame(&self, out: &mut BytesMut, kind: u8, flags: u8, parts: &[&[u8]]) {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        out.put_slice(&(len as u32).to_be_bytes()[1..]);
        out.put_u8(kind);
        out.put_u8(flags);
        out.put_slice(&self.stream_id);
        for part in parts {
            out.put_slice(part);
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ClientIo<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.ready.is_empty() {
                let n = this.ready.len().min(buf.remaining());
                buf.put_slice(&this.ready[..n]);
                this.ready.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.advance() {
                continue;
            }
            if this.pending.is_empty() {
                if let Mode::Passthrough = this.mode {
                    return Pin::new(&mut this.io).poll_read(cx, buf);
                }
                if this.forward_left > 0 && this.preface_left == 0 {
                    return this.read_payload(cx, buf);
                }
            }
            this.pending.reserve(READ_CHUNK);
            let n = ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut this.io),
                cx,
                &mut this.pending
            ))?;
            if n == 0 {
                // The client hung up mid-frame: whatever is left goes to h2,
                // which reports the truncation.
                if let Some(held) = this.held.take() {
                    this.ready.extend_from_slice(&held.raw);
                }
                this.ready.extend_from_slice(&this.pending.split());
                if this.ready.is_empty() {
                    return Poll::Ready(Ok(()));
                }
            }
        }
    }
}

impl<S: AsyncRead + Unpin> ClientIo<S> {
    /// Reads a frame payload straight into h2's buffer, with no copy of ours.
    fn read_payload(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let limit = self.forward_left.min(buf.remaining());
        let mut limited = buf.take(limit);
        ready!(Pin::new(&mut self.io).poll_read(cx, &mut limited))?;
        let n = limited.filled().len();
        // SAFETY: `limited` is a view of `buf`'s unfilled part, and the read
        // initialised its first `n` bytes.
        unsafe { buf.assume_init(n) };
        buf.advance(n);
        self.forward_left -= n;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ClientIo<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use httlib_hpack::{Decoder, Encoder};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        out.extend([kind, flags]);
        out.extend(stream.to_be_bytes());
        out.extend(payload);
        out
    }

    fn headers_block(encoder: &mut Encoder<'static>, authority: &[u8]) -> Vec<u8> {
        let mut block = Vec::new();
        for (name, value) in [
            (&b":method"[..], &b"POST"[..]),
            (b":scheme", b"http"),
            (b":path", b"/runtime.v1.RuntimeService/Version"),
            (b":authority", authority),
            (b"content-type", b"application/grpc"),
        ] {
            encoder
                .encode((name.to_vec(), value.to_vec(), 0x14), &mut block)
                .unwrap();
        }
        block
    }

    /// Writes `input` through the wrapper in awkward pieces and returns
    /// what h2 would read.
    async fn through(input: Vec<u8>, piece: usize) -> Vec<u8> {
        let (client, server) = tokio::io::duplex(1 << 20);
        let writer = tokio::spawn(async move {
            let mut client = client;
            for chunk in input.chunks(piece) {
                client.write_all(chunk).await.unwrap();
            }
        });
        let mut wrapped = ClientIo::new(server);
        let mut out = Vec::new();
        let reading = async {
            let mut buf = [0u8; 7000];
            loop {
                let n = wrapped.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                out.extend_from_slice(&buf[..n]);
            }
        };
        let (_, written) = tokio::join!(reading, writer);
        written.unwrap();
        out
    }

    /// Splits a frame stream (after the preface) into (kind, flags, stream, payload).
    fn frames(mut bytes: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let len = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]) as usize;
            let stream = u32::from_be_bytes(bytes[5..9].try_into().unwrap());
            out.push((bytes[3], bytes[4], stream, bytes[9..9 + len].to_vec()));
            bytes = &bytes[9 + len..];
        }
        out
    }

    fn connection(authority: &[u8], calls: u32, data_len: usize) -> Vec<u8> {
        let mut encoder = Encoder::default();
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, 0, &[0, 3, 0, 0, 0, 100]));
        for call in 0..calls {
            let stream = 1 + 2 * call;
            let block = headers_block(&mut encoder, authority);
            // Padded and with a priority, in two pieces, to cover the framing.
            let (a, b) = block.split_at(block.len() / 2);
            let mut payload = vec![3];
            payload.extend([0, 0, 0, 0, 16]);
            payload.extend(a);
            payload.extend([0; 3]);
            input.extend(frame(HEADERS, PADDED | PRIORITY, stream, &payload));
            input.extend(frame(CONTINUATION, END_HEADERS, stream, b));
            input.extend(frame(0x0, END_STREAM, stream, &vec![call as u8; data_len]));
        }
        input
    }

    #[tokio::test]
    async fn a_host_name_passes_byte_for_byte() {
        let input = connection(b"localhost", 3, 40_000);
        for piece in [1, 5, 4096, 1 << 20] {
            assert_eq!(through(input.clone(), piece).await, input, "piece {piece}");
        }
    }

    #[tokio::test]
    async fn a_socket_path_is_rewritten_and_all_else_kept() {
        let input = connection(b"tmp%2Fx%2Fpodckpt.sock", 3, 40_000);
        for piece in [1, 7, 4096, 1 << 20] {
            let out = through(input.clone(), piece).await;
            assert_eq!(&out[..PREFACE.len()], PREFACE);
            let seen = frames(&out[PREFACE.len()..]);
            let sent = frames(&input[PREFACE.len()..]);
            let mut decoder = Decoder::default();
            let (mut data, mut blocks) = (0, 0);
            let mut block = Vec::new();
            for (kind, flags, stream, payload) in &seen {
                match *kind {
                    HEADERS | CONTINUATION => {
                        let mut fragment = &payload[..];
                        if flags & PADDED != 0 {
                            fragment = &fragment[1..fragment.len() - fragment[0] as usize];
                        }
                        if flags & PRIORITY != 0 {
                            assert_eq!(&fragment[..5], &[0, 0, 0, 0, 16], "priority kept");
                            fragment = &fragment[5..];
                        }
                        block.extend_from_slice(fragment);
                        if flags & END_HEADERS == 0 {
                            continue;
                        }
                        let mut fields = Vec::new();
                        decoder.decode(&mut std::mem::take(&mut block), &mut fields).unwrap();
                        let authority = fields.iter().find(|f| f.0 == b":authority").unwrap();
                        assert_eq!(authority.1, b"tmp-2Fx-2Fpodckpt.sock");
                        assert_eq!(fields.len(), 5);
                        blocks += 1;
                    }
                    0x0 => {
                        let original = sent.iter().find(|f| f.0 == 0x0 && f.2 == *stream).unwrap();
                        assert_eq!(payload, &original.3, "DATA of stream {stream} unchanged");
                        data += 1;
                    }
                    0x4 => {}
                    other => panic!("unexpected frame type {other}"),
                }
            }
            assert_eq!(blocks, 3);
            assert_eq!(data, 3);
        }
    }
}
