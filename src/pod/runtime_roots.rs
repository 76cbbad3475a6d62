//! Where a runtime handler's OCI runtime keeps its state (runc's `--root`),
//! read from the CRI runtime's own configuration of that handler, so that a
//! node's podckpt config need not repeat it:
//! - containerd reports its config in a verbose Status: the handler's runc
//!   shim options `Root` (default `/run/containerd/runc`), under which the
//!   shim keeps the `k8s.io` namespace's containers.
//! - CRI-O serves its running config over the same socket, at HTTP
//!   `GET /config` (what `crio status config` reads): the handler's
//!   `runtime_root`.

use std::path::{Path, PathBuf};

use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tonic::transport::Channel;

use crate::api::cri;
use crate::api::cri::runtime_service_client::RuntimeServiceClient;

/// The runc shim's state directory when a handler's options name no `Root`.
const CONTAINERD_DEFAULT_ROOT: &str = "/run/containerd/runc";
/// The containerd namespace of CRI containers.
const CONTAINERD_NAMESPACE: &str = "k8s.io";

/// The state directory of `handler` ("" is the runtime's default handler).
pub async fn discover(
    mut runtime: RuntimeServiceClient<Channel>,
    socket: &Path,
    handler: &str,
) -> Result<PathBuf, String> {
    let status = runtime
        .status(cri::StatusRequest { verbose: true })
        .await
        .map_err(|s| format!("Status: {}", s.message()))?
        .into_inner();
    let config: Option<Value> = status.info.get("config").and_then(|raw| serde_json::from_str(raw).ok());
    if let Some(config) = config.filter(|c| c.get("containerd").is_some()) {
        return containerd_root(&config, handler);
    }
    let text = get(socket, "/config").await?;
    let config: toml::Table = toml::from_str(&text).map_err(|e| format!("the runtime's /config: {e}"))?;
    crio_root(&config, handler)
}

fn containerd_root(config: &Value, handler: &str) -> Result<PathBuf, String> {
    let containerd = &config["containerd"];
    let name = if handler.is_empty() {
        containerd["defaultRuntimeName"].as_str().unwrap_or("runc")
    } else {
        handler
    };
    let runtime = &containerd["runtimes"][name];
    if runtime.is_null() {
        return Err(format!("containerd has no runtime handler {name:?}"));
    }
    let root = runtime["options"]["Root"]
        .as_str()
        .filter(|root| !root.is_empty())
        .unwrap_or(CONTAINERD_DEFAULT_ROOT);
    Ok(Path::new(root).join(CONTAINERD_NAMESPACE))
}

fn crio_root(config: &toml::Table, handler: &str) -> Result<PathBuf, String> {
    let runtime = config
        .get("crio")
        .and_then(|c| c.get("runtime"))
        .ok_or("the runtime's /config has no [crio.runtime]")?;
    let name = if handler.is_empty() {
        runtime
            .get("default_runtime")
            .and_then(|v| v.as_str())
            .unwrap_or("runc")
    } else {
        handler
    };
    let entry = runtime
        .get("runtimes")
        .and_then(|r| r.get(name))
        .ok_or_else(|| format!("CRI-O has no runtime handler {name:?}"))?;
    entry
        .get("runtime_root")
        .and_then(|v| v.as_str())
        .filter(|root| !root.is_empty())
        .map(PathBuf::from)
        .ok_or_else(|| format!("CRI-O's handler {name:?} names no runtime_root"))
}

/// A plain HTTP GET over the runtime's unix socket.
async fn get(socket: &Path, path: &str) -> Result<String, String> {
    let fail = |e: &dyn std::fmt::Display| format!("GET {path} on {}: {e}", socket.display());
    let stream = tokio::net::UnixStream::connect(socket).await.map_err(|e| fail(&e))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| fail(&e))?;
    tokio::spawn(connection);
    let request = http::Request::get(path)
        .header(http::header::HOST, "localhost")
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|e| fail(&e))?;
    let response = sender.send_request(request).await.map_err(|e| fail(&e))?;
    if !response.status().is_success() {
        return Err(fail(&response.status()));
    }
    let body = response.into_body().collect().await.map_err(|e| fail(&e))?.to_bytes();
    String::from_utf8(body.to_vec()).map_err(|e| fail(&e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn containerd_roots_come_from_the_shim_options() {
        // As containerd 1.7 reports them in a verbose Status.
        let config = json!({"containerd": {
            "defaultRuntimeName": "runc",
            "runtimes": {
                "runc": {"options": {"SystemdCgroup": false}},
                "gvisor": {"options": {"BinaryName": "podckpt-runsc", "Root": "/run/x/runsc"}},
            }
        }});
        assert_eq!(
            containerd_root(&config, "").unwrap(),
            Path::new("/run/containerd/runc/k8s.io")
        );
        assert_eq!(
            containerd_root(&config, "gvisor").unwrap(),
            Path::new("/run/x/runsc/k8s.io")
        );
        assert!(containerd_root(&config, "nope").unwrap_err().contains("\"nope\""));
    }

    #[test]
    fn crio_roots_come_from_runtime_root() {
        // As CRI-O 1.37 serves /config.
        let config: toml::Table = toml::from_str(
            r#"
            [crio.runtime]
            default_runtime = "runc"
            [crio.runtime.runtimes.runc]
            runtime_path = "/usr/sbin/runc"
            runtime_root = "/run/tb/crio/runc"
            [crio.runtime.runtimes.crun]
            runtime_root = "/run/crun"
            "#,
        )
        .unwrap();
        assert_eq!(crio_root(&config, "").unwrap(), Path::new("/run/tb/crio/runc"));
        assert_eq!(crio_root(&config, "crun").unwrap(), Path::new("/run/crun"));
        assert!(crio_root(&config, "podckpt").is_err());
    }
}
