//! Checkpointer backends: what captures one container, behind a trait so
//! that pod orchestration never knows whether CRIU, runsc or QEMU does it.

pub mod runc;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A container as a backend sees it: the id its low-level runtime knows it by.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRef {
    pub id: String,
}

/// The CRIU options users ask for most, from the CheckpointPod options map.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptureOptions {
    /// Dump established TCP connections (CRIU --tcp-established).
    pub tcp_established: bool,
    /// Dump held file locks (CRIU --file-locks).
    pub file_locks: bool,
    /// Skip connections still being set up (CRIU --tcp-skip-in-flight).
    pub tcp_skip_in_flight: bool,
}

/// Where one container's capture goes.
pub struct CaptureDirs<'a> {
    /// The process images (the container folder's `checkpoint/`).
    pub images: &'a Path,
    /// Scratch space for the backend's logs and statistics.
    pub work: &'a Path,
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("cannot run {binary}: {source}")]
    Spawn { binary: PathBuf, source: std::io::Error },
    #[error("{binary} {action} {container} failed ({status}): {stderr}")]
    Failed {
        binary: PathBuf,
        action: &'static str,
        container: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("{0}")]
    Unsupported(String),
}

/// One checkpoint technology. Pod-level steps default to the container-level
/// ones in turn; a backend that can freeze a whole sandbox at once (a VM)
/// overrides them.
#[tonic::async_trait]
pub trait Checkpointer: Send + Sync {
    /// A short name for logs and the manifest, such as `criu-runc`.
    fn name(&self) -> &str;

    /// The version of the capture engine, recorded in the manifest.
    async fn engine_version(&self) -> Result<String, BackendError>;

    async fn pause(&self, container: &ContainerRef) -> Result<(), BackendError>;

    async fn resume(&self, container: &ContainerRef) -> Result<(), BackendError>;

    /// Captures a paused container and leaves it paused.
    async fn capture(
        &self,
        container: &ContainerRef,
        dirs: &CaptureDirs<'_>,
        options: &CaptureOptions,
    ) -> Result<(), BackendError>;

    /// Pauses every container, or none: on a failure the ones already paused
    /// are resumed before the error is returned.
    async fn pause_pod(&self, containers: &[ContainerRef]) -> Result<(), BackendError> {
        for (i, container) in containers.iter().enumerate() {
            if let Err(err) = self.pause(container).await {
                self.resume_pod(&containers[..i]).await;
                return Err(err);
            }
        }
        Ok(())
    }

    /// Resumes every container, trying all of them even when some fail.
    async fn resume_pod(&self, containers: &[ContainerRef]) -> Vec<BackendError> {
        let mut failures = Vec::new();
        for container in containers {
            if let Err(err) = self.resume(container).await {
                tracing::error!(container = %container.id, error = %err, "resume failed");
                failures.push(err);
            }
        }
        failures
    }
}
