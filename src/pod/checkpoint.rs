//! CheckpointPod: validate everything, then freeze every selected container,
//! capture each, and always resume them all. The checkpoint is built inside
//! the caller's directory and counts only once its manifest is written.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;
use tracing::{info, warn};

use super::PodService;
use super::capture::{Capture, Target};
use super::error::PodError;
use super::journal::PausedSet;
use super::options;
use super::sandbox_info;
use crate::api::cri;
use crate::api::cri::image_service_client::ImageServiceClient;
use crate::api::pod::CheckpointPodRequest;
use crate::archive::{self, Building, Manifest, PodOptions};
use crate::backend::ContainerRef;

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
        let options = options::parse(&request.options)?;
        validate_container_ids(&request.container_ids)?;
        let output = validate_output(&request.output_path)?;
        let pod_id = request.pod_sandbox_id.as_str();
        let pod = self.pod_status(pod_id).await?;
        let handler = sandbox_info::handler(&pod);
        let backend = self.backend(&handler, self.backend_for(&handler)?).await?;
        if let Some(why) = backend.checkpointer.refuse_options(&options.capture) {
            let name = backend.checkpointer.name();
            return Err(PodError::FailedPrecondition(options::refused(
                &options.capture,
                name,
                &why,
            )));
        }
        // Asking CRIU its version costs a process start; overlap it.
        let (targets, engine_version) =
            tokio::try_join!(self.resolve_containers(pod_id, &request.container_ids), async {
                Ok(backend.checkpointer.engine_version().await?)
            })?;
        if backend.checkpointer.captures_sandbox() {
            self.require_whole_pod(pod_id, &targets, backend.checkpointer.name())
                .await?;
        }
        for target in &targets {
            let unfit = backend
                .checkpointer
                .unfit(target.pid(), &options.capture, &engine_version);
            if !unfit.is_empty() {
                let reasons: Vec<&str> = unfit.iter().map(|u| u.reason.as_str()).collect();
                return Err(PodError::FailedPrecondition(format!(
                    "container {} ({}): {}",
                    target.name(),
                    target.id(),
                    reasons.join("; ")
                )));
            }
        }

        let _busy = self.claim(pod_id)?;
        let _writing = self.claim_output(&output)?;
        let building = Building::begin(&output);
        let refs: Vec<ContainerRef> = targets.iter().map(|t| t.container_ref()).collect();
        let paused = PausedSet {
            backend: backend.config.backend.clone(),
            runtime: backend.config.runtime.clone(),
            root: backend.root.clone(),
            containers: refs.clone(),
            output: Some(output.clone()),
        };
        let key = self.inner.journal.record(paused)?;
        // What the pod feels: from the first pause to the last resume.
        let freeze_started = Instant::now();
        let paused_gauge = self.inner.metrics.pausing(refs.len());
        if let Err(failed) = backend.checkpointer.pause_pod(&refs).await {
            // It resumed what it had paused; what it could not stays in the
            // journal, for the next daemon to resume, and in the gauge.
            paused_gauge.still_paused(failed.still_paused.len());
            if failed.still_paused.is_empty() {
                self.inner.journal.clear(&key)?;
                return Err(failed.error.into());
            }
            let stuck: Vec<String> = failed.still_paused.iter().map(|e| e.to_string()).collect();
            return Err(PodError::Internal(format!(
                "{}; and some containers paused before it could not be resumed: {}",
                failed.error,
                stuck.join("; ")
            )));
        }
        let capture = Capture {
            backend: backend.checkpointer.clone(),
            root: output.clone(),
            options: options.capture,
            checkpointed_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            deadline: started + deadline,
            limit: deadline,
            kept_logs: super::kept_logs::KeptLogs::new(&self.inner.state_dir),
        };
        let mut captured = capture.all(targets.to_vec()).await;
        if backend.checkpointer.captures_sandbox()
            && let Ok(hashing) = &mut captured
        {
            match capture.sandbox(pod_id).await {
                Ok(task) => hashing.push(task),
                Err(err) => captured = Err(err),
            }
        }
        let failures = backend.checkpointer.resume_pod(&refs).await;
        paused_gauge.still_paused(failures.len());
        let freeze = freeze_started.elapsed();
        self.inner.metrics.observe_freeze(freeze);
        let freeze_ms = freeze.as_millis() as u64;
        if !failures.is_empty() {
            // The journal keeps them, so a restarted daemon tries again.
            let list: Vec<String> = failures.iter().map(|f| f.to_string()).collect();
            return Err(PodError::Internal(format!(
                "could not resume every container: {}",
                list.join("; ")
            )));
        }
        // Resumed; the half-built output stays recorded until it is
        // committed or removed, so a daemon killed meanwhile leaves none.
        self.inner.journal.resumed(&key)?;
        let paused_ms = started.elapsed().as_millis() as u64;
        // The pod runs again: now the images go to stable storage, while
        // they are hashed, never inside the freeze window.
        let syncing = (options.durable && captured.is_ok()).then(|| {
            let mut folders: Vec<PathBuf> = targets.iter().map(|t| output.join(t.folder())).collect();
            if backend.checkpointer.captures_sandbox() {
                folders.push(output.join(archive::SANDBOX_DIR));
            }
            tokio::task::spawn_blocking(move || folders.iter().try_for_each(|f| archive::durable::sync_tree(f)))
        });
        let outcome = async {
            let hashed = captured?.finish().await?;
            write_pod_files(&output, &pod, &targets)?;
            if let Some(syncing) = syncing {
                syncing.await.map_err(PodError::task("sync"))??;
            }
            let mut manifest =
                Manifest::build_with(&output, backend.checkpointer.name(), &engine_version, pod_id, hashed)?;
            manifest.freeze_ms = Some(freeze_ms);
            let files = manifest.total_size();
            let manifest = serde_json::to_vec_pretty(&manifest)
                .map_err(|e| PodError::Internal(format!("encoding the manifest: {e}")))?;
            let size = files + manifest.len() as u64;
            if Instant::now() >= capture.deadline {
                // The caller has given up: a checkpoint it never hears of must not appear.
                return Err(capture.deadline_exceeded());
            }
            let done = building.commit(&manifest, options.durable)?;
            Ok((done, manifest, size))
        }
        .await;
        self.inner.journal.clear(&key)?;
        let (done, manifest, size) = outcome?;
        self.inner.metrics.observe_written(size);
        self.inner
            .rates
            .record(backend.checkpointer.name(), size, started.elapsed());
        // Everything was just hashed, in a directory only we could write, so
        // a restore on this node need not hash it again.
        let sealed = self.inner.seals.snapshot(&done).and_then(|s| match s {
            Some(snapshot) => self.inner.seals.seal(snapshot, &manifest),
            None => Ok(()),
        });
        if let Err(error) = sealed {
            warn!(%error, "could not seal the checkpoint; its first restore will hash it in full");
        }
        info!(
            pod = pod_id,
            containers = targets.len(),
            output = %done.display(),
            freeze_ms,
            paused_ms,
            bytes = size,
            durable = options.durable,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "pod checkpointed"
        );
        Ok(done)
    }

    /// The pod's verbose status, whatever its state.
    pub(super) async fn any_pod_status(&self, pod_id: &str) -> Result<cri::PodSandboxStatusResponse, PodError> {
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
        Ok(pod.into_inner())
    }

    /// The status of a pod that must be ready.
    async fn pod_status(&self, pod_id: &str) -> Result<cri::PodSandboxStatusResponse, PodError> {
        let pod = self.any_pod_status(pod_id).await?;
        if !is_ready(&pod) {
            return Err(PodError::FailedPrecondition(format!(
                "pod {pod_id} is not ready; only a running pod can be checkpointed"
            )));
        }
        Ok(pod)
    }

    /// The selected containers, each a running container of the pod.
    /// A backend that saves whole sandboxes saves every container of the
    /// pod at once: the request must name exactly the running ones.
    async fn require_whole_pod(&self, pod_id: &str, targets: &[Arc<Target>], backend: &str) -> Result<(), PodError> {
        let running: BTreeSet<String> = self
            .pod_containers(pod_id)
            .await?
            .into_iter()
            .filter(is_running)
            .map(|c| c.id)
            .collect();
        let named: BTreeSet<String> = targets.iter().map(|t| t.id().to_owned()).collect();
        match whole_pod_refusal(pod_id, backend, &named, &running) {
            None => Ok(()),
            Some(why) => Err(PodError::FailedPrecondition(why)),
        }
    }

    /// Every container of the pod, in any state.
    pub(super) async fn pod_containers(&self, pod_id: &str) -> Result<Vec<cri::Container>, PodError> {
        let filter = cri::ContainerFilter {
            pod_sandbox_id: pod_id.into(),
            ..Default::default()
        };
        Ok(self
            .runtime()
            .list_containers(cri::ListContainersRequest { filter: Some(filter) })
            .await
            .map_err(PodError::runtime(format!("listing the containers of pod {pod_id}")))?
            .into_inner()
            .containers)
    }

    /// A container's status with the runtime's verbose info (pid,
    /// runtimeSpec, and on containerd its config); Null when it has none.
    pub(super) async fn verbose_status(&self, id: &str) -> Result<(cri::ContainerStatus, Value), PodError> {
        let request = cri::ContainerStatusRequest {
            container_id: id.to_owned(),
            verbose: true,
        };
        let response = self
            .runtime()
            .container_status(request)
            .await
            .map_err(PodError::runtime(format!("container {id}")))?
            .into_inner();
        let info = response
            .info
            .get("info")
            .map(|raw| serde_json::from_str(raw))
            .transpose()
            .map_err(|e| PodError::Internal(format!("container {id}: unreadable runtime info: {e}")))?;
        let status = response
            .status
            .ok_or_else(|| PodError::Internal(format!("container {id} has no status")))?;
        Ok((status, info.unwrap_or(Value::Null)))
    }

    async fn resolve_containers(&self, pod_id: &str, wanted: &[String]) -> Result<Vec<Arc<Target>>, PodError> {
        let listed = self.pod_containers(pod_id).await?;
        let mut chosen: Vec<&cri::Container> = Vec::new();
        for id in wanted {
            let container = listed.iter().find(|c| &c.id == id).ok_or_else(|| {
                PodError::InvalidArgument(format!("container {id} is not a container of pod {pod_id}"))
            })?;
            if !is_running(container) {
                return Err(PodError::FailedPrecondition(format!(
                    "container {id} is not running (state {})",
                    state_name(container.state)
                )));
            }
            chosen.push(container);
        }
        let mut targets = Vec::with_capacity(chosen.len());
        for container in chosen {
            let (status, info) = self.verbose_status(&container.id).await?;
            refuse_chosen_criu_options(&container.id, &info)?;
            let image_config = if info.get("config").is_none() {
                self.image_config(&status).await?
            } else {
                None
            };
            targets.push(Arc::new(Target {
                status,
                info,
                image_config,
            }));
        }
        Ok(targets)
    }

    /// The OCI config of the image a container runs, from the runtime's
    /// verbose ImageStatus (`imageSpec.config`).
    async fn image_config(&self, status: &cri::ContainerStatus) -> Result<Option<Value>, PodError> {
        let image = if status.image_ref.is_empty() {
            status.image.as_ref().map(|i| i.image.clone()).unwrap_or_default()
        } else {
            status.image_ref.clone()
        };
        let request = cri::ImageStatusRequest {
            image: Some(cri::ImageSpec {
                image: image.clone(),
                ..Default::default()
            }),
            verbose: true,
        };
        let response = ImageServiceClient::new(self.inner.channel.clone())
            .image_status(request)
            .await
            .map_err(PodError::runtime(format!("ImageStatus of {image}")))?
            .into_inner();
        Ok(response
            .info
            .get("info")
            .and_then(|raw| serde_json::from_str::<Value>(raw).ok())
            .map(|info| info["imageSpec"]["config"].clone())
            .filter(Value::is_object))
    }
}

