//! Restore by annotation: a pod whose sandbox config carries
//! `podckpt.io/restore-from: NAME` comes back from checkpoint NAME of its
//! own namespace when the kubelet creates it, through the kubelet's own
//! RunPodSandbox and CreateContainer calls, so that the kubelet gets the pod
//! it asked for, with the ids it was given, and keeps it. (A pod created by
//! anyone else is an orphan to the kubelet, which kills it within 2 s.)
//!
//! - **RunPodSandbox**: the checkpoint is found under the checkpoint root
//!   (`named`), verified (or trusted by its seal), and must have been taken
//!   in the pod's own namespace: its `pod.dump` says so, whatever directory
//!   it was copied into. The sandbox is created with a handler that can
//!   restore it (below), its PID floor, and for a backend that restores
//!   whole sandboxes (gVisor) its own token: the sandbox comes back here.
//!   What was decided is kept as the sandbox's session, in the state
//!   directory, until housekeeping finds the sandbox gone.
//! - **CreateContainer** in such a sandbox: a container of the checkpoint's
//!   is checked against the kubelet's config as RestorePod checks it, and
//!   created marked for restore, so that StartContainer (containerd) or
//!   create (CRI-O) brings its processes back; any other container (an init
//!   container) is created as usual.
//! - **Restarts**: a container the kubelet creates again (attempt > 0, after
//!   it exited) comes back from the checkpoint again, and so does a sandbox
//!   the kubelet recreates: a warm restart, not a cold one. A checkpoint
//!   that cannot be restored fails each attempt the same way, and the
//!   kubelet's back-off bounds the retries.
//! - **The handler**: the pod's own if it restores with the checkpoint's
//!   backend. A pod with a RuntimeClass whose handler checkpoints with
//!   another backend is refused, never moved to another kind of sandbox. A
//!   pod with none ("", as every standalone kubelet sends) or with a plain
//!   handler of the same backend (`runc` beside `podckpt`) gets the first
//!   handler, by name, with `restore = true` and the checkpoint's backend.
//!
//! Every refusal is a status the kubelet records as the pod's event and
//! retries with back-off; nothing is left between retries: no sandbox, no
//! token, no session, no change to the checkpoint.

use std::path::{Path, PathBuf};
use std::time::Duration;

use prost::Message;
use serde::{Deserialize, Serialize};
use tracing::info;

use super::super::error::PodError;
use super::super::named::RESTORE_FROM;
use super::super::options;
use super::marker::{self, How};
use super::verify::{VerifiedCheckpoint, read_manifest};
use super::{Created, PodService, lazy_pages};
use crate::api::cri;
use crate::api::pod::{
    CreateContainerRequestBytes, CreateContainerResponse, PodSandboxConfigAnnotations, RunPodSandboxRequestBytes,
    RunPodSandboxResponse,
};
use crate::api::{CREATE_CONTAINER_PATH, RUN_POD_SANDBOX_PATH};
use crate::backend;
use crate::config::HandlerConfig;

/// Where the sessions of sandboxes restored by annotation are kept, under
/// podckptd's state directory.
pub const SESSIONS_DIR: &str = "annotated";

/// What RunPodSandbox decided for a sandbox, for its CreateContainers.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Session {
    checkpoint: PathBuf,
    namespace: String,
    name: String,
    /// The handler the sandbox was created with, which restores.
    handler: String,
    lazy_pages: bool,
}

/// A call's sandbox config, as far as restore by annotation reads it.
fn restore_from(sandbox_config: &[u8]) -> Option<String> {
    PodSandboxConfigAnnotations::decode(sandbox_config)
        .ok()?
        .annotations
        .remove(RESTORE_FROM)
}

/// Whether the call at `path`, whose request message is `message`, is one
/// that podckptd answers itself: RunPodSandbox or CreateContainer of a pod
/// annotated `podckpt.io/restore-from`. Only the sandbox config's
/// annotations are decoded; every other call, and these of every other pod,
/// go to the runtime as they came.
pub fn answers(path: &str, message: &[u8]) -> bool {
    let sandbox_config = match path {
        RUN_POD_SANDBOX_PATH => RunPodSandboxRequestBytes::decode(message).map(|r| r.config),
        CREATE_CONTAINER_PATH => CreateContainerRequestBytes::decode(message).map(|r| r.sandbox_config),
        _ => return false,
    };
    sandbox_config.is_ok_and(|config| restore_from(&config).is_some())
}

