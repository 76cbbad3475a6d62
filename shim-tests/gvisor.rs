//! gVisor pods under the real containerd, through the shim: containerd's
//! runc shim drives the real runsc through podckpt-runc, installed as
//! `podckpt-runsc` (the test bed's "gvisor" handler). A pod with several
//! containers runs, counts, logs through the CRI log path, answers ExecSync,
//! reports each container's own exit, stops, and goes away without a trace.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serial_test::serial;

use podckpt::api::cri;
use podckpt::api::podckpt::{CheckPodRequest, Verdict};
use podckpt::interposer::gvisor::WAITER_COMMAND;

use crate::preflight;
use crate::support::{self, COUNTER, GVISOR_HANDLER, Pod, RUNSC_ROOT, Shim, eventually, exec, testbed};

/// The ids runsc knows under the handler's root.
fn runsc_ids() -> Vec<String> {
    let out = Command::new("runsc")
        .args(["--root", RUNSC_ROOT, "list", "-quiet"])
        .output()
        .expect("running runsc list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Waiter processes podckpt-runc left for `id`.
fn waiters_of(id: &str) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|entry| {
            std::fs::read(entry.path().join("cmdline")).is_ok_and(|cmdline| {
                let text = String::from_utf8_lossy(&cmdline);
                text.contains(WAITER_COMMAND) && text.contains(id)
            })
        })
        .count()
}

async fn state_of(client: &mut support::Runtime, id: &str) -> cri::ContainerStatus {
    support::container_status(client, id).await
}

#[tokio::test]
#[serial]
async fn a_gvisor_pod_runs_logs_execs_and_goes_away() {
    let Some(tb) = testbed() else { return };
    support::install_interposer();
    let shim = Shim::start(&tb);
    let mut client = shim.client().await;
    let pod = Pod::run_on(&mut client, &shim.socket, "gvisor", "gvisor").await;
    let counter = pod.start_container(&mut client, &tb.image, "counter", COUNTER).await;
    let talker = pod
        .start_container(
            &mut client,
            &tb.image,
            "talker",
            "echo hello-from-gvisor; echo to-stderr >&2; while :; do sleep 1; done",
        )
        .await;
    let quitter = pod
        .start_container(&mut client, &tb.image, "quitter", "sleep 1; exit 7")
        .await;
    // A terminal: the shim hands a console socket and no stdio.
    let mut config = support::container_config("typist", &tb.image, COUNTER);
    config.tty = true;
    config.stdin = true;
    let typist = pod.create_container(&mut client, config).await;
    client
        .start_container(cri::StartContainerRequest {
            container_id: typist.clone(),
        })
        .await
        .expect("StartContainer of a container with a terminal");
    assert!(
        support::count_reaches(&client, &typist, 2, Duration::from_secs(20)).await,
        "the container with a terminal does not run"
    );
    assert!(runsc_ids().contains(&pod.id), "the sandbox does not run in gVisor");
    assert!(runsc_ids().contains(&counter), "the container does not run in gVisor");

    assert!(
        support::count_reaches(&client, &counter, 3, Duration::from_secs(20)).await,
        "the counter does not count"
    );
    let (out, code) = exec(&mut client, &talker, &["sh", "-c", "echo out; exit 3"]).await;
    assert_eq!((out.as_slice(), code), (b"out\n".as_slice(), 3));

    let log = pod.log_dir().join("talker.log");
    let logged = eventually(Duration::from_secs(10), || async {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.contains(" stdout F hello-from-gvisor") && text.contains(" stderr F to-stderr")
    })
    .await;
    assert!(
        logged,
        "the CRI log lacks the container's output: {:?}",
        std::fs::read_to_string(&log)
    );

    // A container that ends by itself is seen to end, with its own status.
    let ended = eventually(Duration::from_secs(20), || {
        let mut client = client.clone();
        let quitter = quitter.clone();
        async move { state_of(&mut client, &quitter).await.state == cri::ContainerState::ContainerExited as i32 }
    })
    .await;
    assert!(ended, "the shim never saw the container exit");
    assert_eq!(state_of(&mut client, &quitter).await.exit_code, 7);

    // StopContainer ends the counter (SIGTERM, no trap: 143) and returns.
    client
        .stop_container(cri::StopContainerRequest {
            container_id: counter.clone(),
            timeout: 10,
        })
        .await
        .expect("StopContainer");
    let status = state_of(&mut client, &counter).await;
    assert_eq!(status.state, cri::ContainerState::ContainerExited as i32);
    assert_eq!(status.exit_code, 143);
    assert_eq!(
        state_of(&mut client, &talker).await.state,
        cri::ContainerState::ContainerRunning as i32,
        "stopping one container stopped another"
    );

    let ids = [pod.id.clone(), counter, talker, quitter, typist];
    drop(pod);
    let gone = eventually(Duration::from_secs(20), || async {
        let known = runsc_ids();
        ids.iter().all(|id| !known.contains(id) && waiters_of(id) == 0)
    })
    .await;
    assert!(gone, "runsc state or waiters outlived the pod: {:?}", runsc_ids());
    for id in &ids {
        assert!(
            !Path::new(RUNSC_ROOT).join("podckpt-waiters").join(id).exists(),
            "the waiter's state of {id} was left behind"
        );
    }
}

