//! The pod calls as the three real gRPC stacks see them: tonic, grpc-go
//! (the kubelet's and crictl's stack) and grpc C-core (Python grpcio with
//! its default channel options). Each stack runs a whole pod lifecycle
//! through podckptd on one channel: run a counter pod, meet every documented
//! error of CheckpointPod and RestorePod with its code, checkpoint, remove
//! the pod, restore it, start it, and read the counter going on.

use std::path::Path;
use std::time::Duration;

use podckpt::api::{cri, pod};
use prost::Message;
use tonic::Code;

use crate::support::interop::{CallResult, Client, Stack};
use crate::support::{self, COUNTER, Shim, Testbed, eventually, runc_status};

const CALL_LIMIT: Duration = Duration::from_secs(60);
/// StopPodSandbox's deadline, which CRI-O spends as the containers' grace period.
const STOP_LIMIT: Duration = Duration::from_secs(15);

on_each_runtime!(
    tonic_runs_the_pod_lifecycle_with_documented_codes,
    grpc_go_runs_the_pod_lifecycle_with_documented_codes,
    grpcio_runs_the_pod_lifecycle_with_documented_codes,
);

async fn tonic_runs_the_pod_lifecycle_with_documented_codes(tb: Testbed) {
    lifecycle(Stack::Tonic, tb).await;
}

async fn grpc_go_runs_the_pod_lifecycle_with_documented_codes(tb: Testbed) {
    lifecycle(Stack::Go, tb).await;
}

async fn grpcio_runs_the_pod_lifecycle_with_documented_codes(tb: Testbed) {
    lifecycle(Stack::Python, tb).await;
}

/// A sandbox made through a stack; removed through containerd when the
/// test ends, however it ends.
struct Sandbox {
    id: String,
    containerd: std::path::PathBuf,
    _log_dir: tempfile::TempDir,
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        support::remove_pod_blocking(&self.containerd, &self.id);
    }
}

/// One stack's client, with the CRI calls a test needs, each asserted OK.
struct Caller {
    client: Client,
}

impl Caller {
    async fn ok<Req: Message, Resp: Message + Default>(&mut self, method: &str, request: &Req) -> Resp {
        self.client.runtime_ok(method, request, CALL_LIMIT).await
    }

    async fn raw(&mut self, method: &str, request: &impl Message, timeout: Option<Duration>) -> CallResult {
        self.client.runtime_call(method, request, timeout).await
    }