pub(super) fn is_ready(pod: &cri::PodSandboxStatusResponse) -> bool {
    pod.status
        .as_ref()
        .is_some_and(|s| s.state == cri::PodSandboxState::SandboxReady as i32)
}

pub(super) fn is_running(container: &cri::Container) -> bool {
    container.state == cri::ContainerState::ContainerRunning as i32
}

pub(super) fn state_name(state: i32) -> &'static str {
    cri::ContainerState::try_from(state)
        .map(|s| s.as_str_name())
        .unwrap_or("UNKNOWN")
}

/// Why a backend that saves whole sandboxes cannot take just `named` of a
/// pod that runs `running`; None when they are the same.
pub(super) fn whole_pod_refusal(
    pod_id: &str,
    backend: &str,
    named: &BTreeSet<String>,
    running: &BTreeSet<String>,
) -> Option<String> {
    if named == running {
        return None;
    }
    let missing: Vec<&String> = running.difference(named).collect();
    Some(format!(
        "pod {pod_id}'s backend, {backend}, saves the whole sandbox at once and cannot capture a subset of its containers: container_ids must name every running container; missing {missing:?}"
    ))
}

/// runc hands CRIU (which runs as root) the configuration file that the
/// spec's `org.criu.config` annotation names. A pod's annotations reach the
/// spec unchanged on CRI-O, so a pod could choose CRIU's options, action
/// scripts among them. podckpt checkpoints no such container.
pub(super) fn refuse_chosen_criu_options(id: &str, info: &Value) -> Result<(), PodError> {
    match info["runtimeSpec"]["annotations"].get("org.criu.config") {
        None => Ok(()),
        Some(_) => Err(PodError::FailedPrecondition(format!(
            "container {id} carries the annotation org.criu.config, which would let the pod choose the options of CRIU, run as root; remove it from the pod to checkpoint it"
        ))),
    }
}