fn runsc_version() -> String {
    let out = Command::new("runsc")
        .arg("--version")
        .output()
        .expect("runsc --version");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("runsc version "))
        .expect("a version line")
        .to_owned()
}

#[tokio::test]
#[serial]
async fn a_gvisor_pod_is_checkpointed_whole_and_keeps_running() {
    let Some(tb) = testbed() else { return };
    support::install_interposer();
    let shim = Shim::start_with(&tb, GVISOR_HANDLER, 5);
    let mut client = shim.client().await;
    let pod = Pod::run_on(&mut client, &shim.socket, "gvisor-ckpt", "gvisor").await;
    let (counter, writer) = pod.start_counter_and_writer(&mut client, &tb.image).await;
    assert!(support::count_reaches(&client, &counter, 3, Duration::from_secs(20)).await);

    // The pre-flight check sees it all first: runsc, which has no check of
    // its own, and a subset that a whole-sandbox backend cannot take.
    let (_keep, out) = support::empty_output("ckpt");
    let whole = preflight::check(&shim, preflight::request(&pod.id, &out))
        .await
        .expect("CheckPod");
    assert!(whole.checkpointable, "{whole:#?}");
    assert_eq!(
        (whole.backend.as_str(), whole.engine_version.clone()),
        ("runsc", runsc_version())
    );
    assert_eq!(preflight::verdict(&whole, "engine-check", "").0, Verdict::Skipped);
    assert_eq!(preflight::verdict(&whole, "output-path", "").0, Verdict::Pass);
    let subset = CheckPodRequest {
        container_ids: vec![counter.clone()],
        ..preflight::request(&pod.id, &out)
    };
    let subset = preflight::check(&shim, subset).await.expect("CheckPod");
    assert_eq!(preflight::failed(&subset), ["whole-sandbox"], "{subset:#?}");
    assert!(
        preflight::verdict(&subset, "whole-sandbox", "").1.contains(&writer),
        "{subset:#?}"
    );

    // A subset cannot be saved: refused, with nothing written.
    let err = support::checkpoint_pod_exactly(&shim, &pod.id, &out, vec![counter.clone()], &[])
        .await
        .expect_err("a subset of a gVisor pod");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{}", err.message());
    assert!(
        err.message().contains(&writer),
        "the message names the missing container: {}",
        err.message()
    );
    assert_eq!(
        std::fs::read_dir(&out).unwrap().count(),
        0,
        "a refused checkpoint wrote something"
    );

    // CRIU's capture options mean nothing to runsc: the check names them,
    // and CheckpointPod refuses them before it stops the sandbox.
    let tcp = [("podckpt.io/tcp-established", "true")];
    let with_tcp = CheckPodRequest {
        options: tcp.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        ..preflight::request(&pod.id, &out)
    };
    let with_tcp = preflight::check(&shim, with_tcp).await.expect("CheckPod");
    assert_eq!(preflight::failed(&with_tcp), ["options"], "{with_tcp:#?}");
    let err = support::checkpoint_pod_exactly(&shim, &pod.id, &out, vec![counter.clone(), writer.clone()], &tcp)
        .await
        .expect_err("tcp-established on a gVisor pod");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{}", err.message());
    assert!(
        err.message().contains("podckpt.io/tcp-established") && err.message().contains("runsc"),
        "the message names the option and the backend: {}",
        err.message()
    );
    assert_eq!(
        std::fs::read_dir(&out).unwrap().count(),
        0,
        "a refused checkpoint wrote something"
    );

    let before = support::count(&mut client, &counter).await;
    support::checkpoint_pod_exactly(&shim, &pod.id, &out, vec![counter.clone(), writer.clone()], &[])
        .await
        .expect("CheckpointPod of the whole gVisor pod");
    let manifest = support::read_manifest(&out);
    assert_eq!(manifest.backend, "runsc");
    assert_eq!(manifest.engine_version, runsc_version());
    let image = out.join(podckpt::archive::SANDBOX_DIR).join("checkpoint.img");
    assert!(std::fs::metadata(&image).expect("the sandbox image").len() > 0);
    assert!(
        manifest.files.keys().any(|f| f == "sandbox/checkpoint.img"),
        "the image is not in the manifest"
    );
    let inspected = support::podckpt_cli(&shim, None, &["inspectcp", out.to_str().unwrap()]);
    assert!(
        inspected.status.success(),
        "inspectcp: {}",
        String::from_utf8_lossy(&inspected.stdout)
    );

    // The pod goes on.
    assert!(support::count_reaches(&client, &counter, before + 3, Duration::from_secs(20)).await);
    for id in [&counter, &writer] {
        assert_eq!(
            state_of(&mut client, id).await.state,
            cri::ContainerState::ContainerRunning as i32
        );
    }
}

