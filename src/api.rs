//! Wire types of the CRI. The ordinary calls come from the `k8s-cri` crate;
//! the pod-level checkpoint calls from our own schema in `proto/`.

/// CRI v1 messages, clients and servers for every ordinary call.
pub use k8s_cri::v1 as cri;

/// The KEP-5823 pod checkpoint calls on `runtime.v1.RuntimeService`.
pub mod pod {
    tonic::include_proto!("runtime.v1");
}

/// podckpt's own services beside the CRI: the pre-flight check, and
/// checkpoints by name.
pub mod podckpt {
    tonic::include_proto!("podckpt.v1");
}

/// gRPC paths that podckpt answers itself instead of forwarding.
pub const CHECKPOINT_POD_PATH: &str = "/runtime.v1.RuntimeService/CheckpointPod";
pub const RESTORE_POD_PATH: &str = "/runtime.v1.RuntimeService/RestorePod";
/// The runtime.v1 calls podckptd answers itself for a pod annotated
/// `podckpt.io/restore-from`, when it restores such pods.
pub const RUN_POD_SANDBOX_PATH: &str = "/runtime.v1.RuntimeService/RunPodSandbox";
pub const CREATE_CONTAINER_PATH: &str = "/runtime.v1.RuntimeService/CreateContainer";
/// Every call under this prefix is podckpt's own: the runtime below has no
/// such service, and would only answer UNIMPLEMENTED.
pub const OWN_SERVICE_PREFIX: &str = "/podckpt.v1.";
pub const CHECK_POD_PATH: &str = "/podckpt.v1.Preflight/CheckPod";
/// podckpt's own services, each by its path prefix.
pub const PREFLIGHT_SERVICE: &str = "/podckpt.v1.Preflight/";
pub const CHECKPOINTS_SERVICE: &str = "/podckpt.v1.Checkpoints/";

/// Whether a request path belongs to podckpt's own service.
pub fn is_own_path(path: &str) -> bool {
    path == CHECKPOINT_POD_PATH || path == RESTORE_POD_PATH || path.starts_with(OWN_SERVICE_PREFIX)
}
