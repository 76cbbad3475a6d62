//! The test bed itself: what `contrib/testbed.sh start` finds running is
//! kept only if this checkout would have started exactly that. A runtime
//! left by another commit, another checkout or a newer runtime binary, or
//! started before the binaries its config names existed, is restarted
//! before any test uses it (CRI-O, for one, drops a handler whose binary is
//! missing when it starts, and every restore through it then fails).

use std::path::Path;

use serial_test::serial;

use podckpt::api::cri;

use crate::support::{self, Pod};

const RUN_DIR: &str = "/run/podckpt-testbed";

/// The pids of node A's containerd, node B's and CRI-O, from their pid files.
fn runtime_pids() -> Vec<String> {
    ["", "-b"]
        .iter()
        .map(|node| format!("{RUN_DIR}{node}/containerd.pid"))
        .chain([format!("{RUN_DIR}/crio.pid")])
        .map(|file| {
            std::fs::read_to_string(&file)
                .unwrap_or_else(|e| panic!("{file}: {e}"))
                .trim()
                .to_owned()
        })
        .collect()
}

fn fingerprint_file() -> std::path::PathBuf {
    Path::new(RUN_DIR).join("testbed.fingerprint")
}

/// CRI-O runs a pod with the "podckpt" handler only if it had that
/// handler's binary when it started.
async fn crio_runs_a_podckpt_pod(crio: &support::Testbed) {
    let mut client = crio.direct().await;
    let pod = Pod::run_on(&mut client, &crio.socket, "handler-check", "podckpt").await;
    let status = client
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: pod.id.clone(),
            verbose: false,
        })
        .await
        .expect("PodSandboxStatus")
        .into_inner()
        .status
        .expect("a status");
    assert_eq!(status.state, cri::PodSandboxState::SandboxReady as i32);
}

#[tokio::test]
#[serial]
async fn a_test_bed_started_by_another_build_is_restarted() {
    let (Some(tb), Some(crio)) = (support::testbed(), support::crio_testbed()) else {
        return;
    };
    let before = runtime_pids();

    // What this checkout starts is kept as it runs.
    tb.script("start");
    assert_eq!(
        runtime_pids(),
        before,
        "a test bed that matches this checkout was restarted"
    );

    // A test bed started by an older commit: those wrote no fingerprint.
    std::fs::remove_file(fingerprint_file()).expect("the test bed records what it was started from");
    tb.script("start");
    let restarted = runtime_pids();
    for (old, new) in before.iter().zip(&restarted) {
        assert_ne!(
            old, new,
            "a runtime of an older test bed was kept: pids {before:?} then {restarted:?}"
        );
    }
    crio_runs_a_podckpt_pod(&crio).await;

    // Started from another configuration or build: another fingerprint.
    std::fs::write(fingerprint_file(), "0123456789abcdef\n").unwrap();
    tb.script("start");
    let again = runtime_pids();
    for (old, new) in restarted.iter().zip(&again) {
        assert_ne!(old, new, "a runtime started from another build was kept");
    }
    assert_ne!(
        std::fs::read_to_string(fingerprint_file()).unwrap().trim(),
        "0123456789abcdef"
    );
    crio_runs_a_podckpt_pod(&crio).await;
}
