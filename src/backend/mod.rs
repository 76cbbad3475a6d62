//! Checkpointer backends: what captures a container and what brings it
//! back, behind one trait, so that neither pod orchestration (podckptd) nor
//! the OCI runtime wrapper (podckpt-runc) knows whether CRIU, runsc or QEMU
//! does it.

mod command;
pub mod runc;
pub mod runsc;

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// A container as a backend sees it: the id its low-level runtime knows it
/// by, and its first process on the node where the caller knows it (what
/// lets a backend reach the container's cgroup and sockets without asking
/// the runtime).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRef {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
}

impl ContainerRef {
    /// A container, or a sandbox, known by its id alone.
    pub fn id(id: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            pid: None,
        }
    }
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

/// Why a running container cannot be captured as it is: the pre-flight
/// check that reports it, and the reason, for a person.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unfit {
    pub check: &'static str,
    pub reason: String,
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
    /// The engine (CRIU) failed to capture a container: its own last
    /// errors, and its whole log while it can still be read (in the
    /// capture's work directory, which goes with the failed checkpoint).
    #[error("{binary} checkpoint {container} failed ({status}): {why}")]
    CaptureFailed {
        binary: PathBuf,
        container: String,
        status: std::process::ExitStatus,
        why: String,
        log: Option<PathBuf>,
    },
    #[error("{0}")]
    Unsupported(String),
    #[error("`{command}` failed ({status}): {output}")]
    CheckFailed {
        command: String,
        status: std::process::ExitStatus,
        output: String,
    },
}

/// A pod that could not be paused whole: why, and the containers paused
/// before it that could not be resumed again.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct PauseFailed {
    pub error: BackendError,
    pub still_paused: Vec<BackendError>,
}

/// The backend named `backend` (a handler config's `backend`), driving
/// `runtime` with its state in `root`: the one place that knows them all,
/// for podckptd's handlers and for the wrapper's restore alike.
pub fn for_handler(backend: &str, runtime: &Path, root: &Path) -> Result<Arc<dyn Checkpointer>, String> {
    match backend {
        "criu" => Ok(Arc::new(runc::OciRuntimeCheckpointer::new(runtime, root))),
        "runsc" => Ok(Arc::new(runsc::RunscCheckpointer::new(runtime, root))),
        other => Err(format!("unknown backend {other:?} (supported: criu, runsc)")),
    }
}

/// A `create` that the OCI runtime wrapper turns into a restore: what the
/// shim asked for, and the checkpoint folder that a trusted token named.
pub struct RestoreRequest<'a> {
    /// The container's folder in a verified pod checkpoint.
    pub checkpoint: &'a Path,
    pub bundle: &'a Path,
    /// The bundle's root file system, as its spec names it.
    pub rootfs: &'a Path,
    /// The OCI runtime's global flags, exactly as the shim gave them.
    pub global: &'a [OsString],
    pub id: &'a OsStr,
    pub pid_file: Option<&'a OsStr>,
    pub console_socket: Option<&'a OsStr>,
    pub no_pivot: bool,
    /// Memory on first touch, if the backend can (see
    /// `Checkpointer::restores_lazily`).
    pub lazy_pages: bool,
}

/// What a restore reports back.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Restored {
    /// How long the engine's own restore command took: the bare baseline
    /// that podckpt's restore is measured against.
    pub engine_seconds: f64,
}

