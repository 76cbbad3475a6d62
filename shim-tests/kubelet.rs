//! Restore by annotation under the real kubelet (1.36.2, standalone), with
//! podckptd as its runtime in front of containerd (runc and gVisor) and
//! CRI-O. The kubelet creates every pod itself from its static manifests,
//! so it keeps them; a pod podckptd creates beside it is an orphan to it.

use std::time::Duration;

use podckpt::api::cri;
use serial_test::serial;

use crate::annotation::annotation_config;
use crate::support::kubelet::{self, Kubelet, running};
use crate::support::{self, Shim, Testbed};

on_each_runtime!(
    a_kubelet_keeps_a_pod_restored_from_its_checkpoint,
    a_kubelet_pod_that_may_not_restore_is_refused_and_leaves_nothing,
    a_restored_container_that_stops_comes_back_from_the_checkpoint_again,
    restorep_beside_a_kubelet_warns_and_the_kubelet_removes_its_pod,
);

const START_LIMIT: Duration = Duration::from_secs(90);
/// Counts each second, into /tmp/count and its log.
const COUNTER: &str = "i=0; while :; do i=$((i+1)); echo $i > /tmp/count; echo count $i; sleep 1; done";

/// A static pod running `script` in container `counter`, with an exec
/// liveness and readiness probe; annotated to restore from `restore_from`.
fn manifest(tb: &Testbed, name: &str, namespace: &str, script: &str, restore_from: Option<&str>) -> String {
    let head = support::pod_manifest_head(name, namespace, restore_from);
    format!(
        r#"{head}  terminationGracePeriodSeconds: 1
  containers:
  - name: counter
    image: {image}
    imagePullPolicy: Never
    command: ["/bin/sh", "-c", "{script}"]
    livenessProbe:
      exec:
        command: ["cat", "/tmp/count"]
      periodSeconds: 2
    readinessProbe:
      exec:
        command: ["cat", "/tmp/count"]
      periodSeconds: 2
"#,
        image = tb.image,
    )
}