    async fn run_pod(&mut self, tb: &support::Testbed, name: &str, handler: &str) -> (Sandbox, cri::PodSandboxConfig) {
        let log_dir = tempfile::tempdir().unwrap();
        let config = support::pod_config(&support::unique(name), log_dir.path());
        let request = cri::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: handler.into(),
        };
        let response: cri::RunPodSandboxResponse = self.ok("RunPodSandbox", &request).await;
        let sandbox = Sandbox {
            id: response.pod_sandbox_id,
            containerd: tb.socket.clone(),
            _log_dir: log_dir,
        };
        (sandbox, config)
    }

    async fn start(&mut self, container_id: &str) {
        let request = cri::StartContainerRequest {
            container_id: container_id.into(),
        };
        let _: cri::StartContainerResponse = self.ok("StartContainer", &request).await;
    }

    /// The counter's value, read with ExecSync through this stack.
    async fn count(&mut self, container_id: &str) -> u64 {
        for _ in 0..20 {
            let request = cri::ExecSyncRequest {
                container_id: container_id.into(),
                cmd: vec!["cat".into(), "/tmp/count".into()],
                timeout: 30,
            };
            let response: cri::ExecSyncResponse = self.ok("ExecSync", &request).await;
            if let Ok(n) = String::from_utf8_lossy(&response.stdout).trim().parse() {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("no count in container {container_id}");
    }

    async fn remove_pod(&mut self, id: &str) {
        // CRI-O gives containers that ignore SIGTERM (a shell as PID 1) the
        // call's whole deadline before it kills them, as the kubelet's
        // grace period; a short one keeps the test short.
        let request = cri::StopPodSandboxRequest {
            pod_sandbox_id: id.into(),
        };
        let stopped = self.raw("StopPodSandbox", &request, Some(STOP_LIMIT)).await;
        assert_eq!(stopped.code(), Code::Ok, "StopPodSandbox: {}", stopped.message);
        let _: cri::RemovePodSandboxResponse = self
            .ok(
                "RemovePodSandbox",
                &cri::RemovePodSandboxRequest {
                    pod_sandbox_id: id.into(),
                },
            )
            .await;
    }
}

/// A refusal and the code the contract, or podckpt's README, gives it.
struct Refusal {
    what: &'static str,
    result: CallResult,
    code: Code,
}

async fn lifecycle(stack: Stack, tb: Testbed) {
    let shim = Shim::start(&tb);
    let Some(client) = Client::start(stack, &shim.socket) else {
        return;
    };
    support::install_interposer();
    let mut caller = Caller { client };

    // A counter pod, made through the stack.
    let (sandbox, sandbox_config) = caller.run_pod(&tb, "interop", "").await;
    let create = cri::CreateContainerRequest {
        pod_sandbox_id: sandbox.id.clone(),
        config: Some(support::container_config("counter", &tb.image, COUNTER)),
        sandbox_config: Some(sandbox_config),
    };
    let cid = caller
        .ok::<_, cri::CreateContainerResponse>("CreateContainer", &create)
        .await
        .container_id;
    caller.start(&cid).await;
    let mut direct = tb.direct().await;
    // Far enough that a counter started afresh could not be there yet.
    assert!(support::count_reaches(&direct, &cid, 10, Duration::from_secs(20)).await);

    let parent = tempfile::tempdir().unwrap();
    let dir = |name: &str| {
        let path = parent.path().join(name);
        std::fs::create_dir(&path).unwrap();
        path
    };
    let (empty, out) = (dir("empty"), dir("ckpt"));
    let full = dir("full");
    std::fs::write(full.join("keep"), b"precious").unwrap();
    let checkpoint = |pod: &str, output: &Path, ids: &[&str]| pod::CheckpointPodRequest {
        pod_sandbox_id: pod.into(),
        output_path: output.display().to_string(),
        container_ids: ids.iter().map(|s| s.to_string()).collect(),
        options: Default::default(),
    };

    let mut refusals = vec![
        Refusal {
            what: "CheckpointPod of an unknown pod",
            result: caller
                .client
                .pod_call(&checkpoint("no-such-pod", &empty, &[&cid]), Some(CALL_LIMIT))
                .await,
            code: Code::NotFound,
        },
        Refusal {
            what: "CheckpointPod with no container",
            result: caller
                .client
                .pod_call(&checkpoint(&sandbox.id, &empty, &[]), Some(CALL_LIMIT))
                .await,
            code: Code::InvalidArgument,
        },
        Refusal {
            what: "CheckpointPod without a deadline",
            result: caller
                .client
                .pod_call(&checkpoint(&sandbox.id, &empty, &[&cid]), None)
                .await,
            code: Code::InvalidArgument,
        },
        Refusal {
            what: "CheckpointPod into a directory that is not empty",
            result: caller
                .client
                .pod_call(&checkpoint(&sandbox.id, &full, &[&cid]), Some(CALL_LIMIT))
                .await,
            code: Code::FailedPrecondition,
        },
        // Pausing, dumping and undoing take longer than this; whichever side
        // notices the deadline first, the code is the same.
        Refusal {
            what: "CheckpointPod that runs out of time",
            result: caller
                .client
                .pod_call(
                    &checkpoint(&sandbox.id, &empty, &[&cid]),
                    Some(Duration::from_millis(100)),
                )
                .await,
            code: Code::DeadlineExceeded,
        },
    ];
    // What ran out of time is undone: the pod runs and nothing was written.
    let undone = eventually(Duration::from_secs(20), || {
        let (cid, empty) = (cid.clone(), empty.clone());
        async move { runc_status(&cid) == "running" && support::dir_names(&empty).is_empty() }
    })
    .await;
    assert!(undone, "{stack:?}: the pod was left paused or the output half-written");

    // The checkpoint itself, then the pod goes, as on a node being drained.
    // The call that ran out of time may still hold the pod for a moment
    // after undoing its work (ABORTED says "try again").
    let before = caller.count(&cid).await;
    let mut result = None;
    for _ in 0..3 {
        let answer = caller
            .client
            .pod_call(&checkpoint(&sandbox.id, &out, &[&cid]), Some(CALL_LIMIT))
            .await;
        if answer.code() != Code::Aborted {
            result = Some(answer);
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let result = result.expect("CheckpointPod stayed ABORTED");
    assert_eq!(result.code(), Code::Ok, "{stack:?} CheckpointPod: {}", result.message);
    assert_eq!(result.responses.len(), 1, "one (empty) CheckpointPodResponse");
    caller.remove_pod(&sandbox.id).await;
    drop(sandbox);

    let restore_log_dir = tempfile::tempdir().unwrap();
    let restore = |path: &Path, handler: &str| pod::RestorePodRequest {
        checkpoint_path: path.display().to_string(),
        config: support::pod_config(&support::unique("interop-restored"), restore_log_dir.path()).encode_to_vec(),
        runtime_handler: handler.into(),
        options: Default::default(),
        container_configs: vec![support::container_config("counter", &tb.image, COUNTER).encode_to_vec()],
    };
    let sandboxes_before = sandbox_ids(&mut direct).await;
    refusals.extend([
        Refusal {
            what: "RestorePod of a directory that holds no checkpoint",
            result: caller
                .client
                .pod_call(&restore(&empty, "podckpt"), Some(CALL_LIMIT))
                .await,
            code: Code::InvalidArgument,
        },
        Refusal {
            what: "RestorePod without a deadline",
            result: caller.client.pod_call(&restore(&out, "podckpt"), None).await,
            code: Code::InvalidArgument,
        },
        Refusal {
            what: "RestorePod through a handler that cannot restore",
            result: caller.client.pod_call(&restore(&out, ""), Some(CALL_LIMIT)).await,
            code: Code::FailedPrecondition,
        },
    ]);
    for refusal in &mut refusals {
        // tonic's channel gives up at the deadline itself and reports that
        // as CANCELLED "Timeout expired", before the server's answer; the
        // server's own DEADLINE_EXCEEDED is tested with a raw client in
        // `checkpoint.rs`.
        if stack == Stack::Tonic
            && refusal.code == Code::DeadlineExceeded
            && refusal.result.code() == Code::Cancelled
            && refusal.result.message == "Timeout expired"
        {
            refusal.result.code = Code::DeadlineExceeded as i32;
        }
        assert_eq!(
            refusal.result.code(),
            refusal.code,
            "{stack:?}, {}: {:?}",
            refusal.what,
            refusal.result.message
        );
        assert!(
            !refusal.result.message.is_empty(),
            "{stack:?}, {}: no message",
            refusal.what
        );
    }
    assert_eq!(
        sandbox_ids(&mut direct).await,
        sandboxes_before,
        "{stack:?}: a refused RestorePod left a sandbox"
    );

    // The restore, through the stack, and the counter goes on from where it was.
    let result = caller
        .client
        .pod_call(&restore(&out, "podckpt"), Some(CALL_LIMIT))
        .await;
    assert_eq!(result.code(), Code::Ok, "{stack:?} RestorePod: {}", result.message);
    let restored = pod::RestorePodResponse::decode(result.responses[0].as_slice()).unwrap();
    let restored_sandbox = Sandbox {
        id: restored.pod_sandbox_id.clone(),
        containerd: tb.socket.clone(),
        _log_dir: restore_log_dir,
    };
    let [container] = restored.restored_containers.as_slice() else {
        panic!("{stack:?}: {:?}", restored.restored_containers);
    };
    assert_eq!(container.name, "counter");
    assert_eq!(
        support::container_status(&mut direct, &container.container_id)
            .await
            .state,
        cri::ContainerState::ContainerCreated as i32,
        "restored containers come back CREATED"
    );
    caller.start(&container.container_id).await;
    let resumed = caller.count(&container.container_id).await;
    assert!(
        resumed >= before,
        "{stack:?}: the counter restarted at {resumed}, it was {before}"
    );
    assert!(
        support::count_reaches(&direct, &container.container_id, resumed + 2, Duration::from_secs(10)).await,
        "{stack:?}: the restored counter does not count"
    );
    caller.remove_pod(&restored_sandbox.id).await;
}

/// Every sandbox containerd knows, asked directly.
async fn sandbox_ids(direct: &mut support::Runtime) -> Vec<String> {
    let mut ids: Vec<String> = support::sandboxes(direct).await.into_iter().map(|s| s.id).collect();
    ids.sort();
    ids
}
