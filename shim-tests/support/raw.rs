//! gRPC calls with undecoded message bodies: for paths our schema does not
//! know (containerd's own API, methods added upstream, made-up ones).

use bytes::{Buf, BufMut, Bytes};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

#[derive(Clone, Copy, Default)]
pub struct RawCodec;

pub struct RawCoder;

impl Encoder for RawCoder {
    type Item = Bytes;
    type Error = Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawCoder {
    type Item = Bytes;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCoder;
    type Decoder = RawCoder;
    fn encoder(&mut self) -> RawCoder {
        RawCoder
    }
    fn decoder(&mut self) -> RawCoder {
        RawCoder
    }
}

/// One unary call on `path` carrying `body` as the message and `metadata`.
pub async fn unary(
    channel: Channel,
    path: &str,
    body: Bytes,
    metadata: &[(&'static str, &str)],
) -> Result<Response<Bytes>, Status> {
    let mut grpc = tonic::client::Grpc::new(channel).max_decoding_message_size(usize::MAX);
    grpc.ready().await.map_err(|e| Status::unavailable(e.to_string()))?;
    let mut request = Request::new(body);
    for (key, value) in metadata {
        request
            .metadata_mut()
            .insert(*key, value.parse().expect("ASCII metadata"));
    }
    let path = http::uri::PathAndQuery::try_from(path).expect("valid gRPC path");
    grpc.unary(request, path, RawCodec).await
}

/// What a bare HTTP/2 client saw of one gRPC call.
pub struct H2Reply {
    pub grpc_status: Option<String>,
    pub grpc_message: Option<String>,
    /// The far side reset the stream instead of answering, with this code.
    pub reset: Option<h2::Reason>,
}

/// The RST_STREAM code inside a hyper error, if that is what it was.
fn reset_reason(err: &hyper::Error) -> Option<h2::Reason> {
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        if let Some(h2) = cause.downcast_ref::<h2::Error>() {
            return h2.reason();
        }
        source = cause.source();
    }
    None
}

/// One unary gRPC call over a bare HTTP/2 connection, with exactly the
/// headers given. Unlike tonic's client, it enforces no deadline of its own,
/// so whatever status comes back was decided on the far side.
pub async fn h2_unary(socket: &std::path::Path, path: &str, message: &[u8], headers: &[(&str, &str)]) -> H2Reply {
    use http_body_util::{BodyExt, Full};
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let stream = tokio::net::UnixStream::connect(socket).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .expect("HTTP/2 handshake");
    tokio::spawn(conn);
    let mut framed = Vec::with_capacity(5 + message.len());
    framed.push(0);
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(message);
    let mut request = http::Request::post(format!("http://podckpt.invalid{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response = match sender
        .send_request(request.body(Full::new(Bytes::from(framed))).unwrap())
        .await
    {
        Ok(response) => response,
        Err(err) => {
            let reset = reset_reason(&err);
            assert!(reset.is_some(), "response: {err:?}");
            return H2Reply {
                grpc_status: None,
                grpc_message: None,
                reset,
            };
        }
    };
    let (parts, body) = response.into_parts();
    let trailers = body
        .collect()
        .await
        .expect("body")
        .trailers()
        .cloned()
        .unwrap_or_default();
    let find = |name: &str| {
        trailers
            .get(name)
            .or_else(|| parts.headers.get(name))
            .map(|v| v.to_str().unwrap_or_default().to_owned())
    };
    H2Reply {
        grpc_status: find("grpc-status"),
        grpc_message: find("grpc-message"),
        reset: None,
    }
}
