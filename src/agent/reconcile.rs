//! The agent's control loop: one PodCheckpoint at a time, as kube-rs's
//! controller hands it over, brought to what it asks for on this node.
//!
//! - A PodCheckpoint whose pod runs on another node is that node's agent's.
//!   One whose pod does not exist fails at once (any agent may say so: the
//!   status is the same whoever writes it).
//! - This node's agent takes it on (its finalizer, `status.nodeName`,
//!   `CheckpointInProgress`), has podckptd make the directory
//!   `checkpoint_root/NAMESPACE/NAME` and checkpoint the pod into it with
//!   the object's deadline and options, and writes the outcome:
//!   `CheckpointCompleted` with the location, the containers with their
//!   image digests and podckpt's figures, or `CheckpointFailed` with
//!   podckptd's code and message (the empty directory removed).
//! - A node cap on the bytes under the root (`--max-checkpoint-bytes`) is
//!   checked against podckptd's pre-flight estimate before the pod is
//!   paused.
//! - Completed and failed are final: never redone, also after a restart.
//!   One left in progress by an agent that stopped is finished from what
//!   is on disk (committed: completed) or taken again.
//! - Deleted: the directory goes, then the finalizer, so the object goes
//!   only once its checkpoint has.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use tracing::{info, warn};

use super::crd::{
    COMPLETED, CheckpointLocation, CheckpointedContainer, FAILED, FINALIZER, IN_PROGRESS, NodeLocal, PENDING,
    PodCheckpoint, PodCheckpointStatus, READY, REPLACED,
};
use super::podckptd::Podckptd;
use crate::api::podckpt::NamedCheckpoint;

/// CheckpointPod's deadline when the object names none.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// How soon a pod not yet running, or a busy directory, is looked at again.
const SOON: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("API server: {0}")]
    Kube(#[from] kube::Error),
    #[error("podckptd: {}: {}", .0.code(), .0.message())]
    Podckptd(#[from] tonic::Status),
}

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    /// This node's name: the agent acts for pods on it.
    pub node: String,
    pub podckptd: Podckptd,
    /// The bytes the checkpoint root may hold; None, no cap.
    pub max_bytes: Option<u64>,
}

/// What the agent writes as the owner of a checkpoint it has podckptd make.
pub fn owner_of(uid: &str) -> String {
    format!("podcheckpoint/{uid}")
}

fn condition(reason: &str, message: impl Into<String>, generation: Option<i64>) -> Condition {
    Condition {
        type_: READY.into(),
        status: if reason == COMPLETED { "True" } else { "False" }.into(),
        reason: reason.into(),
        message: message.into(),
        last_transition_time: Time(k8s_openapi::jiff::Timestamp::now()),
        observed_generation: generation,
    }
}

pub async fn reconcile(checkpoint: Arc<PodCheckpoint>, ctx: Arc<Context>) -> Result<Action, Error> {
    let namespace = checkpoint.namespace().unwrap_or_default();
    let name = checkpoint.name_any();
    let api: Api<PodCheckpoint> = Api::namespaced(ctx.client.clone(), &namespace);
    let status = checkpoint.status.clone().unwrap_or_default();
    let ours = status.node_name.as_deref() == Some(ctx.node.as_str());
    let at = Reconciling {
        ctx: &ctx,
        api: &api,
        checkpoint: &checkpoint,
        namespace: &namespace,
        name: &name,
    };
    if checkpoint.metadata.deletion_timestamp.is_some() {
        if ours && checkpoint.finalizers().iter().any(|f| f == FINALIZER) {
            return at.release().await;
        }
        return Ok(Action::await_change());
    }
    match status.phase() {
        Some(COMPLETED | FAILED | REPLACED) => return Ok(Action::await_change()),
        Some(IN_PROGRESS) if !ours => return Ok(Action::await_change()),
        Some(IN_PROGRESS) => {
            // An agent stopped half way: what is on disk says how far.
            if let Some(done) = at.listed().await?.filter(|c| c.committed) {
                return at.completed(&done, status.source_pod_uid.clone()).await;
            }
            ctx.podckptd.delete(&namespace, &name).await?;
        }
        _ => {}
    }
    at.checkpoint().await
}

pub fn error_policy(checkpoint: Arc<PodCheckpoint>, error: &Error, _ctx: Arc<Context>) -> Action {
    warn!(
        podcheckpoint = %checkpoint.name_any(),
        namespace = checkpoint.namespace().unwrap_or_default(),
        %error,
        "reconcile failed; trying again"
    );
    Action::requeue(Duration::from_secs(10))
}

struct Reconciling<'a> {
    ctx: &'a Context,
    api: &'a Api<PodCheckpoint>,
    checkpoint: &'a PodCheckpoint,
    namespace: &'a str,
    name: &'a str,
}

