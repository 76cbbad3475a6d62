//! RestorePod: verify the checkpoint, and that the caller's configs describe
//! the processes it holds, before anything exists; then create the sandbox
//! and the containers from the caller's own configs, each marked for
//! podckpt-runc to restore; undo everything if any step fails.

use crate::config::HandlerConfig;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::time::Instant;

use prost::Message;
use tracing::{debug, info, warn};

use super::error::PodError;
use super::{Backend, PodService, contract, options};
use crate::api::cri;
use crate::api::cri::image_service_client::ImageServiceClient;
use crate::api::pod::{
    ContainerConfigAnnotations, CreateContainerRequestBytes, PodSandboxConfigAnnotations, RestorePodRequest,
    RestorePodResponse, RestoredContainer, RunPodSandboxRequestBytes,
};
use crate::archive::{self, Manifest, PodOptions, ProcessRecord, Seals};
use crate::backend::Checkpointer;
use crate::interposer::pid_floor;
use crate::interposer::token::{self, RestoreToken};

/// A checkpoint that passed every check, and the caller's config for each
/// of its containers.
struct Verified {
    root: PathBuf,
    containers: Vec<VerifiedContainer>,
    /// The image of the whole sandbox, for a backend that restores
    /// sandboxes whole; each container's processes are in it.
    sandbox: Option<PathBuf>,
    /// The highest PID the containers' processes held: the new pod's PID
    /// namespace gives out only PIDs above it (see `interposer::pid_floor`).
    pid_floor: Option<u32>,
}

struct VerifiedContainer {
    name: String,
    folder: PathBuf,
    /// The caller's encoded ContainerConfig, passed on as it came.
    config: Vec<u8>,
    /// The image the caller's config names, whole: the runtime may resolve
    /// it by more than its name (its runtime handler, annotations).
    image: cri::ImageSpec,
    record: ProcessRecord,
}

/// How long an undo waits for a RunPodSandbox that the deadline caught.
const PENDING_SANDBOX_LIMIT: Duration = Duration::from_secs(120);

/// How the wrapper is to restore each container: written into its token.
struct How {
    /// The handler's backend kind (its config's `backend`).
    backend: String,
    lazy_pages: bool,
}

/// What a half-done restore has created, so that it can be undone.
#[derive(Default)]
struct Created {
    sandbox: Option<String>,
    /// A RunPodSandbox under way. It runs as a task of its own, so that a
    /// deadline in the middle does not cut it off at a point where the
    /// runtime has made the sandbox but we never learn its id: the undo
    /// waits for it instead, and removes what it made.
    pending_sandbox: Option<tokio::task::JoinHandle<Result<cri::RunPodSandboxResponse, PodError>>>,
    tokens: Vec<PathBuf>,
    /// When the sandbox was ready, counted from the start of the call.
    sandbox_ms: u64,
}

impl PodService {
    pub(super) async fn restore(
        &self,
        deadline: Option<Duration>,
        request: RestorePodRequest,
    ) -> Result<RestorePodResponse, PodError> {
        let started = Instant::now();
        let limit = deadline.ok_or_else(|| {
            PodError::InvalidArgument(
                "RestorePod needs a deadline on the call: the CRI requires one, and a restore that is never cut off could leave a half-made pod".into(),
            )
        })?;
        if request.config.is_empty() {
            return Err(PodError::InvalidArgument(
                "config (the new sandbox's PodSandboxConfig) is required".into(),
            ));
        }
        let handler = self
            .backend(
                &request.runtime_handler,
                self.restore_backend(&request.runtime_handler)?,
            )
            .await?;
        let lazy_pages = lazy_pages(&handler, &request)?;
        // Hashing a large checkpoint takes a while; off the thread that relays
        // everyone else's CRI calls.
        let (path, configs) = (request.checkpoint_path.clone(), request.container_configs.clone());
        let seals = self.inner.seals.clone();
        let engine_version = if handler.checkpointer.restores_only_own_version() {
            Some(handler.checkpointer.engine_version().await?)
        } else {
            None
        };
        let restorer = Restorer {
            handler: request.runtime_handler.clone(),
            backend: handler.checkpointer.name().to_owned(),
            whole_sandbox: handler.checkpointer.captures_sandbox(),
            engine_version,
        };
        let verifying = Instant::now();
        let checkpointer = handler.checkpointer.clone();
        let verified = tokio::task::spawn_blocking(move || {
            let mut verified = verify(&path, &configs, &restorer, &seals)?;
            verified.pid_floor = highest_pid(checkpointer.as_ref(), &verified)?;
            Ok::<_, PodError>(verified)
        })
        .await
        .map_err(PodError::task("verification"))?;
        self.inner.metrics.observe_verification(verifying.elapsed());
        let checkpoint = verified?;
        tokio::time::timeout_at(started + limit, self.check_images(&checkpoint.containers))
            .await
            .unwrap_or(Err(PodError::DeadlineExceeded {
                limit,
                undone: "nothing was created",
            }))?;
        let verified_ms = started.elapsed().as_millis() as u64;

        let mut created = Created::default();
        let how = How {
            backend: handler.config.backend.clone(),
            lazy_pages,
        };
        let work = self.create_all(&request, &checkpoint, &how, &mut created, started);
        let result = tokio::time::timeout_at(started + limit, work)
            .await
            .unwrap_or(Err(PodError::DeadlineExceeded {
                limit,
                undone: "the half-restored sandbox and its containers were removed",
            }));
        match result {
            Ok(response) => {
                info!(
                    pod = %response.pod_sandbox_id,
                    containers = response.restored_containers.len(),
                    from = %checkpoint.root.display(),
                    lazy_pages,
                    verified_ms,
                    sandbox_ms = created.sandbox_ms,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "pod restored (containers CREATED)"
                );
                Ok(response)
            }
            Err(err) => {
                self.undo(created).await;
                Err(err)
            }
        }
    }

