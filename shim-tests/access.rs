//! Who may call CheckpointPod and RestorePod: root, and the uids and gids
//! the config names. Everyone who can open the socket keeps every ordinary
//! CRI call.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use serial_test::serial;

use crate::support::{self, Pod, Shim, checkpoint_pod, runc_status, testbed};

const NOBODY: u32 = 65534;

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Lets every user reach the shim's socket, as a node operator would with
/// a group; the pod calls then rest on peer credentials alone.
fn open_socket(shim: &Shim) {
    chmod(shim.socket.parent().unwrap(), 0o711);
    chmod(&shim.socket, 0o666);
}

fn denied(out: &Output, call: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{call} was allowed for uid {NOBODY}");
    assert!(
        stderr.contains(call) && stderr.contains("PermissionDenied") && stderr.contains("uid 65534"),
        "unclear refusal of {call}: {stderr}"
    );
}

async fn pod_count(shim: &Shim) -> usize {
    support::sandboxes(&mut shim.client().await).await.len()
}

#[tokio::test]
#[serial]
async fn pod_calls_are_denied_to_other_users_and_allowed_to_configured_ones() {
    let Some(tb) = testbed() else { return };
    let shim = Shim::start(&tb);
    open_socket(&shim);
    let mut client = shim.client().await;
    let pod = Pod::run(&mut client, &shim.socket, "access").await;
    // A shell loop, not a bare `sleep`: see the README on CRIU and sleeping PID 1s.
    let cid = pod.start_container(&mut client, &tb.image, "c", support::COUNTER).await;
    let parent = tempfile::tempdir().unwrap();
    chmod(parent.path(), 0o755);
    let out = parent.path().join("ckpt");
    std::fs::create_dir(&out).unwrap();
    chmod(&out, 0o755);

    // The CLI lists the pods first (an ordinary call, allowed), then is
    // refused CheckpointPod, which leaves the pod as it was.
    let refused = support::podckpt_cli(
        &shim,
        Some(NOBODY),
        &["checkpointp", &pod.id, "-o", out.to_str().unwrap()],
    );
    denied(&refused, "CheckpointPod");
    assert_eq!(runc_status(&cid), "running");
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 0);

    // RestorePod, from a checkpoint the user can read, creates nothing.
    let real = parent.path().join("real");
    std::fs::create_dir(&real).unwrap();
    checkpoint_pod(&shim, &pod.id, &real, &[], &[])
        .await
        .expect("CheckpointPod as root");
    let readable = parent.path().join("readable");
    let copied = Command::new("cp").arg("-a").arg(&real).arg(&readable).status().unwrap();
    assert!(copied.success());
    assert!(
        Command::new("chmod")
            .arg("-R")
            .arg("a+rX")
            .arg(&readable)
            .status()
            .unwrap()
            .success()
    );
    let logs = parent.path().join("logs");
    std::fs::create_dir(&logs).unwrap();
    chmod(&logs, 0o777);
    let config = parent.path().join("pod.json");
    let name = support::unique("denied");
    let pod_json = serde_json::json!({
        "metadata": {"name": name, "namespace": "podckpt-test", "uid": name},
        "log_directory": logs.join(&name),
    });
    std::fs::write(&config, pod_json.to_string()).unwrap();
    chmod(&config, 0o644);
    let before = pod_count(&shim).await;
    let refused = support::podckpt_cli(
        &shim,
        Some(NOBODY),
        &[
            "restorep",
            readable.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
        ],
    );
    denied(&refused, "RestorePod");
    assert_eq!(pod_count(&shim).await, before, "a refused restore created a sandbox");

    // Named in the config, the same user may checkpoint.
    let allowed = Shim::start_with(&tb, &format!("allowed_uids = [{NOBODY}]\n"), 5);
    open_socket(&allowed);
    let out = parent.path().join("allowed");
    std::fs::create_dir(&out).unwrap();
    chmod(&out, 0o755);
    let done = support::podckpt_cli(
        &allowed,
        Some(NOBODY),
        &["checkpointp", &pod.id, "-o", out.to_str().unwrap()],
    );
    assert!(
        done.status.success(),
        "an allowed uid was refused: {}",
        String::from_utf8_lossy(&done.stderr)
    );
    support::read_manifest(&out)
        .verify(&out)
        .expect("the allowed checkpoint is whole");
    // Written by the daemon: what is inside is root's alone, whoever asked
    // for it; the directory itself keeps the mode its owner gave it.
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&out).unwrap().permissions().mode() & 0o777, 0o755);
    for entry in walkdir::WalkDir::new(&out).min_depth(1) {
        let meta = entry.as_ref().unwrap().metadata().unwrap();
        let want = if meta.is_dir() { 0o700 } else { 0o600 };
        let path = entry.unwrap().into_path();
        assert_eq!(meta.permissions().mode() & 0o777, want, "{}", path.display());
        assert_eq!(meta.uid(), 0, "{} is not root's", path.display());
    }
}
