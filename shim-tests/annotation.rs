//! Restore by annotation at the CRI, as a kubelet calls it: a pod whose
//! sandbox config carries `podckpt.io/restore-from: NAME` comes back from
//! checkpoint NAME of its own namespace through its own RunPodSandbox,
//! CreateContainer and StartContainer, sent by each real gRPC stack (the
//! kubelet's is grpc-go). Every refusal has its code, names the checkpoint,
//! and leaves nothing: no sandbox, no token, no session. The real kubelet
//! runs the same in `kubelet.rs`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use podckpt::api::cri;
use prost::Message;
use tonic::Code;

use crate::support::interop::{CallResult, Client, Stack};
use crate::support::{self, COUNTER, Pod, Shim, Testbed};

on_each_runtime!(
    a_pod_annotated_with_a_checkpoint_comes_back_through_every_stack,
    what_a_restore_by_annotation_refuses_leaves_nothing,
    a_node_that_does_not_restore_by_annotation_starts_the_pod_afresh,
);

const CALL_LIMIT: Duration = Duration::from_secs(60);
use crate::support::RESTORE_FROM;

/// podckptd's config for restores by annotation, checkpoints under `root`.
pub(crate) fn annotation_config(root: &Path) -> String {
    format!(
        "restore_from_annotation = true\ncheckpoint_root = \"{}\"\n",
        root.display()
    )
}

/// A counter pod of namespace `podckpt-test` that counted to `min`,
/// checkpointed by name with `podckpt checkpointp --name`, then removed;
/// returns the count just before.
pub(crate) async fn checkpointed_by_name(shim: &Shim, tb: &Testbed, name: &str, min: u64) -> u64 {
    let mut client = shim.client().await;
    let pod = Pod::run(&mut client, &shim.socket, "source").await;
    let cid = pod.start_container(&mut client, &tb.image, "counter", COUNTER).await;
    assert!(support::count_reaches(&client, &cid, min, Duration::from_secs(20)).await);
    let before = support::count(&mut client, &cid).await;
    let out = support::podckpt_cli(shim, None, &["checkpointp", &pod.id, "--name", name]);
    assert!(
        out.status.success(),
        "checkpointp --name: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(report["namespace"], "podckpt-test");
    assert_eq!(report["name"], name);
    drop(pod);
    before
}

/// The new pod's config, as the kubelet sends it: annotated with `name`.
fn annotated(pod_name: &str, namespace: &str, name: &str, log_dir: &Path) -> cri::PodSandboxConfig {
    let mut config = support::pod_config(&support::unique(pod_name), log_dir);
    config.metadata.as_mut().unwrap().namespace = namespace.into();
    config.annotations.insert(RESTORE_FROM.into(), name.into());
    config
}

/// One stack's calls through podckptd.
struct Kubelet {
    client: Client,
}

impl Kubelet {
    async fn call(&mut self, method: &str, request: &impl Message) -> CallResult {
        self.client.runtime_call(method, request, Some(CALL_LIMIT)).await
    }

    async fn ok<Resp: Message + Default>(&mut self, method: &str, request: &impl Message) -> Resp {
        self.client.runtime_ok(method, request, CALL_LIMIT).await
    }

    async fn run(&mut self, config: &cri::PodSandboxConfig) -> CallResult {
        let request = cri::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: String::new(),
        };
        self.call("RunPodSandbox", &request).await
    }

    async fn create(&mut self, sandbox: &str, config: cri::ContainerConfig, pod: &cri::PodSandboxConfig) -> CallResult {
        let request = cri::CreateContainerRequest {
            pod_sandbox_id: sandbox.into(),
            config: Some(config),
            sandbox_config: Some(pod.clone()),
        };
        self.call("CreateContainer", &request).await
    }
}

fn id_of<M: Message + Default>(result: &CallResult, what: &str) -> M {
    assert_eq!(result.code(), Code::Ok, "{what}: {}", result.message);
    M::decode(result.responses[0].as_slice()).expect("a response that decodes")
}