impl Reconciling<'_> {
    async fn patch_status(&self, status: serde_json::Value) -> Result<(), Error> {
        self.api
            .patch_status(
                self.name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": status })),
            )
            .await?;
        Ok(())
    }

    /// A final or waiting phase, with nothing else to say.
    async fn phase(&self, reason: &str, message: String) -> Result<(), Error> {
        info!(podcheckpoint = self.name, namespace = self.namespace, reason, %message, "status");
        let generation = self.checkpoint.metadata.generation;
        self.patch_status(json!({ "conditions": [condition(reason, message, generation)] }))
            .await
    }

    /// This node's checkpoint of the object's name, as podckptd lists it.
    async fn listed(&self) -> Result<Option<NamedCheckpoint>, Error> {
        let (listed, _) = self.ctx.podckptd.list().await?;
        Ok(listed
            .into_iter()
            .find(|c| c.namespace == self.namespace && c.name == self.name))
    }

    async fn checkpoint(&self) -> Result<Action, Error> {
        let spec = &self.checkpoint.spec;
        let pods: Api<Pod> = Api::namespaced(self.ctx.client.clone(), self.namespace);
        let Some(pod) = pods.get_opt(&spec.source_pod.name).await? else {
            let message = format!(
                "pod {} does not exist in namespace {}",
                spec.source_pod.name, self.namespace
            );
            self.phase(FAILED, message).await?;
            return Ok(Action::await_change());
        };
        let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
        match node {
            Some(node) if node == self.ctx.node => {}
            // Another node's agent's, or not scheduled yet.
            Some(_) => return Ok(Action::await_change()),
            None => return Ok(Action::requeue(SOON)),
        }
        let uid = pod.uid().unwrap_or_default();
        if let Some(wanted) = spec.source_pod.uid.as_ref().filter(|wanted| **wanted != uid) {
            let message = format!(
                "pod {} has UID {uid}, not {wanted}: it was replaced",
                spec.source_pod.name
            );
            self.phase(REPLACED, message).await?;
            return Ok(Action::await_change());
        }
        let running = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
        let sandbox = match running {
            true => self.ctx.podckptd.sandbox_of(&uid).await?,
            false => None,
        };
        let Some(sandbox) = sandbox else {
            self.phase(PENDING, format!("waiting for pod {} to run", spec.source_pod.name))
                .await?;
            return Ok(Action::requeue(SOON));
        };
        let options: HashMap<String, String> = spec.options.clone().into_iter().collect();
        if let Some(refusal) = self.over_cap(&sandbox, &options).await? {
            self.phase(FAILED, refusal).await?;
            return Ok(Action::await_change());
        }

        // Taken on: the finalizer first, so that a deletion from now on
        // waits for the directory to go.
        let mut finalizers = self.checkpoint.finalizers().to_vec();
        if !finalizers.iter().any(|f| f == FINALIZER) {
            finalizers.push(FINALIZER.into());
            self.set_finalizers(finalizers).await?;
        }
        let generation = self.checkpoint.metadata.generation;
        self.patch_status(json!({
            "nodeName": self.ctx.node,
            "sourcePodUID": uid,
            "conditions": [condition(IN_PROGRESS, format!("checkpointing pod {} on {}", spec.source_pod.name, self.ctx.node), generation)],
        }))
        .await?;

        let owner = owner_of(&self.checkpoint.uid().unwrap_or_default());
        let path = match self.ctx.podckptd.prepare(&sandbox, self.name, &owner).await {
            Ok(path) => path,
            Err(status) => {
                self.phase(FAILED, format!("{:?}: {}", status.code(), status.message()))
                    .await?;
                return Ok(Action::await_change());
            }
        };
        let containers = self.ctx.podckptd.running_containers(&sandbox).await?;
        let limit = spec
            .timeout_seconds
            .map_or(DEFAULT_TIMEOUT, |s| Duration::from_secs(s.max(1) as u64));
        info!(podcheckpoint = self.name, namespace = self.namespace, pod = %spec.source_pod.name, path, "checkpointing");
        match self
            .ctx
            .podckptd
            .checkpoint(&sandbox, &path, containers, options, limit)
            .await
        {
            Ok(()) => match self.listed().await? {
                Some(done) => self.completed(&done, Some(uid)).await,
                None => {
                    self.phase(FAILED, format!("the checkpoint at {path} is gone")).await?;
                    Ok(Action::await_change())
                }
            },
            Err(status) => {
                // CheckpointPod left the directory empty; the name is free again.
                if let Err(error) = self.ctx.podckptd.delete(self.namespace, self.name).await {
                    warn!(%error, path, "could not remove the failed checkpoint's directory");
                }
                self.phase(FAILED, format!("{:?}: {}", status.code(), status.message()))
                    .await?;
                Ok(Action::await_change())
            }
        }
    }

    /// Why checkpointing this pod would pass the node's cap, if it would.
    async fn over_cap(&self, sandbox: &str, options: &HashMap<String, String>) -> Result<Option<String>, Error> {
        let Some(cap) = self.ctx.max_bytes else {
            return Ok(None);
        };
        let (listed, root) = self.ctx.podckptd.list().await?;
        let used: u64 = listed.iter().map(|c| c.bytes).sum();
        let estimate = self.ctx.podckptd.estimate(sandbox, options).await?;
        if used.saturating_add(estimate) <= cap {
            return Ok(None);
        }
        Ok(Some(format!(
            "the node's cap on checkpoints (--max-checkpoint-bytes {cap}) would be passed: {used} bytes under {root} already, and this pod's checkpoint is estimated at {estimate} bytes; nothing was paused"
        )))
    }

    async fn completed(&self, done: &NamedCheckpoint, uid: Option<String>) -> Result<Action, Error> {
        let containers: Vec<CheckpointedContainer> = done
            .containers
            .iter()
            .map(|c| CheckpointedContainer {
                name: c.name.clone(),
                image: c.image_id.clone(),
            })
            .collect();
        let status = PodCheckpointStatus {
            node_name: Some(self.ctx.node.clone()),
            source_pod_uid: uid,
            checkpoint_location: Some(CheckpointLocation {
                kind: "NodeLocal".into(),
                node_local: Some(NodeLocal {
                    path: done.path.clone(),
                }),
            }),
            completion_time: Some(Time(k8s_openapi::jiff::Timestamp::now())),
            checkpointed_containers: containers,
            conditions: vec![condition(
                COMPLETED,
                format!("checkpointed into {} on {}", done.path, self.ctx.node),
                self.checkpoint.metadata.generation,
            )],
            bytes: Some(done.bytes as i64),
            freeze_ms: Some(done.freeze_ms as i64),
            backend: Some(done.backend.clone()),
            engine_version: Some(done.engine_version.clone()),
        };
        info!(
            podcheckpoint = self.name,
            namespace = self.namespace,
            bytes = done.bytes,
            freeze_ms = done.freeze_ms,
            "completed"
        );
        self.patch_status(serde_json::to_value(&status).expect("a status serializes"))
            .await?;
        Ok(Action::await_change())
    }

    /// Replaces the object's finalizers; a merge patch of the whole list, as
    /// a list is not merged item by item.
    async fn set_finalizers(&self, finalizers: Vec<String>) -> Result<(), Error> {
        self.api
            .patch(
                self.name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "metadata": { "finalizers": finalizers } })),
            )
            .await?;
        Ok(())
    }

    /// Deleted: the directory goes, then the finalizer.
    async fn release(&self) -> Result<Action, Error> {
        if let Err(status) = self.ctx.podckptd.delete(self.namespace, self.name).await {
            if status.code() == tonic::Code::Aborted {
                // A CheckpointPod still writes into it.
                return Ok(Action::requeue(SOON));
            }
            return Err(status.into());
        }
        let finalizers: Vec<String> = self
            .checkpoint
            .finalizers()
            .iter()
            .filter(|f| *f != FINALIZER)
            .cloned()
            .collect();
        self.set_finalizers(finalizers).await?;
        info!(
            podcheckpoint = self.name,
            namespace = self.namespace,
            "checkpoint removed"
        );
        Ok(Action::await_change())
    }
}

/// Checkpoints the agent made whose PodCheckpoint is gone (deleted while
/// the agent was down): removed at start. Checkpoints made by hand (no
/// owner) are never touched.
pub async fn remove_orphans(ctx: &Context) -> Result<usize, Error> {
    let (listed, _) = ctx.podckptd.list().await?;
    let mut removed = 0;
    for checkpoint in listed {
        let Some(uid) = checkpoint.owner.strip_prefix("podcheckpoint/") else {
            continue;
        };
        let api: Api<PodCheckpoint> = Api::namespaced(ctx.client.clone(), &checkpoint.namespace);
        let alive = api
            .get_opt(&checkpoint.name)
            .await?
            .is_some_and(|object| object.uid().as_deref() == Some(uid));
        if !alive {
            ctx.podckptd.delete(&checkpoint.namespace, &checkpoint.name).await?;
            info!(namespace = %checkpoint.namespace, name = %checkpoint.name, "removed a checkpoint whose PodCheckpoint is gone");
            removed += 1;
        }
    }
    Ok(removed)
}
