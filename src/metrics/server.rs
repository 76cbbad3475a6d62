//! The metrics endpoint: `GET /metrics` over HTTP/1 on a loopback TCP
//! address or a Unix socket, apart from the CRI socket, so that scraping
//! never shares a connection or a limit with the kubelet's calls.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tracing::{debug, info, warn};

use super::Metrics;

const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Where the metrics are served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Address {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl FromStr for Address {
    type Err = String;

    /// `unix:///path`, or `IP:PORT` on a loopback address: process memory
    /// sizes and call rates are no business of the network.
    fn from_str(text: &str) -> Result<Self, String> {
        if let Some(path) = text.strip_prefix("unix://") {
            let path = PathBuf::from(path);
            if !path.is_absolute() {
                return Err(format!("metrics listener {text:?}: the socket path must be absolute"));
            }
            return Ok(Self::Unix(path));
        }
        let address: SocketAddr = text
            .parse()
            .map_err(|e| format!("metrics listener {text:?}: neither unix:///PATH nor IP:PORT ({e})"))?;
        if !address.ip().is_loopback() {
            return Err(format!(
                "metrics listener {text:?}: only a loopback address (127.0.0.1, [::1]) or a unix socket"
            ));
        }
        Ok(Self::Tcp(address))
    }
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tcp(address) => write!(f, "{address}"),
            Self::Unix(path) => write!(f, "unix://{}", path.display()),
        }
    }
}

/// Binds `address` and serves `metrics` there until the task is dropped.
pub async fn serve(address: Address, metrics: Metrics) -> std::io::Result<()> {
    match &address {
        Address::Tcp(socket) => {
            let listener = tokio::net::TcpListener::bind(socket).await?;
            info!(%address, "serving metrics");
            loop {
                accepted(listener.accept().await.map(|(stream, _)| stream), &metrics);
            }
        }
        Address::Unix(path) => {
            let listener = crate::proxy::listener::bind(path).map_err(std::io::Error::other)?;
            info!(%address, "serving metrics");
            loop {
                accepted(listener.accept().await.map(|(stream, _)| stream), &metrics);
            }
        }
    }
}

fn accepted<S>(stream: std::io::Result<S>, metrics: &Metrics)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    match stream {
        Ok(stream) => connection(stream, metrics.clone()),
        Err(error) => warn!(%error, "metrics: accept failed"),
    }
}

fn connection<S>(stream: S, metrics: Metrics)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let service = hyper::service::service_fn(move |request| {
            let metrics = metrics.clone();
            async move { Ok::<_, std::convert::Infallible>(answer(&request, &metrics)) }
        });
        if let Err(error) = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service)
            .await
        {
            debug!(%error, "metrics connection ended");
        }
    });
}

fn answer(request: &Request<Incoming>, metrics: &Metrics) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (request.method(), request.uri().path()) {
        (&http::Method::GET, "/metrics") => (StatusCode::OK, CONTENT_TYPE, metrics.encode()),
        (_, "/metrics") => (StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET only\n".to_owned()),
        _ => (StatusCode::NOT_FOUND, "text/plain", "see /metrics\n".to_owned()),
    };
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("a valid response")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_or_a_unix_socket() {
        assert_eq!(
            "127.0.0.1:9641".parse::<Address>().unwrap(),
            Address::Tcp("127.0.0.1:9641".parse().unwrap())
        );
        assert!("[::1]:9641".parse::<Address>().is_ok());
        assert_eq!(
            "unix:///run/podckpt/metrics.sock".parse::<Address>().unwrap(),
            Address::Unix("/run/podckpt/metrics.sock".into())
        );
        assert!("0.0.0.0:9641".parse::<Address>().unwrap_err().contains("loopback"));
        assert!(
            "unix://metrics.sock"
                .parse::<Address>()
                .unwrap_err()
                .contains("absolute")
        );
        assert!("localhost".parse::<Address>().is_err());
    }
}