#[tokio::test]
#[serial]
async fn a_gvisor_pod_comes_back_whole_in_new_sandboxes() {
    let Some(tb) = testbed() else { return };
    support::install_interposer();
    let shim = Shim::start_with(&tb, GVISOR_HANDLER, 5);
    let mut client = shim.client().await;
    let pod = Pod::run_on(&mut client, &shim.socket, "gvisor-source", "gvisor").await;
    let (counter, writer) = pod.start_counter_and_writer(&mut client, &tb.image).await;
    assert!(support::count_reaches(&client, &counter, 5, Duration::from_secs(20)).await);
    let (payload, _) = exec(&mut client, &writer, &["cat", "/data.txt"]).await;
    assert!(payload.starts_with(b"payload-"));
    let before = support::count(&mut client, &counter).await;
    let (_keep, out) = support::empty_output("ckpt");
    support::checkpoint_pod_exactly(&shim, &pod.id, &out, vec![counter.clone(), writer.clone()], &[])
        .await
        .expect("CheckpointPod");
    drop(pod);

    // Two replicas from one checkpoint, one after the other.
    let mut replicas = Vec::new();
    for _ in 0..2 {
        let call = support::RestoreCall::new(
            &out,
            &support::checkpointed_configs(&out, &["counter", "writer"]),
            "gvisor",
        );
        let (restored_pod, restored) = call
            .send(&shim, Some(Duration::from_secs(60)))
            .await
            .expect("RestorePod");
        assert_eq!(restored.len(), 2);
        let id_of = |name: &str| restored.iter().find(|c| c.name == name).unwrap().container_id.clone();
        for c in &restored {
            assert_eq!(
                state_of(&mut client, &c.container_id).await.state,
                cri::ContainerState::ContainerCreated as i32,
                "RestorePod must return CREATED containers"
            );
        }
        for c in &restored {
            client
                .start_container(cri::StartContainerRequest {
                    container_id: c.container_id.clone(),
                })
                .await
                .expect("StartContainer");
        }
        let (counter, writer) = (id_of("counter"), id_of("writer"));
        assert!(
            support::was_restored(&counter),
            "the counter was started afresh, not restored"
        );
        let now = support::count(&mut client, &counter).await;
        assert!(
            now >= before,
            "the restored counter started over: {now} after restore, {before} before the checkpoint"
        );
        assert!(
            support::count_reaches(&client, &counter, now + 3, Duration::from_secs(20)).await,
            "the restored counter does not count"
        );
        let (data, _) = exec(&mut client, &writer, &["cat", "/data.txt"]).await;
        assert_eq!(data, payload, "the file written before the checkpoint is not there");
        replicas.push(restored_pod);
    }
    drop(replicas);
}