/// A counter pod the kubelet runs, checkpointed by name, its manifest
/// then removed and its sandbox stopped; the count just before.
async fn checkpointed_under_the_kubelet(shim: &Shim, tb: &Testbed, kubelet: &Kubelet, name: &str) -> u64 {
    let mut runtime = tb.direct().await;
    kubelet.apply("counter", &manifest(tb, "counter", "default", COUNTER, None));
    let pod = running(&mut runtime, "default", "counter", "counter", START_LIMIT)
        .await
        .unwrap_or_else(|| panic!("the kubelet did not run the counter pod:\n{}", kubelet.log()));
    let cid = pod.container("counter").unwrap().id.clone();
    assert!(support::count_reaches(&runtime, &cid, 5, Duration::from_secs(20)).await);
    let before = support::count(&mut runtime, &cid).await;
    let out = support::podckpt_cli(shim, None, &["checkpointp", &pod.sandbox.id, "--name", name]);
    assert!(
        out.status.success(),
        "checkpointp --name: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    kubelet.remove("counter");
    let stopped = support::eventually(START_LIMIT, || {
        let mut runtime = runtime.clone();
        async move {
            running(&mut runtime, "default", "counter", "counter", Duration::ZERO)
                .await
                .is_none()
        }
    })
    .await;
    assert!(stopped, "the kubelet did not stop the removed pod");
    before
}

/// The shim, the checkpoint root and the kubelet of one test, with
/// `handlers` added to podckptd's config.
fn node(tb: &Testbed, handlers: &str) -> Option<(tempfile::TempDir, Shim, Kubelet)> {
    let root = tempfile::tempdir().unwrap();
    let shim = Shim::start_with(tb, &format!("{}{handlers}", annotation_config(root.path())), 5);
    support::install_interposer();
    let kubelet = Kubelet::start(&shim)?;
    Some((root, shim, kubelet))
}

/// The annotated pod runs restored: its counter goes on from at least the
/// saved value, and 30 s later it is the same container, never restarted,
/// its exec probes passing, and the kubelet never took it for an orphan.
async fn a_kubelet_keeps_a_pod_restored_from_its_checkpoint(tb: Testbed) {
    let Some((_root, shim, kubelet)) = node(&tb, "") else {
        return;
    };
    let saved = checkpointed_under_the_kubelet(&shim, &tb, &kubelet, "warm").await;
    kept_restored(&tb, &kubelet, saved).await;
}

/// The same, the checkpoint taken of a gVisor pod (runsc saves the whole
/// sandbox): a standalone kubelet has no RuntimeClass, so the source pod is
/// made through the CRI before the kubelet starts, and the kubelet's pod,
/// with no handler, is restored through the gVisor handler, the one whose
/// backend took the checkpoint.
#[tokio::test]
#[serial]
async fn a_kubelet_keeps_a_gvisor_pod_restored_from_its_checkpoint() {
    let Some(tb) = support::testbed() else { return };
    let root = tempfile::tempdir().unwrap();
    let config = format!("{}{}", annotation_config(root.path()), support::GVISOR_HANDLER);
    let shim = Shim::start_with(&tb, &config, 5);
    support::install_interposer();
    let mut client = shim.client().await;
    let pod = support::Pod::run_edited(&mut client, &shim.socket, "source", "gvisor", |config| {
        config.metadata.as_mut().unwrap().namespace = "default".into();
    })
    .await;
    let cid = pod.start_configured(&mut client, kubelet_container(&tb)).await;
    assert!(support::count_reaches(&client, &cid, 5, Duration::from_secs(30)).await);
    let saved = support::count(&mut client, &cid).await;
    let out = support::podckpt_cli(&shim, None, &["checkpointp", &pod.id, "--name", "warm"]);
    assert!(
        out.status.success(),
        "checkpointp --name: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(pod);
    let Some(kubelet) = Kubelet::start(&shim) else { return };
    let restored = kept_restored(&tb, &kubelet, saved).await;
    let mut runtime = tb.direct().await;
    let status = runtime
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: restored,
            verbose: false,
        })
        .await
        .expect("PodSandboxStatus")
        .into_inner()
        .status
        .unwrap();
    assert_eq!(status.runtime_handler, "gvisor");
}

/// The counter container the manifest describes, as the kubelet would
/// create it, for a source pod made through the CRI.
fn kubelet_container(tb: &Testbed) -> cri::ContainerConfig {
    let mut config = support::container_config("counter", &tb.image, COUNTER);
    // The kubelet names the image's user (root, in ours) by its uid.
    let security = config.linux.as_mut().unwrap().security_context.as_mut().unwrap();
    security.run_as_user = Some(cri::Int64Value { value: 0 });
    config
}

/// Applies the annotated counter and checks it runs restored and is kept;
/// returns its sandbox's id.
async fn kept_restored(tb: &Testbed, kubelet: &Kubelet, saved: u64) -> String {
    let mut runtime = tb.direct().await;
    kubelet.apply("counter", &manifest(tb, "counter", "default", COUNTER, Some("warm")));
    let pod = running(&mut runtime, "default", "counter", "counter", START_LIMIT)
        .await
        .unwrap_or_else(|| panic!("the kubelet did not run the annotated pod:\n{}", kubelet.log()));
    let cid = pod.container("counter").unwrap().id.clone();
    assert!(
        support::was_restored(&cid),
        "the annotated pod's container was started afresh"
    );
    let first = support::count(&mut runtime, &cid).await;
    assert!(first >= saved, "{first} after the restore, {saved} before");
    tokio::time::sleep(Duration::from_secs(30)).await;
    let later = running(&mut runtime, "default", "counter", "counter", Duration::ZERO)
        .await
        .expect("the restored pod is gone");
    assert_eq!(later.sandbox.id, pod.sandbox.id, "the sandbox was replaced");
    let now = later.container("counter").unwrap();
    assert_eq!(now.id, cid, "the container was replaced");
    assert_eq!(now.metadata.as_ref().unwrap().attempt, 0, "the container was restarted");
    assert!(
        support::count(&mut runtime, &cid).await >= first + 20,
        "it stopped counting"
    );
    // Ready: its exec readiness probe passed on the restored container (a
    // new container is not ready until one does); its liveness probe, every
    // 2 s, never failed three times, or the container would be restarted.
    let status = kubelet
        .pod("default", "counter")
        .expect("the kubelet's account of the pod");
    let container = &status["status"]["containerStatuses"][0];
    assert_eq!(container["ready"], true, "{status:#}");
    assert_eq!(container["restartCount"], 0, "{status:#}");
    let reported = container["containerID"].as_str().unwrap_or_default();
    assert!(reported.ends_with(&format!("://{cid}")), "{status:#}");
    let log = kubelet.log();
    let uid = &pod.sandbox.metadata.as_ref().unwrap().uid;
    assert!(
        !log.lines()
            .any(|l| l.contains("orphaned pod") && l.contains(uid.as_str())),
        "the kubelet took the restored pod for an orphan:\n{log}"
    );
    pod.sandbox.id
}

