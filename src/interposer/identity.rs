//! Which sandbox and container an OCI spec is for, as the CRI runtime that
//! wrote it names them. containerd and CRI-O put the same facts into the
//! spec's annotations under different keys (and CRI-O partly as JSON); the
//! interposer reads whichever set is present, and learns from it which
//! runtime is calling, since the two expect different things of `create`.

use serde_json::Value;

/// The CRI runtime that wrote a spec.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CriRuntime {
    Containerd,
    CriO,
    /// Neither set of annotations (not a CRI container), or both: a genuine
    /// spec never has both, so one of them was put there by someone else
    /// (CRI-O passes a pod's own annotations on to its containers).
    Unknown,
}

/// A spec's place in its pod.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SpecIdentity {
    pub sandbox_id: String,
    pub container_name: String,
    /// Whether this is the pod's sandbox (pause) container.
    pub is_sandbox: bool,
    /// The pod's UID (only the sandbox's spec names it on containerd).
    pub pod_uid: String,
}

const CONTAINERD_TYPE: &str = "io.kubernetes.cri.container-type";
const CRIO_TYPE: &str = "io.kubernetes.cri-o.ContainerType";

impl CriRuntime {
    pub fn of(spec: &Value) -> Self {
        let annotations = &spec["annotations"];
        match (
            annotations.get(CONTAINERD_TYPE).is_some(),
            annotations.get(CRIO_TYPE).is_some(),
        ) {
            (true, false) => Self::Containerd,
            (false, true) => Self::CriO,
            _ => Self::Unknown,
        }
    }
}

impl SpecIdentity {
    pub fn of(spec: &Value) -> Self {
        let annotation = |key: &str| spec["annotations"][key].as_str().unwrap_or_default().to_owned();
        match CriRuntime::of(spec) {
            CriRuntime::Containerd => Self {
                sandbox_id: annotation("io.kubernetes.cri.sandbox-id"),
                container_name: annotation("io.kubernetes.cri.container-name"),
                is_sandbox: annotation(CONTAINERD_TYPE) == "sandbox",
                pod_uid: annotation("io.kubernetes.cri.sandbox-uid"),
            },
            CriRuntime::CriO => {
                // CRI-O keeps the CRI metadata as JSON: the container's
                // `{"name": ...}`, or the sandbox's `{"name", "uid", ...}`.
                let metadata: Value =
                    serde_json::from_str(&annotation("io.kubernetes.cri-o.Metadata")).unwrap_or_default();
                let is_sandbox = annotation(CRIO_TYPE) == "sandbox";
                Self {
                    sandbox_id: if is_sandbox {
                        annotation("io.kubernetes.cri-o.ContainerID")
                    } else {
                        annotation("io.kubernetes.cri-o.SandboxID")
                    },
                    container_name: metadata["name"].as_str().unwrap_or_default().to_owned(),
                    is_sandbox,
                    pod_uid: if is_sandbox {
                        metadata["uid"].as_str().unwrap_or_default().to_owned()
                    } else {
                        String::new()
                    },
                }
            }
            CriRuntime::Unknown => Self::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn containerd_names_a_container_by_its_keys() {
        let spec = json!({"annotations": {
            "io.kubernetes.cri.container-type": "container",
            "io.kubernetes.cri.sandbox-id": "sb",
            "io.kubernetes.cri.container-name": "counter",
        }});
        assert_eq!(CriRuntime::of(&spec), CriRuntime::Containerd);
        let id = SpecIdentity::of(&spec);
        assert_eq!(
            (id.sandbox_id.as_str(), id.container_name.as_str(), id.is_sandbox),
            ("sb", "counter", false)
        );
    }

    #[test]
    fn crio_names_them_in_its_own_keys_and_json() {
        // As CRI-O 1.37 wrote them for a container and for its sandbox.
        let container = json!({"annotations": {
            "io.kubernetes.cri-o.ContainerType": "container",
            "io.kubernetes.cri-o.SandboxID": "sb",
            "io.kubernetes.cri-o.Metadata": "{\"name\":\"counter\"}",
            "io.kubernetes.cri-o.Name": "k8s_counter_pod_ns_uid_0",
        }});
        assert_eq!(CriRuntime::of(&container), CriRuntime::CriO);
        let id = SpecIdentity::of(&container);
        assert_eq!(
            (id.sandbox_id.as_str(), id.container_name.as_str(), id.is_sandbox),
            ("sb", "counter", false)
        );
        let sandbox = json!({"annotations": {
            "io.kubernetes.cri-o.ContainerType": "sandbox",
            "io.kubernetes.cri-o.ContainerID": "sb",
            "io.kubernetes.cri-o.Metadata": "{\"name\":\"pod\",\"uid\":\"u-1\",\"namespace\":\"ns\"}",
        }});
        let id = SpecIdentity::of(&sandbox);
        assert_eq!(
            (id.sandbox_id.as_str(), id.pod_uid.as_str(), id.is_sandbox),
            ("sb", "u-1", true)
        );
    }

    #[test]
    fn a_spec_without_either_or_with_both_is_nobody() {
        assert_eq!(CriRuntime::of(&json!({})), CriRuntime::Unknown);
        // A pod on CRI-O that adds containerd's keys to its annotations.
        let forged = json!({"annotations": {
            "io.kubernetes.cri-o.ContainerType": "container",
            "io.kubernetes.cri-o.SandboxID": "mine",
            "io.kubernetes.cri.container-type": "container",
            "io.kubernetes.cri.sandbox-id": "victim",
            "io.kubernetes.cri.container-name": "counter",
        }});
        assert_eq!(CriRuntime::of(&forged), CriRuntime::Unknown);
        assert_eq!(SpecIdentity::of(&forged), SpecIdentity::default());
        assert_eq!(SpecIdentity::of(&json!({"annotations": {}})), SpecIdentity::default());
    }
}
