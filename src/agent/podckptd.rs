//! The node's podckptd, as the agent reaches it: over its socket only,
//! with the CRI (to find a pod's sandbox and containers), the pod calls,
//! the pre-flight estimate and the checkpoints kept by name.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use tonic::Status;
use tonic::transport::Channel;

use crate::api::cri;
use crate::api::cri::runtime_service_client::RuntimeServiceClient;
use crate::api::pod::CheckpointPodRequest;
use crate::api::pod::runtime_service_client::RuntimeServiceClient as PodClient;
use crate::api::podckpt::checkpoints_client::CheckpointsClient;
use crate::api::podckpt::preflight_client::PreflightClient;
use crate::api::podckpt::{CheckPodRequest, DeleteRequest, ListRequest, NamedCheckpoint, PrepareRequest};

/// How long a call other than CheckpointPod may take.
const CALL_LIMIT: Duration = Duration::from_secs(60);

#[derive(Clone)]
pub struct Podckptd {
    runtime: RuntimeServiceClient<Channel>,
    pods: PodClient<Channel>,
    preflight: PreflightClient<Channel>,
    checkpoints: CheckpointsClient<Channel>,
}

fn limited<T>(message: T, limit: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(limit);
    request
}

impl Podckptd {
    pub fn new(socket: &Path) -> Self {
        let channel = crate::cri_client::channel(socket);
        Self {
            runtime: crate::cri_client::runtime(socket),
            pods: PodClient::new(channel.clone()),
            preflight: PreflightClient::new(channel.clone()),
            checkpoints: CheckpointsClient::new(channel),
        }
    }

    /// The ready sandbox of the pod with this UID, if the runtime has one.
    pub async fn sandbox_of(&self, pod_uid: &str) -> Result<Option<String>, Status> {
        let filter = cri::PodSandboxFilter {
            label_selector: [("io.kubernetes.pod.uid".to_string(), pod_uid.to_string())].into(),
            state: Some(cri::PodSandboxStateValue {
                state: cri::PodSandboxState::SandboxReady as i32,
            }),
            ..Default::default()
        };
        let pods = self
            .runtime
            .clone()
            .list_pod_sandbox(limited(cri::ListPodSandboxRequest { filter: Some(filter) }, CALL_LIMIT))
            .await?
            .into_inner()
            .items;
        Ok(pods.into_iter().next().map(|p| p.id))
    }

    /// Every running container of a sandbox: what CheckpointPod is given.
    pub async fn running_containers(&self, sandbox: &str) -> Result<Vec<String>, Status> {
        let filter = cri::ContainerFilter {
            pod_sandbox_id: sandbox.to_owned(),
            state: Some(cri::ContainerStateValue {
                state: cri::ContainerState::ContainerRunning as i32,
            }),
            ..Default::default()
        };
        Ok(self
            .runtime
            .clone()
            .list_containers(limited(cri::ListContainersRequest { filter: Some(filter) }, CALL_LIMIT))
            .await?
            .into_inner()
            .containers
            .into_iter()
            .map(|c| c.id)
            .collect())
    }

    /// The pre-flight check's estimate of the pod's checkpoint, in bytes.
    pub async fn estimate(&self, sandbox: &str, options: &HashMap<String, String>) -> Result<u64, Status> {
        let request = CheckPodRequest {
            pod_sandbox_id: sandbox.to_owned(),
            options: options.clone(),
            ..Default::default()
        };
        let answer = self
            .preflight
            .clone()
            .check_pod(limited(request, CALL_LIMIT))
            .await?
            .into_inner();
        Ok(answer.estimated_bytes)
    }

    /// The directory for checkpoint `name` of the pod's namespace.
    pub async fn prepare(&self, sandbox: &str, name: &str, owner: &str) -> Result<String, Status> {
        let request = PrepareRequest {
            pod_sandbox_id: sandbox.to_owned(),
            name: name.to_owned(),
            owner: owner.to_owned(),
        };
        Ok(self
            .checkpoints
            .clone()
            .prepare(limited(request, CALL_LIMIT))
            .await?
            .into_inner()
            .path)
    }

    pub async fn checkpoint(
        &self,
        sandbox: &str,
        path: &str,
        containers: Vec<String>,
        options: HashMap<String, String>,
        limit: Duration,
    ) -> Result<(), Status> {
        let request = CheckpointPodRequest {
            pod_sandbox_id: sandbox.to_owned(),
            output_path: path.to_owned(),
            container_ids: containers,
            options,
        };
        self.pods.clone().checkpoint_pod(limited(request, limit)).await?;
        Ok(())
    }

    /// Every checkpoint under the node's root, described; and the root.
    pub async fn list(&self) -> Result<(Vec<NamedCheckpoint>, String), Status> {
        let listed = self
            .checkpoints
            .clone()
            .list(limited(ListRequest::default(), CALL_LIMIT))
            .await?
            .into_inner();
        Ok((listed.checkpoints, listed.root))
    }

    /// Removes checkpoint `name` of `namespace`; gone already is done.
    pub async fn delete(&self, namespace: &str, name: &str) -> Result<(), Status> {
        let request = DeleteRequest {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        };
        match self.checkpoints.clone().delete(limited(request, CALL_LIMIT)).await {
            Err(status) if status.code() != tonic::Code::NotFound => Err(status),
            _ => Ok(()),
        }
    }
}
