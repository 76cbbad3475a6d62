//! `podckpt.v1.Checkpoints`: checkpoints kept by name under the node's
//! checkpoint root (see `named`), for `podckpt checkpointp --name` and the
//! node agent. The pod's namespace is the runtime's account of it, never the
//! caller's, so a checkpoint lands in the namespace of the pod it holds.

use tonic::{Request, Response, Status};

use super::PodService;
use super::error::PodError;
use crate::api::podckpt::checkpoints_server::Checkpoints;
use crate::api::podckpt::{
    DeleteRequest, DeleteResponse, ListRequest, ListResponse, NamedCheckpoint, PrepareRequest, PrepareResponse,
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
        let name = request.name;
        let ns = namespace.clone();
        let path = tokio::task::spawn_blocking(move || named.prepare(&ns, &name))
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
                .map(|(namespace, name, path)| NamedCheckpoint {
                    committed: archive::is_committed(&path),
                    bytes: archive::space::tree_size(&path),
                    path: path.display().to_string(),
                    namespace,
                    name,
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
