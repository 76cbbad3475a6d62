//! `PodCheckpoint` (`podcheckpoints.podckpt.io/v1alpha1`): a checkpoint of a
//! pod, asked for through the API server. Shaped like KEP-5823's built-in
//! PodCheckpoint (`node.k8s.io/v1alpha1`, from Kubernetes 1.38 alpha, behind
//! a gate), with its field names and its condition reasons, so that moving
//! to the built-in type later is a change of group, not of habits; and with
//! podckpt's own figures beside them. The node agent of the pod's node
//! writes its status; nobody else may (RBAC, `deploy/kubernetes/`).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// The finalizer the agent of the checkpoint's node puts on a PodCheckpoint
/// it takes on: the object goes only once its directory is gone.
pub const FINALIZER: &str = "podckpt.io/checkpoint";
/// The condition the agent keeps, and its reasons (KEP-5823's).
pub const READY: &str = "Ready";
pub const PENDING: &str = "Pending";
pub const IN_PROGRESS: &str = "CheckpointInProgress";
pub const COMPLETED: &str = "CheckpointCompleted";
pub const FAILED: &str = "CheckpointFailed";
pub const REPLACED: &str = "SourcePodReplaced";

/// A checkpoint of one pod, taken on the pod's node into
/// `checkpoint_root/NAMESPACE/NAME`, where a pod of the same namespace
/// annotated `podckpt.io/restore-from: NAME` is restored from it.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "podckpt.io",
    version = "v1alpha1",
    kind = "PodCheckpoint",
    plural = "podcheckpoints",
    shortname = "pcp",
    namespaced,
    status = "PodCheckpointStatus",
    printcolumn = r#"{"name":"Pod","type":"string","jsonPath":".spec.sourcePod.name"}"#,
    printcolumn = r#"{"name":"Node","type":"string","jsonPath":".status.nodeName"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Size","type":"integer","format":"int64","jsonPath":".status.bytes"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = ("self == oldSelf", "spec is immutable: delete the PodCheckpoint and make another"))]
#[serde(rename_all = "camelCase")]
pub struct PodCheckpointSpec {
    /// The pod to checkpoint, in the PodCheckpoint's own namespace.
    pub source_pod: SourcePod,
    /// How long the checkpoint may take, pod paused included (CheckpointPod's
    /// deadline). Default 60.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3600))]
    pub timeout_seconds: Option<i64>,
    /// CheckpointPod's options (podckpt.io/tcp-established, ...), which
    /// podckptd checks.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SourcePod {
    /// The pod's name.
    #[schemars(length(min = 1, max = 253))]
    #[schemars(regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"))]
    pub name: String,
    /// The pod's UID: if given, a pod of that name with another UID (a
    /// replacement) is not checkpointed (SourcePodReplaced).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodCheckpointStatus {
    /// The node the checkpoint is taken on, and kept on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// The UID of the pod that was checkpointed.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "sourcePodUID")]
    pub source_pod_uid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_location: Option<CheckpointLocation>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checkpointed_containers: Vec<CheckpointedContainer>,
    /// `Ready`, with a reason of KEP-5823's: Pending, CheckpointInProgress,
    /// CheckpointCompleted, CheckpointFailed, SourcePodReplaced.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// podckpt's own figures: the checkpoint's bytes, how long the pod was
    /// frozen, and the backend that took it, with its engine's version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub freeze_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine_version: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct CheckpointLocation {
    /// `NodeLocal`: on the node of `status.nodeName`.
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_local: Option<NodeLocal>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
pub struct NodeLocal {
    /// The checkpoint's directory on the node.
    pub path: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
pub struct CheckpointedContainer {
    pub name: String,
    /// The image as its identity (a digest), as the runtime reported it.
    pub image: String,
}

impl PodCheckpointStatus {
    /// The reason of the `Ready` condition: the checkpoint's phase.
    pub fn phase(&self) -> Option<&str> {
        self.conditions
            .iter()
            .find(|c| c.type_ == READY)
            .map(|c| c.reason.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    /// What a user applies is what the type says: the shipped CRD is the
    /// derived one (`podckpt-agent crd > deploy/kubernetes/crd.yaml`).
    #[test]
    fn the_shipped_crd_is_the_derived_one() {
        let shipped = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/kubernetes/crd.yaml"))
            .expect("deploy/kubernetes/crd.yaml");
        let shipped: serde_json::Value = serde_yaml::from_str(&shipped).unwrap();
        let derived = serde_json::to_value(PodCheckpoint::crd()).unwrap();
        assert_eq!(
            shipped, derived,
            "regenerate it: podckpt-agent crd > deploy/kubernetes/crd.yaml"
        );
    }

    #[test]
    fn the_schema_refuses_what_the_api_server_must() {
        let crd = serde_json::to_value(PodCheckpoint::crd()).unwrap();
        let version = &crd["spec"]["versions"][0];
        let spec = &version["schema"]["openAPIV3Schema"]["properties"]["spec"];
        assert_eq!(spec["properties"]["timeoutSeconds"]["minimum"], 1.0);
        assert_eq!(spec["properties"]["timeoutSeconds"]["maximum"], 3600.0);
        assert!(spec["properties"]["sourcePod"]["properties"]["name"]["pattern"].is_string());
        assert_eq!(spec["x-kubernetes-validations"][0]["rule"], "self == oldSelf");
        assert!(version["subresources"]["status"].is_object());
    }
}