/// A two-container gVisor pod, checkpointed; the pod is gone.
async fn gvisor_checkpoint(shim: &Shim, tb: &support::Testbed) -> (tempfile::TempDir, std::path::PathBuf) {
    let mut client = shim.client().await;
    let pod = Pod::run_on(&mut client, &shim.socket, "gvisor-source", "gvisor").await;
    let counter = pod.start_container(&mut client, &tb.image, "counter", COUNTER).await;
    assert!(support::count_reaches(&client, &counter, 2, Duration::from_secs(20)).await);
    let (parent, out) = support::empty_output("ckpt");
    support::checkpoint_pod_exactly(shim, &pod.id, &out, vec![counter], &[])
        .await
        .expect("CheckpointPod");
    (parent, out)
}

/// Sandboxes the runtime knows, tokens podckptd keeps, and sandboxes runsc
/// runs: what a refused or undone restore must leave as it found them.
async fn traces(shim: &Shim) -> (usize, usize, usize) {
    let sandboxes = support::sandboxes(&mut shim.client().await).await.len();
    let tokens = std::fs::read_dir(shim.state_dir().join("restores")).map_or(0, |d| d.count());
    (sandboxes, tokens, runsc_ids().len())
}

#[tokio::test]
#[serial]
async fn restores_across_backends_versions_and_deadlines_are_refused_and_leave_nothing() {
    let Some(tb) = testbed() else { return };
    support::install_interposer();
    let shim = Shim::start_with(&tb, GVISOR_HANDLER, 5);
    let (_keep_gvisor, gvisor) = gvisor_checkpoint(&shim, &tb).await;
    let (_keep_criu, criu, _) =
        support::checkpointed(&shim, "", support::container_config("counter", &tb.image, COUNTER), 2).await;
    let before = traces(&shim).await;

    let refused = |checkpoint: &Path, handler: &str| {
        let call = support::RestoreCall::new(
            checkpoint,
            &support::checkpointed_configs(checkpoint, &["counter"]),
            handler,
        );
        call.send(&shim, Some(Duration::from_secs(60)))
    };
    // A CRIU checkpoint through the gVisor handler, and the reverse.
    for (checkpoint, handler, taken, restorer) in [
        (&criu, "gvisor", "criu-runc", "runsc"),
        (&gvisor, "podckpt", "runsc", "criu-runc"),
    ] {
        let err = refused(checkpoint, handler).await.err().expect("refused");
        assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{}", err.message());
        assert!(
            err.message().contains(taken) && err.message().contains(restorer),
            "the message names both backends: {}",
            err.message()
        );
        assert_eq!(traces(&shim).await, before, "a refused restore left something");
    }

    // An image from another runsc version: runsc cannot restore it.
    let (_keep_copy, copy) = support::copy_dir(&gvisor, "other-version");
    let manifest_path = copy.join(podckpt::archive::MANIFEST);
    let mut manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
    manifest["engine_version"] = "0.0~20230101.0".into();
    std::fs::write(&manifest_path, serde_json::to_vec(&manifest).unwrap()).unwrap();
    let err = refused(&copy, "gvisor").await.err().expect("refused");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{}", err.message());
    assert!(
        err.message().contains("0.0~20230101.0") && err.message().contains(&runsc_version()),
        "{}",
        err.message()
    );
    assert_eq!(traces(&shim).await, before);

    // Out of time before anything could be made: nothing is.
    let call = support::RestoreCall::new(&gvisor, &support::checkpointed_configs(&gvisor, &["counter"]), "gvisor");
    let err = call
        .send(&shim, Some(Duration::from_millis(1)))
        .await
        .err()
        .expect("out of time");
    let in_time = err.code() == tonic::Code::DeadlineExceeded
        || (err.code() == tonic::Code::Cancelled && err.message() == "Timeout expired");
    assert!(in_time, "{:?}: {}", err.code(), err.message());
    let undone = eventually(Duration::from_secs(30), || async { traces(&shim).await == before }).await;
    assert!(
        undone,
        "a restore that ran out of time left {:?}, not {before:?}",
        traces(&shim).await
    );

    // Restored, never started, removed: the sandbox, stopped until its
    // containers are registered, still goes. (This is also what undoing a
    // RestorePod that ran out of time after the sandbox was made does.)
    let call = support::RestoreCall::new(&gvisor, &support::checkpointed_configs(&gvisor, &["counter"]), "gvisor");
    let (pod, _) = call
        .send(&shim, Some(Duration::from_secs(60)))
        .await
        .expect("RestorePod");
    let stop = tokio::time::timeout(
        Duration::from_secs(30),
        shim.client().await.stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: pod.id.clone(),
        }),
    )
    .await;
    assert!(
        matches!(stop, Ok(Ok(_))),
        "StopPodSandbox of a restored pod never started: {stop:?}"
    );
    drop(pod);
    // Its container's unused token goes on the next pod call.
    let scratch = tempfile::tempdir().unwrap();
    let _ = support::checkpoint_pod_exactly(&shim, "no-such-pod", scratch.path(), vec!["x".into()], &[]).await;
    let gone = eventually(Duration::from_secs(30), || async { traces(&shim).await == before }).await;
    assert!(
        gone,
        "a restored pod removed before it started left {:?}, not {before:?}",
        traces(&shim).await
    );

    // And the checkpoint still restores.
    let call = support::RestoreCall::new(&gvisor, &support::checkpointed_configs(&gvisor, &["counter"]), "gvisor");
    let (_pod, restored) = call
        .send(&shim, Some(Duration::from_secs(60)))
        .await
        .expect("RestorePod");
    let mut client = shim.client().await;
    let cid = restored[0].container_id.clone();
    client
        .start_container(cri::StartContainerRequest {
            container_id: cid.clone(),
        })
        .await
        .expect("StartContainer");
    assert!(support::count_reaches(&client, &cid, 3, Duration::from_secs(20)).await);
}

