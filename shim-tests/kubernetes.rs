//! The whole Kubernetes path on a real control plane (etcd, kube-apiserver
//! 1.36.2) with a real kubelet registered through podckptd in front of the
//! test bed's containerd, all through kubectl, as a platform team works:
//! deploy/kubernetes applied (through the test bed's overlay, which only
//! points the agent at this API server and podckptd's socket, and sets a
//! disk cap), the node agent running from its DaemonSet, a PodCheckpoint
//! taken and waited for, the pod restored by annotation by a user who may,
//! refused to one who may not, and everything else that must be refused.

use std::path::Path;
use std::time::Duration;

use serial_test::serial;

use crate::annotation::annotation_config;
use crate::support::cluster::{Cluster, PODCKPTD_SOCKET};
use crate::support::{self, Shim};

const NS: &str = "team-a";
const COUNTER: &str = "i=0; while :; do i=$((i+1)); echo $i > /tmp/count; echo count $i; sleep 1; done";

/// A counter pod on the test bed's node (there is no scheduler), named
/// `name`, restored from `restore_from` if given, running `script`.
fn pod(name: &str, image: &str, script: &str, restore_from: Option<&str>) -> String {
    let head = support::pod_manifest_head(name, NS, restore_from);
    format!(
        r#"{head}  nodeName: podckpt-node
  automountServiceAccountToken: false
  enableServiceLinks: false
  terminationGracePeriodSeconds: 1
  containers:
  - name: counter
    image: {image}
    imagePullPolicy: Never
    command:
    - /bin/sh
    - -c
    - |-
      {script}
"#
    )
}

fn podcheckpoint(name: &str, source: &str) -> String {
    format!(
        r#"apiVersion: podckpt.io/v1alpha1
kind: PodCheckpoint
metadata:
  name: {name}
  namespace: {NS}
spec:
  sourcePod:
    name: {source}
  timeoutSeconds: 120
"#
    )
}

/// Alice may make pods, checkpoint and restore; Bob may make pods and
/// checkpoint, not restore. (No controller-manager aggregates the built-in
/// `edit` role here, so pods get a Role of their own.)
const USERS: &str = r#"apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: pods
  namespace: team-a
rules:
- apiGroups: [""]
  resources: ["pods", "pods/log", "pods/exec"]
  verbs: ["create", "get", "list", "watch", "delete", "patch", "update"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: pods
  namespace: team-a
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: pods}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: alice}
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: bob}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: checkpointers
  namespace: team-a
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: podckpt-checkpointer}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: alice}
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: bob}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: restorers
  namespace: team-a
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: podckpt-restorer}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: alice}
"#;

