//! The pre-flight check, `podckpt.v1.Preflight/CheckPod`, through podckptd
//! on each runtime: a plain pod can be checkpointed, a pod on the node's
//! network or with too little room for its checkpoint cannot, and every
//! reason is named. The check pauses nothing and writes nothing.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use podckpt::api::cri;
use podckpt::api::podckpt::{CheckPodRequest, CheckPodResponse, Verdict, preflight_client::PreflightClient};
use prost::Message;
use serde_json::Value;
use tonic::Code;

use crate::support::interop::{Client, Stack};
use crate::support::{self, Pod, Shim, Testbed};

on_each_runtime!(
    a_plain_pod_is_checkpointable_and_nothing_is_paused_or_written,
    a_pod_on_the_nodes_network_is_not_and_the_cli_says_why,
    a_target_with_too_little_space_is_not,
    every_stack_gets_the_checks_answer_and_its_errors,
);

const LIMIT: Duration = Duration::from_secs(60);

pub(crate) async fn check(shim: &Shim, request: CheckPodRequest) -> Result<CheckPodResponse, tonic::Status> {
    let mut client = PreflightClient::new(support::channel(&shim.socket));
    let mut request = tonic::Request::new(request);
    request.set_timeout(LIMIT);
    client.check_pod(request).await.map(|r| r.into_inner())
}

pub(crate) fn request(pod: &str, output: &Path) -> CheckPodRequest {
    CheckPodRequest {
        pod_sandbox_id: pod.into(),
        container_ids: vec![],
        output_path: output.display().to_string(),
        deadline_seconds: LIMIT.as_secs(),
        options: Default::default(),
    }
}

/// The verdict and detail of the check `name` (of `container`, or of the pod).
pub(crate) fn verdict<'a>(answer: &'a CheckPodResponse, name: &str, container: &str) -> (Verdict, &'a str) {
    let check = answer
        .checks
        .iter()
        .find(|c| c.name == name && c.container_id == container)
        .unwrap_or_else(|| panic!("no {name} check of {container:?} in {answer:#?}"));
    (Verdict::try_from(check.verdict).unwrap(), check.detail.as_str())
}

pub(crate) fn failed(answer: &CheckPodResponse) -> Vec<&str> {
    answer
        .checks
        .iter()
        .filter(|c| c.verdict == Verdict::Fail as i32)
        .map(|c| c.name.as_str())
        .collect()
}

/// A container that holds `mib` MiB once it counts.
async fn holding(pod: &Pod, client: &mut support::Runtime, tb: &Testbed, name: &str, mib: u64) -> String {
    let cid = pod
        .start_container(client, &tb.image, name, &support::memory_counter(mib))
        .await;
    assert!(
        support::count_reaches(client, &cid, 1, Duration::from_secs(60)).await,
        "{name} did not get going"
    );
    cid
}

