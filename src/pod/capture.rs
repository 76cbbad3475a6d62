//! Capturing the paused containers of a pod: each one's process images
//! through the backend, its writable-layer changes and its dump files.
//! Containers are captured side by side, up to one per core, so a pod costs
//! less than its containers one after another. Each folder is hashed as soon
//! as it is complete, in the background: hashing is not capturing, so the
//! pod need not stay paused for it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::Semaphore;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tracing::{error, info, warn};

use super::error::PodError;
use super::kept_logs::KeptLogs;
use crate::api::cri;
use crate::archive::{self, ContainerConfigDump, FileEntry, ProcessRecord, rootfs_diff};
use crate::backend::{BackendError, CaptureDirs, CaptureOptions, Checkpointer, ContainerRef};

/// How long a capture may run on past the deadline before it is killed.
/// CRIU cannot be stopped safely halfway (its parasite code is running
/// inside the process), so a capture under way is let finish; only one that
/// hangs this long is killed, to resume the pod at last.
pub const CAPTURE_OVERRUN: Duration = Duration::from_secs(60);

const UNDONE: &str = "every container was resumed and the partial output removed";

/// One container to capture, with what the runtime told us about it.
pub struct Target {
    pub status: cri::ContainerStatus,
    /// The runtime's verbose info: pid, runtimeSpec, and on containerd config.
    pub info: Value,
    /// The image's OCI config (entrypoint, cmd, env), where the runtime
    /// reports no container config: what resolves a config into the spec.
    pub image_config: Option<Value>,
}

impl Target {
    pub fn id(&self) -> &str {
        &self.status.id
    }

    pub fn name(&self) -> &str {
        self.status
            .metadata
            .as_ref()
            .map(|m| m.name.as_str())
            .unwrap_or_default()
    }

    pub fn folder(&self) -> String {
        archive::container_dir_name(self.id(), self.name())
    }

    pub fn pid(&self) -> u32 {
        self.info.get("pid").and_then(Value::as_u64).unwrap_or_default() as u32
    }

    /// The container as its backend sees it, with its first process when
    /// the runtime reported one.
    pub fn container_ref(&self) -> ContainerRef {
        ContainerRef {
            id: self.id().to_owned(),
            pid: Some(self.pid()).filter(|pid| *pid != 0),
        }
    }
}

/// What every capture of one checkpoint shares.
#[derive(Clone)]
pub struct Capture {
    pub backend: Arc<dyn Checkpointer>,
    /// The checkpoint directory the container folders go in.
    pub root: PathBuf,
    pub options: CaptureOptions,
    pub checkpointed_at: String,
    pub deadline: Instant,
    pub limit: Duration,
    /// Where the logs of failed captures are kept.
    pub kept_logs: KeptLogs,
}