fn session_path(state_dir: &Path, sandbox_id: &str) -> PathBuf {
    state_dir.join(SESSIONS_DIR).join(format!("{sandbox_id}.json"))
}

impl PodService {
    /// Whether podckptd restores pods by annotation: its router then hands
    /// RunPodSandbox and CreateContainer to `answers` first.
    pub fn restores_by_annotation(&self) -> bool {
        self.inner.restore_from_annotation
    }

    /// RunPodSandbox of a pod annotated `podckpt.io/restore-from`.
    pub(in crate::pod) async fn run_annotated_sandbox(
        &self,
        deadline: Option<Duration>,
        request: RunPodSandboxRequestBytes,
    ) -> Result<RunPodSandboxResponse, PodError> {
        let config = cri::PodSandboxConfig::decode(request.config.as_ref())
            .map_err(|e| PodError::InvalidArgument(format!("the sandbox config does not decode: {e}")))?;
        let name = config.annotations.get(RESTORE_FROM).cloned().unwrap_or_default();
        self.run_sandbox_from(deadline, request, &config, &name)
            .await
            .map_err(|e| in_checkpoint(&name, e))
    }

    async fn run_sandbox_from(
        &self,
        deadline: Option<Duration>,
        request: RunPodSandboxRequestBytes,
        config: &cri::PodSandboxConfig,
        name: &str,
    ) -> Result<RunPodSandboxResponse, PodError> {
        let started = tokio::time::Instant::now();
        let name = name.to_owned();
        let namespace = config
            .metadata
            .as_ref()
            .map(|m| m.namespace.clone())
            .unwrap_or_default();
        let path = self.inner.named.find(&namespace, &name)?;
        let (_, manifest) = read_manifest(&path)?;
        let handler = self.annotated_restore_handler(&name, &request.runtime_handler, &manifest.backend)?;
        let (backend, checkpoint) = self.verify_annotated(&path, &handler, &namespace).await?;
        let asked = match config.annotations.get(options::LAZY_PAGES) {
            Some(value) => {
                let map = [(options::LAZY_PAGES.to_owned(), value.clone())].into();
                options::parse_restore(&map)?.lazy_pages
            }
            None => None,
        };
        let lazy_pages = lazy_pages(&backend, &handler, asked)?;
        let how = How {
            backend: backend.config.backend.clone(),
            lazy_pages,
        };
        let sandbox_token = marker::sandbox_token(&checkpoint, &request.config, &how)?;
        let mut created = Created::default();
        let state_dir = self.inner.state_dir.clone();
        let work = async {
            let annotations =
                marker::sandbox_annotations(&state_dir, checkpoint.pid_floor, sandbox_token, &mut created.tokens)?;
            let run = RunPodSandboxRequestBytes {
                config: marker::annotate_sandbox(&request.config, annotations)?,
                runtime_handler: handler.clone(),
            };
            let sandbox_id = self.create_sandbox(run, &mut created).await?;
            let session = Session {
                checkpoint: checkpoint.root.clone(),
                namespace: namespace.clone(),
                name: name.clone(),
                handler: handler.clone(),
                lazy_pages,
            };
            let path = session_path(&state_dir, &sandbox_id);
            crate::archive::create_private_dir_all(path.parent().expect("in the sessions directory"))?;
            crate::archive::durable::replace_json(&path, &session)?;
            Ok(sandbox_id)
        };
        let result = match deadline {
            Some(limit) => {
                tokio::time::timeout_at(started + limit, work)
                    .await
                    .unwrap_or(Err(PodError::DeadlineExceeded {
                        limit,
                        undone: "the half-made sandbox was removed",
                    }))
            }
            None => work.await,
        };
        match result {
            Ok(pod_sandbox_id) => {
                info!(
                    pod = %pod_sandbox_id,
                    namespace,
                    checkpoint = name,
                    handler,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "sandbox created for a restore by annotation"
                );
                Ok(RunPodSandboxResponse { pod_sandbox_id })
            }
            Err(err) => {
                self.undo(created).await;
                Err(err)
            }
        }
    }