/// The contract: "The list must be non-empty, must not contain duplicates".
/// An empty list does not mean "all": the caller names what it expects to
/// get back, so a container it did not know of never slips in.
fn validate_container_ids(ids: &[String]) -> Result<(), PodError> {
    if ids.is_empty() {
        return Err(PodError::InvalidArgument(
            "container_ids is empty; name every running container to checkpoint (`podckpt checkpointp` lists them for you)".into(),
        ));
    }
    if let Some(empty) = ids.iter().position(String::is_empty) {
        return Err(PodError::InvalidArgument(format!("container_ids[{empty}] is empty")));
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(duplicate) = ids.iter().find(|id| !seen.insert(id.as_str())) {
        return Err(PodError::InvalidArgument(format!(
            "container_ids names {duplicate} more than once; name each container once"
        )));
    }
    Ok(())
}

pub(super) fn validate_output(path: &str) -> Result<PathBuf, PodError> {
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

fn write_pod_files(root: &Path, pod: &cri::PodSandboxStatusResponse, targets: &[Arc<Target>]) -> Result<(), PodError> {
    let annotations = pod
        .status
        .as_ref()
        .map(|s| s.annotations.clone().into_iter().collect())
        .unwrap_or_default();
    let options = PodOptions {
        version: archive::POD_OPTIONS_VERSION,
        containers: targets.iter().map(|t| (t.name().to_owned(), t.folder())).collect(),
        annotations,
    };
    archive::write_json(&root.join(archive::POD_OPTIONS), &options)?;
    let config = sandbox_info::config(pod).unwrap_or_else(|| {
        warn!("the runtime reported neither the pod's config nor its spec; pod.dump holds the status instead");
        serde_json::to_value(&pod.status).unwrap_or(Value::Null)
    });
    archive::write_json(&root.join(archive::POD_DUMP), &config)?;
    Ok(())
}
