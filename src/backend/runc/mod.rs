//! CRIU through an OCI runtime's own checkpoint and restore commands (runc,
//! or crun, which takes the same arguments).

mod criu_log;
mod freezer;
mod image;
pub mod lazy;
mod pstree;
mod restore;
mod sockets;
pub mod tree;

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use tracing::{debug, warn};

use super::{
    BackendError, CaptureDirs, CaptureOptions, Checkpointer, ContainerRef, PauseFailed, RestoreError, RestoreRequest,
    Restored, Unfit, command,
};

/// The CRIU configuration file podckpt writes into a dump's work directory
/// and names in `CRIU_CONFIG_FILE`, which CRIU reads in runc's and crun's
/// RPC mode too, before the node's own `/etc/criu/runc.conf` (whose
/// settings still win).
const CRIU_CONFIG: &str = "podckpt-criu.conf";

/// That file, for a dump without CRIU's network lock.
pub const NO_NETWORK_LOCK: &str = "network-lock skip\n";

/// The state directory containerd's runc shim uses for CRI containers.
/// Inside the bundle: CRIU's work directory for a restore (its log, the
/// lazy-pages socket and logs). The runtime removes it with the bundle.
pub const RESTORE_WORK_DIR: &str = "podckpt-restore";
pub const CONTAINERD_RUNC_ROOT: &str = "/run/containerd/runc/k8s.io";

pub struct OciRuntimeCheckpointer {
    name: String,
    binary: PathBuf,
    root: PathBuf,
    /// CRIU's version as `engine_version` last read it (every checkpoint
    /// asks before it pauses anything): what CRIU options the dump may use.
    engine: Mutex<Option<String>>,
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
            engine: Mutex::new(None),
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
        command::run(&self.binary, &self.root, action, &container.id, extra, &[]).await
    }

    /// The freezer of each of `containers`, when every one is known.
    fn freezers(containers: &[ContainerRef]) -> Option<Vec<freezer::Freezer>> {
        containers
            .iter()
            .map(|c| c.pid.and_then(freezer::Freezer::of))
            .collect()
    }

    /// Whether this dump of `container` (frozen) can go without CRIU's
    /// network lock: it would guard nothing (no TCP socket), and this CRIU
    /// knows how to skip it. The lock's rules take two `iptables-restore`
    /// runs inside the freeze window, 60 to 90 ms here, and while they hold
    /// they drop every packet of the pod's shared network namespace, other
    /// containers' and UDP too. CRIU records the choice in the checkpoint,
    /// so its restore skips the lock as well.
    fn skips_network_lock(&self, container: &ContainerRef) -> bool {
        let engine = self.engine.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let Some(pid) = container.pid else {
            return false;
        };
        engine.is_some_and(|v| sockets::engine_skips_network_lock(&v)) && sockets::network_lock_guards_nothing(pid)
    }
}

#[tonic::async_trait]
impl Checkpointer for OciRuntimeCheckpointer {
    fn name(&self) -> &str {
        &self.name
    }

