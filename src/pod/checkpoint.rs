//! CheckpointPod: validate everything, then freeze every selected container,
//! capture each, and always resume them all; the output appears only whole.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use tracing::{info, warn};

use super::PodService;
use super::error::PodError;
use super::journal::PausedSet;
use super::options;
use crate::api::cri;
use crate::api::pod::CheckpointPodRequest;
use crate::archive::{self, ContainerConfigDump, Manifest, PodOptions, Staging, rootfs_diff};
use crate::backend::{CaptureDirs, CaptureOptions, ContainerRef};

/// One container to capture, with what the runtime told us about it.
struct Target {
    status: cri::ContainerStatus,
    /// containerd's verbose info: pid, runtimeSpec, config.
    info: Value,
}

impl Target {
    fn id(&self) -> &str {
        &self.status.id
    }
    fn name(&self) -> &str {
        self.status
            .metadata
            .as_ref()
            .map(|m| m.name.as_str())
            .unwrap_or_default()
    }
    fn folder(&self) -> String {
        archive::container_dir_name(self.id(), self.name())
    }
}

impl PodService {
    pub(super) async fn checkpoint(
        &self,
        deadline: Option<Duration>,
        request: CheckpointPodRequest,
    ) -> Result<PathBuf, PodError> {
        let started = Instant::now();
        let deadline = deadline.ok_or_else(|| {
            PodError::InvalidArgument(
                "CheckpointPod needs a deadline on the call: a checkpoint pauses the pod, so it must be bounded".into(),
            )
        })?;
        let capture_options = options::parse(&request.options)?;
        let output = validate_output(&request.output_path)?;
        let pod_id = request.pod_sandbox_id.as_str();
        let pod = self.pod_status(pod_id).await?;
        let backend = self.backend_for(
            pod.status
                .as_ref()
                .map(|s| s.runtime_handler.as_str())
                .unwrap_or_default(),
        )?;
        let targets = self.resolve_containers(pod_id, &request.container_ids).await?;

        let _busy = self.claim(pod_id)?;
        let staging = Staging::create(&output)?;
        let engine_version = backend.checkpointer.engine_version().await?;
        let refs: Vec<ContainerRef> = targets.iter().map(|t| ContainerRef { id: t.id().to_owned() }).collect();
        let paused = PausedSet {
            runtime: backend.config.runtime.clone(),
            root: backend.config.root.clone(),
            containers: refs.clone(),
        };
        let key = self.inner.journal.record(paused)?;
        if let Err(err) = backend.checkpointer.pause_pod(&refs).await {
            self.inner.journal.clear(&key)?;
            return Err(err.into());
        }
        let remaining = deadline.saturating_sub(started.elapsed());
        let captured = tokio::time::timeout(
            remaining,
            capture_all(&*backend.checkpointer, &targets, staging.path(), &capture_options),
        )
        .await;
        let failures = backend.checkpointer.resume_pod(&refs).await;
        if !failures.is_empty() {
            // The journal keeps them, so a restarted daemon tries again.
            let list: Vec<String> = failures.iter().map(|f| f.to_string()).collect();
            return Err(PodError::Internal(format!(
                "could not resume every container: {}",
                list.join("; ")
            )));
        }
        self.inner.journal.clear(&key)?;
        match captured {
            Err(_) => return Err(PodError::DeadlineExceeded(deadline)),
            Ok(result) => result?,
        }

        let checkpointed_at = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        for target in &targets {
            write_container_files(&staging.path().join(target.folder()), target, &checkpointed_at)?;
        }
        write_pod_files(staging.path(), &pod, &targets)?;
        let manifest = Manifest::build(staging.path(), backend.checkpointer.name(), &engine_version, pod_id)?;
        archive::write_json(&staging.path().join(archive::MANIFEST), &manifest)?;
        let done = staging.commit()?;
        info!(
            pod = pod_id,
            containers = targets.len(),
            output = %done.display(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "pod checkpointed"
        );
        Ok(done)
    }

    async fn pod_status(&self, pod_id: &str) -> Result<cri::PodSandboxStatusResponse, PodError> {
        if pod_id.is_empty() {
            return Err(PodError::InvalidArgument("pod_sandbox_id is required".into()));
        }
        let request = cri::PodSandboxStatusRequest {
            pod_sandbox_id: pod_id.into(),
            verbose: true,
        };
        let pod = self
            .runtime()
            .pod_sandbox_status(request)
            .await
            .map_err(PodError::runtime(format!("pod {pod_id}")))?;
        let pod = pod.into_inner();
        let ready = pod
            .status
            .as_ref()
            .is_some_and(|s| s.state == cri::PodSandboxState::SandboxReady as i32);
        if !ready {
            return Err(PodError::FailedPrecondition(format!(
                "pod {pod_id} is not ready; only a running pod can be checkpointed"
            )));
        }
        Ok(pod)
    }

    /// The selected containers, or every running one when none is named.
    async fn resolve_containers(&self, pod_id: &str, wanted: &[String]) -> Result<Vec<Target>, PodError> {
        let filter = cri::ContainerFilter {
            pod_sandbox_id: pod_id.into(),
            ..Default::default()
        };
        let listed = self
            .runtime()
            .list_containers(cri::ListContainersRequest { filter: Some(filter) })
            .await
            .map_err(PodError::runtime(format!("listing the containers of pod {pod_id}")))?
            .into_inner()
            .containers;
        let running = |c: &cri::Container| c.state == cri::ContainerState::ContainerRunning as i32;
        let mut chosen: Vec<&cri::Container> = Vec::new();
        if wanted.is_empty() {
            chosen.extend(listed.iter().filter(|c| running(c)));
            if chosen.is_empty() {
                return Err(PodError::FailedPrecondition(format!(
                    "pod {pod_id} has no running container to checkpoint"
                )));
            }
        }
        for id in wanted {
            let container = listed.iter().find(|c| &c.id == id).ok_or_else(|| {
                PodError::InvalidArgument(format!("container {id} is not a container of pod {pod_id}"))
            })?;
            if !running(container) {
                let state = cri::ContainerState::try_from(container.state)
                    .map(|s| s.as_str_name())
                    .unwrap_or("UNKNOWN");
                return Err(PodError::FailedPrecondition(format!(
                    "container {id} is not running (state {state})"
                )));
            }
            if !chosen.iter().any(|c| &c.id == id) {
                chosen.push(container);
            }
        }
        let mut targets = Vec::with_capacity(chosen.len());
        for container in chosen {
            let request = cri::ContainerStatusRequest {
                container_id: container.id.clone(),
                verbose: true,
            };
            let response = self
                .runtime()
                .container_status(request)
                .await
                .map_err(PodError::runtime(format!("container {}", container.id)))?
                .into_inner();
            let info = response
                .info
                .get("info")
                .map(|raw| serde_json::from_str(raw))
                .transpose()
                .map_err(|e| PodError::Internal(format!("container {}: unreadable runtime info: {e}", container.id)))?;
            let status = response
                .status
                .ok_or_else(|| PodError::Internal(format!("container {} has no status", container.id)))?;
            targets.push(Target {
                status,
                info: info.unwrap_or(Value::Null),
            });
        }
        Ok(targets)
    }
}

fn validate_output(path: &str) -> Result<PathBuf, PodError> {
    if path.is_empty() {
        return Err(PodError::InvalidArgument(
            "output_path is required: an absolute path to an empty directory".into(),
        ));
    }
    let path = PathBuf::from(path);
    if !path.is_absolute() {
        return Err(PodError::InvalidArgument(format!(
            "output_path {} must be absolute",
            path.display()
        )));
    }
    let meta = std::fs::symlink_metadata(&path).map_err(|e| {
        PodError::InvalidArgument(format!(
            "output_path {}: {e}; create an empty directory there first",
            path.display()
        ))
    })?;
    if !meta.is_dir() {
        return Err(PodError::InvalidArgument(format!(
            "output_path {} is not a directory",
            path.display()
        )));
    }
    let mut entries = std::fs::read_dir(&path)
        .map_err(|e| PodError::InvalidArgument(format!("output_path {}: {e}", path.display())))?;
    if entries.next().is_some() {
        return Err(PodError::FailedPrecondition(format!(
            "output_path {} is not empty; give an empty directory so nothing is overwritten",
            path.display()
        )));
    }
    Ok(path)
}

/// Captures each (already paused) container: process images through the
/// backend, then its writable-layer changes.
async fn capture_all(
    backend: &dyn crate::backend::Checkpointer,
    targets: &[Target],
    root: &Path,
    options: &CaptureOptions,
) -> Result<(), PodError> {
    for target in targets {
        let folder = root.join(target.folder());
        let images = folder.join(archive::CHECKPOINT_DIR);
        let work = root.join(format!(".work-{}", target.id()));
        for dir in [&folder, &images, &work] {
            std::fs::DirBuilder::new()
                .mode(archive::DIR_MODE)
                .create(dir)
                .map_err(archive::ArchiveError::io(dir))?;
        }
        let container = ContainerRef {
            id: target.id().to_owned(),
        };
        let started = Instant::now();
        backend
            .capture(
                &container,
                &CaptureDirs {
                    images: &images,
                    work: &work,
                },
                options,
            )
            .await?;
        for name in [archive::DUMP_LOG, archive::STATS_DUMP] {
            let from = work.join(name);
            if from.exists() {
                std::fs::rename(&from, folder.join(name)).map_err(archive::ArchiveError::io(&from))?;
            }
        }
        std::fs::remove_dir_all(&work).map_err(archive::ArchiveError::io(&work))?;

        let pid = target.info.get("pid").and_then(Value::as_u64).unwrap_or_default() as u32;
        let folder_for_diff = folder.clone();
        let id = target.id().to_owned();
        tokio::task::spawn_blocking(move || -> Result<(), PodError> {
            let upper = rootfs_diff::upper_dir_of(pid)?.ok_or_else(|| {
                PodError::FailedPrecondition(format!(
                    "container {id}: its root file system is not an overlay; cannot capture its changes"
                ))
            })?;
            rootfs_diff::write(
                &upper,
                &folder_for_diff.join(archive::ROOTFS_DIFF),
                &folder_for_diff.join(archive::DELETED_FILES),
            )?;
            Ok(())
        })
        .await
        .map_err(|e| PodError::Internal(format!("rootfs diff task: {e}")))??;
        info!(container = %target.id(), name = target.name(), elapsed_ms = started.elapsed().as_millis() as u64, "container captured");
    }
    Ok(())
}

fn write_container_files(folder: &Path, target: &Target, checkpointed_at: &str) -> Result<(), PodError> {
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
    Ok(())
}

fn write_pod_files(root: &Path, pod: &cri::PodSandboxStatusResponse, targets: &[Target]) -> Result<(), PodError> {
    let annotations = pod
        .status
        .as_ref()
        .map(|s| s.annotations.clone().into_iter().collect())
        .unwrap_or_default();
    let options = PodOptions {
        version: archive::FORMAT_VERSION,
        containers: targets.iter().map(|t| (t.name().to_owned(), t.folder())).collect(),
        annotations,
    };
    archive::write_json(&root.join(archive::POD_OPTIONS), &options)?;
    // containerd's own record of the sandbox config, from its verbose status.
    let info: Value = pod
        .info
        .get("info")
        .and_then(|raw| serde_json::from_str(raw).ok())
        .unwrap_or(Value::Null);
    let config = match info.get("config") {
        Some(config) => config.clone(),
        None => {
            warn!("the runtime's pod status has no config; pod.dump holds the status instead");
            serde_json::to_value(&pod.status).unwrap_or(Value::Null)
        }
    };
    archive::write_json(&root.join(archive::POD_DUMP), &config)?;
    Ok(())
}