/// How a `Mismatch` begins, wherever it surfaces (in the runtime's answer
/// to CreateContainer, for one): podckptd recognises it there.
pub const MISMATCH: &str = "the new container cannot hold the checkpointed one";

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("bad checkpoint: {0}")]
    BadCheckpoint(#[from] crate::archive::ArchiveError),
    #[error("{0}")]
    Io(String),
    #[error("{MISMATCH}: {0}")]
    Mismatch(String),
    #[error("{runtime} restore failed ({status}){}", if .why.is_empty() { String::new() } else { format!(": {}", .why) })]
    Failed {
        runtime: PathBuf,
        status: std::process::ExitStatus,
        /// The engine's own account of the failure (CRIU's last errors).
        why: String,
    },
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

    /// The engine's own check that this node can checkpoint (`criu check`):
    /// what it said when it passed, or None when the engine has no such check.
    async fn engine_check(&self) -> Result<Option<String>, BackendError> {
        Ok(None)
    }

    async fn pause(&self, container: &ContainerRef) -> Result<(), BackendError>;

    async fn resume(&self, container: &ContainerRef) -> Result<(), BackendError>;

    /// Captures a paused container and leaves it paused.
    async fn capture(
        &self,
        container: &ContainerRef,
        dirs: &CaptureDirs<'_>,
        options: &CaptureOptions,
    ) -> Result<(), BackendError>;

    /// Why this backend cannot capture with `options`, if it cannot. The
    /// options are the caller's choice, so CheckpointPod asks before it
    /// pauses anything and answers FAILED_PRECONDITION, and the pre-flight
    /// check reports it, rather than a capture failing inside the freeze.
    fn refuse_options(&self, _options: &CaptureOptions) -> Option<String> {
        None
    }

    /// Whether the backend captures a whole sandbox in one image, every
    /// container of it at once (gVisor), rather than each container.
    fn captures_sandbox(&self) -> bool {
        false
    }

    /// Captures the whole sandbox `sandbox` into `dirs.images` and leaves it
    /// running. Only for backends that `captures_sandbox`.
    async fn capture_sandbox(
        &self,
        sandbox: &ContainerRef,
        _dirs: &CaptureDirs<'_>,
        _options: &CaptureOptions,
    ) -> Result<(), BackendError> {
        Err(BackendError::Unsupported(format!(
            "{} captures containers one by one, not sandbox {}",
            self.name(),
            sandbox.id
        )))
    }

    /// Whether a checkpoint can only be restored by the engine version that
    /// took it.
    fn restores_only_own_version(&self) -> bool {
        false
    }

    /// Processes of this backend still checkpointing one of `containers`
    /// that a killed daemon left running; resuming waits for them to end.
    fn checkpoints_in_flight(&self, _containers: &[ContainerRef]) -> Vec<u32> {
        Vec::new()
    }

    /// Whether `restore` can run the process before all of its memory is
    /// back, serving pages on first touch.
    fn restores_lazily(&self) -> bool {
        false
    }

    /// Whether a container whose new OCI spec is `spec` can be brought back
    /// from `checkpoint` (a container folder), checked before anything is
    /// started, so that what cannot work is refused with its reason.
    fn check_restore(&self, _checkpoint: &Path, _spec: &serde_json::Value) -> Result<(), RestoreError> {
        Ok(())
    }

    /// Brings a container back from its checkpoint where the runtime's
    /// `create` would have made it afresh, and leaves it as `create` would:
    /// with its pid in the pid file and nothing left for `start` to do. Runs
    /// in the wrapper, once per container, synchronously.
    fn restore(&self, request: &RestoreRequest<'_>) -> Result<Restored, RestoreError>;

    /// What of the running container whose first process on the node is
    /// `init_pid` a capture with `options`, by the engine of
    /// `engine_version`, would fail on or silently go without; known before
    /// anything is paused. None for a backend that saves whole sandboxes.
    fn unfit(&self, _init_pid: u32, _options: &CaptureOptions, _engine_version: &str) -> Vec<Unfit> {
        Vec::new()
    }

    /// The highest PID the processes of a checkpointed container (`checkpoint`,
    /// its folder) held in their PID namespace. A restore into a namespace
    /// that others share (the pod's) needs every one of them free, so the
    /// new pod's processes are made to take PIDs above it. None for a
    /// backend that restores whole sandboxes, PID namespace and all.
    fn highest_pid(&self, _checkpoint: &Path) -> Result<Option<u32>, RestoreError> {
        Ok(None)
    }

    /// Pauses every container, or none: on a failure the ones already paused
    /// are resumed before the error is returned, with any that could not be.
    async fn pause_pod(&self, containers: &[ContainerRef]) -> Result<(), PauseFailed> {
        pause_each(self, containers).await
    }

    /// Resumes every container, trying all of them even when some fail.
    async fn resume_pod(&self, containers: &[ContainerRef]) -> Vec<BackendError> {
        resume_each(self, containers).await
    }
}

/// `pause_pod` through the backend's own `pause`, one container after another.
pub async fn pause_each<B: Checkpointer + ?Sized>(backend: &B, containers: &[ContainerRef]) -> Result<(), PauseFailed> {
    for (i, container) in containers.iter().enumerate() {
        if let Err(error) = backend.pause(container).await {
            let still_paused = resume_each(backend, &containers[..i]).await;
            return Err(PauseFailed { error, still_paused });
        }
    }
    Ok(())
}

/// `resume_pod` through the backend's own `resume`, every container tried.
pub async fn resume_each<B: Checkpointer + ?Sized>(backend: &B, containers: &[ContainerRef]) -> Vec<BackendError> {
    let mut failures = Vec::new();
    for container in containers {
        if let Err(err) = backend.resume(container).await {
            tracing::error!(container = %container.id, error = %err, "resume failed");
            failures.push(err);
        }
    }
    failures
}