async fn a_plain_pod_is_checkpointable_and_nothing_is_paused_or_written(tb: Testbed) {
    let mut shim = Shim::start_with_metrics(&tb);
    let mut client = shim.client().await;
    let pod = Pod::run(&mut client, &shim.socket, "plain").await;
    let cid = pod.start_sleeper(&mut client, &tb.image, "sleeper").await;
    let parent = tempfile::tempdir().unwrap();
    let out = parent.path().join("ckpt");

    let answer = check(&shim, request(&pod.id, &out)).await.expect("CheckPod");
    assert!(answer.checkpointable, "{answer:#?}");
    assert_eq!(failed(&answer), Vec::<&str>::new());
    assert_eq!(answer.container_ids, std::slice::from_ref(&cid));
    assert_eq!(answer.backend, "criu-runc");
    assert!(answer.engine_version.starts_with('4'), "CRIU 4.x: {answer:?}");
    assert_eq!(verdict(&answer, "engine-check", "").0, Verdict::Pass);
    let (state, detail) = verdict(&answer, "container-state", &cid);
    assert_eq!((state, detail), (Verdict::Pass, "sleeper: CONTAINER_RUNNING"));
    assert_eq!(verdict(&answer, "features", &cid).0, Verdict::Pass);
    // A shell sleeping holds some memory, and the disk has room for it.
    assert!(answer.estimated_bytes > 0, "{answer:?}");
    assert!(answer.free_bytes > answer.estimated_bytes, "{answer:?}");
    assert_eq!(verdict(&answer, "space", "").0, Verdict::Pass);
    // This daemon has measured no checkpoint yet.
    assert_eq!(verdict(&answer, "time", "").0, Verdict::Skipped);
    assert_eq!(answer.dump_rate_bytes_per_second, 0);
    // The directory is not there yet: podckpt checkpointp would make it.
    assert_eq!(verdict(&answer, "output-path", "").0, Verdict::Skipped);
    // Nothing was paused, nothing written.
    let metrics = shim.metrics().await;
    assert_eq!(metrics.get("podckpt_checkpoint_freeze_duration_seconds_count"), 0.0);
    assert_eq!(metrics.get("podckpt_paused_containers"), 0.0);
    assert_eq!(support::runc_status(&cid), "running");
    assert_eq!(support::dir_names(parent.path()), Vec::<String>::new());
    // An output path CheckpointPod would refuse is a reason.
    std::fs::write(parent.path().join("file"), b"").unwrap();
    let answer = check(&shim, request(&pod.id, parent.path())).await.expect("CheckPod");
    assert_eq!(failed(&answer), ["output-path"], "{answer:#?}");
    assert!(
        verdict(&answer, "output-path", "").1.contains("not empty"),
        "{answer:#?}"
    );
    std::fs::remove_file(parent.path().join("file")).unwrap();
    let answer = check(&shim, request(&pod.id, parent.path())).await.expect("CheckPod");
    assert_eq!(verdict(&answer, "output-path", "").0, Verdict::Pass);

    // The CLI with no --output-dir checks the new directory checkpointp
    // would make here, not the (non-empty) current directory, and makes none.
    let here = tempfile::tempdir().unwrap();
    std::fs::write(here.path().join("other"), b"").unwrap();
    let cli = Command::new(env!("CARGO_BIN_EXE_podckpt"))
        .current_dir(here.path())
        .arg("--runtime-endpoint")
        .arg(format!("unix://{}", shim.socket.display()))
        .args(["preflight", &pod.id, "-o", "json"])
        .output()
        .unwrap();
    assert_eq!(cli.status.code(), Some(0), "{cli:?}");
    let json: Value = serde_json::from_slice(&cli.stdout).unwrap();
    assert_eq!(json["checkpointable"], true, "{json}");
    let output = json["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == "output-path")
        .unwrap();
    assert_eq!(output["verdict"], "skipped", "{json}");
    let new_dir = format!("{}/podckpt-", here.path().canonicalize().unwrap().display());
    assert!(output["detail"].as_str().unwrap().starts_with(&new_dir), "{json}");
    assert_eq!(support::dir_names(here.path()), ["other"]);

    // Once a checkpoint of a MiB or more is measured, the time is judged.
    let big = holding(&pod, &mut client, &tb, "holder", 8).await;
    let (_keep, ckpt) = support::empty_output("measured");
    support::checkpoint_pod(&shim, &pod.id, &ckpt, &[], &[])
        .await
        .expect("CheckpointPod");
    let answer = check(&shim, request(&pod.id, &out)).await.expect("CheckPod");
    assert!(answer.dump_rate_bytes_per_second > 0, "{answer:?}");
    assert!(answer.estimated_seconds > 0.0, "{answer:?}");
    let (time, detail) = verdict(&answer, "time", "");
    assert_eq!(time, Verdict::Pass, "{detail}");
    assert!(detail.contains("within the deadline of 60 s"), "{detail}");
    assert_eq!(answer.container_ids.len(), 2);
    // Without a deadline the time is estimated, not judged.
    let unbounded = CheckPodRequest {
        deadline_seconds: 0,
        ..request(&pod.id, &out)
    };
    let answer = check(&shim, unbounded).await.expect("CheckPod");
    assert_eq!(verdict(&answer, "time", "").0, Verdict::Skipped);
    assert_eq!(support::runc_status(&big), "running");

    // A node that has dumped at 1 KiB/s (what the daemon remembers across
    // restarts) cannot write the 8 MiB holder within a minute.
    shim.stop();
    let rates = shim.state_dir().join("dump-rates.json");
    std::fs::write(&rates, format!(r#"{{"{}": [1024]}}"#, answer.backend)).unwrap();
    shim.respawn(&tb);
    let answer = check(&shim, request(&pod.id, &out)).await.expect("CheckPod");
    assert_eq!(answer.dump_rate_bytes_per_second, 1024);
    assert_eq!(failed(&answer), ["time"], "{answer:#?}");
    let (_, detail) = verdict(&answer, "time", "");
    assert!(detail.contains("more than the deadline of 60 s"), "{detail}");
}

async fn a_pod_on_the_nodes_network_is_not_and_the_cli_says_why(tb: Testbed) {
    let shim = Shim::start(&tb);
    let mut client = shim.client().await;
    let on_node = || cri::NamespaceOption {
        network: cri::NamespaceMode::Node as i32,
        ..support::kubelet_namespaces()
    };
    let pod = Pod::run_edited(&mut client, &shim.socket, "hostnet", "", |config| {
        // As the kubelet does: the node's network comes with its name.
        config.hostname.clear();
        let linux = config.linux.get_or_insert_with(Default::default);
        linux
            .security_context
            .get_or_insert_with(Default::default)
            .namespace_options = Some(on_node());
    })
    .await;
    let mut config = support::container_config("sleeper", &tb.image, "sleep 1000");
    let context = config.linux.as_mut().unwrap().security_context.as_mut().unwrap();
    context.namespace_options = Some(on_node());
    let cid = pod.start_configured(&mut client, config).await;

    let parent = tempfile::tempdir().unwrap();
    let answer = check(&shim, request(&pod.id, parent.path())).await.expect("CheckPod");
    assert!(!answer.checkpointable, "{answer:#?}");
    assert_eq!(failed(&answer), ["host-network"], "{answer:#?}");
    let (_, detail) = verdict(&answer, "host-network", &cid);
    assert!(detail.contains("hostNetwork"), "{detail}");

    // The CLI: its table names the reason, its JSON says no, and it exits 3.
    let prefix = &pod.id[..8];
    let dir = parent.path().display().to_string();
    let table = support::podckpt_cli(&shim, None, &["preflight", prefix, "--output-dir", &dir, "-o", "table"]);
    assert_eq!(table.status.code(), Some(podckpt::cli::NOT_CHECKPOINTABLE), "{table:?}");
    let stdout = String::from_utf8_lossy(&table.stdout);
    let header = stdout.lines().next().unwrap_or_default();
    assert!(header.starts_with("CHECK") && header.contains("RESULT"), "{stdout}");
    let row = stdout
        .lines()
        .find(|l| l.starts_with("host-network"))
        .unwrap_or_else(|| panic!("no host-network row:\n{stdout}"));
    assert!(row.contains(&cid[..13]) && row.contains("FAIL"), "{row}");
    assert!(stdout.contains("Checkpointable:  no"), "{stdout}");
    let stderr = String::from_utf8_lossy(&table.stderr);
    assert!(stderr.contains("cannot be checkpointed: 1 check failed"), "{stderr}");
    let json = support::podckpt_cli(&shim, None, &["preflight", prefix, "--output-dir", &dir]);
    assert_eq!(json.status.code(), Some(podckpt::cli::NOT_CHECKPOINTABLE));
    let json: Value = serde_json::from_slice(&json.stdout).expect("JSON");
    assert_eq!(json["checkpointable"], false);
    assert_eq!(json["pod_sandbox_id"], pod.id.as_str());
    let reasons: Vec<&Value> = json["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["verdict"] == "fail")
        .collect();
    assert_eq!(reasons.len(), 1, "{json}");
    assert_eq!(reasons[0]["check"], "host-network");
    assert_eq!(reasons[0]["container_id"], cid.as_str());
    assert_eq!(support::runc_status(&cid), "running");
}

/// A tmpfs of 64 KiB, unmounted when dropped.
struct Tiny(tempfile::TempDir);

impl Tiny {
    fn mount() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k,mode=0700", "podckpt-tiny"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(status.success(), "mounting a tmpfs");
        Self(dir)
    }
}

impl Drop for Tiny {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

async fn a_target_with_too_little_space_is_not(tb: Testbed) {
    let shim = Shim::start(&tb);
    let mut client = shim.client().await;
    let pod = Pod::run(&mut client, &shim.socket, "cramped").await;
    let cid = holding(&pod, &mut client, &tb, "holder", 4).await;
    let tiny = Tiny::mount();
    // Not there yet: its file system is the tmpfs it would be made on.
    let out = tiny.0.path().join("ckpt");
    let answer = check(&shim, request(&pod.id, &out)).await.expect("CheckPod");
    assert!(!answer.checkpointable, "{answer:#?}");
    assert_eq!(failed(&answer), ["space"], "{answer:#?}");
    assert!(answer.estimated_bytes >= 4 << 20, "4 MiB held: {answer:?}");
    assert!(answer.free_bytes <= 64 << 10, "{answer:?}");
    let (_, detail) = verdict(&answer, "space", "");
    assert!(
        detail.contains(&tiny.0.path().display().to_string()) && detail.contains("needs about"),
        "{detail}"
    );
    assert!(!out.exists(), "the check wrote nothing");
    assert_eq!(support::runc_status(&cid), "running");
}

/// The same calls through tonic, grpc-go and grpc C-core: each gets the
/// answer, and each gets NOT_FOUND for an unknown pod and INVALID_ARGUMENT
/// for none.
async fn every_stack_gets_the_checks_answer_and_its_errors(tb: Testbed) {
    let shim = Shim::start(&tb);
    let mut client = shim.client().await;
    let pod = Pod::run(&mut client, &shim.socket, "stacks").await;
    let cid = pod.start_sleeper(&mut client, &tb.image, "sleeper").await;
    let out = tempfile::tempdir().unwrap();
    let path = podckpt::api::CHECK_POD_PATH;
    for stack in Stack::ALL {
        let Some(mut caller) = Client::start(stack, &shim.socket) else {
            return support::missing(&format!("the {stack:?} client"));
        };
        let got = caller
            .call(path, &request(&pod.id, out.path()).encode_to_vec(), Some(LIMIT), &[])
            .await;
        assert_eq!(got.code(), Code::Ok, "{stack:?}: {got:?}");
        let answer = CheckPodResponse::decode(got.responses[0].as_slice()).unwrap();
        assert!(answer.checkpointable, "{stack:?}: {answer:#?}");
        assert_eq!(answer.container_ids, std::slice::from_ref(&cid), "{stack:?}");
        let unknown = caller
            .call(
                path,
                &request("no-such-pod", out.path()).encode_to_vec(),
                Some(LIMIT),
                &[],
            )
            .await;
        assert_eq!(unknown.code(), Code::NotFound, "{stack:?}: {unknown:?}");
        assert!(unknown.message.contains("no-such-pod"), "{stack:?}: {unknown:?}");
        let none = caller
            .call(path, &request("", out.path()).encode_to_vec(), Some(LIMIT), &[])
            .await;
        assert_eq!(none.code(), Code::InvalidArgument, "{stack:?}: {none:?}");
        assert!(none.message.contains("pod_sandbox_id"), "{stack:?}: {none:?}");
    }
}

/// A pod made as crictl makes it by default, its containers in the pod's
/// PID namespace: the answer is yes, as CheckpointPod and RestorePod do it
/// (`restore::containers_sharing_the_pods_pid_namespace_come_back_while_others_fork`).
/// Until one of its containers orphans a process: the pause adopts it, a
/// capture of the container would go without it, and both the pre-flight
/// check and CheckpointPod say so, naming it, with nothing paused or written.
/// (containerd only: CRI-O gives such a pod's infra container an
/// oom_score_adj this machine cannot set.)
#[tokio::test]
#[serial_test::serial]
async fn an_orphan_in_the_pods_pid_namespace_is_named_and_refused() {
    let Some(tb) = support::testbed() else { return };
    let mut shim = Shim::start_with_metrics(&tb);
    let mut client = shim.client().await;
    let pod = Pod::run_edited(&mut client, &shim.socket, "shared-pid", "", |config| {
        support::share_pod_pids(support::pod_namespaces(config))
    })
    .await;
    let mut counter = support::container_config("counter", &tb.image, support::COUNTER);
    support::share_pod_pids(support::container_namespaces(&mut counter));
    let counter = pod.start_configured(&mut client, counter).await;
    assert!(support::count_reaches(&client, &counter, 1, Duration::from_secs(10)).await);
    let parent = tempfile::tempdir().unwrap();
    let out = parent.path().join("ckpt");
    let answer = check(&shim, request(&pod.id, &out)).await.expect("CheckPod");
    assert!(answer.checkpointable, "{answer:#?}");
    assert_eq!(verdict(&answer, "processes", &counter).0, Verdict::Pass);

    // A daemon that forks away from its parent: `(sleep &)`.
    let mut daemon = support::container_config("daemon", &tb.image, &format!("(sleep 1000 &); {}", support::COUNTER));
    support::share_pod_pids(support::container_namespaces(&mut daemon));
    let daemon = pod.start_configured(&mut client, daemon).await;
    assert!(support::count_reaches(&client, &daemon, 1, Duration::from_secs(10)).await);
    let answer = check(&shim, request(&pod.id, &out)).await.expect("CheckPod");
    assert!(!answer.checkpointable);
    assert_eq!(failed(&answer), ["processes"], "{answer:#?}");
    let (_, why) = verdict(&answer, "processes", &daemon);
    assert!(why.contains("(sleep)") && why.contains("adopted"), "{why}");
    assert_eq!(verdict(&answer, "processes", &counter).0, Verdict::Pass);

    std::fs::create_dir(&out).unwrap();
    let refused = support::checkpoint_pod(&shim, &pod.id, &out, &[], &[])
        .await
        .expect_err("a checkpoint that would lose a process");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(
        refused.message().contains("container daemon") && refused.message().contains("(sleep)"),
        "{}",
        refused.message()
    );
    let metrics = shim.metrics().await;
    assert_eq!(metrics.get("podckpt_checkpoint_freeze_duration_seconds_count"), 0.0);
    assert_eq!(support::runc_status(&daemon), "running");
    assert_eq!(support::dir_names(&out), Vec::<String>::new());
    let _ = &mut shim;
}