impl Capture {
    /// Captures every target, and returns the hashing of their folders, still
    /// under way. Past the deadline no capture starts; those under way finish
    /// (see `CAPTURE_OVERRUN`) and the result is DEADLINE_EXCEEDED. The first
    /// error wins, but only once every capture has ended: the others are never
    /// cut off halfway through a dump.
    pub async fn all(&self, targets: Vec<Arc<Target>>) -> Result<Hashing, PodError> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let permits = Arc::new(Semaphore::new(cores));
        let mut tasks = JoinSet::new();
        for target in targets {
            let (capture, permits) = (self.clone(), permits.clone());
            tasks.spawn(async move {
                let _permit = permits.acquire_owned().await.expect("the semaphore is never closed");
                capture.one(&target).await
            });
        }
        let mut hashing = Hashing(Vec::new());
        let mut first_error = None;
        loop {
            match tokio::time::timeout_at(self.deadline + CAPTURE_OVERRUN, tasks.join_next()).await {
                Ok(None) => break,
                Ok(Some(Ok(Ok(folder)))) => hashing.0.push(folder),
                Ok(Some(Ok(Err(err)))) => {
                    first_error.get_or_insert(err);
                }
                Ok(Some(Err(join))) => {
                    first_error.get_or_insert(PodError::task("capture")(join));
                }
                Err(_) => {
                    error!(
                        overrun_s = CAPTURE_OVERRUN.as_secs(),
                        "a capture hung past the deadline; killing it so the pod can be resumed; its process may be damaged"
                    );
                    // Dropping a capture kills its runtime and CRIU.
                    tasks.shutdown().await;
                    first_error.get_or_insert(self.deadline_exceeded());
                    break;
                }
            }
        }
        match first_error {
            Some(err) => Err(err),
            None if Instant::now() >= self.deadline => Err(self.deadline_exceeded()),
            None => Ok(hashing),
        }
    }

    /// A failed capture as the caller hears of it: the engine's own reason,
    /// its whole log kept (the output directory is emptied), and a code
    /// that says whether the caller can change what failed it.
    fn explain(&self, target: &Target, err: BackendError) -> PodError {
        let BackendError::CaptureFailed { why, log, .. } = &err else {
            return err.into();
        };
        let kept = log.as_deref().map(|log| self.kept_logs.keep(log, target.id()));
        let kept_note = match &kept {
            Some(Ok(path)) => format!("; CRIU's whole log is kept at {}", path.display()),
            Some(Err(e)) => format!("; CRIU's log could not be kept: {e}"),
            None => String::new(),
        };
        warn!(
            container = %target.id(),
            name = target.name(),
            %why,
            kept = ?kept.as_ref().and_then(|k| k.as_ref().ok()),
            "capture failed"
        );
        let said = format!(
            "container {} ({}): CRIU could not checkpoint it: {why}",
            target.name(),
            target.id()
        );
        match caller_can_change(why) {
            Some(hint) => PodError::FailedPrecondition(format!("{said}; {hint}{kept_note}")),
            None => PodError::Internal(format!("{said}{kept_note}")),
        }
    }

    pub fn deadline_exceeded(&self) -> PodError {
        PodError::DeadlineExceeded {
            limit: self.limit,
            undone: UNDONE,
        }
    }

    async fn one(&self, target: &Target) -> Result<HashTask, PodError> {
        if Instant::now() >= self.deadline {
            return Err(self.deadline_exceeded());
        }
        let started = Instant::now();
        let folder_name = target.folder();
        let folder = self.root.join(&folder_name);
        if self.backend.captures_sandbox() {
            // The processes and the writable layer are in the sandbox's
            // image (`sandbox`); the folder describes the container.
            archive::create_private_dir(&folder)?;
            write_container_files(&folder, target, &self.checkpointed_at)?;
            return Ok(hash_folder(folder, folder_name));
        }
        let images = folder.join(archive::CHECKPOINT_DIR);
        let work = self.root.join(format!(".work-{}", target.id()));
        for dir in [&folder, &images, &work] {
            archive::create_private_dir(dir)?;
        }
        write_container_files(&folder, target, &self.checkpointed_at)?;
        let container = target.container_ref();
        let dirs = CaptureDirs {
            images: &images,
            work: &work,
        };
        // The writable layer is saved while the engine dumps the processes:
        // the container is frozen for both, and neither writes what the
        // other reads, so they need not take turns inside the freeze window.
        let (pid, id, diff_folder) = (target.pid(), target.id().to_owned(), folder.clone());
        let diff = tokio::task::spawn_blocking(move || -> Result<(), PodError> {
            let upper = rootfs_diff::upper_dir_of(pid)?.ok_or_else(|| {
                PodError::FailedPrecondition(format!(
                    "container {id}: its root file system is not an overlay; cannot capture its changes"
                ))
            })?;
            rootfs_diff::write(
                &upper,
                &diff_folder.join(archive::ROOTFS_DIFF),
                &diff_folder.join(archive::DELETED_FILES),
            )?;
            Ok(())
        });
        let dumped = self.backend.capture(&container, &dirs, &self.options).await;
        let dumped_ms = started.elapsed().as_millis() as u64;
        // Awaited even when the dump failed, so nothing is still writing
        // into the folder when the failed checkpoint is removed.
        let diffed = diff.await.map_err(PodError::task("rootfs diff"));
        if let Err(err) = dumped {
            return Err(self.explain(target, err));
        }
        diffed??;
        for name in [archive::DUMP_LOG, archive::STATS_DUMP] {
            let from = work.join(name);
            if from.exists() {
                std::fs::rename(&from, folder.join(name)).map_err(archive::ArchiveError::io(&from))?;
            }
        }
        std::fs::remove_dir_all(&work).map_err(archive::ArchiveError::io(&work))?;
        if Instant::now() >= self.deadline {
            warn!(container = %target.id(), "deadline passed while the container was dumped");
            return Err(self.deadline_exceeded());
        }
        info!(
            container = %target.id(),
            name = target.name(),
            dump_ms = dumped_ms,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "container captured"
        );
        Ok(hash_folder(folder, folder_name))
    }

    /// Captures the whole sandbox `pod_id` into `sandbox/`, for a backend
    /// that `captures_sandbox`, and starts hashing it.
    pub async fn sandbox(&self, pod_id: &str) -> Result<HashTask, PodError> {
        let folder = self.root.join(archive::SANDBOX_DIR);
        let work = self.root.join(".work-sandbox");
        archive::create_private_dir(&folder)?;
        archive::create_private_dir(&work)?;
        let started = Instant::now();
        let sandbox = ContainerRef::id(pod_id);
        let dirs = CaptureDirs {
            images: &folder,
            work: &work,
        };
        let captured = tokio::time::timeout_at(
            self.deadline + CAPTURE_OVERRUN,
            self.backend.capture_sandbox(&sandbox, &dirs, &self.options),
        )
        .await;
        std::fs::remove_dir_all(&work).map_err(archive::ArchiveError::io(&work))?;
        captured.map_err(|_| self.deadline_exceeded())??;
        if Instant::now() >= self.deadline {
            return Err(self.deadline_exceeded());
        }
        info!(
            pod = pod_id,
            dump_ms = started.elapsed().as_millis() as u64,
            "sandbox captured"
        );
        Ok(hash_folder(folder, archive::SANDBOX_DIR.to_owned()))
    }
}

