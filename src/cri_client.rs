//! A CRI client for the calls podckpt makes itself to the runtime below.

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::api::cri::runtime_service_client::RuntimeServiceClient;

/// A gRPC channel over a Unix socket. It connects on first use and again
/// after the peer restarts, like the pass-through does.
pub fn channel(socket: &Path) -> Channel {
    let socket: PathBuf = socket.to_owned();
    Endpoint::from_static("http://localhost").connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
        let socket = socket.clone();
        async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(socket).await?)) }
    }))
}

pub fn runtime(socket: &Path) -> RuntimeServiceClient<Channel> {
    RuntimeServiceClient::new(channel(socket))
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX)
}