/// A pod whose first container ran and exited (as an init container does)
/// is checkpointed with its running containers, and restores: gVisor's
/// image counts the containers that still ran.
#[tokio::test]
#[serial]
async fn a_gvisor_pod_with_an_exited_container_restores() {
    let Some(tb) = testbed() else { return };
    support::install_interposer();
    let shim = Shim::start_with(&tb, GVISOR_HANDLER, 5);
    let mut client = shim.client().await;
    let pod = Pod::run_on(&mut client, &shim.socket, "gvisor-init", "gvisor").await;
    let init = pod.start_container(&mut client, &tb.image, "init", "exit 0").await;
    let exited = eventually(Duration::from_secs(20), || {
        let mut client = client.clone();
        let init = init.clone();
        async move { state_of(&mut client, &init).await.state == cri::ContainerState::ContainerExited as i32 }
    })
    .await;
    assert!(exited, "the init container did not exit");
    let counter = pod.start_container(&mut client, &tb.image, "counter", COUNTER).await;
    assert!(support::count_reaches(&client, &counter, 2, Duration::from_secs(20)).await);
    let (_keep, out) = support::empty_output("ckpt");
    support::checkpoint_pod_exactly(&shim, &pod.id, &out, vec![counter], &[])
        .await
        .expect("CheckpointPod of the running containers");
    drop(pod);

    let call = support::RestoreCall::new(&out, &support::checkpointed_configs(&out, &["counter"]), "gvisor");
    let (_restored_pod, restored) = call
        .send(&shim, Some(Duration::from_secs(60)))
        .await
        .expect("RestorePod");
    let cid = restored[0].container_id.clone();
    let started = tokio::time::timeout(
        Duration::from_secs(30),
        client.start_container(cri::StartContainerRequest {
            container_id: cid.clone(),
        }),
    )
    .await;
    assert!(matches!(started, Ok(Ok(_))), "StartContainer: {started:?}");
    assert!(
        support::count_reaches(&client, &cid, 3, Duration::from_secs(20)).await,
        "the restored counter does not count"
    );
}
