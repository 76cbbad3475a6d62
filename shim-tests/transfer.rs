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
    // The seal is one node B's podckptd finds: its first restore hashes
    // nothing but what was written in the seal's last instants.
    let seals = podckpt::archive::Seals::open(&state_b).unwrap();
    let snapshot = seals.snapshot(&landed).unwrap().expect("a local file system");
    let manifest_b = std::fs::read(landed.join("manifest.json")).unwrap();
    assert_eq!(manifest_b, manifest, "the manifest's very bytes travel");
    assert!(
        seals.unchanged(&snapshot, &manifest_b).is_some(),
        "not sealed for podckptd"
    );

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

/// A small committed checkpoint, as podckptd writes one.
fn small_checkpoint(dir: &Path) {
    support::committed_checkpoint(
        dir,
        &[
            ("0123-app/checkpoint/pages-1.img", vec![b'p'; 3 << 20]),
            ("pod.options", b"{\"version\":1}".to_vec()),
        ],
    );
}

fn run_sh(script: &str) -> std::process::Output {
    let out = Command::new("bash").args(["-c", script]).output().unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The stream is standard on every layer: the reference age (Go), zstd and
/// GNU tar read what export writes, age's own keys work with podckpt, and
/// podckpt's keys with age.
#[test]
fn exports_are_read_by_the_reference_age_zstd_and_tar() {
    if ["age", "age-keygen", "zstd"]
        .iter()
        .any(|tool| Command::new(tool).arg("--version").output().is_err())
    {
        support::missing("age, age-keygen or zstd is not installed (contrib/testbed.sh install)");
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let w = work.path().display().to_string();
    let checkpoint = work.path().join("ckpt");
    std::fs::create_dir(&checkpoint).unwrap();
    small_checkpoint(&checkpoint);
    let podckpt = env!("CARGO_BIN_EXE_podckpt");

    // A key of age's own, a stream of ours: age, zstd and tar list it, manifest first.
    run_sh(&format!("age-keygen -o {w}/theirs.key 2>/dev/null"));
    let recipient = String::from_utf8(run_sh(&format!("age-keygen -y {w}/theirs.key")).stdout).unwrap();
    run_sh(&format!(
        "{podckpt} export {w}/ckpt -o {w}/s1 --recipient {} 2>/dev/null",
        recipient.trim()
    ));
    let listing = run_sh(&format!("age -d -i {w}/theirs.key {w}/s1 | zstd -d | tar -t"));
    assert_eq!(
        String::from_utf8(listing.stdout).unwrap(),
        "manifest.json\n0123-app/checkpoint/pages-1.img\npod.options\n"
    );
    run_sh(&format!(
        "{podckpt} import {w}/s1 {w}/in1 --identity {w}/theirs.key --state-dir {w}/none"
    ));
    assert_eq!(
        std::fs::read(work.path().join("in1/0123-app/checkpoint/pages-1.img")).unwrap(),
        vec![b'p'; 3 << 20]
    );

    // A key of ours, a stream age encrypted: both ways round.
    let ours = run_sh(&format!("{podckpt} keygen -o {w}/ours.key"));
    let recipient = String::from_utf8(ours.stdout).unwrap();
    run_sh(&format!(
        "{podckpt} export {w}/ckpt 2>/dev/null | age -r {} > {w}/s2",
        recipient.trim()
    ));
    run_sh(&format!("age -d -i {w}/ours.key {w}/s2 | zstd -t -q"));
    run_sh(&format!(
        "{podckpt} import {w}/s2 {w}/in2 --identity {w}/ours.key --state-dir {w}/none"
    ));
    assert!(work.path().join("in2/manifest.json").is_file());
}