/// A pod of another namespace naming the checkpoint, and one whose command
/// is another, are refused: the kubelet's log has the code and the reason,
/// and once their manifests are gone nothing of them is left.
async fn a_kubelet_pod_that_may_not_restore_is_refused_and_leaves_nothing(tb: Testbed) {
    let Some((_root, shim, kubelet)) = node(&tb, "") else {
        return;
    };
    checkpointed_under_the_kubelet(&shim, &tb, &kubelet, "warm").await;
    let mut runtime = tb.direct().await;

    kubelet.apply("thief", &manifest(&tb, "thief", "other", COUNTER, Some("warm")));
    let refused = kubelet
        .logs(
            &["RunPodSandbox", "NotFound", "checkpoint warm of namespace other"],
            START_LIMIT,
        )
        .await;
    assert!(refused.is_some(), "no refusal in the kubelet's log:\n{}", kubelet.log());
    assert!(kubelet::sandboxes_of(&mut runtime, "other", "thief").await.is_empty());
    kubelet.remove("thief");

    // A copy of the checkpoint into the other namespace's directory.
    let root = _root.path();
    std::fs::create_dir_all(root.join("other")).unwrap();
    let copied = std::process::Command::new("cp")
        .arg("-a")
        .arg(root.join("default/warm"))
        .arg(root.join("other/warm"))
        .status()
        .unwrap();
    assert!(copied.success());
    kubelet.apply("thief", &manifest(&tb, "thief", "other", COUNTER, Some("warm")));
    let refused = kubelet
        .logs(
            &[
                "RunPodSandbox",
                "PermissionDenied",
                "restored only into its own namespace",
            ],
            START_LIMIT,
        )
        .await;
    assert!(refused.is_some(), "no refusal in the kubelet's log:\n{}", kubelet.log());
    assert!(kubelet::sandboxes_of(&mut runtime, "other", "thief").await.is_empty());
    kubelet.remove("thief");

    // The kubelet makes the sandbox; the container is refused, field named.
    let other = COUNTER.replace("sleep 1", "sleep 2");
    kubelet.apply("counter", &manifest(&tb, "counter", "default", &other, Some("warm")));
    let refused = kubelet
        .logs(&["CreateContainer", "InvalidArgument", "command"], START_LIMIT)
        .await;
    assert!(refused.is_some(), "no refusal in the kubelet's log:\n{}", kubelet.log());
    assert!(refused.unwrap().contains("warm"));
    kubelet.remove("counter");
    let gone = support::eventually(START_LIMIT, || {
        let mut runtime = runtime.clone();
        async move {
            kubelet::sandboxes_of(&mut runtime, "default", "counter")
                .await
                .iter()
                .all(|s| s.state != cri::PodSandboxState::SandboxReady as i32)
        }
    })
    .await;
    assert!(gone, "the refused pod's sandbox still runs");
    let tokens = std::fs::read_dir(shim.state_dir().join("restores"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(tokens, 0, "restore tokens were left");
}

/// When a restored container stops, the kubelet creates it again (attempt
/// 1), and it comes back from the checkpoint again: its counter starts over
/// from the saved value, not from where it stopped.
async fn a_restored_container_that_stops_comes_back_from_the_checkpoint_again(tb: Testbed) {
    let Some((_root, shim, kubelet)) = node(&tb, "") else {
        return;
    };
    let saved = checkpointed_under_the_kubelet(&shim, &tb, &kubelet, "warm").await;
    let mut runtime = tb.direct().await;
    kubelet.apply("counter", &manifest(&tb, "counter", "default", COUNTER, Some("warm")));
    let pod = running(&mut runtime, "default", "counter", "counter", START_LIMIT)
        .await
        .expect("the annotated pod runs");
    let first = pod.container("counter").unwrap().id.clone();
    assert!(support::count_reaches(&runtime, &first, saved + 15, Duration::from_secs(30)).await);
    let stopped_at = support::count(&mut runtime, &first).await;
    runtime
        .stop_container(cri::StopContainerRequest {
            container_id: first.clone(),
            timeout: 1,
        })
        .await
        .expect("StopContainer");
    let again = support::eventually(START_LIMIT, || {
        let mut runtime = runtime.clone();
        let first = first.clone();
        async move {
            running(&mut runtime, "default", "counter", "counter", Duration::ZERO)
                .await
                .and_then(|p| p.container("counter").map(|c| c.id != first))
                .unwrap_or(false)
        }
    })
    .await;
    assert!(again, "the kubelet did not restart the container:\n{}", kubelet.log());
    let pod = running(&mut runtime, "default", "counter", "counter", Duration::ZERO)
        .await
        .unwrap();
    let second = pod.container("counter").unwrap();
    assert_eq!(second.metadata.as_ref().unwrap().attempt, 1);
    assert!(
        support::was_restored(&second.id),
        "the restarted container was started afresh"
    );
    let now = support::count(&mut runtime, &second.id).await;
    assert!(
        now >= saved && now < stopped_at,
        "restarted at {now}: not from the checkpoint's {saved} (it had stopped at {stopped_at})"
    );
}

/// `podckpt restorep` beside a running kubelet: the CLI warns, and the
/// kubelet, which did not create the pod, removes it as an orphan.
async fn restorep_beside_a_kubelet_warns_and_the_kubelet_removes_its_pod(tb: Testbed) {
    let Some((root, shim, kubelet)) = node(&tb, "") else {
        return;
    };
    checkpointed_under_the_kubelet(&shim, &tb, &kubelet, "warm").await;
    let checkpoint = root.path().join("default/warm");
    let out = support::podckpt_cli(
        &shim,
        None,
        &[
            "restorep",
            &checkpoint.display().to_string(),
            "--name",
            "beside",
            "--start",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("warning: a kubelet runs on this node"), "{stderr}");
    let restored: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let pod = restored["pod_sandbox_id"].as_str().unwrap_or_default().to_owned();
    let _guard = (!pod.is_empty()).then(|| support::SandboxGuard::new(&shim.socket, &pod));
    // Whether RestorePod finished before the kubelet struck or not, its pod
    // does not stay: the kubelet stops what it did not make (its housekeeping
    // says so only at -v=3: "Clean up containers for orphaned pod").
    let runtime = tb.direct().await;
    let dead = support::eventually(Duration::from_secs(30), || {
        let mut runtime = runtime.clone();
        async move {
            let ours: Vec<cri::PodSandbox> = support::sandboxes(&mut runtime)
                .await
                .into_iter()
                .filter(|s| s.metadata.as_ref().is_some_and(|m| m.name.starts_with("beside")))
                .collect();
            !ours.is_empty()
                && ours
                    .iter()
                    .all(|s| s.state != cri::PodSandboxState::SandboxReady as i32)
        }
    })
    .await;
    assert!(dead, "the restored pod still runs beside the kubelet, or never ran");
}
