//! Accepts connections on the daemon's socket and serves them over HTTP/2
//! until shutdown, then drains in-flight calls within a grace period.

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use hyper::server::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::UnixListener;
use tracing::{debug, info, warn};

use super::h2_settings;
use super::router::Router;

/// Serves until `shutdown` completes. Then it stops accepting, removes the
/// socket file so that clients see the daemon gone at once, and waits up to
/// `grace` for calls already running.
pub async fn serve(
    listener: UnixListener,
    socket_path: &Path,
    router: Router,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) {
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        // The kubelet multiplexes everything over one connection; gRPC-Go
        // servers set no stream limit, so neither do we.
        .max_concurrent_streams(None)
        .initial_stream_window_size(h2_settings::STREAM_WINDOW)
        .initial_connection_window_size(h2_settings::CONNECTION_WINDOW)
        .max_frame_size(h2_settings::MAX_FRAME)
        .max_header_list_size(h2_settings::MAX_HEADER_LIST)
        .max_send_buf_size(h2_settings::MAX_SEND_BUF);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), router.clone()));
                    tokio::spawn(async move {
                        if let Err(error) = conn.await {
                            debug!(%error, "client connection ended with an error");
                        }
                    });
                }
                // Running out of descriptors must not end the daemon; back off briefly.
                Err(error) => {
                    warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    if let Err(error) = std::fs::remove_file(socket_path) {
        warn!(path = %socket_path.display(), %error, "could not remove socket");
    }
    info!(
        grace_seconds = grace.as_secs_f64(),
        "stopped accepting; draining in-flight calls"
    );
    match tokio::time::timeout(grace, graceful.shutdown()).await {
        Ok(()) => info!("all calls finished"),
        Err(_) => warn!(
            grace_seconds = grace.as_secs_f64(),
            "grace period over; cutting remaining calls"
        ),
    }
}