/// The counter's value, read with `kubectl exec` through the API server.
fn count(cluster: &Cluster, pod: &str) -> u64 {
    // A pod that fills 100 MiB first takes a while to count.
    for _ in 0..300 {
        let out = cluster.kubectl_as(Some("alice"), &["-n", NS, "exec", pod, "--", "cat", "/tmp/count"], None);
        if let Ok(n) = String::from_utf8_lossy(&out.stdout).trim().parse() {
            return n;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("no count in pod {pod}");
}

fn ok(out: std::process::Output, what: &str) -> String {
    assert!(out.status.success(), "{what}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn refused(out: std::process::Output, what: &str) -> String {
    assert!(!out.status.success(), "{what} was not refused");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The reason and message of a PodCheckpoint's Ready condition, once it has
/// one of `reasons`.
fn phase(cluster: &Cluster, name: &str, reasons: &[&str]) -> (String, String) {
    for _ in 0..600 {
        let object = cluster.get_json(&["-n", NS, "podcheckpoint", name]);
        let conditions = object["status"]["conditions"].as_array().cloned().unwrap_or_default();
        if let Some(ready) = conditions.iter().find(|c| c["type"] == "Ready")
            && let Some(reason) = ready["reason"].as_str().filter(|r| reasons.contains(r))
        {
            return (
                reason.to_owned(),
                ready["message"].as_str().unwrap_or_default().to_owned(),
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("PodCheckpoint {name} never reached {reasons:?}");
}

#[tokio::test]
#[serial]
async fn a_podcheckpoint_is_taken_and_restored_by_annotation_all_through_kubectl() {
    let Some(tb) = support::testbed() else { return };
    let root = tempfile::tempdir().unwrap();
    let shim = Shim::start_listening_at(&tb, &annotation_config(root.path()), Path::new(PODCKPTD_SOCKET));
    support::install_interposer();
    let Some(cluster) = Cluster::start(&shim) else { return };

    // What a user applies, with the node agent's image built from its binary.
    let agent = std::env::var("PODCKPT_TEST_AGENT").unwrap_or_else(|_| env!("CARGO_BIN_EXE_podckpt-agent").into());
    cluster.testbed(&["agent-image", &agent]);
    let overlay = concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/testbed/kubernetes");
    cluster.kubectl(&["apply", "-k", overlay]);
    cluster.kubectl(&[
        "wait",
        "--for=condition=Established",
        "crd/podcheckpoints.podckpt.io",
        "--timeout=60s",
    ]);
    cluster.testbed(&["cluster-daemonsets"]);
    cluster.kubectl(&[
        "-n",
        "podckpt-system",
        "wait",
        "--for=condition=Ready",
        "pod",
        "-l",
        "app.kubernetes.io/name=podckpt-agent",
        "--timeout=120s",
    ]);
    cluster.testbed(&["cluster-namespace", NS]);
    ok(cluster.apply(None, USERS), "the users' RBAC");
    // The admission policy is enforced about a second after it is applied.
    std::thread::sleep(Duration::from_secs(2));

    // A counter pod, and a PodCheckpoint of it, waited for.
    ok(
        cluster.apply(Some("alice"), &pod("counter", &tb.image, COUNTER, None)),
        "the counter pod",
    );
    cluster.kubectl(&[
        "-n",
        NS,
        "wait",
        "--for=condition=Ready",
        "pod/counter",
        "--timeout=120s",
    ]);
    while count(&cluster, "counter") < 5 {
        std::thread::sleep(Duration::from_millis(500));
    }
    let uid = cluster.get_json(&["-n", NS, "pod", "counter"])["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_owned();
    ok(
        cluster.apply(Some("alice"), &podcheckpoint("warm", "counter")),
        "the PodCheckpoint",
    );
    cluster.kubectl(&[
        "-n",
        NS,
        "wait",
        "--for=condition=Ready",
        "podcheckpoint/warm",
        "--timeout=180s",
    ]);
    let saved = count(&cluster, "counter");
    let status = cluster.get_json(&["-n", NS, "podcheckpoint", "warm"])["status"].clone();
    let path = root.path().join(NS).join("warm");
    assert_eq!(status["nodeName"], "podckpt-node", "{status:#}");
    assert_eq!(status["sourcePodUID"], uid.as_str());
    assert_eq!(status["checkpointLocation"]["type"], "NodeLocal");
    assert_eq!(
        status["checkpointLocation"]["nodeLocal"]["path"],
        path.display().to_string().as_str()
    );
    assert!(path.join("manifest.json").is_file());
    let containers = status["checkpointedContainers"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    assert_eq!(containers[0]["name"], "counter");
    assert!(
        containers[0]["image"].as_str().unwrap().starts_with("sha256:"),
        "{status:#}"
    );
    assert_eq!(
        status["bytes"].as_u64(),
        Some(podckpt::archive::space::tree_size(&path))
    );
    assert!(status["freezeMs"].as_u64().unwrap() > 0);
    assert_eq!(status["backend"], "criu-runc");
    assert!(status["engineVersion"].as_str().unwrap().starts_with('4'));
    assert!(status["completionTime"].is_string());
    let listed = cluster.kubectl(&["-n", NS, "get", "podcheckpoints"]);
    let header = listed.lines().next().unwrap().split_whitespace().collect::<Vec<_>>();
    assert_eq!(header, ["NAME", "POD", "NODE", "PHASE", "SIZE", "AGE"]);
    assert!(
        listed.contains("CheckpointCompleted") && listed.contains("podckpt-node"),
        "{listed}"
    );

    // The pod goes; its replacement names the checkpoint. Bob may not
    // restore it: the admission policy says so, and nothing is made.
    cluster.kubectl(&["-n", NS, "delete", "pod", "counter", "--timeout=60s"]);
    let why = refused(
        cluster.apply(Some("bob"), &pod("restored", &tb.image, COUNTER, Some("warm"))),
        "bob's restore",
    );
    assert!(
        why.contains("bob may not restore PodCheckpoint warm of namespace team-a") && why.contains("podckpt-restorer"),
        "{why}"
    );
    let why = refused(
        cluster.apply(
            Some("alice"),
            &pod("elsewhere", &tb.image, COUNTER, Some("../other/warm")),
        ),
        "a path for a name",
    );
    assert!(
        why.contains("never a path, never another namespace's checkpoint"),
        "{why}"
    );
    ok(
        cluster.apply(Some("alice"), &pod("restored", &tb.image, COUNTER, Some("warm"))),
        "alice's restore",
    );
    cluster.kubectl(&[
        "-n",
        NS,
        "wait",
        "--for=condition=Ready",
        "pod/restored",
        "--timeout=120s",
    ]);
    let first = count(&cluster, "restored");
    assert!(
        first >= saved,
        "the restored counter started over: {first}, checkpointed at {saved}"
    );
    let logs = ok(
        cluster.kubectl_as(Some("alice"), &["-n", NS, "logs", "restored"], None),
        "kubectl logs",
    );
    assert!(
        !logs.contains("count 1\n"),
        "the restored pod's log starts over:\n{logs}"
    );

    // Refused by the API server's schema, by RBAC, and by the agent.
    let bad = podcheckpoint("bad", "restored").replace("timeoutSeconds: 120", "timeoutSeconds: 0");
    let why = refused(cluster.apply(Some("alice"), &bad), "timeoutSeconds 0");
    assert!(why.contains("timeoutSeconds"), "{why}");
    let why = refused(
        cluster.kubectl_as(
            Some("alice"),
            &[
                "-n",
                NS,
                "patch",
                "podcheckpoint",
                "warm",
                "--subresource=status",
                "--type=merge",
                "-p",
                r#"{"status":{"bytes":1}}"#,
            ],
            None,
        ),
        "a user writing status",
    );
    assert!(
        why.contains("forbidden") && why.contains("podcheckpoints/status"),
        "{why}"
    );
    ok(
        cluster.apply(Some("alice"), &podcheckpoint("nobody", "no-such-pod")),
        "a PodCheckpoint of nothing",
    );
    let (_, message) = phase(&cluster, "nobody", &["CheckpointFailed"]);
    assert!(message.contains("no-such-pod does not exist"), "{message}");
    // 100 MiB held, past the test bed's cap of 64 MiB: refused before the pause.
    ok(
        cluster.apply(
            Some("alice"),
            &pod("big", &tb.image, &support::memory_counter(100), None),
        ),
        "the big pod",
    );
    cluster.kubectl(&["-n", NS, "wait", "--for=condition=Ready", "pod/big", "--timeout=120s"]);
    while count(&cluster, "big") < 1 {
        std::thread::sleep(Duration::from_millis(500));
    }
    ok(
        cluster.apply(Some("alice"), &podcheckpoint("too-big", "big")),
        "a PodCheckpoint past the cap",
    );
    let (_, message) = phase(&cluster, "too-big", &["CheckpointFailed", "CheckpointCompleted"]);
    assert!(
        message.contains("--max-checkpoint-bytes 67108864") && message.contains("nothing was paused"),
        "{message}"
    );
    assert!(!root.path().join(NS).join("too-big").exists());

    // Completed is final: an agent started again does not redo it.
    let completed = status["completionTime"].clone();
    cluster.kubectl(&[
        "-n",
        "podckpt-system",
        "delete",
        "pods",
        "-l",
        "app.kubernetes.io/name=podckpt-agent",
        "--timeout=60s",
    ]);
    // Meanwhile, with no agent, a PodCheckpoint goes without its finalizer:
    // its checkpoint is left behind, for the next agent to find.
    ok(
        cluster.apply(Some("alice"), &podcheckpoint("orphan", "restored")),
        "a PodCheckpoint to orphan",
    );
    cluster.testbed(&["cluster-daemonsets"]);
    let (reason, _) = phase(&cluster, "orphan", &["CheckpointCompleted", "CheckpointFailed"]);
    assert_eq!(reason, "CheckpointCompleted");
    assert!(root.path().join(NS).join("orphan").is_dir());
    cluster.kubectl(&[
        "-n",
        "podckpt-system",
        "delete",
        "pods",
        "-l",
        "app.kubernetes.io/name=podckpt-agent",
        "--timeout=60s",
    ]);
    cluster.kubectl(&[
        "-n",
        NS,
        "patch",
        "podcheckpoint",
        "orphan",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ]);
    cluster.kubectl(&["-n", NS, "delete", "podcheckpoint", "orphan", "--timeout=60s"]);
    assert!(root.path().join(NS).join("orphan").is_dir());
    cluster.testbed(&["cluster-daemonsets"]);
    cluster.kubectl(&[
        "-n",
        "podckpt-system",
        "wait",
        "--for=condition=Ready",
        "pod",
        "-l",
        "app.kubernetes.io/name=podckpt-agent",
        "--timeout=120s",
    ]);
    let gone = support::eventually(Duration::from_secs(60), || async {
        !root.path().join(NS).join("orphan").exists()
    })
    .await;
    assert!(gone, "the agent left a checkpoint whose PodCheckpoint is gone");
    assert_eq!(
        cluster.get_json(&["-n", NS, "podcheckpoint", "warm"])["status"]["completionTime"],
        completed
    );

    // The same agent as systemd/podckpt-agent.service runs it, in place of
    // the DaemonSet's: confined as the unit confines it, with a kubeconfig
    // of the agent's ServiceAccount.
    cluster.kubectl(&["-n", "podckpt-system", "delete", "daemonset", "podckpt-agent"]);
    cluster.kubectl(&[
        "-n",
        "podckpt-system",
        "delete",
        "pods",
        "-l",
        "app.kubernetes.io/name=podckpt-agent",
        "--timeout=60s",
    ]);
    let token = cluster.kubectl(&[
        "-n",
        "podckpt-system",
        "create",
        "token",
        "podckpt-agent",
        "--duration=1h",
    ]);
    let server = cluster.kubectl(&["config", "view", "-o", "jsonpath={.clusters[0].cluster.server}"]);
    let ca = cluster.kubectl(&[
        "config",
        "view",
        "-o",
        "jsonpath={.clusters[0].cluster.certificate-authority}",
    ]);
    let kubeconfig = root.path().join("agent.kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {{server: \"{server}\", certificate-authority: \"{ca}\"}}\n\
             users:\n- name: agent\n  user: {{token: \"{}\"}}\ncontexts:\n- name: c\n  context: {{cluster: c, user: agent}}\ncurrent-context: c\n",
            token.trim()
        ),
    )
    .unwrap();
    let mut unit_agent = support::unit::confined(support::unit::AGENT, Path::new(env!("CARGO_BIN_EXE_podckpt-agent")))
        .args([
            "--podckptd",
            &format!("unix://{PODCKPTD_SOCKET}"),
            "--log-format",
            "json",
        ])
        .env("NODE_NAME", "podckpt-node")
        .env("KUBECONFIG", &kubeconfig)
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("the agent, as its unit runs it");
    ok(
        cluster.apply(Some("alice"), &podcheckpoint("by-unit", "restored")),
        "a PodCheckpoint for the unit's agent",
    );
    let (reason, message) = phase(&cluster, "by-unit", &["CheckpointCompleted", "CheckpointFailed"]);
    assert_eq!(reason, "CheckpointCompleted", "{message}");
    cluster.kubectl(&["-n", NS, "delete", "podcheckpoint", "by-unit", "--timeout=60s"]);
    assert!(!root.path().join(NS).join("by-unit").exists());

    // Deleted: the checkpoint goes with it (the finalizer was the DaemonSet
    // agent's; the unit's removes it alike).
    cluster.kubectl(&["-n", NS, "delete", "podcheckpoint", "warm", "--timeout=60s"]);
    assert!(!path.exists(), "the checkpoint outlived its PodCheckpoint");
    let _ = unit_agent.kill();
    let _ = unit_agent.wait();
    for name in ["restored", "big"] {
        cluster.kubectl(&["-n", NS, "delete", "pod", name, "--timeout=60s"]);
    }
}
