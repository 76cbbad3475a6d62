//! Moving one HTTP/2 stream's body from one side to the other.
//!
//! Data is taken from the sender only as fast as the receiver's flow-control
//! window allows, and the inbound window is released only once the bytes are
//! handed on: a slow peer slows its counterpart instead of growing a buffer.

use std::future::poll_fn;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use h2::{Reason, RecvStream, SendStream};
use http::HeaderMap;
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use tonic::Code;

/// Up to this many bytes open a body without waiting for flow-control
/// capacity: every HTTP/2 stream starts with a 64 KiB window, and a stream
/// whose HEADERS are still queued cannot be granted capacity at all, so
/// waiting would flush the HEADERS in a write of their own. A unary gRPC
/// message then crosses in one write with its headers.
const UNRESERVED_FIRST_CHUNK: usize = 65_535;

/// Copies data and trailers from `recv` to `send`, and returns the gRPC
/// status code the trailers carried. A reset or error on either side resets the
/// other, so a cancelled call is cancelled end to end.
pub async fn pump(mut recv: RecvStream, mut send: SendStream<Bytes>) -> Result<Option<Code>, h2::Error> {
    let result = async {
        let mut first = true;
        while let Some(chunk) = recv.data().await {
            let chunk = chunk?;
            let len = chunk.len();
            // END_STREAM rides on the last DATA frame, as the sender put it.
            let end = recv.is_end_stream();
            if first && len <= UNRESERVED_FIRST_CHUNK {
                send.send_data(chunk, end)?;
            } else {
                send_data(&mut send, chunk, end).await?;
            }
            first = false;
            recv.flow_control().release_capacity(len)?;
            if end {
                return Ok(None);
            }
        }
        finish(&mut send, recv.trailers().await?)
    }
    .await;
    if let Err(err) = &result {
        send.send_reset(reason(err));
    }
    result
}

/// Reads a request body whole; trailers (a gRPC request has none) are
/// dropped. Window capacity is released as it arrives.
pub async fn read_whole(mut recv: RecvStream) -> Result<Bytes, h2::Error> {
    let mut whole = bytes::BytesMut::new();
    while let Some(chunk) = recv.data().await {
        let chunk = chunk?;
        recv.flow_control().release_capacity(chunk.len())?;
        whole.extend_from_slice(&chunk);
    }
    Ok(whole.freeze())
}

/// Sends `body`, a request read whole, as far as flow control allows, and
/// ends the stream; an error resets it.
pub async fn send_whole(mut send: SendStream<Bytes>, body: Bytes) -> Result<(), h2::Error> {
    // As `pump` sends a first chunk: with the HEADERS, in one write.
    let result = if body.len() <= UNRESERVED_FIRST_CHUNK {
        send.send_data(body, true)
    } else {
        send_data(&mut send, body, true).await
    };
    if let Err(err) = &result {
        send.send_reset(reason(err));
    }
    result
}

/// Writes an `http_body::Body` (one of our own responses) to `send`, and
/// returns the gRPC status code its trailers carried.
pub async fn pump_body<B>(body: B, mut send: SendStream<Bytes>) -> Result<Option<Code>, h2::Error>
where
    B: Body<Data = Bytes>,
{
    let mut body = std::pin::pin!(body);
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            send.send_reset(Reason::INTERNAL_ERROR);
            return Err(h2::Error::from(Reason::INTERNAL_ERROR));
        };
        match frame.into_data() {
            Ok(data) => send_data(&mut send, data, false).await?,
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    return finish(&mut send, Some(trailers));
                }
            }
        }
    }
    finish(&mut send, None)
}

fn finish(send: &mut SendStream<Bytes>, trailers: Option<HeaderMap>) -> Result<Option<Code>, h2::Error> {
    match trailers {
        Some(trailers) => {
            let code = super::outcome::code_of(&trailers);
            send.send_trailers(trailers)?;
            Ok(code)
        }
        None => send.send_data(Bytes::new(), true).map(|()| None),
    }
}

/// Sends `data` in pieces no larger than the capacity the peer has granted;
/// the last piece carries `end`.
async fn send_data(send: &mut SendStream<Bytes>, mut data: Bytes, end: bool) -> Result<(), h2::Error> {
    if data.is_empty() {
        return send.send_data(data, end);
    }
    while !data.is_empty() {
        send.reserve_capacity(data.len());
        let granted = match poll_fn(|cx| send.poll_capacity(cx)).await {
            Some(granted) => granted?,
            None => return Err(h2::Error::from(Reason::STREAM_CLOSED)),
        };
        let piece = data.split_to(granted.min(data.len()));
        send.send_data(piece, end && data.is_empty())?;
    }
    Ok(())
}

/// The reset reason to pass on for an error from the other side.
fn reason(err: &h2::Error) -> Reason {
    err.reason().unwrap_or(Reason::CANCEL)
}

/// An inbound stream as an `http_body::Body`, for handing calls to a tonic
/// service. Window capacity is released as the service consumes the data.
pub struct RecvBody {
    recv: RecvStream,
    data_done: bool,
}

impl RecvBody {
    pub fn new(recv: RecvStream) -> Self {
        let data_done = recv.is_end_stream();
        Self { recv, data_done }
    }
}

impl Body for RecvBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        if !self.data_done {
            match std::task::ready!(self.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    self.recv.flow_control().release_capacity(data.len())?;
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(err)) => return Poll::Ready(Some(Err(err))),
                None => self.data_done = true,
            }
        }
        self.recv
            .poll_trailers(cx)
            .map(|t| t.transpose().map(|t| t.map(Frame::trailers)))
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }
}
