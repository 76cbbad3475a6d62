//! RestorePod: verify the checkpoint, and that the caller's configs describe
//! the processes it holds, before anything exists; then create the sandbox
//! and the containers from the caller's own configs, each marked for
//! podckpt-runc to restore; undo everything if any step fails.

use std::path::Path;
use std::time::Duration;

use tokio::time::Instant;
use tracing::info;

use super::super::error::PodError;
use super::super::options;
use super::marker::{self, How};
use super::verify::{VerifiedCheckpoint, VerifiedContainer};
use super::{Created, PodService, lazy_pages};
use crate::api::pod::{
    CreateContainerRequestBytes, RestorePodRequest, RestorePodResponse, RestoredContainer, RunPodSandboxRequestBytes,
};

impl PodService {
    pub(in crate::pod) async fn restore(
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
        let handler = &request.runtime_handler;
        let backend = self.backend(handler, self.restore_backend(handler)?).await?;
        let asked = options::parse_restore(&request.options)?.lazy_pages;
        let lazy_pages = lazy_pages(&backend, handler, asked)?;
        let restorer = self.restorer(handler, &backend).await?;
        let checkpoint = self
            .verify_checkpoint(Path::new(&request.checkpoint_path), restorer, &backend)
            .await?;
        let configs = request.container_configs.clone();
        let containers = checkpoint.admit_all(&configs)?;
        let checking_images = async {
            for container in &containers {
                self.check_image(container).await?;
            }
            Ok(())
        };
        tokio::time::timeout_at(started + limit, checking_images)
            .await
            .unwrap_or(Err(PodError::DeadlineExceeded {
                limit,
                undone: "nothing was created",
            }))?;
        let verified_ms = started.elapsed().as_millis() as u64;

        let mut created = Created::default();
        let how = How {
            backend: backend.config.backend.clone(),
            lazy_pages,
        };
        let work = self.create_all(&request, &checkpoint, &containers, &how, &mut created, started);
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
        checkpoint: &VerifiedCheckpoint,
        containers: &[VerifiedContainer],
        how: &How,
        created: &mut Created,
        started: Instant,
    ) -> Result<RestorePodResponse, PodError> {
        let state_dir = &self.inner.state_dir;
        let sandbox_token = marker::sandbox_token(checkpoint, &request.config, how)?;
        let annotations =
            marker::sandbox_annotations(state_dir, checkpoint.pid_floor, sandbox_token, &mut created.tokens)?;
        let run = RunPodSandboxRequestBytes {
            config: marker::annotate_sandbox(&request.config, annotations)?,
            runtime_handler: request.runtime_handler.clone(),
        };
        let sandbox_id = self.create_sandbox(run, created).await?;
        created.sandbox_ms = started.elapsed().as_millis() as u64;

        let mut restored = Vec::new();
        for container in containers {
            let (token_path, marked) = marker::mark_container(state_dir, checkpoint, container, &sandbox_id, how)?;
            created.tokens.push(token_path);
            let create = CreateContainerRequestBytes {
                pod_sandbox_id: sandbox_id.clone(),
                config: marked,
                sandbox_config: request.config.clone(),
            };
            let container_id = self.create_marked_container(&container.name, create).await?;
            restored.push(RestoredContainer {
                name: container.name.clone(),
                container_id,
            });
        }
        Ok(RestorePodResponse {
            pod_sandbox_id: sandbox_id,
            restored_containers: restored,
        })
    }
}