    async fn create_all(
        &self,
        request: &RestorePodRequest,
        checkpoint: &Verified,
        how: &How,
        created: &mut Created,
        started: Instant,
    ) -> Result<RestorePodResponse, PodError> {
        let mut config = request.config.clone();
        let mut sandbox_annotations = std::collections::HashMap::new();
        if let Some(floor) = checkpoint.pid_floor {
            sandbox_annotations.insert(pid_floor::ANNOTATION.to_owned(), floor.to_string());
        }
        if let Some(image) = &checkpoint.sandbox {
            // The sandbox itself comes back from the image; its token names
            // the pod by UID, as the sandbox's id does not exist yet.
            let pod_uid = cri::PodSandboxConfig::decode(request.config.as_ref())
                .ok()
                .and_then(|c| c.metadata)
                .map(|m| m.uid)
                .filter(|uid| !uid.is_empty())
                .ok_or_else(|| {
                    PodError::InvalidArgument("config.metadata.uid is needed to restore a whole sandbox".into())
                })?;
            let token = RestoreToken {
                checkpoint: image.clone(),
                sandbox_id: String::new(),
                container_name: String::new(),
                pod_uid,
                backend: how.backend.clone(),
                lazy_pages: false,
            };
            let token_path = token.write(&self.inner.state_dir.join("restores"))?;
            created.tokens.push(token_path.clone());
            sandbox_annotations.insert(token::SANDBOX_ANNOTATION.to_owned(), token_path.display().to_string());
        }
        if !sandbox_annotations.is_empty() {
            PodSandboxConfigAnnotations {
                annotations: sandbox_annotations,
            }
            .encode(&mut config)
            .map_err(|e| PodError::Internal(format!("encoding the sandbox's restore markers: {e}")))?;
        }
        let run = RunPodSandboxRequestBytes {
            config,
            runtime_handler: request.runtime_handler.clone(),
        };
        let service = self.clone();
        let pending =
            created.pending_sandbox.insert(tokio::spawn(
                async move { service.raw_call("RunPodSandbox", run).await },
            ));
        let sandbox = pending.await.map_err(PodError::task("RunPodSandbox"));
        created.pending_sandbox = None;
        let sandbox_id = sandbox??.pod_sandbox_id;
        created.sandbox = Some(sandbox_id.clone());
        created.sandbox_ms = started.elapsed().as_millis() as u64;

        let mut restored = Vec::new();
        for container in &checkpoint.containers {
            let token = RestoreToken {
                checkpoint: checkpoint.sandbox.clone().unwrap_or_else(|| container.folder.clone()),
                sandbox_id: sandbox_id.clone(),
                container_name: container.name.clone(),
                pod_uid: String::new(),
                backend: how.backend.clone(),
                lazy_pages: how.lazy_pages,
            };
            let token_path = token.write(&self.inner.state_dir.join("restores"))?;
            created.tokens.push(token_path.clone());
            let marker = ContainerConfigAnnotations {
                annotations: [(token::ANNOTATION.to_owned(), token_path.display().to_string())].into(),
            };
            let mut marked = container.config.clone();
            marker
                .encode(&mut marked)
                .map_err(|e| PodError::Internal(format!("encoding the restore marker: {e}")))?;
            let create = CreateContainerRequestBytes {
                pod_sandbox_id: sandbox_id.clone(),
                config: marked,
                sandbox_config: request.config.clone(),
            };
            let response: cri::CreateContainerResponse =
                self.raw_call("CreateContainer", create)
                    .await
                    .map_err(|err| match err {
                        // The wrapper found the new container unfit for the
                        // checkpoint: the caller's configs, not the runtime, are at fault.
                        PodError::Runtime { status, .. } if status.message().contains(crate::backend::MISMATCH) => {
                            PodError::FailedPrecondition(format!(
                                "container {:?}: {}",
                                container.name,
                                status.message().trim()
                            ))
                        }
                        other => other,
                    })?;
            restored.push(RestoredContainer {
                name: container.name.clone(),
                container_id: response.container_id,
            });
        }
        Ok(RestorePodResponse {
            pod_sandbox_id: sandbox_id,
            restored_containers: restored,
        })
    }

