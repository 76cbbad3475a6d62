//! `podckpt.v1.Checkpoints`: checkpoints kept by name under the node's
//! checkpoint root (see `named`), for `podckpt checkpointp --name` and the
//! node agent. The pod's namespace is the runtime's account of it, never the
//! caller's, so a checkpoint lands in the namespace of the pod it holds.

use tonic::{Request, Response, Status};

use super::PodService;
use super::error::PodError;
use crate::api::podckpt::checkpoints_server::Checkpoints;
use crate::api::podckpt::{
    CheckpointedContainer, DeleteRequest, DeleteResponse, ListRequest, ListResponse, NamedCheckpoint, PrepareRequest,
    PrepareResponse,
};
use crate::archive;

impl PodService {
    async fn prepare_named(&self, request: PrepareRequest) -> Result<PrepareResponse, PodError> {
        super::named::check_name(&request.name)?;
        let pod = self.any_pod_status(&request.pod_sandbox_id).await?;
        let namespace = pod
            .status
            .and_then(|s| s.metadata)
            .map(|m| m.namespace)
            .unwrap_or_default();
        let named = self.inner.named.clone();
        let (name, owner) = (request.name, request.owner);
        let ns = namespace.clone();
        let path = tokio::task::spawn_blocking(move || named.prepare(&ns, &name, &owner))
            .await
            .map_err(PodError::task("preparing a checkpoint directory"))??;
        Ok(PrepareResponse {
            path: path.display().to_string(),
            namespace,
        })
    }

    async fn list_named(&self, request: ListRequest) -> Result<ListResponse, PodError> {
        let named = self.inner.named.clone();
        tokio::task::spawn_blocking(move || {
            let checkpoints = named
                .list()?
                .into_iter()
                .filter(|(namespace, _, _)| request.namespace.is_empty() || *namespace == request.namespace)
                .map(|(namespace, name, path)| {
                    let mut listed = describe(&path);
                    listed.owner = named.owner(&namespace, &name);
                    NamedCheckpoint {
                        namespace,
                        name,
                        ..listed
                    }
                })
                .collect();
            Ok(ListResponse {
                checkpoints,
                root: named.root().display().to_string(),
            })
        })
        .await
        .map_err(PodError::task("listing checkpoints"))?
    }

    async fn delete_named(&self, request: DeleteRequest) -> Result<DeleteResponse, PodError> {
        let path = self.inner.named.path(&request.namespace, &request.name)?;
        // Not while a CheckpointPod writes into it.
        let _writing = self.claim_output(&path)?;
        let named = self.inner.named.clone();
        let deleted = tokio::task::spawn_blocking(move || named.delete(&request.namespace, &request.name))
            .await
            .map_err(PodError::task("deleting a checkpoint"))??;
        if !deleted {
            return Err(PodError::NotFound(format!("there is no checkpoint {}", path.display())));
        }
        Ok(DeleteResponse {})
    }
}

/// What a checkpoint directory holds, from its own files: its size always;
/// the rest only once it is committed (a manifest written), and as far as
/// its files say.
fn describe(path: &std::path::Path) -> NamedCheckpoint {
    let mut listed = NamedCheckpoint {
        path: path.display().to_string(),
        committed: archive::is_committed(path),
        bytes: archive::space::tree_size(path),
        ..Default::default()
    };
    if !listed.committed {
        return listed;
    }
    let read = |name: &str| -> Option<serde_json::Value> {
        serde_json::from_slice(&std::fs::read(path.join(name)).ok()?).ok()
    };
    if let Some(manifest) = read(archive::MANIFEST) {
        listed.freeze_ms = manifest["freeze_ms"].as_u64().unwrap_or_default();
        listed.backend = manifest["backend"].as_str().unwrap_or_default().to_owned();
        listed.engine_version = manifest["engine_version"].as_str().unwrap_or_default().to_owned();
        listed.created = manifest["created"].as_str().unwrap_or_default().to_owned();
    }
    if let Some(pod) = read(archive::POD_DUMP) {
        listed.pod_name = pod["metadata"]["name"].as_str().unwrap_or_default().to_owned();
        listed.pod_uid = pod["metadata"]["uid"].as_str().unwrap_or_default().to_owned();
    }
    let containers = read(archive::POD_OPTIONS)
        .and_then(|options| serde_json::from_value::<archive::PodOptions>(options).ok())
        .map(|options| options.containers)
        .unwrap_or_default();
    listed.containers = containers
        .into_iter()
        .map(|(name, folder)| {
            let record = read(&format!("{folder}/{}", archive::PROCESS_RECORD)).unwrap_or_default();
            CheckpointedContainer {
                name,
                image: record["image"].as_str().unwrap_or_default().to_owned(),
                image_id: record["image_id"].as_str().unwrap_or_default().to_owned(),
            }
        })
        .collect();
    listed
}

#[tonic::async_trait]
impl Checkpoints for PodService {
    async fn prepare(&self, request: Request<PrepareRequest>) -> Result<Response<PrepareResponse>, Status> {
        self.authorize(&request, "Checkpoints/Prepare")?;
        Ok(Response::new(self.prepare_named(request.into_inner()).await?))
    }

    async fn list(&self, request: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        self.authorize(&request, "Checkpoints/List")?;
        Ok(Response::new(self.list_named(request.into_inner()).await?))
    }

    async fn delete(&self, request: Request<DeleteRequest>) -> Result<Response<DeleteResponse>, Status> {
        self.authorize(&request, "Checkpoints/Delete")?;
        Ok(Response::new(self.delete_named(request.into_inner()).await?))
    }
}
