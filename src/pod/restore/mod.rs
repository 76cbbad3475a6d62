//! Restores: a pod created through the runtime below with the caller's own
//! configs, each container marked for podckpt-runc to bring back from the
//! checkpoint when the runtime creates it. Two callers ask for one:
//! - RestorePod (`restore_pod`), with every config at once;
//! - the kubelet itself, for a pod annotated `podckpt.io/restore-from`
//!   (`by_annotation`), one RunPodSandbox and one CreateContainer at a time.
//!
//! Both verify the checkpoint and each config the same way (`verify`), mark
//! the sandbox and containers the same way (`marker`), and undo what they
//! made if a step fails.

mod by_annotation;
mod marker;
mod restore_pod;
mod verify;

use std::path::Path;
use std::time::Duration;

use prost::Message;
use tracing::{debug, info, warn};

use super::error::PodError;
use super::{Backend, PodService, contract};
use crate::api::cri;
use crate::api::cri::image_service_client::ImageServiceClient;
use crate::api::pod::RunPodSandboxRequestBytes;
use crate::config::HandlerConfig;
use verify::{Restorer, VerifiedContainer};

pub(super) use by_annotation::SESSIONS_DIR;
pub use by_annotation::answers;
pub(super) use marker::TOKENS_DIR;

/// How long an undo waits for a RunPodSandbox that the deadline caught.
const PENDING_SANDBOX_LIMIT: Duration = Duration::from_secs(120);

/// What a half-done restore has created, so that it can be undone.
#[derive(Default)]
struct Created {
    sandbox: Option<String>,
    /// A RunPodSandbox under way. It runs as a task of its own, so that a
    /// deadline in the middle does not cut it off at a point where the
    /// runtime has made the sandbox but we never learn its id: the undo
    /// waits for it instead, and removes what it made.
    pending_sandbox: Option<tokio::task::JoinHandle<Result<cri::RunPodSandboxResponse, PodError>>>,
    tokens: Vec<std::path::PathBuf>,
    /// When the sandbox was ready, counted from the start of the call.
    sandbox_ms: u64,
}

impl PodService {
    /// The backend of a handler a restore may go through: one that runs
    /// podckpt-runc. The CRI makes an unknown handler the caller's mistake;
    /// a known one that does not run podckpt-runc is a setup that cannot
    /// restore.
    fn restore_backend(&self, handler: &str) -> Result<&HandlerConfig, PodError> {
        let handlers = &self.inner.handlers;
        let Some(config) = handlers.get(handler) else {
            let known: Vec<&String> = handlers.keys().collect();
            return Err(PodError::InvalidArgument(format!(
                "unknown runtime handler {handler:?}; podckptd's config knows {known:?}, of which {:?} can restore",
                self.restoring_handlers()
            )));
        };
        if !config.restore {
            return Err(PodError::FailedPrecondition(format!(
                "runtime handler {handler:?} does not run podckpt-runc; restore with a handler that has restore = true: {:?}",
                self.restoring_handlers()
            )));
        }
        Ok(config)
    }

    /// The handlers with `restore = true`, by name.
    fn restoring_handlers(&self) -> Vec<&String> {
        self.inner
            .handlers
            .iter()
            .filter(|(_, h)| h.restore)
            .map(|(n, _)| n)
            .collect()
    }

    /// What verifies a checkpoint for a restore through `handler`.
    async fn restorer(&self, handler: &str, backend: &Backend) -> Result<Restorer, PodError> {
        let engine_version = if backend.checkpointer.restores_only_own_version() {
            Some(backend.checkpointer.engine_version().await?)
        } else {
            None
        };
        Ok(Restorer {
            handler: handler.to_owned(),
            backend: backend.checkpointer.name().to_owned(),
            whole_sandbox: backend.checkpointer.captures_sandbox(),
            engine_version,
        })
    }

    /// Verifies the checkpoint at `path` off the thread that relays
    /// everyone else's calls (hashing a large one takes a while), timed.
    async fn verify_checkpoint(
        &self,
        path: &Path,
        restorer: Restorer,
        backend: &Backend,
    ) -> Result<verify::VerifiedCheckpoint, PodError> {
        let (path, seals, checkpointer) = (path.to_owned(), self.inner.seals.clone(), backend.checkpointer.clone());
        let verifying = tokio::time::Instant::now();
        let verified = tokio::task::spawn_blocking(move || {
            verify::verify_checkpoint(&path, &restorer, &seals, checkpointer.as_ref())
        })
        .await
        .map_err(PodError::task("verification"))?;
        self.inner.metrics.observe_verification(verifying.elapsed());
        verified
    }

    /// Resolves the image the caller's config names on the runtime below and
    /// compares it, by id, with the image its checkpoint ran.
    async fn check_image(&self, container: &VerifiedContainer) -> Result<(), PodError> {
        let name = &container.image.image;
        let id = if name.is_empty() {
            None
        } else {
            let request = cri::ImageStatusRequest {
                image: Some(container.image.clone()),
                verbose: false,
            };
            let status = ImageServiceClient::new(self.inner.channel.clone())
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
        Ok(())
    }

    /// RunPodSandbox on the runtime below, recorded in `created` while it
    /// runs, so that a deadline in the middle still removes what it makes.
    async fn create_sandbox(&self, run: RunPodSandboxRequestBytes, created: &mut Created) -> Result<String, PodError> {
        let service = self.clone();
        let pending =
            created.pending_sandbox.insert(tokio::spawn(
                async move { service.raw_call("RunPodSandbox", run).await },
            ));
        let sandbox = pending.await.map_err(PodError::task("RunPodSandbox"));
        created.pending_sandbox = None;
        let sandbox_id = sandbox??.pod_sandbox_id;
        created.sandbox = Some(sandbox_id.clone());
        Ok(sandbox_id)
    }

    /// CreateContainer on the runtime below. A refusal of podckpt-runc's
    /// that the new container is unfit for the checkpoint is the caller's
    /// configs at fault, not the runtime.
    async fn create_marked_container(
        &self,
        name: &str,
        request: crate::api::pod::CreateContainerRequestBytes,
    ) -> Result<String, PodError> {
        let response: cri::CreateContainerResponse =
            self.raw_call("CreateContainer", request)
                .await
                .map_err(|err| match err {
                    PodError::Runtime { status, .. } if status.message().contains(crate::backend::MISMATCH) => {
                        PodError::FailedPrecondition(format!("container {name:?}: {}", status.message().trim()))
                    }
                    other => other,
                })?;
        Ok(response.container_id)
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

/// Whether a restore through `backend` is lazy: what was asked, else the
/// handler's default, else whether the backend can. Asking a runtime that
/// cannot is the caller's setup to fix.
fn lazy_pages(backend: &Backend, handler: &str, asked: Option<bool>) -> Result<bool, PodError> {
    let can = backend.checkpointer.restores_lazily();
    let lazy = asked.or(backend.config.lazy_pages).unwrap_or(can);
    if lazy && !can {
        return Err(PodError::FailedPrecondition(format!(
            "runtime handler {handler:?} ({}, backend {}) cannot restore lazily; set {}=false, or use a handler whose backend can",
            backend.config.runtime.display(),
            backend.checkpointer.name(),
            super::options::LAZY_PAGES
        )));
    }
    Ok(lazy)
}
