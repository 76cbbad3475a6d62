//! Pod operations: the `CheckpointPod` and `RestorePod` calls that podckpt
//! answers itself.

use tonic::{Request, Response, Status};

use crate::api::pod::{
    CheckpointPodRequest, CheckpointPodResponse, RestorePodRequest, RestorePodResponse,
    runtime_service_server::RuntimeService,
};

/// Our side of `runtime.v1.RuntimeService`. Checkpoint and restore land with
/// the CRIU backend; until then the calls say so plainly instead of reaching
/// a runtime that does not know them.
#[derive(Clone, Debug, Default)]
pub struct PodService;

impl PodService {
    pub fn new() -> Self {
        Self
    }
}

#[tonic::async_trait]
impl RuntimeService for PodService {
    async fn checkpoint_pod(
        &self,
        _request: Request<CheckpointPodRequest>,
    ) -> Result<Response<CheckpointPodResponse>, Status> {
        Err(Status::unimplemented(
            "CheckpointPod: this podckptd build has no checkpoint backend yet",
        ))
    }

    async fn restore_pod(&self, _request: Request<RestorePodRequest>) -> Result<Response<RestorePodResponse>, Status> {
        Err(Status::unimplemented(
            "RestorePod: this podckptd build has no checkpoint backend yet",
        ))
    }
}
