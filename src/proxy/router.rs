//! Routes each call: the pod checkpoint paths to our own service, every
//! other path, known to us or not, to the runtime below, byte for byte.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use tonic::body::Body;
use tower::ServiceExt;
use tracing::{debug, warn};

use super::deadline::grpc_timeout;
use super::upstream::Upstream;
use crate::api::{self, pod::runtime_service_server::RuntimeServiceServer};
use crate::pod::PodService;

#[derive(Clone)]
pub struct Router {
    inner: Arc<Inner>,
}

struct Inner {
    upstream: Upstream,
    own: RuntimeServiceServer<PodService>,
}

impl Router {
    pub fn new(upstream: Upstream, pods: PodService) -> Self {
        // Our own answers are small; the limits matter only for what callers send us.
        let own = RuntimeServiceServer::new(pods)
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX);
        Self {
            inner: Arc::new(Inner { upstream, own }),
        }
    }

    async fn route(self, req: Request<Incoming>) -> Response<Body> {
        let started = Instant::now();
        let path = req.uri().path().to_owned();
        let response = if api::is_own_path(&path) {
            match self.inner.own.clone().oneshot(req).await {
                Ok(resp) => resp,
                Err(never) => match never {},
            }
        } else {
            self.forward(req).await
        };
        debug!(method = %path, http_status = response.status().as_u16(), elapsed_us = started.elapsed().as_micros() as u64, "call");
        response
    }

    async fn forward(&self, req: Request<Incoming>) -> Response<Body> {
        let deadline = grpc_timeout(req.headers());
        let (mut parts, body) = req.into_parts();
        parts.uri = upstream_uri(parts.uri);
        let send = self.inner.upstream.send(Request::from_parts(parts, body));
        // The runtime gets the same grpc-timeout and normally answers in time;
        // our own timer only covers a runtime that hangs before its headers.
        let result = match deadline {
            Some(limit) => match tokio::time::timeout(limit, send).await {
                Ok(result) => result,
                Err(_) => {
                    return tonic::Status::deadline_exceeded(format!(
                        "deadline of {limit:?} exceeded waiting for runtime endpoint {}",
                        self.inner.upstream.endpoint()
                    ))
                    .into_http();
                }
            },
            None => send.await,
        };
        match result {
            Ok(resp) => resp.map(Body::new),
            Err(err) => {
                warn!(error = %err, "runtime call failed");
                tonic::Status::from(err).into_http()
            }
        }
    }
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

impl hyper::service::Service<Request<Incoming>> for Router {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.route(req).await) })
    }
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