    /// The backend of a runtime handler RestorePod may use. The CRI makes an
    /// unknown handler the caller's mistake; a known one that does not run
    /// podckpt-runc is a setup that cannot restore.
    fn restore_backend(&self, handler: &str) -> Result<&HandlerConfig, PodError> {
        let handlers = &self.inner.handlers;
        let restoring = || -> Vec<&String> { handlers.iter().filter(|(_, h)| h.restore).map(|(n, _)| n).collect() };
        let Some(config) = handlers.get(handler) else {
            let known: Vec<&String> = handlers.keys().collect();
            return Err(PodError::InvalidArgument(format!(
                "unknown runtime handler {handler:?}; podckptd's config knows {known:?}, of which {:?} can restore",
                restoring()
            )));
        };
        if !config.restore {
            return Err(PodError::FailedPrecondition(format!(
                "runtime handler {handler:?} does not run podckpt-runc; restore with a handler that has restore = true: {:?}",
                restoring()
            )));
        }
        Ok(config)
    }

    /// Resolves the image each caller's config names on the runtime below
    /// and compares it, by id, with the image its checkpoint ran.
    async fn check_images(&self, containers: &[VerifiedContainer]) -> Result<(), PodError> {
        let mut images = ImageServiceClient::new(self.inner.channel.clone());
        for container in containers {
            let name = &container.image.image;
            let id = if name.is_empty() {
                None
            } else {
                let request = cri::ImageStatusRequest {
                    image: Some(container.image.clone()),
                    verbose: false,
                };
                let status = images
                    .image_status(request)
                    .await
                    .map_err(PodError::runtime(format!("ImageStatus of {name}")))?
                    .into_inner();
                let image = status.image.ok_or_else(|| {
                    PodError::FailedPrecondition(format!(
                        "container {:?}: image {name} is not present on the node; pull it before restoring",
                        container.name
                    ))
                })?;
                Some(image.id)
            };
            contract::check_image(&container.name, &container.record, name, id.as_deref())?;
            debug!(container = %container.name, image = %name, "image matches the checkpoint");
        }
        Ok(())
    }

    /// Stops and removes the sandbox (and with it its containers) and the tokens.
    async fn undo(&self, created: Created) {
        let mut sandbox = created.sandbox;
        if let Some(pending) = created.pending_sandbox {
            match tokio::time::timeout(PENDING_SANDBOX_LIMIT, pending).await {
                Ok(Ok(Ok(made))) => sandbox = Some(made.pod_sandbox_id),
                Ok(_) => {}
                Err(_) => warn!(
                    limit_s = PENDING_SANDBOX_LIMIT.as_secs(),
                    "rollback: RunPodSandbox still had not answered; a sandbox it makes later is not removed"
                ),
            }
        }
        if let Some(id) = sandbox {
            let mut runtime = self.runtime();
            if let Err(status) = runtime
                .stop_pod_sandbox(cri::StopPodSandboxRequest {
                    pod_sandbox_id: id.clone(),
                })
                .await
            {
                warn!(pod = %id, %status, "rollback: StopPodSandbox failed");
            }
            match runtime
                .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                    pod_sandbox_id: id.clone(),
                })
                .await
            {
                Ok(_) => info!(pod = %id, "rollback: removed the half-restored sandbox"),
                Err(status) => warn!(pod = %id, %status, "rollback: RemovePodSandbox failed"),
            }
        }
        for token in created.tokens {
            let _ = std::fs::remove_file(token);
        }
    }

    /// One unary CRI call with a request of our own wire-compatible type.
    async fn raw_call<Req, Resp>(&self, method: &'static str, request: Req) -> Result<Resp, PodError>
    where
        Req: Message + Send + Sync + 'static,
        Resp: Message + Default + Send + Sync + 'static,
    {
        let mut grpc = tonic::client::Grpc::new(self.inner.channel.clone()).max_decoding_message_size(usize::MAX);
        grpc.ready()
            .await
            .map_err(|e| PodError::Internal(format!("runtime connection: {e}")))?;
        let path = http::uri::PathAndQuery::try_from(format!("/runtime.v1.RuntimeService/{method}"))
            .expect("a valid gRPC path");
        let codec = tonic_prost::ProstCodec::<Req, Resp>::default();
        let response = grpc
            .unary(tonic::Request::new(request), path, codec)
            .await
            .map_err(PodError::runtime(method))?;
        Ok(response.into_inner())
    }
}

