//! The connection to the runtime below: one multiplexed HTTP/2 connection
//! over its Unix socket, dialed on first use and again whenever it has closed.
//! The daemon never waits for the runtime at start-up and never exits when it
//! goes away; calls made meanwhile fail fast with UNAVAILABLE.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use h2::SendStream;
use h2::client::{self, ResponseFuture, SendRequest};
use http::Request;
use tokio::net::UnixStream;
use tracing::{debug, info};

use super::h2_settings;
use crate::endpoint::UnixEndpoint;
use crate::metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("runtime endpoint {endpoint} is unavailable: {source}")]
    Connect { endpoint: String, source: std::io::Error },
    #[error("runtime endpoint {endpoint} is unavailable: no answer within {timeout:?}")]
    ConnectTimeout { endpoint: String, timeout: Duration },
    #[error("runtime endpoint {endpoint} is unavailable: {source}")]
    Protocol { endpoint: String, source: h2::Error },
}

impl From<UpstreamError> for tonic::Status {
    fn from(err: UpstreamError) -> Self {
        tonic::Status::unavailable(err.to_string())
    }
}

/// A live connection: its sender, and a flag its driver task clears on exit.
#[derive(Clone)]
struct Connection {
    sender: SendRequest<Bytes>,
    open: Arc<AtomicBool>,
}

pub struct Upstream {
    endpoint: UnixEndpoint,
    connect_timeout: Duration,
    current: Mutex<Option<Connection>>,
    // Serialises dialing so that a burst of calls after an outage opens one
    // connection, not one each.
    dialing: tokio::sync::Mutex<()>,
    /// Where a connection lost and dialed again is counted.
    metrics: Metrics,
}

impl Upstream {
    pub fn new(endpoint: UnixEndpoint, connect_timeout: Duration, metrics: Metrics) -> Self {
        Self {
            endpoint,
            connect_timeout,
            current: Mutex::new(None),
            dialing: tokio::sync::Mutex::new(()),
            metrics,
        }
    }

    pub fn endpoint(&self) -> &UnixEndpoint {
        &self.endpoint
    }

    /// Opens a stream for `request`. A connection found closed before the
    /// request went out (the runtime restarted) is replaced once; a request
    /// already sent is never replayed.
    pub async fn open(
        &self,
        request: Request<()>,
        end_of_stream: bool,
    ) -> Result<(ResponseFuture, SendStream<Bytes>), UpstreamError> {
        let mut redialed = false;
        let sender = loop {
            let conn = self.connection().await?;
            match conn.sender.ready().await {
                Ok(sender) => break sender,
                Err(source) if !redialed => {
                    debug!(endpoint = %self.endpoint, error = %source, "connection closed before sending; redialing");
                    conn.open.store(false, Ordering::Release);
                    redialed = true;
                }
                Err(source) => return Err(self.protocol_error(source)),
            }
        };
        let mut sender = sender;
        sender
            .send_request(request, end_of_stream)
            .map_err(|source| self.protocol_error(source))
    }

    fn protocol_error(&self, source: h2::Error) -> UpstreamError {
        UpstreamError::Protocol {
            endpoint: self.endpoint.to_string(),
            source,
        }
    }

    fn cached(&self) -> Option<Connection> {
        let guard = self.current.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        guard.as_ref().filter(|c| c.open.load(Ordering::Acquire)).cloned()
    }

    async fn connection(&self) -> Result<Connection, UpstreamError> {
        if let Some(conn) = self.cached() {
            return Ok(conn);
        }
        let _dialing = self.dialing.lock().await;
        if let Some(conn) = self.cached() {
            return Ok(conn);
        }
        let conn = self.dial().await?;
        let previous = self
            .current
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .replace(conn.clone());
        if previous.is_some() {
            self.metrics.runtime_reconnected();
        }
        Ok(conn)
    }

    async fn dial(&self) -> Result<Connection, UpstreamError> {
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
        let (sender, connection) = client::Builder::new()
            .initial_window_size(h2_settings::STREAM_WINDOW)
            .initial_connection_window_size(h2_settings::CONNECTION_WINDOW)
            .max_frame_size(h2_settings::MAX_FRAME)
            .max_header_list_size(h2_settings::MAX_HEADER_LIST)
            .max_send_buffer_size(h2_settings::MAX_SEND_BUF)
            .handshake::<_, Bytes>(stream)
            .await
            .map_err(|source| self.protocol_error(source))?;
        let open = Arc::new(AtomicBool::new(true));
        let flag = open.clone();
        tokio::spawn(async move {
            match connection.await {
                Ok(()) => debug!(endpoint, "runtime connection closed"),
                Err(error) => info!(endpoint, %error, "runtime connection ended"),
            }
            flag.store(false, Ordering::Release);
        });
        info!(endpoint = %self.endpoint, "connected to runtime");
        Ok(Connection { sender, open })
    }
}