/// What the caller can do about a capture CRIU refused, when the reason
/// is the container's, not the node's: CRIU's own wording, from its source.
fn caller_can_change(why: &str) -> Option<&'static str> {
    if why.contains("--tcp-established") {
        Some(
            "it holds established TCP connections: checkpoint it with the option podckpt.io/tcp-established=true to save them (they are restored too), or close them first",
        )
    } else if why.contains("--file-locks") {
        Some("it holds file locks: checkpoint it with the option podckpt.io/file-locks=true to save them")
    } else if why.contains("External socket is used") {
        Some("it holds a Unix socket connected to a peer outside the container, which a checkpoint cannot carry")
    } else if why.contains("Can't dump ghost file") {
        Some(
            "it holds open a deleted file larger than CRIU saves (1 MiB): have it close the file, or keep the file, before the checkpoint",
        )
    } else {
        None
    }
}

type HashTask = JoinHandle<Result<Entries, PodError>>;

/// Hashes a folder that is complete and never written again. Its modes are
/// made private before it is hashed, not at commit (see `Seals`).
fn hash_folder(folder: PathBuf, name: String) -> HashTask {
    tokio::task::spawn_blocking(move || {
        archive::restrict_modes(&folder)?;
        Ok(archive::digest_tree(&folder, &name)?)
    })
}

type Entries = BTreeMap<String, FileEntry>;

/// The hashing of the captured folders, under way. Dropped, it runs on
/// into a checkpoint directory that is being emptied, and nothing reads it.
pub struct Hashing(Vec<HashTask>);

impl Hashing {
    pub fn push(&mut self, task: HashTask) {
        self.0.push(task);
    }

    /// The manifest entries of every captured folder.
    pub async fn finish(self) -> Result<Entries, PodError> {
        let mut entries = BTreeMap::new();
        for task in self.0 {
            entries.extend(task.await.map_err(PodError::task("hashing"))??);
        }
        Ok(entries)
    }
}

fn write_container_files(folder: &std::path::Path, target: &Target, checkpointed_at: &str) -> Result<(), PodError> {
    let status = &target.status;
    let image = status.image.as_ref().map(|i| i.image.clone()).unwrap_or_default();
    let created = std::time::UNIX_EPOCH + Duration::from_nanos(status.created_at.max(0) as u64);
    let config = ContainerConfigDump {
        id: status.id.clone(),
        name: target.name().to_owned(),
        rootfs_image_name: image,
        rootfs_image_ref: status.image_ref.clone(),
        oci_runtime: target
            .info
            .get("runtimeType")
            .and_then(Value::as_str)
            .unwrap_or("runc")
            .to_owned(),
        created_time: humantime::format_rfc3339_seconds(created).to_string(),
        checkpointed_at: checkpointed_at.to_owned(),
    };
    archive::write_json(&folder.join(archive::CONFIG_DUMP), &config)?;
    archive::write_json(
        &folder.join(archive::SPEC_DUMP),
        target.info.get("runtimeSpec").unwrap_or(&Value::Null),
    )?;
    archive::write_json(&folder.join(archive::STATUS_DUMP), status)?;
    let config = target.info.get("config");
    let spec = target.info.get("runtimeSpec");
    if config.is_none() && spec.is_none() {
        warn!(
            container = %status.id,
            "the runtime reported neither the container's config nor its spec; a restore of this checkpoint cannot be validated and will be refused"
        );
    }
    let record = ProcessRecord::from_runtime(status, config, spec, target.image_config.as_ref()).map_err(|e| {
        PodError::Internal(format!(
            "container {}: the runtime's copy of its config is unreadable: {e}",
            status.id
        ))
    })?;
    archive::write_json(&folder.join(archive::PROCESS_RECORD), &record)?;
    Ok(())
}
