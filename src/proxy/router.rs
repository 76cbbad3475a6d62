//! Routes each call: the pod checkpoint paths and podckpt's own services to
//! us, every other path, known to us or not, to the runtime below, byte for
//! byte. While podckptd restores pods by annotation, RunPodSandbox and
//! CreateContainer are read whole first: those of a pod annotated
//! `podckpt.io/restore-from` are ours, every other goes on as it came.

use std::future::poll_fn;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use h2::server::SendResponse;
use h2::{Reason, RecvStream};
use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri};
use http_body::Body as _;
use tower::ServiceExt;
use tracing::warn;

use super::outcome::{self, Ended};
use super::relay::{self, RecvBody};
use super::upstream::Upstream;
use crate::api::podckpt::{checkpoints_server::CheckpointsServer, preflight_server::PreflightServer};
use crate::api::{self, pod::runtime_service_server::RuntimeServiceServer};
use crate::deadline::grpc_timeout;
use crate::metrics::Metrics;
use crate::pod::{PeerCredentials, PodService};

#[derive(Clone)]
pub struct Router {
    inner: Arc<Inner>,
}

struct Inner {
    upstream: Upstream,
    own: RuntimeServiceServer<PodService>,
    /// podckpt's own services beside the CRI.
    preflight: PreflightServer<PodService>,
    checkpoints: CheckpointsServer<PodService>,
    /// Whether RunPodSandbox and CreateContainer are read before they are
    /// passed on (podckptd restores pods by annotation).
    inspect: bool,
    /// Kept only when served: with none, a call costs nothing more.
    metrics: Option<Metrics>,
}

/// How a call is served.
enum Route {
    /// The pod calls and podckpt's own services.
    Own,
    /// RunPodSandbox and CreateContainer while podckptd restores pods by
    /// annotation: read whole, then ours or passed on.
    Inspect,
    /// Everything else: to the runtime, byte for byte.
    Forward,
}

/// What goes up to the runtime: the caller's stream as it comes, or a
/// request already read whole.
enum Upload {
    Stream(RecvStream),
    Whole(Bytes),
}