/// Each stack runs the kubelet's calls for an annotated pod: its counter
/// comes back restored, goes on from its saved value, and comes back again
/// when the container is created anew (a restart, attempt 1); a container
/// the checkpoint does not hold is created as it came.
async fn a_pod_annotated_with_a_checkpoint_comes_back_through_every_stack(tb: Testbed) {
    let root = tempfile::tempdir().unwrap();
    let shim = Shim::start_with(&tb, &annotation_config(root.path()), 5);
    support::install_interposer();
    let saved = checkpointed_by_name(&shim, &tb, "warm", 10).await;
    let checkpoint = root.path().join("podckpt-test/warm");
    assert!(checkpoint.join("manifest.json").is_file());
    let mut direct = tb.direct().await;

    for stack in Stack::ALL {
        let Some(client) = Client::start(stack, &shim.socket) else {
            return;
        };
        let mut kubelet = Kubelet { client };
        let log_dir = tempfile::tempdir().unwrap();
        let config = annotated("warm", "podckpt-test", "warm", log_dir.path());
        let sandbox: cri::RunPodSandboxResponse = id_of(&kubelet.run(&config).await, "RunPodSandbox");
        let _pod = support::SandboxGuard::new(&shim.socket, &sandbox.pod_sandbox_id);

        // An init container, say: not in the checkpoint, made as it came.
        let helper = support::container_config("helper", &tb.image, "exit 0");
        let helper: cri::CreateContainerResponse = id_of(
            &kubelet.create(&sandbox.pod_sandbox_id, helper, &config).await,
            "CreateContainer helper",
        );
        let _: cri::StartContainerResponse = kubelet
            .ok(
                "StartContainer",
                &cri::StartContainerRequest {
                    container_id: helper.container_id.clone(),
                },
            )
            .await;
        assert!(!support::was_restored(&helper.container_id));

        let counter = support::checkpointed_configs(&checkpoint, &["counter"]).remove(0);
        for attempt in 0..2 {
            let mut counter = counter.clone();
            counter.metadata.as_mut().unwrap().attempt = attempt;
            let created: cri::CreateContainerResponse = id_of(
                &kubelet.create(&sandbox.pod_sandbox_id, counter, &config).await,
                "CreateContainer counter",
            );
            let cid = created.container_id;
            let _: cri::StartContainerResponse = kubelet
                .ok(
                    "StartContainer",
                    &cri::StartContainerRequest {
                        container_id: cid.clone(),
                    },
                )
                .await;
            assert!(
                support::was_restored(&cid),
                "{stack:?} attempt {attempt}: started afresh"
            );
            let now = support::count(&mut direct, &cid).await;
            assert!(
                now >= saved,
                "{stack:?} attempt {attempt}: {now} after the restore, {saved} before"
            );
            assert!(support::count_reaches(&direct, &cid, now + 1, Duration::from_secs(10)).await);
            // The kubelet stops a container before it makes the next attempt.
            let _: cri::StopContainerResponse = kubelet
                .ok(
                    "StopContainer",
                    &cri::StopContainerRequest {
                        container_id: cid,
                        timeout: 1,
                    },
                )
                .await;
        }
    }
}

/// What is in the state directory for restores: tokens and sessions.
fn restore_state(shim: &Shim) -> Vec<PathBuf> {
    ["restores", "annotated"]
        .iter()
        .flat_map(|dir| std::fs::read_dir(shim.state_dir().join(dir)).into_iter().flatten())
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect()
}

/// The sandboxes of the runtime below, by id.
async fn sandbox_ids(tb: &Testbed) -> Vec<String> {
    let mut ids: Vec<String> = support::sandboxes(&mut tb.direct().await)
        .await
        .into_iter()
        .map(|s| s.id)
        .collect();
    ids.sort();
    ids
}

