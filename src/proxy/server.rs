//! Accepts connections on the daemon's socket and serves them over HTTP/2
//! until shutdown, then drains in-flight calls within a grace period.

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use super::client_io::ClientIo;
use super::h2_settings;
use super::router::Router;
use crate::pod::PeerCredentials;

/// Serves until `shutdown` completes. Then it stops accepting, removes the
/// socket file so that clients see the daemon gone at once, tells every
/// client to open no new calls (GOAWAY), and waits up to `grace` for calls
/// already running.
pub async fn serve(
    listener: UnixListener,
    socket_path: &Path,
    router: Router,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) {
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(serve_connection(stream, router.clone(), stop_rx.clone()));
                }
                // Running out of descriptors must not end the daemon; back off briefly.
                Err(error) => {
                    warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            // Reap finished connections as we go so the set stays small.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
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
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(grace, async { while connections.join_next().await.is_some() {} }).await;
    match drained {
        Ok(()) => info!("all calls finished"),
        Err(_) => warn!(
            grace_seconds = grace.as_secs_f64(),
            "grace period over; cutting remaining calls"
        ),
    }
}

async fn serve_connection(stream: UnixStream, router: Router, mut stop: watch::Receiver<bool>) {
    // Who is calling decides whether the pod calls are allowed.
    let peer = stream.peer_cred().ok().map(|c| PeerCredentials {
        uid: c.uid(),
        gid: c.gid(),
    });
    let handshake = h2::server::Builder::new()
        .initial_window_size(h2_settings::STREAM_WINDOW)
        .initial_connection_window_size(h2_settings::CONNECTION_WINDOW)
        .max_frame_size(h2_settings::MAX_FRAME)
        .max_header_list_size(h2_settings::MAX_HEADER_LIST)
        .max_send_buffer_size(h2_settings::MAX_SEND_BUF)
        .handshake(ClientIo::new(stream));
    let mut conn = match handshake.await {
        Ok(conn) => conn,
        Err(error) => {
            debug!(%error, "client left before the HTTP/2 handshake");
            return;
        }
    };
    let mut stopping = *stop.borrow();
    if stopping {
        conn.graceful_shutdown();
    }
    // Polling accept() is what drives the connection, so it goes on until the
    // client is gone, or, after a graceful shutdown, until its calls are done.
    let mut streams = JoinSet::new();
    loop {
        tokio::select! {
            next = conn.accept() => match next {
                Some(Ok((request, respond))) => {
                    streams.spawn(router.clone().dispatch(request, respond, peer));
                }
                Some(Err(error)) => {
                    debug!(%error, "client connection failed");
                    break;
                }
                None => break,
            },
            Some(_) = streams.join_next(), if !streams.is_empty() => {}
            changed = stop.changed(), if !stopping => {
                stopping = true;
                if changed.is_ok() {
                    conn.graceful_shutdown();
                }
            }
        }
    }
    // Streams still running when the client hung up end with it.
    while streams.join_next().await.is_some() {}
}