impl Router {
    /// `metrics`: where every call is counted, if anywhere.
    pub fn new(upstream: Upstream, pods: PodService, metrics: Option<Metrics>) -> Self {
        // Our own answers are small; the limits matter only for what callers send us.
        let preflight = PreflightServer::new(pods.clone());
        let checkpoints = CheckpointsServer::new(pods.clone());
        let inspect = pods.restores_by_annotation();
        let own = RuntimeServiceServer::new(pods)
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX);
        Self {
            inner: Arc::new(Inner {
                upstream,
                own,
                preflight,
                checkpoints,
                inspect,
                metrics,
            }),
        }
    }

    /// Serves one stream to completion.
    pub async fn dispatch(
        self,
        request: Request<RecvStream>,
        respond: SendResponse<Bytes>,
        peer: Option<PeerCredentials>,
    ) {
        let started = Instant::now();
        let path = request.uri().path().to_owned();
        let (own, result) = match self.route(&path) {
            Route::Own => (true, self.serve_own(request.map(RecvBody::new), respond, peer).await),
            Route::Forward => {
                let (parts, recv) = request.into_parts();
                (false, self.forward(parts, Upload::Stream(recv), respond).await)
            }
            Route::Inspect => self.inspect(request, respond, peer).await,
        };
        let elapsed = started.elapsed();
        outcome::log(&path, own, &result, elapsed);
        if let Some(metrics) = &self.inner.metrics {
            let code = result.as_ref().ok().and_then(|ended| ended.as_ref().map(|e| e.code));
            metrics.record(&path, own, code, elapsed);
        }
    }

    fn route(&self, path: &str) -> Route {
        if api::is_own_path(path) {
            Route::Own
        } else if self.inner.inspect && (path == api::RUN_POD_SANDBOX_PATH || path == api::CREATE_CONTAINER_PATH) {
            Route::Inspect
        } else {
            Route::Forward
        }
    }

    /// Reads the call whole, and serves it as ours if its pod asks for a
    /// restore, else passes it on as it came; returns whether it was ours.
    async fn inspect(
        &self,
        request: Request<RecvStream>,
        respond: SendResponse<Bytes>,
        peer: Option<PeerCredentials>,
    ) -> (bool, Result<Option<Ended>, h2::Error>) {
        let (parts, recv) = request.into_parts();
        let body = match relay::read_whole(recv).await {
            Ok(body) => body,
            Err(err) => return (false, Err(err)),
        };
        let ours = grpc_message(&body).is_some_and(|message| crate::pod::restore_answers(parts.uri.path(), message));
        if ours {
            let request = Request::from_parts(parts, http_body_util::Full::new(body));
            (true, self.serve_own(request, respond, peer).await)
        } else {
            (false, self.forward(parts, Upload::Whole(body), respond).await)
        }
    }

    async fn serve_own<B>(
        &self,
        mut request: Request<B>,
        mut respond: SendResponse<Bytes>,
        peer: Option<PeerCredentials>,
    ) -> Result<Option<Ended>, h2::Error>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send,
    {
        if let Some(peer) = peer {
            request.extensions_mut().insert(peer);
        }
        let path = request.uri().path();
        let served = if path.starts_with(api::PREFLIGHT_SERVICE) {
            self.inner.preflight.clone().oneshot(request).await
        } else if path.starts_with(api::CHECKPOINTS_SERVICE) {
            self.inner.checkpoints.clone().oneshot(request).await
        } else {
            self.inner.own.clone().oneshot(request).await
        };
        let response = match served {
            Ok(response) => response,
            Err(never) => match never {},
        };
        let (parts, body) = response.into_parts();
        // tonic answers an error with the status in the headers and no body.
        // That must go out as one HEADERS frame with END_STREAM (gRPC's
        // "trailers-only"): grpc-go and grpc C-core read a status only from
        // trailers, and report a stream ended by an empty DATA frame as
        // INTERNAL or UNKNOWN, whatever the real code was.
        let trailers_only = body.is_end_stream() || parts.headers.contains_key(tonic::Status::GRPC_STATUS);
        // Our own errors are rare: their message is read for the log.
        let ended = trailers_only.then(|| Ended::with_message(&parts.headers)).flatten();
        let send = respond.send_response(Response::from_parts(parts, ()), trailers_only)?;
        if trailers_only {
            return Ok(ended);
        }
        Ok(relay::pump_body(body, send).await?.map(Ended::code))
    }

    /// Relays the call to the runtime; returns the status the caller got.
    async fn forward(
        &self,
        mut parts: http::request::Parts,
        upload: Upload,
        mut respond: SendResponse<Bytes>,
    ) -> Result<Option<Ended>, h2::Error> {
        let deadline = grpc_timeout(&parts.headers);
        parts.uri = upstream_uri(parts.uri);
        let request_done = match &upload {
            Upload::Stream(recv) => recv.is_end_stream(),
            Upload::Whole(body) => body.is_empty(),
        };
        let (response, send) = match self
            .inner
            .upstream
            .open(Request::from_parts(parts, ()), request_done)
            .await
        {
            Ok(opened) => opened,
            Err(err) => {
                warn!(error = %err, "runtime call failed");
                return send_status(&mut respond, tonic::Status::from(err));
            }
        };

        // The request body streams up while we wait for the answer; CRI calls
        // send theirs whole at once, so this finishes first in practice.
        let upload = async {
            // An upload error has already reset both streams; the answer
            // side then sees the reset.
            match upload {
                _ if request_done => {}
                Upload::Stream(recv) => {
                    let _ = relay::pump(recv, send).await;
                }
                Upload::Whole(body) => {
                    let _ = relay::send_whole(send, body).await;
                }
            }
        };
        let download = async {
            // The runtime gets the same grpc-timeout and normally answers in
            // time; our own timer only covers a runtime that hangs. A caller
            // that gives up meanwhile cancels the runtime's stream by the drop.
            let with_deadline = async {
                match deadline {
                    Some(limit) => tokio::time::timeout(limit, response).await.map_err(|_| limit),
                    None => Ok(response.await),
                }
            };
            let waited = tokio::select! {
                waited = with_deadline => waited,
                reset = poll_fn(|cx| respond.poll_reset(cx)) => {
                    return Err(h2::Error::from(reset.unwrap_or(Reason::CANCEL)));
                }
            };
            let answer = match waited {
                Ok(Ok(answer)) => answer,
                Err(limit) => {
                    let message = format!(
                        "deadline of {limit:?} exceeded waiting for runtime endpoint {}",
                        self.inner.upstream.endpoint()
                    );
                    return send_status(&mut respond, tonic::Status::deadline_exceeded(message));
                }
                // The runtime reset the stream: pass the reset on as it was.
                Ok(Err(err)) if err.is_reset() => {
                    respond.send_reset(err.reason().unwrap_or(Reason::CANCEL));
                    return Err(err);
                }
                Ok(Err(err)) => {
                    let status = tonic::Status::unavailable(format!(
                        "runtime endpoint {} failed the call: {err}",
                        self.inner.upstream.endpoint()
                    ));
                    return send_status(&mut respond, status);
                }
            };
            let (parts, recv) = answer.into_parts();
            let done = recv.is_end_stream();
            // A trailers-only answer (every error) carries its status here.
            let code = done.then(|| outcome::code_of(&parts.headers)).flatten();
            let send = respond.send_response(Response::from_parts(parts, ()), done)?;
            let code = if done { code } else { relay::pump(recv, send).await? };
            Ok(code.map(Ended::code))
        };
        let (_, answered) = tokio::join!(upload, download);
        answered
    }
}