async fn what_a_restore_by_annotation_refuses_leaves_nothing(tb: Testbed) {
    let root = tempfile::tempdir().unwrap();
    let shim = Shim::start_with(&tb, &annotation_config(root.path()), 5);
    support::install_interposer();
    checkpointed_by_name(&shim, &tb, "warm", 3).await;
    // A copy of the checkpoint into another namespace's directory.
    let copied = root.path().join("other");
    std::fs::create_dir(&copied).unwrap();
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(root.path().join("podckpt-test/warm"))
        .arg(&copied)
        .status()
        .unwrap();
    assert!(status.success());
    let manifest_before = std::fs::read(root.path().join("podckpt-test/warm/manifest.json")).unwrap();

    for stack in Stack::ALL {
        let Some(client) = Client::start(stack, &shim.socket) else {
            return;
        };
        let mut kubelet = Kubelet { client };
        let log_dir = tempfile::tempdir().unwrap();
        let before = sandbox_ids(&tb).await;
        let cases = [
            (
                "other",
                "warm",
                Code::PermissionDenied,
                "taken from a pod of namespace \"podckpt-test\"",
            ),
            ("podckpt-test", "gone", Code::NotFound, "not on this node"),
            ("podckpt-test", "../other/warm", Code::InvalidArgument, "DNS-1123"),
            ("podckpt-test", "/etc", Code::InvalidArgument, "never given as a path"),
        ];
        for (namespace, name, code, why) in cases {
            let refused = kubelet
                .run(&annotated("refused", namespace, name, log_dir.path()))
                .await;
            assert_eq!(
                refused.code(),
                code,
                "{stack:?} {namespace}/{name}: {}",
                refused.message
            );
            assert!(refused.message.contains(why), "{stack:?}: {}", refused.message);
            assert!(refused.message.contains(RESTORE_FROM), "{stack:?}: {}", refused.message);
            assert_eq!(
                sandbox_ids(&tb).await,
                before,
                "{stack:?} {namespace}/{name}: a sandbox was left"
            );
            assert_eq!(restore_state(&shim), Vec::<PathBuf>::new());
        }

        // A pod that may restore it, with a container config that describes
        // another process: refused with the field named, no token left.
        let config = annotated("mismatch", "podckpt-test", "warm", log_dir.path());
        let sandbox: cri::RunPodSandboxResponse = id_of(&kubelet.run(&config).await, "RunPodSandbox");
        let _pod = support::SandboxGuard::new(&shim.socket, &sandbox.pod_sandbox_id);
        let mut other = support::checkpointed_configs(&root.path().join("podckpt-test/warm"), &["counter"]).remove(0);
        other.command = vec!["/bin/sh".into(), "-c".into(), "echo another process".into()];
        let refused = kubelet.create(&sandbox.pod_sandbox_id, other, &config).await;
        assert_eq!(refused.code(), Code::InvalidArgument, "{stack:?}: {}", refused.message);
        assert!(refused.message.contains("command"), "{stack:?}: {}", refused.message);
        assert!(refused.message.contains("\"warm\""), "{stack:?}: {}", refused.message);
        let listed = support::pod_containers(&mut tb.direct().await, &sandbox.pod_sandbox_id).await;
        assert!(listed.is_empty(), "{stack:?}: {listed:?}");
        let state = restore_state(&shim);
        assert_eq!(state.len(), 1, "only the sandbox's session: {state:?}");
    }
    assert_eq!(
        std::fs::read(root.path().join("podckpt-test/warm/manifest.json")).unwrap(),
        manifest_before,
        "the checkpoint changed"
    );
}

/// Off (the default), the annotation means nothing to podckptd: the pod is
/// the runtime's, made afresh, its counter from the start.
async fn a_node_that_does_not_restore_by_annotation_starts_the_pod_afresh(tb: Testbed) {
    let root = tempfile::tempdir().unwrap();
    let restoring = Shim::start_with(&tb, &annotation_config(root.path()), 5);
    support::install_interposer();
    checkpointed_by_name(&restoring, &tb, "warm", 10).await;
    drop(restoring);
    let shim = Shim::start_with(&tb, &format!("checkpoint_root = \"{}\"\n", root.path().display()), 5);
    let Some(client) = Client::start(Stack::Go, &shim.socket) else {
        return;
    };
    let mut kubelet = Kubelet { client };
    let log_dir = tempfile::tempdir().unwrap();
    let config = annotated("off", "podckpt-test", "warm", log_dir.path());
    let sandbox: cri::RunPodSandboxResponse = id_of(&kubelet.run(&config).await, "RunPodSandbox");
    let _pod = support::SandboxGuard::new(&shim.socket, &sandbox.pod_sandbox_id);
    let counter = support::checkpointed_configs(&root.path().join("podckpt-test/warm"), &["counter"]).remove(0);
    let created: cri::CreateContainerResponse = id_of(
        &kubelet.create(&sandbox.pod_sandbox_id, counter, &config).await,
        "CreateContainer",
    );
    let _: cri::StartContainerResponse = kubelet
        .ok(
            "StartContainer",
            &cri::StartContainerRequest {
                container_id: created.container_id.clone(),
            },
        )
        .await;
    assert!(!support::was_restored(&created.container_id));
    let mut direct = tb.direct().await;
    assert!(support::count_reaches(&direct, &created.container_id, 1, Duration::from_secs(10)).await);
    assert!(
        support::count(&mut direct, &created.container_id).await < 10,
        "it did not start afresh"
    );
    assert_eq!(restore_state(&shim), Vec::<PathBuf>::new());
}