fn invalid(root: &Path, why: impl std::fmt::Display) -> PodError {
    PodError::InvalidArgument(format!("checkpoint {} is not usable: {why}", root.display()))
}

/// The runtime handler a restore goes through, and the backend it restores with.
struct Restorer {
    handler: String,
    backend: String,
    /// The backend restores a whole sandbox from one image (`sandbox/`).
    whole_sandbox: bool,
    /// The only engine version that can restore, for a backend whose
    /// engine restores only its own images.
    engine_version: Option<String>,
}

/// Whether the selected handler can restore this checkpoint at all: its
/// format and the backend that captured it. Cheap, so it comes before any
/// hashing; a refusal is FAILED_PRECONDITION, as the checkpoint itself is
/// sound.
fn check_restorable(root: &Path, manifest: &Manifest, restorer: &Restorer) -> Result<(), PodError> {
    let (found, current) = (manifest.format_version, archive::FORMAT_VERSION);
    if found < current {
        return Err(PodError::FailedPrecondition(format!(
            "checkpoint {} has format version {found}, from a podckpt that did not record the image id and process config of its containers, so this restore cannot be checked against the container configs; take the checkpoint again",
            root.display()
        )));
    }
    if found > current {
        return Err(PodError::FailedPrecondition(format!(
            "checkpoint {} has format version {found}, newer than this podckptd reads ({current}); restore it with a newer podckptd",
            root.display()
        )));
    }
    if manifest.backend != restorer.backend {
        return Err(PodError::FailedPrecondition(format!(
            "checkpoint {} was taken by backend {:?}, but runtime handler {:?} restores with {:?}; restore it through a handler whose backend is {:?}",
            root.display(),
            manifest.backend,
            restorer.handler,
            restorer.backend,
            manifest.backend
        )));
    }
    if let Some(version) = &restorer.engine_version
        && manifest.engine_version != *version
    {
        return Err(PodError::FailedPrecondition(format!(
            "checkpoint {} was taken with {} version {}, and this node's is {version}; {} restores only images of its own version",
            root.display(),
            manifest.backend,
            manifest.engine_version,
            manifest.backend
        )));
    }
    Ok(())
}

