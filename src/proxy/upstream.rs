//! The connection to the runtime below: one multiplexed HTTP/2 connection
//! over its Unix socket, dialed on first use and again whenever it has closed.
//! The daemon never waits for the runtime at start-up and never exits when it
//! goes away; calls made meanwhile fail fast with UNAVAILABLE.

use std::sync::Mutex;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::UnixStream;
use tracing::{debug, info};

use super::h2_settings;
use crate::endpoint::UnixEndpoint;

type Sender = http2::SendRequest<Incoming>;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("runtime endpoint {endpoint} is unavailable: {source}")]
    Connect { endpoint: String, source: std::io::Error },
    #[error("runtime endpoint {endpoint} is unavailable: no answer within {timeout:?}")]
    ConnectTimeout { endpoint: String, timeout: Duration },
    #[error("runtime endpoint {endpoint} is unavailable: HTTP/2 handshake failed: {source}")]
    Handshake { endpoint: String, source: hyper::Error },
    #[error("runtime endpoint {endpoint} failed the call: {source}")]
    Call { endpoint: String, source: hyper::Error },
}

impl From<UpstreamError> for tonic::Status {
    fn from(err: UpstreamError) -> Self {
        match &err {
            // The caller went away; report that, not an outage.
            UpstreamError::Call { source, .. } if source.is_canceled() => tonic::Status::cancelled(err.to_string()),
            _ => tonic::Status::unavailable(err.to_string()),
        }
    }
}

pub struct Upstream {
    endpoint: UnixEndpoint,
    connect_timeout: Duration,
    current: Mutex<Option<Sender>>,
    // Serialises dialing so that a burst of calls after an outage opens one
    // connection, not one each.
    dialing: tokio::sync::Mutex<()>,
}

impl Upstream {
    pub fn new(endpoint: UnixEndpoint, connect_timeout: Duration) -> Self {
        Self {
            endpoint,
            connect_timeout,
            current: Mutex::new(None),
            dialing: tokio::sync::Mutex::new(()),
        }
    }

    pub fn endpoint(&self) -> &UnixEndpoint {
        &self.endpoint
    }

    /// Sends one call. A request that the connection refused before sending
    /// any of it (the runtime restarted under a cached connection) is retried
    /// once on a fresh connection; anything already sent is never replayed.
    pub async fn send(&self, mut req: Request<Incoming>) -> Result<Response<Incoming>, UpstreamError> {
        let mut retried = false;
        loop {
            let mut sender = self.sender().await?;
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok(resp),
                Err(mut err) => match err.take_message() {
                    Some(unsent) if !retried => {
                        debug!(endpoint = %self.endpoint, error = %err.error(), "connection closed before sending; redialing");
                        self.forget();
                        retried = true;
                        req = unsent;
                    }
                    _ => {
                        return Err(UpstreamError::Call {
                            endpoint: self.endpoint.to_string(),
                            source: err.into_error(),
                        });
                    }
                },
            }
        }
    }

    fn cached(&self) -> Option<Sender> {
        let guard = self.current.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        guard.as_ref().filter(|s| !s.is_closed()).cloned()
    }

    fn forget(&self) {
        *self.current.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = None;
    }

    async fn sender(&self) -> Result<Sender, UpstreamError> {
        if let Some(sender) = self.cached() {
            return Ok(sender);
        }
        let _dialing = self.dialing.lock().await;
        if let Some(sender) = self.cached() {
            return Ok(sender);
        }
        let sender = self.dial().await?;
        *self.current.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(sender.clone());
        Ok(sender)
    }

    async fn dial(&self) -> Result<Sender, UpstreamError> {
        let endpoint = self.endpoint.to_string();
        let stream = tokio::time::timeout(self.connect_timeout, UnixStream::connect(self.endpoint.path()))
            .await
            .map_err(|_| UpstreamError::ConnectTimeout {
                endpoint: endpoint.clone(),
                timeout: self.connect_timeout,
            })?
            .map_err(|source| UpstreamError::Connect {
                endpoint: endpoint.clone(),
                source,
            })?;
        let mut builder = http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .initial_stream_window_size(h2_settings::STREAM_WINDOW)
            .initial_connection_window_size(h2_settings::CONNECTION_WINDOW)
            .max_frame_size(h2_settings::MAX_FRAME)
            .max_header_list_size(h2_settings::MAX_HEADER_LIST)
            .max_send_buf_size(h2_settings::MAX_SEND_BUF);
        let (sender, connection) =
            builder
                .handshake(TokioIo::new(stream))
                .await
                .map_err(|source| UpstreamError::Handshake {
                    endpoint: endpoint.clone(),
                    source,
                })?;
        tokio::spawn(async move {
            match connection.await {
                Ok(()) => debug!(endpoint, "runtime connection closed"),
                Err(error) => info!(endpoint, %error, "runtime connection ended"),
            }
        });
        info!(endpoint = %self.endpoint, "connected to runtime");
        Ok(sender)
    }
}
