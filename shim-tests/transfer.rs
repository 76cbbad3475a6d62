//! A pod carried between the test bed's two containerd nodes, each with its
//! own podckptd: checkpointed on node A, exported, imported on node B and
//! restored there; once as an encrypted file, once through a pipe, the shape
//! of `ssh`, `kubectl cp` or an object-store upload.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serial_test::serial;

use crate::support::{self, COUNTER, Pod, Shim, checkpoint_pod, count, count_reaches};

/// `podckpt ARGS` (JSON output), which must succeed; returns its stdout.
fn podckpt(shim: &Shim, args: &[&str]) -> serde_json::Value {
    let out = support::podckpt_cli(shim, None, args);
    assert!(
        out.status.success(),
        "podckpt {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}

fn path(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

#[tokio::test]
#[serial]
async fn a_pod_moves_to_another_node_and_counts_on_while_the_original_runs() {
    let (Some(node_a), Some(node_b)) = (support::testbed(), support::node_b_testbed()) else {
        return;
    };
    let shim_a = Shim::start(&node_a);
    let shim_b = Shim::start(&node_b);
    let mut client_a = shim_a.client().await;
    let mut client_b = shim_b.client().await;

    let pod = Pod::run(&mut client_a, &shim_a.socket, "mover").await;
    let cid = pod
        .start_container(&mut client_a, &node_a.image, "counter", COUNTER)
        .await;
    assert!(count_reaches(&client_a, &cid, 5, Duration::from_secs(20)).await);
    let (_parent, checkpoint) = support::empty_output("ckpt");
    let saved = count(&mut client_a, &cid).await;
    checkpoint_pod(&shim_a, &pod.id, &checkpoint, &[], &[])
        .await
        .expect("CheckpointPod on node A");
    let manifest = std::fs::read(checkpoint.join("manifest.json")).unwrap();

    // As a file, encrypted to a key of node B's.
    let work = tempfile::tempdir().unwrap();
    let key = work.path().join("node-b.key");
    let recipient = podckpt(&shim_b, &["keygen", "-o", path(&key)])["recipient"]
        .as_str()
        .expect("keygen's recipient")
        .to_owned();
    let stream = work.path().join("pod.podckpt");
    podckpt(
        &shim_a,
        &[
            "export",
            path(&checkpoint),
            "-o",
            path(&stream),
            "--recipient",
            &recipient,
        ],
    );
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&key), 0o600);
    assert_eq!(mode(&stream), 0o600);
    let bytes = std::fs::read(&stream).unwrap();
    assert!(bytes.starts_with(b"age-encryption.org/v1\n"));
    assert!(
        !bytes.windows(b"counter".len()).any(|w| w == b"counter"),
        "the container's name shows through the encryption"
    );
    let landed = work.path().join("landed");
    let state_b = shim_b.state_dir();
    let imported = podckpt(
        &shim_b,
        &[
            "import",
            path(&stream),
            path(&landed),
            "--identity",
            path(&key),
            "--state-dir",
            path(&state_b),
        ],
    );
    assert_eq!(imported["sealed"], true, "{imported}");
    assert_eq!(mode(&landed), 0o700);

    let (moved, moved_cid) = support::restore_and_start(&shim_b, &landed, "counter").await;
    assert!(
        support::dir_names(Path::new(support::NODE_B_RUNC_ROOT)).contains(&moved_cid),
        "restored by node B's runc"
    );
    let first = count(&mut client_b, &moved_cid).await;
    assert!(
        first >= saved,
        "the counter restarted: {first} on node B, {saved} on node A"
    );
    assert!(count_reaches(&client_b, &moved_cid, first + 2, Duration::from_secs(5)).await);

    // Node A's pod never stopped, and its checkpoint is as it was written.
    assert_eq!(support::runc_status(&cid), "running");
    let now = count(&mut client_a, &cid).await;
    assert!(count_reaches(&client_a, &cid, now + 2, Duration::from_secs(5)).await);
    assert_eq!(std::fs::read(checkpoint.join("manifest.json")).unwrap(), manifest);
    let checkpoint_manifest: podckpt::archive::Manifest = serde_json::from_slice(&manifest).unwrap();
    checkpoint_manifest.verify(&checkpoint).expect("node A's checkpoint");

    // Through a pipe, in the clear.
    let piped = work.path().join("piped");
    let endpoint = format!("unix://{}", shim_b.socket.display());
    let mut export = Command::new(env!("CARGO_BIN_EXE_podckpt"))
        .args(["export", path(&checkpoint)])
        .stdout(Stdio::piped())
        .spawn()
        .expect("podckpt export");
    let import = Command::new(env!("CARGO_BIN_EXE_podckpt"))
        .args(["--runtime-endpoint", &endpoint, "import", "-", path(&piped)])
        .args(["--state-dir", path(&state_b)])
        .stdin(export.stdout.take().unwrap())
        .output()
        .expect("podckpt import");
    assert!(export.wait().unwrap().success(), "export into a pipe");
    assert!(
        import.status.success(),
        "import from a pipe: {}",
        String::from_utf8_lossy(&import.stderr)
    );
    let (replica, replica_cid) = support::restore_and_start(&shim_b, &piped, "counter").await;
    let first = count(&mut client_b, &replica_cid).await;
    assert!(first >= saved);
    assert!(count_reaches(&client_b, &replica_cid, first + 2, Duration::from_secs(5)).await);

    drop((replica, moved, pod));
}