/// A trailers-only gRPC answer carrying `status`; returns what was sent.
fn send_status(respond: &mut SendResponse<Bytes>, status: tonic::Status) -> Result<Option<Ended>, h2::Error> {
    let sent = Ended {
        code: status.code(),
        message: Some(status.message().to_owned()),
    };
    let (parts, _) = status.into_http::<()>().into_parts();
    respond
        .send_response(Response::from_parts(parts, ()), true)
        .map(|_| Some(sent))
}

/// The one message of a unary gRPC request body, if it is one, whole and
/// uncompressed: a flag byte, a 4-byte big-endian length, the message.
fn grpc_message(body: &[u8]) -> Option<&[u8]> {
    let (&compressed, rest) = body.split_first()?;
    let (length, message) = rest.split_first_chunk::<4>()?;
    (compressed == 0 && u32::from_be_bytes(*length) as usize == message.len()).then_some(message)
}

/// HTTP/2 needs a scheme and authority on every request; keep the caller's
/// and fill in only what a minimal client left out.
fn upstream_uri(uri: Uri) -> Uri {
    if uri.scheme().is_some() && uri.authority().is_some() {
        return uri;
    }
    let mut parts = uri.into_parts();
    parts.scheme.get_or_insert(Scheme::HTTP);
    parts
        .authority
        .get_or_insert_with(|| Authority::from_static("localhost"));
    Uri::from_parts(parts).expect("scheme, authority and path form a valid URI")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_unary_message_is_read_only_whole_and_uncompressed() {
        assert_eq!(grpc_message(b"\0\0\0\0\x02hi"), Some(&b"hi"[..]));
        assert_eq!(grpc_message(b"\0\0\0\0\0"), Some(&b""[..]));
        assert_eq!(grpc_message(b"\x01\0\0\0\x02hi"), None);
        assert_eq!(grpc_message(b"\0\0\0\0\x03hi"), None);
        assert_eq!(grpc_message(b"\0\0\0\0\x01hi"), None);
        assert_eq!(grpc_message(b"\0\0"), None);
    }

    #[test]
    fn fills_in_only_what_is_missing() {
        let full: Uri = "http://containerd/runtime.v1.RuntimeService/Version".parse().unwrap();
        assert_eq!(upstream_uri(full.clone()), full);
        let bare: Uri = "/runtime.v1.RuntimeService/Version".parse().unwrap();
        assert_eq!(
            upstream_uri(bare).to_string(),
            "http://localhost/runtime.v1.RuntimeService/Version"
        );
    }
}
