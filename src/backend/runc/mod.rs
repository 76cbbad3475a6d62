//! CRIU through an OCI runtime's own checkpoint and restore commands (runc,
//! or crun, which takes the same arguments).

pub mod lazy;
mod pstree;
mod restore;
pub mod tree;

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::{
    BackendError, CaptureDirs, CaptureOptions, Checkpointer, ContainerRef, RestoreError, RestoreRequest, Restored,
    command,
};

/// The state directory containerd's runc shim uses for CRI containers.
/// Inside the bundle: CRIU's work directory for a restore (its log, the
/// lazy-pages socket and logs). The runtime removes it with the bundle.
pub const RESTORE_WORK_DIR: &str = "podckpt-restore";
pub const CONTAINERD_RUNC_ROOT: &str = "/run/containerd/runc/k8s.io";

pub struct OciRuntimeCheckpointer {
    name: String,
    binary: PathBuf,
    root: PathBuf,
}

impl OciRuntimeCheckpointer {
    /// `binary` is `runc` or `crun` (or a path to one); `root` its `--root`.
    pub fn new(binary: impl Into<PathBuf>, root: impl Into<PathBuf>) -> Self {
        let binary = binary.into();
        let flavour = binary.file_name().and_then(|n| n.to_str()).unwrap_or("runc").to_owned();
        Self {
            name: format!("criu-{flavour}"),
            binary,
            root: root.into(),
        }
    }

    pub fn binary(&self) -> &Path {
        &self.binary
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    async fn run(
        &self,
        action: &'static str,
        container: &ContainerRef,
        extra: &[&std::ffi::OsStr],
    ) -> Result<(), BackendError> {
        command::run(&self.binary, &self.root, action, &container.id, extra).await
    }
}

#[tonic::async_trait]
impl Checkpointer for OciRuntimeCheckpointer {
    fn name(&self) -> &str {
        &self.name
    }

    async fn engine_version(&self) -> Result<String, BackendError> {
        command::version(Path::new("criu"), "Version:").await
    }

    async fn engine_check(&self) -> Result<Option<String>, BackendError> {
        command::check(Path::new("criu"), &["check"]).await.map(Some)
    }

    async fn pause(&self, container: &ContainerRef) -> Result<(), BackendError> {
        self.run("pause", container, &[]).await
    }

    async fn resume(&self, container: &ContainerRef) -> Result<(), BackendError> {
        self.run("resume", container, &[]).await
    }

    async fn capture(
        &self,
        container: &ContainerRef,
        dirs: &CaptureDirs<'_>,
        options: &CaptureOptions,
    ) -> Result<(), BackendError> {
        let mut args: Vec<&std::ffi::OsStr> = vec![
            "--image-path".as_ref(),
            dirs.images.as_os_str(),
            "--work-path".as_ref(),
            dirs.work.as_os_str(),
            // The pod must keep running; a paused container stays paused.
            "--leave-running".as_ref(),
        ];
        if options.tcp_established {
            args.push("--tcp-established".as_ref());
        }
        if options.file_locks {
            args.push("--file-locks".as_ref());
        }
        if options.tcp_skip_in_flight {
            args.push("--tcp-skip-in-flight".as_ref());
        }
        self.run("checkpoint", container, &args).await
    }

    /// Processes of this runtime still checkpointing one of `containers`,
    /// found by their command lines: ones a killed daemon left running. Until
    /// they end, resuming is undone: CRIU puts the freezer back as it found
    /// it (frozen) when it finishes.
    fn checkpoints_in_flight(&self, containers: &[ContainerRef]) -> Vec<u32> {
        let Some(runtime) = self.binary.file_name() else {
            return Vec::new();
        };
        let Ok(proc) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        proc.filter_map(|e| e.ok())
            .filter_map(|e| {
                let pid: u32 = e.file_name().to_str()?.parse().ok()?;
                let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
                let argv: Vec<&[u8]> = cmdline.split(|b| *b == 0).filter(|a| !a.is_empty()).collect();
                let program = Path::new(std::ffi::OsStr::from_bytes(argv.first()?)).file_name()?;
                let target = argv.last()?;
                let ours = program == runtime
                    && argv.contains(&b"checkpoint".as_slice())
                    && containers.iter().any(|c| c.id.as_bytes() == *target);
                ours.then_some(pid)
            })
            .collect()
    }

    /// runc has `restore --lazy-pages`; crun 1.21 has no such flag.
    fn restores_lazily(&self) -> bool {
        self.name == "criu-runc"
    }

    fn check_restore(&self, checkpoint: &Path, spec: &serde_json::Value) -> Result<(), RestoreError> {
        restore::check_mounts(checkpoint, spec)
    }

    fn restore(&self, request: &RestoreRequest<'_>) -> Result<Restored, RestoreError> {
        self.restore_container(request)
    }

    fn left_out(&self, init_pid: u32) -> Vec<String> {
        tree::left_out(init_pid, &tree::Proc)
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    fn highest_pid(&self, checkpoint: &Path) -> Result<Option<u32>, RestoreError> {
        let image = checkpoint
            .join(crate::archive::CHECKPOINT_DIR)
            .join(pstree::PSTREE_IMAGE);
        pstree::highest_pid(&image).map(Some)
    }
}