    /// CreateContainer in a sandbox whose pod is annotated
    /// `podckpt.io/restore-from`.
    pub(in crate::pod) async fn create_annotated_container(
        &self,
        request: CreateContainerRequestBytes,
    ) -> Result<CreateContainerResponse, PodError> {
        let session_file = session_path(&self.inner.state_dir, &request.pod_sandbox_id);
        let session: Option<Session> = match std::fs::read(&session_file) {
            Ok(bytes) => Some(
                serde_json::from_slice(&bytes)
                    .map_err(|e| PodError::Internal(format!("restore session {}: {e}", session_file.display())))?,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(crate::archive::ArchiveError::io(&session_file)(e).into()),
        };
        let config = cri::ContainerConfig::decode(request.config.as_ref())
            .map_err(|e| PodError::InvalidArgument(format!("the container config does not decode: {e}")))?;
        let container = config.metadata.as_ref().map(|m| m.name.clone()).unwrap_or_default();
        // A sandbox created while the node did not restore by annotation.
        let Some(session) = session else {
            return self.create_unmarked(&container, request).await;
        };
        let (backend, checkpoint) = self
            .verify_annotated(&session.checkpoint, &session.handler, &session.namespace)
            .await
            .map_err(|e| in_checkpoint(&session.name, e))?;
        if !checkpoint.holds(&container) {
            if checkpoint.sandbox.is_some() {
                return Err(in_checkpoint(
                    &session.name,
                    PodError::FailedPrecondition(format!(
                        "container {container:?} is not in it, and its backend, {}, restores the sandbox whole with the containers it holds: {:?}",
                        backend.checkpointer.name(),
                        checkpoint.options.containers.keys().collect::<Vec<_>>()
                    )),
                ));
            }
            return self.create_unmarked(&container, request).await;
        }
        let admitted = checkpoint
            .admit(&request.config)
            .map_err(|e| in_checkpoint(&session.name, e))?;
        self.check_image(&admitted)
            .await
            .map_err(|e| in_checkpoint(&session.name, e))?;
        let how = How {
            backend: backend.config.backend.clone(),
            lazy_pages: session.lazy_pages,
        };
        let (token_path, marked) = marker::mark_container(
            &self.inner.state_dir,
            &checkpoint,
            &admitted,
            &request.pod_sandbox_id,
            &how,
        )?;
        let create = CreateContainerRequestBytes {
            config: marked,
            ..request
        };
        match self.create_marked_container(&container, create).await {
            Ok(container_id) => {
                info!(
                    container = %container_id,
                    name = container,
                    attempt = config.metadata.as_ref().map_or(0, |m| m.attempt),
                    checkpoint = session.name,
                    "container created for a restore by annotation"
                );
                Ok(CreateContainerResponse { container_id })
            }
            Err(err) => {
                let _ = std::fs::remove_file(&token_path);
                Err(in_checkpoint(&session.name, err))
            }
        }
    }

    /// A container of such a pod that is not restored: created as it came.
    async fn create_unmarked(
        &self,
        container: &str,
        request: CreateContainerRequestBytes,
    ) -> Result<CreateContainerResponse, PodError> {
        let created: cri::CreateContainerResponse = self.raw_call("CreateContainer", request).await?;
        info!(name = container, container = %created.container_id, "container not in the checkpoint created as it came");
        Ok(CreateContainerResponse {
            container_id: created.container_id,
        })
    }

    /// The checkpoint at `path` verified for a restore through `handler`
    /// into a pod of `namespace`, with that handler's backend.
    async fn verify_annotated(
        &self,
        path: &Path,
        handler: &str,
        namespace: &str,
    ) -> Result<(std::sync::Arc<super::super::Backend>, VerifiedCheckpoint), PodError> {
        let backend = self.backend(handler, self.restore_backend(handler)?).await?;
        let restorer = self.restorer(handler, &backend).await?;
        let checkpoint = self.verify_checkpoint(path, restorer, &backend).await?;
        let source = checkpoint.source_namespace()?;
        if source != namespace {
            return Err(PodError::PermissionDenied(format!(
                "it was taken from a pod of namespace {source:?}, and a checkpoint is restored only into its own namespace, never into {namespace:?}: it holds that pod's memory and secrets (found at {}: a copy, not made by podckpt)",
                path.display()
            )));
        }
        Ok((backend, checkpoint))
    }

    /// The handler a pod annotated for restore is created with (see the
    /// module's account of the choice).
    fn annotated_restore_handler(&self, name: &str, requested: &str, backend: &str) -> Result<String, PodError> {
        let backend_of = |config: &HandlerConfig| {
            backend::for_handler(&config.backend, &config.runtime, Path::new(""))
                .map(|b| b.name().to_owned())
                .ok()
        };
        let handlers = &self.inner.handlers;
        if !requested.is_empty() {
            let config = handlers.get(requested).ok_or_else(|| {
                PodError::FailedPrecondition(format!(
                    "the pod's runtime handler {requested:?} has no checkpoint backend in podckptd's config, so it cannot restore checkpoint {name} (backend {backend}); use a RuntimeClass whose handler has one, or none"
                ))
            })?;
            let own = backend_of(config).unwrap_or_default();
            if own != backend {
                return Err(PodError::FailedPrecondition(format!(
                    "checkpoint {name} was taken by backend {backend:?}, but the pod's runtime handler {requested:?} (its RuntimeClass) checkpoints and restores with {own:?}; a pod is restored only through a handler of its checkpoint's backend"
                )));
            }
            if config.restore {
                return Ok(requested.to_owned());
            }
        }
        handlers
            .iter()
            .find(|(_, config)| config.restore && backend_of(config).as_deref() == Some(backend))
            .map(|(handler, _)| handler.clone())
            .ok_or_else(|| {
                PodError::FailedPrecondition(format!(
                    "no runtime handler of podckptd's config restores checkpoints of backend {backend:?} (checkpoint {name}); add one with restore = true that runs podckpt-runc"
                ))
            })
    }
}

/// An error of a restore by annotation, naming the checkpoint, so that the
/// kubelet's event says which.
fn in_checkpoint(name: &str, err: PodError) -> PodError {
    let prefix = format!("restore from checkpoint {name:?} ({RESTORE_FROM})");
    match err {
        PodError::InvalidArgument(m) => PodError::InvalidArgument(format!("{prefix}: {m}")),
        PodError::FailedPrecondition(m) => PodError::FailedPrecondition(format!("{prefix}: {m}")),
        PodError::PermissionDenied(m) => PodError::PermissionDenied(format!("{prefix}: {m}")),
        PodError::NotFound(m) => PodError::NotFound(format!("{prefix}: {m}")),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sandbox_config(annotations: &[(&str, &str)]) -> Vec<u8> {
        cri::PodSandboxConfig {
            hostname: "h".into(),
            annotations: annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }
        .encode_to_vec()
    }

    #[test]
    fn only_the_two_calls_of_annotated_pods_are_answered() {
        let annotated = sandbox_config(&[(RESTORE_FROM, "warm"), ("other", "x")]);
        let plain = sandbox_config(&[("other", "x")]);
        let run = |config: &[u8]| {
            RunPodSandboxRequestBytes {
                config: config.to_vec(),
                runtime_handler: String::new(),
            }
            .encode_to_vec()
        };
        let create = |config: &[u8]| {
            CreateContainerRequestBytes {
                pod_sandbox_id: "sb".into(),
                config: vec![],
                sandbox_config: config.to_vec(),
            }
            .encode_to_vec()
        };
        assert!(answers(RUN_POD_SANDBOX_PATH, &run(&annotated)));
        assert!(answers(CREATE_CONTAINER_PATH, &create(&annotated)));
        assert!(!answers(RUN_POD_SANDBOX_PATH, &run(&plain)));
        assert!(!answers(CREATE_CONTAINER_PATH, &create(&plain)));
        assert!(!answers("/runtime.v1.RuntimeService/StartContainer", &run(&annotated)));
        assert!(!answers(RUN_POD_SANDBOX_PATH, b"\xff\xff not protobuf"));
        assert_eq!(restore_from(&annotated).as_deref(), Some("warm"));
    }
}