    async fn engine_version(&self) -> Result<String, BackendError> {
        let version = command::version(Path::new("criu"), "Version:").await;
        *self.engine.lock().unwrap_or_else(|p| p.into_inner()) = version.as_ref().ok().cloned();
        version
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

    /// Through the containers' freezers, all at once (see `freezer`); the
    /// runtime's own pause, one by one, when a freezer is unknown or fails.
    async fn pause_pod(&self, containers: &[ContainerRef]) -> Result<(), PauseFailed> {
        if let Some(freezers) = Self::freezers(containers) {
            match freezer::freeze_all(&freezers, freezer::SETTLE_LIMIT).await {
                Ok(()) => return Ok(()),
                Err(error) => warn!(%error, "freezing the pod's cgroups failed; pausing through the runtime instead"),
            }
        }
        super::pause_each(self, containers).await
    }

    /// Thaws each container's freezer; one that is unknown or cannot be
    /// written is resumed through the runtime, which says why if it fails.
    async fn resume_pod(&self, containers: &[ContainerRef]) -> Vec<BackendError> {
        let mut left = Vec::new();
        for container in containers {
            let thawed = container.pid.and_then(freezer::Freezer::of).map(|f| f.thaw());
            match thawed {
                Some(Ok(())) => {}
                Some(Err(error)) => {
                    debug!(container = %container.id, %error, "thawing the freezer failed; resuming through the runtime");
                    left.push(container.clone());
                }
                None => left.push(container.clone()),
            }
        }
        super::resume_each(self, &left).await
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
        let config = dirs.work.join(CRIU_CONFIG);
        let mut env: Vec<(&str, &std::ffi::OsStr)> = Vec::new();
        if self.skips_network_lock(container) {
            match std::fs::write(&config, NO_NETWORK_LOCK) {
                Ok(()) => {
                    env.push(("CRIU_CONFIG_FILE", config.as_os_str()));
                    debug!(container = %container.id, "no TCP socket: CRIU dumps it without its network lock");
                }
                // Only slower: the lock is CRIU's default.
                Err(error) => {
                    warn!(path = %config.display(), %error, "cannot write CRIU's config; it locks the network")
                }
            }
        }
        let dumped = command::run(&self.binary, &self.root, "checkpoint", &container.id, &args, &env).await;
        match dumped {
            // runc's own words are "criu failed: type NOTIFY errno 0" and
            // the path of a log that goes with the failed checkpoint; CRIU's
            // log says why.
            Err(BackendError::Failed {
                binary, status, stderr, ..
            }) => {
                let log = dirs.work.join(crate::archive::DUMP_LOG);
                let text = std::fs::read_to_string(&log).ok();
                let why = text
                    .as_deref()
                    .map(criu_log::last_errors)
                    .filter(|why| !why.is_empty())
                    .unwrap_or(stderr);
                Err(BackendError::CaptureFailed {
                    binary,
                    container: container.id.clone(),
                    status,
                    why,
                    log: text.is_some().then_some(log),
                })
            }
            other => other,
        }
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

    fn unfit(&self, init_pid: u32, options: &CaptureOptions, engine_version: &str) -> Vec<Unfit> {
        let mut found = Vec::new();
        let missed = tree::left_out(init_pid, &tree::Proc);
        if !missed.is_empty() {
            found.push(Unfit {
                check: "processes",
                reason: tree::left_out_reason(&missed),
            });
        }
        let inodes = sockets::container_socket_inodes(init_pid);
        let tcp = sockets::tcp(&sockets::tables(init_pid), &inodes);
        let release = nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default();
        let listed = |sockets: &[&sockets::TcpSocket]| -> String {
            let shown: Vec<&str> = sockets.iter().take(4).map(|s| s.description.as_str()).collect();
            format!("{} TCP socket(s): {}", sockets.len(), shown.join(", "))
        };
        let all: Vec<&sockets::TcpSocket> = tcp.iter().collect();
        let connected: Vec<&sockets::TcpSocket> = tcp.iter().filter(|s| s.connected).collect();
        if !all.is_empty() && !engine_version.is_empty() && !sockets::engine_saves_tcp(engine_version, &release) {
            found.push(Unfit {
                check: "tcp-sockets",
                reason: format!(
                    "holds {}, and this node's CRIU {engine_version} cannot save TCP sockets on its kernel {release}: from 6.16 the kernel refuses SO_PASSSEC on them, which CRIU asks for before 4.2; install CRIU 4.2 or later on the node",
                    listed(&all)
                ),
            });
        } else if !connected.is_empty() && !options.tcp_established {
            found.push(Unfit {
                check: "tcp-connections",
                reason: format!(
                    "holds {} connected, which CRIU saves only when asked: checkpoint it with the option podckpt.io/tcp-established=true (they are restored too), or close them first",
                    listed(&connected)
                ),
            });
        }
        found
    }

    fn highest_pid(&self, checkpoint: &Path) -> Result<Option<u32>, RestoreError> {
        let image = checkpoint
            .join(crate::archive::CHECKPOINT_DIR)
            .join(pstree::PSTREE_IMAGE);
        pstree::highest_pid(&image).map(Some)
    }
}
