//! gVisor: `runsc checkpoint` saves a whole sandbox, every container of it
//! stopped together, into one image, with each container's writable layer
//! (it lives in sandbox memory, `--overlay2=root:memory`). Pod consistency
//! comes with it; a subset of the pod's containers cannot be captured.

use std::path::PathBuf;

use tokio::process::Command;

use super::{
    BackendError, CaptureDirs, CaptureOptions, Checkpointer, ContainerRef, RestoreError, RestoreRequest, Restored,
    command,
};

/// The state root containerd's runc shim gives runsc for the test bed's and
/// contrib's gVisor handler (its `Root` option plus the namespace).
pub const CONTAINERD_RUNSC_ROOT: &str = "/run/containerd/runsc/k8s.io";

pub struct RunscCheckpointer {
    binary: PathBuf,
    root: PathBuf,
}

impl RunscCheckpointer {
    pub fn new(binary: impl Into<PathBuf>, root: impl Into<PathBuf>) -> Self {
        Self {
            binary: binary.into(),
            root: root.into(),
        }
    }
}

#[tonic::async_trait]
impl Checkpointer for RunscCheckpointer {
    fn name(&self) -> &str {
        "runsc"
    }

    async fn engine_version(&self) -> Result<String, BackendError> {
        let output = Command::new(&self.binary)
            .arg("--version")
            .output()
            .await
            .map_err(|source| BackendError::Spawn {
                binary: self.binary.clone(),
                source,
            })?;
        let text = String::from_utf8_lossy(&output.stdout);
        text.lines()
            .find_map(|l| l.strip_prefix("runsc version "))
            .map(|v| v.trim().to_owned())
            .ok_or_else(|| BackendError::Unsupported(format!("cannot read the runsc version from {text:?}")))
    }

    // `runsc checkpoint` stops the whole sandbox itself while it saves and
    // lets it go on afterwards; pausing it first would only add a
    // round trip to the freeze.
    async fn pause(&self, _container: &ContainerRef) -> Result<(), BackendError> {
        Ok(())
    }

    async fn resume(&self, _container: &ContainerRef) -> Result<(), BackendError> {
        Ok(())
    }

    async fn capture(
        &self,
        container: &ContainerRef,
        _dirs: &CaptureDirs<'_>,
        _options: &CaptureOptions,
    ) -> Result<(), BackendError> {
        Err(BackendError::Unsupported(format!(
            "gVisor saves whole sandboxes, not container {} alone",
            container.id
        )))
    }

    fn captures_sandbox(&self) -> bool {
        true
    }

    async fn capture_sandbox(
        &self,
        sandbox: &ContainerRef,
        dirs: &CaptureDirs<'_>,
        options: &CaptureOptions,
    ) -> Result<(), BackendError> {
        if *options != CaptureOptions::default() {
            return Err(BackendError::Unsupported(
                "the podckpt.io/tcp-* and file-locks options are CRIU's; gVisor saves its own network stack and locks".into(),
            ));
        }
        let extra = [
            "--image-path".as_ref(),
            dirs.images.as_os_str(),
            "--leave-running".as_ref(),
        ];
        command::run(&self.binary, &self.root, "checkpoint", &sandbox.id, &extra).await
    }

    fn restore(&self, _request: &RestoreRequest<'_>) -> Result<Restored, RestoreError> {
        Err(RestoreError::Io(
            "restoring a gVisor sandbox through podckpt-runsc is not built yet".into(),
        ))
    }
}