/// Everything that can be checked before anything is created but the
/// images: that the handler can restore the checkpoint, the manifest and
/// every checksum (which also refuses links and devices), the layout, that
/// the caller's container configs name exactly the checkpoint's, and that
/// each describes the process its container holds.
fn verify(
    checkpoint_path: &str,
    container_configs: &[Vec<u8>],
    restorer: &Restorer,
    seals: &Seals,
) -> Result<Verified, PodError> {
    let root = PathBuf::from(checkpoint_path);
    if !root.is_absolute() {
        return Err(PodError::InvalidArgument(format!(
            "checkpoint_path {checkpoint_path:?} must be absolute"
        )));
    }
    let meta = std::fs::symlink_metadata(&root).map_err(|e| invalid(&root, e))?;
    if !meta.is_dir() {
        return Err(invalid(&root, "not a directory"));
    }
    let manifest_path = root.join(archive::MANIFEST);
    let manifest_bytes =
        std::fs::read(&manifest_path).map_err(|e| invalid(&root, format!("{}: {e}", archive::MANIFEST)))?;
    let manifest: Manifest =
        serde_json::from_slice(&manifest_bytes).map_err(|e| invalid(&root, format!("{}: {e}", archive::MANIFEST)))?;
    check_restorable(&root, &manifest, restorer)?;
    // Taken first: what is trusted or hashed is what was there then, and
    // sealing checks that nothing moved while it was being hashed.
    let snapshot = seals.snapshot(&root).map_err(|e| invalid(&root, e))?;
    match snapshot.as_ref().and_then(|s| seals.unchanged(s, &manifest_bytes)) {
        Some(recheck) if recheck.is_empty() => {
            debug!(checkpoint = %root.display(), "sealed and unchanged");
        }
        recheck => {
            match recheck {
                Some(racy) => manifest.verify_files(&root, &racy),
                None => manifest.verify(&root),
            }
            .map_err(|e| invalid(&root, e))?;
            // The next restore hashes nothing.
            if let Some(snapshot) = snapshot
                && let Err(error) = seals.seal(snapshot, &manifest_bytes)
            {
                warn!(%error, "could not seal the verified checkpoint; the next restore will hash it again");
            }
        }
    }

    let options: PodOptions =
        serde_json::from_slice(&std::fs::read(root.join(archive::POD_OPTIONS)).map_err(|e| invalid(&root, e))?)
            .map_err(|e| invalid(&root, format!("{}: {e}", archive::POD_OPTIONS)))?;
    let mut by_name = Vec::new();
    let mut seen = BTreeSet::new();
    for bytes in container_configs {
        let config = cri::ContainerConfig::decode(bytes.as_ref())
            .map_err(|e| PodError::InvalidArgument(format!("a container config does not decode: {e}")))?;
        let name = config.metadata.as_ref().map(|m| m.name.clone()).unwrap_or_default();
        if name.is_empty() || !seen.insert(name.clone()) {
            return Err(PodError::InvalidArgument(format!(
                "container config names must be present and unique; {name:?} is not"
            )));
        }
        by_name.push((name, config, bytes.clone()));
    }
    let wanted: BTreeSet<&String> = options.containers.keys().collect();
    let given: BTreeSet<&String> = seen.iter().collect();
    if wanted != given {
        return Err(PodError::InvalidArgument(format!(
            "the container configs name {given:?} but the checkpoint holds {wanted:?}; give exactly one config per checkpointed container"
        )));
    }
    let mut containers = Vec::new();
    for (name, config, bytes) in by_name {
        let folder_name = &options.containers[&name];
        let folder = root.join(folder_name);
        let is_child = Path::new(folder_name).components().count() == 1 && !folder_name.starts_with('.');
        // A whole-sandbox image holds every container's processes; a
        // container's folder then holds only what describes it.
        let images = if restorer.whole_sandbox {
            root.join(archive::SANDBOX_DIR)
        } else {
            folder.join(archive::CHECKPOINT_DIR)
        };
        if !is_child || !images.is_dir() {
            return Err(invalid(
                &root,
                format!("container {name}: folder {folder_name:?} is not a checkpoint folder"),
            ));
        }
        let unreadable =
            |e: &dyn std::fmt::Display| invalid(&root, format!("{folder_name}/{}: {e}", archive::PROCESS_RECORD));
        let raw = std::fs::read(folder.join(archive::PROCESS_RECORD)).map_err(|e| unreadable(&e))?;
        let record: ProcessRecord = serde_json::from_slice(&raw).map_err(|e| unreadable(&e))?;
        contract::check_process(&name, &record, &config)?;
        containers.push(VerifiedContainer {
            image: config.image.unwrap_or_default(),
            name,
            folder,
            config: bytes,
            record,
        });
    }
    let sandbox = restorer.whole_sandbox.then(|| root.join(archive::SANDBOX_DIR));
    Ok(Verified {
        root,
        containers,
        sandbox,
        pid_floor: None,
    })
}

/// The highest PID any of the verified containers' processes held, for a
/// backend that restores containers one by one into the pod's namespaces.
fn highest_pid(checkpointer: &dyn Checkpointer, checkpoint: &Verified) -> Result<Option<u32>, PodError> {
    let mut highest = None;
    for container in &checkpoint.containers {
        let pid = checkpointer
            .highest_pid(&container.folder)
            .map_err(|e| invalid(&checkpoint.root, format!("container {}: {e}", container.name)))?;
        highest = highest.max(pid);
    }
    Ok(highest)
}

/// Whether this restore is lazy: the request's option, else the handler's
/// default. Asking a runtime that cannot is the caller's setup to fix.
fn lazy_pages(backend: &Backend, request: &RestorePodRequest) -> Result<bool, PodError> {
    let asked = options::parse_restore(&request.options)?.lazy_pages;
    let can = backend.checkpointer.restores_lazily();
    let lazy = asked.or(backend.config.lazy_pages).unwrap_or(can);
    if lazy && !can {
        return Err(PodError::FailedPrecondition(format!(
            "runtime handler {:?} ({}, backend {}) cannot restore lazily; set {}=false, or use a handler whose backend can",
            request.runtime_handler,
            backend.config.runtime.display(),
            backend.checkpointer.name(),
            options::LAZY_PAGES
        )));
    }
    Ok(lazy)
}
