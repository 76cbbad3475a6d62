//! Routes each call: the pod checkpoint paths to our own service, every
//! other path, known to us or not, to the runtime below, byte for byte.

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
use crate::api::{self, pod::runtime_service_server::RuntimeServiceServer, podckpt::preflight_server::PreflightServer};
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
    /// podckpt's own service beside the CRI.
    preflight: PreflightServer<PodService>,
    /// Kept only when served: with none, a call costs nothing more.
    metrics: Option<Metrics>,
}

impl Router {
    /// `metrics`: where every call is counted, if anywhere.
    pub fn new(upstream: Upstream, pods: PodService, metrics: Option<Metrics>) -> Self {
        // Our own answers are small; the limits matter only for what callers send us.
        let preflight = PreflightServer::new(pods.clone());
        let own = RuntimeServiceServer::new(pods)
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX);
        Self {
            inner: Arc::new(Inner {
                upstream,
                own,
                preflight,
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
        let own = api::is_own_path(&path);
        let result = if own {
            self.serve_own(request, respond, peer).await
        } else {
            self.forward(request, respond).await
        };
        let elapsed = started.elapsed();
        outcome::log(&path, own, &result, elapsed);
        if let Some(metrics) = &self.inner.metrics {
            let code = result.as_ref().ok().and_then(|ended| ended.as_ref().map(|e| e.code));
            metrics.record(&path, own, code, elapsed);
        }
    }

    async fn serve_own(
        &self,
        request: Request<RecvStream>,
        mut respond: SendResponse<Bytes>,
        peer: Option<PeerCredentials>,
    ) -> Result<Option<Ended>, h2::Error> {
        let mut request = request.map(RecvBody::new);
        if let Some(peer) = peer {
            request.extensions_mut().insert(peer);
        }
        let served = if request.uri().path().starts_with(api::OWN_SERVICE_PREFIX) {
            self.inner.preflight.clone().oneshot(request).await
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
        request: Request<RecvStream>,
        mut respond: SendResponse<Bytes>,
    ) -> Result<Option<Ended>, h2::Error> {
        let deadline = grpc_timeout(request.headers());
        let (mut parts, recv) = request.into_parts();
        parts.uri = upstream_uri(parts.uri);
        let request_done = recv.is_end_stream();
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
            if !request_done {
                // An upload error has already reset both streams; the answer
                // side then sees the reset.
                let _ = relay::pump(recv, send).await;
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
